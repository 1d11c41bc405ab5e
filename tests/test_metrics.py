"""The /metrics endpoint after real calls: exact counter values, go-grpc-prometheus names."""

from __future__ import annotations

import asyncio
import os
import time
import urllib.request
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families

from gateway import __version__, checksums
from gateway.v1 import upload_service_pb2 as pb
from gateway.v1 import upload_service_pb2_grpc as pb_grpc
from tests.helpers import (
    GatewayThread,
    MiB,
    data_message,
    header_message,
    part_messages,
    part_stream,
    upload_part_error,
)

pytestmark = pytest.mark.backends("moto")

SERVICE = "gateway.v1.UploadService"


def scrape(running: GatewayThread) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of the gateway's /metrics, keyed by name and labels."""
    url = f"http://127.0.0.1:{running.gateway.metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=10) as response:
        text = response.read().decode()
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def settled(running: GatewayThread) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Scrape once every started call has been counted as handled: a caller gets its status
    before the server-side interceptor finishes counting the call."""
    deadline = time.monotonic() + 10
    while True:
        samples = scrape(running)
        started = sum(v for (name, _), v in samples.items() if name == "grpc_server_started_total")
        handled = sum(v for (name, _), v in samples.items() if name == "grpc_server_handled_total")
        if started == handled or time.monotonic() > deadline:
            return samples
        time.sleep(0.02)


def value(samples: dict[Any, float], name: str, **labels: str) -> float:
    return samples[(name, frozenset(labels.items()))]


def received_messages(running: GatewayThread) -> float:
    return value(scrape(running), "grpc_server_msg_received_total", **grpc_labels("UploadPart"))


def grpc_labels(method: str, kind: str = "client_stream", **extra: str) -> dict[str, str]:
    return {"grpc_type": kind, "grpc_service": SERVICE, "grpc_method": method, **extra}


async def test_counters_after_good_bad_and_cancelled_uploads(
    make_gateway: Any, new_bucket: str
) -> None:
    running: GatewayThread = make_gateway()
    good = os.urandom(3 * MiB)
    bad = os.urandom(2 * MiB)
    async with grpc.aio.insecure_channel(running.address) as channel:
        stub = pb_grpc.UploadServiceStub(channel)  # type: ignore[call-overload]
        upload = await stub.CreateMultipartUpload(
            pb.CreateMultipartUploadRequest(bucket=new_bucket, key="k")
        )
        base = dict(bucket=new_bucket, key="k", upload_id=upload.upload_id)
        await stub.UploadPart(
            part_stream(base | dict(part_number=1, content_length=len(good)), good)
        )
        wrong = checksums.encode(checksums.CRC32C.compute(b"not these bytes"))
        header = base | dict(part_number=2, content_length=len(bad), checksum_crc32c=wrong)
        error = await upload_part_error(running.address, part_messages(header, bad))
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT

        release = asyncio.Event()

        async def stalled() -> AsyncIterator[pb.UploadPartRequest]:
            yield header_message(**base, part_number=3, content_length=4 * MiB)
            yield data_message(b"x" * MiB)
            await release.wait()

        call = stub.UploadPart(stalled())
        while value(scrape(running), "s3gateway_inflight_streams") < 1:  # noqa: ASYNC110
            await asyncio.sleep(0.05)
        while received_messages(running) < 9:  # noqa: ASYNC110
            await asyncio.sleep(0.05)
        call.cancel()
        release.set()
        with pytest.raises(asyncio.CancelledError):
            await call
        while value(scrape(running), "s3gateway_inflight_streams") > 0:  # noqa: ASYNC110
            await asyncio.sleep(0.05)

    m = settled(running)
    part = grpc_labels("UploadPart")
    assert value(m, "grpc_server_started_total", **part) == 3
    assert value(m, "grpc_server_handled_total", **part, grpc_code="OK") == 1
    assert value(m, "grpc_server_handled_total", **part, grpc_code="InvalidArgument") == 1
    assert value(m, "grpc_server_handled_total", **part, grpc_code="Canceled") == 1
    assert value(m, "grpc_server_handled_total", **part, grpc_code="Unknown") == 0
    # 1 header + 3 chunks, 1 header + 2 chunks, 1 header + 1 chunk before the cancel.
    assert value(m, "grpc_server_msg_received_total", **part) == 9
    assert value(m, "grpc_server_msg_sent_total", **part) == 1
    assert value(m, "grpc_server_handling_seconds_count", **part) == 3
    create = grpc_labels("CreateMultipartUpload", "unary")
    assert value(m, "grpc_server_started_total", **create) == 1
    assert value(m, "grpc_server_handled_total", **create, grpc_code="OK") == 1
    assert value(m, "grpc_server_msg_received_total", **create) == 1
    assert value(m, "grpc_server_msg_sent_total", **create) == 1
    # Every method x code series exists from the start.
    listing = grpc_labels("ListParts", "unary", grpc_code="NotFound")
    assert value(m, "grpc_server_handled_total", **listing) == 0

    general = {"bucket_type": "general"}
    assert value(m, "s3gateway_client_received_bytes_total", **general) == 6 * MiB
    assert value(m, "s3gateway_s3_sent_bytes_total", **general) == 3 * MiB + (2 * MiB - MiB) + MiB
    assert value(m, "s3gateway_part_size_bytes_count", **general) == 1
    assert value(m, "s3gateway_part_size_bytes_sum", **general) == 3 * MiB
    assert value(m, "s3gateway_checksum_mismatches_total", algorithm="CRC32C") == 1
    for operation, calls in (("UploadPart", 3), ("CreateMultipartUpload", 1)):
        labels = {"operation": operation, "bucket_type": "general"}
        assert value(m, "s3gateway_s3_request_duration_seconds_count", **labels) == calls
    assert not [k for k in m if k[0] == "s3gateway_s3_errors_total"]  # S3 itself never failed
    assert value(m, "s3gateway_inflight_streams") == 0
    assert value(m, "s3gateway_build_info", version=__version__) == 1


async def test_s3_errors_are_counted_by_code(make_gateway: Any, new_bucket: str) -> None:
    running: GatewayThread = make_gateway()
    async with grpc.aio.insecure_channel(running.address) as channel:
        stub = pb_grpc.UploadServiceStub(channel)  # type: ignore[call-overload]
        for _ in range(2):
            with pytest.raises(grpc.aio.AioRpcError):
                await stub.AbortMultipartUpload(
                    pb.AbortMultipartUploadRequest(bucket=new_bucket, key="k", upload_id="nope")
                )
    m = settled(running)
    labels = {"operation": "AbortMultipartUpload", "s3_error_code": "NoSuchUpload"}
    assert value(m, "s3gateway_s3_errors_total", **labels, bucket_type="general") == 2
    aborted = grpc_labels("AbortMultipartUpload", "unary", grpc_code="NotFound")
    assert value(m, "grpc_server_handled_total", **aborted) == 2


def test_metrics_can_be_disabled(make_gateway: Any) -> None:
    running: GatewayThread = make_gateway(metrics_address="")
    assert running.gateway.metrics_port == 0
