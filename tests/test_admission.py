"""Admission: stream limits (overall, per principal, the buffer budget), the idle timeout and
slow-loris streams, part and message sizes. A refused or ended stream commits nothing and gives
back what it held."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import h2.config
import h2.connection
import h2.events
import h2.exceptions
import pytest

from gateway.units import MiB
from gateway.v1 import upload_service_pb2 as pb
from tests.helpers import (
    TOKEN_A,
    TOKEN_B,
    GatewayThread,
    HeldStream,
    bearer,
    data_message,
    error_info,
    failure,
    inflight_streams,
    metric,
    retry_info,
    sized_header,
    stub_for,
    wait_for,
    write_tokens,
)


def rejections(gateway: GatewayThread, limit: str) -> float:
    """Calls refused for ``limit`` (s3gateway_admission_rejections_total)."""
    return metric(gateway, "s3gateway_admission_rejections_total", limit=limit)


@pytest.mark.parametrize(
    ("limits", "reason"),
    [
        ({"max_streams": 2}, "STREAM_LIMIT"),
        ({"max_streams_per_principal": 2}, "PRINCIPAL_STREAM_LIMIT"),
        ({"max_buffer_bytes": 2 * (64 * 1024 + 64 * 1024), "stream_window": 64 * 1024,
          "max_message_size": 64 * 1024}, "BUFFER_LIMIT"),
    ],
    ids=["overall", "per-principal", "buffer"],
)  # fmt: skip
def test_stream_limits_refuse_with_retry_info(
    make_moto_gateway: Callable[..., GatewayThread],
    moto_bucket: str,
    limits: dict[str, int],
    reason: str,
) -> None:
    gateway = make_moto_gateway(**limits)
    channel, stub = stub_for(gateway.address)
    with channel:
        first = sized_header(moto_bucket, "k", "upload-id", 10)
        held = [HeldStream(stub, first) for _ in range(2)]
        try:
            wait_for(lambda: inflight_streams(gateway) == 2, "two streams admitted")
            error = failure(lambda: stub.UploadPart(iter([first, data_message(b"0123456789")])))
            assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert error_info(error).reason == reason
            delay = retry_info(error)
            assert delay is not None and delay.retry_delay.seconds >= 1
        finally:
            for stream in held:
                stream.release.set()
        for stream in held:
            with pytest.raises(grpc.RpcError):
                stream.future.result(10)
        wait_for(lambda: inflight_streams(gateway) == 0, "streams released")
        assert rejections(gateway, reason) == 1
        # Capacity is back: a normal part goes through.
        upload = stub.CreateMultipartUpload(
            pb.CreateMultipartUploadRequest(bucket=moto_bucket, key="k")
        )
        stub.UploadPart(
            iter([sized_header(moto_bucket, "k", upload.upload_id, 3), data_message(b"abc")])
        )


def test_one_principal_cannot_take_every_slot(
    make_moto_gateway: Callable[..., GatewayThread], tmp_path: Path, moto_bucket: str
) -> None:
    tokens = write_tokens(tmp_path / "t.yaml", alice=TOKEN_A, bob=TOKEN_B)
    gateway = make_moto_gateway(
        auth_tokens_file=str(tokens), max_streams_per_principal=2, max_streams=10
    )
    channel, stub = stub_for(gateway.address)
    with channel:
        first = sized_header(moto_bucket, "k", "upload-id", 10)
        held = [HeldStream(stub, first, metadata=bearer(TOKEN_A)) for _ in range(2)]
        try:
            wait_for(lambda: inflight_streams(gateway) == 2, "alice's streams admitted")
            error = failure(lambda: stub.UploadPart(iter([first]), metadata=bearer(TOKEN_A)))
            assert error_info(error).reason == "PRINCIPAL_STREAM_LIMIT"
            upload = stub.CreateMultipartUpload(
                pb.CreateMultipartUploadRequest(bucket=moto_bucket, key="k"),
                metadata=bearer(TOKEN_B),
            )
            parts = [sized_header(moto_bucket, "k", upload.upload_id, 3), data_message(b"abc")]
            stub.UploadPart(iter(parts), metadata=bearer(TOKEN_B))
        finally:
            for stream in held:
                stream.release.set()


def test_buffered_parts_count_against_the_buffer_cap(
    make_moto_gateway: Callable[..., GatewayThread], moto_bucket: str
) -> None:
    reservation = 64 * 1024 + 256 * 1024
    gateway = make_moto_gateway(
        stream_window=64 * 1024,
        max_message_size=256 * 1024,
        max_buffer_bytes=reservation + 300 * 1024,
    )
    channel, stub = stub_for(gateway.address)
    with channel:
        upload = stub.CreateMultipartUpload(
            pb.CreateMultipartUploadRequest(bucket=moto_bucket, key="k")
        )
        no_length = pb.UploadPartRequest(
            header=pb.UploadPartHeader(
                bucket=moto_bucket, key="k", upload_id=upload.upload_id, part_number=1
            )
        )
        chunk = b"x" * (200 * 1024)
        stub.UploadPart(iter([no_length, data_message(chunk)]))  # 200 KiB buffered: fits
        error = failure(
            lambda: stub.UploadPart(iter([no_length, data_message(chunk), data_message(chunk)]))
        )
        assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert error_info(error).reason == "BUFFER_LIMIT"
    wait_for(lambda: metric(gateway, "s3gateway_buffer_reserved_bytes") == 0, "buffer released")


def test_an_idle_stream_is_ended_and_nothing_is_committed(
    make_moto_gateway: Callable[..., GatewayThread], moto_bucket: str, moto_s3: Any
) -> None:
    gateway = make_moto_gateway(idle_timeout=0.5)
    channel, stub = stub_for(gateway.address)
    with channel:
        upload = stub.CreateMultipartUpload(
            pb.CreateMultipartUploadRequest(bucket=moto_bucket, key="k")
        )
        release = threading.Event()

        def stalls_after_one_chunk() -> Iterator[pb.UploadPartRequest]:
            yield sized_header(moto_bucket, "k", upload.upload_id, 2 * 1024)
            yield data_message(b"y" * 1024)
            release.wait(10)

        started = time.monotonic()
        error = failure(lambda: stub.UploadPart(stalls_after_one_chunk()))
        release.set()
        assert time.monotonic() - started < 5
        assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert error_info(error).reason == "IDLE_TIMEOUT"
        assert retry_info(error) is not None

        def never_sends_a_header() -> Iterator[pb.UploadPartRequest]:
            release.wait(10)
            yield sized_header(moto_bucket, "k", upload.upload_id, 1)

        release.clear()
        error = failure(lambda: stub.UploadPart(never_sends_a_header()))
        release.set()
        assert error_info(error).reason == "IDLE_TIMEOUT"
    parts = moto_s3.list_parts(Bucket=moto_bucket, Key="k", UploadId=upload.upload_id)
    assert parts.get("Parts", []) == []
    assert rejections(gateway, "IDLE_TIMEOUT") == 2
    wait_for(lambda: inflight_streams(gateway) == 0, "idle streams released")


def test_part_size_and_message_size_limits(
    make_moto_gateway: Callable[..., GatewayThread], moto_bucket: str
) -> None:
    gateway = make_moto_gateway(
        max_part_size=MiB, unknown_length_limit=MiB, max_message_size=128 * 1024
    )
    channel, stub = stub_for(gateway.address)
    with channel:
        error = failure(
            lambda: stub.UploadPart(iter([sized_header(moto_bucket, "k", "u", MiB + 1)]))
        )
        assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert error_info(error).reason == "PART_TOO_LARGE"
        assert retry_info(error) is None  # the same request can never fit
        upload = stub.CreateMultipartUpload(
            pb.CreateMultipartUploadRequest(bucket=moto_bucket, key="k")
        )
        big = [
            sized_header(moto_bucket, "k", upload.upload_id, 256 * 1024),
            data_message(b"z" * 256 * 1024),
        ]
        error = failure(lambda: stub.UploadPart(iter(big)))
        assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert rejections(gateway, "PART_TOO_LARGE") == 1
    wait_for(lambda: inflight_streams(gateway) == 0, "the oversized stream released")


def trickle(address: str, *, seconds: float, interval: float = 0.2) -> tuple[int | None, float]:
    """A slow-loris UploadPart over raw HTTP/2: it announces a 1000-byte gRPC message and sends
    one byte of it every ``interval`` seconds. Returns the grpc-status the gateway ended the
    stream with (None if it never did within ``seconds``) and when."""
    host, _, port = address.rpartition(":")
    connection = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    started = time.monotonic()
    with socket.create_connection((host, int(port)), timeout=5) as sock:
        connection.initiate_connection()
        stream = connection.get_next_available_stream_id()
        connection.send_headers(
            stream,
            [
                (":method", "POST"),
                (":scheme", "http"),
                (":path", "/gateway.v1.UploadService/UploadPart"),
                (":authority", address),
                ("content-type", "application/grpc"),
                ("te", "trailers"),
            ],
        )
        connection.send_data(stream, b"\x00" + (1000).to_bytes(4, "big"))
        sock.sendall(connection.data_to_send())
        sock.settimeout(interval)
        while time.monotonic() - started < seconds:
            try:
                received = sock.recv(65536)
            except TimeoutError:
                received = None
            if received == b"":
                return None, time.monotonic() - started
            for event in connection.receive_data(received) if received else ():
                if isinstance(event, (h2.events.TrailersReceived, h2.events.ResponseReceived)):
                    headers = dict(event.headers)
                    if b"grpc-status" in headers:
                        return int(headers[b"grpc-status"]), time.monotonic() - started
            with contextlib.suppress(h2.exceptions.StreamClosedError):
                connection.send_data(stream, b"x")
            sock.sendall(connection.data_to_send())
    return None, time.monotonic() - started


def test_slow_loris_streams_are_ended_and_others_are_served(
    make_moto_gateway: Callable[..., GatewayThread], moto_bucket: str
) -> None:
    gateway = make_moto_gateway(idle_timeout=1.0)
    results: list[tuple[int | None, float]] = []
    threads = [
        threading.Thread(target=lambda: results.append(trickle(gateway.address, seconds=10)))
        for _ in range(20)
    ]
    for thread in threads:
        thread.start()
    wait_for(lambda: inflight_streams(gateway) == 20, "every trickling stream admitted")
    channel, stub = stub_for(gateway.address)
    with channel:
        upload = stub.CreateMultipartUpload(
            pb.CreateMultipartUploadRequest(bucket=moto_bucket, key="k")
        )
        parts = [sized_header(moto_bucket, "k", upload.upload_id, 3), data_message(b"abc")]
        stub.UploadPart(iter(parts), timeout=5)  # served while the tricklers hold streams
        for thread in threads:
            thread.join(15)
        codes = {code for code, _ in results}
        assert codes == {grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]}, results
        assert max(seconds for _, seconds in results) < 5
        wait_for(lambda: inflight_streams(gateway) == 0, "trickling streams released")
        stub.UploadPart(iter(parts), timeout=5)
    assert rejections(gateway, "IDLE_TIMEOUT") == 20
