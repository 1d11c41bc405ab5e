"""UploadPart: the pipeline from the caller's stream to S3, and every checksum decision on the way.

:meth:`PartUpload.__call__` serves one stream:

1. admission: a stream slot and its buffer reservation (:mod:`gateway.server.admission`), an
   idle timer between the caller's messages (:mod:`gateway.server.timers`);
2. the header (the first message, and only the first), the policy check with the part's size,
   the header's validation (:mod:`gateway.server.validate`);
3. the checksum decisions:

   - **the default**: a directory bucket gets CRC32C when the caller names no algorithm and sends
     no value (:func:`default_checksum`; CreateMultipartUpload makes the same choice);
   - **what the gateway verifies** (:class:`gateway.server.relay.ChecksumPlan`): every value the
     header declares, plus the announced algorithm's value when the trailer brings it; nothing
     with ``GATEWAY_VERIFY_CHECKSUMS=false``;
   - **what S3 is sent**: values known up front as ``x-amz-checksum-*`` / ``Content-MD5``
     headers; a value known only at the end as an aws-chunked trailer, computed by botocore, where
     trailers can travel (https and ``GATEWAY_S3_TRAILING_CHECKSUMS``), else not at all (the
     gateway alone checks it); a buffered part sends the value the gateway computed;

4. the relay: a part with a ``content_length`` streams (:class:`gateway.server.relay.PartBody`
   takes an S3 connection only once the first bytes arrived, and holds back the bytes that
   complete the part until every checksum matched); a part without one, or of 0 bytes, is
   buffered within ``GATEWAY_UNKNOWN_LENGTH_LIMIT`` and the budget, verified, then sent whole.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from gateway import buckets, checksums, convert
from gateway.checksums import Algorithm
from gateway.config import MAX_S3_PART_SIZE, Settings
from gateway.errors import InvalidRequest, LengthMismatch, Reason, ResourceExhausted
from gateway.security.guard import Guard
from gateway.server import validate
from gateway.server.admission import Admission
from gateway.server.calls import CallRecord
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
from gateway.server.wire import Data, Malformed, PartMessage
from gateway.v1 import upload_service_pb2 as pb

#: The checksum directory buckets get when the caller names none.
DIRECTORY_BUCKET_CHECKSUM = checksums.CRC32C


def default_checksum(bucket: str) -> Algorithm | None:
    """The algorithm a part or an upload in ``bucket`` gets when the caller names none."""
    return DIRECTORY_BUCKET_CHECKSUM if buckets.is_directory_bucket(bucket) else None


class PartUpload:
    """Serves UploadPart streams for one gateway process."""

    def __init__(
        self, s3: S3, settings: Settings, metrics: Metrics, guard: Guard, admission: Admission
    ) -> None:
        self._s3 = s3
        self._settings = settings
        self._metrics = metrics
        self._guard = guard
        self._admission = admission

    async def __call__(
        self, messages: AsyncIterator[PartMessage], record: CallRecord
    ) -> pb.UploadPartResponse:
        settings = self._settings
        with self._admission.stream(record.caller):
            self._metrics.inflight_streams.inc()
            idle = IdleTimer(settings.idle_timeout) if settings.idle_timeout else None
            try:
                return await self._upload(messages, record, idle)
            finally:
                self._metrics.inflight_streams.dec()
                if idle is not None:
                    idle.close()

    async def _upload(
        self, messages: AsyncIterator[PartMessage], record: CallRecord, idle: IdleTimer | None
    ) -> pb.UploadPartResponse:
        header = await _read_header(messages, idle)
        record.bucket, record.part_number = header.bucket, header.part_number
        size = header.content_length if header.HasField("content_length") else None
        assert record.principal is not None
        self._guard.authorize(
            record.principal, "UploadPart", header.bucket, header.key, part_size=size
        )
        declared = self._check_header(header)
        plan = self._plan(header, declared)
        reader = MessageReader(messages, plan, idle=idle)
        params = convert.to_params(header, "UploadPart")
        kind = bucket_type(header.bucket)
        try:
            if size:
                response = await self._stream(reader, plan, params, size, record.caller)
            else:
                response = await self._buffered(reader, plan, params, size, record.caller)
        finally:
            record.bytes = reader.received
            self._metrics.client_bytes.labels(kind).inc(reader.received)
        self._metrics.part_size.labels(kind).observe(reader.received)
        reply = pb.UploadPartResponse()
        convert.from_response(response, reply, "UploadPart")
        return reply

    def _check_header(self, header: pb.UploadPartHeader) -> dict[Algorithm, bytes]:
        """Validate the header; the checksum values it declares."""
        validate.object_request(header, self._s3.region)
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

    def _plan(self, header: pb.UploadPartHeader, declared: dict[Algorithm, bytes]) -> ChecksumPlan:
        """What to verify; sets the default algorithm in ``header`` where one applies."""
        default = default_checksum(header.bucket)
        named = header.checksum_algorithm or any(
            a in declared for a in checksums.CHECKSUM_ALGORITHMS
        )
        if default is not None and not named:
            header.checksum_algorithm = pb.ChecksumAlgorithm.ValueType(default.proto_value)
        plan = ChecksumPlan.for_header(header, declared)
        return plan if self._settings.verify_checksums else plan.unverified()

    def _trailer_travels(self, bucket: str) -> bool:
        """Whether a checksum known only at the end can reach S3 as an aws-chunked trailer."""
        return self._s3.uses_tls(bucket) and self._settings.s3_trailing_checksums

    async def _stream(
        self,
        reader: MessageReader,
        plan: ChecksumPlan,
        params: dict[str, Any],
        length: int,
        caller: str,
    ) -> dict[str, Any]:
        watch = SendWatch(self._settings.s3_stall_timeout)
        body = PartBody(reader, plan, length, watch)
        await body.first_bytes()
        announced = plan.announced
        at_the_end = announced is not None and announced.s3_member not in params
        if at_the_end and not self._trailer_travels(params["Bucket"]):
            # Plain HTTP, or a store without trailers: the gateway verifies it, S3 cannot.
            del params["ChecksumAlgorithm"]
        params.update(Body=body, ContentLength=length)
        try:
            response = await self._s3.call("UploadPart", params, caller=caller, watch=watch)
        finally:
            self._metrics.s3_bytes.labels(bucket_type(params["Bucket"])).inc(body.released)
        if body.received != length:
            raise LengthMismatch(length, body.received, more=body.received > length)
        return response

    async def _buffered(
        self,
        reader: MessageReader,
        plan: ChecksumPlan,
        params: dict[str, Any],
        declared: int | None,
        caller: str,
    ) -> dict[str, Any]:
        budget = self._admission.budget
        held = 0

        def hold(size: int) -> None:
            nonlocal held
            budget.take(size)
            held += size

        try:
            limit = self._settings.unknown_length_limit
            data = await read_whole_part(reader, limit, declared, hold=hold)
            digests = await verify_whole_part(data, plan)
            announced = plan.announced
            if announced is not None and announced.s3_member not in params:
                # Computed here, or (verification off) the caller's trailer value, for S3 to check.
                value = digests.get(announced) or plan.expected.get(announced)
                if value is not None:
                    params[announced.s3_member] = checksums.encode(value)
            params.update(Body=data, ContentLength=len(data))
            self._metrics.s3_bytes.labels(bucket_type(params["Bucket"])).inc(len(data))
            return await self._s3.call("UploadPart", params, caller=caller)
        finally:
            budget.give_back(held)


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
