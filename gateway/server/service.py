"""The UploadService servicer: the gRPC protocol and request validation; S3 work is delegated.

Each handler validates its request completely before the first byte goes to S3, converts it to
botocore parameters (:mod:`gateway.convert`), makes the call through the shared client
(:mod:`gateway.server.s3`), and converts S3's answer back. Every failure leaves as a
:class:`gateway.errors.GatewayError` turned into a rich ``google.rpc.Status``.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import grpc

from gateway import buckets, checksums, convert, logs
from gateway.checksums import Algorithm
from gateway.config import MAX_S3_PART_SIZE, Settings
from gateway.errors import (
    ADMISSION_REASONS,
    GatewayError,
    InvalidRequest,
    LengthMismatch,
    PermissionDenied,
    Reason,
    ResourceExhausted,
)
from gateway.security.auth import Principal
from gateway.security.guard import Guard
from gateway.server import validate
from gateway.server.metrics import Metrics, bucket_type
from gateway.server.relay import (
    ChecksumPlan,
    MessageReader,
    PartBody,
    read_whole_part,
    verify_whole_part,
)
from gateway.server.s3 import S3
from gateway.server.timers import IdleTimer, SendWatch, next_message
from gateway.server.wire import Data, Malformed, PartMessage, decode_part_message, decoder
from gateway.v1 import upload_service_pb2 as pb
from gateway.v1 import upload_service_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)

SERVICE = pb.DESCRIPTOR.services_by_name["UploadService"]
access_log = logging.getLogger(logs.ACCESS_LOGGER)

#: The checksum directory buckets get when the caller names none.
DIRECTORY_BUCKET_CHECKSUM = checksums.CRC32C

Request = TypeVar("Request")
Response = TypeVar("Response")
Context = grpc.aio.ServicerContext[Any, Any]
Handler = Callable[[Any, Request, Context], Awaitable[Response]]

#: Header-bound strings checked for control characters in every request that has them.
_HEADER_FIELDS = (
    "expected_bucket_owner",
    "expected_source_bucket_owner",
    "cache_control",
    "content_disposition",
    "content_encoding",
    "content_language",
    "content_type",
    "website_redirect_location",
    "grant_full_control",
    "grant_read",
    "grant_read_acp",
    "grant_write_acp",
    "tagging",
    "ssekms_key_id",
    "ssekms_encryption_context",
    "copy_source",
    "copy_source_range",
    "copy_source_if_match",
    "copy_source_if_none_match",
    "if_match",
    "if_none_match",
)


@dataclass
class CallRecord:
    """What the access log line of one call says (named fields only, never payloads or keys)."""

    method: str
    bucket: str = ""
    part_number: int = 0
    bytes: int = 0
    #: Who made the call, once authenticated.
    principal: Principal | None = None
    #: Whose limits the call counts against: the principal, or an anonymous caller's connection.
    caller: str = ""

    def fields(self, code: grpc.StatusCode, seconds: float) -> dict[str, Any]:
        fields: dict[str, Any] = {"method": self.method, "code": code.name}
        fields["duration_ms"] = round(seconds * 1000, 3)
        if self.principal is not None:
            fields["principal"] = self.principal.name
        if self.bucket:
            fields["bucket"] = self.bucket
        if self.part_number:
            fields["part_number"] = self.part_number
        if self.method == "UploadPart":
            fields["bytes"] = self.bytes
        return fields


#: The record of the call the current task serves.
_current_call: contextvars.ContextVar[CallRecord] = contextvars.ContextVar("current_call")


def rpc(handler: Handler[Request, Response]) -> Handler[Request, Response]:
    """Turn every exception of a handler into a gRPC status with error details, and write one
    access log line per call."""

    @functools.wraps(handler)
    async def wrapper(self: Any, request: Request, context: Context) -> Response:
        record = CallRecord(
            handler.__name__,
            bucket=getattr(request, "bucket", ""),
            part_number=getattr(request, "part_number", 0),
        )
        _current_call.set(record)
        started = time.perf_counter()
        code = grpc.StatusCode.OK
        try:
            try:
                record.principal = self._guard.authenticate(context)
                record.caller = self._guard.admission_key(record.principal, context)
                if isinstance(request, Malformed):
                    raise InvalidRequest("request", f"is not valid protobuf: {request.error}")
                if handler.__name__ != "UploadPart":
                    self._authorize(handler.__name__, record.principal, request)
                return await handler(self, request, context)
            except GatewayError as exc:
                error = exc
            except asyncio.CancelledError:
                code = grpc.StatusCode.CANCELLED
                raise
            except Exception:
                log.exception("unexpected failure in %s", handler.__name__)
                error = GatewayError(
                    grpc.StatusCode.INTERNAL,
                    Reason.GATEWAY_ERROR,
                    "unexpected failure inside the gateway",
                )
            code = error.code
            self._count_failure(error)
            status = error.to_grpc_status()
            await context.abort(status.code, status.details, status.trailing_metadata)
            raise AssertionError("context.abort returned")  # pragma: no cover
        finally:
            access_log.info(
                "%s %s",
                handler.__name__,
                code.name,
                extra={logs.FIELDS: record.fields(code, time.perf_counter() - started)},
            )

    return wrapper


class UploadService(pb_grpc.UploadServiceServicer):
    """Relays the S3 multipart upload API."""

    def __init__(self, s3: S3, settings: Settings, metrics: Metrics, guard: Guard) -> None:
        self._s3 = s3
        self._settings = settings
        self._metrics = metrics
        self._guard = guard

    def _count_failure(self, error: GatewayError) -> None:
        m = self._metrics
        if error.reason == Reason.CHECKSUM_MISMATCH:
            m.checksum_mismatches.labels(error.metadata["algorithm"]).inc()
        elif error.code == grpc.StatusCode.UNAUTHENTICATED:
            m.auth_failures.inc()
        elif isinstance(error, PermissionDenied):
            m.policy_denials.labels(error.metadata["operation"]).inc()
        elif isinstance(error, ResourceExhausted) and error.reason in ADMISSION_REASONS:
            m.admission_rejections.labels(error.reason).inc()

    def _authorize(self, operation: str, principal: Principal, request: Any) -> None:
        """The policy check of a unary call, before it is validated or sent anywhere.

        UploadPartCopy's source is checked by its handler, on the very value it sends S3.
        """
        if operation == "ListMultipartUploads":
            self._guard.authorize(principal, operation, request.bucket, prefix=request.prefix)
            return
        self._guard.authorize(principal, operation, request.bucket, request.key)

    def _check_object(self, request: Any) -> None:
        _check_object(request)
        self._check_bucket(request.bucket)

    def _check_bucket(self, bucket: str) -> None:
        """Routing checks: a directory bucket must live in the region this gateway serves."""
        if not buckets.is_directory_bucket(bucket):
            return
        zone = buckets.directory_bucket_zone(bucket)
        region = buckets.zone_region(zone)
        if region is not None and region != self._s3.region:
            raise GatewayError(
                grpc.StatusCode.FAILED_PRECONDITION,
                Reason.WRONG_REGION,
                f"directory bucket {bucket} is in {region} (zone {zone}); this gateway serves "
                f"{self._s3.region}: call a gateway configured for {region}",
                metadata={"bucketRegion": region, "gatewayRegion": self._s3.region},
            )

    async def _call(
        self, operation: str, params: dict[str, Any], *, watch: SendWatch | None = None
    ) -> dict[str, Any]:
        """Call S3 on behalf of the current call's caller (who waits for a connection)."""
        return await self._s3.call(
            operation, params, caller=_current_call.get().caller, watch=watch
        )

    def _trailer_ok(self, bucket: str) -> bool:
        return self._s3.uses_tls(bucket) and self._settings.s3_trailing_checksums

    @rpc
    async def CreateMultipartUpload(
        self, request: pb.CreateMultipartUploadRequest, context: Context
    ) -> pb.CreateMultipartUploadResponse:
        self._check_object(request)
        validate.sse_customer(request)
        _check_checksum_choice(request.checksum_algorithm, request.checksum_type)
        validate.user_metadata(request.metadata)
        params = convert.to_params(request, "CreateMultipartUpload")
        directory = buckets.is_directory_bucket(request.bucket)
        if directory and "ChecksumAlgorithm" not in params:
            params["ChecksumAlgorithm"] = DIRECTORY_BUCKET_CHECKSUM.name
        response = await self._call("CreateMultipartUpload", params)
        reply = _reply(response, pb.CreateMultipartUploadResponse(), "CreateMultipartUpload")
        if directory and not reply.checksum_algorithm:
            reply.checksum_algorithm = pb.ChecksumAlgorithm.ValueType(
                checksums.BY_NAME[params["ChecksumAlgorithm"]].proto_value
            )
        return reply

    @rpc
    async def UploadPart(
        self, request_iterator: AsyncIterator[PartMessage], context: Context
    ) -> pb.UploadPartResponse:
        record = _current_call.get()
        assert record.principal is not None
        with self._guard.stream(record.caller):
            self._metrics.inflight_streams.inc()
            idle = IdleTimer(self._settings.idle_timeout) if self._settings.idle_timeout else None
            try:
                return await self._upload_part(request_iterator, record, record.principal, idle)
            finally:
                self._metrics.inflight_streams.dec()
                if idle is not None:
                    idle.close()

    async def _upload_part(
        self,
        request_iterator: AsyncIterator[PartMessage],
        record: CallRecord,
        principal: Principal,
        idle: IdleTimer | None,
    ) -> pb.UploadPartResponse:
        header = await _read_header(request_iterator, idle)
        record.bucket, record.part_number = header.bucket, header.part_number
        size = header.content_length if header.HasField("content_length") else None
        self._guard.authorize(principal, "UploadPart", header.bucket, header.key, part_size=size)
        declared = self._check_part_header(header)
        if _wants_default_checksum(header, declared):
            header.checksum_algorithm = pb.ChecksumAlgorithm.ValueType(
                DIRECTORY_BUCKET_CHECKSUM.proto_value
            )
        plan = ChecksumPlan.for_header(header, declared)
        if not self._settings.verify_checksums:
            plan = plan.unverified()
        reader = MessageReader(request_iterator, plan, idle=idle)
        params = convert.to_params(header, "UploadPart")
        kind = bucket_type(header.bucket)
        try:
            if header.HasField("content_length") and header.content_length > 0:
                response = await self._stream_part(reader, plan, params, header.content_length)
            else:
                response = await self._buffered_part(reader, plan, params, header)
        finally:
            record.bytes = reader.received
            self._metrics.client_bytes.labels(kind).inc(reader.received)
        self._metrics.part_size.labels(kind).observe(reader.received)
        return _reply(response, pb.UploadPartResponse(), "UploadPart")

    def _check_part_header(self, header: pb.UploadPartHeader) -> dict[Algorithm, bytes]:
        self._check_object(header)
        validate.upload_id(header.upload_id)
        validate.part_number(header.part_number)
        if header.HasField("content_length"):
            validate.content_length(header.content_length, MAX_S3_PART_SIZE)
            if header.content_length > self._settings.max_part_size:
                raise ResourceExhausted(
                    Reason.PART_TOO_LARGE,
                    f"content_length {header.content_length} exceeds this gateway's largest part, "
                    f"{self._settings.max_part_size} bytes (GATEWAY_MAX_PART_SIZE): send smaller "
                    "parts",
                    limit=self._settings.max_part_size,
                    retry_delay=None,
                )
        if header.checksum_algorithm and header.checksum_algorithm not in checksums.BY_PROTO:
            raise InvalidRequest("checksum_algorithm", "is not a known algorithm")
        validate.sse_customer(header)
        return validate.declared_checksums(header)

    async def _stream_part(
        self, reader: MessageReader, plan: ChecksumPlan, params: dict[str, Any], length: int
    ) -> dict[str, Any]:
        watch = SendWatch(self._settings.s3_stall_timeout)
        body = PartBody(reader, plan, length, watch)
        await body.first_bytes()
        announced = checksums.BY_NAME.get(params.get("ChecksumAlgorithm", ""))
        trailer_ok = self._trailer_ok(params["Bucket"])
        if announced is not None and announced.s3_member not in params and not trailer_ok:
            # The value is known only at the end and cannot travel as an aws-chunked trailer
            # (plain HTTP, or a store without trailers): the gateway verifies it, S3 cannot.
            del params["ChecksumAlgorithm"]
        params.update(Body=body, ContentLength=length)
        try:
            response = await self._call("UploadPart", params, watch=watch)
        finally:
            self._metrics.s3_bytes.labels(bucket_type(params["Bucket"])).inc(body.released)
        if body.received != length:
            raise LengthMismatch(length, body.received, more=body.received > length)
        return response

    async def _buffered_part(
        self,
        reader: MessageReader,
        plan: ChecksumPlan,
        params: dict[str, Any],
        header: pb.UploadPartHeader,
    ) -> dict[str, Any]:
        declared = header.content_length if header.HasField("content_length") else None
        held = 0

        def hold(size: int) -> None:
            nonlocal held
            self._guard.budget.take(size)
            held += size

        try:
            data = await read_whole_part(
                reader, self._settings.unknown_length_limit, declared, hold=hold
            )
            return await self._send_buffered(data, plan, params)
        finally:
            self._guard.budget.give_back(held)

    async def _send_buffered(
        self, data: bytes, plan: ChecksumPlan, params: dict[str, Any]
    ) -> dict[str, Any]:
        digests = await verify_whole_part(data, plan)
        announced = plan.announced
        if announced is not None and announced.s3_member not in params:
            # Computed here, or (verification off) the caller's own trailer value, for S3 to check.
            value = digests.get(announced) or plan.expected.get(announced)
            if value is not None:
                params[announced.s3_member] = checksums.encode(value)
        params.update(Body=data, ContentLength=len(data))
        self._metrics.s3_bytes.labels(bucket_type(params["Bucket"])).inc(len(data))
        return await self._call("UploadPart", params)

    @rpc
    async def UploadPartCopy(
        self, request: pb.UploadPartCopyRequest, context: Context
    ) -> pb.UploadPartCopyResponse:
        principal = _current_call.get().principal
        assert principal is not None
        # Parsed once: the source the policy allowed is the structure botocore encodes for S3.
        source = self._guard.authorize_copy_source(principal, request.copy_source)
        self._check_object(request)
        validate.upload_id(request.upload_id)
        validate.part_number(request.part_number)
        validate.sse_customer(request)
        validate.sse_customer(request, prefix="copy_source_")
        params = convert.to_params(request, "UploadPartCopy")
        params["CopySource"] = source.botocore()
        response = await self._call("UploadPartCopy", params)
        return _reply(response, pb.UploadPartCopyResponse(), "UploadPartCopy")

    @rpc
    async def CompleteMultipartUpload(
        self, request: pb.CompleteMultipartUploadRequest, context: Context
    ) -> pb.CompleteMultipartUploadResponse:
        self._check_object(request)
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
        response = await self._call(
            "CompleteMultipartUpload", convert.to_params(request, "CompleteMultipartUpload")
        )
        return _reply(response, pb.CompleteMultipartUploadResponse(), "CompleteMultipartUpload")

    @rpc
    async def AbortMultipartUpload(
        self, request: pb.AbortMultipartUploadRequest, context: Context
    ) -> pb.AbortMultipartUploadResponse:
        self._check_object(request)
        validate.upload_id(request.upload_id)
        response = await self._call(
            "AbortMultipartUpload", convert.to_params(request, "AbortMultipartUpload")
        )
        return _reply(response, pb.AbortMultipartUploadResponse(), "AbortMultipartUpload")

    @rpc
    async def ListParts(
        self, request: pb.ListPartsRequest, context: Context
    ) -> pb.ListPartsResponse:
        self._check_object(request)
        validate.upload_id(request.upload_id)
        validate.page_size(request.max_parts, "max_parts")
        if not 0 <= request.part_number_marker <= validate.MAX_PART_NUMBER:
            raise InvalidRequest("part_number_marker", "must be a part number")
        validate.sse_customer(request)
        response = await self._call("ListParts", convert.to_params(request, "ListParts"))
        return _reply(response, pb.ListPartsResponse(), "ListParts")

    @rpc
    async def ListMultipartUploads(
        self, request: pb.ListMultipartUploadsRequest, context: Context
    ) -> pb.ListMultipartUploadsResponse:
        buckets.check_name(request.bucket)
        self._check_bucket(request.bucket)
        validate.page_size(request.max_uploads, "max_uploads")
        _check_common(request, "ListMultipartUploads")
        response = await self._call(
            "ListMultipartUploads", convert.to_params(request, "ListMultipartUploads")
        )
        return _reply(response, pb.ListMultipartUploadsResponse(), "ListMultipartUploads")


