"""The streaming part body: the heart of UploadPart.

A :class:`PartBody` is handed to aiobotocore as the request body. aiohttp pulls chunks from it as
the socket drains, and each pull reads the next gRPC message from the caller, so gRPC flow control
pushes back on the caller and the gateway holds about one message per stream, never the part.

On the way through, the body counts bytes and feeds every checksum it must verify. The chunk that
completes the part is *held back*: it is handed to aiohttp only after the caller's stream has ended
and every declared checksum matched. Any failure (a checksum mismatch, too many or too few bytes, a
malformed stream) raises inside the body instead, aiohttp aborts the request, and S3, having
received an incomplete body, stores nothing; an earlier good upload of that part number stays. The
body remembers why it failed, because aiobotocore reports the abort as a connection error.
"""

from __future__ import annotations

import asyncio
import io
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from gateway import checksums
from gateway.checksums import Algorithm, MultiHasher
from gateway.errors import (
    ChecksumMismatch,
    GatewayError,
    InvalidRequest,
    LengthMismatch,
    Reason,
    ResourceExhausted,
    s3_stalled,
)
from gateway.server.wire import Data, Malformed, PartMessage
from gateway.v1 import upload_service_pb2 as pb

Messages = AsyncIterator[PartMessage]
#: A chunk of part bytes: a view into grpc's message buffer, or bytes.
Chunk = bytes | memoryview


@dataclass
class ChecksumPlan:
    """Which digests to compute for a part and what each must equal."""

    #: Algorithms to compute, whether or not a value is expected.
    algorithms: set[Algorithm] = field(default_factory=set)
    #: Expected digests, from the header and the trailer.
    expected: dict[Algorithm, bytes] = field(default_factory=dict)
    #: The algorithm the header announced (its value may come in the trailer).
    announced: Algorithm | None = None
    #: False when the operator turned verification off: values are accepted, nothing computed.
    verifying: bool = True

    def unverified(self) -> ChecksumPlan:
        """The same announcement, with nothing computed or compared."""
        return ChecksumPlan(announced=self.announced, verifying=False)

    @classmethod
    def for_header(
        cls, header: pb.UploadPartHeader, declared: dict[Algorithm, bytes]
    ) -> ChecksumPlan:
        announced = checksums.BY_PROTO.get(header.checksum_algorithm)
        algorithms = set(declared)
        if announced is not None:
            algorithms.add(announced)
        return cls(algorithms=algorithms, expected=dict(declared), announced=announced)

    def add_trailer(self, trailer: pb.UploadPartTrailer) -> None:
        for algorithm, digest in _trailer_values(trailer).items():
            if algorithm is not self.announced:
                raise InvalidRequest(
                    f"trailer.{algorithm.field}",
                    "the trailer may only carry the algorithm named in header.checksum_algorithm",
                )
            known = self.expected.get(algorithm)
            if known is not None and known != digest:
                raise InvalidRequest(
                    f"trailer.{algorithm.field}", "differs from the value given in the header"
                )
            self.expected[algorithm] = digest

    def verify(self, computed: dict[Algorithm, bytes]) -> None:
        if not self.verifying:
            return
        for algorithm, expected in self.expected.items():
            if computed[algorithm] != expected:
                raise ChecksumMismatch(
                    algorithm.name,
                    checksums.encode(expected),
                    checksums.encode(computed[algorithm]),
                )


def _trailer_values(trailer: pb.UploadPartTrailer) -> dict[Algorithm, bytes]:
    values: dict[Algorithm, bytes] = {}
    for algorithm in checksums.CHECKSUM_ALGORITHMS:
        value = getattr(trailer, algorithm.field)
        if value:
            try:
                values[algorithm] = checksums.decode(algorithm, value)
            except ValueError as exc:
                raise InvalidRequest(f"trailer.{algorithm.field}", str(exc)) from None
    return values


