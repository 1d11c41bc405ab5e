"""The S3 error -> gRPC status table, one test per row, and the error details format."""

from __future__ import annotations

import grpc
import pytest
from botocore import exceptions as boto

from gateway import errors
from gateway.errors import DOMAIN, from_s3_exception
from tests.helpers import error_info, retry_info

C = grpc.StatusCode

#: DESIGN.md's table, row by row: S3 codes (or conditions) -> expected gRPC code.
TABLE_ROWS: list[tuple[str, list[str], grpc.StatusCode, bool]] = [
    ("not found", ["NoSuchUpload", "NoSuchBucket", "NoSuchKey"], C.NOT_FOUND, False),
    (
        "access denied",
        ["AccessDenied", "AllAccessDisabled", "KMS.AccessDeniedException", "KMS.DisabledException"],
        C.PERMISSION_DENIED,
        False,
    ),
    (
        "gateway credentials rejected",
        ["InvalidAccessKeyId", "SignatureDoesNotMatch", "RequestTimeTooSkewed", "ExpiredToken"],
        C.INTERNAL,
        False,
    ),
    ("invalid part", ["InvalidPart"], C.FAILED_PRECONDITION, False),
    (
        "invalid request",
        [
            "InvalidPartOrder",
            "EntityTooSmall",
            "EntityTooLarge",
            "InvalidDigest",
            "InvalidArgument",
            "InvalidRequest",
            "BadDigest",
        ],
        C.INVALID_ARGUMENT,
        False,
    ),
    ("body cut short", ["IncompleteBody"], C.OUT_OF_RANGE, False),
    ("precondition", ["PreconditionFailed"], C.FAILED_PRECONDITION, False),
    ("conflict", ["ConditionalRequestConflict", "OperationAborted"], C.ABORTED, False),
    (
        "transient",
        ["SlowDown", "ServiceUnavailable", "InternalError", "RequestTimeout"],
        C.UNAVAILABLE,
        True,
    ),
    ("not implemented", ["NotImplemented"], C.UNIMPLEMENTED, False),
]

HTTP_STATUS_FOR = {
    C.NOT_FOUND: 404,
    C.PERMISSION_DENIED: 403,
    C.INTERNAL: 403,
    C.FAILED_PRECONDITION: 400,
    C.INVALID_ARGUMENT: 400,
    C.OUT_OF_RANGE: 400,
    C.ABORTED: 409,
    C.UNAVAILABLE: 503,
    C.UNIMPLEMENTED: 501,
}


def client_error(code: str, http_status: int, message: str = "msg") -> boto.ClientError:
    return boto.ClientError(
        {
            "Error": {"Code": code, "Message": message},
            "ResponseMetadata": {
                "HTTPStatusCode": http_status,
                "RequestId": "REQ123",
                "HTTPHeaders": {"x-amz-request-id": "REQ123"},
            },
        },
        "UploadPart",
    )


@pytest.mark.parametrize(
    ("row", "s3_codes", "expected", "retry"), TABLE_ROWS, ids=[row[0] for row in TABLE_ROWS]
)
def test_table_row(row: str, s3_codes: list[str], expected: grpc.StatusCode, retry: bool) -> None:
    for s3_code in s3_codes:
        error = from_s3_exception(client_error(s3_code, HTTP_STATUS_FOR[expected]), "UploadPart")
        assert error.code == expected, s3_code
        assert (error.retry_delay is not None) == retry, s3_code
        assert error.metadata["s3ErrorCode"] == s3_code
        assert error.metadata["s3RequestId"] == "REQ123"
        assert error.metadata["httpStatus"] == str(HTTP_STATUS_FOR[expected])


def test_every_table_code_is_covered_by_a_row() -> None:
    listed = {code for _, codes, _, _ in TABLE_ROWS for code in codes}
    for code, rule in errors.S3_ERROR_CODES.items():
        if code in listed:
            continue
        # Codes beyond DESIGN.md's table must still map to one of the table's codes.
        assert rule.code in {row[2] for row in TABLE_ROWS}, code


