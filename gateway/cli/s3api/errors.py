"""Failed calls, reported as the aws CLI reports failed requests.

With S3's error code and message when S3 answered (the ErrorInfo's ``s3ErrorCode``), else the
gateway's ErrorInfo reason, else the gRPC code. A call that never reached the gateway (no rich
status: connection refused, TLS failure, deadline) is reported in the aws CLI's words for an
unreachable endpoint.
"""

from __future__ import annotations

import logging
import re
import sys
from typing import cast

import grpc
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from gateway.cli.s3api.model import Command
from gateway.exits import ExitCode

log = logging.getLogger(__name__)


def report_rpc_error(call: grpc.Call, command: Command, url: str) -> int:
    """Print a failed call the way the aws CLI prints a failed request; returns the exit code."""
    code, details, status = call.code(), call.details() or "", _rich_status(call)
    log.debug("Call failed: %s: %s; status details: %s", code.name, details, status)
    problem = _transport_problem(code, details, url) if status is None else None
    if problem is not None:
        sys.stderr.write(f"\n{problem}\n")
        return ExitCode.CONNECTION
    info = error_info(status)
    error = (info.metadata.get("s3ErrorCode") or info.reason) if info else ""
    message = s3_message(details, command.operation, error) if info else details
    sys.stderr.write(
        f"\nAn error occurred ({error or code.name}) when calling the {command.operation} "
        f"operation: {message}\n"
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


def _rich_status(call: grpc.Call) -> status_pb2.Status | None:
    try:
        return cast(status_pb2.Status | None, rpc_status.from_call(call))
    except ValueError:
        return None


def error_info(status: status_pb2.Status | None) -> error_details_pb2.ErrorInfo | None:
    """The status's ErrorInfo (the gateway sends exactly one)."""
    for detail in status.details if status is not None else ():
        info = error_details_pb2.ErrorInfo()
        if detail.Unpack(info):
            return info
    return None


def s3_message(details: str, operation: str, code: str) -> str:
    """S3's own message: the gateway words S3 errors "S3 <operation> failed: <code> (HTTP <n>):
    <message>", and the aws CLI prints the message alone."""
    prefix = rf"S3 {re.escape(operation)} failed: {re.escape(code)} \(HTTP \d+\)(?:: )?"
    match = re.match(prefix, details)
    return details[match.end() :] if match else details