async def _read_header(
    messages: AsyncIterator[PartMessage], idle: IdleTimer | None
) -> pb.UploadPartHeader:
    first = await next_message(messages, idle)
    if first is None:
        raise InvalidRequest("header", "the stream is empty; the first message must be a header")
    if isinstance(first, Malformed):
        raise InvalidRequest("message", f"is not valid protobuf: {first.error}")
    if isinstance(first, Data) or first.WhichOneof("message") != "header":
        raise InvalidRequest("header", "the first message must be a header")
    return first.header


def _check_object(request: Any) -> None:
    """Checks shared by every request naming a bucket and a key."""
    buckets.check_name(request.bucket)
    validate.key(request.key)
    _check_common(
        request, type(request).DESCRIPTOR.name.removesuffix("Request").removesuffix("Header")
    )
    if buckets.is_directory_bucket(request.bucket):
        validate.directory_bucket_rules(request)


def _check_common(request: Any, operation: str) -> None:
    fields = request.DESCRIPTOR.fields_by_name
    validate.no_control_characters(request, *(f for f in _HEADER_FIELDS if f in fields))
    validate.vocabulary(request, operation)


def _wants_default_checksum(header: pb.UploadPartHeader, declared: dict[Algorithm, bytes]) -> bool:
    """A part for a directory bucket that names no checksum algorithm and carries no value."""
    if not buckets.is_directory_bucket(header.bucket) or header.checksum_algorithm:
        return False
    return not any(a in declared for a in checksums.CHECKSUM_ALGORITHMS)


