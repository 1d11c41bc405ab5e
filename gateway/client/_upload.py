"""Whole uploads: Create, the parts ``concurrency`` at a time with retries, Complete or Abort.

Also what an upload is given (:class:`UploadOptions`, :class:`CustomerKey`) and what it yields
(:class:`UploadResult`, with the object's checksum: :func:`object_checksum`).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import os
import random
from collections.abc import AsyncIterable, Callable, Mapping
from dataclasses import dataclass, field
from typing import IO, TYPE_CHECKING

from gateway import checksums
from gateway.client._errors import GatewayCallError
from gateway.client._sources import (
    DEFAULT_PART_SIZE,
    FileSource,
    PartBody,
    PartSource,
    StreamReader,
    StreamSource,
    choose_part_size,
)
from gateway.v1 import upload_service_pb2 as pb

if TYPE_CHECKING:
    from gateway.client._calls import GatewayClient

DEFAULT_CONCURRENCY = 4

#: ``(bytes_done, total)``; total is None while the size is unknown.
ProgressCallback = Callable[[int, int | None], None]


@dataclass(frozen=True)
class CustomerKey:
    """An SSE-C key: 32 raw bytes. ``key_md5`` overrides the computed MD5 (base64)."""

    key: bytes
    key_md5: str = ""
    algorithm: str = "AES256"

    @property
    def key_b64(self) -> str:
        return base64.b64encode(self.key).decode("ascii")

    @property
    def md5_b64(self) -> str:
        return self.key_md5 or base64.b64encode(hashlib.md5(self.key).digest()).decode("ascii")


@dataclass(frozen=True)
class UploadOptions:
    """How a high-level upload runs and what the object gets.

    By default an upload is one WriteObject stream: the gateway cuts the parts (of its own
    size, ``GATEWAY_WRITE_PART_SIZE``), uploads them in parallel and completes the object.
    ``client_parts`` makes the client do it instead, with CreateMultipartUpload, ``concurrency``
    UploadPart streams of ``part_size`` bytes, and CompleteMultipartUpload."""

    #: The client cuts and uploads the parts itself (``part_size``, ``concurrency``).
    client_parts: bool = False
    part_size: int = DEFAULT_PART_SIZE
    concurrency: int = DEFAULT_CONCURRENCY
    #: An S3 checksum algorithm name (``CRC32C``, ``SHA256``…); empty for the default
    #: (CRC64NVME, or CRC32C in a directory bucket; CRC32C with ``client_parts``); ``NONE``
    #: for none (``client_parts`` only: a WriteObject always has a checksum).
    checksum_algorithm: str = ""
    #: ``COMPOSITE``, ``FULL_OBJECT`` or empty (S3's default for the algorithm).
    checksum_type: str = ""
    content_type: str = ""
    content_encoding: str = ""
    content_disposition: str = ""
    content_language: str = ""
    cache_control: str = ""
    metadata: Mapping[str, str] = field(default_factory=dict)
    #: URL-encoded tags (``k1=v1&k2=v2``).
    tagging: str = ""
    #: ``STANDARD``, ``STANDARD_IA``, ``GLACIER_IR``…; empty for the bucket's default.
    storage_class: str = ""
    #: A canned ACL (``private``, ``bucket-owner-full-control``…); empty for none.
    acl: str = ""
    #: ``AES256``, ``aws:kms``…; empty for the bucket's default.
    server_side_encryption: str = ""
    ssekms_key_id: str = ""
    customer_key: CustomerKey | None = None
    #: Write only if the key holds no object (``If-None-Match: *``): a retry after a lost answer
    #: cannot overwrite the object a first attempt wrote.
    if_none_match: bool = False
    #: A resumable write (StartResumableWrite): a failed stream is continued from the bytes
    #: S3 holds, on any replica, instead of written again from the start. Needs a source that
    #: can be read again (a path, bytes).
    resumable: bool = False
    #: Continue this resumable write (a token StartResumableWrite or a progress gave) instead of
    #: starting one; the source must be the same bytes.
    resume_token: str = ""
    #: Attempts per part (and for Complete) on retryable errors; with WriteObject, attempts at
    #: the whole stream when the source can be read again (a file, bytes); with ``resumable``,
    #: failed streams in a row that persisted nothing new.
    max_attempts: int = 5
    initial_backoff: float = 0.2
    max_backoff: float = 10.0

    @property
    def algorithm(self) -> checksums.Algorithm | None:
        """The algorithm named, None for the default (and for ``NONE``)."""
        name = self.checksum_algorithm.upper()
        if name in ("", "NONE"):
            return None
        try:
            return checksums.BY_NAME[name]
        except KeyError:
            raise ValueError(f"unknown checksum algorithm {self.checksum_algorithm!r}") from None

    @property
    def part_algorithm(self) -> checksums.Algorithm | None:
        """With ``client_parts``: the parts' checksum (CRC32C by default), None for ``NONE``."""
        if self.checksum_algorithm.upper() == "NONE":
            return None
        return self.algorithm or checksums.CRC32C

    def backoff(self, attempt: int, error: GatewayCallError) -> float:
        """Seconds to wait before attempt ``attempt + 1``: RetryInfo's delay, else exponential
        backoff with full jitter."""
        if error.retry_delay is not None:
            return error.retry_delay
        ceiling = min(self.max_backoff, self.initial_backoff * 2 ** (attempt - 1))
        return random.uniform(0, ceiling)


