"""gateway.client: part sizing, and whole uploads through a real gateway to each backend."""

from __future__ import annotations

import base64
import hashlib
import os
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from gateway import checksums
from gateway.client import (
    DEFAULT_PART_SIZE,
    MAX_PARTS,
    MIN_PART_SIZE,
    CustomerKey,
    GatewayCallError,
    GatewayClient,
    UploadOptions,
    choose_part_size,
    error_info,
    object_checksum,
    part_count,
    status_details,
)
from gateway.v1 import upload_service_pb2 as pb
from gateway.v1 import upload_service_pb2_grpc as pb_grpc
from tests.conftest import Backend
from tests.helpers import GatewayThread, MiB, S3Reader

GiB = 1024 * MiB

# --- part sizing ---------------------------------------------------------------------------------


def test_an_empty_object_is_one_empty_part() -> None:
    assert choose_part_size(0) == DEFAULT_PART_SIZE
    assert part_count(0, DEFAULT_PART_SIZE) == 1


def test_exactly_5_mib_is_one_part() -> None:
    size = choose_part_size(5 * MiB, MIN_PART_SIZE)
    assert size == 5 * MiB
    assert part_count(5 * MiB, size) == 1
    assert part_count(5 * MiB + 1, size) == 2


def test_a_size_too_large_for_10000_default_parts_gets_larger_parts() -> None:
    size = DEFAULT_PART_SIZE * MAX_PARTS + 1
    part_size = choose_part_size(size)
    assert part_size > DEFAULT_PART_SIZE
    assert part_size % MiB == 0
    assert part_count(size, part_size) <= MAX_PARTS
    assert choose_part_size(DEFAULT_PART_SIZE * MAX_PARTS) == DEFAULT_PART_SIZE


def test_unknown_length_uses_the_configured_part_size() -> None:
    assert choose_part_size(None) == DEFAULT_PART_SIZE
    assert choose_part_size(None, 16 * MiB) == 16 * MiB


@pytest.mark.parametrize("part_size", [MIN_PART_SIZE - 1, 5 * GiB + 1])
def test_part_sizes_outside_s3s_limits_are_refused(part_size: int) -> None:
    with pytest.raises(ValueError, match="5 MiB to 5 GiB"):
        choose_part_size(None, part_size)


def test_an_object_beyond_10000_parts_of_5_gib_is_refused() -> None:
    with pytest.raises(ValueError, match="10000 parts"):
        choose_part_size(5 * GiB * MAX_PARTS + 1)


def test_customer_key_is_sent_as_s3_expects_it() -> None:
    key = CustomerKey(b"k" * 32)
    assert base64.b64decode(key.key_b64) == b"k" * 32
    assert base64.b64decode(key.md5_b64) == hashlib.md5(b"k" * 32).digest()
    assert CustomerKey(b"k" * 32, key_md5="override").md5_b64 == "override"


def test_object_checksum_of_parts() -> None:
    parts = [os.urandom(1000), os.urandom(777), b""]
    sums = [(checksums.encode(checksums.CRC32C.compute(p)), len(p)) for p in parts]
    whole = checksums.encode(checksums.CRC32C.compute(b"".join(parts)))
    assert object_checksum(checksums.CRC32C, "FULL_OBJECT", sums) == whole
    digests = b"".join(checksums.CRC32C.compute(p) for p in parts)
    composite = checksums.encode(checksums.CRC32C.compute(digests)) + "-3"
    assert object_checksum(checksums.CRC32C, "COMPOSITE", sums) == composite


# --- uploads through the gateway -----------------------------------------------------------------


@pytest.fixture
async def client(gateway: GatewayThread) -> AsyncIterator[GatewayClient]:
    async with GatewayClient.connect(gateway.address) as running:
        yield running


class Recorder:
    """A progress callback that remembers every report."""

    def __init__(self) -> None:
        self.reports: list[tuple[int, int | None]] = []

    def __call__(self, done: int, total: int | None) -> None:
        self.reports.append((done, total))


