"""An async Python client for the gateway.

:class:`GatewayClient` wraps a ``grpc.aio`` channel. Its low-level methods map one to one onto the
RPCs of ``gateway.v1.UploadService`` and return the proto responses;
:meth:`GatewayClient.upload_file` and :meth:`GatewayClient.upload_stream` run a whole multipart
upload::

    async with GatewayClient.connect("localhost:50051") as client:
        result = await client.upload_file("big.bin", "bucket", "key")
        print(result.etag, result.checksum)

A high-level upload is CreateMultipartUpload, then UploadPart for every part, ``concurrency`` at a
time, then CompleteMultipartUpload. The part size is chosen within S3's limits
(:func:`choose_part_size`). The checksum of the chosen algorithm is computed per part while the
part streams, and travels in the part's trailer; the values go back to S3 at Complete. A part that
fails with a retryable status is re-sent with exponential backoff (honouring the gateway's
``RetryInfo``); any other failure aborts the upload and is re-raised. Memory stays near
``part_size * concurrency``: a part is read only when a worker takes it; a file's part is re-read
from disk on retry, a stream's part is kept in memory until it is committed.

A gateway that authenticates its callers takes a bearer token (``token=``, sent as
``authorization: Bearer <token>`` metadata on every call), a client certificate over TLS
(``client_cert=`` and ``client_key=``: mutual TLS), or both::

    async with GatewayClient.connect(
        "gateway.internal:443", tls=True, ca_bundle="ca.pem", token=os.environ["GATEWAY_TOKEN"]
    ) as client:
        ...

Every failed call raises :class:`GatewayCallError`, built from the ``google.rpc.Status`` the
gateway puts in the ``grpc-status-details-bin`` trailer (its ``ErrorInfo`` and ``RetryInfo``).

grpc/grpc#36066: when the gateway refuses a part before the client has finished sending it, a
``grpc.aio`` client can see INTERNAL "Internal error from Core" instead of the gateway's status.
Such an error carries no ``ErrorInfo``, which tells it from a real INTERNAL (every gateway error
carries one): see :attr:`GatewayCallError.is_core_internal`. The client first avoids the race where
it can (it stops writing once the call has ended, and then reads the real status). When it still
happens, :meth:`GatewayClient.upload_part` asks the gateway about the header alone (a stream of
just the header: nothing can be committed); a header the gateway refuses (bad SSE-C key MD5, bad
part number…) yields the gateway's real error, which is raised instead. A gateway refuses bad
credentials as soon as the call starts, before any message, which such a probe can race too; the
client then asks about its credentials with a unary call that the gateway answers without S3 (an
empty ListParts) and raises UNAUTHENTICATED when that is the answer. Otherwise the INTERNAL
stays, and counts as retryable; a refusal that the gateway learns only from S3 once data flows (an
unknown upload id) then surfaces as that INTERNAL after the last attempt.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import math
import os
import random
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import IO, Any, Protocol, TypeVar

import grpc
from awscrt import checksums as crt
from google.rpc import error_details_pb2, status_pb2

from gateway import bearer, checksums
from gateway.client._channel import (
    MAX_SEND_MESSAGE_SIZE,
    channel_credentials,
    check_arguments,
    open_channel,
    with_metadata,
)
from gateway.pem import TLSConfigError
from gateway.v1 import upload_service_pb2 as pb
from gateway.v1 import upload_service_pb2_grpc as pb_grpc

T = TypeVar("T")

MiB = 1024 * 1024
#: S3's smallest part (except the last) and largest part, and its most parts per upload.
MIN_PART_SIZE = 5 * MiB
MAX_PART_SIZE = 5 * 1024 * MiB
MAX_PARTS = 10_000
#: The part size used for streams of unknown length, and the least used for known sizes.
DEFAULT_PART_SIZE = 8 * MiB
DEFAULT_CONCURRENCY = 4
#: The size of the ``data`` messages of UploadPart.
CHUNK_SIZE = MiB
#: Codes on which a part is re-sent.
RETRYABLE_CODES = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.ABORTED,
    }
)
_CORE_INTERNAL = "Internal error from Core"
_STATUS_DETAILS_KEY = "grpc-status-details-bin"

#: ``(bytes_done, total)``; total is None while the size is unknown.
ProgressCallback = Callable[[int, int | None], None]


class GatewayCallError(Exception):
    """A call to the gateway failed: the gRPC code, the message and the rich error details."""

    def __init__(
        self,
        code: grpc.StatusCode,
        message: str,
        error_info: error_details_pb2.ErrorInfo | None = None,
        retry_delay: float | None = None,
    ) -> None:
        super().__init__(f"{code.name}: {message}")
        self.code = code
        self.message = message
        self.error_info = error_info
        self.retry_delay = retry_delay

    @classmethod
    def from_rpc_error(cls, error: grpc.aio.AioRpcError) -> GatewayCallError:
        """Parse the ``google.rpc.Status`` of the trailing metadata, if the gateway sent one."""
        status = _status_details(error.trailing_metadata())
        info, delay = _parse_details(status) if status is not None else (None, None)
        message = status.message if status is not None else (error.details() or "")
        return cls(error.code(), message, info, delay)

    @property
    def reason(self) -> str:
        """The ErrorInfo reason (``NO_SUCH_UPLOAD``…), empty when there is none."""
        return self.error_info.reason if self.error_info is not None else ""

    @property
    def is_core_internal(self) -> bool:
        """INTERNAL made up by grpc.aio's client (grpc/grpc#36066), not sent by the gateway."""
        return (
            self.code == grpc.StatusCode.INTERNAL
            and self.error_info is None
            and _CORE_INTERNAL in self.message
        )

    @property
    def retryable(self) -> bool:
        """Whether re-sending the same request can succeed."""
        return self.code in RETRYABLE_CODES or self.is_core_internal


