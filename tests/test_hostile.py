"""Hostile callers: random and malformed requests, floods of concurrent calls, stalled streams.

The property test sends random UploadPart streams (hostile header values, messages in any order,
wrong checksums, protobuf encodings the generated code never produces, and raw garbage bytes) and
checks every outcome against a model of the protocol written here from the proto's rules:

* the status is OK or one the API documents, never UNKNOWN or INTERNAL (the gateway's credentials
  are fine, so INTERNAL can only be a gateway bug), and no call hangs;
* OK only for a stream the model calls valid (a valid header first, then data totalling
  ``content_length``, every chunk CRC and declared checksum right, at most one trailer, last), and
  the part S3 then holds is exactly the bytes the model decoded;
* a refused stream never changes a part: after every example the parts of a real upload (ListParts
  straight from moto) equal what the OK outcomes alone put there.

Which bytes a raw message carries is decided by protobuf's own parser (upb) in the test: the model
parses each message exactly as a protobuf-conformant server must, so the gateway's own wire decoder
(gateway/wire.py) is checked against it.

The other tests: random bytes as every unary request; an oversized message; 200 streams and 200
unary calls at once, some cancelled (admission limits, nothing committed by a cancelled stream,
nothing left in flight, the gateway healthy afterwards); streams stalled past their deadline.

Every call goes through grpc's synchronous API: grpc.aio clients can report a spurious INTERNAL
for a client-streaming call the server ends early (grpc/grpc#36066).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import ipaddress
import itertools
import re
import threading
import time
import uuid
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import boto3
import grpc
import pytest
from awscrt import checksums as crt
from google.protobuf.message import DecodeError
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.v1 import upload_service_pb2 as pb
from gateway.v1 import upload_service_pb2_grpc as pb_grpc
from tests.helpers import GatewayThread, data_message, header_message, trailer_message

C = grpc.StatusCode
UPLOAD_PART = "/gateway.v1.UploadService/UploadPart"
#: Seconds one call may take before the test calls it a hang (moto answers in milliseconds).
CALL_TIMEOUT = 20.0
#: S3's largest part, and the default GATEWAY_MAX_PART_SIZE that the moto_gateway fixture keeps.
MAX_PART_SIZE = 5 * 1024**3

#: UploadPart's documented codes (proto comments), plus the codes the S3 error table and the
#: routing checks of gateway/errors.py and gateway/service.py give any call (FAILED_PRECONDITION,
#: ABORTED), those of gateway/security.py (UNAUTHENTICATED; RESOURCE_EXHAUSTED, which grpc also
#: gives an oversized message). INTERNAL is documented only for rejected gateway credentials,
#: which the moto gateway never has; UNKNOWN never.
ALLOWED_ERRORS = frozenset(
    {
        C.UNAUTHENTICATED,
        C.INVALID_ARGUMENT,
        C.OUT_OF_RANGE,
        C.NOT_FOUND,
        C.PERMISSION_DENIED,
        C.UNAVAILABLE,
        C.DEADLINE_EXCEEDED,
        C.CANCELLED,
        C.FAILED_PRECONDITION,
        C.ABORTED,
        C.RESOURCE_EXHAUSTED,
    }
)


# --- checksums, computed here independently of gateway/checksums.py ---------------------------


def _xxhash(factory: Callable[[], Any]) -> Callable[[bytes], bytes]:
    def digest(data: bytes) -> bytes:
        state = factory()
        state.update(data)
        return bytes(state.finalize())

    return digest


@dataclass(frozen=True)
class Algo:
    proto_value: int
    field: str
    size: int
    digest: Callable[[bytes], bytes]


ALGOS = (
    Algo(1, "checksum_crc32", 4, lambda d: zlib.crc32(d).to_bytes(4, "big")),
    Algo(2, "checksum_crc32c", 4, lambda d: crt.crc32c(d).to_bytes(4, "big")),
    Algo(3, "checksum_crc64nvme", 8, lambda d: crt.crc64nvme(d).to_bytes(8, "big")),
    Algo(4, "checksum_sha1", 20, lambda d: hashlib.sha1(d).digest()),
    Algo(5, "checksum_sha256", 32, lambda d: hashlib.sha256(d).digest()),
    Algo(6, "checksum_sha512", 64, lambda d: hashlib.sha512(d).digest()),
    Algo(7, "checksum_md5", 16, lambda d: hashlib.md5(d).digest()),
    Algo(8, "checksum_xxhash64", 8, _xxhash(crt.XXHash.new_xxhash64)),
    Algo(9, "checksum_xxhash3", 8, _xxhash(crt.XXHash.new_xxhash3_64)),
    Algo(10, "checksum_xxhash128", 16, _xxhash(crt.XXHash.new_xxhash3_128)),
)
ALGO_BY_VALUE = {a.proto_value: a for a in ALGOS}
ALGO_BY_FIELD = {a.field: a for a in ALGOS}
#: Content-MD5: the header field ``content_md5``, checked like a checksum.
CONTENT_MD5 = Algo(0, "content_md5", 16, lambda d: hashlib.md5(d).digest())


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


def decode_b64(value: str, size: int) -> bytes | None:
    """A caller's base64 digest of ``size`` bytes, or None when it is not one."""
    try:
        raw = base64.b64decode(value.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError):
        return None
    return raw if len(raw) == size else None


