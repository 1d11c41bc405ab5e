"""Neither a stalled S3 nor one caller can freeze the gateway's S3 connections.

The streams here stall in S3 (the fault proxy stops reading their bodies) or send nothing after
their header; meanwhile other calls must be served, or refused within a bound.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import grpc
import pytest

from gateway.security import auth
from gateway.v1 import upload_service_pb2 as pb
from gateway.v1 import upload_service_pb2_grpc as pb_grpc
from tests.faults.proxy import FaultProxy, Stall
from tests.helpers import (
    GatewayThread,
    HeldStream,
    MiB,
    error_info,
    header_message,
    part_messages,
    retry_info,
    wait_for,
)

pytestmark = pytest.mark.backends("moto")

#: What a caller waits at most for any answer below: far beyond every limit that should fire.
DEADLINE = 20.0
RESOURCE_EXHAUSTED = grpc.StatusCode.RESOURCE_EXHAUSTED


def connections(gateway: GatewayThread, pool: str = "data") -> float:
    value = gateway.gateway.metrics.registry.get_sample_value(
        "s3gateway_s3_connections_in_use", {"pool": pool}
    )
    return value or 0.0


def streams(gateway: GatewayThread) -> float:
    value = gateway.gateway.metrics.registry.get_sample_value("s3gateway_inflight_streams")
    return value or 0.0


@contextmanager
def stub_on_own_connection(address: str, token: str | None = None) -> Iterator[Callable[..., Any]]:
    """A stub on a connection of its own (grpc shares connections between channels with equal
    arguments); calls through it carry ``token``."""
    options = [("grpc.use_local_subchannel_pool", 1)]
    with grpc.insecure_channel(address, options=options) as channel:
        stub = pb_grpc.UploadServiceStub(channel)
        metadata = [("authorization", f"Bearer {token}")] if token else []

        def call(method: str, *args: Any, **kw: Any) -> Any:
            return getattr(stub, method)(*args, metadata=metadata, timeout=DEADLINE, **kw)

        call.stub = stub  # type: ignore[attr-defined]
        call.metadata = metadata  # type: ignore[attr-defined]
        yield call


def create(call: Callable[..., Any], bucket: str, key: str) -> str:
    upload: str = call(
        "CreateMultipartUpload", pb.CreateMultipartUploadRequest(bucket=bucket, key=key)
    ).upload_id
    return upload


def part(bucket: str, key: str, upload_id: str, size: int) -> list[pb.UploadPartRequest]:
    header = {
        "bucket": bucket,
        "key": key,
        "upload_id": upload_id,
        "part_number": 1,
        "content_length": size,
    }
    return part_messages(header, os.urandom(size))


def held(call: Callable[..., Any], messages: list[pb.UploadPartRequest]) -> HeldStream:
    return HeldStream(call.stub, *messages, metadata=call.metadata)  # type: ignore[attr-defined]


def ended(streams: list[HeldStream]) -> list[grpc.StatusCode]:
    """Release held streams and return how each ended."""
    for stream in streams:
        stream.release.set()
    codes = []
    for stream in streams:
        try:
            stream.future.result(DEADLINE)
            codes.append(grpc.StatusCode.OK)
        except grpc.RpcError as error:
            codes.append(error.code())
    return codes


def test_streams_stalled_in_s3_starve_neither_control_calls_nor_the_pool_wait(
    behind_proxy: Callable[..., GatewayThread], proxy: FaultProxy, new_bucket: str
) -> None:
    gateway = behind_proxy(s3_max_pool_connections=4, s3_stall_timeout=60, s3_pool_timeout=1)
    proxy.add(Stall(after=256 * 1024), path="/stalled", times=None)
    stalled: list[HeldStream] = []
    with (
        stub_on_own_connection(gateway.address) as first,
        stub_on_own_connection(gateway.address) as second,
        stub_on_own_connection(gateway.address) as third,
    ):
        try:
            upload_id = create(third, new_bucket, "stalled")
            for call in (first, first, second, second):
                stalled.append(held(call, part(new_bucket, "stalled", upload_id, 2 * MiB)[:3]))
            wait_for(lambda: connections(gateway) == 4, "every data connection stalled", 10)
            # Control calls have connections of their own.
            started = time.monotonic()
            other = create(third, new_bucket, "other")
            third("ListParts", pb.ListPartsRequest(bucket=new_bucket, key="other", upload_id=other))
            assert time.monotonic() - started < 3
            # A part waits for a data connection at most GATEWAY_S3_POOL_TIMEOUT.
            started = time.monotonic()
            with pytest.raises(grpc.RpcError) as caught:
                third("UploadPart", iter(part(new_bucket, "other", other, MiB)))
            waited = time.monotonic() - started
            assert caught.value.code() == RESOURCE_EXHAUSTED
            assert error_info(caught.value).reason == "S3_POOL_EXHAUSTED"
            assert retry_info(caught.value) is not None
            assert waited < 3 * 1
            rejected = gateway.gateway.metrics.registry.get_sample_value(
                "s3gateway_admission_rejections_total", {"limit": "S3_POOL_EXHAUSTED"}
            )
            assert rejected == 1
        finally:
            for stream in stalled:
                stream.future.cancel()
        wait_for(lambda: connections(gateway) == 0, "stalled streams released", 10)
        response = third("UploadPart", iter(part(new_bucket, "other", other, MiB)))
        assert response.etag


def test_streams_that_send_nothing_hold_no_s3_connection_and_lock_nobody_out(
    behind_proxy: Callable[..., GatewayThread], new_bucket: str
) -> None:
    """Without authentication every caller is anonymous: one connection's silent streams get at
    most half the S3 pool's worth of slots, and no S3 connection at all."""
    gateway = behind_proxy(s3_max_pool_connections=8)
    with (
        stub_on_own_connection(gateway.address) as greedy,
        stub_on_own_connection(gateway.address) as other,
    ):
        upload_id = create(other, new_bucket, "k")
        header = header_message(
            bucket=new_bucket, key="k", upload_id=upload_id, part_number=1, content_length=MiB
        )
        silent = [held(greedy, [header]) for _ in range(10)]
        try:
            wait_for(lambda: sum(s.future.done() for s in silent) == 6, "6 streams refused", 10)
            wait_for(lambda: streams(gateway) == 4, "4 silent streams admitted")
            assert connections(gateway) == 0
            started = time.monotonic()
            response = other("UploadPart", iter(part(new_bucket, "k", upload_id, MiB)))
            other(
                "CompleteMultipartUpload",
                pb.CompleteMultipartUploadRequest(
                    bucket=new_bucket,
                    key="k",
                    upload_id=upload_id,
                    parts=[pb.CompletedPart(part_number=1, etag=response.etag)],
                ),
            )
            assert time.monotonic() - started < 5
        finally:
            codes = ended(silent)
    assert codes.count(RESOURCE_EXHAUSTED) == 6


