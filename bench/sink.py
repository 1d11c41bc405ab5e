"""A minimal S3 stand-in: drains request bodies and answers like S3, doing nothing else.

    python -m bench.sink [--port 0] [--cap-mib-s N] [--first-byte-ms N] [--continue-ms N]
    # prints "listening on PORT" once it accepts connections

A raw asyncio server (one process, one thread) so that the backend is never the bottleneck of a
benchmark: bodies are read into one reusable buffer and dropped, no MD5 is computed, and every
UploadPart and PutObject gets the same quoted ETag (with the request's ``x-amz-checksum-*`` values
echoed, as S3 does). It answers CreateMultipartUpload (with a fresh upload id),
AbortMultipartUpload (204), CompleteMultipartUpload, PutObject, CreateBucket and HeadObject (the
size it was sent) well enough for botocore and awscrt; anything else gets an empty 200.
Understands ``Content-Length`` and ``Transfer-Encoding: chunked`` bodies and answers
``Expect: 100-continue``. HTTP/1.1 keep-alive, no TLS, no authentication.

Shaped like a remote S3 (both off by default):

- ``--cap-mib-s N``: each connection's request bodies are read at most at N MiB/s (reading stops
  while a body is ahead of that schedule, so TCP flow control holds the sender back). The cap is
  per connection, as S3's is: a client that uses more connections gets more bandwidth;
- ``--first-byte-ms N``: nothing of an answer is sent until N ms after what it answers has
  arrived: the response N ms after the body, the ``100 Continue`` N ms after the request head
  (``--continue-ms`` gives the ``100 Continue`` a delay of its own).

``GET /_sink/objects/BUCKET/KEY`` answers JSON: what the stand-in saw of that key (its size, its
requests, the connections they came on and how many were in flight at once, the time of the first
request head and of the last answer, ``time.time()``).
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass, field
from urllib.parse import parse_qs, unquote, urlsplit

ETAG = '"5d41402abc4b2a76b9719d911017c592"'
_BUFFER = 1024 * 1024
#: The most a shaped connection reads at once: the granularity of its cap.
_SHAPED_READ = 128 * 1024
_upload_ids = itertools.count(1)
_connection_ids = itertools.count(1)
STATS_PREFIX = "/_sink/objects/"


@dataclass(frozen=True)
class Shaping:
    """How a connection is slowed down to look like one to a remote S3."""

    #: Body bytes per second each connection reads at most; 0 for no cap.
    rate: float = 0.0
    #: Seconds between the end of a request's body and the first byte of its response.
    first_byte: float = 0.0
    #: Seconds between a request's head and its ``100 Continue``.
    continue_delay: float = 0.0


@dataclass
class KeyRecord:
    """What the stand-in saw of one object key."""

    size: int | None = None
    requests: int = 0
    connections: set[int] = field(default_factory=set)
    in_flight: int = 0
    peak_in_flight: int = 0
    body_bytes: int = 0
    first_request: float = 0.0
    last_answer: float = 0.0

    def as_json(self) -> dict[str, object]:
        record = asdict(self)
        record["connections"] = len(self.connections)
        return record


class Ledger:
    """Sizes of parts and objects, and per-key activity, for HeadObject and the benchmarks."""

    def __init__(self) -> None:
        self.keys: dict[str, KeyRecord] = {}
        self.parts: dict[str, dict[int, int]] = {}

    def key(self, name: str) -> KeyRecord:
        return self.keys.setdefault(name, KeyRecord())


@dataclass
class Request:
    method: str
    target: str
    headers: dict[str, str]
    connection: int
    bucket: str = ""
    key: str = ""
    query: dict[str, list[str]] = field(default_factory=dict)
    body_bytes: int = 0

    def __post_init__(self) -> None:
        parts = urlsplit(self.target)
        self.query = parse_qs(parts.query, keep_blank_values=True)
        bucket, _, key = unquote(parts.path).lstrip("/").partition("/")
        self.bucket, self.key = bucket, key

    @property
    def counted(self) -> bool:
        """Whether the request is an S3 request on an object (not a bucket, not the stats)."""
        return bool(self.key) and not self.target.startswith(STATS_PREFIX)

    @property
    def object_name(self) -> str:
        return f"{self.bucket}/{self.key}"

    @property
    def payload_size(self) -> int:
        """The body's size without aws-chunked framing."""
        decoded = self.headers.get("x-amz-decoded-content-length")
        return int(decoded) if decoded is not None else self.body_bytes


