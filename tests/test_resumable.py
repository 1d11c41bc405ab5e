"""Resumable writes through a real gateway to real S3 stores (moto, Ceph RGW): StartResumableWrite,
WriteObject streams that begin with ``resume``, QueryWriteStatus, CancelResumableWrite, and the
token's defences."""

from __future__ import annotations

import os
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import grpc
import pytest

from gateway.exits import ExitCode
from gateway.security.auth import generate_token
from gateway.security.write_tokens import (
    MARKER_PREFIX,
    WriteKeys,
    generate_key,
    marker_key,
    parse_marker,
    principal_digest,
    upload_digest,
)
from gateway.units import MiB
from gateway.v1 import upload_service_pb2 as pb
from gateway.v1 import upload_service_pb2_grpc as pb_grpc
from tests.cli_helpers import gateway_cli
from tests.conftest import Backend
from tests.helpers import (
    GatewayThread,
    S3Reader,
    bearer,
    crc64,
    error_info,
    metric,
    resume_write,
    send_until_persisted,
    wait_for_async,
    write_object,
    write_refused,
    write_spec,
    write_stream,
    write_tokens,
)

Stub = pb_grpc.UploadServiceStub
PART = 5 * MiB


@pytest.fixture
def keys_file(tmp_path: Path) -> Path:
    path = tmp_path / "write-keys.yaml"
    path.write_text(f"signing: k1\nkeys:\n  k1: {generate_key()}\n")
    return path


@pytest.fixture
def gateway(make_gateway: Callable[..., GatewayThread], keys_file: Path) -> GatewayThread:
    return make_gateway(
        write_part_size=PART, write_parts_in_flight=2, write_token_keys_file=str(keys_file)
    )


@pytest.fixture
async def stub(gateway: GatewayThread) -> AsyncIterator[Stub]:
    async with grpc.aio.insecure_channel(gateway.address) as channel:
        yield pb_grpc.UploadServiceStub(channel)  # type: ignore[call-overload]


async def _start(stub: Stub, bucket: str, key: str, **fields: Any) -> str:
    spec = write_spec(bucket, key, **fields).spec
    started = await stub.StartResumableWrite(pb.StartResumableWriteRequest(spec=spec))
    assert started.part_size == PART
    token: str = started.write_token
    return token


async def _finish(
    stub: Stub, first: pb.WriteObjectRequest, data: bytes, whole: bytes
) -> pb.WrittenObject:
    finish = pb.FinishWrite(checksum_crc64nvme=crc64(whole))
    answers = await write_object(stub, first, data, finish)
    return answers[-1].object


async def test_a_write_cut_off_resumes_from_the_persisted_size(
    gateway: GatewayThread, stub: Stub, new_bucket: str, s3: S3Reader
) -> None:
    data = os.urandom(3 * PART + 1234)
    token = await _start(stub, new_bucket, "resumed.bin", object_size=len(data))
    token = await send_until_persisted(
        stub, resume_write(token, 0), data[: 2 * PART + MiB], 2 * PART
    )
    assert token

    status = await stub.QueryWriteStatus(pb.QueryWriteStatusRequest(write_token=token))
    assert status.persisted_size == 2 * PART
    offset = status.persisted_size
    written = await _finish(stub, resume_write(status.write_token, offset), data[offset:], data)

    assert s3.read(new_bucket, "resumed.bin") == data
    assert (written.size, written.parts) == (len(data), 4)
    assert written.computed_checksums["CRC64NVME"] == crc64(data)
    assert s3.uploads(new_bucket) == []
    events = {
        event: metric(gateway, "s3gateway_resumable_writes_total", event=event)
        for event in ("started", "resumed", "completed", "cancelled")
    }
    assert events == {"started": 1, "resumed": 1, "completed": 1, "cancelled": 0}


