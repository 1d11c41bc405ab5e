"""One list of error reasons: errors.Reason, the proto's ErrorReason and each RPC's status codes."""

from __future__ import annotations

import re
from pathlib import Path

import grpc
import pytest

from gateway import errors
from gateway.errors import Reason
from gateway.v1 import upload_service_pb2 as pb

PROTO = Path(__file__).parent.parent / "proto" / "gateway" / "v1" / "upload_service.proto"
_CODE_NAMES = {code.name for code in grpc.StatusCode}


def test_every_reason_is_documented_in_the_proto_and_nothing_else() -> None:
    values = pb.DESCRIPTOR.enum_types_by_name["ErrorReason"].values_by_name
    documented = {name.removeprefix("ERROR_REASON_") for name in values}
    assert documented - {"UNSPECIFIED"} == {reason.value for reason in Reason}


def test_every_reason_has_its_status_codes() -> None:
    assert set(errors.REASON_CODES) == set(Reason)


def test_every_s3_error_code_in_the_table_has_a_reason_of_its_own() -> None:
    reasons = {errors.reason_for(code) for code in errors.S3_ERROR_CODES}
    assert Reason.S3_ERROR not in reasons
    assert len(reasons) == len(errors.S3_ERROR_CODES)


def test_an_unknown_s3_error_code_is_s3_error_with_the_code_in_metadata() -> None:
    error = errors.s3_error("SomethingNew", "it broke", 400, "REQ1", "ListParts")
    assert error.reason == Reason.S3_ERROR
    assert error.metadata["s3ErrorCode"] == "SomethingNew"
    assert error.metadata["s3Message"] == "it broke"


def test_s3_s_message_travels_in_metadata_capped() -> None:
    error = errors.s3_error("NoSuchUpload", "x" * 5000, 404, "", "UploadPart")
    assert error.reason == Reason.NO_SUCH_UPLOAD
    assert error.metadata["s3Message"] == "x" * errors.MAX_S3_MESSAGE
    assert "s3Message" not in errors.s3_error("NoSuchUpload", "", 404, "", "UploadPart").metadata


def test_a_reason_never_comes_with_a_code_it_is_not_documented_with() -> None:
    with pytest.raises(ValueError, match="CHECKSUM_MISMATCH never comes with NOT_FOUND"):
        errors.GatewayError(grpc.StatusCode.NOT_FOUND, Reason.CHECKSUM_MISMATCH, "no")


def _rpc_comments() -> dict[str, str]:
    """Each RPC's comment in the proto, by RPC name."""
    text = PROTO.read_text()
    service = text[text.index("service UploadService {") :]
    comments: dict[str, str] = {}
    lines: list[str] = []
    for line in service.splitlines()[1:]:
        stripped = line.strip()
        if stripped.startswith("//"):
            lines.append(stripped.removeprefix("//").strip())
        elif match := re.match(r"rpc (\w+)\(", stripped):
            comments[match.group(1)] = " ".join(lines)
            lines = []
        elif stripped == "}":
            break
    return comments


def _documented_codes(comment: str) -> set[str]:
    paragraph = comment[comment.index("Status codes:") :]
    return {word for word in re.findall(r"\b[A-Z_]{5,}\b", paragraph) if word in _CODE_NAMES}


@pytest.mark.parametrize(
    "rpc", [m.name for m in pb.DESCRIPTOR.services_by_name["UploadService"].methods]
)
def test_each_rpc_documents_exactly_the_codes_it_can_return(rpc: str) -> None:
    documented = _documented_codes(_rpc_comments()[rpc])
    # CANCELLED is the caller's own doing; grpc reports it, the gateway never chooses it.
    assert documented - {"CANCELLED"} == {code.name for code in errors.codes_of(rpc)}