async def test_upload_file_in_5_mib_parts_reads_back_identical(
    client: GatewayClient, new_bucket: str, s3: S3Reader, tmp_path: Path, backend: Backend
) -> None:
    data = os.urandom(20 * MiB + 12345)
    path = tmp_path / "object.bin"
    path.write_bytes(data)
    progress = Recorder()
    options = UploadOptions(
        client_parts=True, part_size=5 * MiB, concurrency=3, content_type="application/x-test"
    )

    result = await client.upload_file(path, new_bucket, "file.bin", options, progress)

    assert s3.read(new_bucket, "file.bin") == data
    assert (result.size, result.parts) == (len(data), 5)
    assert progress.reports[-1] == (len(data), len(data))
    assert all(total == len(data) for _, total in progress.reports)
    head = s3.client.head_object(Bucket=new_bucket, Key="file.bin")
    assert head["ContentType"] == "application/x-test"
    assert head["ETag"].endswith('-5"')
    # Ceph RGW 16 answers Complete with an empty ETag (docs/s3-compatibility.md).
    assert result.etag == ("" if backend.name == "rgw" else head["ETag"])


async def test_upload_stream_of_unknown_length(
    client: GatewayClient, new_bucket: str, s3: S3Reader
) -> None:
    data = os.urandom(11 * MiB + 7)

    async def produce() -> AsyncIterator[bytes]:  # not seekable, odd chunk sizes
        for start in range(0, len(data), 300_000):
            yield data[start : start + 300_000]

    progress = Recorder()
    options = UploadOptions(client_parts=True, part_size=5 * MiB, concurrency=2)
    result = await client.upload_stream(
        produce(), new_bucket, "stream.bin", None, options, progress
    )

    assert s3.read(new_bucket, "stream.bin") == data
    assert result.parts == 3
    assert progress.reports[-1] == (len(data), None)


async def test_upload_stream_of_a_file_object_with_known_size(
    client: GatewayClient, new_bucket: str, s3: S3Reader
) -> None:
    read_end, write_end = os.pipe()
    data = os.urandom(6 * MiB)
    os.write(write_end, data[: 32 * 1024])  # a pipe: not seekable; the rest comes from a thread
    writer = threading.Thread(
        target=lambda: (os.write(write_end, data[32 * 1024 :]), os.close(write_end))
    )
    writer.start()
    with os.fdopen(read_end, "rb") as pipe:
        options = UploadOptions(client_parts=True, part_size=5 * MiB)
        result = await client.upload_stream(pipe, new_bucket, "pipe.bin", len(data), options)
    writer.join()
    assert s3.read(new_bucket, "pipe.bin") == data
    assert result.parts == 2


async def test_an_empty_file_is_uploaded_as_one_empty_part(
    client: GatewayClient, new_bucket: str, s3: S3Reader, tmp_path: Path
) -> None:
    path = tmp_path / "empty"
    path.write_bytes(b"")
    progress = Recorder()
    options = UploadOptions(client_parts=True)
    result = await client.upload_file(path, new_bucket, "empty", options, progress=progress)
    assert s3.read(new_bucket, "empty") == b""
    assert (result.size, result.parts) == (0, 1)
    written = await client.upload_file(path, new_bucket, "written", progress=progress)
    assert s3.read(new_bucket, "written") == b""
    assert (written.size, written.parts) == (0, 0)  # one PutObject


