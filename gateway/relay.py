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

import io
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from awscrt import checksums as crt

from gateway import checksums
from gateway.checksums import Algorithm, MultiHasher
from gateway.errors import ChecksumMismatch, GatewayError, InvalidRequest, LengthMismatch
from gateway.v1 import upload_service_pb2 as pb

Messages = AsyncIterator[pb.UploadPartRequest]


@dataclass
class ChecksumPlan:
    """Which digests to compute for a part and what each must equal."""

    #: Algorithms to compute, whether or not a value is expected.
    algorithms: set[Algorithm] = field(default_factory=set)
    #: Expected digests, from the header and the trailer.
    expected: dict[Algorithm, bytes] = field(default_factory=dict)
    #: The algorithm the header announced (its value may come in the trailer).
    announced: Algorithm | None = None

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

    def __init__(self, messages: Messages, plan: ChecksumPlan) -> None:
        self._messages = messages
        self._plan = plan
        self._trailer_seen = False
        self.ended = False
        #: Part bytes read from the caller so far.
        self.received = 0

    async def next_data(self) -> bytes | None:
        """The next chunk of part bytes, or None when the stream has ended."""
        while not self.ended:
            message = await anext(self._messages, None)
            if message is None:
                self.ended = True
                return None
            kind = message.WhichOneof("message")
            if kind == "data":
                if self._trailer_seen:
                    raise InvalidRequest("data", "no data may follow the trailer")
                content = _checked_content(message.data)
                self.received += len(content)
                if content:
                    return content
            elif kind == "trailer":
                if self._trailer_seen:
                    raise InvalidRequest("trailer", "only one trailer may be sent")
                self._trailer_seen = True
                self._plan.add_trailer(message.trailer)
            elif kind == "header":
                raise InvalidRequest("header", "only the first message may be a header")
            else:
                raise InvalidRequest("message", "each message must set header, data or trailer")
        return None


def _checked_content(data: pb.ChecksummedData) -> bytes:
    content = data.content
    if data.HasField("crc32c"):
        computed = crt.crc32c(content)
        if computed != data.crc32c:
            raise ChecksumMismatch(
                "CRC32C",
                checksums.encode(data.crc32c.to_bytes(4, "big")),
                checksums.encode(computed.to_bytes(4, "big")),
                where="data message",
            )
    return content


class PartBody:
    """A request body for aiobotocore that relays, counts, checksums and holds back."""

    def __init__(self, reader: MessageReader, plan: ChecksumPlan, content_length: int) -> None:
        self._reader = reader
        self._plan = plan
        self._hasher = MultiHasher(plan.algorithms)
        self._expected = content_length
        self._received = 0
        self._finished = False
        self._leftover = b""
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

    async def __anext__(self) -> bytes:
        chunk = await self._next_chunk()
        if not chunk:
            raise StopAsyncIteration
        return chunk

    async def read(self, size: int = -1) -> bytes:
        """File-like access, used by botocore's aws-chunked wrapper."""
        if not self._leftover:
            self._leftover = await self._next_chunk()
        if size is None or size < 0 or size >= len(self._leftover):
            chunk, self._leftover = self._leftover, b""
        else:
            chunk, self._leftover = self._leftover[:size], self._leftover[size:]
        return chunk

    def seek(self, offset: int, whence: int = 0) -> int:
        raise io.UnsupportedOperation("a relayed part cannot be rewound")

    def tell(self) -> int:
        raise io.UnsupportedOperation("a relayed part cannot be rewound")

    async def _next_chunk(self) -> bytes:
        if self._finished:
            return b""
        try:
            chunk = await self._pull()
        except GatewayError as exc:
            self.failure = exc
            raise
        self.released += len(chunk)
        return chunk

    async def _pull(self) -> bytes:
        chunk = await self._reader.next_data()
        if chunk is None:
            raise LengthMismatch(self._expected, self._received, more=False)
        self._received += len(chunk)
        if self._received > self._expected:
            raise LengthMismatch(self._expected, self._received, more=True)
        self._hasher.update(chunk)
        if self._received == self._expected:
            await self._finish()
        return chunk

    async def _finish(self) -> None:
        """Runs before the completing chunk is released: drain the stream, then verify."""
        extra = await self._reader.next_data()
        if extra is not None:
            raise LengthMismatch(self._expected, self._received + len(extra), more=True)
        self.digests = self._hasher.digests()
        self._plan.verify(self.digests)
        self._finished = True


async def read_whole_part(reader: MessageReader, limit: int, declared: int | None) -> bytes:
    """Buffer a small part: one sent without content_length (at most ``limit`` bytes), or one
    whose declared length is zero."""
    buffer = bytearray()
    while (chunk := await reader.next_data()) is not None:
        if declared is not None and len(buffer) + len(chunk) > declared:
            raise LengthMismatch(declared, len(buffer) + len(chunk), more=True)
        if len(buffer) + len(chunk) > limit:
            raise InvalidRequest(
                "content_length",
                f"is required for parts larger than {limit} bytes",
                reason="CONTENT_LENGTH_REQUIRED",
            )
        buffer += chunk
    return bytes(buffer)


def verify_whole_part(data: bytes, plan: ChecksumPlan) -> dict[Algorithm, bytes]:
    """Checksum a buffered part and verify it; returns the digests."""
    hasher = MultiHasher(plan.algorithms)
    hasher.update(data)
    digests = hasher.digests()
    plan.verify(digests)
    return digests
