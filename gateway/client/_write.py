"""Whole objects in one WriteObject stream: the gateway cuts the parts, uploads them in parallel,
verifies the object's checksum and completes it; the client sends the bytes in order and the
checksum of them it computed while sending.

A file or bytes in memory can be sent again: a stream that fails with a retryable status is
written again from the start, up to ``options.max_attempts`` times (the failed attempt committed
nothing). Any other source is read once, so its first failure is final.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterable, AsyncIterator, Callable
from dataclasses import dataclass
from typing import IO, TYPE_CHECKING

import grpc

from gateway import buckets, checksums
from gateway.client._errors import GatewayCallError
from gateway.client._sources import CHUNK_SIZE, FilePart, StreamReader
from gateway.client._upload import (
    ProgressCallback,
    UploadOptions,
    UploadResult,
    object_request,
)
from gateway.v1 import upload_service_pb2 as pb

if TYPE_CHECKING:
    from gateway.client._calls import GatewayClient

#: What :meth:`GatewayClient.write_object` takes: a file (by path), bytes, a binary file object
#: or an async iterable of byte chunks.
Source = str | os.PathLike[str] | bytes | IO[bytes] | AsyncIterable[bytes]


def object_algorithm(bucket: str, options: UploadOptions) -> checksums.Algorithm:
    """The checksum of the object: the one the options name, else the gateway's default for
    the bucket (CRC64NVME, FULL_OBJECT; CRC32C in a directory bucket, as S3 Express has it)."""
    return options.algorithm or checksums.default_object_algorithm(
        buckets.is_directory_bucket(bucket)
    )


def write_spec(
    bucket: str, key: str, options: UploadOptions, size: int | None
) -> pb.WriteObjectSpec:
    """The first message of the stream: the object's attributes from ``options``, its checksum
    algorithm named, its size if known."""
    request = object_request(bucket, key, options)
    algorithm = object_algorithm(bucket, options)
    request.checksum_algorithm = pb.ChecksumAlgorithm.ValueType(algorithm.proto_value)
    spec = pb.WriteObjectSpec(object=request)
    if size is not None:
        spec.object_size = size
    if options.if_none_match:
        spec.if_none_match = "*"
    return spec


@dataclass
class _Reopenable:
    """A source that can be read again from its start: a file or bytes."""

    path: str | None
    data: bytes | None
    size: int

    def chunks(self) -> AsyncIterator[bytes]:
        if self.path is not None:
            return FilePart(self.path, 1, 0, self.size).chunks()
        assert self.data is not None
        return _memory_chunks(self.data)


async def _memory_chunks(data: bytes) -> AsyncIterator[bytes]:
    view = memoryview(data)
    for start in range(0, len(view), CHUNK_SIZE):
        yield bytes(view[start : start + CHUNK_SIZE])


async def _stream_chunks(source: IO[bytes] | AsyncIterable[bytes]) -> AsyncIterator[bytes]:
    reader = StreamReader(source)
    while chunk := await reader.read(CHUNK_SIZE):
        yield chunk


async def write_object(
    client: GatewayClient,
    bucket: str,
    key: str,
    source: Source,
    size: int | None,
    options: UploadOptions | None,
    progress: ProgressCallback | None,
) -> UploadResult:
    """:meth:`GatewayClient.write_object`."""
    options = options or UploadOptions()
    algorithm = object_algorithm(bucket, options)  # validates the name before anything is sent
    reopenable: _Reopenable | None = None
    if isinstance(source, str | os.PathLike):
        name = os.fspath(source)
        reopenable = _Reopenable(name, None, await asyncio.to_thread(os.path.getsize, name))
    elif isinstance(source, bytes | bytearray | memoryview):
        reopenable = _Reopenable(None, bytes(source), len(source))
    if reopenable is not None:
        if size is not None and size != reopenable.size:
            raise ValueError(f"the source holds {reopenable.size} bytes, not the {size} announced")
        size = reopenable.size
    spec = write_spec(bucket, key, options, size)
    attempts = options.max_attempts if reopenable is not None else 1
    for attempt in range(1, attempts + 1):
        sent = _Counter(size, progress)
        chunks = reopenable.chunks() if reopenable is not None else _stream_chunks(source)  # type: ignore[arg-type]
        try:
            written = await client.write(spec, chunks, on_sent=sent.add)
        except GatewayCallError as error:
            sent.rewind()
            if not error.retryable or attempt == attempts:
                raise
            await asyncio.sleep(options.backoff(attempt, error))
        else:
            return _result(written, algorithm)
    raise AssertionError("unreachable")  # pragma: no cover


class _Counter:
    """Bytes sent by one attempt, reported as progress (taken back if the attempt fails)."""

    def __init__(self, total: int | None, callback: ProgressCallback | None) -> None:
        self.total, self.count, self._callback = total, 0, callback

    def add(self, count: int) -> None:
        self.count += count
        if self._callback is not None:
            self._callback(self.count, self.total)

    def rewind(self) -> None:
        if self.count and self._callback is not None:
            self._callback(0, self.total)
        self.count = 0


def _result(written: pb.WrittenObject, algorithm: checksums.Algorithm) -> UploadResult:
    """The object's checksum: S3's when it reported one, else the one the gateway computed over
    the bytes (which the client's own value matched)."""
    from_s3 = getattr(written, algorithm.field, "")
    if from_s3:
        checksum_type = pb.ChecksumType.Name(written.checksum_type).removeprefix("CHECKSUM_TYPE_")
        if written.checksum_type == pb.CHECKSUM_TYPE_UNSPECIFIED:
            checksum_type = "COMPOSITE" if from_s3.rpartition("-")[2].isdigit() else "FULL_OBJECT"
    else:
        checksum_type = "FULL_OBJECT"  # a checksum of the bytes, whatever S3 keeps
    return UploadResult(
        bucket=written.bucket,
        key=written.key,
        upload_id="",
        etag=written.etag,
        size=written.size,
        parts=written.parts,
        checksum=from_s3 or written.computed_checksums.get(algorithm.name, ""),
        checksum_from_s3=bool(from_s3),
        checksum_algorithm=algorithm.name,
        checksum_type=checksum_type,
        response=written,
    )


async def send_object(
    call: grpc.aio.StreamStreamCall[pb.WriteObjectRequest, pb.WriteObjectResponse],
    spec: pb.WriteObjectSpec,
    chunks: AsyncIterable[bytes],
    on_sent: Callable[[int], None] | None,
) -> bool:
    """Write the spec, the data (each message with its CRC32C) and the finish with the whole
    object's checksum of the spec's algorithm, computed while sending. False when the gateway
    ended the call before everything was written (reading the call gives its status)."""
    algorithm = checksums.BY_PROTO[spec.object.checksum_algorithm]
    hasher = algorithm.new()
    if not await _write(call, pb.WriteObjectRequest(spec=spec)):
        return False
    async for chunk in chunks:
        hasher.update(chunk)
        data = pb.ChecksummedData(content=chunk, crc32c=checksums.crc32c(chunk))
        if not await _write(call, pb.WriteObjectRequest(data=data)):
            return False
        if on_sent is not None:
            on_sent(len(chunk))
    finish = pb.FinishWrite(**{algorithm.field: checksums.encode(hasher.digest())})
    if not await _write(call, pb.WriteObjectRequest(finish=finish)):
        return False
    await call.done_writing()
    return True


async def send_spec(
    call: grpc.aio.StreamStreamCall[pb.WriteObjectRequest, pb.WriteObjectResponse],
    spec: pb.WriteObjectSpec,
) -> bool:
    """Write the spec alone (a probe: without ``finish`` nothing can be committed)."""
    return await _write(call, pb.WriteObjectRequest(spec=spec))


async def _write(
    call: grpc.aio.StreamStreamCall[pb.WriteObjectRequest, pb.WriteObjectResponse],
    message: pb.WriteObjectRequest,
) -> bool:
    if call.done():
        return False
    try:
        await call.write(message)
    except asyncio.InvalidStateError:  # finished between the check and the write
        return False
    return True
