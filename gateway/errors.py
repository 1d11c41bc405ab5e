"""Errors of the gateway, and the one table mapping S3's answers to gRPC status codes.

Every failure a caller sees is a :class:`GatewayError`. It becomes a ``google.rpc.Status`` with a
canonical code (never UNKNOWN), exactly one ``ErrorInfo`` and, where a retry can succeed, a
``RetryInfo``; request validation errors add a ``BadRequest`` naming the field.

The tree:

- :class:`GatewayError` — base; carries code, reason, message, metadata, retry delay.
  - :class:`InvalidRequest` — INVALID_ARGUMENT, the request itself is malformed (``BadRequest``).
  - :class:`ChecksumMismatch` — INVALID_ARGUMENT / CHECKSUM_MISMATCH, the bytes are not what the
    caller declared.
  - :class:`LengthMismatch` — OUT_OF_RANGE / CONTENT_LENGTH_MISMATCH, more or fewer bytes than
    declared.
  - :class:`S3Error` — S3 answered with an error; the code comes from :data:`S3_ERROR_CODES`.
  - :class:`Unauthenticated` — UNAUTHENTICATED, the caller proved no identity the gateway knows.
  - :class:`PermissionDenied` — PERMISSION_DENIED / POLICY_DENIED, the gateway's policy does not
    allow the call (S3 was not contacted).
  - :class:`ResourceExhausted` — RESOURCE_EXHAUSTED, an admission limit; RetryInfo when waiting
    can help (capacity), none when the same request can never fit (a size limit).

:func:`from_s3_exception` turns whatever aiobotocore raised (an S3 error answer, a connection
failure, a timeout, missing credentials) into one of these.
"""

from __future__ import annotations

import enum
import errno
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import grpc
from botocore import exceptions as boto
from google.protobuf import duration_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

#: The ErrorInfo domain of every error the gateway returns.
DOMAIN = "s3-upload-gateway"


