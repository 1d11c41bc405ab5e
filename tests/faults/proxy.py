"""A fault-injecting HTTP/1.1 proxy between the gateway and an S3 endpoint.

The proxy forwards every request to the upstream store unchanged, unless a :class:`Rule` matches
it; the rule's fault then decides what the gateway sees:

- :class:`Reset` — forward the head and ``after`` body bytes, then reset both connections (RST).
- :class:`Stall` — forward the head and ``after`` body bytes, then stop reading: the gateway's
  socket buffers fill and its writes block, as against a store that stopped reading (zero window).
- :class:`Throttle` — forward the body at ``rate`` bytes per second.
- :class:`Silent` — read the head and never answer, not even ``100 Continue``.
- :class:`Respond` — answer with an S3 error (``503 SlowDown``, ``500 InternalError``…) without
  contacting the store.
- :class:`HeadersThenClose` — answer with response headers, then close before the body.
- :class:`Close` — read the head, then close the connection without an answer.
- :class:`LoseAnswer` — forward the request, wait for the store's answer, then reset the
  gateway's connection instead of passing the answer on: the store did the work, the gateway
  never learns it.

Requests are parsed just enough to find their boundaries (``Content-Length``); responses flow back
byte for byte, ``100 Continue`` included. Every request is recorded in :attr:`FaultProxy.requests`
with the fault applied to it, so a test can assert what the store was sent. The proxy runs its own
event loop in a thread, like the gateway under test, and listens on loopback only.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import threading
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Reset:
    after: int = 0


@dataclass(frozen=True)
class Stall:
    after: int = 0


@dataclass(frozen=True)
class Throttle:
    #: Body bytes per second.
    rate: int


@dataclass(frozen=True)
class Silent:
    pass


@dataclass(frozen=True)
class Respond:
    status: int
    code: str
    message: str = ""


@dataclass(frozen=True)
class HeadersThenClose:
    status: int = 200


@dataclass(frozen=True)
class Close:
    pass


@dataclass(frozen=True)
class LoseAnswer:
    pass


Fault = Reset | Stall | Throttle | Silent | Respond | HeadersThenClose | Close | LoseAnswer


@dataclass
class _Link:
    """One connection from the gateway and its counterpart to the store."""

    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    up_reader: asyncio.StreamReader
    upstream: asyncio.StreamWriter
    #: Passes the store's answers on, byte for byte.
    back: asyncio.Task[None]


_REASONS = {200: "OK", 500: "Internal Server Error", 503: "Slow Down"}
#: Bytes the proxy buffers per connection and direction (its socket's and its reader's).
_BUFFER = 64 * 1024


@dataclass
class Rule:
    """Applies ``fault`` to requests with this method, whose query has every ``query`` key and
    whose path contains ``path``."""

    fault: Fault
    method: str | None = None
    query: tuple[str, ...] = ()
    path: str = ""
    #: How many matching requests get the fault; None for all of them.
    times: int | None = 1
    #: How many requests it applied to so far.
    hits: int = 0

    def matches(self, request: Request) -> bool:
        if self.times is not None and self.hits >= self.times:
            return False
        if self.method is not None and request.method != self.method:
            return False
        if self.path not in urllib.parse.urlsplit(request.target).path:
            return False
        return all(key in request.query for key in self.query)


@dataclass
class Request:
    method: str
    target: str
    headers: dict[str, str]
    fault: Fault | None = None
    #: Body bytes forwarded to the store.
    forwarded: int = 0

    @property
    def query(self) -> dict[str, list[str]]:
        return urllib.parse.parse_qs(
            urllib.parse.urlsplit(self.target).query, keep_blank_values=True
        )


@dataclass
class FaultProxy:
    upstream: str
    requests: list[Request] = field(default_factory=list)
    rules: list[Rule] = field(default_factory=list)
    url: str = ""

    def __post_init__(self) -> None:
        parts = urllib.parse.urlsplit(self.upstream)
        self._host, self._port = parts.hostname or "127.0.0.1", parts.port or 80
        self._lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    def add(
        self,
        fault: Fault,
        *,
        method: str | None = "PUT",
        query: tuple[str, ...] = ("partNumber",),
        path: str = "",
        times: int | None = 1,
    ) -> Rule:
        """Apply ``fault`` to the next ``times`` requests that match (by default: UploadParts)."""
        rule = Rule(fault, method, query, path, times)
        with self._lock:
            self.rules.append(rule)
        return rule

    def clear(self) -> None:
        with self._lock:
            self.rules.clear()
            self.requests.clear()

    def matching(self, method: str, *query: str) -> list[Request]:
        """The recorded requests with this method and every ``query`` key."""
        with self._lock:
            return [
                r for r in self.requests if r.method == method and all(k in r.query for k in query)
            ]

    def start(self) -> FaultProxy:
        self._thread.start()
        future = asyncio.run_coroutine_threadsafe(self._start(), self._loop)
        future.result(10)
        return self

    def drop_connections(self) -> None:
        """End every connection the proxy holds (stalled ones too), as a store that restarts."""
        asyncio.run_coroutine_threadsafe(self._drop(), self._loop).result(10)

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self._stop(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    async def _start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0, limit=_BUFFER)
        port = self._server.sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"

    async def _drop(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await asyncio.sleep(0.05)  # the closed transports release their sockets

    async def _stop(self) -> None:
        assert self._server is not None
        self._server.close()
        await self._drop()
        await self._server.wait_closed()

    def _rule_for(self, request: Request) -> Fault | None:
        with self._lock:
            self.requests.append(request)
            for rule in self.rules:
                if rule.matches(request):
                    rule.hits += 1
                    request.fault = rule.fault
                    return rule.fault
        return None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        upstream: asyncio.StreamWriter | None = None
        back: asyncio.Task[None] | None = None
        sock = writer.get_extra_info("socket")
        # A small receive buffer: what the store has not taken stays with the gateway, as
        # behind a slow link, rather than vanishing into the proxy's socket buffers.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, _BUFFER)
        try:
            up_reader, upstream = await asyncio.open_connection(self._host, self._port)
            back = asyncio.ensure_future(_pipe(up_reader, writer))
            link = _Link(reader, writer, up_reader, upstream, back)
            while await self._relay_request(link):
                pass
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        except asyncio.CancelledError:
            pass  # the proxy is stopping; asyncio would report a cancelled connection task
        finally:
            if back is not None:
                back.cancel()
            for stream in (writer, upstream):
                if stream is not None:
                    stream.close()
            self._tasks.discard(task)

    async def _relay_request(self, link: _Link) -> bool:
        """Relay one request; False when the connection must end."""
        reader, writer, upstream = link.reader, link.writer, link.upstream
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError:
            return False
        request = _parse_head(head)
        length = int(request.headers.get("content-length", "0"))
        fault = self._rule_for(request)
        if isinstance(fault, Silent):
            await _forever()
        if isinstance(fault, Close):
            return False
        if isinstance(fault, Respond):
            await _answer(writer, fault.status, _error_body(fault))
            return False
        if isinstance(fault, HeadersThenClose):
            writer.write(f"HTTP/1.1 {fault.status} OK\r\nContent-Length: 1000\r\n\r\n".encode())
            await writer.drain()
            return False
        if isinstance(fault, LoseAnswer):
            link.back.cancel()
            await asyncio.gather(link.back, return_exceptions=True)
        upstream.write(head)
        await self._relay_body(reader, writer, upstream, request, length, fault)
        if isinstance(fault, LoseAnswer):
            await link.up_reader.readuntil(b"\r\n\r\n")
            _reset(writer)
            return False
        return True

    async def _relay_body(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        upstream: asyncio.StreamWriter,
        request: Request,
        length: int,
        fault: Fault | None,
    ) -> None:
        limit = length
        if isinstance(fault, Reset | Stall):
            limit = min(length, fault.after)
        rate = fault.rate if isinstance(fault, Throttle) else None
        while request.forwarded < limit:
            size = min(limit - request.forwarded, _BUFFER if rate is None else max(1, rate // 20))
            chunk = await reader.read(size)
            if not chunk:
                raise ConnectionError("the gateway closed mid-body")
            upstream.write(chunk)
            await upstream.drain()
            request.forwarded += len(chunk)
            if rate is not None:
                await asyncio.sleep(len(chunk) / rate)
        if isinstance(fault, Stall):
            await _forever()
        if isinstance(fault, Reset):
            _reset(writer)
            _reset(upstream)
            raise ConnectionError("reset by the fault")


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(ConnectionError):
        while chunk := await reader.read(_BUFFER):
            writer.write(chunk)
            await writer.drain()
    writer.close()


async def _forever() -> None:
    await asyncio.Event().wait()


async def _answer(writer: asyncio.StreamWriter, status: int, body: bytes) -> None:
    reason = _REASONS.get(status, "Error")
    head = (
        f"HTTP/1.1 {status} {reason}\r\nContent-Type: application/xml\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n"
        "x-amz-request-id: FAULTPROXY\r\n\r\n"
    )
    writer.write(head.encode() + body)
    await writer.drain()


def _error_body(fault: Respond) -> bytes:
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f"<Error><Code>{fault.code}</Code><Message>{fault.message}</Message>"
        "<RequestId>FAULTPROXY</RequestId></Error>"
    ).encode()


def _reset(stream: asyncio.StreamWriter) -> None:
    """Close with RST instead of FIN."""
    sock = stream.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    stream.transport.abort()


def _parse_head(head: bytes) -> Request:
    lines = head.decode("latin-1").split("\r\n")
    method, target, _ = lines[0].split(" ", 2)
    headers = {}
    for line in lines[1:]:
        if ":" in line:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    return Request(method, target, headers)


@contextlib.contextmanager
def fault_proxy(upstream: str) -> Iterator[FaultProxy]:
    proxy = FaultProxy(upstream).start()
    try:
        yield proxy
    finally:
        proxy.stop()