def _status_details(metadata: Iterable[Any] | None) -> status_pb2.Status | None:
    for key, value in metadata or ():
        if key == _STATUS_DETAILS_KEY and isinstance(value, bytes):
            status = status_pb2.Status()
            status.ParseFromString(value)
            return status
    return None


def _parse_details(
    status: status_pb2.Status,
) -> tuple[error_details_pb2.ErrorInfo | None, float | None]:
    info: error_details_pb2.ErrorInfo | None = None
    delay: float | None = None
    for detail in status.details:
        candidate = error_details_pb2.ErrorInfo()
        if info is None and detail.Unpack(candidate):
            info = candidate
        retry = error_details_pb2.RetryInfo()
        if delay is None and detail.Unpack(retry):
            delay = retry.retry_delay.ToNanoseconds() / 1e9
    return info, delay


async def _rpc(call: Awaitable[T]) -> T:
    try:
        return await call
    except grpc.aio.AioRpcError as error:
        raise GatewayCallError.from_rpc_error(error) from None


#: The call metadata carrying a token: ``authorization: Bearer <token>``; none for None. Raises
#: ValueError for a token that is empty or not a bearer token (the message never holds it).
bearer_metadata = bearer.metadata


# --- part sizing ---------------------------------------------------------------------------------


def choose_part_size(size: int | None, default: int = DEFAULT_PART_SIZE) -> int:
    """The part size for an object of ``size`` bytes (None: unknown): ``default``, raised (to a
    whole MiB) as far as needed to fit in 10,000 parts."""
    if not MIN_PART_SIZE <= default <= MAX_PART_SIZE:
        raise ValueError(f"part size must be 5 MiB to 5 GiB, not {default} bytes")
    if size is None or size <= default * MAX_PARTS:
        return default
    needed = math.ceil(math.ceil(size / MAX_PARTS) / MiB) * MiB
    if needed > MAX_PART_SIZE:
        raise ValueError(f"{size} bytes do not fit in {MAX_PARTS} parts of at most 5 GiB")
    return needed