class Deadline:
    """A point in time that moves often and passes rarely.

    Moving it costs no timer event: one timer, armed lazily, looks at the deadline when it
    fires, re-arms itself for a deadline that moved later, and calls ``expire`` once it has
    passed. A stream that moves its deadlines on every message of thousands a second thus
    schedules about one timer event per timeout, not one per message.
    """

    def __init__(self, expire: Callable[[], None]) -> None:
        self._loop = asyncio.get_running_loop()
        self._expire = expire
        self._when: float | None = None
        self._handle: asyncio.TimerHandle | None = None

    def set(self, when: float | None) -> None:
        """Expire at loop time ``when``; None: not at all (until set again)."""
        self._when = when
        if when is None or (self._handle is not None and self._handle.when() <= when):
            return
        if self._handle is not None:
            self._handle.cancel()
        self._handle = self._loop.call_at(when, self._check)

    def _check(self) -> None:
        self._handle = None
        when = self._when
        if when is None:
            return
        if self._loop.time() < when:
            self._handle = self._loop.call_at(when, self._check)
            return
        self._when = None
        self._expire()

    def close(self) -> None:
        self._when = None
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None


class IdleTimer:
    """Ends a wait for the caller's next message that lasts ``timeout`` seconds: a stalled or
    trickling caller must not hold its slot, its buffers and an S3 connection forever."""

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self._loop = asyncio.get_running_loop()
        self._deadline = Deadline(self._expire)
        self._waiter: asyncio.Task[Any] | None = None
        self._expired = False

    async def next(self, messages: Messages) -> PartMessage | None:
        """The next message (None at the end of the stream), or :class:`ResourceExhausted`."""
        task = asyncio.current_task()
        assert task is not None
        cancelling = task.cancelling()
        self._waiter = task
        self._deadline.set(self._loop.time() + self.timeout)
        try:
            return await anext(messages, None)
        except asyncio.CancelledError:
            if self._expired and task.uncancel() <= cancelling:
                raise ResourceExhausted(
                    Reason.IDLE_TIMEOUT,
                    f"no message arrived for {self.timeout:g} s (GATEWAY_IDLE_TIMEOUT); the "
                    "stream was ended and nothing was committed",
                    limit=self.timeout,
                    retry_delay=0,
                ) from None
            raise
        finally:
            self._waiter = None
            self._deadline.set(None)

    def _expire(self) -> None:
        if self._waiter is not None:
            self._expired = True
            self._waiter.cancel()

    def close(self) -> None:
        self._deadline.close()


class SendWatch:
    """Bounds what a streamed part waits for from S3 while its body is sent.

    aiohttp pulls the body chunk by chunk and writes each to the socket, waiting while S3 does
    not take it (the kernel queues little: see :mod:`.s3`). So between handing a chunk to
    aiohttp and aiohttp asking for the next, the relay waits for S3; while aiohttp waits for the
    next chunk, it waits for the caller (whose waits :class:`IdleTimer` bounds). The first pull
    comes once S3 has answered ``100 Continue``. A wait for S3 longer than ``timeout`` cancels
    the task that awaits S3's answer; the call then fails with S3_STALLED (UNAVAILABLE with
    RetryInfo), and the aborted request commits nothing. Once the body has been sent, aiohttp's
    read timeout bounds the wait for S3's answer.
    """

    def __init__(self, timeout: float, operation: str = "UploadPart") -> None:
        self.timeout = timeout
        self._operation = operation
        self._loop = asyncio.get_running_loop()
        self._deadline = Deadline(self._expire)
        self._task: asyncio.Task[Any] | None = None
        self._cancelling = 0
        #: Whether aiohttp has asked for the body (S3 answered 100 Continue, if it was asked).
        self.invited = False
        self._expired = False

    def start(self) -> None:
        """The calling task starts the request; the wait for 100 Continue begins."""
        self._task = asyncio.current_task()
        assert self._task is not None
        self._cancelling = self._task.cancelling()
        self._deadline.set(self._loop.time() + self.timeout)

    def wanted(self) -> None:
        """aiohttp asks for more of the body: S3 took what it had."""
        self.invited = True
        self._deadline.set(None)

    def handed(self) -> None:
        """A chunk goes to aiohttp: S3 has ``timeout`` seconds to take it."""
        if self._task is not None:
            self._deadline.set(self._loop.time() + self.timeout)

    def sent(self) -> None:
        """The whole body has been handed over; aiohttp's read timeout takes it from here."""
        self._deadline.set(None)

    def _expire(self) -> None:
        if self._task is not None:
            self._expired = True
            self._task.cancel()

    def expired(self) -> GatewayError | None:
        """The error for the task cancelled by this watch (uncancelling it), else None."""
        if not self._expired or self._task is None or self._task.uncancel() > self._cancelling:
            return None
        what = (
            f"S3 took no byte of the body for {self.timeout:g} s"
            if self.invited
            else f"S3 did not invite the body (100 Continue) within {self.timeout:g} s"
        )
        return s3_stalled(self._operation, what)

    def close(self) -> None:
        self._deadline.close()


