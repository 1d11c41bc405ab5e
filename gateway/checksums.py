"""Incremental checksums in the forms S3 uses.

Every algorithm S3 accepts for a part (plus Content-MD5) is an :class:`Algorithm`: its S3 name, the
suffix of its request/response fields (``checksum_<suffix>``), its digest size and a factory for an
incremental hasher. Values travel as base64 of the big-endian digest; :func:`decode` checks a value
supplied by a caller before anything is sent to S3.

CRC32C, CRC64NVME and the XXHASH family come from awscrt (native code, the library botocore itself
uses); CRC32 from awscrt as well; the SHA family and MD5 from hashlib. Both release the GIL on large
buffers. This module is the project's only user of awscrt: the per-message CRC32C
(:func:`crc32c`) and the combination of CRCs (:func:`combine`) live here too.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Protocol

from awscrt import checksums as crt


class Hasher(Protocol):
    """An incremental digest."""

    def update(self, data: bytes | memoryview, /) -> None: ...

    def digest(self) -> bytes: ...


class _Crc:
    """A CRC kept as an integer and fed chunk by chunk through an awscrt function."""

    __slots__ = ("_fn", "_size", "_value")

    def __init__(self, fn: Callable[[bytes | memoryview, int], int], size: int) -> None:
        self._fn = fn
        self._size = size
        self._value = 0

    def update(self, data: bytes | memoryview, /) -> None:
        self._value = self._fn(data, self._value)

    def digest(self) -> bytes:
        return self._value.to_bytes(self._size, "big")


class _XXHash:
    """awscrt's XXHash, whose final call is ``finalize`` rather than ``digest``."""

    __slots__ = ("_state",)

    def __init__(self, state: crt.XXHash) -> None:
        self._state = state

    def update(self, data: bytes | memoryview, /) -> None:
        # awscrt's binding takes bytes, not buffer views.
        self._state.update(bytes(data) if isinstance(data, memoryview) else data)

    def digest(self) -> bytes:
        return bytes(self._state.finalize())


def _hashlib(name: str) -> Callable[[], Hasher]:
    return lambda: hashlib.new(name)


@dataclass(frozen=True)
class Algorithm:
    """One checksum algorithm as S3 names and encodes it."""

    #: The S3 spelling, e.g. ``CRC32C`` (``Content-MD5`` for the MD5 header).
    name: str
    #: The request/response field holding the value, e.g. ``checksum_crc32c``.
    field: str
    #: Digest length in bytes.
    digest_size: int
    #: Creates a fresh incremental hasher.
    new: Callable[[], Hasher]
    #: The ``gateway.v1.ChecksumAlgorithm`` enum value; 0 for Content-MD5, which has none.
    proto_value: int

    @property
    def s3_member(self) -> str:
        """The botocore parameter / response member, e.g. ``ChecksumCRC32C``."""
        return "ContentMD5" if self is CONTENT_MD5 else f"Checksum{self.name}"

    def compute(self, data: bytes | memoryview) -> bytes:
        hasher = self.new()
        hasher.update(data)
        return hasher.digest()


CRC32 = Algorithm("CRC32", "checksum_crc32", 4, lambda: _Crc(crt.crc32, 4), 1)
CRC32C = Algorithm("CRC32C", "checksum_crc32c", 4, lambda: _Crc(crt.crc32c, 4), 2)
CRC64NVME = Algorithm("CRC64NVME", "checksum_crc64nvme", 8, lambda: _Crc(crt.crc64nvme, 8), 3)
SHA1 = Algorithm("SHA1", "checksum_sha1", 20, _hashlib("sha1"), 4)
SHA256 = Algorithm("SHA256", "checksum_sha256", 32, _hashlib("sha256"), 5)
SHA512 = Algorithm("SHA512", "checksum_sha512", 64, _hashlib("sha512"), 6)
MD5 = Algorithm("MD5", "checksum_md5", 16, _hashlib("md5"), 7)
XXHASH64 = Algorithm(
    "XXHASH64", "checksum_xxhash64", 8, lambda: _XXHash(crt.XXHash.new_xxhash64()), 8
)
XXHASH3 = Algorithm(
    "XXHASH3", "checksum_xxhash3", 8, lambda: _XXHash(crt.XXHash.new_xxhash3_64()), 9
)
XXHASH128 = Algorithm(
    "XXHASH128", "checksum_xxhash128", 16, lambda: _XXHash(crt.XXHash.new_xxhash3_128()), 10
)
#: The Content-MD5 header: MD5 again, but its own field and its own S3 check (BadDigest).
CONTENT_MD5 = Algorithm("Content-MD5", "content_md5", 16, _hashlib("md5"), 0)

