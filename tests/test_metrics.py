"""The /metrics endpoint after real calls: exact counter values, go-grpc-prometheus names."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Iterator
from typing import Any

import grpc
import pytest

from gateway import __version__, checksums
from gateway.server.metrics import GO_CODE_NAMES
from gateway.v1 import upload_service_pb2 as pb
from gateway.v1 import upload_service_pb2_grpc as pb_grpc
from tests.conftest import Backend
from tests.faults.proxy import FaultProxy, fault_proxy
from tests.helpers import (
    GatewayThread,
    MiB,
    S3Reader,
    Samples,
    data_message,
    header_message,
    inflight_streams,
    metric,
    part_messages,
    part_stream,
    sample_value,
    scrape,
    upload_part_error,
    wait_for,
    wait_for_async,
)

pytestmark = pytest.mark.backends("moto")

SERVICE = "gateway.v1.UploadService"


def settled(running: GatewayThread) -> Samples:
    """Scrape once every started call has been counted as handled: a caller gets its status
    before the server-side interceptor finishes counting the call."""

    def counted() -> Samples | None:
        samples = scrape(running)
        started = sum(v for (name, _), v in samples.items() if name == "grpc_server_started_total")
        handled = sum(v for (name, _), v in samples.items() if name == "grpc_server_handled_total")
        return samples if started == handled else None

    samples = wait_for(counted, "every started call counted as handled", 20)
    assert samples is not None
    return samples


def received_messages(running: GatewayThread) -> float:
    return metric(running, "grpc_server_msg_received_total", **grpc_labels("UploadPart"))


def grpc_labels(method: str, kind: str = "client_stream", **extra: str) -> dict[str, str]:
    return {"grpc_type": kind, "grpc_service": SERVICE, "grpc_method": method, **extra}


@pytest.fixture
def store(backend: Backend) -> Iterator[FaultProxy]:
    """A proxy in front of the S3 backend that injects nothing: it tells what S3 received."""
    with fault_proxy(backend.endpoint) as proxy:
        yield proxy


def received_by_s3(store: FaultProxy, part_number: int) -> int:
    """The body bytes of UploadPart ``part_number`` that reached S3."""
    parts = store.matching("PUT", "partNumber")
    return sum(r.forwarded for r in parts if r.query["partNumber"] == [str(part_number)])


async def test_counters_after_good_bad_and_cancelled_uploads(
    store: FaultProxy, make_gateway: Any, new_bucket: str, s3: S3Reader
) -> None:
    running: GatewayThread = make_gateway(s3_endpoint_url=store.url)
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
        await wait_for_async(lambda: inflight_streams(running) >= 1, "the third part in flight")
        await wait_for_async(lambda: received_messages(running) >= 9, "its first chunk received")
        await wait_for_async(lambda: received_by_s3(store, 3) >= MiB, "its first chunk sent to S3")
        call.cancel()
        release.set()
        with pytest.raises(asyncio.CancelledError):
            await call
        await wait_for_async(lambda: inflight_streams(running) == 0, "the cancelled part ended")

    m = settled(running)
    part = grpc_labels("UploadPart")
    assert sample_value(m, "grpc_server_started_total", **part) == 3
    handled = {
        code: sample_value(m, "grpc_server_handled_total", **part, grpc_code=code)
        for code in GO_CODE_NAMES.values()
    }
    # The cancelled part is counted once: Canceled, or OutOfRange when grpc.aio ended its request
    # stream before it cancelled the handler, which then found the stream shorter than its
    # content_length (a race in grpc.aio, not in the gateway). Either way nothing was committed.
    assert handled.pop("Canceled") + handled.pop("OutOfRange") == 1, m
    assert handled == dict.fromkeys(handled, 0) | {"OK": 1, "InvalidArgument": 1}
    assert set(s3.parts(new_bucket, "k", upload.upload_id)) == {1}
    # 1 header + 3 chunks, 1 header + 2 chunks, 1 header + 1 chunk before the cancel.
    assert sample_value(m, "grpc_server_msg_received_total", **part) == 9
    assert sample_value(m, "grpc_server_msg_sent_total", **part) == 1
    assert sample_value(m, "grpc_server_handling_seconds_count", **part) == 3
    create = grpc_labels("CreateMultipartUpload", "unary")
    assert sample_value(m, "grpc_server_started_total", **create) == 1
    assert sample_value(m, "grpc_server_handled_total", **create, grpc_code="OK") == 1
    assert sample_value(m, "grpc_server_msg_received_total", **create) == 1
    assert sample_value(m, "grpc_server_msg_sent_total", **create) == 1
    # Every method x code series exists from the start.
    listing = grpc_labels("ListParts", "unary", grpc_code="NotFound")
    assert sample_value(m, "grpc_server_handled_total", **listing) == 0

    general = {"bucket_type": "general"}
    assert sample_value(m, "s3gateway_client_received_bytes_total", **general) == 6 * MiB
    assert (
        sample_value(m, "s3gateway_s3_sent_bytes_total", **general)
        == 3 * MiB + (2 * MiB - MiB) + MiB
    )
    assert sample_value(m, "s3gateway_part_size_bytes_count", **general) == 1
    assert sample_value(m, "s3gateway_part_size_bytes_sum", **general) == 3 * MiB
    assert sample_value(m, "s3gateway_checksum_mismatches_total", algorithm="CRC32C") == 1
    for operation, calls in (("UploadPart", 3), ("CreateMultipartUpload", 1)):
        labels = {"operation": operation, "bucket_type": "general"}
        assert sample_value(m, "s3gateway_s3_request_duration_seconds_count", **labels) == calls
    assert not [k for k in m if k[0] == "s3gateway_s3_errors_total"]  # S3 itself never failed
    assert sample_value(m, "s3gateway_inflight_streams") == 0
    assert sample_value(m, "s3gateway_build_info", version=__version__) == 1


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
    assert sample_value(m, "s3gateway_s3_errors_total", **labels, bucket_type="general") == 2
    aborted = grpc_labels("AbortMultipartUpload", "unary", grpc_code="NotFound")
    assert sample_value(m, "grpc_server_handled_total", **aborted) == 2


def test_metrics_can_be_disabled(make_gateway: Any) -> None:
    running: GatewayThread = make_gateway(metrics_address="")
    assert running.gateway.metrics_port == 0
