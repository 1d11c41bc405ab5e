"""Request validation: everything checked before S3 is touched.

Each check raises :class:`gateway.errors.InvalidRequest` naming the field and the rule, so a caller
learns exactly what to fix (INVALID_ARGUMENT with a ``BadRequest`` field violation).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass

from google.protobuf.message import Message

from gateway import checksums
from gateway.checksums import Algorithm
from gateway.convert import field_name, service_model
from gateway.errors import InvalidRequest

MAX_PART_NUMBER = 10_000
MAX_KEY_BYTES = 1024
MAX_UPLOAD_ID_LENGTH = 1024
MAX_PAGE_SIZE = 1000
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]")


def key(value: str, field: str = "key") -> None:
    if not value:
        raise InvalidRequest(field, "is required")
    if len(value.encode("utf-8")) > MAX_KEY_BYTES:
        raise InvalidRequest(field, f"must be at most {MAX_KEY_BYTES} UTF-8 bytes")


def upload_id(value: str, field: str = "upload_id") -> None:
    if not value:
        raise InvalidRequest(field, "is required")
    if len(value) > MAX_UPLOAD_ID_LENGTH or _CONTROL_RE.search(value):
        raise InvalidRequest(field, "is not a valid upload id")


def part_number(value: int, field: str = "part_number") -> None:
    if not 1 <= value <= MAX_PART_NUMBER:
        raise InvalidRequest(field, f"must be 1 to {MAX_PART_NUMBER}, got {value}")


def page_size(value: int, field: str) -> None:
    if not 0 <= value <= MAX_PAGE_SIZE:
        raise InvalidRequest(field, f"must be 0 (S3's default) to {MAX_PAGE_SIZE}")


def content_length(value: int, maximum: int) -> None:
    if not 0 <= value <= maximum:
        raise InvalidRequest("content_length", f"must be 0 to {maximum} bytes, got {value}")


def no_control_characters(message: Message, *fields: str) -> None:
    """Header-bound strings must not smuggle control characters into HTTP headers."""
    for name in fields:
        value = getattr(message, name)
        if isinstance(value, str) and _CONTROL_RE.search(value):
            raise InvalidRequest(name, "must not contain control characters")


def user_metadata(metadata: Mapping[str, str]) -> None:
    """User metadata travels as x-amz-meta-* headers: names and values must be header-safe."""
    for name, value in metadata.items():
        if not name or _CONTROL_RE.search(name + value):
            raise InvalidRequest(
                f"metadata[{name!r}]", "must be non-empty text without control characters"
            )


def vocabulary(message: Message, operation: str) -> None:
    """String fields from an S3 vocabulary (storage class, SSE, ACL…) must use S3's spelling."""
    input_shape = service_model().operation_model(operation).input_shape
    assert input_shape is not None
    fields = message.DESCRIPTOR.fields_by_name
    for member, shape in input_shape.members.items():
        allowed = getattr(shape, "enum", None)
        fd = fields.get(field_name(member))
        if not allowed or fd is None or fd.type != fd.TYPE_STRING:
            continue
        value = getattr(message, fd.name)
        if value and value not in allowed:
            raise InvalidRequest(fd.name, f"must be one of {', '.join(allowed)}; got {value!r}")


def checksum_value(algorithm: Algorithm, value: str, field: str) -> bytes:
    try:
        return checksums.decode(algorithm, value)
    except ValueError as exc:
        raise InvalidRequest(field, str(exc)) from None


def declared_checksums(message: Message, prefix: str = "") -> dict[Algorithm, bytes]:
    """Decode every checksum field set in ``message`` (Content-MD5 included where present)."""
    fields = message.DESCRIPTOR.fields_by_name
    found: dict[Algorithm, bytes] = {}
    for algorithm in checksums.ALL:
        if algorithm.field in fields:
            value = getattr(message, algorithm.field)
            if value:
                found[algorithm] = checksum_value(algorithm, value, prefix + algorithm.field)
    return found


@dataclass(frozen=True)
class SseCustomer:
    """A validated SSE-C triple (the key stays base64, as S3's header carries it)."""

    algorithm: str
    key_b64: str
    key_md5_b64: str


def sse_customer(message: Message, prefix: str = "") -> SseCustomer | None:
    """Check an SSE-C triple: all three or none, AES256, a 256-bit key whose MD5 matches."""
    algorithm = getattr(message, f"{prefix}sse_customer_algorithm")
    key_b64 = getattr(message, f"{prefix}sse_customer_key")
    key_md5 = getattr(message, f"{prefix}sse_customer_key_md5")
    if not (algorithm or key_b64 or key_md5):
        return None
    names = [f"{prefix}sse_customer_{n}" for n in ("algorithm", "key", "key_md5")]
    for name, value in zip(names, (algorithm, key_b64, key_md5), strict=True):
        if not value:
            raise InvalidRequest(name, "is required when any SSE-C field is given")
    if algorithm != "AES256":
        raise InvalidRequest(names[0], "must be AES256")
    raw_key = _b64(key_b64, names[1], "base64 of a 256-bit key")
    if len(raw_key) != 32:
        raise InvalidRequest(names[1], "must be base64 of a 256-bit (32-byte) key")
    md5 = _b64(key_md5, names[2], "base64 of the key's MD5")
    if md5 != hashlib.md5(raw_key).digest():
        raise InvalidRequest(names[2], "does not match the MD5 of sse_customer_key")
    return SseCustomer(algorithm, key_b64, key_md5)


def _b64(value: str, field: str, what: str) -> bytes:
    try:
        return base64.b64decode(value.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError):
        raise InvalidRequest(field, f"must be {what}") from None


#: What S3 Express One Zone refuses, by field: the rule named in the error.
_DIRECTORY_BUCKET_REFUSES = {
    "content_md5": "Content-MD5 is not supported for directory buckets",
    "checksum_md5": "MD5 checksums are not supported for directory buckets",
    "sse_customer_algorithm": "SSE-C is not supported for directory buckets",
    "sse_customer_key": "SSE-C is not supported for directory buckets",
    "sse_customer_key_md5": "SSE-C is not supported for directory buckets",
}


def directory_bucket_rules(message: Message) -> None:
    """S3 Express One Zone refuses MD5 and SSE-C; say so before sending anything."""
    fields = message.DESCRIPTOR.fields_by_name
    for name, rule in _DIRECTORY_BUCKET_REFUSES.items():
        if name in fields and getattr(message, name):
            raise InvalidRequest(name, rule)
    if getattr(message, "checksum_algorithm", 0) == checksums.MD5.proto_value:
        raise InvalidRequest("checksum_algorithm", _DIRECTORY_BUCKET_REFUSES["checksum_md5"])


def consecutive_part_numbers(numbers: list[int]) -> None:
    """Directory buckets complete only parts numbered 1, 2, 3… without gaps."""
    for index, number in enumerate(numbers, start=1):
        if number != index:
            raise InvalidRequest(
                f"parts[{index - 1}].part_number",
                f"directory buckets need part numbers consecutive from 1; expected {index}, "
                f"got {number}",
            )