async def next_message(messages: Messages, timer: IdleTimer | None) -> PartMessage | None:
    """The caller's next message (None at the end of the stream), within ``timer``'s limit."""
    if timer is None:
        return await anext(messages, None)
    return await timer.next(messages)


class MessageReader:
    """Reads the data and trailer messages that follow the header, enforcing their order."""

    def __init__(
        self, messages: Messages, plan: ChecksumPlan, *, idle: IdleTimer | None = None
    ) -> None:
        self._messages = messages
        self._plan = plan
        self._idle = idle
        self._trailer_seen = False
        self.ended = False
        #: Part bytes read from the caller so far.
        self.received = 0

    async def next_data(self) -> Chunk | None:
        """The next chunk of part bytes, or None when the stream has ended."""
        while not self.ended:
            message = await next_message(self._messages, self._idle)
            if message is None:
                self.ended = True
                return None
            if isinstance(message, Data):
                if self._trailer_seen:
                    raise InvalidRequest("data", "no data may follow the trailer")
                content = _checked_content(message)
                self.received += len(content)
                if content:
                    return content
                continue
            if isinstance(message, Malformed):
                raise InvalidRequest("message", f"is not valid protobuf: {message.error}")
            kind = message.WhichOneof("message")
            if kind == "trailer":
                if self._trailer_seen:
                    raise InvalidRequest("trailer", "only one trailer may be sent")
                self._trailer_seen = True
                self._plan.add_trailer(message.trailer)
            elif kind == "header":
                raise InvalidRequest("header", "only the first message may be a header")
            else:
                raise InvalidRequest("message", "each message must set header, data or trailer")
        return None


def _checked_content(data: Data) -> Chunk:
    content = data.content
    if data.crc32c is not None:
        computed = checksums.crc32c(content)
        if computed != data.crc32c:
            raise ChecksumMismatch(
                "CRC32C",
                checksums.encode(data.crc32c.to_bytes(4, "big")),
                checksums.encode(computed.to_bytes(4, "big")),
                where="data message",
            )
    return content


#: A checksum update estimated to take longer than this runs in a worker thread.
INLINE_HASH_SECONDS = 0.001


class BackgroundHasher:
    """Feeds chunks to a :class:`MultiHasher` in order, in a worker thread when an update would
    hold the event loop for more than :data:`INLINE_HASH_SECONDS`.

    At most one update is in flight: :meth:`update` waits for the previous one, then starts the
    next and returns, so hashing chunk N overlaps with sending it to S3 and receiving chunk N+1,
    and concurrent streams hash on every core (hashlib and awscrt release the GIL on large
    buffers). Memory stays at one extra chunk per stream."""

    def __init__(self, algorithms: set[Algorithm]) -> None:
        self._hasher = MultiHasher(algorithms)
        self._pending: asyncio.Future[None] | None = None

    async def update(self, chunk: Chunk) -> None:
        if self._pending is not None:
            pending, self._pending = self._pending, None
            await pending
        if len(chunk) * self._hasher.seconds_per_byte <= INLINE_HASH_SECONDS:
            self._hasher.update(chunk)
        else:
            loop = asyncio.get_running_loop()
            self._pending = loop.run_in_executor(None, self._hasher.update, chunk)

    async def digests(self) -> dict[Algorithm, bytes]:
        if self._pending is not None:
            pending, self._pending = self._pending, None
            await pending
        return self._hasher.digests()