#: The x-amz-checksum-* algorithms, in the order of the ChecksumAlgorithm enum.
CHECKSUM_ALGORITHMS: tuple[Algorithm, ...] = (
    CRC32,
    CRC32C,
    CRC64NVME,
    SHA1,
    SHA256,
    SHA512,
    MD5,
    XXHASH64,
    XXHASH3,
    XXHASH128,
)
#: Every value a part may carry: the checksum algorithms and Content-MD5.
ALL: tuple[Algorithm, ...] = (CONTENT_MD5, *CHECKSUM_ALGORITHMS)
BY_NAME: dict[str, Algorithm] = {a.name: a for a in CHECKSUM_ALGORITHMS}
BY_PROTO: dict[int, Algorithm] = {a.proto_value: a for a in CHECKSUM_ALGORITHMS}
#: Algorithms whose part checksums S3 can combine into a FULL_OBJECT checksum.
FULL_OBJECT_CAPABLE = frozenset({CRC32, CRC32C, CRC64NVME})


def default_object_algorithm(directory_bucket: bool) -> Algorithm:
    """The checksum of an object written with WriteObject when its writer names none: S3's
    default, CRC64NVME (FULL_OBJECT); CRC32C in a directory bucket, S3 Express's default."""
    return CRC32C if directory_bucket else CRC64NVME


def encode(digest: bytes) -> str:
    """The base64 form S3 uses for a digest."""
    return base64.b64encode(digest).decode("ascii")


def decode(algorithm: Algorithm, value: str) -> bytes:
    """Decode a caller's base64 checksum, raising ValueError that says what is wrong."""
    try:
        digest = base64.b64decode(value.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError):
        raise ValueError(f"{algorithm.name} value is not valid base64") from None
    if len(digest) != algorithm.digest_size:
        raise ValueError(
            f"{algorithm.name} value decodes to {len(digest)} bytes; "
            f"a {algorithm.name} digest has {algorithm.digest_size}"
        )
    return digest


#: Bytes hashed to estimate an algorithm's speed on this machine.
_CALIBRATION_BYTES = 256 * 1024


@functools.cache
def seconds_per_byte(algorithm: Algorithm) -> float:
    """How long ``algorithm`` takes per byte here: the best of three passes over 256 KiB, measured
    once per process (about a millisecond for the slowest)."""
    sample = bytes(_CALIBRATION_BYTES)
    best = float("inf")
    for _ in range(3):
        hasher = algorithm.new()
        started = time.perf_counter()
        hasher.update(sample)
        best = min(best, time.perf_counter() - started)
    return best / _CALIBRATION_BYTES


class MultiHasher:
    """Feeds each chunk to several hashers at once."""

    __slots__ = ("_hashers", "seconds_per_byte")

    def __init__(self, algorithms: Iterable[Algorithm]) -> None:
        self._hashers = {a: a.new() for a in algorithms}
        #: The estimated cost of :meth:`update`, per byte.
        self.seconds_per_byte = sum(seconds_per_byte(a) for a in self._hashers)

    def update(self, data: bytes | memoryview) -> None:
        for hasher in self._hashers.values():
            hasher.update(data)

    def digests(self) -> dict[Algorithm, bytes]:
        return {a: h.digest() for a, h in self._hashers.items()}


def crc32c(data: bytes | memoryview) -> int:
    """The CRC32C of ``data`` as an integer: the per-message check of ``ChecksummedData``."""
    value: int = crt.crc32c(data)
    return value


_COMBINE: dict[Algorithm, Callable[[int, int, int], int]] = {
    CRC32: crt.combine_crc32,
    CRC32C: crt.combine_crc32c,
    CRC64NVME: crt.combine_crc64nvme,
}


def combine(algorithm: Algorithm, first: bytes, second: bytes, second_length: int) -> bytes:
    """The digest of A followed by B from the digests of A and B and B's length in bytes: what
    makes a FULL_OBJECT checksum from part checksums, without reading the parts again. Only the
    CRCs combine (:data:`FULL_OBJECT_CAPABLE`); KeyError for any other algorithm."""
    combined = _COMBINE[algorithm](
        int.from_bytes(first, "big"), int.from_bytes(second, "big"), second_length
    )
    return combined.to_bytes(algorithm.digest_size, "big")