class FlakyClient(GatewayClient):
    """Fails the first attempt of part 2 as an unavailable S3 would, after sending 1 MiB."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.attempts: list[int] = []

    async def upload_part(
        self, header: pb.UploadPartHeader, body: Any, **kwargs: Any
    ) -> pb.UploadPartResponse:
        self.attempts.append(header.part_number)
        if header.part_number == 2 and self.attempts.count(2) == 1:
            kwargs["on_sent"](MiB)  # some progress was reported before the failure
            raise GatewayCallError(grpc.StatusCode.UNAVAILABLE, "injected", retry_delay=0.01)
        return await super().upload_part(header, body, **kwargs)


async def test_a_part_is_retried_after_a_retryable_failure(
    gateway: GatewayThread, new_bucket: str, s3: S3Reader, tmp_path: Path
) -> None:
    data = os.urandom(12 * MiB)
    path = tmp_path / "object.bin"
    path.write_bytes(data)
    progress = Recorder()
    async with FlakyClient(grpc.aio.insecure_channel(gateway.address)) as client:
        options = UploadOptions(client_parts=True, part_size=5 * MiB, concurrency=2)
        result = await client.upload_file(path, new_bucket, "retried.bin", options, progress)
    assert sorted(client.attempts) == [1, 2, 2, 3]
    assert s3.read(new_bucket, "retried.bin") == data
    assert result.parts == 3
    assert progress.reports[-1] == (len(data), len(data))


class WrongKeyMd5Client(GatewayClient):
    """Sends part 2 with an SSE-C key whose MD5 does not match: the gateway refuses the header at
    once, while the client is still sending (the grpc/grpc#36066 race), and no retry can help."""

    async def upload_part(
        self, header: pb.UploadPartHeader, body: Any, **kwargs: Any
    ) -> pb.UploadPartResponse:
        if header.part_number == 2:
            header.sse_customer_algorithm = "AES256"
            header.sse_customer_key = base64.b64encode(os.urandom(32)).decode()
            header.sse_customer_key_md5 = base64.b64encode(hashlib.md5(b"other").digest()).decode()
        return await super().upload_part(header, body, **kwargs)


async def test_a_fatal_error_aborts_the_upload(
    gateway: GatewayThread, new_bucket: str, s3: S3Reader, tmp_path: Path
) -> None:
    path = tmp_path / "object.bin"
    path.write_bytes(os.urandom(12 * MiB))
    options = UploadOptions(client_parts=True, part_size=5 * MiB, concurrency=1)
    async with WrongKeyMd5Client(grpc.aio.insecure_channel(gateway.address)) as client:
        with pytest.raises(GatewayCallError) as raised:
            await client.upload_file(path, new_bucket, "aborted.bin", options)
        uploads = await client.list_multipart_uploads(
            pb.ListMultipartUploadsRequest(bucket=new_bucket)
        )
    assert raised.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert raised.value.error_info is not None
    assert "sse_customer_key_md5" in raised.value.message
    assert list(uploads.uploads) == []
    assert s3.uploads(new_bucket) == []


@pytest.mark.backends("moto")
async def test_an_unknown_length_stream_beyond_10000_parts_is_refused_and_aborted(
    client: GatewayClient, new_bucket: str, s3: S3Reader, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def endless() -> AsyncIterator[bytes]:
        while True:
            yield b"x" * 64 * 1024

    # 10,000 real 5 MiB parts would be 49 GiB; shrink the limit instead of the data.
    monkeypatch.setattr("gateway.client._sources.MAX_PARTS", 3)
    with pytest.raises(ValueError, match="longer than 3 parts"):
        await client.upload_stream(
            endless(),
            new_bucket,
            "endless",
            options=UploadOptions(client_parts=True, part_size=5 * MiB),
        )
    assert s3.uploads(new_bucket) == []


@pytest.mark.backends("moto")
async def test_a_stream_shorter_than_announced_is_refused(
    client: GatewayClient, new_bucket: str, s3: S3Reader
) -> None:
    async def short() -> AsyncIterator[bytes]:
        yield b"abc"

    options = UploadOptions(client_parts=True)
    with pytest.raises(ValueError, match="carried 3 bytes, not the 10"):
        await client.upload_stream(short(), new_bucket, "short", size=10, options=options)
    assert s3.uploads(new_bucket) == []


@pytest.mark.parametrize("algorithm", ["SHA256", "CRC32"])
async def test_the_object_checksum_is_reported(
    client: GatewayClient, new_bucket: str, s3: S3Reader, algorithm: str
) -> None:
    data = os.urandom(6 * MiB)
    options = UploadOptions(client_parts=True, part_size=5 * MiB, checksum_algorithm=algorithm)
    result = await client.upload_stream(_once(data), new_bucket, "sum", len(data), options)
    assert s3.read(new_bucket, "sum") == data
    assert result.checksum_algorithm == algorithm


@pytest.mark.backends("moto")
async def test_full_object_crc_checksum_is_the_crc_of_the_object(
    client: GatewayClient, new_bucket: str
) -> None:
    data = os.urandom(6 * MiB)
    options = UploadOptions(
        client_parts=True,
        part_size=5 * MiB,
        checksum_algorithm="CRC32C",
        checksum_type="FULL_OBJECT",
    )
    result = await client.upload_stream(_once(data), new_bucket, "full", len(data), options)
    assert result.checksum_type == "FULL_OBJECT"
    assert result.checksum == checksums.encode(checksums.CRC32C.compute(data))


async def test_call_errors_carry_the_error_info(client: GatewayClient, new_bucket: str) -> None:
    with pytest.raises(GatewayCallError) as raised:
        await client.list_parts(
            pb.ListPartsRequest(bucket=new_bucket, key="k", upload_id="no-such-upload")
        )
    assert raised.value.code == grpc.StatusCode.NOT_FOUND
    assert raised.value.reason in ("NO_SUCH_UPLOAD", "NO_SUCH_KEY")  # RGW 16: NoSuchKey
    assert not raised.value.retryable


async def test_status_details_and_error_info_of_an_aio_error(
    client: GatewayClient, new_bucket: str
) -> None:
    stub = pb_grpc.UploadServiceStub(client.channel)
    request = pb.ListPartsRequest(bucket=new_bucket, key="k", upload_id="no-such-upload")
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await stub.ListParts(request, timeout=10)
    status = status_details(raised.value)
    assert status is not None
    assert status.code == grpc.StatusCode.NOT_FOUND.value[0]
    assert status.message == raised.value.details()
    info = error_info(raised.value)
    assert info is not None and info.reason in ("NO_SUCH_UPLOAD", "NO_SUCH_KEY")
    assert error_info(status) == info


def test_status_details_of_errors_that_carry_none() -> None:
    assert status_details(grpc.RpcError()) is None
    assert error_info(grpc.RpcError()) is None
    assert error_info(None) is None
    made_up = grpc.aio.AioRpcError(
        grpc.StatusCode.INTERNAL,
        grpc.aio.Metadata(),
        grpc.aio.Metadata(),
        "Internal error from Core",
        None,
    )
    assert status_details(made_up) is None
    assert GatewayCallError.from_rpc_error(made_up).is_core_internal


def test_grpc_core_internal_is_retryable_but_a_real_internal_is_not() -> None:
    from google.rpc import error_details_pb2

    core = GatewayCallError(grpc.StatusCode.INTERNAL, "Internal error from Core")
    real = GatewayCallError(
        grpc.StatusCode.INTERNAL,
        "Internal error from Core",
        error_details_pb2.ErrorInfo(reason="GATEWAY_CREDENTIALS"),
    )
    assert core.is_core_internal and core.retryable
    assert not real.is_core_internal and not real.retryable


async def _once(data: bytes) -> AsyncIterator[bytes]:
    yield data


async def test_grpc_core_internal_is_explained_by_the_gateways_answer_to_the_header(
    client: GatewayClient, upload: pb.CreateMultipartUploadResponse
) -> None:
    core = GatewayCallError(grpc.StatusCode.INTERNAL, "Internal error from Core")
    good = pb.UploadPartHeader(
        bucket=upload.bucket,
        key=upload.key,
        upload_id=upload.upload_id,
        part_number=1,
        content_length=10,
    )
    assert await client._explain(core, good) is core  # the header is fine: keep it retryable
    bad = pb.UploadPartHeader()
    bad.CopyFrom(good)
    bad.part_number = 10_001
    real = await client._explain(core, bad)
    assert isinstance(real, GatewayCallError)
    assert real.code == grpc.StatusCode.INVALID_ARGUMENT
    assert not real.retryable
