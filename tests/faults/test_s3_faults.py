"""The gateway against an S3 that stalls, resets, throttles or fails, through a fault proxy.

For each fault: the caller's status and ErrorInfo reason, a bound on how long the caller waits
(three times the limit that should fire, far below the caller's own deadline), the earlier good
part intact, nothing partial committed, and the next call served.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import grpc
import pytest

from gateway.v1 import upload_service_pb2 as pb
from gateway.v1 import upload_service_pb2_grpc as pb_grpc
from tests.faults.conftest import LIMITS
from tests.faults.proxy import (
    Close,
    Fault,
    FaultProxy,
    HeadersThenClose,
    LoseAnswer,
    Reset,
    Respond,
    Silent,
    Stall,
    Throttle,
)
from tests.helpers import (
    GatewayThread,
    MiB,
    S3Reader,
    error_info,
    part_messages,
    retry_info,
    stream,
    upload_part_error,
)

KEY = "faults/object.bin"
#: The caller's own deadline: what it would wait if the gateway bounded nothing.
CALLER_DEADLINE = 60.0
STALL = LIMITS["s3_stall_timeout"]
READ = LIMITS["s3_read_timeout"]
UNAVAILABLE = grpc.StatusCode.UNAVAILABLE


@dataclass(frozen=True)
class Target:
    bucket: str
    key: str
    upload_id: str

    def part(self, number: int, data: bytes) -> list[pb.UploadPartRequest]:
        header = {
            "bucket": self.bucket,
            "key": self.key,
            "upload_id": self.upload_id,
            "part_number": number,
            "content_length": len(data),
        }
        return part_messages(header, data)


@pytest.fixture
def target(s3_sync: Any, new_bucket: str) -> Target:
    upload_id = s3_sync.create_multipart_upload(Bucket=new_bucket, Key=KEY)["UploadId"]
    return Target(new_bucket, KEY, upload_id)


def etag(data: bytes) -> str:
    return f'"{hashlib.md5(data).hexdigest()}"'


async def upload(address: str, target: Target, number: int, data: bytes) -> str:
    async with grpc.aio.insecure_channel(address) as channel:
        stub = pb_grpc.UploadServiceStub(channel)  # type: ignore[no-untyped-call]
        response = await stub.UploadPart(stream(target.part(number, data)), timeout=CALLER_DEADLINE)
    assert response.etag == etag(data)
    return str(response.etag)


async def refused(
    address: str, messages: list[pb.UploadPartRequest], code: grpc.StatusCode, reason: str
) -> float:
    """Send an UploadPart that must fail with ``code`` / ``reason``; the caller's wait."""
    started = time.monotonic()
    error = await upload_part_error(address, messages, deadline=CALLER_DEADLINE)
    waited = time.monotonic() - started
    assert (error.code(), error_info(error).reason) == (code, reason), error.details()
    print(f"UploadPart: {code.name} {reason} after {waited:.2f} s")
    return waited


PART_FAULTS = {
    "stops reading mid-part": (Stall(after=MiB), "S3_STALLED"),
    "never answers 100 Continue": (Silent(), "S3_STALLED"),
    "resets mid-part": (Reset(after=MiB), "S3_UNREACHABLE"),
    "answers 503 SlowDown": (Respond(503, "SlowDown", "Reduce your request rate."), "SLOW_DOWN"),
    "answers 500 InternalError": (Respond(500, "InternalError", "Try again."), "INTERNAL_ERROR"),
    "sends headers, then closes": (HeadersThenClose(), "S3_UNREACHABLE"),
}


@pytest.mark.parametrize("fault", PART_FAULTS.values(), ids=PART_FAULTS.keys())
async def test_a_failing_part_commits_nothing_and_the_next_is_served(
    gateway_behind_proxy: GatewayThread,
    proxy: FaultProxy,
    target: Target,
    s3: S3Reader,
    fault: tuple[Fault, str],
) -> None:
    injected, reason = fault
    address = gateway_behind_proxy.address
    good = os.urandom(5 * MiB)
    await upload(address, target, 1, good)
    proxy.add(injected)
    waited = await refused(address, target.part(1, os.urandom(8 * MiB)), UNAVAILABLE, reason)
    assert waited < 3 * STALL
    (faulted,) = [r for r in proxy.matching("PUT", "partNumber") if r.fault is not None]
    assert faulted.forwarded < 8 * MiB  # the store never received the whole part
    parts = s3.parts(target.bucket, target.key, target.upload_id)
    assert {n: p["ETag"] for n, p in parts.items()} == {1: etag(good)}
    following = os.urandom(5 * MiB)
    await upload(address, target, 2, following)
    assert s3.parts(target.bucket, target.key, target.upload_id)[2]["ETag"] == etag(following)


async def test_a_refused_part_carries_retry_info(
    gateway_behind_proxy: GatewayThread, proxy: FaultProxy, target: Target
) -> None:
    proxy.add(Stall(after=MiB))
    error = await upload_part_error(
        gateway_behind_proxy.address, target.part(1, os.urandom(4 * MiB)), deadline=60
    )
    info = retry_info(error)
    assert info is not None and info.retry_delay.seconds >= 1
    assert error_info(error).metadata["operation"] == "UploadPart"


