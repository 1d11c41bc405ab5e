"""Resumable writes: StartResumableWrite, QueryWriteStatus, CancelResumableWrite, and the state a
WriteObject stream that begins with ``resume`` continues from.

No state stays in the gateway. A write's multipart upload and parts are in S3; its principal, spec,
part size and the CRC of the bytes the gateway vouches for are in the caller's token
(:mod:`gateway.security.write_tokens`). Any replica that holds the token keys continues any write:

- the persisted size is the contiguous prefix of parts S3 lists (ListParts, every page), each of
  the write's part size (the last may be shorter when it ends the announced object), as far as
  the gateway can vouch for their CRC: from the token (the parts it covers), then from the part
  checksums S3 lists, where the store reports them. A part beyond that is sent again;
- the whole object's CRC at ``finish`` is the token's CRC of that prefix combined with the CRCs
  of the parts this stream uploads (:func:`gateway.checksums.combine`): the bytes need not pass
  through one replica;
- a write whose upload is gone was either finished or cancelled (or expired): the object at its
  key, if it was last modified after the write started (and, when S3 reports the object's CRC and
  the token covers every byte, carries the same CRC), is taken as the write's, so that a repeated
  ``finish`` or a QueryWriteStatus after it answers the object instead of an error;
- each write has a marker (:func:`gateway.security.write_tokens.marker_key`): an empty multipart
  upload in the same bucket, under ``.s3-upload-gateway/resumable-writes/``, whose key names the
  write's expiry and upload and is signed with the token keys. It is created with the write and
  aborted when the write is finished or cancelled; ``reap-uploads`` finds the markers of expired
  writes and aborts those writes' uploads, and no others.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import time
from dataclasses import dataclass, replace
from typing import Any

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from gateway import checksums, convert
from gateway.checksums import Algorithm
from gateway.config import Settings
from gateway.errors import GatewayError, InvalidRequest, Reason, S3Error
from gateway.security.auth import Principal
from gateway.security.guard import Guard
from gateway.security.write_tokens import (
    MAX_TOKEN_LENGTH,
    Signer,
    TokenRejected,
    WriteToken,
    principal_digest,
)
from gateway.server import validate
from gateway.server.metrics import Metrics
from gateway.server.s3 import S3
from gateway.server.write_object import MAX_PARTS, WritePlan, abort_upload, admit_spec
from gateway.v1 import upload_service_pb2 as pb

log = logging.getLogger(__name__)

#: Parts per ListParts page.
_PAGE = 1000
#: What S3 answers for an upload that is no more (Ceph RGW's ListParts: NoSuchKey).
_GONE = frozenset({Reason.NO_SUCH_UPLOAD, Reason.NO_SUCH_KEY})


@dataclass(frozen=True)
class PriorPart:
    """A part an earlier stream of the write committed."""

    number: int
    size: int
    etag: str
    #: Its checksum of the write's algorithm, when S3 listed it (else the token vouches).
    checksum: bytes


@dataclass(frozen=True)
class Resumption:
    """Where a resumable write stands: what a resumed stream continues from."""

    token: WriteToken
    spec: pb.WriteObjectSpec
    plan: WritePlan
    prior: tuple[PriorPart, ...]
    #: The bytes of ``prior``.
    persisted: int
    #: The CRC of those bytes.
    crc: bytes

    def advanced_token(self) -> WriteToken:
        return self.token.advanced(len(self.prior), self.persisted, self.crc)


class Resumable:
    """Opens, inspects and cancels resumable writes for one gateway process."""

    def __init__(
        self, s3: S3, settings: Settings, guard: Guard, signer: Signer | None, metrics: Metrics
    ) -> None:
        self._s3 = s3
        self._settings = settings
        self._guard = guard
        self.signer = signer
        self.metrics = metrics

    # --- tokens

    def issue(self, token: WriteToken) -> str:
        assert self.signer is not None
        return self.signer.sign(token)

    def open(
        self, text: str, principal: Principal, sse_customer_key: str = ""
    ) -> tuple[WriteToken, pb.WriteObjectSpec]:
        """The token ``text`` and its spec (the SSE-C key put back), if it verifies, has not
        expired and is ``principal``'s. No S3 call before this passed."""
        if self.signer is None:
            raise _disabled()
        try:
            token = self.signer.verify(text)
        except TokenRejected as rejected:
            raise GatewayError(
                grpc.StatusCode.INVALID_ARGUMENT,
                Reason.WRITE_TOKEN_INVALID,
                f"the write token is not valid ({rejected.why}): it was changed, or signed with "
                "a key this gateway does not hold; start a new write",
            ) from None
        if token.principal != principal_digest(principal.name):
            raise GatewayError(
                grpc.StatusCode.PERMISSION_DENIED,
                Reason.WRITE_TOKEN_PRINCIPAL,
                "the write token was issued to another caller",
            )
        if time.time() >= token.expires:
            self.metrics.resumable_writes.labels("expired").inc()
            expired = datetime.datetime.fromtimestamp(token.expires, datetime.UTC)
            raise GatewayError(
                grpc.StatusCode.FAILED_PRECONDITION,
                Reason.WRITE_TOKEN_EXPIRED,
                f"the write expired at {expired.isoformat()}; start a new write",
                metadata={"expiredAt": expired.isoformat()},
            )
        spec = pb.WriteObjectSpec.FromString(token.spec)
        if sse_customer_key:
            spec.object.sse_customer_key = sse_customer_key
        if spec.object.sse_customer_algorithm:
            if not spec.object.sse_customer_key:
                raise InvalidRequest("sse_customer_key", "this write is SSE-C: send its key")
            validate.sse_customer(spec.object)
        return token, spec

    # --- the RPCs

    async def start(
        self, request: pb.StartResumableWriteRequest, principal: Principal, caller: str
    ) -> pb.StartResumableWriteResponse:
        if self.signer is None:
            raise _disabled()
        if not request.HasField("spec") or not request.spec.HasField("object"):
            raise InvalidRequest("spec.object", "is required")
        spec = request.spec
        plan = admit_spec(
            self._guard, self._s3, self._settings, principal, spec, "StartResumableWrite"
        )
        if plan.algorithm not in checksums.FULL_OBJECT_CAPABLE:
            raise InvalidRequest(
                "spec.object.checksum_algorithm",
                "a resumable write needs a CRC (CRC64NVME, CRC32 or CRC32C): the gateway "
                "combines the CRCs of parts sent through different replicas",
            )
        kept = pb.WriteObjectSpec()
        kept.CopyFrom(spec)
        kept.object.sse_customer_key = ""
        kept.object.checksum_algorithm = pb.ChecksumAlgorithm.ValueType(plan.algorithm.proto_value)
        kept.object.checksum_type = (
            pb.CHECKSUM_TYPE_FULL_OBJECT if plan.full_object else pb.CHECKSUM_TYPE_COMPOSITE
        )
        now = int(time.time())
        token = WriteToken(
            principal=principal_digest(principal.name),
            started=now,
            expires=now + int(self._settings.write_token_ttl),
            upload_id="",
            part_size=plan.part_size,
            spec=kept.SerializeToString(deterministic=True),
            crc=plan.algorithm.new().digest(),
        )
        # Its longest form (an upload id S3 may make up to 1 KiB long, a CRC for every part)
        # must verify, or the write could never be resumed.
        longest = replace(
            token,
            upload_id="x" * 1024,
            parts=MAX_PARTS,
            persisted=2**62,
            marker_key="x" * 1024,
            marker_upload_id="x" * 1024,
        )
        if len(self.issue(longest)) > MAX_TOKEN_LENGTH:
            raise InvalidRequest("spec", "is too large to be carried by a write token")
        upload_id = await create_upload(self._s3, spec, plan, caller)
        token = replace(token, upload_id=upload_id)
        try:
            token = await self._mark(token, spec, caller)
        except BaseException:
            params = {**_object_params(spec, "AbortMultipartUpload"), "UploadId": upload_id}
            await asyncio.shield(_abort_quietly(self._s3, params, caller, "upload"))
            raise
        expires = Timestamp(seconds=token.expires)
        self.metrics.resumable_writes.labels("started").inc()
        return pb.StartResumableWriteResponse(
            write_token=self.issue(token), part_size=plan.part_size, expires=expires
        )

    async def query(
        self, request: pb.QueryWriteStatusRequest, principal: Principal, caller: str
    ) -> pb.QueryWriteStatusResponse:
        token, spec = self.open(request.write_token, principal, request.sse_customer_key)
        self._guard.authorize(principal, "QueryWriteStatus", spec.object.bucket, spec.object.key)
        state = await self.state(token, spec, caller)
        if isinstance(state, pb.WrittenObject):
            return pb.QueryWriteStatusResponse(object=state)
        kept = pb.WriteObjectSpec()
        kept.CopyFrom(spec)
        kept.object.sse_customer_key = ""
        return pb.QueryWriteStatusResponse(
            persisted_size=state.persisted,
            write_token=self.issue(state.advanced_token()),
            spec=kept,
        )

    async def cancel(
        self, request: pb.CancelResumableWriteRequest, principal: Principal, caller: str
    ) -> pb.CancelResumableWriteResponse:
        token, spec = self.open(request.write_token, principal)
        self._guard.authorize(
            principal, "CancelResumableWrite", spec.object.bucket, spec.object.key
        )
        params = _object_params(spec, "AbortMultipartUpload")
        params["UploadId"] = token.upload_id
        try:
            await self._s3.call("AbortMultipartUpload", params, caller=caller)
        except S3Error as error:
            if error.reason not in _GONE:
                raise
        await self.release(token, spec, caller)
        self.metrics.resumable_writes.labels("cancelled").inc()
        return pb.CancelResumableWriteResponse()

    # --- markers

    async def _mark(self, token: WriteToken, spec: pb.WriteObjectSpec, caller: str) -> WriteToken:
        """``token`` with the marker of its write, created (:func:`marker_key`): an empty
        multipart upload beside the write's, which lets reap-uploads abort the write once it
        has expired, and only then."""
        assert self.signer is not None
        marker = self.signer.mark(spec.object.bucket, token.upload_id, token.expires)
        params = {**_bucket_params(spec, "CreateMultipartUpload"), "Key": marker}
        answer = await self._s3.call("CreateMultipartUpload", params, caller=caller)
        return replace(token, marker_key=marker, marker_upload_id=answer["UploadId"])

    async def release(self, token: WriteToken, spec: pb.WriteObjectSpec, caller: str) -> None:
        """Abort the marker of a write that ended (completed or cancelled). A marker that
        cannot be aborted now is logged; reap-uploads aborts it after the write's expiry."""
        if not token.marker_upload_id:
            return
        params = {
            **_bucket_params(spec, "AbortMultipartUpload"),
            "Key": token.marker_key,
            "UploadId": token.marker_upload_id,
        }
        await asyncio.shield(_abort_quietly(self._s3, params, caller, "marker"))

    # --- state

    async def state(
        self, token: WriteToken, spec: pb.WriteObjectSpec, caller: str
    ) -> Resumption | pb.WrittenObject:
        """Where the write stands: its persisted prefix, or the object it wrote."""
        plan = replace(WritePlan.of(spec, self._settings), part_size=token.part_size)
        try:
            listed = await self._list_parts(token, spec, caller)
        except S3Error as error:
            if error.reason not in _GONE:
                raise
            written = await self._written(token, spec, plan, caller, error)
            # The stream that finished it may have ended before it aborted the marker.
            await self.release(token, spec, caller)
            return written
        prior, persisted, crc = _vouched(listed, token, plan)
        return Resumption(token, spec, plan, prior, persisted, crc)

    async def _list_parts(
        self, token: WriteToken, spec: pb.WriteObjectSpec, caller: str
    ) -> list[dict[str, Any]]:
        params = _object_params(spec, "ListParts")
        params.update(UploadId=token.upload_id, MaxParts=_PAGE)
        parts: list[dict[str, Any]] = []
        marker = 0
        while True:
            answer = await self._s3.call(
                "ListParts", {**params, "PartNumberMarker": marker}, caller=caller
            )
            parts += answer.get("Parts", [])
            following = int(answer.get("NextPartNumberMarker") or 0)
            if not answer.get("IsTruncated") or following <= marker:
                return parts
            marker = following

    async def _written(
        self,
        token: WriteToken,
        spec: pb.WriteObjectSpec,
        plan: WritePlan,
        caller: str,
        gone: S3Error,
    ) -> pb.WrittenObject:
        """The object the write wrote, if its key holds it; else the upload's NOT_FOUND."""
        params = _object_params(spec, "HeadObject")
        params["ChecksumMode"] = "ENABLED"
        try:
            head = await self._s3.call("HeadObject", params, caller=caller)
        except S3Error as error:
            if error.code == grpc.StatusCode.NOT_FOUND:
                raise gone from None
            raise
        modified = head.get("LastModified")
        if modified is not None and modified.timestamp() < token.started - 1:
            raise gone
        reported = head.get(plan.algorithm.s3_member, "")
        size = int(head.get("ContentLength", 0))
        covered = token.persisted == size and head.get("ChecksumType") == "FULL_OBJECT"
        if reported and covered and checksums.encode(token.crc) != reported:
            raise gone
        written = pb.WrittenObject()
        convert.from_response(head, written, "HeadObject")
        written.bucket, written.key, written.size = spec.object.bucket, spec.object.key, size
        etag = head.get("ETag", "")
        count = etag.strip('"').rpartition("-")[2]
        written.parts = int(count) if "-" in etag and count.isdigit() else 0
        if token.persisted == size:
            written.computed_checksums[plan.algorithm.name] = checksums.encode(token.crc)
        return written