class Reason(enum.StrEnum):
    """Every ErrorInfo reason the gateway returns, and nothing else.

    The proto documents each one, as ``ERROR_REASON_<reason>`` of its ``ErrorReason`` enum (a test
    keeps the two lists equal). A reason names what went wrong; the status code says what to do.
    """

    # The request itself.
    INVALID_REQUEST = "INVALID_REQUEST"
    CHECKSUM_MISMATCH = "CHECKSUM_MISMATCH"
    CONTENT_LENGTH_MISMATCH = "CONTENT_LENGTH_MISMATCH"
    CONTENT_LENGTH_REQUIRED = "CONTENT_LENGTH_REQUIRED"
    TOO_MANY_PARTS = "TOO_MANY_PARTS"
    WRONG_REGION = "WRONG_REGION"
    # Resumable writes.
    RESUMABLE_WRITES_DISABLED = "RESUMABLE_WRITES_DISABLED"
    WRITE_TOKEN_INVALID = "WRITE_TOKEN_INVALID"
    WRITE_TOKEN_EXPIRED = "WRITE_TOKEN_EXPIRED"
    WRITE_TOKEN_PRINCIPAL = "WRITE_TOKEN_PRINCIPAL"
    WRITE_OFFSET_MISMATCH = "WRITE_OFFSET_MISMATCH"
    # Who calls, and what they may do.
    UNAUTHENTICATED = "UNAUTHENTICATED"
    TLS_REQUIRED = "TLS_REQUIRED"
    POLICY_DENIED = "POLICY_DENIED"
    # The gateway's admission limits.
    STREAM_LIMIT = "STREAM_LIMIT"
    PRINCIPAL_STREAM_LIMIT = "PRINCIPAL_STREAM_LIMIT"
    BUFFER_LIMIT = "BUFFER_LIMIT"
    IDLE_TIMEOUT = "IDLE_TIMEOUT"
    PART_TOO_LARGE = "PART_TOO_LARGE"
    S3_POOL_EXHAUSTED = "S3_POOL_EXHAUSTED"
    # Reaching S3.
    S3_UNREACHABLE = "S3_UNREACHABLE"
    S3_TIMEOUT = "S3_TIMEOUT"
    S3_STALLED = "S3_STALLED"
    GATEWAY_CREDENTIALS = "GATEWAY_CREDENTIALS"
    GATEWAY_ERROR = "GATEWAY_ERROR"
    #: S3 answered with an error code outside :data:`S3_ERROR_CODES` (``s3ErrorCode`` has it).
    S3_ERROR = "S3_ERROR"
    # S3's error codes that :data:`S3_ERROR_CODES` maps, spelled by :func:`reason_for`.
    NO_SUCH_UPLOAD = "NO_SUCH_UPLOAD"
    NO_SUCH_BUCKET = "NO_SUCH_BUCKET"
    NO_SUCH_KEY = "NO_SUCH_KEY"
    NO_SUCH_VERSION = "NO_SUCH_VERSION"
    ACCESS_DENIED = "ACCESS_DENIED"
    ALL_ACCESS_DISABLED = "ALL_ACCESS_DISABLED"
    ACCOUNT_PROBLEM = "ACCOUNT_PROBLEM"
    KMS_ACCESS_DENIED_EXCEPTION = "KMS_ACCESS_DENIED_EXCEPTION"
    KMS_DISABLED_EXCEPTION = "KMS_DISABLED_EXCEPTION"
    KMS_KMS_INVALID_STATE_EXCEPTION = "KMS_KMS_INVALID_STATE_EXCEPTION"
    KMS_NOT_FOUND_EXCEPTION = "KMS_NOT_FOUND_EXCEPTION"
    INVALID_ACCESS_KEY_ID = "INVALID_ACCESS_KEY_ID"
    SIGNATURE_DOES_NOT_MATCH = "SIGNATURE_DOES_NOT_MATCH"
    REQUEST_TIME_TOO_SKEWED = "REQUEST_TIME_TOO_SKEWED"
    EXPIRED_TOKEN = "EXPIRED_TOKEN"
    INVALID_TOKEN = "INVALID_TOKEN"
    TOKEN_REFRESH_REQUIRED = "TOKEN_REFRESH_REQUIRED"
    INVALID_PART_ORDER = "INVALID_PART_ORDER"
    ENTITY_TOO_SMALL = "ENTITY_TOO_SMALL"
    ENTITY_TOO_LARGE = "ENTITY_TOO_LARGE"
    INVALID_DIGEST = "INVALID_DIGEST"
    BAD_DIGEST = "BAD_DIGEST"
    INVALID_ARGUMENT = "INVALID_ARGUMENT"
    INVALID_BUCKET_NAME = "INVALID_BUCKET_NAME"
    KEY_TOO_LONG_ERROR = "KEY_TOO_LONG_ERROR"
    METADATA_TOO_LARGE = "METADATA_TOO_LARGE"
    MALFORMED_XML = "MALFORMED_XML"
    INVALID_STORAGE_CLASS = "INVALID_STORAGE_CLASS"
    INVALID_ENCRYPTION_ALGORITHM_ERROR = "INVALID_ENCRYPTION_ALGORITHM_ERROR"
    INVALID_TAG = "INVALID_TAG"
    INVALID_RANGE = "INVALID_RANGE"
    MISSING_CONTENT_LENGTH = "MISSING_CONTENT_LENGTH"
    INVALID_PART = "INVALID_PART"
    PRECONDITION_FAILED = "PRECONDITION_FAILED"
    INVALID_OBJECT_STATE = "INVALID_OBJECT_STATE"
    CONDITIONAL_REQUEST_CONFLICT = "CONDITIONAL_REQUEST_CONFLICT"
    OPERATION_ABORTED = "OPERATION_ABORTED"
    INCOMPLETE_BODY = "INCOMPLETE_BODY"
    SLOW_DOWN = "SLOW_DOWN"
    SERVICE_UNAVAILABLE = "SERVICE_UNAVAILABLE"
    INTERNAL_ERROR = "INTERNAL_ERROR"
    REQUEST_TIMEOUT = "REQUEST_TIMEOUT"
    THROTTLING = "THROTTLING"
    NOT_IMPLEMENTED = "NOT_IMPLEMENTED"