class PartBody:
    """A request body for aiobotocore that relays, counts, checksums and holds back."""

    def __init__(
        self,
        reader: MessageReader,
        plan: ChecksumPlan,
        content_length: int,
        watch: SendWatch | None = None,
    ) -> None:
        self._reader = reader
        self._plan = plan
        self._hasher = BackgroundHasher(plan.algorithms)
        self._expected = content_length
        self._watch = watch
        self._received = 0
        self._finished = False
        self._leftover: Chunk = b""
        #: Bytes handed to aiohttp so far.
        self.released = 0
        #: Why the body aborted the upload, if it did.
        self.failure: GatewayError | None = None
        #: The digests computed over the whole part, once it has been verified.
        self.digests: dict[Algorithm, bytes] = {}

    @property
    def received(self) -> int:
        return self._received

    def __aiter__(self) -> PartBody:
        return self

    async def first_bytes(self) -> None:
        """Wait for the caller's first bytes (within the idle timeout), before S3 is called: a
        stream that sends nothing holds no S3 connection."""
        if not self._leftover:
            self._leftover = await self._next_chunk()

    async def __anext__(self) -> Chunk:
        chunk = await self.read()
        if not chunk:
            raise StopAsyncIteration
        return chunk

    async def read(self, size: int = -1) -> Chunk:
        """File-like access, used by botocore's aws-chunked wrapper; aiohttp iterates."""
        if self._watch is not None:
            self._watch.wanted()
        if not self._leftover:
            self._leftover = await self._next_chunk()
        if size is None or size < 0 or size >= len(self._leftover):
            chunk, self._leftover = self._leftover, b""
        else:
            chunk, self._leftover = self._leftover[:size], self._leftover[size:]
        self.released += len(chunk)
        if self._watch is not None:
            if chunk:
                self._watch.handed()
            else:
                self._watch.sent()
        return chunk

    def seek(self, offset: int, whence: int = 0) -> int:
        raise io.UnsupportedOperation("a relayed part cannot be rewound")

    def tell(self) -> int:
        raise io.UnsupportedOperation("a relayed part cannot be rewound")

    async def _next_chunk(self) -> Chunk:
        if self._finished:
            return b""
        try:
            chunk = await self._pull()
        except GatewayError as exc:
            self.failure = exc
            raise
        return chunk

    async def _pull(self) -> Chunk:
        chunk = await self._reader.next_data()
        if chunk is None:
            raise LengthMismatch(self._expected, self._received, more=False)
        self._received += len(chunk)
        if self._received > self._expected:
            raise LengthMismatch(self._expected, self._received, more=True)
        await self._hasher.update(chunk)
        if self._received == self._expected:
            await self._finish()
        return chunk

    async def _finish(self) -> None:
        """Runs before the completing chunk is released: drain the stream, then verify."""
        extra = await self._reader.next_data()
        if extra is not None:
            raise LengthMismatch(self._expected, self._received + len(extra), more=True)
        self.digests = await self._hasher.digests()
        self._plan.verify(self.digests)
        self._finished = True


async def read_whole_part(
    reader: MessageReader,
    limit: int,
    declared: int | None,
    *,
    hold: Callable[[int], None] | None = None,
) -> bytes:
    """Buffer a small part: one sent without content_length (at most ``limit`` bytes), or one
    whose declared length is zero. ``hold`` is told of each chunk's size before it is kept (it
    may refuse by raising)."""
    buffer = bytearray()
    while (chunk := await reader.next_data()) is not None:
        if declared is not None and len(buffer) + len(chunk) > declared:
            raise LengthMismatch(declared, len(buffer) + len(chunk), more=True)
        if len(buffer) + len(chunk) > limit:
            raise InvalidRequest(
                "content_length",
                f"is required for parts larger than {limit} bytes",
                reason=Reason.CONTENT_LENGTH_REQUIRED,
            )
        if hold is not None:
            hold(len(chunk))
        buffer += chunk
    return bytes(buffer)


async def verify_whole_part(data: bytes, plan: ChecksumPlan) -> dict[Algorithm, bytes]:
    """Checksum a buffered part and verify it; returns the digests."""
    hasher = BackgroundHasher(plan.algorithms)
    await hasher.update(data)
    digests = await hasher.digests()
    plan.verify(digests)
    return digests