def part_count(size: int, part_size: int) -> int:
    """How many parts ``size`` bytes make; a 0-byte object is one empty part."""
    return max(1, math.ceil(size / part_size))


# --- what an upload is made of -------------------------------------------------------------------


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
    """How a high-level upload runs and what the object gets."""

    part_size: int = DEFAULT_PART_SIZE
    concurrency: int = DEFAULT_CONCURRENCY
    #: An S3 checksum algorithm name (``CRC32C``, ``SHA256``…); empty for none.
    checksum_algorithm: str = "CRC32C"
    #: ``COMPOSITE``, ``FULL_OBJECT`` or empty (S3's default for the algorithm).
    checksum_type: str = ""
    content_type: str = ""
    metadata: Mapping[str, str] = field(default_factory=dict)
    #: ``AES256``, ``aws:kms``…; empty for the bucket's default.
    server_side_encryption: str = ""
    ssekms_key_id: str = ""
    customer_key: CustomerKey | None = None
    #: Attempts per part (and for Complete) on retryable errors.
    max_attempts: int = 5
    initial_backoff: float = 0.2
    max_backoff: float = 10.0

    @property
    def algorithm(self) -> checksums.Algorithm | None:
        if not self.checksum_algorithm:
            return None
        try:
            return checksums.BY_NAME[self.checksum_algorithm.upper()]
        except KeyError:
            raise ValueError(f"unknown checksum algorithm {self.checksum_algorithm!r}") from None

    def backoff(self, attempt: int, error: GatewayCallError) -> float:
        """Seconds to wait before attempt ``attempt + 1``: RetryInfo's delay, else exponential
        backoff with full jitter."""
        if error.retry_delay is not None:
            return error.retry_delay
        ceiling = min(self.max_backoff, self.initial_backoff * 2 ** (attempt - 1))
        return random.uniform(0, ceiling)


_COMBINE: dict[checksums.Algorithm, Callable[[int, int, int], int]] = {
    checksums.CRC32: crt.combine_crc32,
    checksums.CRC32C: crt.combine_crc32c,
    checksums.CRC64NVME: crt.combine_crc64nvme,
}


def object_checksum(
    algorithm: checksums.Algorithm, checksum_type: str, parts: list[tuple[str, int]]
) -> str:
    """The object checksum S3 derives from the parts' (base64 checksum, length), in order:
    FULL_OBJECT combines the CRCs into the CRC of the whole object; COMPOSITE is the checksum of
    the concatenated part digests, with ``-N``."""
    digests = [checksums.decode(algorithm, value) for value, _ in parts]
    if checksum_type.upper() == "FULL_OBJECT":
        combine = _COMBINE[algorithm]
        value = 0
        for digest, (_, length) in zip(digests, parts, strict=True):
            value = combine(value, int.from_bytes(digest, "big"), length)
        return checksums.encode(value.to_bytes(algorithm.digest_size, "big"))
    return f"{checksums.encode(algorithm.compute(b''.join(digests)))}-{len(parts)}"


@dataclass(frozen=True)
class UploadResult:
    """What a high-level upload produced."""

    bucket: str
    key: str
    upload_id: str
    etag: str
    size: int
    parts: int
    #: The object's checksum (``value-N`` for COMPOSITE), empty without an algorithm: S3's answer,
    #: else derived from the part checksums the gateway verified (:func:`object_checksum`; S3
    #: does not report checksums it received only as a trailer over plain http).
    checksum: str
    #: Whether ``checksum`` is S3's answer rather than derived by the client.
    checksum_from_s3: bool
    checksum_algorithm: str
    checksum_type: str
    response: pb.CompleteMultipartUploadResponse


