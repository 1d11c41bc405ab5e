"""The gateway's calls: :class:`GatewayClient`, one method per RPC, and the whole uploads."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterable, Callable
from typing import IO

import grpc

from gateway import bearer, checksums
from gateway.client import _upload
from gateway.client import _write as _writing
from gateway.client._channel import check_arguments, open_channel, with_metadata, write_message
from gateway.client._errors import GatewayCallError, rpc
from gateway.client._sources import as_chunks
from gateway.client._upload import ProgressCallback, UploadOptions, UploadResult
from gateway.v1 import upload_service_pb2 as pb
from gateway.v1 import upload_service_pb2_grpc as pb_grpc


class GatewayClient:
    """The gateway's ``UploadService`` over a ``grpc.aio`` channel.

    ``channel`` is best opened with :func:`open_channel` (or use :meth:`connect`). ``timeout``
    (seconds) applies to each unary call; UploadPart takes its own. ``token``, when given, is
    sent as ``authorization: Bearer <token>`` metadata with every call, as :func:`open_channel`
    sends it (it is never shown by ``repr`` or in error messages); give it here or to
    :func:`open_channel`, not to both: the gateway refuses a call with two.
    """

    def __init__(
        self, channel: grpc.aio.Channel, *, timeout: float | None = None, token: str | None = None
    ) -> None:
        self.channel = channel
        self.timeout = timeout
        metadata = bearer.metadata(token)
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
        bearer.metadata(token)  # refuse a bad token before opening anything
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
        return await rpc(self._stub.CreateMultipartUpload(request, timeout=self.timeout))

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
        chunks = as_chunks(body)
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
                if await write_message(probe, pb.UploadPartRequest(header=header)):
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
        return await rpc(self._stub.UploadPartCopy(request, timeout=self.timeout))

    async def complete_multipart_upload(
        self, request: pb.CompleteMultipartUploadRequest
    ) -> pb.CompleteMultipartUploadResponse:
        return await rpc(self._stub.CompleteMultipartUpload(request, timeout=self.timeout))

    async def abort_multipart_upload(
        self, request: pb.AbortMultipartUploadRequest
    ) -> pb.AbortMultipartUploadResponse:
        return await rpc(self._stub.AbortMultipartUpload(request, timeout=self.timeout))

    async def list_parts(self, request: pb.ListPartsRequest) -> pb.ListPartsResponse:
        return await rpc(self._stub.ListParts(request, timeout=self.timeout))

    async def list_multipart_uploads(
        self, request: pb.ListMultipartUploadsRequest
    ) -> pb.ListMultipartUploadsResponse:
        return await rpc(self._stub.ListMultipartUploads(request, timeout=self.timeout))

    async def start_resumable_write(
        self, request: pb.StartResumableWriteRequest
    ) -> pb.StartResumableWriteResponse:
        return await rpc(self._stub.StartResumableWrite(request, timeout=self.timeout))

    async def query_write_status(
        self, request: pb.QueryWriteStatusRequest
    ) -> pb.QueryWriteStatusResponse:
        return await rpc(self._stub.QueryWriteStatus(request, timeout=self.timeout))

    async def cancel_resumable_write(
        self, request: pb.CancelResumableWriteRequest
    ) -> pb.CancelResumableWriteResponse:
        return await rpc(self._stub.CancelResumableWrite(request, timeout=self.timeout))

    async def resume_write(
        self,
        resume: pb.ResumeWrite,
        body: bytes | AsyncIterable[bytes],
        algorithm: checksums.Algorithm,
        prefix_crc: bytes,
        *,
        on_sent: Callable[[int], None] | None = None,
        on_persisted: Callable[[int], None] | None = None,
        on_token: Callable[[str], None] | None = None,
    ) -> pb.WrittenObject:
        """One WriteObject stream that continues a resumable write at ``resume.write_offset``:
        the body is the object's bytes from there, and the finish carries the CRC of the whole
        object, from ``prefix_crc`` (the CRC, of the write's ``algorithm``, of the bytes before
        the offset) and those of the body. ``on_token`` gets each newer token."""
        first = pb.WriteObjectRequest(resume=resume)
        return await self._write_stream(
            first,
            body,
            algorithm,
            (prefix_crc, resume.write_offset),
            on_sent=on_sent,
            on_persisted=on_persisted,
            on_token=on_token,
        )

    async def write(
        self,
        spec: pb.WriteObjectSpec,
        body: bytes | AsyncIterable[bytes],
        *,
        on_sent: Callable[[int], None] | None = None,
        on_persisted: Callable[[int], None] | None = None,
    ) -> pb.WrittenObject:
        """One WriteObject stream: the spec, the body in ``data`` messages (each with its
        CRC32C), and the finish with the object's checksum, computed while sending, of the
        algorithm ``spec.object.checksum_algorithm`` names (which it must name).

        ``on_sent`` gets each chunk's size once written; ``on_persisted`` the bytes S3 has
        committed so far, as the gateway reports them. The call has no deadline unless the
        client has a ``timeout``: an object takes as long as its bytes."""
        if spec.object.checksum_algorithm not in checksums.BY_PROTO:
            raise ValueError("spec.object.checksum_algorithm must name the object's algorithm")
        algorithm = checksums.BY_PROTO[spec.object.checksum_algorithm]
        first = pb.WriteObjectRequest(spec=spec)
        return await self._write_stream(
            first, body, algorithm, None, on_sent=on_sent, on_persisted=on_persisted
        )

    async def _write_stream(
        self,
        first: pb.WriteObjectRequest,
        body: bytes | AsyncIterable[bytes],
        algorithm: checksums.Algorithm,
        prefix: tuple[bytes, int] | None,
        *,
        on_sent: Callable[[int], None] | None = None,
        on_persisted: Callable[[int], None] | None = None,
        on_token: Callable[[str], None] | None = None,
    ) -> pb.WrittenObject:
        call = self._stub.WriteObject(None, timeout=self.timeout)
        written: list[pb.WrittenObject] = []

        async def read() -> None:
            async for response in call:
                if response.HasField("progress"):
                    if on_persisted is not None:
                        on_persisted(response.progress.persisted_size)
                    if on_token is not None and response.progress.write_token:
                        on_token(response.progress.write_token)
                if response.HasField("object"):
                    written.append(response.object)

        reader = asyncio.ensure_future(read())
        try:
            await _writing.send_object(call, first, as_chunks(body), on_sent, algorithm, prefix)
            await reader
        except grpc.aio.AioRpcError as error:
            failure = GatewayCallError.from_rpc_error(error)
            raise await self._explain_write(failure, first) from None
        except BaseException:
            call.cancel()
            raise
        finally:
            reader.cancel()
        if not written:
            raise GatewayCallError(grpc.StatusCode.INTERNAL, "WriteObject ended without the object")
        return written[-1]

    async def _explain_write(
        self, error: GatewayCallError, first: pb.WriteObjectRequest
    ) -> Exception:
        """:meth:`_explain` for WriteObject: the gateway's answer to the first message alone (a
        stream that ends without ``finish`` commits nothing), if that is what it refused."""
        if not error.is_core_internal:
            return error
        probe = self._stub.WriteObject(None, timeout=self.timeout)
        try:
            if await write_message(probe, first):
                await probe.done_writing()
            async for _ in probe:
                pass
        except grpc.aio.AioRpcError as probe_error:
            real = GatewayCallError.from_rpc_error(probe_error)
            info = real.error_info
            # "finish: ..." (INVALID_ARGUMENT, the missing finish) answers a spec it took.
            if info is not None and not real.message.startswith("finish:"):
                return real
        return await self._refused_credentials() or error

    # --- whole uploads ---

    async def write_object(
        self,
        bucket: str,
        key: str,
        source: _writing.Source,
        *,
        size: int | None = None,
        options: UploadOptions | None = None,
        progress: ProgressCallback | None = None,
        on_token: Callable[[str], None] | None = None,
    ) -> UploadResult:
        """Write one object in one WriteObject stream: the gateway cuts the parts, uploads
        them in parallel, checks the whole object's checksum (computed here while sending) and
        completes it; nothing is committed if anything fails.

        ``source`` is a path, bytes, a binary file object or an async iterable of byte chunks;
        ``size``, when known (a path's and bytes' is), lets the gateway size the parts of a large
        object and is checked. A path or bytes is written again on a retryable failure.

        With ``options.resumable`` (or ``options.resume_token``) the write is resumable: after a
        retryable failure it continues from the bytes S3 holds, through any gateway replica;
        ``on_token`` gets the write's token, and each newer one (keep the last to resume it from
        another process)."""
        return await _writing.write_object(
            self, bucket, key, source, size, options, progress, on_token
        )

    async def upload_file(
        self,
        path: str | os.PathLike[str],
        bucket: str,
        key: str,
        options: UploadOptions | None = None,
        progress: ProgressCallback | None = None,
    ) -> UploadResult:
        """Upload a file: one WriteObject stream (:meth:`write_object`), or with
        ``options.client_parts`` a multipart upload whose parts are read from disk when sent."""
        if options is not None and options.client_parts:
            return await _upload.upload_file(self, path, bucket, key, options, progress)
        return await self.write_object(bucket, key, path, options=options, progress=progress)

    async def upload_stream(
        self,
        stream: AsyncIterable[bytes] | IO[bytes],
        bucket: str,
        key: str,
        size: int | None = None,
        options: UploadOptions | None = None,
        progress: ProgressCallback | None = None,
    ) -> UploadResult:
        """Upload an async iterable of byte chunks or a binary file object, read sequentially:
        one WriteObject stream (:meth:`write_object`), or with ``options.client_parts`` a
        multipart upload. ``size``, when known, sizes the parts and is checked; without it the
        parts are of their default size and the stream may not exceed 10,000 of them."""
        if options is not None and options.client_parts:
            return await _upload.upload_stream(self, stream, bucket, key, size, options, progress)
        return await self.write_object(
            bucket, key, stream, size=size, options=options, progress=progress
        )


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
    if not await write_message(call, pb.UploadPartRequest(header=header)):
        return False
    async for chunk in chunks:
        if hasher is not None:
            hasher.update(chunk)
        crc = checksums.crc32c(chunk)
        if not await write_message(
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
    return await write_message(
        call, pb.UploadPartRequest(trailer=pb.UploadPartTrailer(**{algorithm.field: value}))
    )


def write_object_sync(
    target: str,
    bucket: str,
    key: str,
    source: str | os.PathLike[str] | bytes | IO[bytes],
    *,
    size: int | None = None,
    options: UploadOptions | None = None,
    progress: ProgressCallback | None = None,
    tls: bool = False,
    ca_bundle: str | os.PathLike[str] | None = None,
    client_cert: str | os.PathLike[str] | None = None,
    client_key: str | os.PathLike[str] | None = None,
    token: str | None = None,
) -> UploadResult:
    """:meth:`GatewayClient.write_object` for a script without an event loop: connect to
    ``target`` (as :meth:`GatewayClient.connect`), write the object, close."""

    async def run() -> UploadResult:
        async with GatewayClient.connect(
            target,
            tls=tls,
            ca_bundle=ca_bundle,
            client_cert=client_cert,
            client_key=client_key,
            token=token,
        ) as client:
            return await client.write_object(
                bucket, key, source, size=size, options=options, progress=progress
            )

    return asyncio.run(run())