def _vouched(
    listed: list[dict[str, Any]], token: WriteToken, plan: WritePlan
) -> tuple[tuple[PriorPart, ...], int, bytes]:
    """The persisted prefix of ``listed``: parts 1, 2, … of the part size (the last one may end
    the announced object), as far as the token's CRC and the checksums S3 listed vouch for them;
    their bytes and CRC."""
    algorithm = plan.algorithm
    by_number = {int(p["PartNumber"]): p for p in listed}
    contiguous: list[PriorPart] = []
    offset = 0
    while (entry := by_number.get(len(contiguous) + 1)) is not None:
        size = int(entry.get("Size", -1))
        ends = plan.size is not None and offset + size == plan.size
        if size != token.part_size and not (ends and 0 < size < token.part_size):
            break
        checksum = _decode(algorithm, entry.get(algorithm.s3_member) or "")
        contiguous.append(PriorPart(len(contiguous) + 1, size, entry.get("ETag", ""), checksum))
        offset += size
        if ends:
            break
    prior: list[PriorPart] = []
    persisted = 0
    crc = algorithm.new().digest()
    covered = token.parts
    if 0 < covered <= len(contiguous) and sum(p.size for p in contiguous[:covered]) == (
        token.persisted
    ):
        prior, persisted, crc = contiguous[:covered], token.persisted, token.crc
    for part in contiguous[len(prior) :]:
        if not part.checksum:
            break
        crc = checksums.combine(algorithm, crc, part.checksum, part.size)
        prior.append(part)
        persisted += part.size
    return tuple(prior), persisted, crc