class PartBody(Protocol):
    """One part's bytes, readable again for every attempt."""

    @property
    def number(self) -> int: ...

    @property
    def length(self) -> int: ...

    def chunks(self) -> AsyncIterator[bytes]: ...


class PartSource(Protocol):
    """Hands out parts in order; ``next`` is called under a lock, one caller at a time."""

    @property
    def total(self) -> int | None: ...

    async def next(self) -> PartBody | None: ...


@dataclass
class _FilePart:
    path: str
    number: int
    offset: int
    length: int

    async def chunks(self) -> AsyncIterator[bytes]:
        """Read from disk chunk by chunk (a retry reads the part again)."""
        with open(self.path, "rb") as handle:  # noqa: ASYNC230 - reads happen in a thread
            await asyncio.to_thread(handle.seek, self.offset)
            left = self.length
            while left > 0:
                chunk = await asyncio.to_thread(handle.read, min(CHUNK_SIZE, left))
                if not chunk:
                    raise OSError(f"{self.path} shrank while it was being uploaded")
                left -= len(chunk)
                yield chunk


class _FileSource:
    def __init__(self, path: str, size: int, part_size: int) -> None:
        self.path, self.total, self.part_size = path, size, part_size
        self._count = part_count(size, part_size)
        self._next = 1

    async def next(self) -> PartBody | None:
        if self._next > self._count:
            return None
        number, self._next = self._next, self._next + 1
        offset = (number - 1) * self.part_size
        assert self.total is not None
        return _FilePart(self.path, number, offset, min(self.part_size, self.total - offset))


@dataclass
class _MemoryPart:
    number: int
    data: bytes

    @property
    def length(self) -> int:
        return len(self.data)

    async def chunks(self) -> AsyncIterator[bytes]:
        view = memoryview(self.data)
        for start in range(0, len(view), CHUNK_SIZE):
            yield bytes(view[start : start + CHUNK_SIZE])


class _StreamReader:
    """``read(n)`` over an async iterable of chunks or a binary file object."""

    def __init__(self, source: AsyncIterable[bytes] | IO[bytes]) -> None:
        self._file = None if isinstance(source, AsyncIterable) else source
        self._chunks = source.__aiter__() if isinstance(source, AsyncIterable) else None
        self._buffer = bytearray()

    async def read(self, size: int) -> bytes:
        """Up to ``size`` bytes; fewer only at the end of the stream."""
        if self._file is not None:
            return await asyncio.to_thread(_read_fully, self._file, size)
        assert self._chunks is not None
        while len(self._buffer) < size:
            try:
                self._buffer += await anext(self._chunks)
            except StopAsyncIteration:
                break
        data = bytes(self._buffer[:size])
        del self._buffer[:size]
        return data


def _read_fully(handle: IO[bytes], size: int) -> bytes:
    parts: list[bytes] = []
    left = size
    while left > 0:
        chunk = handle.read(left)
        if not chunk:
            break
        parts.append(chunk)
        left -= len(chunk)
    return b"".join(parts)


class _StreamSource:
    def __init__(self, reader: _StreamReader, size: int | None, part_size: int) -> None:
        self.total, self._reader, self._part_size = size, reader, part_size
        self._next = 1
        self._ended = False

    async def next(self) -> PartBody | None:
        if self._ended:
            return None
        data = await self._reader.read(self._part_size)
        if not data and self._next > 1:
            self._ended = True
            return None
        if self._next > MAX_PARTS:
            raise ValueError(
                f"the stream is longer than {MAX_PARTS} parts of {self._part_size} bytes; "
                "choose a larger part size"
            )
        self._ended = len(data) < self._part_size
        number, self._next = self._next, self._next + 1
        return _MemoryPart(number, data)


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


# --- the client ----------------------------------------------------------------------------------