def test_unknown_no_such_upload_is_not_found_with_s3_details() -> None:
    """What S3 (and Ceph RGW) answer for a bogus upload id; moto answers HTTP 500 instead."""
    error = from_s3_exception(
        client_error("NoSuchUpload", 404, "The specified upload does not exist."), "UploadPart"
    )
    status = error.to_status_proto()
    assert status.code == grpc.StatusCode.NOT_FOUND.value[0]
    assert len(status.details) == 1
    info = error_info(status)
    assert info.reason == "NO_SUCH_UPLOAD"
    assert info.domain == DOMAIN
    assert dict(info.metadata) == {
        "s3ErrorCode": "NoSuchUpload",
        "s3RequestId": "REQ123",
        "httpStatus": "404",
        "operation": "UploadPart",
        "s3Message": "The specified upload does not exist.",
    }


@pytest.mark.parametrize(
    ("http_status", "expected"),
    [
        (400, C.INVALID_ARGUMENT),
        (403, C.PERMISSION_DENIED),
        (404, C.NOT_FOUND),
        (409, C.FAILED_PRECONDITION),
        (412, C.FAILED_PRECONDITION),
        (418, C.FAILED_PRECONDITION),
        (429, C.UNAVAILABLE),
        (500, C.UNAVAILABLE),
        (502, C.UNAVAILABLE),
        (503, C.UNAVAILABLE),
    ],
)
def test_unclassified_codes_fall_back_on_http_status(
    http_status: int, expected: grpc.StatusCode
) -> None:
    error = from_s3_exception(client_error("SomethingNew", http_status), "ListParts")
    assert error.code == expected
    assert error.reason == "S3_ERROR"
    assert error.metadata["s3ErrorCode"] == "SomethingNew"
    assert (error.retry_delay is not None) == (expected == C.UNAVAILABLE)


def test_moto_style_code_less_500_is_unavailable() -> None:
    error = from_s3_exception(client_error("500", 500, "Internal Server Error"), "UploadPart")
    assert error.code == C.UNAVAILABLE
    assert error.reason == "S3_ERROR"
    assert error.retry_delay is not None


@pytest.mark.parametrize(
    ("exception", "expected", "reason"),
    [
        (boto.EndpointConnectionError(endpoint_url="http://x"), C.UNAVAILABLE, "S3_UNREACHABLE"),
        (boto.ConnectionClosedError(endpoint_url="http://x"), C.UNAVAILABLE, "S3_UNREACHABLE"),
        (ConnectionResetError(), C.UNAVAILABLE, "S3_UNREACHABLE"),
        (boto.ReadTimeoutError(endpoint_url="http://x"), C.DEADLINE_EXCEEDED, "S3_TIMEOUT"),
        (boto.ConnectTimeoutError(endpoint_url="http://x"), C.DEADLINE_EXCEEDED, "S3_TIMEOUT"),
        (TimeoutError(), C.DEADLINE_EXCEEDED, "S3_TIMEOUT"),
        (boto.NoCredentialsError(), C.INTERNAL, "GATEWAY_CREDENTIALS"),
        (RuntimeError("boom"), C.INTERNAL, "GATEWAY_ERROR"),
    ],
)
def test_transport_and_gateway_failures(
    exception: Exception, expected: grpc.StatusCode, reason: str
) -> None:
    error = from_s3_exception(exception, "UploadPart")
    assert error.code == expected
    assert error.reason == reason
    assert error.code != C.UNKNOWN


def test_retry_info_and_bad_request_details() -> None:
    status = errors.s3_error("SlowDown", "Reduce your request rate.", 503, "R", "UploadPart")
    proto = status.to_status_proto()
    kinds = [d.type_url.rsplit(".", 1)[-1] for d in proto.details]
    assert kinds == ["ErrorInfo", "RetryInfo"]
    retry = retry_info(proto)
    assert retry is not None and retry.retry_delay.ToNanoseconds() > 0

    invalid = errors.InvalidRequest("part_number", "must be 1 to 10000").to_status_proto()
    assert [d.type_url.rsplit(".", 1)[-1] for d in invalid.details] == ["ErrorInfo", "BadRequest"]


@pytest.mark.parametrize(
    ("code", "reason"),
    [
        ("NoSuchUpload", "NO_SUCH_UPLOAD"),
        ("KMS.DisabledException", "KMS_DISABLED_EXCEPTION"),
        ("SSECustomerKeyMD5Mismatch", "S3_ERROR"),  # not in the table: s3ErrorCode says it
        ("500", "S3_ERROR"),
        ("", "S3_ERROR"),
    ],
)
def test_reason_is_the_tables_code_in_upper_snake_case(code: str, reason: str) -> None:
    assert errors.reason_for(code) == reason