async def test_a_wrong_offset_is_refused_with_the_persisted_size(
    stub: Stub, new_bucket: str
) -> None:
    data = os.urandom(2 * PART)
    token = await _start(stub, new_bucket, "offset.bin")
    token = await send_until_persisted(stub, resume_write(token, 0), data, PART)
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await _finish(stub, resume_write(token, 3), b"", data)
    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    info = error_info(refused.value)
    assert info.reason == "WRITE_OFFSET_MISMATCH"
    persisted = int(info.metadata["persistedSize"])
    assert persisted >= PART
    # The metadata is enough to resync in one round trip.
    resumed = resume_write(info.metadata["writeToken"], persisted)
    written = await _finish(stub, resumed, data[persisted:], data)
    assert written.size == len(data)


async def test_a_finish_repeated_after_a_lost_answer_returns_the_same_object(
    stub: Stub, new_bucket: str, s3: S3Reader
) -> None:
    data = os.urandom(PART + 10)
    token = await _start(stub, new_bucket, "twice.bin")
    first = await _finish(stub, resume_write(token, 0), data, data)
    again = await _finish(stub, resume_write(token, len(data)), b"", data)
    etag = s3.client.head_object(Bucket=new_bucket, Key="twice.bin")["ETag"]
    assert first.etag in (etag, "")  # Ceph RGW 16 answers Complete without an ETag
    assert (again.etag, again.size, again.parts) == (etag, first.size, first.parts)
    status = await stub.QueryWriteStatus(pb.QueryWriteStatusRequest(write_token=token))
    assert status.WhichOneof("status") == "object"
    assert status.object.etag == etag
    assert s3.read(new_bucket, "twice.bin") == data


async def test_a_small_resumable_write_is_one_put(
    stub: Stub, new_bucket: str, s3: S3Reader
) -> None:
    token = await _start(stub, new_bucket, "small.bin")
    written = await _finish(stub, resume_write(token, 0), b"tiny", b"tiny")
    assert (written.size, written.parts) == (4, 0)
    assert s3.read(new_bucket, "small.bin") == b"tiny"
    await wait_for_async(lambda: s3.uploads(new_bucket) == [], "the unneeded upload aborted")


async def test_cancel_aborts_and_is_idempotent(
    gateway: GatewayThread, stub: Stub, new_bucket: str, s3: S3Reader
) -> None:
    token = await _start(stub, new_bucket, "cancelled.bin")
    assert s3.uploads(new_bucket)
    request = pb.CancelResumableWriteRequest(write_token=token)
    await stub.CancelResumableWrite(request)
    assert s3.uploads(new_bucket) == []
    assert metric(gateway, "s3gateway_resumable_writes_total", event="cancelled") == 1
    await stub.CancelResumableWrite(request)
    with pytest.raises(grpc.aio.AioRpcError) as gone:
        await stub.QueryWriteStatus(pb.QueryWriteStatusRequest(write_token=token))
    assert gone.value.code() == grpc.StatusCode.NOT_FOUND


async def test_a_write_needs_a_crc(stub: Stub, new_bucket: str) -> None:
    spec = write_spec(new_bucket, "k", checksum_algorithm=pb.CHECKSUM_ALGORITHM_SHA256).spec
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await stub.StartResumableWrite(pb.StartResumableWriteRequest(spec=spec))
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "CRC" in (refused.value.details() or "")


# --- the token's defences: a clear status, and no S3 call ---------------------------------------


@contextmanager
def _s3_calls(gateway: GatewayThread) -> Iterator[list[str]]:
    calls: list[str] = []

    def record(event_name: str, **_: Any) -> None:
        calls.append(event_name)

    assert gateway.gateway.s3 is not None
    gateway.gateway.s3.register("before-send.s3", record)
    try:
        yield calls
    finally:
        gateway.gateway.s3.unregister("before-send.s3", record)


def _tampered(token: str) -> str:
    prefix, payload, mac = token.split(".")
    return f"{prefix}.{payload[:-2]}{'A' if payload[-2] != 'A' else 'B'}{payload[-1]}.{mac}"


