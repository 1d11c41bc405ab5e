"""The UploadService servicer: each handler reads like the RPC it serves.

A handler validates its request completely (:mod:`gateway.server.validate`) before anything goes
to S3, converts it to botocore parameters (:mod:`gateway.convert`) and relays it
(:meth:`UploadService._relay`), converting S3's answer back. UploadPart is a pipeline of its own
(:mod:`gateway.server.upload_part`). :func:`gateway.server.calls.rpc` wraps every handler:
admission (:meth:`UploadService.admit`), errors to statuses, the access log.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any, TypeVar

import grpc
from google.protobuf.message import Message

from gateway import buckets, convert
from gateway.config import Settings
from gateway.errors import (
    ADMISSION_REASONS,
    STREAMING_RPCS,
    GatewayError,
    InvalidRequest,
    PermissionDenied,
    Reason,
    ResourceExhausted,
)
from gateway.security.guard import Guard
from gateway.security.write_tokens import Signer
from gateway.server import validate
from gateway.server.admission import Admission
from gateway.server.calls import CallRecord, Context, current_call, rpc, rpc_stream
from gateway.server.metrics import Metrics
from gateway.server.resumable import Resumable
from gateway.server.s3 import S3
from gateway.server.upload_part import PartUpload, default_checksum
from gateway.server.wire import (
    Malformed,
    PartMessage,
    WriteMessage,
    decode_part_message,
    decode_write_message,
    decoder,
)
from gateway.server.write_object import ObjectWrite
from gateway.v1 import upload_service_pb2 as pb
from gateway.v1 import upload_service_pb2_grpc as pb_grpc

SERVICE = pb.DESCRIPTOR.services_by_name["UploadService"]
#: The RPCs whose object is named by a write token or a spec: their handlers authorize.
_TOKEN_RPCS = frozenset({"StartResumableWrite", "QueryWriteStatus", "CancelResumableWrite"})

Reply = TypeVar("Reply", bound=Message)


class UploadService(pb_grpc.UploadServiceServicer):
    """Relays the S3 multipart upload API."""

    def __init__(
        self,
        s3: S3,
        settings: Settings,
        metrics: Metrics,
        guard: Guard,
        admission: Admission,
        signer: Signer | None = None,
    ) -> None:
        self._s3 = s3
        self._metrics = metrics
        self._guard = guard
        self._admission = admission
        self._upload_part = PartUpload(s3, settings, metrics, guard, admission)
        self._resumable = Resumable(s3, settings, guard, signer, metrics)
        self._write_object = ObjectWrite(s3, settings, metrics, guard, admission, self._resumable)

    async def settle(self) -> None:
        """Wait for the clean-up calls of the ended calls (WriteObject's aborts)."""
        await self._write_object.settle()

    # --- what every call goes through (gateway.server.calls.Hooks)

    def admit(self, record: CallRecord, request: Any, context: Context) -> None:
        """Authenticate the caller; refuse a malformed request; check the policy of a unary call
        (a stream's comes with its first message, UploadPartCopy's source with its handler)."""
        record.principal = self._guard.authenticate(context)
        record.caller = self._admission.key(record.principal, context)
        if isinstance(request, Malformed):
            raise InvalidRequest("request", f"is not valid protobuf: {request.error}")
        operation = record.method
        if operation == "ListMultipartUploads":
            self._guard.authorize(
                record.principal, operation, request.bucket, prefix=request.prefix
            )
        elif operation not in STREAMING_RPCS and operation not in _TOKEN_RPCS:
            self._guard.authorize(record.principal, operation, request.bucket, request.key)

    def count_failure(self, error: GatewayError) -> None:
        m = self._metrics
        if error.reason == Reason.CHECKSUM_MISMATCH:
            m.checksum_mismatches.labels(error.metadata["algorithm"]).inc()
        elif error.code == grpc.StatusCode.UNAUTHENTICATED:
            m.auth_failures.inc()
        elif isinstance(error, PermissionDenied):
            m.policy_denials.labels(error.metadata["operation"]).inc()
        elif isinstance(error, ResourceExhausted) and error.reason in ADMISSION_REASONS:
            m.admission_rejections.labels(error.reason).inc()

    async def _relay(self, operation: str, params: dict[str, Any], reply: Reply) -> Reply:
        """Call ``operation`` on S3 for the current caller; S3's answer fills ``reply``."""
        response = await self._s3.call(operation, params, caller=current_call().caller)
        convert.from_response(response, reply, operation)
        return reply

    # --- the RPCs

    @rpc
    async def CreateMultipartUpload(
        self, request: pb.CreateMultipartUploadRequest, context: Context
    ) -> pb.CreateMultipartUploadResponse:
        validate.object_request(request, self._s3.region)
        validate.sse_customer(request)
        validate.checksum_choice(request.checksum_algorithm, request.checksum_type)
        validate.user_metadata(request.metadata)
        params = convert.to_params(request, "CreateMultipartUpload")
        default = default_checksum(request.bucket)
        if default is not None and "ChecksumAlgorithm" not in params:
            params["ChecksumAlgorithm"] = default.name
        reply = await self._relay(
            "CreateMultipartUpload", params, pb.CreateMultipartUploadResponse()
        )
        if default is not None and not reply.checksum_algorithm:
            reply.checksum_algorithm = pb.ChecksumAlgorithm.ValueType(default.proto_value)
        return reply

    @rpc
    async def UploadPart(
        self, request_iterator: AsyncIterator[PartMessage], context: Context
    ) -> pb.UploadPartResponse:
        return await self._upload_part(request_iterator, current_call())

    # grpc.aio serves a streaming answer from a coroutine that writes it, too; the generated
    # servicer knows only generators.
    @rpc_stream
    def WriteObject(  # type: ignore[override]
        self, request_iterator: AsyncIterator[WriteMessage], context: Context
    ) -> AsyncGenerator[pb.WriteObjectResponse, None]:
        return self._write_object(request_iterator, current_call())

    @rpc
    async def StartResumableWrite(
        self, request: pb.StartResumableWriteRequest, context: Context
    ) -> pb.StartResumableWriteResponse:
        record = current_call()
        assert record.principal is not None
        record.bucket = request.spec.object.bucket
        return await self._resumable.start(request, record.principal, record.caller)

    @rpc
    async def QueryWriteStatus(
        self, request: pb.QueryWriteStatusRequest, context: Context
    ) -> pb.QueryWriteStatusResponse:
        record = current_call()
        assert record.principal is not None
        return await self._resumable.query(request, record.principal, record.caller)

    @rpc
    async def CancelResumableWrite(
        self, request: pb.CancelResumableWriteRequest, context: Context
    ) -> pb.CancelResumableWriteResponse:
        record = current_call()
        assert record.principal is not None
        return await self._resumable.cancel(request, record.principal, record.caller)

    @rpc
    async def UploadPartCopy(
        self, request: pb.UploadPartCopyRequest, context: Context
    ) -> pb.UploadPartCopyResponse:
        principal = current_call().principal
        assert principal is not None
        # Parsed once: the source the policy allowed is the structure botocore encodes for S3.
        source = self._guard.authorize_copy_source(principal, request.copy_source)
        validate.object_request(request, self._s3.region)
        validate.upload_id(request.upload_id)
        validate.part_number(request.part_number)
        validate.sse_customer(request)
        validate.sse_customer(request, prefix="copy_source_")
        params = convert.to_params(request, "UploadPartCopy")
        params["CopySource"] = source.botocore()
        return await self._relay("UploadPartCopy", params, pb.UploadPartCopyResponse())

    @rpc
    async def CompleteMultipartUpload(
        self, request: pb.CompleteMultipartUploadRequest, context: Context
    ) -> pb.CompleteMultipartUploadResponse:
        validate.object_request(request, self._s3.region)
        validate.upload_id(request.upload_id)
        if not request.parts:
            raise InvalidRequest("parts", "at least one part is required")
        for index, part in enumerate(request.parts):
            validate.part_number(part.part_number, f"parts[{index}].part_number")
            if not part.etag:
                raise InvalidRequest(f"parts[{index}].etag", "is required")
            validate.declared_checksums(part, prefix=f"parts[{index}].")
        if buckets.is_directory_bucket(request.bucket):
            validate.consecutive_part_numbers([p.part_number for p in request.parts])
        validate.declared_checksums(request)
        validate.sse_customer(request)
        if request.HasField("mpu_object_size") and request.mpu_object_size < 0:
            raise InvalidRequest("mpu_object_size", "must not be negative")
        params = convert.to_params(request, "CompleteMultipartUpload")
        return await self._relay(
            "CompleteMultipartUpload", params, pb.CompleteMultipartUploadResponse()
        )

    @rpc
    async def AbortMultipartUpload(
        self, request: pb.AbortMultipartUploadRequest, context: Context
    ) -> pb.AbortMultipartUploadResponse:
        validate.object_request(request, self._s3.region)
        validate.upload_id(request.upload_id)
        params = convert.to_params(request, "AbortMultipartUpload")
        return await self._relay("AbortMultipartUpload", params, pb.AbortMultipartUploadResponse())

    @rpc
    async def ListParts(
        self, request: pb.ListPartsRequest, context: Context
    ) -> pb.ListPartsResponse:
        validate.object_request(request, self._s3.region)
        validate.upload_id(request.upload_id)
        validate.page_size(request.max_parts, "max_parts")
        if not 0 <= request.part_number_marker <= validate.MAX_PART_NUMBER:
            raise InvalidRequest("part_number_marker", "must be a part number")
        validate.sse_customer(request)
        params = convert.to_params(request, "ListParts")
        return await self._relay("ListParts", params, pb.ListPartsResponse())

    @rpc
    async def ListMultipartUploads(
        self, request: pb.ListMultipartUploadsRequest, context: Context
    ) -> pb.ListMultipartUploadsResponse:
        buckets.check_name(request.bucket)
        validate.bucket_region(request.bucket, self._s3.region)
        validate.page_size(request.max_uploads, "max_uploads")
        validate.header_strings(request, "ListMultipartUploads")
        params = convert.to_params(request, "ListMultipartUploads")
        return await self._relay("ListMultipartUploads", params, pb.ListMultipartUploadsResponse())


def add_to_server(service: UploadService, server: grpc.aio.Server) -> None:
    """Register ``service`` with the gateway's own request decoders (:mod:`gateway.server.wire`) in
    place of the generated ones."""
    handlers: dict[str, grpc.RpcMethodHandler[Any, Any]] = {}
    for method in SERVICE.methods:
        behavior = getattr(service, method.name)
        serialize = getattr(pb, method.output_type.name).SerializeToString
        if method.client_streaming and method.server_streaming:
            handlers[method.name] = grpc.stream_stream_rpc_method_handler(
                behavior, decode_write_message, serialize
            )
        elif method.client_streaming:
            handlers[method.name] = grpc.stream_unary_rpc_method_handler(
                behavior, decode_part_message, serialize
            )
        else:
            handlers[method.name] = grpc.unary_unary_rpc_method_handler(
                behavior, decoder(getattr(pb, method.input_type.name)), serialize
            )
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(SERVICE.full_name, handlers),)
    )
    server.add_registered_method_handlers(SERVICE.full_name, handlers)  # type: ignore[attr-defined]