#: The reasons of the admission limits (RESOURCE_EXHAUSTED), as metrics label them.
ADMISSION_REASONS = (
    Reason.STREAM_LIMIT,
    Reason.PRINCIPAL_STREAM_LIMIT,
    Reason.BUFFER_LIMIT,
    Reason.IDLE_TIMEOUT,
    Reason.PART_TOO_LARGE,
    Reason.S3_POOL_EXHAUSTED,
)
#: Failures on the way to S3, which the gateway itself names (no S3 error code).
S3_PATH_REASONS = (
    Reason.S3_UNREACHABLE,
    Reason.S3_TIMEOUT,
    Reason.S3_STALLED,
    Reason.GATEWAY_CREDENTIALS,
)
#: The longest S3 message carried in ErrorInfo metadata (``s3Message``).
MAX_S3_MESSAGE = 1024

_DEFAULT_RETRY_DELAY = 1.0


class GatewayError(Exception):
    """A failure with everything needed to tell the caller what happened and what to do."""

    def __init__(
        self,
        code: grpc.StatusCode,
        reason: Reason,
        message: str,
        *,
        metadata: Mapping[str, str] | None = None,
        retry_delay: float | None = None,
        violations: Iterable[tuple[str, str]] = (),
    ) -> None:
        super().__init__(message)
        if code not in REASON_CODES[reason]:
            raise ValueError(f"{reason} never comes with {code.name}: see REASON_CODES")
        self.code = code
        self.reason = reason
        self.message = message
        self.metadata: dict[str, str] = dict(metadata or {})
        self.retry_delay = retry_delay
        self.violations = list(violations)

    def to_status_proto(self) -> status_pb2.Status:
        """The google.rpc.Status carried in the ``grpc-status-details-bin`` trailer."""
        status = status_pb2.Status(code=_rpc_code(self.code), message=self.message)
        info = error_details_pb2.ErrorInfo(reason=self.reason, domain=DOMAIN)
        info.metadata.update(self.metadata)
        status.details.add().Pack(info)
        if self.retry_delay is not None:
            delay = duration_pb2.Duration()
            delay.FromNanoseconds(int(self.retry_delay * 1e9))
            status.details.add().Pack(error_details_pb2.RetryInfo(retry_delay=delay))
        if self.violations:
            bad_request = error_details_pb2.BadRequest(
                field_violations=[
                    error_details_pb2.BadRequest.FieldViolation(field=f, description=d)
                    for f, d in self.violations
                ]
            )
            status.details.add().Pack(bad_request)
        return status

    def to_grpc_status(self) -> grpc.Status:
        status: grpc.Status = rpc_status.to_status(self.to_status_proto())
        return status


class InvalidRequest(GatewayError):
    """The request is malformed; nothing was sent to S3."""

    def __init__(
        self, field: str, description: str, *, reason: Reason = Reason.INVALID_REQUEST
    ) -> None:
        super().__init__(
            grpc.StatusCode.INVALID_ARGUMENT,
            reason,
            f"{field}: {description}" if field else description,
            violations=[(field, description)] if field else (),
        )


class ChecksumMismatch(GatewayError):
    """The bytes received do not match a checksum the caller declared."""

    def __init__(self, algorithm: str, expected: str, computed: str, where: str = "part") -> None:
        super().__init__(
            grpc.StatusCode.INVALID_ARGUMENT,
            Reason.CHECKSUM_MISMATCH,
            f"{algorithm} of the {where} is {computed}, the request declared {expected}; "
            "nothing was committed",
            metadata={"algorithm": algorithm, "expected": expected, "computed": computed},
        )