UNARY_FAULTS = {
    "CreateMultipartUpload answered 503": (
        "POST",
        ("uploads",),
        Respond(503, "SlowDown"),
        UNAVAILABLE,
        "SLOW_DOWN",
        STALL,
    ),
    "ListParts never answered": (
        "GET",
        ("uploadId",),
        Silent(),
        grpc.StatusCode.DEADLINE_EXCEEDED,
        "S3_TIMEOUT",
        READ,
    ),
    "ListParts reset twice": (
        "GET",
        ("uploadId",),
        Reset(),
        UNAVAILABLE,
        "S3_UNREACHABLE",
        STALL,
    ),
}


@pytest.mark.parametrize("fault", UNARY_FAULTS.values(), ids=UNARY_FAULTS.keys())
async def test_control_calls_fail_within_their_bounds(
    gateway_behind_proxy: GatewayThread,
    proxy: FaultProxy,
    target: Target,
    fault: tuple[str, tuple[str, ...], Fault, grpc.StatusCode, str, float],
) -> None:
    method, query, injected, code, reason, limit = fault
    # A connection that breaks before the answer is retried once by aiohttp (RFC 9112, for
    # idempotent methods): the second break is the caller's.
    proxy.add(injected, method=method, query=query, times=2 if injected == Reset() else 1)
    calls: dict[str, Callable[[pb_grpc.UploadServiceStub], Any]] = {
        "POST": lambda stub: stub.CreateMultipartUpload(
            pb.CreateMultipartUploadRequest(bucket=target.bucket, key=target.key),
            timeout=CALLER_DEADLINE,
        ),
        "GET": lambda stub: stub.ListParts(
            pb.ListPartsRequest(bucket=target.bucket, key=target.key, upload_id=target.upload_id),
            timeout=CALLER_DEADLINE,
        ),
    }
    async with grpc.aio.insecure_channel(gateway_behind_proxy.address) as channel:
        stub = pb_grpc.UploadServiceStub(channel)  # type: ignore[no-untyped-call]
        started = time.monotonic()
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await calls[method](stub)
        waited = time.monotonic() - started
        print(f"{method}: {caught.value.code().name} {reason} after {waited:.2f} s")
        assert (caught.value.code(), error_info(caught.value).reason) == (code, reason)
        assert waited < 3 * limit
        assert retry_info(caught.value) is not None
        listed = await stub.ListParts(
            pb.ListPartsRequest(bucket=target.bucket, key=target.key, upload_id=target.upload_id),
            timeout=CALLER_DEADLINE,
        )
    assert listed.upload_id == target.upload_id


async def test_an_abort_whose_answer_is_lost_is_retried_once_and_reports_not_found(
    gateway_behind_proxy: GatewayThread, proxy: FaultProxy, target: Target, s3: S3Reader
) -> None:
    """The connection breaks after S3 got the abort: aiohttp re-sends the DELETE (RFC 9112),
    S3 no longer knows the upload, and the caller learns that it is gone."""
    proxy.add(LoseAnswer(), method="DELETE", query=("uploadId",))
    async with grpc.aio.insecure_channel(gateway_behind_proxy.address) as channel:
        stub = pb_grpc.UploadServiceStub(channel)  # type: ignore[no-untyped-call]
        request = pb.AbortMultipartUploadRequest(
            bucket=target.bucket, key=target.key, upload_id=target.upload_id
        )
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.AbortMultipartUpload(request, timeout=CALLER_DEADLINE)
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    assert len(proxy.matching("DELETE", "uploadId")) == 2
    assert target.upload_id not in s3.uploads(target.bucket)


async def test_bytes_queued_in_socket_buffers_do_not_count_against_the_read_timeout(
    behind_proxy: Callable[..., GatewayThread], proxy: FaultProxy, target: Target, s3: S3Reader
) -> None:
    """At 1 MiB/s an 8 MiB part takes 8 s to reach S3, more than three times the read timeout;
    S3 keeps taking bytes all along, so the part goes through."""
    gateway = behind_proxy(s3_read_timeout=2.5)
    proxy.add(Throttle(rate=MiB))
    data = os.urandom(8 * MiB)
    await upload(gateway.address, target, 1, data)
    (throttled,) = proxy.matching("PUT", "partNumber")
    assert throttled.forwarded == len(data)
    assert s3.parts(target.bucket, target.key, target.upload_id)[1]["ETag"] == etag(data)


async def test_a_connection_closed_before_the_body_is_retried_once_with_the_same_bytes(
    gateway_behind_proxy: GatewayThread, proxy: FaultProxy, target: Target, s3: S3Reader
) -> None:
    """aiohttp re-sends a PUT whose connection closed before any body byte was sent (RFC 9112
    retry on a persistent connection); no byte of the caller's stream was read by then."""
    proxy.add(Close())
    data = os.urandom(6 * MiB)
    await upload(gateway_behind_proxy.address, target, 1, data)
    first, second = proxy.matching("PUT", "partNumber")
    assert (first.fault, first.forwarded) == (Close(), 0)
    assert (second.fault, second.forwarded) == (None, len(data))
    assert s3.parts(target.bucket, target.key, target.upload_id)[1]["ETag"] == etag(data)


async def test_a_second_close_before_the_body_fails_the_part(
    gateway_behind_proxy: GatewayThread, proxy: FaultProxy, target: Target, s3: S3Reader
) -> None:
    proxy.add(Close(), times=2)
    await refused(
        gateway_behind_proxy.address, target.part(1, os.urandom(MiB)), UNAVAILABLE, "S3_UNREACHABLE"
    )
    assert len(proxy.matching("PUT", "partNumber")) == 2
    assert s3.parts(target.bucket, target.key, target.upload_id) == {}
