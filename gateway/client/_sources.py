"""Parts: S3's limits, the part size of an object, and the sources that hand parts out.

A source gives the parts of a file (read from disk when sent, again on a retry) or of a stream
(read once, in order; a part stays in memory until it is committed). Every part is sent as
``data`` messages of :data:`CHUNK_SIZE` bytes.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterable, AsyncIterator
from dataclasses import dataclass
from typing import IO, Protocol

from gateway.units import GiB, MiB

#: S3's smallest part (except the last) and largest part, and its most parts per upload.
MIN_PART_SIZE = 5 * MiB
MAX_PART_SIZE = 5 * GiB
MAX_PARTS = 10_000
#: The part size used for streams of unknown length, and the least used for known sizes.
DEFAULT_PART_SIZE = 8 * MiB
#: The size of the ``data`` messages of UploadPart.
CHUNK_SIZE = MiB


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
class FilePart:
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


class FileSource:
    """The parts of a file of ``size`` bytes."""

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
        return FilePart(self.path, number, offset, min(self.part_size, self.total - offset))


@dataclass
class MemoryPart:
    number: int
    data: bytes

    @property
    def length(self) -> int:
        return len(self.data)

    async def chunks(self) -> AsyncIterator[bytes]:
        view = memoryview(self.data)
        for start in range(0, len(view), CHUNK_SIZE):
            yield bytes(view[start : start + CHUNK_SIZE])


def as_chunks(body: bytes | AsyncIterable[bytes]) -> AsyncIterable[bytes]:
    """A part's body as ``data`` chunks: bytes are cut into :data:`CHUNK_SIZE` pieces, an
    iterable is sent as it comes."""
    return MemoryPart(0, body).chunks() if isinstance(body, bytes) else body


class StreamReader:
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


class StreamSource:
    """The parts of a stream, ``size`` bytes long if known, read one part at a time."""

    def __init__(self, reader: StreamReader, size: int | None, part_size: int) -> None:
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
        return MemoryPart(number, data)
