"""Hostile callers: random and malformed requests, floods of concurrent calls, stalled streams.

The property test sends random UploadPart streams (hostile header values, messages in any order,
wrong checksums, protobuf encodings the generated code never produces, and raw garbage bytes) and
checks every outcome against a model of the protocol written from the proto's rules
(tests/hostile_model.py):

* the status is OK or one the API documents, never UNKNOWN or INTERNAL (the gateway's credentials
  are fine, so INTERNAL can only be a gateway bug), and no call hangs;
* OK only for a stream the model calls valid (a valid header first, then data totalling
  ``content_length``, every chunk CRC and declared checksum right, at most one trailer, last), and
  the part S3 then holds is exactly the bytes the model decoded;
* a refused stream never changes a part: after every example the parts of a real upload (ListParts
  straight from moto) equal what the OK outcomes alone put there.

Which bytes a raw message carries is decided by protobuf's own parser (upb) in the model: it
parses each message exactly as a protobuf-conformant server must, so the gateway's own wire decoder
(gateway/wire.py) is checked against it.

The other tests: random bytes as every unary request; an oversized message; 200 streams and 200
unary calls at once, some cancelled (admission limits, nothing committed by a cancelled stream,
nothing left in flight, the gateway healthy afterwards); streams stalled past their deadline.

Every call goes through grpc's synchronous API: grpc.aio clients can report a spurious INTERNAL
for a client-streaming call the server ends early (grpc/grpc#36066).
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from awscrt import checksums as crt
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.v1 import upload_service_pb2 as pb
from gateway.v1 import upload_service_pb2_grpc as pb_grpc
from tests.helpers import (
    GatewayThread,
    create_bucket,
    data_message,
    header_message,
    inflight_streams,
    metric,
    wait_for,
)
from tests.hostile_model import (
    ALLOWED_ERRORS,
    MAX_PART_SIZE,
    REFUSALS,
    C,
    Real,
    Scenario,
    judge,
    scenarios,
)

UPLOAD_PART = "/gateway.v1.UploadService/UploadPart"
#: Seconds one call may take before the test calls it a hang (moto answers in milliseconds).
CALL_TIMEOUT = 20.0


# --- fixtures and helpers ------------------------------------------------------------------


def new_upload(s3: Any, key: str) -> Real:
    bucket = create_bucket(s3, "hostile")
    upload_id = s3.create_multipart_upload(Bucket=bucket, Key=key)["UploadId"]
    return Real(bucket, key, upload_id)


@pytest.fixture(scope="module")
def channel(gateway_address: str) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(gateway_address) as ch:
        yield ch


def parts(s3: Any, real: Real) -> dict[int, tuple[str, int]]:
    response = s3.list_parts(Bucket=real.bucket, Key=real.key, UploadId=real.upload_id)
    return {p["PartNumber"]: (p["ETag"], p["Size"]) for p in response.get("Parts", [])}


def etag(content: bytes) -> str:
    """The ETag moto (and S3, without SSE-KMS) gives a part: the MD5 of its bytes."""
    return f'"{hashlib.md5(content).hexdigest()}"'


def healthy(channel: grpc.Channel) -> None:
    response = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
    assert response.status == health_pb2.HealthCheckResponse.SERVING


def normal_part(channel: grpc.Channel, real: Real, part_number: int, content: bytes) -> str:
    """A plain valid UploadPart; must succeed quickly. Returns the ETag."""
    stub = pb_grpc.UploadServiceStub(channel)
    messages = [
        header_message(
            bucket=real.bucket,
            key=real.key,
            upload_id=real.upload_id,
            part_number=part_number,
            content_length=len(content),
        ),
        data_message(content),
    ]
    response = stub.UploadPart(iter(messages), timeout=5)
    assert response.etag == etag(content)
    return str(response.etag)


# --- the tests -----------------------------------------------------------------------------


def test_random_upload_part_streams_never_fail_badly_or_commit_invalid_parts(
    moto_gateway: GatewayThread, channel: grpc.Channel, moto_s3: Any
) -> None:
    """The property of the module docstring, over random streams; then the gateway is healthy,
    serves a normal part, and holds no stream, task or buffer byte."""
    assert moto_gateway.settings.max_part_size == MAX_PART_SIZE  # as the model assumes
    real = new_upload(moto_s3, "hostile/ünïcødé object.bin")
    upload_part = channel.stream_unary(
        UPLOAD_PART,
        request_serializer=lambda raw: raw,
        response_deserializer=pb.UploadPartResponse.FromString,
    )
    seen: dict[str, int] = {}

    def plain(h: pb.UploadPartHeader) -> bool:
        """A header whose valid stream S3 (moto) must take if the upload exists: the real key
        (moto ignores the key, a strange one may not even reach the bucket), no SSE-C for an
        upload created without, no expected owner."""
        return h.key == real.key and not h.sse_customer_key and not h.expected_bucket_owner

    @settings(
        max_examples=150,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(scenario=scenarios(real))
    def check(scenario: Scenario) -> None:
        verdict = judge(scenario.raws)
        # Each example checks against the parts it found, so that it replays alike.
        expected_parts = parts(moto_s3, real)
        started = time.monotonic()
        response: pb.UploadPartResponse | None = None
        try:
            response = upload_part(iter(scenario.raws), timeout=CALL_TIMEOUT)
            code, details = C.OK, ""
        except grpc.RpcError as error:
            code, details = error.code(), error.details()
        elapsed = time.monotonic() - started
        outcome = f"{code.name} {details!r} for a stream the model judges {verdict}"
        seen[code.name] = seen.get(code.name, 0) + 1

        assert code is C.OK or code in ALLOWED_ERRORS, outcome
        assert elapsed < CALL_TIMEOUT * 0.9, f"the call hung for {elapsed:.1f} s: {outcome}"
        if verdict.stage is not None:
            assert code in REFUSALS[verdict.stage], outcome

        h = verdict.header
        targets_real = h is not None and h.bucket == real.bucket and h.upload_id == real.upload_id
        if code is C.OK:
            assert verdict.stage is None, outcome
            assert h is not None and targets_real, outcome  # moto ignores the key
            assert response is not None and response.etag == etag(verdict.content), outcome
            expected_parts[h.part_number] = (response.etag, len(verdict.content))
        elif verdict.stage is None and h is not None and plain(h):
            if targets_real:
                raise AssertionError(f"a valid stream was refused: {outcome}")
            # Real S3 answers NoSuchUpload; moto's UploadPart fails on an unknown upload id with
            # HTTP 500 (a KeyError inside moto), and ListParts then tells the gateway it is gone.
            assert code is C.NOT_FOUND, outcome
        # Nothing but an OK changes a part: no refused stream left bytes behind.
        assert parts(moto_s3, real) == expected_parts, outcome

    check()
    print(f"outcomes: {seen}")
    # Something was committed and something was refused, or the test proved little.
    assert seen.get("OK", 0) >= 5 and seen.get("INVALID_ARGUMENT", 0) >= 5, seen
    # And the gateway is still fine.
    healthy(channel)
    normal_part(channel, real, 4, b"still alive")
    wait_for(lambda: inflight_streams(moto_gateway) == 0, "no stream in flight")
    wait_for(lambda: moto_gateway.call_tasks() == set(), "no call task left")
    assert metric(moto_gateway, "s3gateway_buffer_reserved_bytes") == 0


UNARY_METHODS = {
    m.name: getattr(pb, m.output_type.name)
    for m in pb.DESCRIPTOR.services_by_name["UploadService"].methods
    if not m.client_streaming
}


def test_garbage_unary_requests_are_refused_cleanly(
    moto_gateway: GatewayThread, channel: grpc.Channel
) -> None:
    """Random bytes as the request of every unary method: a clean refusal (or, for bytes that
    happen to decode, S3's answer), never UNKNOWN or INTERNAL."""
    seen: dict[str, int] = {}

    @settings(max_examples=60, deadline=None, database=None)
    @given(
        method=st.sampled_from(sorted(UNARY_METHODS)),
        raw=st.one_of(
            st.binary(max_size=80),
            st.binary(max_size=40).map(lambda b: b"\x0a\x05" + b),  # a bucket, then garbage
        ),
    )
    def check(method: str, raw: bytes) -> None:
        call = channel.unary_unary(
            f"/gateway.v1.UploadService/{method}",
            request_serializer=lambda r: r,
            response_deserializer=UNARY_METHODS[method].FromString,
        )
        try:
            call(raw, timeout=CALL_TIMEOUT)
            code, details = C.OK, ""
        except grpc.RpcError as error:
            code, details = error.code(), error.details()
        seen[code.name] = seen.get(code.name, 0) + 1
        assert code is C.OK or code in ALLOWED_ERRORS, f"{method}: {code.name} {details!r}"

    check()
    assert seen.get("INVALID_ARGUMENT", 0) >= 10, seen
    healthy(channel)


def test_an_oversized_message_is_refused_and_commits_nothing(
    moto_gateway: GatewayThread, channel: grpc.Channel, moto_s3: Any
) -> None:
    """A data message larger than GATEWAY_MAX_MESSAGE_SIZE: grpc refuses it (RESOURCE_EXHAUSTED)
    and the part is not committed, even though its header announced exactly that length."""
    real = new_upload(moto_s3, "hostile/oversized.bin")
    content = b"o" * (moto_gateway.settings.max_message_size + 1)
    header = header_message(
        bucket=real.bucket,
        key=real.key,
        upload_id=real.upload_id,
        part_number=1,
        content_length=len(content),
    )
    with pytest.raises(grpc.RpcError) as caught:
        pb_grpc.UploadServiceStub(channel).UploadPart(
            iter([header, data_message(content)]), timeout=CALL_TIMEOUT
        )
    assert caught.value.code() is C.RESOURCE_EXHAUSTED, caught.value
    assert parts(moto_s3, real) == {}
    wait_for(lambda: inflight_streams(moto_gateway) == 0, "no stream in flight")
    healthy(channel)
    normal_part(channel, real, 1, b"small")


def admitted_streams(running: GatewayThread, wanted: int) -> int:
    """How many of ``wanted`` simultaneous streams of one (anonymous) caller the gateway admits:
    its admission limits (GATEWAY_MAX_STREAMS, GATEWAY_MAX_STREAMS_PER_PRINCIPAL, and the
    GATEWAY_MAX_BUFFER_BYTES budget each stream reserves its window and one message from)."""
    s = running.settings
    by_budget = s.max_buffer_bytes // (s.stream_window + s.max_message_size)
    return min(wanted, s.max_streams, s.principal_stream_limit, by_budget)


def test_flood_of_streams_and_calls_leaves_the_gateway_healthy(
    moto_gateway: GatewayThread, moto_s3: Any
) -> None:
    """200 UploadPart streams that stall after their first bytes, 200 unary calls at once;
    the gateway admits what its limits allow and refuses the rest with RESOURCE_EXHAUSTED; then
    half of the admitted streams are cancelled and the others finish. Afterwards nothing is left
    in flight, no buffer bytes are held, only the finished parts exist, and the gateway serves
    as before."""
    real = new_upload(moto_s3, "flood/object.bin")
    streams, unary = 200, 200
    admitted = admitted_streams(moto_gateway, streams)
    wait_for(lambda: inflight_streams(moto_gateway) == 0, "earlier streams gone")
    release = threading.Event()
    content = b"flood part " * 100

    def part_stream(number: int) -> Iterator[pb.UploadPartRequest]:
        length = {"content_length": len(content)} if number % 4 < 2 else {}  # streamed, buffered
        yield header_message(
            bucket=real.bucket,
            key=real.key,
            upload_id=real.upload_id,
            part_number=number,
            **length,
        )
        # Part of the bytes, then a stall: a streamed part is already on its way to S3.
        yield data_message(content[:500], crt.crc32c(content[:500]))
        if not release.wait(CALL_TIMEOUT):
            return
        yield data_message(content[500:])

    with grpc.insecure_channel(moto_gateway.address) as channel:
        stub = pb_grpc.UploadServiceStub(channel)
        health = health_pb2_grpc.HealthStub(channel)
        part_calls = {
            n: stub.UploadPart.future(part_stream(n), timeout=CALL_TIMEOUT * 2)
            for n in range(1, streams + 1)
        }
        calls: list[Any] = []
        for i in range(unary):
            if i % 4 == 0:
                calls.append(health.Check.future(health_pb2.HealthCheckRequest(), timeout=60))
            elif i % 4 == 1:
                bad = pb.ListPartsRequest(bucket="NOT a bucket", key="k", upload_id="u")
                calls.append(stub.ListParts.future(bad, timeout=60))
            else:
                request = pb.ListPartsRequest(
                    bucket=real.bucket, key=real.key, upload_id=real.upload_id
                )
                calls.append(stub.ListParts.future(request, timeout=60))
        try:
            wait_for(
                lambda: (
                    inflight_streams(moto_gateway) == admitted
                    and sum(c.done() for c in part_calls.values()) == streams - admitted
                ),
                f"{admitted} streams in flight and the others refused",
                15,
                detail=lambda: (
                    inflight_streams(moto_gateway),
                    [c.done() for c in part_calls.values()],
                ),
            )
        finally:
            pending = [n for n, c in part_calls.items() if not c.done()]
            cancelled = set(pending[::2])
            for n in cancelled:
                part_calls[n].cancel()
            release.set()

        refused = [n for n, c in part_calls.items() if n not in pending]
        for n in refused:
            assert part_calls[n].code() is C.RESOURCE_EXHAUSTED, (n, part_calls[n].code())
        for n in pending:
            call = part_calls[n]
            if n in cancelled:
                assert call.cancelled() or call.code() is C.CANCELLED, (n, call.code())
            else:
                assert call.result().etag == etag(content), n
        for i, call in enumerate(calls):
            if i % 4 == 1:
                assert call.code() is C.INVALID_ARGUMENT, (i, call.code(), call.details())
            else:
                assert call.code() is C.OK, (i, call.code(), call.details())

        wait_for(lambda: inflight_streams(moto_gateway) == 0, "no stream in flight")
        wait_for(lambda: moto_gateway.call_tasks() == set(), "no call task left")
        assert metric(moto_gateway, "s3gateway_buffer_reserved_bytes") == 0
        healthy(channel)
        started = time.monotonic()
        normal_part(channel, real, streams + 1, b"after the flood")
        assert time.monotonic() - started < 3

    # Cancelled and refused streams committed nothing; the others exactly their bytes.
    finished = {n: (etag(content), len(content)) for n in pending if n not in cancelled}
    assert len(finished) >= admitted // 2 > 0
    assert parts(moto_s3, real) == finished | {streams + 1: (etag(b"after the flood"), 15)}


def test_streams_stalled_past_their_deadline_commit_nothing(
    moto_gateway: GatewayThread, channel: grpc.Channel, moto_s3: Any
) -> None:
    """Callers that send part of a part and stall until their deadline passes: DEADLINE_EXCEEDED,
    nothing committed (streamed parts were already on their way to S3), nothing left behind."""
    real = new_upload(moto_s3, "hostile/stalled.bin")
    content = b"stalled " * 300
    release = threading.Event()

    def stalled(number: int) -> Iterator[pb.UploadPartRequest]:
        length = {"content_length": len(content)} if number % 2 else {}  # streamed, buffered
        yield header_message(
            bucket=real.bucket,
            key=real.key,
            upload_id=real.upload_id,
            part_number=number,
            **length,
        )
        yield data_message(content[:1000])
        release.wait(CALL_TIMEOUT)

    stub = pb_grpc.UploadServiceStub(channel)
    try:
        calls = [stub.UploadPart.future(stalled(n), timeout=1.0) for n in range(1, 5)]
        codes = [call.code() for call in calls]
    finally:
        release.set()
    assert codes == [C.DEADLINE_EXCEEDED] * 4
    wait_for(lambda: inflight_streams(moto_gateway) == 0, "no stream in flight")
    wait_for(lambda: moto_gateway.call_tasks() == set(), "no call task left")
    assert parts(moto_s3, real) == {}
    normal_part(channel, real, 1, content)
