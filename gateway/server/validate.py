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
from typing import Any

import grpc
from google.protobuf.message import Message

from gateway import buckets, checksums
from gateway.checksums import Algorithm
from gateway.convert import field_name, service_model
from gateway.errors import GatewayError, InvalidRequest, Reason
from gateway.v1 import upload_service_pb2 as pb

MAX_PART_NUMBER = 10_000
MAX_UPLOAD_ID_LENGTH = 1024
MAX_PAGE_SIZE = 1000
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]")
#: Header-bound strings checked for control characters in every request that has them.
_HEADER_FIELDS = (
    "expected_bucket_owner",
    "expected_source_bucket_owner",
    "cache_control",
    "content_disposition",
    "content_encoding",
    "content_language",
    "content_type",
    "website_redirect_location",
    "grant_full_control",
    "grant_read",
    "grant_read_acp",
    "grant_write_acp",
    "tagging",
    "ssekms_key_id",
    "ssekms_encryption_context",
    "copy_source",
    "copy_source_range",
    "copy_source_if_match",
    "copy_source_if_none_match",
    "if_match",
    "if_none_match",
)


def object_request(request: Any, region: str) -> None:
    """The checks of every request naming a bucket and a key (``region``: the gateway's)."""
    buckets.check_name(request.bucket)
    buckets.check_key(request.key)
    operation = request.DESCRIPTOR.name.removesuffix("Request").removesuffix("Header")
    header_strings(request, operation)
    if buckets.is_directory_bucket(request.bucket):
        directory_bucket_rules(request)
    bucket_region(request.bucket, region)


def header_strings(request: Message, operation: str) -> None:
    """No control characters in the strings that become HTTP headers, and S3's vocabulary for
    the fields that take one."""
    fields = request.DESCRIPTOR.fields_by_name
    no_control_characters(request, *(f for f in _HEADER_FIELDS if f in fields))
    vocabulary(request, operation)


def bucket_region(bucket: str, region: str) -> None:
    """A directory bucket must live in the region this gateway serves (``region``)."""
    if not buckets.is_directory_bucket(bucket):
        return
    zone = buckets.directory_bucket_zone(bucket)
    home = buckets.zone_region(zone)
    if home is not None and home != region:
        raise GatewayError(
            grpc.StatusCode.FAILED_PRECONDITION,
            Reason.WRONG_REGION,
            f"directory bucket {bucket} is in {home} (zone {zone}); this gateway serves "
            f"{region}: call a gateway configured for {home}",
            metadata={"bucketRegion": home, "gatewayRegion": region},
        )


def checksum_choice(algorithm: int, checksum_type: int) -> None:
    """A known algorithm, a known type, and FULL_OBJECT only for the CRCs."""
    if algorithm and algorithm not in checksums.BY_PROTO:
        raise InvalidRequest("checksum_algorithm", "is not a known algorithm")
    if checksum_type and checksum_type not in pb.ChecksumType.values():
        raise InvalidRequest("checksum_type", "is not a known checksum type")
    if checksum_type == pb.CHECKSUM_TYPE_FULL_OBJECT:
        chosen = checksums.BY_PROTO.get(algorithm)
        if chosen is None or chosen not in checksums.FULL_OBJECT_CAPABLE:
            raise InvalidRequest(
                "checksum_type", "FULL_OBJECT needs checksum_algorithm CRC32, CRC32C or CRC64NVME"
            )


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