# --- the model: what the gateway must do with a stream --------------------------------------


_BUCKET_RE = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]")


def bucket_ok(name: str) -> bool:
    """S3's general purpose bucket naming rules. Directory bucket names (``*--x-s3``) are never
    valid here: the generator only makes malformed ones and ones in another region."""
    if not _BUCKET_RE.fullmatch(name) or ".." in name or name.endswith("--x-s3"):
        return False
    try:
        ipaddress.IPv4Address(name)
    except ValueError:
        return True
    return False


def header_problem(h: pb.UploadPartHeader) -> str | None:
    """Why the header is invalid (the gateway must refuse before S3), or None."""
    if not bucket_ok(h.bucket):
        return "bucket"
    if not h.key or len(h.key.encode()) > 1024:
        return "key"
    if not h.upload_id or len(h.upload_id) > 1024 or _CONTROL_RE.search(h.upload_id):
        return "upload_id"
    if not 1 <= h.part_number <= 10_000:
        return "part_number"
    if h.HasField("content_length") and not 0 <= h.content_length <= MAX_PART_SIZE:
        return "content_length"
    if h.checksum_algorithm and h.checksum_algorithm not in ALGO_BY_VALUE:
        return "checksum_algorithm"
    if _CONTROL_RE.search(h.expected_bucket_owner):
        return "expected_bucket_owner"
    if h.request_payer not in ("", "requester"):
        return "request_payer"
    sse = (h.sse_customer_algorithm, h.sse_customer_key, h.sse_customer_key_md5)
    if any(sse):
        if not all(sse) or h.sse_customer_algorithm != "AES256":
            return "sse_customer"
        key = decode_b64(h.sse_customer_key, 32)
        if key is None or decode_b64(h.sse_customer_key_md5, 16) != hashlib.md5(key).digest():
            return "sse_customer"
    for algo in (CONTENT_MD5, *ALGOS):
        value = getattr(h, algo.field)
        if value and decode_b64(value, algo.size) is None:
            return algo.field
    return None


@dataclass
class Verdict:
    """The model's judgement of one stream."""

    #: None for a valid stream; else where it is wrong: "stream start", "header", "stream".
    stage: str | None
    why: str = ""
    header: pb.UploadPartHeader | None = None
    content: bytes = b""


def judge(raws: list[bytes]) -> Verdict:
    """Judge a stream of raw request messages by the proto's rules."""
    messages = []
    for index, raw in enumerate(raws):
        try:
            messages.append(pb.UploadPartRequest.FromString(raw))
        except DecodeError:
            stage = "stream start" if index == 0 else "stream"
            return Verdict(stage, f"message {index} is not valid protobuf")
    if not messages or messages[0].WhichOneof("message") != "header":
        return Verdict("stream start", "the first message is not a header")
    header = messages[0].header
    problem = header_problem(header)
    if problem is not None:
        return Verdict("header", problem, header)
    announced = ALGO_BY_VALUE.get(header.checksum_algorithm)
    expected: dict[str, bytes] = {}
    for algo in (CONTENT_MD5, *ALGOS):
        if getattr(header, algo.field):
            expected[algo.field] = decode_b64(getattr(header, algo.field), algo.size) or b""
    content = bytearray()
    trailer_seen = False
    for index, message in enumerate(messages[1:], start=1):
        kind = message.WhichOneof("message")
        if kind == "data":
            if trailer_seen:
                return Verdict("stream", f"data after the trailer (message {index})", header)
            data = message.data
            if data.HasField("crc32c") and crt.crc32c(data.content) != data.crc32c:
                return Verdict("stream", f"wrong crc32c on message {index}", header)
            content += data.content
        elif kind == "trailer":
            if trailer_seen:
                return Verdict("stream", "a second trailer", header)
            trailer_seen = True
            for algo in ALGOS:
                value = getattr(message.trailer, algo.field)
                if not value:
                    continue
                digest = decode_b64(value, algo.size)
                if digest is None or algo is not announced:
                    return Verdict("stream", f"bad trailer.{algo.field}", header)
                if expected.get(algo.field, digest) != digest:
                    return Verdict("stream", "trailer differs from header", header)
                expected[algo.field] = digest
        else:
            return Verdict("stream", f"message {index} is a {kind or 'empty message'}", header)
    body = bytes(content)
    if header.HasField("content_length") and header.content_length != len(body):
        return Verdict("stream", "length differs from content_length", header, body)
    for name, digest in expected.items():
        algo = CONTENT_MD5 if name == CONTENT_MD5.field else ALGO_BY_FIELD[name]
        if algo.digest(body) != digest:
            return Verdict("stream", f"wrong {name}", header, body)
    return Verdict(None, "", header, body)


# --- hostile encodings ------------------------------------------------------------------------


def varint(value: int, pad: int = 0) -> bytes:
    """A protobuf varint, optionally padded with ``pad`` redundant continuation bytes."""
    groups = [value & 0x7F]
    while value := value >> 7:
        groups.append(value & 0x7F)
    groups += [0] * pad
    return bytes(g | 0x80 for g in groups[:-1]) + bytes(groups[-1:])