class LengthMismatch(GatewayError):
    """The stream carried more or fewer bytes than ``content_length`` (WriteObject:
    ``spec.object_size``, the ``field`` named)."""

    def __init__(
        self, expected: int, received: int, *, more: bool, field: str = "content_length"
    ) -> None:
        what = f"more than {expected}" if more else f"{received}"
        super().__init__(
            grpc.StatusCode.OUT_OF_RANGE,
            Reason.CONTENT_LENGTH_MISMATCH,
            f"{field} is {expected} but the stream carried {what} bytes; nothing was committed",
            metadata={"contentLength": str(expected), "received": str(received)},
        )


class Unauthenticated(GatewayError):
    """No valid credentials: a missing, malformed or unknown token, or no client certificate."""

    def __init__(self, reason: Reason, message: str) -> None:
        super().__init__(grpc.StatusCode.UNAUTHENTICATED, reason, message)


class PermissionDenied(GatewayError):
    """The authorization policy does not allow this call; nothing was sent to S3."""

    def __init__(self, message: str, operation: str) -> None:
        super().__init__(
            grpc.StatusCode.PERMISSION_DENIED,
            Reason.POLICY_DENIED,
            message,
            metadata={"operation": operation},
        )


class ResourceExhausted(GatewayError):
    """An admission limit. ``retry_delay`` is set for capacity limits (streams, buffers, an idle
    stream), where the same request can succeed later."""

    def __init__(
        self, reason: Reason, message: str, *, limit: int | float, retry_delay: float | None
    ) -> None:
        super().__init__(
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            reason,
            message,
            metadata={"limit": str(limit)},
            retry_delay=retry_delay,
        )


class S3Error(GatewayError):
    """S3 answered with an error code."""


@dataclass(frozen=True)
class Rule:
    """How one S3 error code reaches the caller."""

    code: grpc.StatusCode
    retry: bool = False


_C = grpc.StatusCode
_NOT_FOUND = Rule(_C.NOT_FOUND)
_DENIED = Rule(_C.PERMISSION_DENIED)
_OPERATOR = Rule(_C.INTERNAL)
_INVALID = Rule(_C.INVALID_ARGUMENT)
_PRECONDITION = Rule(_C.FAILED_PRECONDITION)
_ABORTED = Rule(_C.ABORTED)
_TRANSIENT = Rule(_C.UNAVAILABLE, retry=True)

#: THE table: S3 error code -> gRPC status. Codes not listed fall back on the HTTP status
#: (:func:`rule_for`).
S3_ERROR_CODES: dict[str, Rule] = {
    # The thing named does not exist.
    "NoSuchUpload": _NOT_FOUND,
    "NoSuchBucket": _NOT_FOUND,
    "NoSuchKey": _NOT_FOUND,
    "NoSuchVersion": _NOT_FOUND,
    # S3 refuses the gateway's principal access to the resource.
    "AccessDenied": _DENIED,
    "AllAccessDisabled": _DENIED,
    "AccountProblem": _DENIED,
    "KMS.AccessDeniedException": _DENIED,
    "KMS.DisabledException": _DENIED,
    "KMS.KMSInvalidStateException": _DENIED,
    "KMS.NotFoundException": _DENIED,
    # The gateway's own credentials are wrong: an operator problem, never the caller's.
    "InvalidAccessKeyId": _OPERATOR,
    "SignatureDoesNotMatch": _OPERATOR,
    "RequestTimeTooSkewed": _OPERATOR,
    "ExpiredToken": _OPERATOR,
    "InvalidToken": _OPERATOR,
    "TokenRefreshRequired": _OPERATOR,
    # The caller's request is wrong.
    "InvalidPartOrder": _INVALID,
    "EntityTooSmall": _INVALID,
    "EntityTooLarge": _INVALID,
    "InvalidDigest": _INVALID,
    "BadDigest": _INVALID,
    "InvalidArgument": _INVALID,
    "InvalidRequest": _INVALID,
    "InvalidBucketName": _INVALID,
    "KeyTooLongError": _INVALID,
    "MetadataTooLarge": _INVALID,
    "MalformedXML": _INVALID,
    "InvalidStorageClass": _INVALID,
    "InvalidEncryptionAlgorithmError": _INVALID,
    "InvalidTag": _INVALID,
    "InvalidRange": _INVALID,
    "MissingContentLength": _INVALID,
    # The state of the upload or object does not allow the request.
    "InvalidPart": _PRECONDITION,
    "PreconditionFailed": _PRECONDITION,
    "InvalidObjectState": _PRECONDITION,
    # Lost a race with another writer.
    "ConditionalRequestConflict": _ABORTED,
    "OperationAborted": _ABORTED,
    # The body S3 received was cut short.
    "IncompleteBody": Rule(_C.OUT_OF_RANGE),
    # Transient: retry with backoff.
    "SlowDown": _TRANSIENT,
    "ServiceUnavailable": _TRANSIENT,
    "InternalError": _TRANSIENT,
    "RequestTimeout": _TRANSIENT,
    "Throttling": _TRANSIENT,
    "NotImplemented": Rule(_C.UNIMPLEMENTED),
}