class GatewayClient:
    """The gateway's ``UploadService`` over a ``grpc.aio`` channel.

    ``timeout`` (seconds) applies to each unary call; UploadPart takes its own. ``token``, when
    given, is sent as ``authorization: Bearer <token>`` metadata with every call (it is never
    shown by ``repr`` or in error messages).
    """

    def __init__(
        self, channel: grpc.aio.Channel, *, timeout: float | None = None, token: str | None = None
    ) -> None:
        self.channel = channel
        self.timeout = timeout
        metadata = bearer_metadata(token)
        self._has_token = bool(metadata)
        # The token goes the way open_channel sends it: added where each call is made.
        calls = with_metadata(channel, metadata) if metadata else channel
        self._stub: pb_grpc.UploadServiceAsyncStub = pb_grpc.UploadServiceStub(calls)

    def __repr__(self) -> str:
        token = ", token=<hidden>" if self._has_token else ""
        return f"{type(self).__name__}(timeout={self.timeout}{token})"

    @classmethod
    def connect(
        cls,
        target: str,
        *,
        tls: bool = False,
        ca_bundle: str | os.PathLike[str] | None = None,
        client_cert: str | os.PathLike[str] | None = None,
        client_key: str | os.PathLike[str] | None = None,
        token: str | None = None,
        timeout: float | None = None,
    ) -> GatewayClient:
        """A client on a new channel to ``target`` (``host:port``).

        TLS trusts ``ca_bundle`` (a PEM file) or the system's CAs; ``client_cert`` and
        ``client_key`` (PEM files, the key unencrypted) are presented for mutual TLS and need
        ``tls=True``. ``token`` goes with every call as a bearer token. Raises ValueError for
        a bad combination, a bad token or unusable certificate files
        (:class:`gateway.pem.TLSConfigError`); see :func:`open_channel`."""
        check_arguments(
            tls=tls,
            ca_bundle=ca_bundle,
            client_cert=client_cert,
            client_key=client_key,
            root_certificates=None,
        )
        bearer_metadata(token)  # refuse a bad token before opening anything
        channel = open_channel(
            target, tls=tls, ca_bundle=ca_bundle, client_cert=client_cert, client_key=client_key
        )
        return cls(channel, timeout=timeout, token=token)

    async def close(self) -> None:
        await self.channel.close(None)

    async def __aenter__(self) -> GatewayClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # --- the RPCs ---

    async def create_multipart_upload(
        self, request: pb.CreateMultipartUploadRequest
    ) -> pb.CreateMultipartUploadResponse:
        return await _rpc(self._stub.CreateMultipartUpload(request, timeout=self.timeout))

    async def upload_part(
        self,
        header: pb.UploadPartHeader,
        body: bytes | AsyncIterable[bytes],
        *,
        on_sent: Callable[[int], None] | None = None,
        on_checksum: Callable[[str], None] | None = None,
    ) -> pb.UploadPartResponse:
        """Stream one part: the header, the body in ``data`` messages (each with its CRC32C) and,
        when ``header.checksum_algorithm`` names an algorithm whose value the header lacks, a
        trailer with that checksum computed while sending.

        ``on_sent`` gets each chunk's size once written; ``on_checksum`` the trailer's value. S3
        echoes a trailer value in the response only when it stored it (the gateway reaches S3
        over https); the gateway verified it in any case."""
        chunks = _as_chunks(body)
        call = self._stub.UploadPart(None, timeout=self.timeout)
        try:
            if await _send_part(call, header, chunks, on_sent, on_checksum):
                await call.done_writing()
            response: pb.UploadPartResponse = await call  # the status, early or not
        except grpc.aio.AioRpcError as error:
            failure = GatewayCallError.from_rpc_error(error)
            raise await self._explain(failure, header) from None
        except BaseException:
            call.cancel()
            raise
        return response

    async def _explain(self, error: GatewayCallError, header: pb.UploadPartHeader) -> Exception:
        """For grpc/grpc#36066's INTERNAL, the gateway's real answer: to the header, if the header
        is what it refused; else to the credentials, if they are what it refused (at the start of
        the call, where a probe stream can race the same way); else the error itself."""
        if not error.is_core_internal:
            return error
        if header.content_length:
            probe = self._stub.UploadPart(None, timeout=self.timeout)
            try:
                if await _write(probe, pb.UploadPartRequest(header=header)):
                    await probe.done_writing()
                await probe
            except grpc.aio.AioRpcError as probe_error:
                real = GatewayCallError.from_rpc_error(probe_error)
                if real.error_info is not None and real.code != grpc.StatusCode.OUT_OF_RANGE:
                    return real
        return await self._refused_credentials() or error

    async def _refused_credentials(self) -> GatewayCallError | None:
        """UNAUTHENTICATED when the gateway refuses this client's credentials, else None. Asked
        with an empty ListParts, which the gateway refuses before anything reaches S3: for the
        credentials, else for the request itself."""
        try:
            await self._stub.ListParts(pb.ListPartsRequest(), timeout=self.timeout)
        except grpc.aio.AioRpcError as probe_error:
            real = GatewayCallError.from_rpc_error(probe_error)
            if real.code == grpc.StatusCode.UNAUTHENTICATED and real.error_info is not None:
                return real
        return None

    async def upload_part_copy(
        self, request: pb.UploadPartCopyRequest
    ) -> pb.UploadPartCopyResponse:
        return await _rpc(self._stub.UploadPartCopy(request, timeout=self.timeout))

    async def complete_multipart_upload(
        self, request: pb.CompleteMultipartUploadRequest
    ) -> pb.CompleteMultipartUploadResponse:
        return await _rpc(self._stub.CompleteMultipartUpload(request, timeout=self.timeout))

    async def abort_multipart_upload(
        self, request: pb.AbortMultipartUploadRequest
    ) -> pb.AbortMultipartUploadResponse:
        return await _rpc(self._stub.AbortMultipartUpload(request, timeout=self.timeout))

    async def list_parts(self, request: pb.ListPartsRequest) -> pb.ListPartsResponse:
        return await _rpc(self._stub.ListParts(request, timeout=self.timeout))

    async def list_multipart_uploads(
        self, request: pb.ListMultipartUploadsRequest
    ) -> pb.ListMultipartUploadsResponse:
        return await _rpc(self._stub.ListMultipartUploads(request, timeout=self.timeout))

    # --- whole uploads ---

    async def upload_file(
        self,
        path: str | os.PathLike[str],
        bucket: str,
        key: str,
        options: UploadOptions | None = None,
        progress: ProgressCallback | None = None,
    ) -> UploadResult:
        """Upload a file as a multipart upload; parts are read from disk when sent."""
        options = options or UploadOptions()
        name = os.fspath(path)
        size = await asyncio.to_thread(os.path.getsize, name)
        source = _FileSource(name, size, choose_part_size(size, options.part_size))
        return await self._upload(source, bucket, key, options, progress)

    async def upload_stream(
        self,
        stream: AsyncIterable[bytes] | IO[bytes],
        bucket: str,
        key: str,
        size: int | None = None,
        options: UploadOptions | None = None,
        progress: ProgressCallback | None = None,
    ) -> UploadResult:
        """Upload an async iterable of byte chunks or a binary file object, read sequentially.
        ``size``, when known, sizes the parts and is checked; without it the parts are
        ``options.part_size`` and the stream may not exceed 10,000 of them."""
        options = options or UploadOptions()
        part_size = choose_part_size(size, options.part_size)
        source = _StreamSource(_StreamReader(stream), size, part_size)
        return await self._upload(source, bucket, key, options, progress)

    async def _upload(
        self,
        source: PartSource,
        bucket: str,
        key: str,
        options: UploadOptions,
        progress: ProgressCallback | None,
    ) -> UploadResult:
        algorithm = options.algorithm  # validates the name before anything is sent
        if options.concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        created = await self.create_multipart_upload(_create_request(bucket, key, options))
        run = _Upload(self, created.upload_id, bucket, key, options, algorithm)
        try:
            parts = await run.upload_parts(source, _Progress(source.total, progress))
            _check_size(source, run.size)
            response = await run.complete(parts)
        except BaseException:
            await run.abort()
            raise
        return run.result(response, len(parts))