def ld(tag: int, payload: bytes, pad: int = 0) -> bytes:
    """A length-delimited field: tag byte, (padded) length, payload."""
    return bytes([tag]) + varint(len(payload), pad) + payload


def crc_field(value: int) -> bytes:
    return b"\x15" + value.to_bytes(4, "little")


#: How a data message is put on the wire. The test's protobuf parser decides what each means.
DATA_STYLES = (
    "canonical",
    "crc first",
    "padded lengths",
    "two contents",
    "two data fields",
    "unknown field",
    "header then data",
    "data then header",
    "data then trailer",
)
#: The styles that encode exactly the given content and crc32c.
VALID_DATA_STYLES = (
    "canonical",
    "crc first",
    "padded lengths",
    "two contents",
    "unknown field",
    "header then data",
)


def encode_data(content: bytes, crc: int | None, style: str, junk: bytes) -> bytes:
    crc_bytes = b"" if crc is None else crc_field(crc)
    if style == "canonical":
        return data_message(content, crc).SerializeToString()
    if style == "crc first":
        return ld(0x12, crc_bytes + ld(0x0A, content))
    if style == "padded lengths":
        return ld(0x12, ld(0x0A, content, pad=2) + crc_bytes, pad=1)
    if style == "two contents":
        return ld(0x12, ld(0x0A, junk) + crc_bytes + ld(0x0A, content))
    if style == "two data fields":
        # protobuf merges: content from the second, crc32c from whichever set it last.
        first = ld(0x0A, junk) + crc_field(crt.crc32c(junk) ^ 1)
        return ld(0x12, first) + ld(0x12, ld(0x0A, content) + crc_bytes)
    if style == "unknown field":
        return ld(0x12, ld(0x0A, content) + crc_bytes + b"\x78\x01") + b"\xa0\x06\x2a"
    if style == "header then data":
        return ld(0x0A, ld(0x0A, b"junk-bucket")) + ld(0x12, ld(0x0A, content) + crc_bytes)
    if style == "data then header":
        return ld(0x12, ld(0x0A, content) + crc_bytes) + ld(0x0A, ld(0x12, b"junk-key"))
    if style == "data then trailer":
        return ld(0x12, ld(0x0A, content) + crc_bytes) + ld(0x1A, b"")
    raise AssertionError(style)


# --- the strategies ------------------------------------------------------------------------


@dataclass(frozen=True)
class Real:
    """The multipart upload in moto that the examples write to."""

    bucket: str
    key: str
    upload_id: str


@dataclass
class Scenario:
    """One UploadPart stream: raw request messages, and how they were made (for reading)."""

    raws: list[bytes]
    made: list[str] = field(default_factory=list)


def often(good: st.SearchStrategy[Any], bad: st.SearchStrategy[Any], bad_in: int = 5) -> Any:
    """``good`` most of the time, ``bad`` about once in ``bad_in`` draws."""
    return st.integers(0, bad_in - 1).flatmap(lambda n: bad if n == 0 else good)


HOSTILE_TEXT = st.one_of(
    st.text(max_size=40),
    st.text(alphabet="abc019.-_/ A\x00\r\n\x7f", max_size=70),
    st.sampled_from(["", " ", "\x00", "\r\n", "ü", "\U0001f600", "a" * 1025, "é" * 513]),
)
HOSTILE_BUCKETS = st.one_of(
    HOSTILE_TEXT,
    st.from_regex(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]", fullmatch=True),
    st.sampled_from(
        [
            "ab",
            "a" * 64,
            "a..b",
            "192.168.1.1",
            "Upper-case",
            "bucket-",
            "-bucket",
            "bad--x-s3",
            "logs--usw2-az1--x-s3",  # a directory bucket in another region: WRONG_REGION
            "logs--euc1-az2--x-s3",
            f"missing-{uuid.uuid4().hex}",
        ]
    ),
).filter(
    # Well-formed directory buckets of this region (or of no decodable region) would be sent to
    # AWS's real zonal endpoints; the hand-picked ones above are the only directory names used.
    lambda b: (
        not b.endswith("--x-s3")
        or b in {"bad--x-s3", "logs--usw2-az1--x-s3", "logs--euc1-az2--x-s3"}
    )
)
HOSTILE_KEYS = st.one_of(
    HOSTILE_TEXT.filter(bool),
    st.sampled_from(
        ["..", "../x", "a/../..", "./", "a/./b", "?uploads", "%2F", "k" * 1024, "é" * 512]
    ),
)
HOSTILE_UPLOAD_IDS = st.one_of(
    HOSTILE_TEXT,
    st.text(alphabet="abcdefABCDEF0123456789-_.~", min_size=1, max_size=100),
    st.just("u" * 1024),
)
HOSTILE_PART_NUMBERS = st.sampled_from([0, -1, -(2**31), 2**31 - 1, 10_000, 10_001, 9_999])
GARBAGE_B64 = st.one_of(
    st.text(max_size=30),
    st.sampled_from(["====", "AAAA", "AAA", "A", "not base64!", "\x00", "ü", b64(b"x" * 3)]),
    st.binary(max_size=70).map(b64),
)


