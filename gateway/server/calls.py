"""One gRPC call as the gateway serves it: its record, its access log line, and :func:`rpc`, the
wrapper that admits the call and turns whatever its handler raises into a status with details.

Every UploadService handler is wrapped: the service (:class:`Hooks`) admits the call first
(authentication, the shape of the request, authorization); a :class:`gateway.errors.GatewayError`
becomes a ``google.rpc.Status`` with ErrorInfo, RetryInfo and BadRequest details; anything
unexpected is logged and becomes INTERNAL / GATEWAY_ERROR, never UNKNOWN. One access log line per
call, with named fields only (never payloads, keys or tokens).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import logging
import time
from collections.abc import AsyncGenerator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import grpc

from gateway import logs
from gateway.errors import GatewayError, Reason
from gateway.security.auth import Principal

log = logging.getLogger(__name__)
access_log = logging.getLogger(logs.ACCESS_LOGGER)

Request = TypeVar("Request")
Response = TypeVar("Response")
Context = grpc.aio.ServicerContext[Any, Any]
Handler = Callable[[Any, Request, Context], Awaitable[Response]]
StreamHandler = Callable[[Any, Request, Context], AsyncGenerator[Response, None]]


@dataclass
class CallRecord:
    """What the access log line of one call says (named fields only, never payloads or keys)."""

    method: str
    bucket: str = ""
    part_number: int = 0
    bytes: int = 0
    #: Who made the call, once authenticated.
    principal: Principal | None = None
    #: Whose limits the call counts against: the principal, or an anonymous caller's connection.
    caller: str = ""

    def fields(self, code: grpc.StatusCode, seconds: float) -> dict[str, Any]:
        fields: dict[str, Any] = {"method": self.method, "code": code.name}
        fields["duration_ms"] = round(seconds * 1000, 3)
        if self.principal is not None:
            fields["principal"] = self.principal.name
        if self.bucket:
            fields["bucket"] = self.bucket
        if self.part_number:
            fields["part_number"] = self.part_number
        if self.method == "UploadPart":
            fields["bytes"] = self.bytes
        return fields


#: The record of the call the current task serves.
_current: contextvars.ContextVar[CallRecord] = contextvars.ContextVar("current_call")


def current_call() -> CallRecord:
    """The record of the call the current task serves."""
    return _current.get()


class Hooks(Protocol):
    """What :func:`rpc` asks of the service it wraps."""

    def admit(self, record: CallRecord, request: Any, context: Context) -> None:
        """Authenticate the caller into ``record``; refuse the call by raising."""

    def count_failure(self, error: GatewayError) -> None:
        """Count a call that ended with ``error``."""


def rpc(handler: Handler[Request, Response]) -> Handler[Request, Response]:
    """Admit each call, turn every exception of ``handler`` into a gRPC status with error
    details, and write one access log line per call."""

    @functools.wraps(handler)
    async def wrapper(self: Hooks, request: Request, context: Context) -> Response:
        with _served(self, handler.__name__, request, context) as call:
            return await call.run(lambda: handler(self, request, context))
        raise AssertionError("unreachable")  # pragma: no cover

    return wrapper


def rpc_stream(handler: StreamHandler[Request, Response]) -> Handler[Request, None]:
    """:func:`rpc` for a handler that answers with a stream of messages. The call is served by a
    coroutine that writes each answer (not by a generator grpc holds): when the caller cancels,
    the handler's own clean-up runs at once, in the call's task."""

    @functools.wraps(handler)
    async def wrapper(self: Hooks, request: Request, context: Context) -> None:
        async def answer() -> None:
            async with contextlib.aclosing(handler(self, request, context)) as responses:
                async for response in responses:
                    await context.write(response)

        with _served(self, handler.__name__, request, context) as call:
            await call.run(answer)

    return wrapper


class _Call:
    """One call being served: it runs the handler's steps and ends the call with a status when
    one fails."""

    def __init__(self, hooks: Hooks, record: CallRecord, request: Any, context: Context) -> None:
        self._hooks = hooks
        self._record = record
        self._request = request
        self._context = context
        self.code = grpc.StatusCode.OK
        self._admitted = False

    async def run(self, step: Callable[[], Awaitable[Response]]) -> Response:
        """Await one step of the handler (the first admits the call first); a failure ends the
        call with its status."""
        try:
            if not self._admitted:
                self._admitted = True
                self._hooks.admit(self._record, self._request, self._context)
            return await step()
        except GatewayError as exc:
            error = exc
        except asyncio.CancelledError:
            self.code = grpc.StatusCode.CANCELLED
            raise
        except Exception:
            log.exception("unexpected failure in %s", self._record.method)
            error = GatewayError(
                grpc.StatusCode.INTERNAL,
                Reason.GATEWAY_ERROR,
                "unexpected failure inside the gateway",
            )
        self.code = error.code
        self._hooks.count_failure(error)
        status = error.to_grpc_status()
        await self._context.abort(status.code, status.details, status.trailing_metadata)
        raise AssertionError("context.abort returned")  # pragma: no cover


@contextlib.contextmanager
def _served(hooks: Hooks, method: str, request: Any, context: Context) -> Iterator[_Call]:
    """The record and the access log line of one call."""
    record = CallRecord(
        method,
        bucket=getattr(request, "bucket", ""),
        part_number=getattr(request, "part_number", 0),
    )
    _current.set(record)
    started = time.perf_counter()
    call = _Call(hooks, record, request, context)
    try:
        yield call
    finally:
        access_log.info(
            "%s %s",
            method,
            call.code.name,
            extra={logs.FIELDS: record.fields(call.code, time.perf_counter() - started)},
        )
