"""Request decoding (gateway.server.wire) and background hashing (relay.BackgroundHasher)."""

from __future__ import annotations

import asyncio
import os
import threading
import time
from typing import Any

import grpc
import pytest
from google.protobuf.message import DecodeError
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway import checksums
from gateway.errors import ResourceExhausted
from gateway.server import relay, timers
from gateway.server.wire import Data, Malformed, decode_part_message, decoder
from gateway.v1 import upload_service_pb2 as pb
from tests.helpers import error_info

crc32c_values = st.none() | st.integers(min_value=0, max_value=2**32 - 1)


@given(content=st.binary(max_size=4096), crc32c=crc32c_values)
def test_data_messages_decode_without_copying(content: bytes, crc32c: int | None) -> None:
    data = pb.ChecksummedData(content=content)
    if crc32c is not None:
        data.crc32c = crc32c
    raw = pb.UploadPartRequest(data=data).SerializeToString()
    decoded = decode_part_message(raw)
    assert isinstance(decoded, Data)
    assert bytes(decoded.content) == content
    assert decoded.crc32c == crc32c
    if content:
        assert isinstance(decoded.content, memoryview)
        assert decoded.content.obj is raw  # a view into grpc's buffer, not a copy


def test_a_large_data_message_is_a_view() -> None:
    content = os.urandom(1024 * 1024)
    raw = pb.UploadPartRequest(
        data=pb.ChecksummedData(content=content, crc32c=7)
    ).SerializeToString()
    decoded = decode_part_message(raw)
    assert isinstance(decoded, Data) and isinstance(decoded.content, memoryview)
    assert decoded.content.obj is raw and decoded.content == content and decoded.crc32c == 7


@settings(max_examples=500)
@given(raw=st.binary(max_size=64) | st.builds(lambda a, b: a + b, st.just(b"\x12"), st.binary()))
def test_any_bytes_decode_as_protobuf_would(raw: bytes) -> None:
    decoded = decode_part_message(raw)
    try:
        expected = pb.UploadPartRequest.FromString(raw)
    except DecodeError:
        assert isinstance(decoded, Malformed) and decoded.error
        return
    if expected.WhichOneof("message") == "data":
        assert isinstance(decoded, Data)
        assert bytes(decoded.content) == expected.data.content
        want = expected.data.crc32c if expected.data.HasField("crc32c") else None
        assert decoded.crc32c == want
    else:
        assert decoded == expected


@pytest.mark.parametrize(
    "raw",
    [
        # content twice: protobuf keeps the last one; the fast path must not pick the first
        b"\x12\x06\x0a\x01a\x0a\x01b",
        # crc32c twice
        b"\x12\x0a\x15\x01\x00\x00\x00\x15\x02\x00\x00\x00",
        # data twice: protobuf merges the two messages
        b"\x12\x03\x0a\x01a\x12\x05\x15\x01\x00\x00\x00",
        # an unknown field inside data
        b"\x12\x05\x0a\x01a\x18\x01",
        # a padded length varint
        b"\x12\x84\x00\x0a\x01a\x00"[:2] + b"\x00" + b"\x0a\x01a",
    ],
)
def test_unusual_encodings_fall_back_to_protobuf(raw: bytes) -> None:
    decoded = decode_part_message(raw)
    try:
        expected = pb.UploadPartRequest.FromString(raw)
    except DecodeError:
        assert isinstance(decoded, Malformed)
        return
    assert isinstance(decoded, Data)
    assert bytes(decoded.content) == expected.data.content
    assert decoded.crc32c == (expected.data.crc32c if expected.data.HasField("crc32c") else None)


def test_headers_and_trailers_are_protobuf_messages() -> None:
    header = pb.UploadPartRequest(header=pb.UploadPartHeader(bucket="b", key="k"))
    assert decode_part_message(header.SerializeToString()) == header
    trailer = pb.UploadPartRequest(trailer=pb.UploadPartTrailer(checksum_crc32c="AAAAAA=="))
    assert decode_part_message(trailer.SerializeToString()) == trailer
    assert decode_part_message(b"") == pb.UploadPartRequest()


def test_unary_decoder_reports_malformed_requests() -> None:
    decode = decoder(pb.ListPartsRequest)
    request = pb.ListPartsRequest(bucket="b", key="k", upload_id="u")
    assert decode(request.SerializeToString()) == request
    assert isinstance(decode(b"\x0a\xff"), Malformed)