_HTTP_STATUS_RULES: dict[int, Rule] = {
    400: _INVALID,
    403: _DENIED,
    404: _NOT_FOUND,
    405: Rule(_C.UNIMPLEMENTED),
    409: _PRECONDITION,
    411: _INVALID,
    412: _PRECONDITION,
    413: _INVALID,
    416: _INVALID,
    429: _TRANSIENT,
    501: Rule(_C.UNIMPLEMENTED),
}


#: The status code of each reason the gateway gives itself.
_GATEWAY_REASON_CODES: dict[Reason, grpc.StatusCode] = {
    Reason.INVALID_REQUEST: _C.INVALID_ARGUMENT,
    Reason.CHECKSUM_MISMATCH: _C.INVALID_ARGUMENT,
    Reason.CONTENT_LENGTH_MISMATCH: _C.OUT_OF_RANGE,
    Reason.CONTENT_LENGTH_REQUIRED: _C.INVALID_ARGUMENT,
    Reason.TOO_MANY_PARTS: _C.FAILED_PRECONDITION,
    Reason.WRONG_REGION: _C.FAILED_PRECONDITION,
    Reason.RESUMABLE_WRITES_DISABLED: _C.UNIMPLEMENTED,
    Reason.WRITE_TOKEN_INVALID: _C.INVALID_ARGUMENT,
    Reason.WRITE_TOKEN_EXPIRED: _C.FAILED_PRECONDITION,
    Reason.WRITE_TOKEN_PRINCIPAL: _C.PERMISSION_DENIED,
    Reason.WRITE_OFFSET_MISMATCH: _C.FAILED_PRECONDITION,
    Reason.UNAUTHENTICATED: _C.UNAUTHENTICATED,
    Reason.TLS_REQUIRED: _C.UNAUTHENTICATED,
    Reason.POLICY_DENIED: _C.PERMISSION_DENIED,
    **{reason: _C.RESOURCE_EXHAUSTED for reason in ADMISSION_REASONS},
    Reason.S3_UNREACHABLE: _C.UNAVAILABLE,
    Reason.S3_TIMEOUT: _C.DEADLINE_EXCEEDED,
    Reason.S3_STALLED: _C.UNAVAILABLE,
    Reason.GATEWAY_CREDENTIALS: _C.INTERNAL,
    Reason.GATEWAY_ERROR: _C.INTERNAL,
}
#: The RPCs that stream the caller's bytes.
STREAMING_RPCS = frozenset({"UploadPart", "WriteObject"})
#: Reasons only the streaming RPCs give; any RPC may give every other one.
STREAM_REASONS = frozenset(
    {
        Reason.CHECKSUM_MISMATCH,
        Reason.CONTENT_LENGTH_MISMATCH,
        Reason.CONTENT_LENGTH_REQUIRED,
        Reason.TOO_MANY_PARTS,
        Reason.STREAM_LIMIT,
        Reason.PRINCIPAL_STREAM_LIMIT,
        Reason.BUFFER_LIMIT,
        Reason.IDLE_TIMEOUT,
        Reason.PART_TOO_LARGE,
        Reason.INCOMPLETE_BODY,
    }
)


