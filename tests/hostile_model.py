"""A model of UploadPart for tests/test_hostile.py: what the gateway must answer to any stream
of request messages, and hypothesis strategies that make hostile ones.

The model is written from the proto's rules, independently of the gateway's code: checksums are
computed here (zlib, awscrt, hashlib), and which bytes a raw message carries is decided by
protobuf's own parser (upb), exactly as a protobuf-conformant server must parse it. :func:`judge`
says whether a stream is valid, and if not where it is wrong; :data:`REFUSALS` and
:data:`ALLOWED_ERRORS` say which status codes may then end the call. :func:`scenarios` draws
streams: valid ones in varied encodings, valid ones for an upload that does not exist, hostile
ones (malformed or wrong fields, lengths, checksums, CRCs, encodings, trailers and message
orders) and raw garbage.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import ipaddress
import itertools
import re
import uuid
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import grpc
from awscrt import checksums as crt
from google.protobuf.message import DecodeError
from hypothesis import strategies as st

from gateway.v1 import upload_service_pb2 as pb
from tests.helpers import data_message, header_message, trailer_message

C = grpc.StatusCode
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


#: The codes that may end a stream the model judges invalid, by the stage where it is wrong: a
#: bad start or header is refused before anything reaches S3; a bad stream while its bytes flow.
REFUSALS = {
    "stream start": frozenset({C.INVALID_ARGUMENT, C.FAILED_PRECONDITION}),
    "header": frozenset({C.INVALID_ARGUMENT, C.FAILED_PRECONDITION}),
    "stream": frozenset({C.INVALID_ARGUMENT, C.OUT_OF_RANGE}),
}


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