def _raw_call(address: str, method: str, messages: list[bytes], streaming: bool) -> Any:
    with grpc.insecure_channel(address) as channel:
        path = f"/gateway.v1.UploadService/{method}"
        if streaming:
            call = channel.stream_unary(path, request_serializer=None, response_deserializer=None)
            return call(iter(messages), timeout=10)
        unary = channel.unary_unary(path, request_serializer=None, response_deserializer=None)
        return unary(messages[0], timeout=10)


@pytest.mark.parametrize(
    ("method", "messages", "streaming"),
    [
        ("UploadPart", [b"\x0a\xff\xff"], True),
        (
            "UploadPart",
            [
                pb.UploadPartRequest(
                    header=pb.UploadPartHeader(
                        bucket="bucket-x", key="k", upload_id="u", part_number=1, content_length=4
                    )
                ).SerializeToString(),
                b"\x12\x05\x0a\x09",
            ],
            True,
        ),
        ("ListParts", [b"\x0a\xff\xff"], False),
        ("CompleteMultipartUpload", [b"\x22\x03\x08"], False),
    ],
    ids=["part-header", "part-data", "unary", "nested"],
)
def test_malformed_protobuf_is_invalid_argument(
    gateway_address: str, method: str, messages: list[bytes], streaming: bool
) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        _raw_call(gateway_address, method, messages, streaming)
    error: Any = caught.value
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error.details()
    assert "not valid protobuf" in error.details()
    assert error_info(error).reason == "INVALID_REQUEST"


@pytest.fixture
def hashing_threads(monkeypatch: pytest.MonkeyPatch) -> set[str]:
    """The names of the threads MultiHasher.update runs on, from now on."""
    threads: set[str] = set()
    original = checksums.MultiHasher.update

    def recording(self: checksums.MultiHasher, data: bytes | memoryview) -> None:
        threads.add(threading.current_thread().name)
        original(self, data)

    monkeypatch.setattr(checksums.MultiHasher, "update", recording)
    return threads


async def test_background_hasher_matches_inline_hashing(
    monkeypatch: pytest.MonkeyPatch, hashing_threads: set[str]
) -> None:
    algorithms = {checksums.SHA256, checksums.CRC32C, checksums.MD5}
    chunks = [os.urandom(n) for n in (1, 1000, 300_000, 0, 70_000)]
    monkeypatch.setattr(relay, "INLINE_HASH_SECONDS", 0.0)
    background = relay.BackgroundHasher(algorithms)
    for chunk in chunks:
        await background.update(memoryview(chunk))
    inline = checksums.MultiHasher(algorithms)
    inline.update(b"".join(chunks))
    assert await background.digests() == inline.digests()
    assert hashing_threads - {threading.current_thread().name}, "no update ran in a worker thread"


async def test_cheap_updates_stay_on_the_event_loop(hashing_threads: set[str]) -> None:
    background = relay.BackgroundHasher({checksums.CRC32C})
    await background.update(b"x" * 65536)
    await background.digests()
    assert hashing_threads == {threading.current_thread().name}


def test_calibrated_costs_rank_the_algorithms() -> None:
    # Relative, not absolute: SHA-512 does far more work per byte than CRC32C everywhere.
    assert checksums.seconds_per_byte(checksums.SHA512) > checksums.seconds_per_byte(
        checksums.CRC32C
    )
    assert all(checksums.seconds_per_byte(a) > 0 for a in checksums.ALL)


async def _messages(gaps: list[float]) -> Any:
    for gap in gaps:
        await asyncio.sleep(gap)
        yield Data(b"x")


async def test_idle_timer_lets_a_steady_stream_run_past_the_timeout() -> None:
    timer = timers.IdleTimer(0.2)
    stream = _messages([0.05] * 12)  # 0.6 s in all, never 0.2 s without a message
    received = 0
    while await timer.next(stream) is not None:
        received += 1
    timer.close()
    assert received == 12


async def test_idle_timer_ends_a_stalled_wait() -> None:
    timer = timers.IdleTimer(0.2)
    stream = _messages([0.0, 0.05, 5.0])
    await timer.next(stream)
    await timer.next(stream)
    started = time.monotonic()
    with pytest.raises(ResourceExhausted) as caught:
        await timer.next(stream)
    assert caught.value.reason == "IDLE_TIMEOUT"
    assert 0.15 < time.monotonic() - started < 1.0
    timer.close()


async def test_idle_timer_leaves_other_cancellations_alone() -> None:
    timer = timers.IdleTimer(5.0)
    waiting = asyncio.ensure_future(timer.next(_messages([10.0])))
    await asyncio.sleep(0.05)
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    timer.close()