def _decode(algorithm: Algorithm, value: str) -> bytes:
    """A part checksum S3 listed (never a composite ``-N`` one); empty when there is none."""
    if not value or "-" in value:
        return b""
    try:
        return checksums.decode(algorithm, value)
    except ValueError:
        return b""


async def create_upload(s3: S3, spec: pb.WriteObjectSpec, plan: WritePlan, caller: str) -> str:
    """CreateMultipartUpload for the object ``spec`` describes, with the plan's checksum."""
    params = convert.to_params(spec.object, "CreateMultipartUpload")
    params["ChecksumAlgorithm"] = plan.algorithm.name
    params["ChecksumType"] = "FULL_OBJECT" if plan.full_object else "COMPOSITE"
    answer = await s3.call("CreateMultipartUpload", params, caller=caller)
    upload_id: str = answer["UploadId"]
    return upload_id


async def _abort_quietly(s3: S3, params: dict[str, Any], caller: str, what: str) -> None:
    """:func:`abort_upload`, a failure logged, not raised (an upload that is gone already is no
    failure)."""
    error = await abort_upload(s3, params, caller)
    if error is None or (isinstance(error, S3Error) and error.reason in _GONE):
        return
    log.warning("could not abort a resumable write's %s: %s", what, error)


def _bucket_params(spec: pb.WriteObjectSpec, operation: str) -> dict[str, Any]:
    """The spec's parameters of ``operation`` that are not the object's: the bucket, its
    expected owner and the request payer (for a marker, which is in the same bucket)."""
    params = convert.to_params(spec.object, operation)
    kept = ("Bucket", "ExpectedBucketOwner", "RequestPayer")
    return {k: v for k, v in params.items() if k in kept}


def _object_params(spec: pb.WriteObjectSpec, operation: str) -> dict[str, Any]:
    """The spec's parameters ``operation`` takes (bucket, key, SSE-C, payer, owner)."""
    params = convert.to_params(spec.object, operation)
    return {k: v for k, v in params.items() if k != "ChecksumAlgorithm"}


def _disabled() -> GatewayError:
    return GatewayError(
        grpc.StatusCode.UNIMPLEMENTED,
        Reason.RESUMABLE_WRITES_DISABLED,
        "resumable writes are off: the gateway has no write token keys "
        "(GATEWAY_WRITE_TOKEN_KEYS_FILE)",
    )