def _as_chunks(body: bytes | AsyncIterable[bytes]) -> AsyncIterable[bytes]:
    return _MemoryPart(0, body).chunks() if isinstance(body, bytes) else body


async def _send_part(
    call: grpc.aio.StreamUnaryCall[pb.UploadPartRequest, pb.UploadPartResponse],
    header: pb.UploadPartHeader,
    chunks: AsyncIterable[bytes],
    on_sent: Callable[[int], None] | None,
    on_checksum: Callable[[str], None] | None,
) -> bool:
    """Write the header, the data and the trailer, if any. False when the gateway ended the call
    before everything was written (it refused the part; awaiting the call gives its status)."""
    algorithm = checksums.BY_PROTO.get(header.checksum_algorithm)
    if algorithm is not None and getattr(header, algorithm.field):
        algorithm = None  # the value is in the header already
    hasher = algorithm.new() if algorithm is not None else None
    if not await _write(call, pb.UploadPartRequest(header=header)):
        return False
    async for chunk in chunks:
        if hasher is not None:
            hasher.update(chunk)
        crc = int.from_bytes(checksums.CRC32C.compute(chunk), "big")
        if not await _write(
            call, pb.UploadPartRequest(data=pb.ChecksummedData(content=chunk, crc32c=crc))
        ):
            return False
        if on_sent is not None:
            on_sent(len(chunk))
    if algorithm is None or hasher is None:
        return True
    value = checksums.encode(hasher.digest())
    if on_checksum is not None:
        on_checksum(value)
    return await _write(
        call, pb.UploadPartRequest(trailer=pb.UploadPartTrailer(**{algorithm.field: value}))
    )


