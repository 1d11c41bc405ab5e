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
import contextvars
import functools
import logging
import time
from collections.abc import Awaitable, Callable
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
        record = CallRecord(
            handler.__name__,
            bucket=getattr(request, "bucket", ""),
            part_number=getattr(request, "part_number", 0),
        )
        _current.set(record)
        started = time.perf_counter()
        code = grpc.StatusCode.OK
        try:
            try:
                self.admit(record, request, context)
                return await handler(self, request, context)
            except GatewayError as exc:
                error = exc
            except asyncio.CancelledError:
                code = grpc.StatusCode.CANCELLED
                raise
            except Exception:
                log.exception("unexpected failure in %s", handler.__name__)
                error = GatewayError(
                    grpc.StatusCode.INTERNAL,
                    Reason.GATEWAY_ERROR,
                    "unexpected failure inside the gateway",
                )
            code = error.code
            self.count_failure(error)
            status = error.to_grpc_status()
            await context.abort(status.code, status.details, status.trailing_metadata)
            raise AssertionError("context.abort returned")  # pragma: no cover
        finally:
            access_log.info(
                "%s %s",
                handler.__name__,
                code.name,
                extra={logs.FIELDS: record.fields(code, time.perf_counter() - started)},
            )

    return wrapper