async def test_tampered_and_expired_tokens_are_refused_before_s3(
    gateway: GatewayThread, stub: Stub, new_bucket: str, keys_file: Path
) -> None:
    token = await _start(stub, new_bucket, "guarded.bin")
    keys = WriteKeys(keys_file)
    expired = keys.sign(
        keys.verify(token).__class__(
            **{**keys.verify(token).__dict__, "expires": int(time.time()) - 1}
        )
    )
    cases = {
        "tampered": (_tampered(token), grpc.StatusCode.INVALID_ARGUMENT, "WRITE_TOKEN_INVALID"),
        "garbage": ("not-a-token", grpc.StatusCode.INVALID_ARGUMENT, "WRITE_TOKEN_INVALID"),
        "expired": (expired, grpc.StatusCode.FAILED_PRECONDITION, "WRITE_TOKEN_EXPIRED"),
    }
    with _s3_calls(gateway) as calls:
        for text, code, reason in cases.values():
            for call in (
                stub.QueryWriteStatus(pb.QueryWriteStatusRequest(write_token=text)),
                stub.CancelResumableWrite(pb.CancelResumableWriteRequest(write_token=text)),
            ):
                with pytest.raises(grpc.aio.AioRpcError) as refused:
                    await call
                assert refused.value.code() == code
                assert error_info(refused.value).reason == reason
            # grpc's synchronous API: grpc.aio may report the early answer as INTERNAL
            # (grpc/grpc#36066).
            stream = write_stream(resume_write(text, 0), b"x", pb.FinishWrite())
            error = await write_refused(gateway.address, stream)
            assert (error.code(), error_info(error).reason) == (code, reason)
    assert calls == []
    assert metric(gateway, "s3gateway_resumable_writes_total", event="expired") == 3


@pytest.mark.backends("moto")
async def test_another_callers_token_is_refused_before_s3(
    make_gateway: Callable[..., GatewayThread], keys_file: Path, tmp_path: Path, new_bucket: str
) -> None:
    alice, bob = generate_token(), generate_token()
    tokens = write_tokens(tmp_path / "tokens.yaml", alice=alice, bob=bob)
    gateway = make_gateway(
        write_token_keys_file=str(keys_file), auth_tokens_file=str(tokens), allow_all=True
    )
    async with grpc.aio.insecure_channel(gateway.address) as channel:
        stub = pb_grpc.UploadServiceStub(channel)  # type: ignore[call-overload]
        spec = write_spec(new_bucket, "alices.bin").spec
        started = await stub.StartResumableWrite(
            pb.StartResumableWriteRequest(spec=spec), metadata=bearer(alice)
        )
        assert WriteKeys(keys_file).verify(started.write_token).principal == (
            principal_digest("alice")
        )
        with _s3_calls(gateway) as calls, pytest.raises(grpc.aio.AioRpcError) as refused:
            await stub.QueryWriteStatus(
                pb.QueryWriteStatusRequest(write_token=started.write_token),
                metadata=bearer(bob),
            )
        assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert error_info(refused.value).reason == "WRITE_TOKEN_PRINCIPAL"
        assert calls == []
        status = await stub.QueryWriteStatus(
            pb.QueryWriteStatusRequest(write_token=started.write_token), metadata=bearer(alice)
        )
        assert status.persisted_size == 0


@pytest.mark.backends("moto")
async def test_without_keys_resumable_writes_are_off(
    make_gateway: Callable[..., GatewayThread], new_bucket: str
) -> None:
    gateway = make_gateway()
    async with grpc.aio.insecure_channel(gateway.address) as channel:
        stub = pb_grpc.UploadServiceStub(channel)  # type: ignore[call-overload]
        spec = write_spec(new_bucket, "k").spec
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stub.StartResumableWrite(pb.StartResumableWriteRequest(spec=spec))
    assert refused.value.code() == grpc.StatusCode.UNIMPLEMENTED
    assert error_info(refused.value).reason == "RESUMABLE_WRITES_DISABLED"


