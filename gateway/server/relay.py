"""The streaming part body: the heart of UploadPart.

A :class:`PartBody` is handed to aiobotocore as the request body. aiohttp pulls chunks from it as
the socket drains, and each pull reads the next gRPC message from the caller, so gRPC flow control
pushes back on the caller and the gateway holds about one message per stream, never the part.

On the way through, the body counts bytes and feeds every checksum it must verify. The chunk that
completes the part is *held back*: it is handed to aiohttp only after the caller's stream has ended
and every declared checksum matched. Any failure (a checksum mismatch, too many or too few bytes, a
malformed stream) raises inside the body instead, aiohttp aborts the request, and S3, having
received an incomplete body, stores nothing; an earlier good upload of that part number stays. The
body tells its :class:`gateway.server.timers.SendWatch` why it failed, because aiobotocore reports
the abort as a connection error.
"""

from __future__ import annotations

import asyncio
import io
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

from gateway import checksums
from gateway.checksums import Algorithm, MultiHasher
from gateway.errors import (
    ChecksumMismatch,
    GatewayError,
    InvalidRequest,
    LengthMismatch,
    Reason,
)
from gateway.server.timers import IdleTimer, SendWatch, next_message
from gateway.server.wire import Data, Malformed, PartMessage, checked_content
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
                content = checked_content(message)
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
            self._watch.gave(len(chunk))
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
            if self._watch is not None:
                self._watch.fail(exc)
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


class HeldBody:
    """A request body for aiobotocore from bytes the gateway holds (a part of a WriteObject):
    handed to aiohttp in slices that are views, never copies, under a :class:`SendWatch` like a
    relayed part, so S3 taking nothing within the stall timeout ends the request."""

    #: Bytes per slice: a few times the socket's unsent low-water mark.
    SLICE = 256 * 1024

    def __init__(
        self,
        data: bytes | bytearray | memoryview,
        watch: SendWatch | None = None,
        *,
        skip_continue: bool = False,
    ) -> None:
        #: Send without ``Expect: 100-continue`` (see :mod:`.s3`).
        self.skip_continue = skip_continue
        self._view = memoryview(data)
        self._offset = 0
        self._watch = watch

    def __len__(self) -> int:
        return len(self._view)

    def __aiter__(self) -> HeldBody:
        return self

    async def __anext__(self) -> Chunk:
        chunk = await self.read(self.SLICE)
        if not chunk:
            raise StopAsyncIteration
        return chunk

    async def read(self, size: int = -1) -> Chunk:
        if self._watch is not None:
            self._watch.wanted()
        end = len(self._view) if size is None or size < 0 else self._offset + size
        chunk = self._view[self._offset : end]
        self._offset += len(chunk)
        if self._watch is not None:
            self._watch.gave(len(chunk))
        return chunk

    def seek(self, offset: int, whence: int = 0) -> int:
        raise io.UnsupportedOperation("a held part is sent once per request")

    def tell(self) -> int:
        raise io.UnsupportedOperation("a held part is sent once per request")


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
