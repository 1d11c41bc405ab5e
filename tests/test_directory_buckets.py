"""Directory buckets (S3 Express One Zone): routing, session auth, rules, the reaper.

No request leaves the machine: the gateway's directory endpoint override points at a loopback
stand-in for a zonal endpoint (tests/backends/zonal.py) that records what it receives, reached
through a CONNECT proxy because virtual-host names like ``b--usw2-az1--x-s3.zonal.test`` resolve
nowhere. What is checked is what the gateway puts on the wire.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from gateway import checksums
from gateway.config import Settings
from gateway.exits import ExitCode
from gateway.security.write_tokens import MARKER_PREFIX, WriteKeys, generate_key, marker_key
from gateway.v1 import upload_service_pb2 as pb
from gateway.v1 import upload_service_pb2_grpc as pb_grpc
from tests.backends.zonal import DOMAIN, ZonalServer
from tests.helpers import (
    GatewayThread,
    MiB,
    error_info,
    part_messages,
    part_stream,
    sample_value,
    scrape,
    stub_for,
    upload_part_error,
)

REGION = "us-west-2"


@pytest.fixture(scope="module")
def zonal(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ZonalServer]:
    with ZonalServer(tmp_path_factory.mktemp("zonal")) as server:
        yield server


def start_gateway(zonal: ZonalServer, moto_endpoint: str, **changes: Any) -> GatewayThread:
    """A gateway whose directory buckets go to the stand-in, through the proxy (HTTPS_PROXY is
    read when the S3 clients are created)."""
    settings = Settings(
        listen_address="127.0.0.1:0",
        metrics_address="127.0.0.1:0",
        drain_delay=0,
        s3_endpoint_url=moto_endpoint,
        s3_directory_endpoint_url=zonal.endpoint_url,
        s3_region=REGION,
        s3_ca_bundle=str(zonal.tls.ca),
    ).replace(**changes)
    previous = os.environ.get("HTTPS_PROXY")
    os.environ["HTTPS_PROXY"] = zonal.proxy_url
    try:
        return GatewayThread(settings, ("testing", "testing")).__enter__()
    finally:
        if previous is None:
            del os.environ["HTTPS_PROXY"]
        else:
            os.environ["HTTPS_PROXY"] = previous


@pytest.fixture(scope="module")
def directory_gateway(zonal: ZonalServer, moto_endpoint: str) -> Iterator[GatewayThread]:
    running = start_gateway(zonal, moto_endpoint)
    yield running
    running.__exit__(None, None, None)


@pytest.fixture
async def stub(directory_gateway: GatewayThread) -> AsyncIterator[pb_grpc.UploadServiceStub]:
    async with grpc.aio.insecure_channel(directory_gateway.address) as channel:
        yield pb_grpc.UploadServiceStub(channel)  # type: ignore[call-overload]


@pytest.fixture
def bucket() -> str:
    return f"b{uuid.uuid4().hex[:12]}--usw2-az1--x-s3"


async def upload_parts(stub: Any, bucket: str, sizes: list[int]) -> tuple[str, list[Any]]:
    created = await stub.CreateMultipartUpload(
        pb.CreateMultipartUploadRequest(bucket=bucket, key="k")
    )
    responses = []
    for number, size in enumerate(sizes, start=1):
        data = os.urandom(size)
        header = dict(
            bucket=bucket,
            key="k",
            upload_id=created.upload_id,
            part_number=number,
            content_length=size,
        )
        response = await stub.UploadPart(part_stream(header, data))
        responses.append((data, response))
    return created.upload_id, responses


async def test_requests_go_to_the_zonal_virtual_host_with_one_session(
    zonal: ZonalServer, stub: Any, bucket: str
) -> None:
    before = len(zonal.requests)
    created = await stub.CreateMultipartUpload(
        pb.CreateMultipartUploadRequest(bucket=bucket, key="k")
    )
    # No algorithm named: directory buckets default to CRC32C, and the answer says so.
    assert created.checksum_algorithm == pb.CHECKSUM_ALGORITHM_CRC32C
    parts = []
    for number in (1, 2, 3):
        data = os.urandom(MiB + number)
        header = dict(
            bucket=bucket,
            key="k",
            upload_id=created.upload_id,
            part_number=number,
            content_length=len(data),
        )
        response = await stub.UploadPart(part_stream(header, data))
        crc = checksums.encode(checksums.CRC32C.compute(data))
        assert response.checksum_crc32c == crc
        parts.append(pb.CompletedPart(part_number=number, etag=response.etag, checksum_crc32c=crc))
    await stub.CompleteMultipartUpload(
        pb.CompleteMultipartUploadRequest(
            bucket=bucket, key="k", upload_id=created.upload_id, parts=parts
        )
    )
    sent = [r for r in zonal.requests[before:] if r.host == f"{bucket}.{DOMAIN}"]
    assert [r.operation for r in sent] == [
        "CreateSession",
        "CreateMultipartUpload",
        "UploadPart",
        "UploadPart",
        "UploadPart",
        "CompleteMultipartUpload",
    ]
    assert len(sent) == len(zonal.requests) - before  # nothing went elsewhere
    assert len({r.headers["x-amz-s3session-token"] for r in sent[1:]}) == 1  # one session, shared
    for request in sent[1:]:
        assert request.path == "/k"  # virtual-host style: no bucket in the path
        assert request.headers["x-amz-s3session-token"].startswith("session-token-")
        assert "content-md5" not in request.headers
        assert "Credential=SESSIONKEY" in request.headers["authorization"]
    assert "x-amz-s3session-token" not in sent[0].headers
    assert sent[1].headers["x-amz-checksum-algorithm"] == "CRC32C"
    for request in sent[2:5]:
        assert request.headers["x-amz-trailer"] == "x-amz-checksum-crc32c"
        assert request.trailers["x-amz-checksum-crc32c"] == checksums.encode(
            checksums.CRC32C.compute(request.body)
        )


async def test_session_is_refreshed_before_it_expires(
    zonal: ZonalServer, stub: Any, bucket: str
) -> None:
    zonal.session_lifetime = dt.timedelta(seconds=47)  # botocore refreshes 45 s before expiry
    try:
        upload_id, _ = await upload_parts(stub, bucket, [1000])
        assert len(_sessions(zonal, bucket)) == 1
        await asyncio.sleep(2.5)
        header = dict(bucket=bucket, key="k", upload_id=upload_id, part_number=2, content_length=10)
        await stub.UploadPart(part_stream(header, b"0123456789"))
    finally:
        zonal.session_lifetime = dt.timedelta(minutes=5)
    sessions = _sessions(zonal, bucket)
    assert len(sessions) == 2
    last_part = zonal.of("UploadPart")[-1]
    assert (
        last_part.headers["x-amz-s3session-token"]
        != zonal.of("UploadPart")[-2].headers["x-amz-s3session-token"]
    )


async def test_session_auth_can_be_turned_off(
    zonal: ZonalServer, moto_endpoint: str, bucket: str
) -> None:
    running = start_gateway(zonal, moto_endpoint, s3_express_session_auth=False)
    try:
        async with grpc.aio.insecure_channel(running.address) as channel:
            stub = pb_grpc.UploadServiceStub(channel)  # type: ignore[call-overload]
            await upload_parts(stub, bucket, [100])
    finally:
        running.__exit__(None, None, None)
    sent = [r for r in zonal.requests if r.host == f"{bucket}.{DOMAIN}"]
    assert [r.operation for r in sent] == ["CreateMultipartUpload", "UploadPart"]
    for request in sent:
        assert "x-amz-s3session-token" not in request.headers
        assert "Credential=testing/" in request.headers["authorization"]


async def test_write_object_cuts_consecutive_parts_with_session_auth_and_crc32c(
    zonal: ZonalServer, moto_endpoint: str, bucket: str
) -> None:
    """WriteObject to a directory bucket: parts 1..N in order, each with its CRC32C for S3 to
    check, COMPOSITE CRC32C (the bucket's default), one session, nothing S3 Express refuses."""
    data = os.urandom(5 * MiB * 2 + 123)
    small = b"small object"
    running = start_gateway(zonal, moto_endpoint, write_part_size=5 * MiB)
    try:
        async with grpc.aio.insecure_channel(running.address) as channel:
            stub = pb_grpc.UploadServiceStub(channel)  # type: ignore[call-overload]
            written = await write_object(stub, bucket, "big", data)
            single = await write_object(stub, bucket, "small", small)
    finally:
        running.__exit__(None, None, None)
    whole = checksums.encode(checksums.CRC32C.compute(data))
    assert written.parts == 3 and written.computed_checksums == {"CRC32C": whole}
    assert single.parts == 0
    sent = [r for r in zonal.requests if r.host == f"{bucket}.{DOMAIN}"]
    assert [r.operation for r in sent] == [
        "CreateSession",
        "CreateMultipartUpload",
        "UploadPart",
        "UploadPart",
        "UploadPart",
        "CompleteMultipartUpload",
        "PutObject",
    ]
    create, *parts, complete, put = sent[1:]
    assert create.headers["x-amz-checksum-algorithm"] == "CRC32C"
    assert create.headers["x-amz-checksum-type"] == "COMPOSITE"
    parts.sort(key=lambda r: int(r.query["partNumber"]))  # sent in parallel
    assert [r.query["partNumber"] for r in parts] == ["1", "2", "3"]
    assert b"".join(r.body for r in parts) == data
    for request in (*parts, put):
        assert request.headers["x-amz-checksum-crc32c"] == checksums.encode(
            checksums.CRC32C.compute(request.body)
        )
    for request in sent[1:]:
        assert "content-md5" not in request.headers
        assert request.headers["x-amz-s3session-token"].startswith("session-token-")
    assert complete.body.count(b"<PartNumber>") == 3
    assert put.body == small


async def write_object(stub: Any, bucket: str, key: str, data: bytes) -> Any:
    async def messages() -> AsyncIterator[pb.WriteObjectRequest]:
        spec = pb.WriteObjectSpec(object=pb.CreateMultipartUploadRequest(bucket=bucket, key=key))
        yield pb.WriteObjectRequest(spec=spec)
        for offset in range(0, len(data), MiB):
            content = data[offset : offset + MiB]
            yield pb.WriteObjectRequest(data=pb.ChecksummedData(content=content))
        yield pb.WriteObjectRequest(finish=pb.FinishWrite())

    responses = [response async for response in stub.WriteObject(messages())]
    return responses[-1].object


def _sessions(zonal: ZonalServer, bucket: str) -> list[Any]:
    return [r for r in zonal.of("CreateSession") if r.host == f"{bucket}.{DOMAIN}"]


KEY = os.urandom(32)
SSE_C = {
    "sse_customer_algorithm": "AES256",
    "sse_customer_key": checksums.encode(KEY),
    "sse_customer_key_md5": checksums.encode(checksums.MD5.compute(KEY)),
}
REFUSED_PARTS: dict[str, tuple[dict[str, Any], str, str]] = {
    "content-md5": (
        {"content_md5": checksums.encode(checksums.MD5.compute(b"abc"))},
        "content_md5",
        "Content-MD5 is",
    ),
    "md5 checksum": (
        {"checksum_md5": checksums.encode(checksums.MD5.compute(b"abc"))},
        "checksum_md5",
        "MD5 checksums are",
    ),
    "md5 algorithm": (
        {"checksum_algorithm": pb.CHECKSUM_ALGORITHM_MD5},
        "checksum_algorithm",
        "MD5 checksums are",
    ),
    "sse-c": (SSE_C, "sse_customer_algorithm", "SSE-C is"),
}


@pytest.mark.parametrize("case", list(REFUSED_PARTS))
async def test_refused_before_anything_is_sent(
    zonal: ZonalServer, directory_gateway: GatewayThread, bucket: str, case: str
) -> None:
    fields, field, rule = REFUSED_PARTS[case]
    before = len(zonal.requests)
    header = dict(bucket=bucket, key="k", upload_id="u", part_number=1, content_length=3) | fields
    error = await upload_part_error(directory_gateway.address, part_messages(header, b"abc"))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field in error.details()
    assert f"{rule} not supported for directory buckets" in error.details()
    assert len(zonal.requests) == before


async def test_create_with_sse_c_is_refused(zonal: ZonalServer, stub: Any, bucket: str) -> None:
    before = len(zonal.requests)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.CreateMultipartUpload(
            pb.CreateMultipartUploadRequest(bucket=bucket, key="k", **SSE_C)
        )
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "SSE-C is not supported for directory buckets" in (caught.value.details() or "")
    assert len(zonal.requests) == before


@pytest.mark.parametrize("numbers", [[1, 3], [2, 3], [1, 2, 2], [2, 1]])
async def test_complete_needs_consecutive_part_numbers(
    zonal: ZonalServer, stub: Any, bucket: str, numbers: list[int]
) -> None:
    before = len(zonal.requests)
    parts = [pb.CompletedPart(part_number=n, etag='"e"') for n in numbers]
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.CompleteMultipartUpload(
            pb.CompleteMultipartUploadRequest(bucket=bucket, key="k", upload_id="u", parts=parts)
        )
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "consecutive from 1" in (caught.value.details() or "")
    assert len(zonal.requests) == before


async def test_bucket_of_another_region_is_refused(zonal: ZonalServer, stub: Any) -> None:
    before = len(zonal.requests)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.CreateMultipartUpload(
            pb.CreateMultipartUploadRequest(bucket="logs--use1-az4--x-s3", key="k")
        )
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    info = error_info(caught.value)
    assert info.reason == "WRONG_REGION"
    assert dict(info.metadata) == {"bucketRegion": "us-east-1", "gatewayRegion": REGION}
    assert len(zonal.requests) == before


async def test_malformed_directory_bucket_name_is_refused(stub: Any) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.CreateMultipartUpload(
            pb.CreateMultipartUploadRequest(bucket="logs--x-s3", key="k")
        )
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "BASE--ZONEID--x-s3" in (caught.value.details() or "")


async def test_general_purpose_buckets_keep_their_endpoint(
    zonal: ZonalServer, stub: Any, moto_bucket: str
) -> None:
    before = len(zonal.requests)
    created = await stub.CreateMultipartUpload(
        pb.CreateMultipartUploadRequest(bucket=moto_bucket, key="k")
    )
    assert created.upload_id
    assert created.checksum_algorithm == pb.CHECKSUM_ALGORITHM_UNSPECIFIED
    assert len(zonal.requests) == before


def reap(address: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway", "reap-uploads", "--endpoint-url", address, *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=Path(__file__).parent.parent,
    )


def test_reaper_aborts_only_uploads_older_than_the_limit(
    zonal: ZonalServer, directory_gateway: GatewayThread, bucket: str
) -> None:
    old = {
        zonal.add_upload(bucket, f"old/{n}", dt.timedelta(hours=h)) for n, h in ((1, 48), (2, 25))
    }
    young = zonal.add_upload(bucket, "new/3", dt.timedelta(hours=1))

    dry = reap(directory_gateway.address, "--bucket", bucket, "--older-than", "24h", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert {line.split("\t")[2] for line in dry.stdout.splitlines()} == old
    assert all(line.startswith("would abort\t") for line in dry.stdout.splitlines())
    assert old | {young} <= set(zonal.uploads)

    done = reap(directory_gateway.address, "--bucket", bucket, "--older-than", "1d")
    assert done.returncode == 0, done.stderr
    assert {line.split("\t")[2] for line in done.stdout.splitlines()} == old
    assert "2 upload(s) older than 1 day, 0:00:00 aborted" in done.stderr
    remaining = {u for u, upload in zonal.uploads.items() if upload.bucket == bucket}
    assert remaining == {young}


def test_reaper_works_for_general_purpose_buckets(
    directory_gateway: GatewayThread, moto_bucket: str, moto_s3: Any
) -> None:
    for key in ("a", "b"):
        moto_s3.create_multipart_upload(Bucket=moto_bucket, Key=key)
    done = reap(directory_gateway.address, "--bucket", moto_bucket, "--older-than", "0s")
    assert done.returncode == 0, done.stderr
    assert len(done.stdout.splitlines()) == 2
    assert moto_s3.list_multipart_uploads(Bucket=moto_bucket).get("Uploads", []) == []


def test_resumable_writes_are_marked_and_reaped_in_directory_buckets(
    zonal: ZonalServer, moto_endpoint: str, bucket: str, tmp_path: Path
) -> None:
    """A resumable write's marker is an upload of the directory bucket too, listed under a
    prefix that ends in '/' (the only kind directory buckets take); reap-uploads aborts an
    expired write and its marker there, and leaves a live one."""
    keys = tmp_path / "write-keys.yaml"
    keys.write_text(f"signing: k\nkeys:\n  k: {generate_key()}\n")
    running = start_gateway(zonal, moto_endpoint, write_token_keys_file=str(keys))
    try:
        channel, stub = stub_for(running.address)
        with channel:
            spec = pb.WriteObjectSpec(
                object=pb.CreateMultipartUploadRequest(bucket=bucket, key="w")
            )
            started = stub.StartResumableWrite(pb.StartResumableWriteRequest(spec=spec))
        live = WriteKeys(keys).verify(started.write_token)
        assert {live.upload_id, live.marker_upload_id} <= set(zonal.uploads)
        assert zonal.uploads[live.marker_upload_id].key == live.marker_key
        signing = WriteKeys(keys).value
        expired = zonal.add_upload(bucket, "expired", dt.timedelta(hours=1))
        past = int(time.time()) - 60
        stale = marker_key("k", signing.keys["k"], bucket, expired, past)
        stale_id = zonal.add_upload(bucket, stale, dt.timedelta(hours=1))

        done = reap(running.address, "--bucket", bucket, "--write-token-keys-file", str(keys))
        assert done.returncode == 0, done.stderr
        assert [line.split("\t")[2] for line in done.stdout.splitlines()] == [expired, stale_id]
        assert {live.upload_id, live.marker_upload_id} <= set(zonal.uploads)
        assert not {expired, stale_id} & set(zonal.uploads)
        listed = [r for r in zonal.of("ListMultipartUploads") if r.query.get("prefix")]
        assert {r.query["prefix"] for r in listed} == {MARKER_PREFIX}
    finally:
        running.__exit__(None, None, None)


@pytest.mark.parametrize("value", ["24", "h", "1.5h", "-1h", "24 h"])
def test_reaper_refuses_bad_durations(directory_gateway: GatewayThread, value: str) -> None:
    result = reap(directory_gateway.address, "--bucket", "b", f"--older-than={value}")
    assert result.returncode == ExitCode.USAGE
    assert "not a duration" in result.stderr


async def test_metrics_tell_bucket_types_apart(
    zonal: ZonalServer, moto_endpoint: str, bucket: str, moto_bucket: str
) -> None:
    running = start_gateway(zonal, moto_endpoint)
    try:
        async with grpc.aio.insecure_channel(running.address) as channel:
            stub = pb_grpc.UploadServiceStub(channel)  # type: ignore[call-overload]
            await upload_parts(stub, bucket, [1000])
            await stub.CreateMultipartUpload(
                pb.CreateMultipartUploadRequest(bucket=moto_bucket, key="k")
            )
        m = scrape(running)
    finally:
        running.__exit__(None, None, None)
    duration = "s3gateway_s3_request_duration_seconds_count"
    for operation, kind, calls in (
        ("CreateMultipartUpload", "directory", 1),
        ("UploadPart", "directory", 1),
        ("CreateMultipartUpload", "general", 1),
    ):
        assert sample_value(m, duration, operation=operation, bucket_type=kind) == calls
    assert (duration, frozenset({("operation", "UploadPart"), ("bucket_type", "general")})) not in m
    assert sample_value(m, "s3gateway_client_received_bytes_total", bucket_type="directory") == 1000
    assert sample_value(m, "s3gateway_part_size_bytes_count", bucket_type="directory") == 1