def object_checksum(
    algorithm: checksums.Algorithm, checksum_type: str, parts: list[tuple[str, int]]
) -> str:
    """The object checksum S3 derives from the parts' (base64 checksum, length), in order:
    FULL_OBJECT combines the CRCs into the CRC of the whole object; COMPOSITE is the checksum of
    the concatenated part digests, with ``-N``."""
    digests = [checksums.decode(algorithm, value) for value, _ in parts]
    if checksum_type.upper() == "FULL_OBJECT":
        combined = bytes(algorithm.digest_size)  # the CRC of nothing
        for digest, (_, length) in zip(digests, parts, strict=True):
            combined = checksums.combine(algorithm, combined, digest, length)
        return checksums.encode(combined)
    return f"{checksums.encode(algorithm.compute(b''.join(digests)))}-{len(parts)}"


@dataclass(frozen=True)
class UploadResult:
    """What a high-level upload produced."""

    bucket: str
    key: str
    #: The client's multipart upload (``client_parts``); empty for a WriteObject.
    upload_id: str
    etag: str
    size: int
    #: 0 for an object a WriteObject sent as one PutObject.
    parts: int
    #: The object's checksum (``value-N`` for COMPOSITE), empty without an algorithm: S3's answer,
    #: else derived from the part checksums the gateway verified (:func:`object_checksum`; S3
    #: does not report checksums it received only as a trailer over plain http); for a
    #: WriteObject without S3's answer, the checksum the gateway computed over the bytes (type
    #: FULL_OBJECT).
    checksum: str
    #: Whether ``checksum`` is S3's answer rather than derived by the client.
    checksum_from_s3: bool
    checksum_algorithm: str
    checksum_type: str
    #: S3's answer: the WriteObject's object, or CompleteMultipartUpload's (``client_parts``).
    response: pb.WrittenObject | pb.CompleteMultipartUploadResponse


async def upload_file(
    client: GatewayClient,
    path: str | os.PathLike[str],
    bucket: str,
    key: str,
    options: UploadOptions | None,
    progress: ProgressCallback | None,
) -> UploadResult:
    """:meth:`GatewayClient.upload_file`."""
    options = options or UploadOptions()
    name = os.fspath(path)
    size = await asyncio.to_thread(os.path.getsize, name)
    source = FileSource(name, size, choose_part_size(size, options.part_size))
    return await _run(client, source, bucket, key, options, progress)


async def upload_stream(
    client: GatewayClient,
    stream: AsyncIterable[bytes] | IO[bytes],
    bucket: str,
    key: str,
    size: int | None,
    options: UploadOptions | None,
    progress: ProgressCallback | None,
) -> UploadResult:
    """:meth:`GatewayClient.upload_stream`."""
    options = options or UploadOptions()
    part_size = choose_part_size(size, options.part_size)
    source = StreamSource(StreamReader(stream), size, part_size)
    return await _run(client, source, bucket, key, options, progress)


