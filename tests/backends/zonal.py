"""A stand-in for an S3 Express One Zone zonal endpoint, on loopback, recording what it receives.

There is no S3 Express here, so the gateway's directory-bucket traffic is tested against this:
an aiohttp HTTPS server that speaks just enough of the zonal protocol (CreateSession, the multipart
operations, PutObject) and records every request — method, Host, path, query, headers, the decoded
body and any aws-chunked trailer. The gateway reaches it through its directory endpoint override
(``https://zonal.test:PORT``); botocore then addresses ``{bucket}.zonal.test`` virtual-host
style, a name no resolver knows, so the gateway is started with ``HTTPS_PROXY`` pointing at a
small CONNECT proxy that tunnels every connection to this server. Everything on the gateway's
side — endpoint rules, session auth, signing, TLS, aws-chunked encoding — is the real code.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import hashlib
import ssl
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from xml.sax.saxutils import escape

from aiohttp import web

from tests.backends.tls import Tls, make_tls

DOMAIN = "zonal.test"
_NS = 'xmlns="http://s3.amazonaws.com/doc/2006-03-01/"'


@dataclass
class Recorded:
    method: str
    host: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: bytes
    trailers: dict[str, str]

    @property
    def operation(self) -> str:
        return _operation(self.method, self.path, self.query)


@dataclass
class Upload:
    bucket: str
    key: str
    initiated: dt.datetime
    parts: dict[int, str] = field(default_factory=dict)


def decode_aws_chunked(raw: bytes) -> tuple[bytes, dict[str, str]]:
    """The payload and trailers of an aws-chunked body (unsigned, with a trailer)."""
    data, position = bytearray(), 0
    while True:
        end = raw.index(b"\r\n", position)
        size = int(raw[position:end].split(b";")[0], 16)
        position = end + 2
        if size == 0:
            break
        data += raw[position : position + size]
        position += size + 2
    trailers = {}
    for line in raw[position:].split(b"\r\n"):
        if b":" in line:
            name, value = line.decode().split(":", 1)
            trailers[name.strip().lower()] = value.strip()
    return bytes(data), trailers


def _operation(method: str, path: str, query: dict[str, str]) -> str:
    if "session" in query:
        return "CreateSession"
    if "uploads" in query:
        return "CreateMultipartUpload" if method == "POST" else "ListMultipartUploads"
    if "partNumber" in query:
        return "UploadPart"
    if "uploadId" in query:
        return {"POST": "CompleteMultipartUpload", "DELETE": "AbortMultipartUpload"}.get(
            method, "ListParts"
        )
    if method == "PUT" and path.strip("/"):
        return "PutObject"
    return f"{method} {path}"


class ZonalServer:
    """The zonal endpoint and the CONNECT proxy in front of it, on a thread of their own."""

    def __init__(self, directory: Path) -> None:
        self.tls: Tls = make_tls(directory, [f"DNS:{DOMAIN}", f"DNS:*.{DOMAIN}"])
        self.requests: list[Recorded] = []
        self.uploads: dict[str, Upload] = {}
        #: Lifetime of the session credentials CreateSession hands out.
        self.session_lifetime = dt.timedelta(minutes=5)
        self._sessions = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._runner: web.AppRunner | None = None
        self._proxy: asyncio.Server | None = None
        self.https_port = 0
        self.proxy_port = 0

    @property
    def endpoint_url(self) -> str:
        return f"https://{DOMAIN}:{self.https_port}"

    @property
    def proxy_url(self) -> str:
        return f"http://127.0.0.1:{self.proxy_port}"

    def of(self, operation: str) -> list[Recorded]:
        return [r for r in self.requests if r.operation == operation]

    def add_upload(self, bucket: str, key: str, age: dt.timedelta) -> str:
        upload_id = uuid.uuid4().hex
        self.uploads[upload_id] = Upload(bucket, key, _now() - age)
        return upload_id

    def __enter__(self) -> ZonalServer:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(30)
        return self

    def __exit__(self, *exc: object) -> None:
        asyncio.run_coroutine_threadsafe(self._stop(), self._loop).result(30)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    async def _start(self) -> None:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/{path:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(self.tls.certificate, self.tls.key)
        site = web.TCPSite(self._runner, "127.0.0.1", 0, ssl_context=context)
        await site.start()
        self.https_port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self._proxy = await asyncio.start_server(self._tunnel, "127.0.0.1", 0)
        self.proxy_port = self._proxy.sockets[0].getsockname()[1]

    async def _stop(self) -> None:
        if self._proxy is not None:
            self._proxy.close()
        if self._runner is not None:
            await self._runner.cleanup()

    async def _tunnel(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """A CONNECT proxy that sends every tunnel to the zonal server, whatever the host."""
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
            request = await reader.readuntil(b"\r\n\r\n")
            if not request.startswith(b"CONNECT "):
                writer.write(b"HTTP/1.1 405 Method Not Allowed\r\n\r\n")
                return
            upstream_reader, upstream_writer = await asyncio.open_connection(
                "127.0.0.1", self.https_port
            )
            writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
            await asyncio.gather(_pipe(reader, upstream_writer), _pipe(upstream_reader, writer))
        writer.close()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        body, trailers = raw, {}
        if "aws-chunked" in request.headers.get("Content-Encoding", ""):
            body, trailers = decode_aws_chunked(raw)
        host = request.headers.get("Host", "").split(":")[0]
        recorded = Recorded(
            method=request.method,
            host=host,
            path=request.path,
            query=dict(request.query),
            headers={k.lower(): v for k, v in request.headers.items()},
            body=body,
            trailers=trailers,
        )
        self.requests.append(recorded)
        bucket = host.removesuffix(f".{DOMAIN}")
        return self._answer(recorded, bucket)

    def _answer(self, r: Recorded, bucket: str) -> web.StreamResponse:
        key = r.path.lstrip("/")
        if r.operation == "CreateSession":
            self._sessions += 1
            expires = _now() + self.session_lifetime
            return _xml(
                f"<CreateSessionResult {_NS}><Credentials>"
                f"<SessionToken>session-token-{self._sessions}</SessionToken>"
                f"<SecretAccessKey>session-secret</SecretAccessKey>"
                f"<AccessKeyId>SESSIONKEY{self._sessions}</AccessKeyId>"
                f"<Expiration>{expires:%Y-%m-%dT%H:%M:%SZ}</Expiration>"
                "</Credentials></CreateSessionResult>"
            )
        if r.operation == "CreateMultipartUpload":
            upload_id = self.add_upload(bucket, key, dt.timedelta())
            algorithm = r.headers.get("x-amz-checksum-algorithm", "")
            return _xml(
                f"<InitiateMultipartUploadResult {_NS}><Bucket>{bucket}</Bucket>"
                f"<Key>{escape(key)}</Key><UploadId>{upload_id}</UploadId>"
                "</InitiateMultipartUploadResult>",
                {"x-amz-checksum-algorithm": algorithm} if algorithm else {},
            )
        if r.operation == "UploadPart":
            etag = f'"{hashlib.md5(r.body).hexdigest()}"'
            self.uploads[r.query["uploadId"]].parts[int(r.query["partNumber"])] = etag
            echoed = {
                k: v
                for k, v in {**r.headers, **r.trailers}.items()
                if k.startswith("x-amz-checksum-")
            }
            echoed.pop("x-amz-checksum-algorithm", None)
            return web.Response(status=200, headers={"ETag": etag, **echoed})
        if r.operation == "CompleteMultipartUpload":
            self.uploads.pop(r.query["uploadId"], None)
            return _xml(
                f"<CompleteMultipartUploadResult {_NS}><Bucket>{bucket}</Bucket>"
                f'<Key>{escape(key)}</Key><ETag>"done-1"</ETag></CompleteMultipartUploadResult>'
            )
        if r.operation == "PutObject":
            etag = f'"{hashlib.md5(r.body).hexdigest()}"'
            echoed = {k: v for k, v in r.headers.items() if k.startswith("x-amz-checksum-")}
            echoed.pop("x-amz-checksum-algorithm", None)
            return web.Response(status=200, headers={"ETag": etag, **echoed})
        if r.operation == "AbortMultipartUpload":
            self.uploads.pop(r.query["uploadId"], None)
            return web.Response(status=204)
        if r.operation == "ListMultipartUploads":
            return _xml(self._list_uploads(bucket, r.query.get("prefix", "")))
        return web.Response(status=501, text="not implemented by the test endpoint")

    def _list_uploads(self, bucket: str, prefix: str) -> str:
        entries = "".join(
            f"<Upload><Key>{escape(u.key)}</Key><UploadId>{upload_id}</UploadId>"
            f"<Initiated>{u.initiated:%Y-%m-%dT%H:%M:%S.000Z}</Initiated>"
            "<StorageClass>EXPRESS_ONEZONE</StorageClass></Upload>"
            for upload_id, u in self.uploads.items()
            if u.bucket == bucket and u.key.startswith(prefix)
        )
        return (
            f"<ListMultipartUploadsResult {_NS}><Bucket>{bucket}</Bucket>"
            f"<IsTruncated>false</IsTruncated>{entries}</ListMultipartUploadsResult>"
        )


def _xml(body: str, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        status=200,
        body=('<?xml version="1.0" encoding="UTF-8"?>' + body).encode(),
        content_type="application/xml",
        headers=headers,
    )


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(ConnectionError):
        while chunk := await reader.read(65536):
            writer.write(chunk)
            await writer.drain()
    with contextlib.suppress(Exception):
        writer.close()


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


@contextlib.contextmanager
def zonal_server(directory: Path) -> Iterator[ZonalServer]:
    with ZonalServer(directory) as server:
        yield server
