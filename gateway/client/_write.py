"""Whole objects in one WriteObject stream: the gateway cuts the parts, uploads them in parallel,
verifies the object's checksum and completes it; the client sends the bytes in order and the
checksum of them it computed while sending.

A file or bytes in memory can be sent again: a stream that fails with a retryable status is
written again from the start, up to ``options.max_attempts`` times (the failed attempt committed
nothing). Any other source is read once, so its first failure is final.
"""

from __future__ import annotations

import asyncio
import functools
import os
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import IO, TYPE_CHECKING, TypeVar

import grpc

from gateway import buckets, checksums
from gateway.client._channel import write_message
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

T = TypeVar("T")

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

    def chunks(self, offset: int = 0) -> AsyncIterator[bytes]:
        """The bytes from ``offset`` on."""
        if self.path is not None:
            return FilePart(self.path, 1, offset, self.size - offset).chunks()
        assert self.data is not None
        return _memory_chunks(self.data, offset)

    async def crc(self, algorithm: checksums.Algorithm, length: int) -> bytes:
        """The checksum of the first ``length`` bytes (read again: a resume's prefix)."""
        hasher = algorithm.new()
        async for chunk in (
            FilePart(self.path, 1, 0, length).chunks()
            if self.path
            else (_memory_chunks(self.data[:length] if self.data is not None else b""))
        ):
            hasher.update(chunk)
        return hasher.digest()


async def _memory_chunks(data: bytes, offset: int = 0) -> AsyncIterator[bytes]:
    view = memoryview(data)
    for start in range(offset, len(view), CHUNK_SIZE):
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
    on_token: Callable[[str], None] | None = None,
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
    if options.resumable or options.resume_token:
        if reopenable is None:
            raise ValueError(
                "a resumable write needs a source that can be read again: a path or bytes"
            )
        return await _write_resumable(
            client, spec, reopenable, algorithm, options, progress, on_token
        )
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


async def _write_resumable(
    client: GatewayClient,
    spec: pb.WriteObjectSpec,
    source: _Reopenable,
    algorithm: checksums.Algorithm,
    options: UploadOptions,
    progress: ProgressCallback | None,
    on_token: Callable[[str], None] | None,
) -> UploadResult:
    """A resumable write of ``source``: started (or, with ``options.resume_token``, continued),
    then streamed; after a retryable failure, asked where it stands (QueryWriteStatus) and
    continued from the persisted size, with backoff, until ``options.max_attempts`` streams in a
    row persisted nothing new."""
    sse_key = spec.object.sse_customer_key
    token = options.resume_token
    offset: int | None = None
    if token:  # where the write stands, and its own algorithm, whatever the options say
        query = pb.QueryWriteStatusRequest(write_token=token, sse_customer_key=sse_key)
        status = await _query(client, query, options, settling=False)
        if status.HasField("spec"):
            algorithm = checksums.BY_PROTO.get(status.spec.object.checksum_algorithm, algorithm)
        if status.HasField("object"):
            return _result(status.object, algorithm)
        offset, token = status.persisted_size, status.write_token or token
    else:
        request = pb.StartResumableWriteRequest(spec=spec)
        started = await _retrying(options, functools.partial(client.start_resumable_write, request))
        token, offset = started.write_token, 0
    latest = [token]

    def keep(newer: str) -> None:
        latest[0] = newer
        if on_token is not None:
            on_token(newer)

    keep(token)
    failures = 0
    resumed = False  # a stream of this write failed: its finish may be completing
    while True:
        if offset is None:
            query = pb.QueryWriteStatusRequest(write_token=latest[0], sse_customer_key=sse_key)
            status = await _query(client, query, options, settling=failures > 0 or resumed)
            if status.HasField("object"):
                return _result(status.object, algorithm)
            offset = status.persisted_size
            if status.write_token:
                keep(status.write_token)
        if offset > source.size:
            raise ValueError(f"the write holds {offset} bytes; the source only {source.size}")
        prefix = await source.crc(algorithm, offset)
        sent = _Counter(source.size, progress, start=offset)
        before = latest[0]
        resume = pb.ResumeWrite(
            write_token=latest[0], write_offset=offset, sse_customer_key=sse_key
        )
        try:
            written = await client.resume_write(
                resume, source.chunks(offset), algorithm, prefix, on_sent=sent.add, on_token=keep
            )
        except GatewayCallError as error:
            resumed = True
            info = error.error_info
            if error.reason == "WRITE_OFFSET_MISMATCH" and info is not None:
                offset = int(info.metadata["persistedSize"])
                keep(info.metadata.get("writeToken") or latest[0])
                continue
            if not error.retryable:
                raise
            failures = 0 if latest[0] != before else failures + 1
            if failures >= options.max_attempts:
                raise
            await asyncio.sleep(options.backoff(max(failures, 1), error))
            offset = None
        else:
            return _result(written, algorithm)


