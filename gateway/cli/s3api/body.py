"""upload-part's body: the part's bytes, its checksum as botocore computes it, and the UploadPart
stream that carries them.

The part streams: a header message, then the file in 1 MiB ``data`` messages read lazily, each
with its CRC32C. The whole part is never in memory.
"""

from __future__ import annotations

import io
import logging
import os
from collections.abc import Iterator
from typing import IO, Any

from gateway import checksums
from gateway.exits import UsageError
from gateway.units import MiB
from gateway.v1 import upload_service_pb2 as pb

log = logging.getLogger(__name__)

#: The size of the ``data`` messages of ``upload-part``.
CHUNK_SIZE = MiB


def open_body(body: str | bytes | None) -> IO[bytes]:
    """The part's bytes: the file at a path, or data; no body is an empty part."""
    if isinstance(body, str):
        try:
            return open(body, "rb")
        except OSError as exc:
            raise UsageError(f"Error parsing parameter '--body': {exc}") from None
    return io.BytesIO(body or b"")


def remaining_size(stream: IO[bytes]) -> int:
    start = stream.tell()
    size = stream.seek(0, os.SEEK_END) - start
    stream.seek(start)
    return size


def resolve_part_checksum(params: dict[str, Any], stream: IO[bytes]) -> None:
    """Compute the part's checksum as botocore does: nothing when a checksum value is given; the
    algorithm of --checksum-algorithm; else CRC32 unless AWS_REQUEST_CHECKSUM_CALCULATION is
    when_required."""
    if any(name.startswith("Checksum") and name != "ChecksumAlgorithm" for name in params):
        return
    name = params.get("ChecksumAlgorithm")
    if name is None:
        setting = os.environ.get("AWS_REQUEST_CHECKSUM_CALCULATION", "when_supported")
        if setting.lower() != "when_supported":
            return
        name = params["ChecksumAlgorithm"] = "CRC32"
    algorithm = checksums.BY_NAME.get(str(name).upper())
    if algorithm is None:
        raise UsageError(f"Unsupported checksum algorithm: {str(name).lower()}")
    params[algorithm.s3_member] = checksums.encode(file_digest(stream, algorithm))


def file_digest(stream: IO[bytes], algorithm: checksums.Algorithm) -> bytes:
    """The digest of the rest of ``stream``, read in chunks; the stream is rewound after."""
    start = stream.tell()
    hasher = algorithm.new()
    while chunk := stream.read(CHUNK_SIZE):
        hasher.update(chunk)
    stream.seek(start)
    return hasher.digest()


def part_messages(header: pb.UploadPartHeader, stream: IO[bytes]) -> Iterator[pb.UploadPartRequest]:
    """The UploadPart stream: the header, then the bytes in CHUNK_SIZE messages, read lazily."""
    yield pb.UploadPartRequest(header=header)
    sent = messages = 0
    while chunk := stream.read(CHUNK_SIZE):
        yield pb.UploadPartRequest(
            data=pb.ChecksummedData(content=chunk, crc32c=checksums.crc32c(chunk))
        )
        sent += len(chunk)
        messages += 1
    log.debug("Sent %d bytes in %d data messages", sent, messages)