def rule_for(s3_code: str, http_status: int) -> Rule:
    """The rule for an S3 error code, falling back on the HTTP status for unknown codes."""
    rule = S3_ERROR_CODES.get(s3_code) or _HTTP_STATUS_RULES.get(http_status)
    if rule is not None:
        return rule
    if http_status >= 500:
        return _TRANSIENT
    return _PRECONDITION


def reason_for(s3_code: str) -> Reason:
    """ErrorInfo reason for an S3 code: ``NoSuchUpload`` -> ``NO_SUCH_UPLOAD``; S3_ERROR for a
    code the table does not know."""
    if s3_code not in S3_ERROR_CODES:
        return Reason.S3_ERROR
    words = re.findall(r"[A-Z]+\d*(?![a-z])|[A-Z]?[a-z]+\d*|\d+", s3_code)
    return Reason("_".join(w.upper() for w in words))


def _reason_codes() -> dict[Reason, frozenset[grpc.StatusCode]]:
    codes = {reason: {code} for reason, code in _GATEWAY_REASON_CODES.items()}
    for s3_code, rule in S3_ERROR_CODES.items():
        codes.setdefault(reason_for(s3_code), set()).add(rule.code)
    codes[Reason.S3_ERROR] = {r.code for r in _HTTP_STATUS_RULES.values()} | {
        _TRANSIENT.code,
        _PRECONDITION.code,
    }
    return {reason: frozenset(found) for reason, found in codes.items()}


#: Every status code each reason comes with: a GatewayError with any other pair is a bug.
REASON_CODES = _reason_codes()


def codes_of(rpc: str) -> frozenset[grpc.StatusCode]:
    """The status codes the gateway can answer ``rpc`` with (besides the caller's own
    CANCELLED): the proto documents exactly these for each RPC."""
    return frozenset(
        code
        for reason, codes in REASON_CODES.items()
        if rpc in STREAMING_RPCS or reason not in STREAM_REASONS
        for code in codes
    )


def s3_error(
    s3_code: str, message: str, http_status: int, request_id: str, operation: str
) -> S3Error:
    """Build the error for an S3 error answer."""
    rule = rule_for(s3_code, http_status)
    metadata = {"httpStatus": str(http_status), "operation": operation}
    if s3_code:  # none when S3 answered with a bare HTTP status
        metadata["s3ErrorCode"] = s3_code
    if request_id:
        metadata["s3RequestId"] = request_id
    if message:
        metadata["s3Message"] = message[:MAX_S3_MESSAGE]
    text = f"S3 {operation} failed: {s3_code} (HTTP {http_status})"
    if not s3_code:
        text = f"S3 {operation} failed: HTTP {http_status}"
    if message:
        text += f": {message}"
    return S3Error(
        rule.code,
        reason_for(s3_code),
        text,
        metadata=metadata,
        retry_delay=_DEFAULT_RETRY_DELAY if rule.retry else None,
    )


def upload_gone(failure: S3Error) -> GatewayError:
    """The answer when S3 failed an operation on an upload with a server error and ListParts
    then said the upload does not exist."""
    operation = failure.metadata.get("operation", "")
    metadata = {**failure.metadata, "checkedWith": "ListParts"}
    return GatewayError(
        _C.NOT_FOUND,
        Reason.NO_SUCH_UPLOAD,
        f"{failure.message}; ListParts says the upload does not exist: start a new upload "
        f"(the {operation} is not worth retrying)",
        metadata=metadata,
    )


def _request_id(response: Mapping[str, Any]) -> str:
    meta = response.get("ResponseMetadata") or {}
    headers = meta.get("HTTPHeaders") or {}
    return str(
        meta.get("RequestId")
        or headers.get("x-amz-request-id")
        or headers.get("x-amzn-requestid")
        or ""
    )