#: Seconds between the queries that wait for a finish that may be completing.
_SETTLE_DELAYS = (0.5, 1.0, 2.0)


async def _query(
    client: GatewayClient,
    request: pb.QueryWriteStatusRequest,
    options: UploadOptions,
    *,
    settling: bool,
) -> pb.QueryWriteStatusResponse:
    """QueryWriteStatus, retried on retryable errors. After a failed stream (``settling``) a
    NOT_FOUND is asked again a few times: a finish that S3 is completing right then shows neither
    the upload nor yet the object."""
    for delay in (*_SETTLE_DELAYS, None) if settling else (None,):
        try:
            return await _retrying(options, functools.partial(client.query_write_status, request))
        except GatewayCallError as error:
            if error.code != grpc.StatusCode.NOT_FOUND or delay is None:
                raise
            await asyncio.sleep(delay)
    raise AssertionError("unreachable")  # pragma: no cover


async def _retrying(options: UploadOptions, call: Callable[[], Awaitable[T]]) -> T:
    """``call()``, again after a retryable failure, up to ``options.max_attempts`` times."""
    for attempt in range(1, options.max_attempts + 1):
        try:
            return await call()
        except GatewayCallError as error:
            if not error.retryable or attempt == options.max_attempts:
                raise
            await asyncio.sleep(options.backoff(attempt, error))
    raise AssertionError("unreachable")  # pragma: no cover


class _Counter:
    """Bytes sent by one attempt, reported as progress (taken back if the attempt fails)."""

    def __init__(
        self, total: int | None, callback: ProgressCallback | None, start: int = 0
    ) -> None:
        self.total, self.count, self._callback = total, start, callback

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
    first: pb.WriteObjectRequest,
    chunks: AsyncIterable[bytes],
    on_sent: Callable[[int], None] | None,
    algorithm: checksums.Algorithm,
    prefix: tuple[bytes, int] | None = None,
) -> bool:
    """Write the first message (spec or resume), the data (each message with its CRC32C) and
    the finish with the whole object's checksum of ``algorithm``, computed while sending (and
    combined with ``prefix``, the CRC and length of the bytes before the data, for a resumed
    write). False when the gateway ended the call before everything was written (reading the
    call gives its status)."""
    hasher = algorithm.new()
    sent = 0
    if not await write_message(call, first):
        return False
    try:
        async for chunk in chunks:
            hasher.update(chunk)
            sent += len(chunk)
            data = pb.ChecksummedData(content=chunk, crc32c=checksums.crc32c(chunk))
            if not await write_message(call, pb.WriteObjectRequest(data=data)):
                return False
            if on_sent is not None:
                on_sent(len(chunk))
    finally:
        # A source left half-read (the call failed) closes now, its file with it.
        close = getattr(chunks, "aclose", None)
        if close is not None:
            await close()
    digest = hasher.digest()
    if prefix is not None:
        digest = checksums.combine(algorithm, prefix[0], digest, sent)
    finish = pb.FinishWrite(**{algorithm.field: checksums.encode(digest)})
    if not await write_message(call, pb.WriteObjectRequest(finish=finish)):
        return False
    await call.done_writing()
    return True
