"""Failed calls, reported as the aws CLI reports failed requests.

With S3's error code and message when S3 answered (the ErrorInfo's ``s3ErrorCode`` and
``s3Message``), else the gateway's ErrorInfo reason and message, else the gRPC code; the rich
status is read with :func:`gateway.client.status_details`. When S3 sent no message (Ceph RGW sends
none), the HTTP status stands in for it: the aws CLI has nothing useful to print then (botocore's
message is "None", and awscli's own error handler fails on it). A call that never reached the
gateway (no rich status: connection refused, TLS failure, deadline) is reported in the aws CLI's
words for an unreachable endpoint.
"""

from __future__ import annotations

import http
import logging
import re
import sys
from typing import cast

import grpc
from google.rpc import error_details_pb2

from gateway.cli.s3api.model import Command
from gateway.client import error_info, status_details
from gateway.exits import ExitCode

log = logging.getLogger(__name__)


def report_rpc_error(error: grpc.RpcError, command: Command, url: str) -> int:
    """Print a failed call the way the aws CLI prints a failed request; returns the exit code."""
    call = cast(grpc.Call, error)
    code, details, status = call.code(), call.details() or "", status_details(error)
    log.debug("Call failed: %s: %s; status details: %s", code.name, details, status)
    problem = _transport_problem(code, details, url) if status is None else None
    if problem is not None:
        sys.stderr.write(f"\n{problem}\n")
        return ExitCode.CONNECTION
    info = error_info(status)
    if info is None:
        name, message = code.name, details
    elif s3_code := info.metadata.get("s3ErrorCode"):
        name, message = s3_code, _s3_message(info, details, command.operation)
    else:
        name, message = info.reason or code.name, details
    sys.stderr.write(
        f"\nAn error occurred ({name}) when calling the {command.operation} operation: {message}\n"
    )
    return ExitCode.SERVICE_ERROR


def _transport_problem(code: grpc.StatusCode, details: str, url: str) -> str | None:
    """The aws CLI's words for a call that never reached the gateway's handlers (no rich status):
    a failed connection or TLS handshake, or the read deadline."""
    if code == grpc.StatusCode.UNAVAILABLE:
        if "ssl" in details.lower() or "certificate" in details.lower():
            return f"SSL validation failed for {url} {details}"
        return f'Could not connect to the endpoint URL: "{url}"'
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return f'Read timeout on endpoint URL: "{url}"'
    return None


def _s3_message(info: error_details_pb2.ErrorInfo, details: str, operation: str) -> str:
    """S3's own message, which the aws CLI prints alone: the ErrorInfo's ``s3Message``. The
    gateway leaves it out when S3's message is empty, and gateways older than ``s3Message`` only
    word it into the status message, "S3 <operation> failed: <code> (HTTP <n>): <message>": then
    it is what follows that prefix. No message at all: the HTTP status, said to be all there is."""
    if "s3Message" in info.metadata:
        message = str(info.metadata["s3Message"])
    else:
        code = re.escape(info.metadata["s3ErrorCode"])
        pattern = rf"S3 {re.escape(operation)} failed: {code} \(HTTP \d+\)(?:: )?"
        prefix = re.match(pattern, details)
        message = details[prefix.end() :] if prefix else details
    return message or f"S3 sent no message ({_http_status(info)})"


def _http_status(info: error_details_pb2.ErrorInfo) -> str:
    """``HTTP 404 Not Found``, from the ErrorInfo's ``httpStatus``."""
    status = info.metadata.get("httpStatus", "")
    try:
        phrase = http.HTTPStatus(int(status)).phrase
    except ValueError:
        return f"HTTP {status}" if status else "no HTTP status either"
    return f"HTTP {status} {phrase}"