async def _run(
    client: GatewayClient,
    source: PartSource,
    bucket: str,
    key: str,
    options: UploadOptions,
    progress: ProgressCallback | None,
) -> UploadResult:
    algorithm = options.part_algorithm  # validates the name before anything is sent
    if options.concurrency < 1:
        raise ValueError("concurrency must be at least 1")
    created = await client.create_multipart_upload(_create_request(bucket, key, options))
    run = _Upload(client, created.upload_id, bucket, key, options, algorithm)
    try:
        parts = await run.upload_parts(source, _Progress(source.total, progress))
        _check_size(source, run.size)
        response = await run.complete(parts)
    except BaseException:
        await run.abort()
        raise
    return run.result(response, len(parts))


class _Progress:
    def __init__(self, total: int | None, callback: ProgressCallback | None) -> None:
        self.total, self.done, self._callback = total, 0, callback

    def add(self, count: int) -> None:
        self.done += count
        if self._callback is not None:
            self._callback(self.done, self.total)


class _Sent:
    """What one attempt at a part sent: bytes (reported as progress) and its trailer checksum."""

    def __init__(self, progress: _Progress) -> None:
        self.progress, self.count, self.checksum = progress, 0, ""

    def add(self, count: int) -> None:
        self.count += count
        self.progress.add(count)

    def set_checksum(self, value: str) -> None:
        self.checksum = value


def _check_size(source: PartSource, uploaded: int) -> None:
    if source.total is not None and uploaded != source.total:
        raise ValueError(f"the stream carried {uploaded} bytes, not the {source.total} announced")


def object_request(
    bucket: str, key: str, options: UploadOptions
) -> pb.CreateMultipartUploadRequest:
    """The object's attributes from ``options`` (without its checksum algorithm)."""
    request = pb.CreateMultipartUploadRequest(
        bucket=bucket,
        key=key,
        content_type=options.content_type,
        content_encoding=options.content_encoding,
        content_disposition=options.content_disposition,
        content_language=options.content_language,
        cache_control=options.cache_control,
        metadata=dict(options.metadata),
        tagging=options.tagging,
        storage_class=options.storage_class,
        acl=options.acl,
        server_side_encryption=options.server_side_encryption,
        ssekms_key_id=options.ssekms_key_id,
    )
    if options.checksum_type:
        request.checksum_type = _checksum_type(options.checksum_type)
    _set_customer_key(request, options.customer_key)
    return request


def _create_request(
    bucket: str, key: str, options: UploadOptions
) -> pb.CreateMultipartUploadRequest:
    request = object_request(bucket, key, options)
    if options.part_algorithm is not None:
        algorithm = options.part_algorithm
        request.checksum_algorithm = pb.ChecksumAlgorithm.ValueType(algorithm.proto_value)
    return request


def _checksum_type(name: str) -> pb.ChecksumType.ValueType:
    try:
        return pb.ChecksumType.Value(f"CHECKSUM_TYPE_{name.upper()}")
    except ValueError:
        raise ValueError(f"checksum type must be COMPOSITE or FULL_OBJECT, not {name!r}") from None


def _set_customer_key(
    message: pb.CreateMultipartUploadRequest
    | pb.UploadPartHeader
    | pb.CompleteMultipartUploadRequest,
    key: CustomerKey | None,
) -> None:
    if key is not None:
        message.sse_customer_algorithm = key.algorithm
        message.sse_customer_key = key.key_b64
        message.sse_customer_key_md5 = key.md5_b64