def _response(
    status: str, headers: dict[str, str], body: bytes = b"", length: int | None = None
) -> bytes:
    """A response; ``length`` is the Content-Length of a HEAD's answer, which has no body."""
    lines = [f"HTTP/1.1 {status}", *(f"{k}: {v}" for k, v in headers.items())]
    if not status.startswith("204"):  # a 204 carries no Content-Length (RFC 9110)
        lines.append(f"Content-Length: {len(body) if length is None else length}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def respond(request: Request, ledger: Ledger) -> bytes:
    """The response to one request, by S3 operation, recording sizes in ``ledger``."""
    method, query, bucket, key = request.method, request.query, request.bucket, request.key
    plain = {"x-amz-request-id": "sink"}
    xml = {"Content-Type": "application/xml", **plain}
    checksums = {k: v for k, v in request.headers.items() if k.startswith("x-amz-checksum-")}
    checksums.pop("x-amz-checksum-algorithm", None)
    checksums.pop("x-amz-checksum-type", None)
    if method == "GET" and request.target.startswith(STATS_PREFIX):
        name = unquote(urlsplit(request.target).path)[len(STATS_PREFIX) :]
        record = ledger.keys.get(name)
        if record is None:
            return _response("404 Not Found", plain)
        body = json.dumps(record.as_json()).encode()
        return _response("200 OK", {"Content-Type": "application/json", **plain}, body)
    if method == "PUT" and "partNumber" in query:
        upload = ledger.parts.setdefault(query.get("uploadId", [""])[0], {})
        upload[int(query["partNumber"][0])] = request.payload_size
        return _response("200 OK", {"ETag": ETAG, **checksums, **plain})
    if method == "PUT" and key:
        ledger.key(request.object_name).size = request.payload_size
        return _response("200 OK", {"ETag": ETAG, **checksums, **plain})
    if method == "POST" and "uploads" in query:
        upload_id = f"sink-{next(_upload_ids)}"
        ledger.parts[upload_id] = {}
        body = (
            '<?xml version="1.0" encoding="UTF-8"?>\n<InitiateMultipartUploadResult>'
            f"<Bucket>{bucket}</Bucket><Key>{key}</Key>"
            f"<UploadId>{upload_id}</UploadId></InitiateMultipartUploadResult>"
        )
        return _response("200 OK", xml, body.encode())
    if method == "POST" and "uploadId" in query:
        parts = ledger.parts.pop(query["uploadId"][0], {})
        if parts:
            ledger.key(request.object_name).size = sum(parts.values())
        body = (
            '<?xml version="1.0" encoding="UTF-8"?>\n<CompleteMultipartUploadResult>'
            f"<Location>http://sink/{bucket}/{key}</Location>"
            f"<Bucket>{bucket}</Bucket><Key>{key}</Key><ETag>{ETAG}</ETag>"
            "</CompleteMultipartUploadResult>"
        )
        return _response("200 OK", xml, body.encode())
    if method == "HEAD" and key:
        record = ledger.keys.get(request.object_name)
        if record is None or record.size is None:
            return _response("404 Not Found", plain)
        return _response("200 OK", {"ETag": ETAG, **plain}, length=record.size)
    if method == "DELETE":
        ledger.parts.pop(query.get("uploadId", [""])[0], None)
        return _response("204 No Content", plain)
    return _response("200 OK", plain)


class SinkProtocol(asyncio.BufferedProtocol):
    """One connection: parse a request head, drain its body into a reused buffer, answer."""

    def __init__(self, shaping: Shaping | None = None, ledger: Ledger | None = None) -> None:
        self._shaping = shaping or Shaping()
        self._ledger = ledger or Ledger()
        self._id = next(_connection_ids)
        self._buffer = bytearray(_BUFFER)
        self._read_size = _SHAPED_READ if self._shaping.rate else _BUFFER
        self._head = bytearray()
        self._body_left = 0  # bytes of a Content-Length body still to drain
        self._chunked = False
        self._chunk_state = b""  # unparsed bytes of chunked framing
        self._request: Request | None = None
        self._body_started = 0.0  # when the first body byte of the request arrived
        self._body_read = 0  # body bytes of the request so far, framing included
        self._transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport

    def get_buffer(self, sizehint: int) -> memoryview:
        return memoryview(self._buffer)[: self._read_size]

    def buffer_updated(self, nbytes: int) -> None:
        self._feed(memoryview(self._buffer)[:nbytes])

    def _feed(self, data: memoryview) -> None:
        while data:
            if self._request is None:
                self._head += data
                end = self._head.find(b"\r\n\r\n")
                if end < 0:
                    return
                rest = memoryview(bytes(self._head[end + 4 :]))
                self._start(bytes(self._head[:end]))
                self._head = bytearray()
                data = rest
                if self._body_left == 0 and not self._chunked:
                    self._finish(0.0)
                continue
            if self._chunked:
                rest, done = self._feed_chunked(data)
            else:
                taken = min(self._body_left, len(data))
                self._body_left -= taken
                rest, done = data[taken:], self._body_left == 0
            ahead = self._count(len(data) - len(rest))
            data = rest
            if done:
                self._finish(ahead)

    def _count(self, nbytes: int) -> float:
        """Count body bytes; with a cap, stop reading while the body is ahead of the cap's
        schedule. How far ahead it is, in seconds."""
        self._body_read += nbytes
        rate = self._shaping.rate
        if not rate:
            return 0.0
        now = time.perf_counter()
        if not self._body_started:
            self._body_started = now
        ahead = self._body_started + self._body_read / rate - now
        if ahead <= 0.0005:
            return 0.0
        assert self._transport is not None
        if not self._transport.is_closing():
            self._transport.pause_reading()
            asyncio.get_running_loop().call_later(ahead, self._resume)
        return ahead

    def _resume(self) -> None:
        if self._transport is not None and not self._transport.is_closing():
            self._transport.resume_reading()

    def _start(self, head: bytes) -> None:
        lines = head.decode("latin-1").split("\r\n")
        method, target, _ = lines[0].split(" ", 2)
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        request = Request(method, target, headers, self._id)
        self._request = request
        self._body_started, self._body_read = 0.0, 0
        self._chunked = "chunked" in headers.get("transfer-encoding", "").lower()
        self._body_left = 0 if self._chunked else int(headers.get("content-length", "0"))
        if request.counted:
            record = self._ledger.key(request.object_name)
            record.requests += 1
            record.connections.add(self._id)
            record.in_flight += 1
            record.peak_in_flight = max(record.peak_in_flight, record.in_flight)
            record.first_request = record.first_request or time.time()
        if headers.get("expect", "").lower() == "100-continue":
            self._send(b"HTTP/1.1 100 Continue\r\n\r\n", self._shaping.continue_delay)

    def _feed_chunked(self, data: memoryview) -> tuple[memoryview, bool]:
        """Drain chunked framing and data; what is left of ``data``, and whether the body ended."""
        if self._body_left:  # inside a chunk's data (and its CRLF)
            taken = min(self._body_left, len(data))
            self._body_left -= taken
            return data[taken:], False
        self._chunk_state += data
        line_end = self._chunk_state.find(b"\r\n")
        if line_end < 0:
            return memoryview(b""), False
        size = int(self._chunk_state[:line_end].split(b";")[0], 16)
        rest = self._chunk_state[line_end + 2 :]
        self._chunk_state = b""
        if size == 0:  # last chunk; assume no trailers but the final CRLF (or trailers + CRLF)
            end = rest.find(b"\r\n\r\n") if not rest.startswith(b"\r\n") else -2
            if end == -1 and not rest.startswith(b"\r\n"):
                self._chunk_state = b"0\r\n" + rest  # wait for the rest of the trailers
                return memoryview(b""), False
            tail = rest[2:] if end == -2 else rest[end + 4 :]
            self._chunked = False
            return memoryview(tail), True
        self._body_left = size + 2
        return memoryview(rest), False

    def _finish(self, ahead: float) -> None:
        """Answer the request once its body is complete (and, with a cap, due)."""
        assert self._request is not None
        request, self._request = self._request, None
        request.body_bytes = self._body_read
        self._send(respond(request, self._ledger), self._shaping.first_byte + ahead, request)

    def _send(self, data: bytes, delay: float, request: Request | None = None) -> None:
        """Write ``data`` after ``delay`` seconds (at once without one)."""
        if delay > 0:
            asyncio.get_running_loop().call_later(delay, self._write, data, request)
        else:
            self._write(data, request)

    def _write(self, data: bytes, request: Request | None) -> None:
        assert self._transport is not None
        if not self._transport.is_closing():
            self._transport.write(data)
        if request is not None and request.counted:
            record = self._ledger.key(request.object_name)
            record.in_flight -= 1
            record.body_bytes += request.payload_size
            record.last_answer = time.time()


@contextmanager
def sink_process(
    cap_mib_s: float = 0.0, first_byte_ms: float = 0.0, continue_ms: float | None = None
) -> Iterator[tuple[str, subprocess.Popen[str]]]:
    """Run the sink in a process of its own (shaped as ``main``'s flags say); yields its URL and
    the process."""
    continue_ms = first_byte_ms if continue_ms is None else continue_ms
    process = subprocess.Popen(
        [
            *(sys.executable, "-m", "bench.sink", "--port", "0"),
            *("--cap-mib-s", str(cap_mib_s), "--first-byte-ms", str(first_byte_ms)),
            *("--continue-ms", str(continue_ms)),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        if not line.startswith("listening on "):
            raise RuntimeError(f"sink did not start: {line!r}")
        yield f"http://127.0.0.1:{int(line.split()[-1])}", process
    finally:
        process.terminate()
        process.wait(10)
        if process.stdout is not None:
            process.stdout.close()


async def serve(port: int, shaping: Shaping) -> None:
    loop = asyncio.get_running_loop()
    sock = socket.create_server(("127.0.0.1", port), backlog=256)
    ledger = Ledger()
    server = await loop.create_server(lambda: SinkProtocol(shaping, ledger), sock=sock)
    print(f"listening on {sock.getsockname()[1]}", flush=True)
    async with server:
        await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument(
        "--cap-mib-s", type=float, default=0.0, help="each connection's body read rate (0: none)"
    )
    parser.add_argument(
        "--first-byte-ms", type=float, default=0.0, help="delay of every answer's first byte"
    )
    parser.add_argument(
        "--continue-ms", type=float, help="delay of every 100 Continue (default: --first-byte-ms)"
    )
    args = parser.parse_args()
    continue_ms = args.first_byte_ms if args.continue_ms is None else args.continue_ms
    shaping = Shaping(args.cap_mib_s * 1024 * 1024, args.first_byte_ms / 1000, continue_ms / 1000)
    with suppress(KeyboardInterrupt):
        asyncio.run(serve(args.port, shaping))


if __name__ == "__main__":
    main()
