"""Operations: health and reflection, graceful shutdown of a real process, JSON logs."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from gateway.config import describe
from gateway.v1 import upload_service_pb2 as pb
from gateway.v1 import upload_service_pb2_grpc as pb_grpc
from tests.gateway_process import GatewayProcess, gateway_process
from tests.helpers import (
    GatewayThread,
    MiB,
    data_message,
    header_message,
    logged_metrics_port,
    part_stream,
    sample_value,
    scrape,
    wait_for_async,
)

pytestmark = pytest.mark.backends("moto")

SERVICE = "gateway.v1.UploadService"
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


async def health_status(address: str, service: str = "") -> int:
    async with grpc.aio.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        response = await stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
        status: int = response.status
        return status


async def reflected_services(address: str) -> list[str]:
    async with grpc.aio.insecure_channel(address) as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        async for response in stub.ServerReflectionInfo(iter([request]), timeout=5):
            return [s.name for s in response.list_services_response.service]
    return []


async def test_health_and_reflection_are_on_by_default(make_gateway: Any) -> None:
    running: GatewayThread = make_gateway()
    assert await health_status(running.address) == SERVING
    assert await health_status(running.address, SERVICE) == SERVING
    services = await reflected_services(running.address)
    assert {SERVICE, "grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection"} <= set(
        services
    )


def refused_code(address: str, service: str) -> grpc.StatusCode:
    """The code a call to ``service`` gets, through grpc's synchronous API: the reflection call
    is a stream, and grpc.aio may report INTERNAL for a stream the server refused while the client
    was still writing (grpc/grpc#36066)."""
    with grpc.insecure_channel(address) as channel:
        try:
            if service == "health":
                health = health_pb2_grpc.HealthStub(channel)
                health.Check(health_pb2.HealthCheckRequest(), timeout=5)
            else:
                request = reflection_pb2.ServerReflectionRequest(list_services="")
                stub = reflection_pb2_grpc.ServerReflectionStub(channel)
                list(stub.ServerReflectionInfo(iter([request]), timeout=5))
        except grpc.RpcError as error:
            code: grpc.StatusCode = error.code()  # type: ignore[attr-defined]
            return code
    return grpc.StatusCode.OK


async def test_health_and_reflection_can_be_switched_off(make_gateway: Any) -> None:
    running: GatewayThread = make_gateway(health=False, reflection=False)
    for service in ("health", "reflection"):
        code = await asyncio.to_thread(refused_code, running.address, service)
        assert code == grpc.StatusCode.UNIMPLEMENTED, service


def test_serve_help_lists_every_setting_with_its_default() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "gateway", "serve", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "COLUMNS": "200"},
    )
    assert result.returncode == 0
    text = " ".join(result.stdout.split())
    for env, default, _ in describe():
        assert env in text
        if default:
            assert f"default {default}" in text


async def slow_part(
    bucket: str, upload_id: str, chunks: int, pause: float, stall: asyncio.Event | None = None
) -> AsyncIterator[pb.UploadPartRequest]:
    yield header_message(
        bucket=bucket, key="k", upload_id=upload_id, part_number=1, content_length=chunks * MiB
    )
    for index in range(chunks):
        if index == chunks - 1 and stall is not None:
            await stall.wait()
        yield data_message(b"z" * MiB)
        await asyncio.sleep(pause)


def parts_in(s3: Any, bucket: str, upload_id: str) -> list[int]:
    response = s3.list_parts(Bucket=bucket, Key="k", UploadId=upload_id)
    return [p["PartNumber"] for p in response.get("Parts", [])]


def part_messages_received(gateway: GatewayProcess) -> float:
    """The UploadPart messages a gateway process has taken from its callers, from its /metrics."""
    samples = scrape(logged_metrics_port(gateway.log))
    labels = {"grpc_type": "client_stream", "grpc_service": SERVICE, "grpc_method": "UploadPart"}
    return sample_value(samples, "grpc_server_msg_received_total", **labels)


def logged(gateway: GatewayProcess, text: str) -> bool:
    return text in "".join(list(gateway.log))


async def start_upload(gateway: GatewayProcess, bucket: str) -> tuple[Any, Any, Any]:
    channel = grpc.aio.insecure_channel(gateway.address)
    stub = pb_grpc.UploadServiceStub(channel)  # type: ignore[call-overload]
    upload = await stub.CreateMultipartUpload(
        pb.CreateMultipartUploadRequest(bucket=bucket, key="k")
    )
    return channel, stub, upload


