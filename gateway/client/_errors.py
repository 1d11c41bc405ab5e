"""Failed calls: the rich status the gateway sends, and :class:`GatewayCallError` built from it."""

from __future__ import annotations

from collections.abc import Awaitable
from typing import TypeVar, cast

import grpc
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

T = TypeVar("T")

#: Codes on which a part is re-sent.
RETRYABLE_CODES = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.ABORTED,
    }
)
#: The message of the INTERNAL that grpc.aio's client makes up (grpc/grpc#36066).
_CORE_INTERNAL = "Internal error from Core"


def status_details(error: grpc.RpcError) -> status_pb2.Status | None:
    """The ``google.rpc.Status`` a failed call carries in its ``grpc-status-details-bin``
    trailer; None when it has none (the call never reached the gateway's handlers), or when its
    code or message is not the call's own (grpc made up the error, as in grpc/grpc#36066).

    Takes the error of a synchronous call (a ``grpc.RpcError`` that is also a ``grpc.Call``) and
    a ``grpc.aio.AioRpcError`` alike: both hold their status, and grpc_status's
    ``rpc_status.from_call`` reads it. (``rpc_status.aio.from_call`` is for a ``grpc.aio`` call
    object, whose accessors are coroutines; an AioRpcError's are not.)"""
    if not isinstance(error, grpc.Call | grpc.aio.AioRpcError):
        return None  # a bare RpcError holds no status
    try:
        # AioRpcError has the synchronous code(), details() and trailing_metadata() of a Call.
        status = rpc_status.from_call(cast(grpc.Call, error))
    except ValueError:
        return None
    return cast(status_pb2.Status | None, status)


def error_info(
    source: grpc.RpcError | status_pb2.Status | None,
) -> error_details_pb2.ErrorInfo | None:
    """The ``ErrorInfo`` of a failed call (sync or aio, see :func:`status_details`) or of its
    status: its ``reason`` (``NO_SUCH_UPLOAD``…), ``domain`` and ``metadata`` (S3's error code
    as ``s3ErrorCode``…). Every error the gateway sends has exactly one; None for an error it did
    not send."""
    status = source if isinstance(source, status_pb2.Status | None) else status_details(source)
    for detail in status.details if status is not None else ():
        info = error_details_pb2.ErrorInfo()
        if detail.Unpack(info):
            return info
    return None


def _retry_delay(status: status_pb2.Status) -> float | None:
    """The delay of the status's ``RetryInfo``, in seconds; None without one."""
    for detail in status.details:
        retry = error_details_pb2.RetryInfo()
        if detail.Unpack(retry):
            return float(retry.retry_delay.ToNanoseconds() / 1e9)
    return None


class GatewayCallError(Exception):
    """A call to the gateway failed: the gRPC code, the message and the rich error details."""

    def __init__(
        self,
        code: grpc.StatusCode,
        message: str,
        error_info: error_details_pb2.ErrorInfo | None = None,
        retry_delay: float | None = None,
    ) -> None:
        super().__init__(f"{code.name}: {message}")
        self.code = code
        self.message = message
        self.error_info = error_info
        self.retry_delay = retry_delay

    @classmethod
    def from_rpc_error(cls, error: grpc.aio.AioRpcError) -> GatewayCallError:
        """Parse the ``google.rpc.Status`` of the error (:func:`status_details`), if the gateway
        sent one."""
        status = status_details(error)
        if status is None:
            return cls(error.code(), error.details() or "")
        return cls(error.code(), status.message, error_info(status), _retry_delay(status))

    @property
    def reason(self) -> str:
        """The ErrorInfo reason (``NO_SUCH_UPLOAD``…), empty when there is none."""
        return self.error_info.reason if self.error_info is not None else ""

    @property
    def is_core_internal(self) -> bool:
        """INTERNAL made up by grpc.aio's client (grpc/grpc#36066), not sent by the gateway."""
        return (
            self.code == grpc.StatusCode.INTERNAL
            and self.error_info is None
            and _CORE_INTERNAL in self.message
        )

    @property
    def retryable(self) -> bool:
        """Whether re-sending the same request can succeed."""
        return self.code in RETRYABLE_CODES or self.is_core_internal


async def rpc(call: Awaitable[T]) -> T:
    """Await a unary call; a failure raises :class:`GatewayCallError`."""
    try:
        return await call
    except grpc.aio.AioRpcError as error:
        raise GatewayCallError.from_rpc_error(error) from None