@dataclass
class _Upload:
    """One multipart upload in flight: its parts, their retries, Complete or Abort."""

    client: GatewayClient
    upload_id: str
    bucket: str
    key: str
    options: UploadOptions
    algorithm: checksums.Algorithm | None
    size: int = 0
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    #: Part number -> (base64 checksum, length), for the object checksum.
    _sums: dict[int, tuple[str, int]] = field(default_factory=dict)

    async def upload_parts(self, source: PartSource, progress: _Progress) -> list[pb.CompletedPart]:
        """Upload every part of ``source`` with ``concurrency`` workers."""
        done: list[pb.CompletedPart] = []
        try:
            async with asyncio.TaskGroup() as group:
                for _ in range(self.options.concurrency):
                    group.create_task(self._worker(source, progress, done))
        except BaseExceptionGroup as failed:
            raise failed.exceptions[0] from None  # the first failure; the others were cancelled
        return sorted(done, key=lambda part: part.part_number)

    async def _worker(
        self, source: PartSource, progress: _Progress, done: list[pb.CompletedPart]
    ) -> None:
        while True:
            async with self._lock:
                part = await source.next()
            if part is None:
                return
            self.size += part.length
            done.append(await self._upload_part(part, progress))

    async def _upload_part(self, part: PartBody, progress: _Progress) -> pb.CompletedPart:
        header = self.part_header(part)
        for attempt in range(1, self.options.max_attempts + 1):
            sent = _Sent(progress)
            try:
                response = await self.client.upload_part(
                    header, part.chunks(), on_sent=sent.add, on_checksum=sent.set_checksum
                )
            except GatewayCallError as error:
                progress.add(-sent.count)
                if not error.retryable or attempt == self.options.max_attempts:
                    raise
                await asyncio.sleep(self.options.backoff(attempt, error))
            else:
                return self._completed(part, response, sent.checksum)
        raise AssertionError("unreachable")  # pragma: no cover

    def part_header(self, part: PartBody) -> pb.UploadPartHeader:
        header = pb.UploadPartHeader(
            bucket=self.bucket,
            key=self.key,
            upload_id=self.upload_id,
            part_number=part.number,
            content_length=part.length,
        )
        if self.algorithm is not None:
            header.checksum_algorithm = pb.ChecksumAlgorithm.ValueType(self.algorithm.proto_value)
        _set_customer_key(header, self.options.customer_key)
        return header

    def _completed(
        self, part: PartBody, response: pb.UploadPartResponse, sent_checksum: str
    ) -> pb.CompletedPart:
        """The part for Complete, with its checksum: S3's, else the one the gateway verified."""
        completed = pb.CompletedPart(etag=response.etag, part_number=part.number)
        if self.algorithm is not None:
            value = getattr(response, self.algorithm.field) or sent_checksum
            setattr(completed, self.algorithm.field, value)
            self._sums[part.number] = (value, part.length)
        return completed

    async def complete(self, parts: list[pb.CompletedPart]) -> pb.CompleteMultipartUploadResponse:
        request = pb.CompleteMultipartUploadRequest(
            bucket=self.bucket, key=self.key, upload_id=self.upload_id, parts=parts
        )
        if self.options.checksum_type:
            request.checksum_type = _checksum_type(self.options.checksum_type)
        if self.options.if_none_match:
            request.if_none_match = "*"
        _set_customer_key(request, self.options.customer_key)
        for attempt in range(1, self.options.max_attempts + 1):
            try:
                return await self.client.complete_multipart_upload(request)
            except GatewayCallError as error:
                if not error.retryable or attempt == self.options.max_attempts:
                    raise
                await asyncio.sleep(self.options.backoff(attempt, error))
        raise AssertionError("unreachable")  # pragma: no cover

    async def abort(self) -> None:
        """Abort the upload, best effort (the original error is what matters)."""
        request = pb.AbortMultipartUploadRequest(
            bucket=self.bucket, key=self.key, upload_id=self.upload_id
        )
        with contextlib.suppress(GatewayCallError):
            await asyncio.shield(self.client.abort_multipart_upload(request))

    def result(self, response: pb.CompleteMultipartUploadResponse, parts: int) -> UploadResult:
        algorithm = self.algorithm
        reported = getattr(response, algorithm.field) if algorithm is not None else ""
        checksum = reported or self._derived_checksum(response)
        return UploadResult(
            bucket=self.bucket,
            key=self.key,
            upload_id=self.upload_id,
            etag=response.etag,
            size=self.size,
            parts=parts,
            checksum=checksum,
            checksum_from_s3=bool(reported),
            checksum_algorithm=algorithm.name if algorithm is not None else "",
            checksum_type=self._checksum_type(response),
            response=response,
        )

    def _checksum_type(self, response: pb.CompleteMultipartUploadResponse) -> str:
        if response.checksum_type:
            return pb.ChecksumType.Name(response.checksum_type).removeprefix("CHECKSUM_TYPE_")
        if self.algorithm is None:
            return ""
        if self.options.checksum_type:
            return self.options.checksum_type.upper()
        return "FULL_OBJECT" if self.algorithm is checksums.CRC64NVME else "COMPOSITE"

    def _derived_checksum(self, response: pb.CompleteMultipartUploadResponse) -> str:
        if self.algorithm is None or len(self._sums) == 0:
            return ""
        parts = [self._sums[number] for number in sorted(self._sums)]
        return object_checksum(self.algorithm, self._checksum_type(response), parts)