@pytest.mark.backends("moto")
async def test_a_spec_too_large_for_a_token_is_refused_before_s3(
    stub: Stub, new_bucket: str, s3: S3Reader
) -> None:
    """Metadata up to S3's 2 KiB rides in the token; a spec no token could carry is refused at
    the start, with no upload created, rather than a write that could never be resumed."""
    metadata = {f"k{i}": "v" * 60 for i in range(30)}  # about 2 KiB
    token = await _start(stub, new_bucket, "meta.bin", metadata=metadata)
    status = await stub.QueryWriteStatus(pb.QueryWriteStatusRequest(write_token=token))
    assert dict(status.spec.object.metadata) == metadata
    await stub.CancelResumableWrite(pb.CancelResumableWriteRequest(write_token=token))
    spec = write_spec(new_bucket, "huge.bin", content_disposition="x" * 20000).spec
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await stub.StartResumableWrite(pb.StartResumableWriteRequest(spec=spec))
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert s3.uploads(new_bucket) == []


# --- markers and the reaper ----------------------------------------------------------------------


def _listed(s3: S3Reader, bucket: str) -> dict[str, str]:
    """The bucket's uploads: upload id → key."""
    uploads = s3.client.list_multipart_uploads(Bucket=bucket).get("Uploads", [])
    return {u["UploadId"]: u["Key"] for u in uploads}


def _reap(gateway: GatewayThread, bucket: str, *args: str) -> tuple[list[list[str]], str]:
    result = gateway_cli("reap-uploads", "--bucket", bucket, *args, endpoint=gateway.address)
    assert result.returncode == 0, result.stderr
    return [line.split("\t") for line in result.stdout.splitlines()], result.stderr


async def test_a_write_is_marked_while_it_lasts(
    stub: Stub, new_bucket: str, s3: S3Reader, keys_file: Path
) -> None:
    """Each resumable write has a marker upload whose signed key names its expiry and upload;
    finishing the write aborts it (cancelling too: test_cancel_aborts_and_is_idempotent)."""
    data = os.urandom(PART + 1)
    token = await _start(stub, new_bucket, "marked.bin", object_size=len(data))
    write = WriteKeys(keys_file).verify(token)
    listed = _listed(s3, new_bucket)
    assert set(listed) == {write.upload_id, write.marker_upload_id}
    marker = parse_marker(listed[write.marker_upload_id])
    assert marker is not None
    assert marker.signed(WriteKeys(keys_file).value.keys, new_bucket)
    assert not marker.signed(WriteKeys(keys_file).value.keys, new_bucket + "-other")
    assert (marker.expires, marker.upload) == (write.expires, upload_digest(write.upload_id))
    await _finish(stub, resume_write(token, 0), data, data)
    assert _listed(s3, new_bucket) == {}


