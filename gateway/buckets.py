"""Bucket and key names: S3's naming rules, and S3 Express One Zone directory buckets
(``BASE--ZONEID--x-s3``), their zones and the regions those belong to."""

from __future__ import annotations

import ipaddress
import re

from gateway.errors import InvalidRequest

#: S3's longest key, in UTF-8 bytes.
MAX_KEY_BYTES = 1024
#: Suffix of S3 Express One Zone directory bucket names.
DIRECTORY_BUCKET_SUFFIX = "--x-s3"

_BUCKET_RE = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")


_DIRECTORY_BUCKET_RE = re.compile(r"[a-z0-9][a-z0-9-]*--(?P<zone>[a-z0-9]+-az\d+)--x-s3")
_ZONE_RE = re.compile(r"(?P<geo>[a-z]{2})(?P<direction>ne|nw|se|sw|n|s|e|w|c)(?P<number>\d+)-az\d+")
_DIRECTIONS = {
    "n": "north",
    "s": "south",
    "e": "east",
    "w": "west",
    "c": "central",
    "ne": "northeast",
    "nw": "northwest",
    "se": "southeast",
    "sw": "southwest",
}


def is_directory_bucket(bucket: str) -> bool:
    return bucket.endswith(DIRECTORY_BUCKET_SUFFIX)


def directory_bucket_zone(bucket: str, field: str = "bucket") -> str:
    """The zone id of a directory bucket name ``base--zone--x-s3``, e.g. ``usw2-az1``."""
    match = _DIRECTORY_BUCKET_RE.fullmatch(bucket)
    if match is None:
        raise InvalidRequest(
            field, "a directory bucket name must be BASE--ZONEID--x-s3, e.g. logs--usw2-az1--x-s3"
        )
    return match.group("zone")


def zone_region(zone: str) -> str | None:
    """The region an AWS zone id belongs to (``usw2-az1`` -> ``us-west-2``), when it decodes."""
    match = _ZONE_RE.fullmatch(zone)
    if match is None:
        return None
    direction = _DIRECTIONS[match.group("direction")]
    return f"{match.group('geo')}-{direction}-{match.group('number')}"


def check_name(name: str, field: str = "bucket") -> None:
    """S3's bucket naming rules (general purpose and directory buckets)."""
    if not name:
        raise InvalidRequest(field, "is required")
    if not _BUCKET_RE.fullmatch(name):
        raise InvalidRequest(
            field,
            "must be 3 to 63 characters of lowercase letters, digits, dots and hyphens, "
            "beginning and ending with a letter or digit",
        )
    if ".." in name:
        raise InvalidRequest(field, "must not contain two adjacent periods")
    try:
        ipaddress.IPv4Address(name)
    except ValueError:
        return
    raise InvalidRequest(field, "must not be formatted as an IP address")


def check_key(value: str, field: str = "key") -> None:
    """S3's key rules: 1 to 1024 UTF-8 bytes."""
    if not value:
        raise InvalidRequest(field, "is required")
    if len(value.encode("utf-8")) > MAX_KEY_BYTES:
        raise InvalidRequest(field, f"must be at most {MAX_KEY_BYTES} UTF-8 bytes")
