"""gateway.client's WriteObject: whole objects in one stream, through a real gateway to each
backend (the client-side multipart path is tests/test_client.py)."""

from __future__ import annotations

import io
import os
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import grpc
import pytest

from gateway import checksums
from gateway.client import CustomerKey, GatewayCallError, GatewayClient, UploadOptions
from gateway.units import MiB
from gateway.v1 import upload_service_pb2 as pb
from tests.conftest import Backend
from tests.helpers import GatewayThread, S3Reader, wait_for_async

PART = 5 * MiB


@pytest.fixture
def gateway(make_gateway: Callable[..., GatewayThread]) -> GatewayThread:
    return make_gateway(write_part_size=PART, write_parts_in_flight=2)


@pytest.fixture
async def client(gateway: GatewayThread) -> AsyncIterator[GatewayClient]:
    async with GatewayClient.connect(gateway.address) as running:
        yield running


class Recorder:
    def __init__(self) -> None:
        self.reports: list[tuple[int, int | None]] = []

    def __call__(self, done: int, total: int | None) -> None:
        self.reports.append((done, total))


async def _chunks(data: bytes, size: int = 300_000) -> AsyncIterator[bytes]:
    for offset in range(0, len(data), size):
        yield data[offset : offset + size]


SOURCES = ["path", "bytes", "file object", "async iterable"]


@pytest.mark.parametrize("kind", SOURCES)
async def test_every_kind_of_source_is_written_whole(
    client: GatewayClient, new_bucket: str, s3: S3Reader, tmp_path: Path, kind: str
) -> None:
    data = os.urandom(PART * 2 + 4321)
    path = tmp_path / "object.bin"
    path.write_bytes(data)
    source = {
        "path": path,
        "bytes": data,
        "file object": io.BytesIO(data),
        "async iterable": _chunks(data),
    }[kind]
    progress = Recorder()
    result = await client.write_object(new_bucket, "object.bin", source, progress=progress)
    assert s3.read(new_bucket, "object.bin") == data
    assert (result.size, result.parts, result.upload_id) == (len(data), 3, "")
    assert result.checksum_algorithm == "CRC64NVME"
    assert result.checksum == checksums.encode(checksums.CRC64NVME.compute(data))
    assert progress.reports[-1][0] == len(data)
    assert s3.uploads(new_bucket) == []


async def test_upload_file_writes_one_stream_by_default(
    client: GatewayClient, new_bucket: str, s3: S3Reader, tmp_path: Path
) -> None:
    """upload_file's default is WriteObject: the gateway's parts (5 MiB here), not the
    client's part_size; client_parts brings the client's own multipart upload back."""
    data = os.urandom(PART * 2)
    path = tmp_path / "object.bin"
    path.write_bytes(data)
    options = UploadOptions(part_size=8 * MiB, content_type="text/x-test")
    written = await client.upload_file(path, new_bucket, "one-stream", options)
    assert (written.parts, written.upload_id) == (2, "")
    assert (
        s3.client.head_object(Bucket=new_bucket, Key="one-stream")["ContentType"] == "text/x-test"
    )
    parts = UploadOptions(client_parts=True, part_size=8 * MiB)
    uploaded = await client.upload_file(path, new_bucket, "client-parts", parts)
    assert uploaded.parts == 2 and uploaded.upload_id != ""
    assert s3.read(new_bucket, "client-parts") == data


async def test_object_attributes_reach_s3(
    client: GatewayClient, new_bucket: str, s3: S3Reader, backend: Backend
) -> None:
    options = UploadOptions(
        content_type="application/x-test",
        content_disposition="attachment",
        content_language="fr",
        cache_control="no-cache",
        metadata={"origin": "test"},
        checksum_algorithm="SHA256",
    )
    data = os.urandom(PART + 1)
    result = await client.write_object(new_bucket, "attrs", data, options=options)
    head = s3.client.head_object(Bucket=new_bucket, Key="attrs")
    assert head["ContentType"] == "application/x-test"
    assert head["ContentDisposition"] == "attachment"
    assert head["ContentLanguage"] == "fr"
    assert head["CacheControl"] == "no-cache"
    assert head["Metadata"] == {"origin": "test"}
    assert result.checksum_algorithm == "SHA256"
    if not result.checksum_from_s3:  # the gateway's value over the bytes
        assert result.checksum == checksums.encode(checksums.SHA256.compute(data))


async def test_a_source_shorter_than_announced_commits_nothing(
    client: GatewayClient, new_bucket: str, s3: S3Reader
) -> None:
    with pytest.raises(GatewayCallError) as raised:
        await client.write_object(new_bucket, "short", _chunks(b"x" * 100), size=101)
    assert raised.value.code == grpc.StatusCode.OUT_OF_RANGE
    await wait_for_async(lambda: s3.uploads(new_bucket) == [], "no upload left")
    assert s3.client.list_objects_v2(Bucket=new_bucket).get("KeyCount") == 0


async def test_a_wrong_size_for_a_path_is_refused_before_sending(
    client: GatewayClient, new_bucket: str, tmp_path: Path
) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"abc")
    with pytest.raises(ValueError, match="holds 3 bytes"):
        await client.write_object(new_bucket, "k", path, size=4)


@pytest.mark.backends("moto")
async def test_if_none_match_keeps_the_first_object(
    client: GatewayClient, new_bucket: str, s3: S3Reader
) -> None:
    options = UploadOptions(if_none_match=True)
    await client.write_object(new_bucket, "once", b"first", options=options)
    with pytest.raises(GatewayCallError) as raised:
        await client.write_object(new_bucket, "once", b"second", options=options)
    assert raised.value.code == grpc.StatusCode.FAILED_PRECONDITION
    assert s3.read(new_bucket, "once") == b"first"


@pytest.mark.backends("rgw")
async def test_an_sse_c_object_round_trips(
    client: GatewayClient, new_bucket: str, s3: S3Reader
) -> None:
    key = os.urandom(32)
    data = os.urandom(PART + 7)
    options = UploadOptions(customer_key=CustomerKey(key))
    result = await client.write_object(new_bucket, "secret", data, options=options)
    assert isinstance(result.response, pb.WrittenObject)
    assert result.response.sse_customer_algorithm == "AES256"
    read = s3.read(new_bucket, "secret", SSECustomerAlgorithm="AES256", SSECustomerKey=key)
    assert read == data


async def test_the_spec_the_gateway_refuses_is_reported_as_it_refused_it(
    client: GatewayClient, new_bucket: str
) -> None:
    """A refusal at the spec, while the client is still sending: the gateway's status, not
    grpc.aio's INTERNAL (grpc/grpc#36066)."""
    options = UploadOptions(checksum_algorithm="SHA256", checksum_type="FULL_OBJECT")
    with pytest.raises(GatewayCallError) as raised:
        await client.write_object(new_bucket, "k", os.urandom(3 * MiB), options=options)
    assert raised.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert raised.value.error_info is not None


def test_the_sync_wrapper_writes_from_a_script(
    gateway: GatewayThread, new_bucket: str, s3: S3Reader, tmp_path: Path
) -> None:
    from gateway.client import write_object_sync

    path = tmp_path / "f.bin"
    path.write_bytes(b"from a script")
    result = write_object_sync(gateway.address, new_bucket, "script", path)
    assert result.size == len(b"from a script")
    assert s3.read(new_bucket, "script") == b"from a script"