async def test_reap_uploads_aborts_expired_writes_and_only_those(
    gateway: GatewayThread,
    stub: Stub,
    new_bucket: str,
    s3: S3Reader,
    keys_file: Path,
    backend: Backend,
) -> None:
    # moto reports every upload initiated in 2010 (S3-FACTS): ages mean something on RGW only.
    age = ["--older-than", "1d"] if backend.name == "rgw" else []
    keys = WriteKeys(keys_file).value
    secret = keys.keys[keys.signing]
    past = int(time.time()) - 60
    data = os.urandom(2 * PART)

    # A write that expired with a part persisted: its marker is made as the gateway made it,
    # with an expiry in the past (GATEWAY_WRITE_TOKEN_TTL is at least a minute).
    expired = WriteKeys(keys_file).verify(await _start(stub, new_bucket, "expired.bin"))
    s3.client.upload_part(
        Bucket=new_bucket, Key="expired.bin", UploadId=expired.upload_id, PartNumber=1,
        Body=data[:PART],
    )  # fmt: skip
    s3.client.abort_multipart_upload(
        Bucket=new_bucket, Key=expired.marker_key, UploadId=expired.marker_upload_id
    )
    stale_marker = marker_key(keys.signing, secret, new_bucket, expired.upload_id, past)
    s3.client.create_multipart_upload(Bucket=new_bucket, Key=stale_marker)
    # The marker of a write that ended, left behind (its replica died before it aborted it).
    ended = marker_key(keys.signing, secret, new_bucket, "an upload that is gone", past)
    s3.client.create_multipart_upload(Bucket=new_bucket, Key=ended)
    # What must stay: a live write, a plain upload, and uploads that only look like markers:
    # a forged mac, and a real marker of another bucket, both naming the plain upload.
    live_token = await _start(stub, new_bucket, "live.bin", object_size=len(data))
    plain = await stub.CreateMultipartUpload(
        pb.CreateMultipartUploadRequest(bucket=new_bucket, key="plain.bin")
    )
    digest = upload_digest(plain.upload_id)
    forged = f"{MARKER_PREFIX}{past}/{digest}.{keys.signing}.AAAAAAAAAAAAAAAAAAAAAA"
    elsewhere = marker_key(keys.signing, secret, "another-bucket", plain.upload_id, past)
    for key in (forged, elsewhere):
        s3.client.create_multipart_upload(Bucket=new_bucket, Key=key)
    before = _listed(s3, new_bucket)
    assert len(before) == 8

    lines, _ = _reap(gateway, new_bucket, *age, "--dry-run",
                     "--write-token-keys-file", str(keys_file))  # fmt: skip
    assert {(line[0], line[1], line[4]) for line in lines} == {
        ("would abort", "expired.bin", "expired write"),
        ("would abort", stale_marker, "marker"),
        ("would abort", ended, "marker"),
    }
    assert _listed(s3, new_bucket) == before
    # Under a prefix, a marker whose write is not listed may name a write outside it: kept.
    lines, _ = _reap(gateway, new_bucket, "--prefix", "plain", "--write-token-keys-file",
                     str(keys_file))  # fmt: skip
    assert lines == []

    lines, told = _reap(gateway, new_bucket, "--write-token-keys-file", str(keys_file))
    assert sorted(line[4] for line in lines) == ["expired write", "marker", "marker"]
    assert "1 expired resumable write(s) and 2 marker(s) aborted" in told
    left = _listed(s3, new_bucket)
    assert sorted(left.values()) == sorted(
        [forged, elsewhere, "plain.bin", "live.bin", WriteKeys(keys_file).verify(live_token)
         .marker_key]
    )  # fmt: skip
    if age:  # without the keys, only age counts, as it always did
        lines, _ = _reap(gateway, new_bucket, *age)
        assert lines == []

    written = await _finish(stub, resume_write(live_token, 0), data, data)
    assert written.size == len(data)
    assert sorted(_listed(s3, new_bucket).values()) == sorted([forged, elsewhere, "plain.bin"])


@pytest.mark.backends("moto")
def test_reap_uploads_needs_an_age_or_the_keys(gateway: GatewayThread, tmp_path: Path) -> None:
    result = gateway_cli("reap-uploads", "--bucket", "b", endpoint=gateway.address,
                         env={"GATEWAY_WRITE_TOKEN_KEYS_FILE": ""})  # fmt: skip
    assert result.returncode == ExitCode.USAGE
    assert "--older-than" in result.stderr
    bad = tmp_path / "keys.yaml"
    bad.write_text("signing: k\n")
    result = gateway_cli("reap-uploads", "--bucket", "b", "--write-token-keys-file", str(bad),
                         endpoint=gateway.address)  # fmt: skip
    assert result.returncode == ExitCode.CLIENT_CONFIG
    assert "write token key file" in result.stderr