def test_one_principal_stalled_in_s3_leaves_connections_for_the_others(
    behind_proxy: Callable[..., GatewayThread],
    proxy: FaultProxy,
    new_bucket: str,
    tmp_path: Path,
) -> None:
    greedy_token, victim_token = auth.generate_token(), auth.generate_token()
    tokens = tmp_path / "tokens.yaml"
    tokens.write_text(
        "tokens:\n"
        f"  - {{principal: greedy, sha256: {auth.hash_token(greedy_token)}}}\n"
        f"  - {{principal: victim, sha256: {auth.hash_token(victim_token)}}}\n"
    )
    gateway = behind_proxy(
        s3_max_pool_connections=8, s3_stall_timeout=60, auth_tokens_file=str(tokens)
    )
    proxy.add(Stall(after=256 * 1024), path="/greedy", times=None)
    with (
        stub_on_own_connection(gateway.address, greedy_token) as greedy,
        stub_on_own_connection(gateway.address, greedy_token) as greedy_again,
        stub_on_own_connection(gateway.address, victim_token) as victim,
    ):
        upload_id = create(greedy, new_bucket, "greedy")
        messages = part(new_bucket, "greedy", upload_id, 2 * MiB)[:3]
        hogs = [held(call, messages) for call in (greedy, greedy_again) * 5]
        try:
            wait_for(lambda: connections(gateway) == 4, "the greedy streams stalled", 10)
            wait_for(lambda: sum(h.future.done() for h in hogs) == 6, "6 streams refused", 10)
            victim_upload = create(victim, new_bucket, "victim")
            started = time.monotonic()
            victim("UploadPart", iter(part(new_bucket, "victim", victim_upload, MiB)))
            assert time.monotonic() - started < 5
        finally:
            for hog in hogs:
                hog.future.cancel()
    refused = [h for h in hogs if h.future.done() and not h.future.cancelled()]
    assert all(h.future.exception().code() == RESOURCE_EXHAUSTED for h in refused)