def _check_checksum_choice(algorithm: int, checksum_type: int) -> None:
    if algorithm and algorithm not in checksums.BY_PROTO:
        raise InvalidRequest("checksum_algorithm", "is not a known algorithm")
    if checksum_type and checksum_type not in pb.ChecksumType.values():
        raise InvalidRequest("checksum_type", "is not a known checksum type")
    if checksum_type == pb.CHECKSUM_TYPE_FULL_OBJECT:
        chosen = checksums.BY_PROTO.get(algorithm)
        if chosen is None or chosen not in checksums.FULL_OBJECT_CAPABLE:
            raise InvalidRequest(
                "checksum_type", "FULL_OBJECT needs checksum_algorithm CRC32, CRC32C or CRC64NVME"
            )


def _reply(response: dict[str, Any], message: Response, operation: str) -> Response:
    convert.from_response(response, message, operation)  # type: ignore[arg-type]
    return message


def add_to_server(service: UploadService, server: grpc.aio.Server) -> None:
    """Register ``service`` with the gateway's own request decoders (:mod:`gateway.server.wire`) in
    place of the generated ones."""
    handlers: dict[str, grpc.RpcMethodHandler[Any, Any]] = {}
    for method in SERVICE.methods:
        behavior = getattr(service, method.name)
        serialize = getattr(pb, method.output_type.name).SerializeToString
        if method.client_streaming:
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