async def test_sigterm_drains_then_lets_in_flight_streams_finish(
    moto_endpoint: str, moto_s3: Any, moto_bucket: str
) -> None:
    with gateway_process(
        "--s3-endpoint-url", moto_endpoint, "--drain-delay=1.5", "--shutdown-grace=10"
    ) as gateway:
        channel, stub, upload = await start_upload(gateway, moto_bucket)
        call = stub.UploadPart(slow_part(moto_bucket, upload.upload_id, chunks=6, pause=0.4))
        await wait_for_async(lambda: part_messages_received(gateway) >= 2, "the part under way")
        gateway.process.send_signal(signal.SIGTERM)
        await wait_for_async(lambda: logged(gateway, "draining"), "the gateway draining")
        assert await health_status(gateway.address) == NOT_SERVING  # still answering: draining
        response = await call  # finishes within the grace period
        await channel.close()
        assert gateway.process.wait(30) == 0
    assert response.etag == f'"{hashlib.md5(b"z" * 6 * MiB).hexdigest()}"'
    assert parts_in(moto_s3, moto_bucket, upload.upload_id) == [1]
    log = "".join(gateway.log)
    assert "draining" in log and "stopped" in log


async def test_streams_still_running_after_the_grace_period_are_cancelled(
    moto_endpoint: str, moto_s3: Any, moto_bucket: str
) -> None:
    stall = asyncio.Event()
    with gateway_process(
        "--s3-endpoint-url", moto_endpoint, "--drain-delay=0", "--shutdown-grace=1"
    ) as gateway:
        channel, stub, upload = await start_upload(gateway, moto_bucket)
        call = stub.UploadPart(slow_part(moto_bucket, upload.upload_id, 3, 0.05, stall))
        await wait_for_async(lambda: part_messages_received(gateway) == 3, "the part stalled")
        started = time.monotonic()
        gateway.process.send_signal(signal.SIGTERM)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call
        assert time.monotonic() - started < 10
        stall.set()
        await channel.close()
        assert gateway.process.wait(30) == 0
    assert caught.value.code() in (grpc.StatusCode.CANCELLED, grpc.StatusCode.UNAVAILABLE)
    assert parts_in(moto_s3, moto_bucket, upload.upload_id) == []


async def test_a_second_signal_stops_at_once(
    moto_endpoint: str, moto_s3: Any, moto_bucket: str
) -> None:
    stall = asyncio.Event()
    with gateway_process(
        "--s3-endpoint-url", moto_endpoint, "--drain-delay=60", "--shutdown-grace=60"
    ) as gateway:
        channel, stub, upload = await start_upload(gateway, moto_bucket)
        call = stub.UploadPart(slow_part(moto_bucket, upload.upload_id, 3, 0.05, stall))
        await wait_for_async(lambda: part_messages_received(gateway) == 3, "the part stalled")
        gateway.process.send_signal(signal.SIGTERM)
        await wait_for_async(lambda: logged(gateway, "draining"), "the gateway draining")
        started = time.monotonic()
        gateway.process.send_signal(signal.SIGTERM)
        with pytest.raises(grpc.aio.AioRpcError):
            await call
        assert gateway.process.wait(30) == 0
        assert time.monotonic() - started < 10
        stall.set()
        await channel.close()
    assert parts_in(moto_s3, moto_bucket, upload.upload_id) == []
    assert "second signal" in "".join(gateway.log)


async def test_json_access_log_and_no_secrets(moto_endpoint: str, moto_bucket: str) -> None:
    key = os.urandom(32)
    sse = {
        "sse_customer_algorithm": "AES256",
        "sse_customer_key": base64.b64encode(key).decode(),
        "sse_customer_key_md5": base64.b64encode(hashlib.md5(key).digest()).decode(),
    }
    data = os.urandom(12345)
    with gateway_process(
        "--s3-endpoint-url", moto_endpoint, "--log-level=DEBUG", "--log-format=json"
    ) as gateway:
        async with grpc.aio.insecure_channel(gateway.address) as channel:
            stub = pb_grpc.UploadServiceStub(channel)  # type: ignore[call-overload]
            upload = await stub.CreateMultipartUpload(
                pb.CreateMultipartUploadRequest(bucket=moto_bucket, key="k", **sse)
            )
            header = dict(
                bucket=moto_bucket,
                key="k",
                upload_id=upload.upload_id,
                part_number=7,
                content_length=len(data),
                **sse,
            )
            await stub.UploadPart(part_stream(header, data))
    lines = [json.loads(line) for line in "".join(gateway.log).splitlines() if line.strip()]
    access = [line for line in lines if line["logger"] == "gateway.access"]
    assert {"method": "UploadPart", "code": "OK", "bucket": moto_bucket, "part_number": 7,
            "bytes": len(data)}.items() <= access[-1].items()  # fmt: skip
    assert access[-1]["duration_ms"] > 0
    assert access[0]["method"] == "CreateMultipartUpload"
    everything = "".join(gateway.log)
    for secret in (sse["sse_customer_key"], key.hex(), "testing"):
        assert secret not in everything, secret
    assert "Signature=" not in everything
