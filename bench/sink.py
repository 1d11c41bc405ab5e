"""A minimal S3 UploadPart sink: drains request bodies and answers like S3, doing nothing else.

    python -m bench.sink [--port 0]      # prints "listening on PORT" once it accepts connections

A raw asyncio server (one process, one thread) so that the backend is never the bottleneck of a
benchmark: bodies are read into one reusable buffer and dropped, no MD5 is computed, and every
UploadPart gets the same quoted ETag. It answers CreateMultipartUpload (with a fresh upload id),
AbortMultipartUpload (204), CompleteMultipartUpload and CreateBucket well enough for botocore;
anything else gets an empty 200. Understands ``Content-Length`` and ``Transfer-Encoding: chunked``
bodies and answers ``Expect: 100-continue``. HTTP/1.1 keep-alive, no TLS, no authentication.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from urllib.parse import parse_qs, urlsplit

ETAG = '"5d41402abc4b2a76b9719d911017c592"'
_BUFFER = 1024 * 1024
_upload_ids = itertools.count(1)


def _response(status: str, headers: dict[str, str], body: bytes = b"") -> bytes:
    lines = [f"HTTP/1.1 {status}", *(f"{k}: {v}" for k, v in headers.items())]
    if not status.startswith("204"):  # a 204 carries no Content-Length (RFC 9110)
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def answer(method: str, target: str) -> bytes:
    """The response to one request, by S3 operation."""
    parts = urlsplit(target)
    query = parse_qs(parts.query, keep_blank_values=True)
    path = parts.path.lstrip("/")
    bucket, _, key = path.partition("/")
    xml = {"Content-Type": "application/xml", "x-amz-request-id": "sink"}
    if method == "PUT" and "partNumber" in query:
        return _response("200 OK", {"ETag": ETAG, "x-amz-request-id": "sink"})
    if method == "POST" and "uploads" in query:
        body = (
            '<?xml version="1.0" encoding="UTF-8"?>\n<InitiateMultipartUploadResult>'
            f"<Bucket>{bucket}</Bucket><Key>{key}</Key>"
            f"<UploadId>sink-{next(_upload_ids)}</UploadId></InitiateMultipartUploadResult>"
        )
        return _response("200 OK", xml, body.encode())
    if method == "POST" and "uploadId" in query:
        body = (
            '<?xml version="1.0" encoding="UTF-8"?>\n<CompleteMultipartUploadResult>'
            f"<Bucket>{bucket}</Bucket><Key>{key}</Key><ETag>{ETAG}</ETag>"
            "</CompleteMultipartUploadResult>"
        )
        return _response("200 OK", xml, body.encode())
    if method == "DELETE":
        return _response("204 No Content", {"x-amz-request-id": "sink"})
    return _response("200 OK", {"x-amz-request-id": "sink"})


class SinkProtocol(asyncio.BufferedProtocol):
    """One connection: parse a request head, drain its body into a reused buffer, answer."""

    def __init__(self) -> None:
        self._buffer = bytearray(_BUFFER)
        self._head = bytearray()
        self._body_left = 0  # bytes of a Content-Length body still to drain
        self._chunked = False
        self._chunk_state = b""  # unparsed bytes of chunked framing
        self._request: tuple[str, str] | None = None
        self._transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport

    def get_buffer(self, sizehint: int) -> memoryview:
        return memoryview(self._buffer)

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
                    self._finish()
                continue
            if self._chunked:
                data = self._feed_chunked(data)
                continue
            taken = min(self._body_left, len(data))
            self._body_left -= taken
            data = data[taken:]
            if self._body_left == 0:
                self._finish()

    def _start(self, head: bytes) -> None:
        lines = head.decode("latin-1").split("\r\n")
        method, target, _ = lines[0].split(" ", 2)
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        self._request = (method, target)
        self._chunked = "chunked" in headers.get("transfer-encoding", "").lower()
        self._body_left = 0 if self._chunked else int(headers.get("content-length", "0"))
        if headers.get("expect", "").lower() == "100-continue":
            assert self._transport is not None
            self._transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    def _feed_chunked(self, data: memoryview) -> memoryview:
        if self._body_left:  # inside a chunk's data (and its CRLF)
            taken = min(self._body_left, len(data))
            self._body_left -= taken
            return data[taken:]
        self._chunk_state += data
        line_end = self._chunk_state.find(b"\r\n")
        if line_end < 0:
            return memoryview(b"")
        size = int(self._chunk_state[:line_end].split(b";")[0], 16)
        rest = self._chunk_state[line_end + 2 :]
        self._chunk_state = b""
        if size == 0:  # last chunk; assume no trailers but the final CRLF (or trailers + CRLF)
            end = rest.find(b"\r\n\r\n") if not rest.startswith(b"\r\n") else -2
            if end == -1 and not rest.startswith(b"\r\n"):
                self._chunk_state = b"0\r\n" + rest  # wait for the rest of the trailers
                return memoryview(b"")
            tail = rest[2:] if end == -2 else rest[end + 4 :]
            self._chunked = False
            self._finish()
            return memoryview(tail)
        self._body_left = size + 2
        return memoryview(rest)

    def _finish(self) -> None:
        assert self._request is not None and self._transport is not None
        method, target = self._request
        self._request = None
        self._transport.write(answer(method, target))


@contextmanager
def sink_process() -> Iterator[tuple[str, subprocess.Popen[str]]]:
    """Run the sink in a process of its own; yields its URL and the process."""
    process = subprocess.Popen(
        [sys.executable, "-m", "bench.sink", "--port", "0"],
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


async def serve(port: int) -> None:
    loop = asyncio.get_running_loop()
    sock = socket.create_server(("127.0.0.1", port), backlog=256)
    server = await loop.create_server(SinkProtocol, sock=sock)
    print(f"listening on {sock.getsockname()[1]}", flush=True)
    async with server:
        await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    with suppress(KeyboardInterrupt):
        asyncio.run(serve(args.port))


if __name__ == "__main__":
    main()