def wrong_checksum(algo: Algo, content: bytes) -> st.SearchStrategy[str]:
    """A well-formed digest of other bytes."""
    return st.just(b64(algo.digest(content + b"!")))


_SSE_KEY = b"k" * 32
GOOD_SSE = {
    "sse_customer_algorithm": "AES256",
    "sse_customer_key": b64(_SSE_KEY),
    "sse_customer_key_md5": b64(hashlib.md5(_SSE_KEY).digest()),
}
HOSTILE_SSE = st.one_of(
    st.just(GOOD_SSE | {"sse_customer_algorithm": "aws:kms"}),
    st.just(GOOD_SSE | {"sse_customer_key_md5": b64(hashlib.md5(b"other").digest())}),
    st.just(GOOD_SSE | {"sse_customer_key": b64(b"short")}),
    st.just({"sse_customer_key": b64(_SSE_KEY)}),
    st.fixed_dictionaries(
        {},
        optional={
            "sse_customer_algorithm": HOSTILE_TEXT,
            "sse_customer_key": GARBAGE_B64,
            "sse_customer_key_md5": GARBAGE_B64,
        },
    ),
)


@st.composite
def headers(draw: st.DrawFn, real: Real, content: bytes, flaws: set[str]) -> dict[str, Any]:
    """Header fields for ``content``: a valid header for the real upload, unless ``flaws`` has
    "fields" (malformed or out-of-range fields, refused before S3), "length" or "checksums"
    (well-formed but wrong: a content_length or checksum the stream's bytes will not match)."""
    bad_fields = "fields" in flaws

    def pick(
        good: st.SearchStrategy[Any], bad: st.SearchStrategy[Any], bad_in: int, when: bool
    ) -> Any:
        return draw(often(good, bad, bad_in) if when else good)

    fields: dict[str, Any] = {
        "bucket": pick(st.just(real.bucket), HOSTILE_BUCKETS, 5, bad_fields),
        "key": pick(st.just(real.key), HOSTILE_KEYS, 5, bad_fields),
        "upload_id": pick(st.just(real.upload_id), HOSTILE_UPLOAD_IDS, 5, bad_fields),
        "part_number": pick(st.sampled_from([1, 2, 3]), HOSTILE_PART_NUMBERS, 5, bad_fields),
    }
    good_length = st.sampled_from([None, len(content)])
    wrong_length = st.sampled_from([0, len(content) + 1, max(len(content) - 1, 0)])
    bad_length = st.one_of(
        st.sampled_from([-1, MAX_PART_SIZE + 1, 2**63 - 1, -(2**63)]),
        st.integers(-(2**63), 2**63 - 1),
    )
    length = pick(good_length, wrong_length, 2, "length" in flaws)
    length = pick(st.just(length), bad_length, 5, bad_fields)
    if length is not None:
        fields["content_length"] = length
    algorithm = pick(
        often(st.just(0), st.sampled_from(range(1, 11)), bad_in=2),
        st.sampled_from([11, 99, -1, 2**31 - 1]),
        6,
        bad_fields,
    )
    if algorithm:
        fields["checksum_algorithm"] = algorithm
    for algo in draw(st.lists(st.sampled_from((CONTENT_MD5, *ALGOS)), max_size=2, unique=True)):
        right = st.just(b64(algo.digest(content)))
        value = pick(right, wrong_checksum(algo, content), 2, "checksums" in flaws)
        fields[algo.field] = pick(st.just(value), GARBAGE_B64, 4, bad_fields)
    if draw(st.integers(0, 7)) == 0:
        fields |= pick(st.just(GOOD_SSE), HOSTILE_SSE, 1, bad_fields)
    if draw(st.integers(0, 7)) == 0:
        fields["request_payer"] = pick(st.just("requester"), HOSTILE_TEXT, 2, bad_fields)
    if draw(st.integers(0, 7)) == 0:
        fields["expected_bucket_owner"] = pick(st.just("123456789012"), HOSTILE_TEXT, 2, bad_fields)
    return fields


@st.composite
def trailers(
    draw: st.DrawFn, header: dict[str, Any], content: bytes, hostile: bool
) -> bytes | None:
    kinds = ["none", "none", "announced", "announced", "empty"] + ["other"] * hostile
    kind = draw(st.sampled_from(kinds))
    announced = ALGO_BY_VALUE.get(header.get("checksum_algorithm", 0))
    if kind == "none" or (kind == "announced" and announced is None and not hostile):
        return None
    if kind == "empty":
        return trailer_message().SerializeToString()
    algo = announced if kind == "announced" and announced else draw(st.sampled_from(ALGOS))
    right = st.just(b64(algo.digest(content)))
    wrong = st.one_of(wrong_checksum(algo, content), GARBAGE_B64)
    value = draw(often(right, wrong, 3) if hostile else right)
    return trailer_message(**{algo.field: value}).SerializeToString()


#: What may be wrong with a hostile stream.
FLAWS = ("fields", "length", "checksums", "crc", "encoding", "trailer", "order")
MUTATIONS = (
    "drop first",
    "drop one",
    "duplicate one",
    "swap two",
    "insert empty",
    "insert garbage",
    "insert header",
    "insert trailer",
    "truncate one",
    "flip a byte",
    "join two",
)