def from_s3_exception(exc: Exception, operation: str) -> GatewayError:
    """Classify anything an S3 call raised."""
    if isinstance(exc, GatewayError):
        return exc
    if isinstance(exc, boto.ClientError):
        error = exc.response.get("Error") or {}
        meta = exc.response.get("ResponseMetadata") or {}
        http_status = int(meta.get("HTTPStatusCode") or 0)
        code = str(error.get("Code") or "")
        if code == str(http_status):
            code = ""  # botocore's stand-in for an answer without an error code
        return s3_error(
            code, str(error.get("Message") or ""), http_status, _request_id(exc.response), operation
        )
    if isinstance(exc, boto.ReadTimeoutError | boto.ConnectTimeoutError | TimeoutError):
        return GatewayError(
            _C.DEADLINE_EXCEEDED,
            Reason.S3_TIMEOUT,
            f"S3 {operation} timed out: {type(exc).__name__}",
            metadata={"operation": operation},
            retry_delay=_DEFAULT_RETRY_DELAY,
        )
    if isinstance(
        exc,
        boto.EndpointConnectionError | boto.ConnectionClosedError | boto.HTTPClientError | OSError,
    ):
        if _timed_out(exc):
            return s3_stalled(operation, "the kernel aborted the connection (TCP_USER_TIMEOUT)")
        return GatewayError(
            _C.UNAVAILABLE,
            Reason.S3_UNREACHABLE,
            f"S3 {operation} failed to connect or the connection broke: {type(exc).__name__}",
            metadata={"operation": operation},
            retry_delay=_DEFAULT_RETRY_DELAY,
        )
    if isinstance(
        exc, boto.NoCredentialsError | boto.PartialCredentialsError | boto.CredentialRetrievalError
    ):
        return GatewayError(
            _C.INTERNAL,
            Reason.GATEWAY_CREDENTIALS,
            "the gateway has no usable AWS credentials; the operator must configure them",
            metadata={"operation": operation},
        )
    if isinstance(exc, boto.ParamValidationError):
        return InvalidRequest("", f"S3 rejected the parameters: {exc}")
    return GatewayError(
        _C.INTERNAL,
        Reason.GATEWAY_ERROR,
        f"S3 {operation} failed inside the gateway: {type(exc).__name__}",
        metadata={"operation": operation},
    )


def s3_stalled(operation: str, what: str) -> GatewayError:
    """S3 took no byte of a request, or never invited its body, for GATEWAY_S3_STALL_TIMEOUT."""
    return GatewayError(
        _C.UNAVAILABLE,
        Reason.S3_STALLED,
        f"S3 {operation} made no progress for GATEWAY_S3_STALL_TIMEOUT: {what}; the request "
        "was aborted and nothing was committed",
        metadata={"operation": operation},
        retry_delay=_DEFAULT_RETRY_DELAY,
    )


def _timed_out(exc: BaseException) -> bool:
    """Whether a connection failure is the kernel's ETIMEDOUT: no acknowledgement from S3."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError) and current.errno == errno.ETIMEDOUT:
            return True
        wrapped = getattr(current, "kwargs", {}).get("error")
        current = wrapped if isinstance(wrapped, BaseException) else current.__cause__
    return False


def _rpc_code(code: grpc.StatusCode) -> int:
    value: int = code.value[0]
    return value


__all__ = [
    "ADMISSION_REASONS",
    "DOMAIN",
    "REASON_CODES",
    "S3_ERROR_CODES",
    "S3_PATH_REASONS",
    "STREAMING_RPCS",
    "STREAM_REASONS",
    "ChecksumMismatch",
    "GatewayError",
    "InvalidRequest",
    "LengthMismatch",
    "Reason",
    "Rule",
    "S3Error",
    "codes_of",
    "from_s3_exception",
    "reason_for",
    "rule_for",
    "s3_error",
    "s3_stalled",
    "upload_gone",
]
