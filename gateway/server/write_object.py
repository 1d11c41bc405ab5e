"""WriteObject: one stream per object, the gateway owning the multipart upload.

:meth:`ObjectWrite.__call__` serves one stream:

1. admission: a stream slot (:mod:`gateway.server.admission`), and from the buffer budget its
   flow-control window and one message, and two parts: the one being filled and one in flight.
   Without them the stream is refused (RESOURCE_EXHAUSTED, BUFFER_LIMIT);
2. the ``spec`` (the first message), the policy check (operation ``WriteObject``) and its
   validation, the plan (:class:`WritePlan`): part size, checksum algorithm and type;
3. the bytes, cut into parts in memory. Each part's checksum is computed while it fills; a full
   part is uploaded (UploadPart, the checksum sent for S3 to check too) while the next fills, at
   most ``GATEWAY_WRITE_PARTS_IN_FLIGHT`` at once. Each part in flight beyond the first takes
   its bytes from the budget as it starts and gives them back when it is committed; when the
   limit is reached or the budget is spent, the gateway stops reading the caller until one of
   its own parts is done, and gRPC flow control holds the caller back: a stream waits only for
   its own parts, never for another stream's memory, and holds at most
   ``part size x (GATEWAY_WRITE_PARTS_IN_FLIGHT + 1)``. A
   part that fails with a retryable error is sent again (it is in memory), up to
   :data:`PART_ATTEMPTS` times. Each committed part is acknowledged (``progress``);
4. ``finish``: the whole object's checksum, computed from the parts' (CRCs combine) or over the
   bytes (the others), must equal the value the caller gives, if it gives one; then S3 completes
   the object (an object of one part is one PutObject instead). A FULL_OBJECT checksum goes to S3
   too.

Anything else (a failed part, a mismatch, a cancel, a shutdown, a stream that ends without
``finish``) aborts the multipart upload, so no part is left behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import grpc

from gateway import buckets, checksums, convert
from gateway.checksums import Algorithm
from gateway.config import Settings
from gateway.errors import (
    ChecksumMismatch,
    GatewayError,
    InvalidRequest,
    LengthMismatch,
    Reason,
)
from gateway.security.guard import Guard
from gateway.server import validate
from gateway.server.admission import Admission, Budget
from gateway.server.calls import CallRecord
from gateway.server.metrics import Metrics, bucket_type
from gateway.server.relay import HeldBody
from gateway.server.s3 import S3
from gateway.server.timers import IdleTimer, SendWatch
from gateway.server.wire import Data, Malformed, WriteMessage, checked_content
from gateway.units import MiB
from gateway.v1 import upload_service_pb2 as pb

if TYPE_CHECKING:
    from gateway.security.auth import Principal
    from gateway.security.write_tokens import WriteToken
    from gateway.server.resumable import Resumable, Resumption

log = logging.getLogger(__name__)

#: S3's limits on the parts of one object.
MAX_PARTS = 10_000
MIN_PART_SIZE = 5 * MiB
MAX_PART_SIZE = 5 * 1024 * MiB
#: How often a part is sent before its failure is the stream's.
PART_ATTEMPTS = 3
#: Seconds before the second and third attempt of a part.
PART_RETRY_DELAYS = (0.2, 1.0)
#: Seconds an abort of an abandoned upload may take.
ABORT_TIMEOUT = 60.0


@dataclass(frozen=True)
class WritePlan:
    """How one object is written."""

    part_size: int
    parts_in_flight: int
    algorithm: Algorithm
    #: FULL_OBJECT (the CRCs, one checksum of all the bytes) or COMPOSITE (the others, a
    #: checksum of the parts' checksums).
    full_object: bool
    #: The size the caller announced, if it did.
    size: int | None
    #: Seconds S3 may take nothing of a part's body.
    stall_timeout: float

    @classmethod
    def of(cls, spec: pb.WriteObjectSpec, settings: Settings) -> WritePlan:
        request = spec.object
        size = spec.object_size if spec.HasField("object_size") else None
        if size is not None and size < 0:
            raise InvalidRequest("spec.object_size", "must not be negative")
        if size is not None and size > MAX_PARTS * MAX_PART_SIZE:
            raise InvalidRequest("spec.object_size", "is larger than S3's largest object")
        directory = buckets.is_directory_bucket(request.bucket)
        named = checksums.BY_PROTO.get(request.checksum_algorithm)
        algorithm = named or checksums.default_object_algorithm(directory)
        # S3's rules: CRC64NVME is FULL_OBJECT only, the CRCs may be either (COMPOSITE unless
        # asked), the others are COMPOSITE only.
        if request.checksum_type == pb.CHECKSUM_TYPE_COMPOSITE:
            if algorithm is checksums.CRC64NVME:
                raise InvalidRequest(
                    "spec.object.checksum_type", "CRC64NVME checksums are FULL_OBJECT only"
                )
            full_object = False
        elif request.checksum_type and request.checksum_type not in pb.ChecksumType.values():
            raise InvalidRequest("spec.object.checksum_type", "is not a known checksum type")
        elif request.checksum_type == pb.CHECKSUM_TYPE_FULL_OBJECT:
            if algorithm not in checksums.FULL_OBJECT_CAPABLE:
                raise InvalidRequest(
                    "spec.object.checksum_type",
                    "FULL_OBJECT needs checksum_algorithm CRC32, CRC32C or CRC64NVME",
                )
            full_object = True
        else:
            full_object = algorithm is checksums.CRC64NVME
        part_size = settings.write_part_size
        if size is not None:
            part_size = max(part_size, math.ceil(size / MAX_PARTS / MiB) * MiB)
        return cls(
            part_size,
            settings.write_parts_in_flight,
            algorithm,
            full_object,
            size,
            settings.s3_stall_timeout,
        )

    @property
    def reserved(self) -> int:
        """The bytes a stream holds from its start: the part being filled and one in flight."""
        return self.part_size * 2


class _Filling:
    """The part being filled: a buffer of its final size, and its checksum as it fills."""

    def __init__(self, size: int, algorithm: Algorithm) -> None:
        self._buffer = bytearray(size)
        self.filled = 0
        self.hasher = algorithm.new()

    def add(self, content: memoryview, whole: checksums.Hasher | None) -> memoryview:
        """Copy what fits of ``content`` (feeding the part's hash, and ``whole``'s); the rest."""
        take = content[: len(self._buffer) - self.filled]
        self._buffer[self.filled : self.filled + len(take)] = take
        self.filled += len(take)
        self.hasher.update(take)
        if whole is not None:
            whole.update(take)
        return content[len(take) :]

    @property
    def data(self) -> memoryview:
        return memoryview(self._buffer)[: self.filled]


#: The field that announces the object's size.
_SIZE = "spec.object_size"

#: The data of a committed part.
_EMPTY = memoryview(b"")


@dataclass
class _Part:
    number: int
    data: memoryview
    checksum: bytes
    length: int = field(init=False)
    #: The task uploading it.
    task: asyncio.Task[dict[str, Any]] | None = None
    etag: str = ""
    #: Committed by an earlier stream of a resumable write (``checksum`` empty if S3 did not
    #: list it: the resumption's CRC covers it).
    prior: bool = False

    def __post_init__(self) -> None:
        self.length = len(self.data)

    @property
    def committed(self) -> bool:
        return self.prior or (self.task is not None and self.task.done())


@dataclass
class _Object:
    """What the stream has received so far."""

    received: int = 0
    parts: list[_Part] = field(default_factory=list)
    #: The checksum of the bytes so far, for the algorithms that do not combine.
    whole: checksums.Hasher | None = None


class ObjectWrite:
    """Serves WriteObject streams for one gateway process."""

    def __init__(
        self,
        s3: S3,
        settings: Settings,
        metrics: Metrics,
        guard: Guard,
        admission: Admission,
        resumable: Resumable,
    ) -> None:
        self._s3 = s3
        self._settings = settings
        self._metrics = metrics
        self._guard = guard
        self._admission = admission
        self._resumable = resumable
        #: The tasks of the calls being served.
        self._calls: set[asyncio.Task[Any]] = set()
        #: Abandoned writes being cleaned up (parts stopped, the upload aborted).
        self._cleanups: set[asyncio.Future[None]] = set()

    async def __call__(
        self, messages: AsyncIterator[WriteMessage], record: CallRecord
    ) -> AsyncGenerator[pb.WriteObjectResponse, None]:
        call = asyncio.current_task()
        assert call is not None
        self._calls.add(call)
        try:
            async with contextlib.aclosing(self._serve(messages, record)) as responses:
                async for response in responses:
                    yield response
        finally:
            self._calls.discard(call)

    async def _serve(
        self, messages: AsyncIterator[WriteMessage], record: CallRecord
    ) -> AsyncGenerator[pb.WriteObjectResponse, None]:
        settings = self._settings
        with self._admission.stream(record.caller):
            self._metrics.inflight_streams.inc()
            idle = IdleTimer(settings.idle_timeout) if settings.idle_timeout else None
            try:
                first = await _read_first(messages, idle)
                resumption = None
                if isinstance(first, pb.ResumeWrite):
                    opened = await self._resume(first, record)
                    if isinstance(opened, pb.WrittenObject):
                        yield pb.WriteObjectResponse(object=opened)  # finished before
                        return
                    resumption = opened
                    spec, plan = opened.spec, opened.plan
                else:
                    spec = first
                    record.bucket = spec.object.bucket
                    assert record.principal is not None
                    plan = admit_spec(self._guard, self._s3, self._settings, record.principal, spec)
                budget = self._admission.budget
                with budget.reserve(plan.reserved):
                    writer = _Writer(
                        self._s3,
                        record.caller,
                        spec,
                        plan,
                        self._metrics,
                        budget,
                        self._cleanups,
                        resumption,
                        self._resumable if resumption is not None else None,
                    )
                    async with contextlib.aclosing(writer.write(messages, idle)) as responses:
                        async for response in responses:
                            yield response
                    record.bytes = writer.received
            finally:
                self._metrics.inflight_streams.dec()
                if idle is not None:
                    idle.close()

    async def settle(self) -> None:
        """After the server has cancelled its calls: wait until every WriteObject call and the
        clean-up of every abandoned write have ended, so that the S3 client is closed only after
        their aborts. Bounded by :data:`ABORT_TIMEOUT` (each abort's own bound)."""
        try:
            async with asyncio.timeout(ABORT_TIMEOUT + 5):
                while waits := {*self._calls, *self._cleanups}:
                    await asyncio.wait(waits)
        except TimeoutError:
            log.error("WriteObject calls did not end in time; their uploads may be left behind")

    async def _resume(
        self, resume: pb.ResumeWrite, record: CallRecord
    ) -> Resumption | pb.WrittenObject:
        """The state the stream continues (or the object, if the write was finished), once the
        token, the caller and the offset are right."""
        assert record.principal is not None
        token, spec = self._resumable.open(
            resume.write_token, record.principal, resume.sse_customer_key
        )
        record.bucket = spec.object.bucket
        self._guard.authorize(record.principal, "WriteObject", spec.object.bucket, spec.object.key)
        state = await self._resumable.state(token, spec, record.caller)
        if isinstance(state, pb.WrittenObject):
            return state
        if resume.write_offset != state.persisted:
            raise GatewayError(
                grpc.StatusCode.FAILED_PRECONDITION,
                Reason.WRITE_OFFSET_MISMATCH,
                f"write_offset is {resume.write_offset} but {state.persisted} bytes are "
                "persisted: resume from there, with the token of this error's metadata",
                metadata={
                    "persistedSize": str(state.persisted),
                    "writeToken": self._resumable.issue(state.advanced_token()),
                },
            )
        if state.persisted:
            self._metrics.resumable_writes.labels("resumed").inc()
        return state


def admit_spec(
    guard: Guard,
    s3: S3,
    settings: Settings,
    principal: Principal,
    spec: pb.WriteObjectSpec,
    operation: str = "WriteObject",
) -> WritePlan:
    """Authorize ``operation`` on the spec's object, validate the spec, and plan the write."""
    request = spec.object
    guard.authorize(principal, operation, request.bucket, request.key)
    validate.object_request(request, s3.region)
    validate.sse_customer(request)
    validate.checksum_choice(request.checksum_algorithm, 0)  # the type: WritePlan.of
    validate.user_metadata(request.metadata)
    if spec.HasField("if_none_match") and spec.if_none_match != "*":
        raise InvalidRequest("spec.if_none_match", 'must be "*" (S3 takes no other value)')
    return WritePlan.of(spec, settings)


class _Writer:
    """One object on its way to S3."""

    def __init__(
        self,
        s3: S3,
        caller: str,
        spec: pb.WriteObjectSpec,
        plan: WritePlan,
        metrics: Metrics,
        budget: Budget,
        cleanups: set[asyncio.Future[None]],
        resumption: Resumption | None = None,
        resumable: Resumable | None = None,
    ) -> None:
        self._s3 = s3
        self._cleanups = cleanups
        self._budget = budget
        #: Parts' worth of bytes held from the budget beyond :attr:`WritePlan.reserved`.
        self._extra = 0
        self._caller = caller
        self._spec = spec
        self._plan = plan
        self._metrics = metrics
        self._kind = bucket_type(spec.object.bucket)
        self._object = _Object()
        if plan.algorithm not in checksums.FULL_OBJECT_CAPABLE:  # no CRC: hash every byte
            self._object.whole = plan.algorithm.new()
        self._upload_id: str | None = None
        self._creating: asyncio.Future[str] | None = None
        #: The read of the caller's next message, while parts are in flight.
        self._reading: asyncio.Future[Data | pb.FinishWrite] | None = None
        self._reported = 0
        #: Of a resumable write: its token (to issue as parts commit), and the committed parts the
        #: token vouches for: how many, their bytes, their CRC.
        self._resumable = resumable
        self._resumption = resumption
        self._vouched: tuple[int, int, bytes] = (0, 0, plan.algorithm.new().digest())
        if resumption is not None:
            self._upload_id = resumption.token.upload_id
            for prior in resumption.prior:
                part = _Part(prior.number, _EMPTY, prior.checksum, etag=prior.etag, prior=True)
                part.length = prior.size
                self._object.parts.append(part)
            self._object.received = resumption.persisted
            self._vouched = (len(resumption.prior), resumption.persisted, resumption.crc)
            self._reported = resumption.persisted

    @property
    def received(self) -> int:
        return self._object.received

    async def write(
        self, messages: AsyncIterator[WriteMessage], idle: IdleTimer | None
    ) -> AsyncGenerator[pb.WriteObjectResponse, None]:
        try:
            async with contextlib.aclosing(self._stream(messages, idle)) as responses:
                async for response in responses:
                    yield response
        except BaseException as error:
            # A resumable write keeps its parts for the next stream, unless they are wrong.
            keep = self._resumable is not None and not isinstance(error, ChecksumMismatch)
            await self._abandon(abort=not keep)
            raise
        finally:
            self._budget.give_back(self._extra * self._plan.part_size)
            self._extra = 0

    async def _stream(
        self, messages: AsyncIterator[WriteMessage], idle: IdleTimer | None
    ) -> AsyncGenerator[pb.WriteObjectResponse, None]:
        plan = self._plan
        if self._upload_id is None and plan.size is not None and plan.size > plan.part_size:
            # Surely a multipart upload: created while the first part fills, not after.
            self._creating = asyncio.ensure_future(self._create())
        filling = self._new_part()
        while True:
            message = await self._next_event(messages, idle)
            if message is None:  # a part ended first
                for response in self._progress():
                    yield response
                continue
            if isinstance(message, pb.FinishWrite):
                finish = message
                break
            content = memoryview(checked_content(message))
            self._object.received += len(content)
            self._metrics.client_bytes.labels(self._kind).inc(len(content))
            self._check_size()
            while content:
                content = filling.add(content, self._object.whole)
                if filling.filled == plan.part_size:
                    for response in await self._send_part(filling):
                        yield response
                    filling = self._new_part()
        if plan.size is not None and self.received != plan.size:
            raise LengthMismatch(
                plan.size, self.received, more=self.received > plan.size, field=_SIZE
            )
        last = filling.hasher.digest() if filling.filled or not self._object.parts else None
        digest = self._verify(finish, last)
        if not self._object.parts:
            answer = await self._put(filling.data, digest)
            if self._upload_id is not None:  # a resumable write's upload, now not needed
                upload_id, self._upload_id = self._upload_id, None
                await asyncio.shield(self._abort(upload_id))
                await self._ended()
            yield _written(answer, self._spec, self.received, 0, plan.algorithm, digest)
            return
        if filling.filled:
            for response in await self._send_part(filling):
                yield response
        del filling
        for part in self._object.parts:
            if part.task is not None:
                await part.task
        for response in self._progress():
            yield response
        answer = await self._complete(digest)
        self._upload_id = None  # completed: nothing to abort
        await self._ended()
        parts = self._object.parts
        written = _written(answer, self._spec, self.received, len(parts), plan.algorithm, digest)
        # S3 names the SSE-C key in the answers to the parts only, not in the completion's.
        written.object.sse_customer_algorithm = self._spec.object.sse_customer_algorithm
        written.object.sse_customer_key_md5 = self._spec.object.sse_customer_key_md5
        for part in parts:
            if part.task is not None:
                first = part.task.result()
                written.object.sse_customer_algorithm = first.get("SSECustomerAlgorithm", "")
                written.object.sse_customer_key_md5 = first.get("SSECustomerKeyMD5", "")
                break
        yield written

    async def _next_event(
        self, messages: AsyncIterator[WriteMessage], idle: IdleTimer | None
    ) -> Data | pb.FinishWrite | None:
        """The caller's next message, or None when a part in flight ends first: its progress
        (or its failure) is not held back until the caller sends again."""
        flying = self._in_flight()
        if idle is not None:
            # A caller waiting for its parts to persist is not idle while S3 takes them.
            idle.hold(bool(flying))
        if self._reading is None:
            self._reading = asyncio.ensure_future(_next(messages, idle))
        waits: set[asyncio.Future[Any]] = {self._reading, *flying}
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        if not self._reading.done():
            return None
        reading, self._reading = self._reading, None
        return reading.result()

    def _new_part(self) -> _Filling:
        """The next part to fill: of the part size, or of what remains of an announced size."""
        size = self._plan.part_size
        if self._plan.size is not None:
            size = min(size, self._plan.size - len(self._object.parts) * size)
        return _Filling(max(size, 0), self._plan.algorithm)

    def _check_size(self) -> None:
        plan = self._plan
        if plan.size is not None and self.received > plan.size:
            raise LengthMismatch(plan.size, self.received, more=True, field=_SIZE)
        if self.received > MAX_PARTS * plan.part_size:
            raise GatewayError(
                grpc.StatusCode.FAILED_PRECONDITION,
                Reason.TOO_MANY_PARTS,
                f"the object is larger than {MAX_PARTS} parts of {plan.part_size} bytes: give "
                "spec.object_size, so that the gateway picks larger parts; nothing was committed",
                metadata={"partSize": str(plan.part_size)},
            )

    async def _send_part(self, filling: _Filling) -> list[pb.WriteObjectResponse]:
        """Start uploading a part, once fewer than the limit are in flight; the progress made
        meanwhile."""
        if self._upload_id is None:
            # Shielded: a create S3 may have carried out is awaited and aborted, never lost.
            self._creating = self._creating or asyncio.ensure_future(self._create())
            self._upload_id = await asyncio.shield(self._creating)
        progress = []
        while not self._room():
            await asyncio.wait(self._in_flight(), return_when=asyncio.FIRST_COMPLETED)
            progress += self._progress()
        part = _Part(len(self._object.parts) + 1, filling.data, filling.hasher.digest())
        part.task = asyncio.create_task(self._upload_part(part))
        self._object.parts.append(part)
        return progress

    def _room(self) -> bool:
        """Whether one more part may go in flight: below the limit, and the bytes of the part
        that starts filling meanwhile held (the reservation covers one part in flight)."""
        flying = len(self._in_flight())
        if flying >= self._plan.parts_in_flight:
            return False
        if self._extra < flying:
            if not self._budget.try_take(self._plan.part_size):
                return False
            self._extra += 1
        return True

    def _release(self) -> None:
        """Give back to the budget what committed parts no longer need."""
        needed = max(0, len(self._in_flight()) - 1)
        if self._extra > needed:
            self._budget.give_back((self._extra - needed) * self._plan.part_size)
            self._extra = needed

    def _in_flight(self) -> set[asyncio.Task[dict[str, Any]]]:
        return {p.task for p in self._object.parts if p.task is not None and not p.task.done()}

    def _progress(self) -> list[pb.WriteObjectResponse]:
        """A progress message if more parts are committed since the last one (the contiguous
        prefix of committed parts); raises a failed part's error."""
        for part in self._object.parts:
            if part.task is not None and part.task.done():
                part.task.result()  # raises the part's failure
        self._release()
        persisted = 0
        for part in self._object.parts:
            if not part.committed:
                break
            persisted += part.length
        if persisted <= self._reported:
            return []
        self._reported = persisted
        progress = pb.WriteProgress(persisted_size=persisted)
        if self._resumable is not None and self._resumption is not None:
            progress.write_token = self._resumable.issue(self._vouch())
        return [pb.WriteObjectResponse(progress=progress)]

    def _vouch(self) -> WriteToken:
        """The token, advanced over the parts committed since it was last."""
        assert self._resumption is not None
        count, persisted, crc = self._vouched
        for part in self._object.parts[count:]:
            if not part.committed:
                break
            crc = checksums.combine(self._plan.algorithm, crc, part.checksum, part.length)
            count, persisted = count + 1, persisted + part.length
        self._vouched = (count, persisted, crc)
        return self._resumption.token.advanced(count, persisted, crc)

    async def _create(self) -> str:
        params = convert.to_params(self._spec.object, "CreateMultipartUpload")
        params["ChecksumAlgorithm"] = self._plan.algorithm.name
        params["ChecksumType"] = "FULL_OBJECT" if self._plan.full_object else "COMPOSITE"
        answer = await self._s3.call("CreateMultipartUpload", params, caller=self._caller)
        upload_id: str = answer["UploadId"]
        return upload_id

    async def _upload_part(self, part: _Part) -> dict[str, Any]:
        assert self._upload_id is not None
        params = {
            **self._object_parameters("UploadPart"),
            "UploadId": self._upload_id,
            "PartNumber": part.number,
            "ContentLength": part.length,
            self._plan.algorithm.s3_member: checksums.encode(part.checksum),
        }
        self._metrics.write_parts_in_flight.inc()
        try:
            for attempt in range(PART_ATTEMPTS):
                try:
                    # The first attempt without 100 Continue, the retries with it: S3 refusing
                    # a part early is then read as its refusal.
                    fast = attempt == 0
                    answer = await self._send("UploadPart", params, part.data, fast=fast)
                    break
                except GatewayError as error:
                    if error.retry_delay is None or attempt + 1 == PART_ATTEMPTS:
                        raise
                    await asyncio.sleep(PART_RETRY_DELAYS[attempt])
        finally:
            self._metrics.write_parts_in_flight.dec()
        self._metrics.s3_bytes.labels(self._kind).inc(part.length)
        self._metrics.part_size.labels(self._kind).observe(part.length)
        part.etag = answer["ETag"]
        part.data = _EMPTY  # committed: its memory is free
        return answer

    async def _send(
        self, operation: str, params: dict[str, Any], data: memoryview, *, fast: bool = False
    ) -> dict[str, Any]:
        """Send ``data`` as the body of ``operation``, S3 taking it within the stall timeout;
        ``fast``: without waiting for ``100 Continue``."""
        watch = SendWatch(self._plan.stall_timeout, operation)
        body = HeldBody(data, watch, skip_continue=fast)
        return await self._s3.call(
            operation, {**params, "Body": body}, caller=self._caller, watch=watch
        )

    def _object_parameters(self, operation: str) -> dict[str, Any]:
        """The spec's parameters that ``operation`` takes too (SSE-C, request payer, owner)."""
        params = convert.to_params(self._spec.object, operation)
        return {k: v for k, v in params.items() if k != "ChecksumAlgorithm"}

    def _verify(self, finish: pb.FinishWrite, last: bytes | None) -> bytes:
        """The whole object's digest, once it equals the caller's value (if it gave one)."""
        plan = self._plan
        given: dict[Algorithm, bytes] = {}
        for algorithm in checksums.CHECKSUM_ALGORITHMS:
            if algorithm.field in pb.FinishWrite.DESCRIPTOR.fields_by_name:
                value = getattr(finish, algorithm.field)
                if value:
                    given[algorithm] = validate.checksum_value(
                        algorithm, value, f"finish.{algorithm.field}"
                    )
        for algorithm in given:
            if algorithm is not plan.algorithm:
                raise InvalidRequest(
                    f"finish.{algorithm.field}",
                    f"the object's checksum algorithm is {plan.algorithm.name}",
                )
        digest = self._whole_digest(last)
        expected = given.get(plan.algorithm)
        if expected is not None and expected != digest:
            raise ChecksumMismatch(
                plan.algorithm.name,
                checksums.encode(expected),
                checksums.encode(digest),
                where="object",
            )
        return digest

    def _whole_digest(self, last: bytes | None) -> bytes:
        if self._object.whole is not None:
            return self._object.whole.digest()
        algorithm = self._plan.algorithm
        # The prior parts' CRC (the resumption's), then every part of this stream's.
        count, offset, whole = (0, 0, algorithm.new().digest())
        if self._resumption is not None:
            count, offset = len(self._resumption.prior), self._resumption.persisted
            whole = self._resumption.crc
        for part in self._object.parts[count:]:
            whole = checksums.combine(algorithm, whole, part.checksum, part.length)
            offset += part.length
        if last is not None:
            whole = checksums.combine(algorithm, whole, last, self.received - offset)
        return whole

    async def _put(self, data: memoryview, digest: bytes) -> dict[str, Any]:
        params = convert.to_params(self._spec.object, "PutObject")
        params.pop("ChecksumType", None)
        params["ContentLength"] = len(data)
        params[self._plan.algorithm.s3_member] = checksums.encode(digest)
        params["ChecksumAlgorithm"] = self._plan.algorithm.name
        self._conditions(params)
        answer = await self._send("PutObject", params, data)
        self._metrics.s3_bytes.labels(self._kind).inc(len(data))
        return answer

    async def _complete(self, digest: bytes) -> dict[str, Any]:
        assert self._upload_id is not None
        algorithm = self._plan.algorithm
        parts = []
        for part in self._object.parts:
            entry = {"PartNumber": part.number, "ETag": part.etag}
            if part.checksum:  # unknown for a prior part S3 did not list with one
                entry[algorithm.s3_member] = checksums.encode(part.checksum)
            parts.append(entry)
        params = {
            **self._object_parameters("CompleteMultipartUpload"),
            "UploadId": self._upload_id,
            "MultipartUpload": {"Parts": parts},
            "MpuObjectSize": self.received,
        }
        if self._plan.full_object:
            params["ChecksumType"] = "FULL_OBJECT"
            params[algorithm.s3_member] = checksums.encode(digest)
        self._conditions(params)
        return await self._s3.call("CompleteMultipartUpload", params, caller=self._caller)

    def _conditions(self, params: dict[str, Any]) -> None:
        if self._spec.HasField("if_none_match"):
            params["IfNoneMatch"] = self._spec.if_none_match
        if self._spec.HasField("if_match"):
            params["IfMatch"] = self._spec.if_match

    async def _ended(self) -> None:
        """Of a resumable write, once its object is written: count it, and abort its marker."""
        if self._resumable is None or self._resumption is None:
            return
        self._metrics.resumable_writes.labels("completed").inc()
        await self._resumable.release(self._resumption.token, self._spec, self._caller)

    async def _abandon(self, *, abort: bool = True) -> None:
        """Stop the parts in flight and abort the upload, if there is one (and ``abort``):
        nothing is left behind. The abort runs to its end even when the stream's task is
        cancelled meanwhile."""
        if self._reading is not None:
            self._reading.cancel()
        tasks = [p.task for p in self._object.parts if p.task is not None]
        for task in tasks:
            task.cancel()
        upload_id, self._upload_id = self._upload_id, None
        if not abort:
            upload_id = None
        creating = self._creating if upload_id is None else None
        ending = asyncio.ensure_future(self._end(tasks, upload_id, creating))
        self._cleanups.add(ending)
        ending.add_done_callback(self._cleanups.discard)
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.shield(ending)

    async def _end(
        self,
        tasks: list[asyncio.Task[Any]],
        upload_id: str | None,
        creating: asyncio.Future[str] | None,
    ) -> None:
        await asyncio.gather(*tasks, return_exceptions=True)
        if creating is not None:
            with contextlib.suppress(Exception):
                upload_id = await creating
        if upload_id is not None:
            await self._abort(upload_id)

    async def _abort(self, upload_id: str) -> None:
        params = {**self._object_parameters("AbortMultipartUpload"), "UploadId": upload_id}
        error = await abort_upload(self._s3, params, self._caller)
        if error is not None:
            log.error(
                "could not abort the upload of an abandoned WriteObject: %s", error,
                extra={"upload_id": upload_id},
            )  # fmt: skip


async def abort_upload(
    s3: S3, params: dict[str, Any], caller: str
) -> GatewayError | TimeoutError | None:
    """AbortMultipartUpload within :data:`ABORT_TIMEOUT`; its failure, for the caller to log,
    or None."""
    try:
        async with asyncio.timeout(ABORT_TIMEOUT):
            await s3.call("AbortMultipartUpload", params, caller=caller)
    except (GatewayError, TimeoutError) as error:
        return error
    return None


async def _read_first(
    messages: AsyncIterator[WriteMessage], idle: IdleTimer | None
) -> pb.WriteObjectSpec | pb.ResumeWrite:
    first = await _message(messages, idle)
    if first is None:
        raise InvalidRequest("spec", "the stream is empty; the first message must be a spec")
    if isinstance(first, Malformed):
        raise InvalidRequest("message", f"is not valid protobuf: {first.error}")
    if not isinstance(first, Data) and first.WhichOneof("message") == "resume":
        return first.resume
    if isinstance(first, Data) or first.WhichOneof("message") != "spec":
        raise InvalidRequest("spec", "the first message must be a spec (or resume)")
    if not first.spec.HasField("object"):
        raise InvalidRequest("spec.object", "is required")
    return first.spec


async def _next(
    messages: AsyncIterator[WriteMessage], idle: IdleTimer | None
) -> Data | pb.FinishWrite:
    """The next data message or the finish; a stream that ends first commits nothing."""
    message = await _message(messages, idle)
    if message is None:
        raise InvalidRequest(
            "finish", "the stream ended without a finish message; nothing was committed"
        )
    if isinstance(message, Data):
        return message
    if isinstance(message, Malformed):
        raise InvalidRequest("message", f"is not valid protobuf: {message.error}")
    if message.WhichOneof("message") == "finish":
        return message.finish
    raise InvalidRequest("spec", "only the first message may be a spec or resume")


async def _message(
    messages: AsyncIterator[WriteMessage], idle: IdleTimer | None
) -> WriteMessage | None:
    if idle is None:
        return await anext(messages, None)
    return await idle.next(messages)


def _written(
    answer: dict[str, Any],
    spec: pb.WriteObjectSpec,
    size: int,
    parts: int,
    algorithm: Algorithm,
    digest: bytes,
) -> pb.WriteObjectResponse:
    written = pb.WrittenObject(
        bucket=spec.object.bucket, key=spec.object.key, size=size, parts=parts
    )
    convert.from_response(answer, written, "CompleteMultipartUpload" if parts else "PutObject")
    written.bucket, written.key = spec.object.bucket, spec.object.key
    written.computed_checksums[algorithm.name] = checksums.encode(digest)
    return pb.WriteObjectResponse(object=written)