def mutate(draw: st.DrawFn, raws: list[bytes], mutation: str, header: bytes) -> list[bytes]:
    raws = list(raws)

    def index(extra: int = 0) -> int:
        return draw(st.integers(0, max(len(raws) - 1 + extra, 0)))

    def after_header() -> int:
        """Where to insert: mostly after the first message, sometimes before it."""
        return draw(often(st.integers(1, max(len(raws), 1)), st.just(0), bad_in=4))

    if mutation == "insert empty":
        raws.insert(after_header(), b"")
    elif mutation == "insert garbage":
        raws.insert(after_header(), draw(st.binary(min_size=1, max_size=40)))
    elif mutation == "insert header":
        raws.insert(after_header(), header)
    elif mutation == "insert trailer":
        raws.insert(after_header(), trailer_message().SerializeToString())
    elif not raws:
        return raws
    elif mutation == "drop first":
        raws.pop(0)
    elif mutation == "drop one":
        raws.pop(index())
    elif mutation == "duplicate one":
        i = index()
        raws.insert(i, raws[i])
    elif mutation == "swap two":
        i, j = index(), index()
        raws[i], raws[j] = raws[j], raws[i]
    elif mutation == "truncate one":
        i = index()
        raws[i] = raws[i][: draw(st.integers(0, max(len(raws[i]) - 1, 0)))]
    elif mutation == "flip a byte":
        i = index()
        if raws[i]:
            at = draw(st.integers(0, len(raws[i]) - 1))
            flipped = raws[i][at] ^ draw(st.integers(1, 255))
            raws[i] = raws[i][:at] + bytes([flipped]) + raws[i][at + 1 :]
    elif mutation == "join two" and len(raws) > 1:
        i = draw(st.integers(0, len(raws) - 2))
        raws[i : i + 2] = [raws[i] + raws[i + 1]]
    return raws


@st.composite
def scenarios(draw: st.DrawFn, real: Real) -> Scenario:
    # A third of the streams are valid by construction (in varied encodings), some valid ones
    # name an upload that does not exist, the others get hostile values, orders and bytes.
    mode = draw(st.sampled_from(["valid", "valid", "misdirected", "hostile", "hostile", "raw"]))
    if mode == "raw":
        # Garbage, possibly after a valid header so that it reaches the data phase.
        raws = draw(st.lists(st.binary(max_size=64), max_size=5))
        if draw(st.booleans()):
            part = draw(st.sampled_from([1, 2, 3]))
            header = header_message(
                bucket=real.bucket, key=real.key, upload_id=real.upload_id, part_number=part
            )
            raws.insert(0, header.SerializeToString())
        return Scenario(raws, ["raw"])
    hostile = mode == "hostile"
    content = draw(st.one_of(st.binary(max_size=64), st.binary(min_size=1000, max_size=4096)))
    # A hostile stream has one or two kinds of flaw, so that each is often the only one.
    flaws: set[str] = (
        draw(st.sets(st.sampled_from(FLAWS), min_size=1, max_size=2)) if hostile else set()
    )
    fields = draw(headers(real, content, flaws))
    if mode == "misdirected":
        # A valid stream for an upload or a bucket that does not exist.
        name = draw(st.text(alphabet="abcdef0123456789", min_size=8, max_size=20))
        field_name = draw(st.sampled_from(["upload_id", "bucket"]))
        fields[field_name] = f"missing-{name}"
    header = header_message(**fields).SerializeToString()
    made = [f"{mode} {sorted(flaws)} header {fields}"]
    header_styles = ["canonical"] * 4 + ["unknown field"] + ["merged"] * ("encoding" in flaws)
    header_style = draw(st.sampled_from(header_styles))
    if header_style == "merged":
        # Two header fields in one message: protobuf merges them, the junk fields survive.
        junk = header_message(content_md5=b64(b"x" * 16)).SerializeToString()
        header = junk + header
    elif header_style == "unknown field":
        header = header + b"\xf8\x3f\x01"
    made.append(f"header encoded {header_style}")
    # Split the part into chunks, each with no CRC, its CRC or a wrong one.
    cuts = sorted(draw(st.lists(st.integers(0, len(content)), max_size=4)))
    bounds = [0, *cuts, len(content)]
    raws = [header]
    crc_kinds = st.sampled_from(["right", "wrong"] if "crc" in flaws else ["right"])
    styles = st.sampled_from(DATA_STYLES if "encoding" in flaws else VALID_DATA_STYLES)
    for start, end in itertools.pairwise(bounds):
        chunk = content[start:end]
        crc_kind = draw(often(st.just("none"), crc_kinds, bad_in=3))
        crc = {"none": None, "right": crt.crc32c(chunk), "wrong": crt.crc32c(chunk) ^ 0x80}[
            crc_kind
        ]
        style = draw(often(st.just("canonical"), styles, bad_in=3))
        junk = draw(st.binary(max_size=8))
        raws.append(encode_data(chunk, crc, style, junk))
        made.append(f"data [{start}:{end}] crc {crc_kind} encoded {style}")
    trailer = draw(trailers(fields, content, "trailer" in flaws))
    if trailer is not None:
        raws.append(trailer)
        made.append("trailer")
    if "order" in flaws:
        mutations = draw(st.lists(st.sampled_from(MUTATIONS), min_size=1, max_size=3))
        for mutation in mutations:
            raws = mutate(draw, raws, mutation, header)
        made.extend(mutations)
    return Scenario(raws, made)