async def _write(
    call: grpc.aio.StreamUnaryCall[pb.UploadPartRequest, pb.UploadPartResponse],
    message: pb.UploadPartRequest,
) -> bool:
    if call.done():
        return False
    try:
        await call.write(message)
    except asyncio.InvalidStateError:  # finished between the check and the write
        return False
    return True


def _check_size(source: PartSource, uploaded: int) -> None:
    if source.total is not None and uploaded != source.total:
        raise ValueError(f"the stream carried {uploaded} bytes, not the {source.total} announced")


def _create_request(
    bucket: str, key: str, options: UploadOptions
) -> pb.CreateMultipartUploadRequest:
    request = pb.CreateMultipartUploadRequest(
        bucket=bucket,
        key=key,
        content_type=options.content_type,
        metadata=dict(options.metadata),
        server_side_encryption=options.server_side_encryption,
        ssekms_key_id=options.ssekms_key_id,
    )
    if options.algorithm is not None:
        request.checksum_algorithm = pb.ChecksumAlgorithm.ValueType(options.algorithm.proto_value)
    if options.checksum_type:
        request.checksum_type = _checksum_type(options.checksum_type)
    _set_customer_key(request, options.customer_key)
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


__all__ = [
    "CHUNK_SIZE",
    "DEFAULT_PART_SIZE",
    "MAX_PARTS",
    "MAX_PART_SIZE",
    "MAX_SEND_MESSAGE_SIZE",
    "MIN_PART_SIZE",
    "RETRYABLE_CODES",
    "CustomerKey",
    "GatewayCallError",
    "GatewayClient",
    "ProgressCallback",
    "TLSConfigError",
    "UploadOptions",
    "UploadResult",
    "channel_credentials",
    "choose_part_size",
    "object_checksum",
    "open_channel",
    "part_count",
]
