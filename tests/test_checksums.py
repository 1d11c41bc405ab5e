"""Checksums: known answers, incremental == one-shot, base64 validation."""

from __future__ import annotations

import base64
import hashlib
import os

import pytest

from gateway import checksums
from gateway.checksums import Algorithm, MultiHasher

CHECK = b"123456789"

#: Published check values.
KNOWN = [
    (checksums.CRC32, CHECK, 0xCBF43926.to_bytes(4, "big")),
    (checksums.CRC32C, CHECK, 0xE3069283.to_bytes(4, "big")),
    (checksums.CRC64NVME, CHECK, 0xAE8B14860A799888.to_bytes(8, "big")),
    (checksums.XXHASH64, b"", 0xEF46DB3751D8E999.to_bytes(8, "big")),
    (checksums.XXHASH3, b"", 0x2D06800538D394C2.to_bytes(8, "big")),
    (checksums.XXHASH128, b"", bytes.fromhex("99aa06d3014798d86001c324468d497f")),
    (checksums.SHA1, CHECK, hashlib.sha1(CHECK).digest()),
    (checksums.SHA256, CHECK, hashlib.sha256(CHECK).digest()),
    (checksums.SHA512, CHECK, hashlib.sha512(CHECK).digest()),
    (checksums.MD5, CHECK, hashlib.md5(CHECK).digest()),
    (checksums.CONTENT_MD5, CHECK, hashlib.md5(CHECK).digest()),
]


@pytest.mark.parametrize(
    ("algorithm", "data", "digest"), KNOWN, ids=lambda v: getattr(v, "name", "")
)
def test_known_answers(algorithm: Algorithm, data: bytes, digest: bytes) -> None:
    assert algorithm.compute(data) == digest
    assert len(digest) == algorithm.digest_size


def test_every_algorithm_has_a_known_answer() -> None:
    assert {a for a, _, _ in KNOWN} == set(checksums.ALL)


@pytest.mark.parametrize("algorithm", checksums.ALL, ids=lambda a: a.name)
def test_incremental_equals_one_shot(algorithm: Algorithm) -> None:
    data = os.urandom(100_003)
    hasher = algorithm.new()
    for start in range(0, len(data), 7_777):
        hasher.update(memoryview(data)[start : start + 7_777])
    assert hasher.digest() == algorithm.compute(data)


def test_multi_hasher_feeds_every_algorithm() -> None:
    data = os.urandom(10_000)
    multi = MultiHasher(checksums.ALL)
    multi.update(data[:3])
    multi.update(data[3:])
    assert multi.digests() == {a: a.compute(data) for a in checksums.ALL}


def test_enum_values_match_the_proto() -> None:
    from gateway.v1 import upload_service_pb2 as pb

    for algorithm in checksums.CHECKSUM_ALGORITHMS:
        assert (
            pb.ChecksumAlgorithm.Value(f"CHECKSUM_ALGORITHM_{algorithm.name}")
            == algorithm.proto_value
        )
        assert algorithm.field in pb.UploadPartHeader.DESCRIPTOR.fields_by_name
        assert algorithm.field in pb.UploadPartTrailer.DESCRIPTOR.fields_by_name
        assert algorithm.field in pb.UploadPartResponse.DESCRIPTOR.fields_by_name


def test_decode_accepts_the_right_length() -> None:
    value = base64.b64encode(b"\x01\x02\x03\x04").decode()
    assert checksums.decode(checksums.CRC32, value) == b"\x01\x02\x03\x04"


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("AAAA", "decodes to 3 bytes"),
        ("AAAAAAAAAAA=", "decodes to 8 bytes"),
        ("not base64", "not valid base64"),
        ("AAAAAA=", "not valid base64"),
        ("AAAAAA==\n", "not valid base64"),
        ("ÄÄÄÄÄÄ==", "not valid base64"),
    ],
)
def test_decode_rejects_malformed_values(value: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        checksums.decode(checksums.CRC32, value)


@pytest.mark.parametrize("algorithm", sorted(checksums.FULL_OBJECT_CAPABLE, key=lambda a: a.name))
def test_crcs_of_parts_combine_into_the_crc_of_the_whole(algorithm: checksums.Algorithm) -> None:
    first, second = os.urandom(1000), os.urandom(777)
    combined = checksums.combine(
        algorithm, algorithm.compute(first), algorithm.compute(second), len(second)
    )
    assert combined == algorithm.compute(first + second)


def test_crc32c_is_the_integer_of_the_crc32c_digest() -> None:
    data = os.urandom(100)
    assert checksums.crc32c(data).to_bytes(4, "big") == checksums.CRC32C.compute(data)