# --- fixtures and helpers ------------------------------------------------------------------


@pytest.fixture(scope="module")
def s3_client(moto_endpoint: str) -> Any:
    return boto3.client("s3", endpoint_url=moto_endpoint, region_name="us-east-1")


def new_upload(s3_client: Any, key: str) -> Real:
    bucket = f"hostile-{uuid.uuid4().hex[:16]}"
    s3_client.create_bucket(Bucket=bucket)
    upload_id = s3_client.create_multipart_upload(Bucket=bucket, Key=key)["UploadId"]
    return Real(bucket, key, upload_id)


@pytest.fixture(scope="module")
def channel(gateway_address: str) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(gateway_address) as ch:
        yield ch


def parts(s3_client: Any, real: Real) -> dict[int, tuple[str, int]]:
    response = s3_client.list_parts(Bucket=real.bucket, Key=real.key, UploadId=real.upload_id)
    return {p["PartNumber"]: (p["ETag"], p["Size"]) for p in response.get("Parts", [])}


def etag(content: bytes) -> str:
    """The ETag moto (and S3, without SSE-KMS) gives a part: the MD5 of its bytes."""
    return f'"{hashlib.md5(content).hexdigest()}"'


def healthy(channel: grpc.Channel) -> None:
    response = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
    assert response.status == health_pb2.HealthCheckResponse.SERVING


def normal_part(channel: grpc.Channel, real: Real, part_number: int, content: bytes) -> str:
    """A plain valid UploadPart; must succeed quickly. Returns the ETag."""
    stub = pb_grpc.UploadServiceStub(channel)
    messages = [
        header_message(
            bucket=real.bucket,
            key=real.key,
            upload_id=real.upload_id,
            part_number=part_number,
            content_length=len(content),
        ),
        data_message(content),
    ]
    response = stub.UploadPart(iter(messages), timeout=5)
    assert response.etag == etag(content)
    return str(response.etag)


def inflight_streams(running: GatewayThread) -> float:
    value: float = running.gateway.metrics.inflight_streams._value.get()
    return value


def wait_until(
    condition: Callable[[], bool], timeout: float, what: str, detail: Callable[[], Any] = str
) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting until {what}: {detail()}")
        time.sleep(0.02)


# --- the tests -----------------------------------------------------------------------------


def test_random_upload_part_streams_never_fail_badly_or_commit_invalid_parts(
    moto_gateway: GatewayThread, channel: grpc.Channel, s3_client: Any
) -> None:
    """The property of the module docstring, over random streams; then the gateway is healthy,
    serves a normal part, and holds no stream, task or buffer byte."""
    assert moto_gateway.settings.max_part_size == MAX_PART_SIZE  # as the model assumes
    real = new_upload(s3_client, "hostile/ünïcødé object.bin")
    upload_part = channel.stream_unary(
        UPLOAD_PART,
        request_serializer=lambda raw: raw,
        response_deserializer=pb.UploadPartResponse.FromString,
    )
    seen: dict[str, int] = {}

    def plain(h: pb.UploadPartHeader) -> bool:
        """A header whose valid stream S3 (moto) must take if the upload exists: the real key
        (moto ignores the key, a strange one may not even reach the bucket), no SSE-C for an
        upload created without, no expected owner."""
        return h.key == real.key and not h.sse_customer_key and not h.expected_bucket_owner

    @settings(
        max_examples=150,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(scenario=scenarios(real))
    def check(scenario: Scenario) -> None:
        verdict = judge(scenario.raws)
        # Each example checks against the parts it found, so that it replays alike.
        expected_parts = parts(s3_client, real)
        started = time.monotonic()
        response: pb.UploadPartResponse | None = None
        try:
            response = upload_part(iter(scenario.raws), timeout=CALL_TIMEOUT)
            code, details = C.OK, ""
        except grpc.RpcError as error:
            code, details = error.code(), error.details()
        elapsed = time.monotonic() - started
        outcome = f"{code.name} {details!r} for a stream the model judges {verdict}"
        seen[code.name] = seen.get(code.name, 0) + 1

        assert code is C.OK or code in ALLOWED_ERRORS, outcome
        assert elapsed < CALL_TIMEOUT * 0.9, f"the call hung for {elapsed:.1f} s: {outcome}"
        if verdict.stage in ("stream start", "header"):
            # Refused before anything reaches S3.
            assert code in (C.INVALID_ARGUMENT, C.FAILED_PRECONDITION), outcome
        elif verdict.stage == "stream":
            assert code in (C.INVALID_ARGUMENT, C.OUT_OF_RANGE), outcome

        h = verdict.header
        targets_real = h is not None and h.bucket == real.bucket and h.upload_id == real.upload_id
        if code is C.OK:
            assert verdict.stage is None, outcome
            assert h is not None and targets_real, outcome  # moto ignores the key
            assert response is not None and response.etag == etag(verdict.content), outcome
            expected_parts[h.part_number] = (response.etag, len(verdict.content))
        elif verdict.stage is None and h is not None and plain(h):
            if targets_real:
                raise AssertionError(f"a valid stream was refused: {outcome}")
            # Real S3 answers NoSuchUpload; moto's UploadPart fails on an unknown upload id with
            # HTTP 500 (a KeyError inside moto), which the gateway rightly calls UNAVAILABLE.
            wrong = {C.NOT_FOUND} if h.bucket != real.bucket else {C.NOT_FOUND, C.UNAVAILABLE}
            assert code in wrong, outcome
        # Nothing but an OK changes a part: no refused stream left bytes behind.
        assert parts(s3_client, real) == expected_parts, outcome

    check()
    print(f"outcomes: {seen}")
    # Something was committed and something was refused, or the test proved little.
    assert seen.get("OK", 0) >= 5 and seen.get("INVALID_ARGUMENT", 0) >= 5, seen
    # And the gateway is still fine.
    healthy(channel)
    normal_part(channel, real, 4, b"still alive")
    wait_until(lambda: inflight_streams(moto_gateway) == 0, 5, "no stream is in flight")
    wait_until(lambda: moto_gateway.call_tasks() == set(), 5, "no call task is left")
    assert moto_gateway.gateway.metrics.buffer_bytes._value.get() == 0


UNARY_METHODS = {
    m.name: getattr(pb, m.output_type.name)
    for m in pb.DESCRIPTOR.services_by_name["UploadService"].methods
    if not m.client_streaming
}


def test_garbage_unary_requests_are_refused_cleanly(
    moto_gateway: GatewayThread, channel: grpc.Channel
) -> None:
    """Random bytes as the request of every unary method: a clean refusal (or, for bytes that
    happen to decode, S3's answer), never UNKNOWN or INTERNAL."""
    seen: dict[str, int] = {}

    @settings(max_examples=60, deadline=None, database=None)
    @given(
        method=st.sampled_from(sorted(UNARY_METHODS)),
        raw=st.one_of(
            st.binary(max_size=80),
            st.binary(max_size=40).map(lambda b: b"\x0a\x05" + b),  # a bucket, then garbage
        ),
    )
    def check(method: str, raw: bytes) -> None:
        call = channel.unary_unary(
            f"/gateway.v1.UploadService/{method}",
            request_serializer=lambda r: r,
            response_deserializer=UNARY_METHODS[method].FromString,
        )
        try:
            call(raw, timeout=CALL_TIMEOUT)
            code, details = C.OK, ""
        except grpc.RpcError as error:
            code, details = error.code(), error.details()
        seen[code.name] = seen.get(code.name, 0) + 1
        assert code is C.OK or code in ALLOWED_ERRORS, f"{method}: {code.name} {details!r}"

    check()
    assert seen.get("INVALID_ARGUMENT", 0) >= 10, seen
    healthy(channel)


def test_an_oversized_message_is_refused_and_commits_nothing(
    moto_gateway: GatewayThread, channel: grpc.Channel, s3_client: Any
) -> None:
    """A data message larger than GATEWAY_MAX_MESSAGE_SIZE: grpc refuses it (RESOURCE_EXHAUSTED)
    and the part is not committed, even though its header announced exactly that length."""
    real = new_upload(s3_client, "hostile/oversized.bin")
    content = b"o" * (moto_gateway.settings.max_message_size + 1)
    header = header_message(
        bucket=real.bucket,
        key=real.key,
        upload_id=real.upload_id,
        part_number=1,
        content_length=len(content),
    )
    with pytest.raises(grpc.RpcError) as caught:
        pb_grpc.UploadServiceStub(channel).UploadPart(
            iter([header, data_message(content)]), timeout=CALL_TIMEOUT
        )
    assert caught.value.code() is C.RESOURCE_EXHAUSTED, caught.value
    assert parts(s3_client, real) == {}
    wait_until(lambda: inflight_streams(moto_gateway) == 0, 5, "no stream is in flight")
    healthy(channel)
    normal_part(channel, real, 1, b"small")


def admitted_streams(running: GatewayThread, wanted: int) -> int:
    """How many of ``wanted`` simultaneous streams of one (anonymous) caller the gateway admits:
    its admission limits (GATEWAY_MAX_STREAMS, GATEWAY_MAX_STREAMS_PER_PRINCIPAL, and the
    GATEWAY_MAX_BUFFER_BYTES budget each stream reserves its window and one message from)."""
    s = running.settings
    by_budget = s.max_buffer_bytes // (s.stream_window + s.max_message_size)
    return min(wanted, s.max_streams, s.principal_stream_limit, by_budget)


def test_flood_of_streams_and_calls_leaves_the_gateway_healthy(
    moto_gateway: GatewayThread, s3_client: Any
) -> None:
    """200 UploadPart streams that stall after their first bytes, 200 unary calls at once;
    the gateway admits what its limits allow and refuses the rest with RESOURCE_EXHAUSTED; then
    half of the admitted streams are cancelled and the others finish. Afterwards nothing is left
    in flight, no buffer bytes are held, only the finished parts exist, and the gateway serves
    as before."""
    real = new_upload(s3_client, "flood/object.bin")
    streams, unary = 200, 200
    admitted = admitted_streams(moto_gateway, streams)
    metrics = moto_gateway.gateway.metrics
    wait_until(lambda: inflight_streams(moto_gateway) == 0, 5, "earlier streams are gone")
    release = threading.Event()
    content = b"flood part " * 100

    def part_stream(number: int) -> Iterator[pb.UploadPartRequest]:
        length = {"content_length": len(content)} if number % 4 < 2 else {}  # streamed, buffered
        yield header_message(
            bucket=real.bucket,
            key=real.key,
            upload_id=real.upload_id,
            part_number=number,
            **length,
        )
        # Part of the bytes, then a stall: a streamed part is already on its way to S3.
        yield data_message(content[:500], crt.crc32c(content[:500]))
        if not release.wait(CALL_TIMEOUT):
            return
        yield data_message(content[500:])

    with grpc.insecure_channel(moto_gateway.address) as channel:
        stub = pb_grpc.UploadServiceStub(channel)
        health = health_pb2_grpc.HealthStub(channel)
        part_calls = {
            n: stub.UploadPart.future(part_stream(n), timeout=CALL_TIMEOUT * 2)
            for n in range(1, streams + 1)
        }
        calls: list[Any] = []
        for i in range(unary):
            if i % 4 == 0:
                calls.append(health.Check.future(health_pb2.HealthCheckRequest(), timeout=60))
            elif i % 4 == 1:
                bad = pb.ListPartsRequest(bucket="NOT a bucket", key="k", upload_id="u")
                calls.append(stub.ListParts.future(bad, timeout=60))
            else:
                request = pb.ListPartsRequest(
                    bucket=real.bucket, key=real.key, upload_id=real.upload_id
                )
                calls.append(stub.ListParts.future(request, timeout=60))
        try:
            wait_until(
                lambda: (
                    inflight_streams(moto_gateway) == admitted
                    and sum(c.done() for c in part_calls.values()) == streams - admitted
                ),
                15,
                f"{admitted} streams are in flight and the others refused",
                lambda: (inflight_streams(moto_gateway), [c.done() for c in part_calls.values()]),
            )
        finally:
            pending = [n for n, c in part_calls.items() if not c.done()]
            cancelled = set(pending[::2])
            for n in cancelled:
                part_calls[n].cancel()
            release.set()

        refused = [n for n, c in part_calls.items() if n not in pending]
        for n in refused:
            assert part_calls[n].code() is C.RESOURCE_EXHAUSTED, (n, part_calls[n].code())
        for n in pending:
            call = part_calls[n]
            if n in cancelled:
                assert call.cancelled() or call.code() is C.CANCELLED, (n, call.code())
            else:
                assert call.result().etag == etag(content), n
        for i, call in enumerate(calls):
            if i % 4 == 1:
                assert call.code() is C.INVALID_ARGUMENT, (i, call.code(), call.details())
            else:
                assert call.code() is C.OK, (i, call.code(), call.details())

        wait_until(lambda: inflight_streams(moto_gateway) == 0, 5, "no stream is in flight")
        wait_until(lambda: moto_gateway.call_tasks() == set(), 5, "no call task is left")
        assert metrics.buffer_bytes._value.get() == 0
        healthy(channel)
        started = time.monotonic()
        normal_part(channel, real, streams + 1, b"after the flood")
        assert time.monotonic() - started < 3

    # Cancelled and refused streams committed nothing; the others exactly their bytes.
    finished = {n: (etag(content), len(content)) for n in pending if n not in cancelled}
    assert len(finished) >= admitted // 2 > 0
    assert parts(s3_client, real) == finished | {streams + 1: (etag(b"after the flood"), 15)}


def test_streams_stalled_past_their_deadline_commit_nothing(
    moto_gateway: GatewayThread, channel: grpc.Channel, s3_client: Any
) -> None:
    """Callers that send part of a part and stall until their deadline passes: DEADLINE_EXCEEDED,
    nothing committed (streamed parts were already on their way to S3), nothing left behind."""
    real = new_upload(s3_client, "hostile/stalled.bin")
    content = b"stalled " * 300
    release = threading.Event()

    def stalled(number: int) -> Iterator[pb.UploadPartRequest]:
        length = {"content_length": len(content)} if number % 2 else {}  # streamed, buffered
        yield header_message(
            bucket=real.bucket,
            key=real.key,
            upload_id=real.upload_id,
            part_number=number,
            **length,
        )
        yield data_message(content[:1000])
        release.wait(CALL_TIMEOUT)

    stub = pb_grpc.UploadServiceStub(channel)
    try:
        calls = [stub.UploadPart.future(stalled(n), timeout=1.0) for n in range(1, 5)]
        codes = [call.code() for call in calls]
    finally:
        release.set()
    assert codes == [C.DEADLINE_EXCEEDED] * 4
    wait_until(lambda: inflight_streams(moto_gateway) == 0, 5, "no stream is in flight")
    wait_until(lambda: moto_gateway.call_tasks() == set(), 5, "no call task is left")
    assert parts(s3_client, real) == {}
    normal_part(channel, real, 1, content)
