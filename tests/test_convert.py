"""gateway.convert: the one mapping between S3 members (botocore's model) and proto fields, both
directions, for every RPC the gateway serves and the CLI calls."""

from __future__ import annotations

import datetime as dt
from typing import Any, cast

import pytest
from botocore.model import ListShape, Shape, StructureShape
from google.protobuf.descriptor import Descriptor
from google.protobuf.message import Message

from gateway import convert
from gateway.v1 import upload_service_pb2 as pb

_SERVICE = pb.DESCRIPTOR.services_by_name["UploadService"]
#: The RPCs that are not one S3 operation each: WriteObject carries CreateMultipartUpload's
#: request and answers with what CompleteMultipartUpload or PutObject answered; the resumable
#: write RPCs take and give write tokens.
_COMPOSED = {"WriteObject", "StartResumableWrite", "QueryWriteStatus", "CancelResumableWrite"}
OPERATIONS = [method.name for method in _SERVICE.methods if method.name not in _COMPOSED]
#: The fields of WrittenObject that are the gateway's own, not S3 members.
_WRITTEN_BY_THE_GATEWAY = {"parts", "computed_checksums"}
#: The members no field carries: UploadPart's body streams in ``data`` messages.
_STREAMED = {("UploadPart", "Body")}
_WHEN = dt.datetime(2024, 5, 1, 12, 30, 15, 123000, tzinfo=dt.UTC)


def _messages(operation: str) -> tuple[type[Message], type[Message]]:
    """The request message carrying the operation's input (UploadPart's header) and its
    response message."""
    method = _SERVICE.methods_by_name[operation]
    request = "UploadPartHeader" if operation == "UploadPart" else method.input_type.name
    return getattr(pb, request), getattr(pb, method.output_type.name)


def _shapes(operation: str) -> tuple[StructureShape, StructureShape]:
    model = convert.service_model().operation_model(operation)
    assert model.input_shape is not None and model.output_shape is not None
    return model.input_shape, model.output_shape


def _nested(message: type[Message], member: str, shape: Shape) -> tuple[Any, Shape] | None:
    """The message class and structure shape of a member carried by a nested gateway message."""
    fd = convert.field_of(message, member)
    assert fd is not None
    kind = fd.message_type
    if kind is None or kind.GetOptions().map_entry or not kind.full_name.startswith("gateway.v1."):
        return None
    if member == "MultipartUpload":
        shape = cast(StructureShape, shape).members["Parts"]
    if isinstance(shape, ListShape):
        shape = shape.member
    return getattr(pb, kind.name), shape


def _pairs(operation: str, message: type[Message], shape: StructureShape) -> set[tuple[str, str]]:
    """Every (message.field, member) pair, checking on the way that each field of ``message`` is
    the field of exactly one member and each member has a field."""
    descriptor = cast(Descriptor, message.DESCRIPTOR)
    pairs: set[tuple[str, str]] = set()
    fields: dict[str, str] = {}
    for member, member_shape in shape.members.items():
        fd = convert.field_of(message, member)
        if fd is None:
            assert (operation, member) in _STREAMED, f"{descriptor.name} carries no {member}"
            continue
        assert fd.name not in fields, f"{fd.name} carries {fields[fd.name]} and {member}"
        fields[fd.name] = member
        pairs.add((f"{descriptor.name}.{fd.name}", member))
        nested = _nested(message, member, member_shape)
        if nested is not None:
            pairs |= _pairs(operation, nested[0], cast(StructureShape, nested[1]))
    assert set(fields) == set(descriptor.fields_by_name), f"{descriptor.name}: fields no member has"
    return pairs


@pytest.mark.parametrize("operation", OPERATIONS)
def test_every_field_maps_to_one_member_and_back(operation: str) -> None:
    request, response = _messages(operation)
    input_shape, output_shape = _shapes(operation)
    pairs = _pairs(operation, request, input_shape) | _pairs(operation, response, output_shape)
    assert pairs
    for field, member in pairs:
        assert convert.field_name(member) == field.split(".")[1] or member == "MultipartUpload"


def _sample(message: type[Message], shape: StructureShape) -> dict[str, Any]:
    """A value for every member the proto carries, none of them empty or zero."""
    values: dict[str, Any] = {}
    for member, member_shape in shape.members.items():
        if convert.field_of(message, member) is None:
            continue
        nested = _nested(message, member, member_shape)
        if nested is not None:
            item = _sample(nested[0], cast(StructureShape, nested[1]))
            if member == "MultipartUpload":
                values[member] = {"Parts": [item, item]}
            elif member_shape.type_name == "list":
                values[member] = [item, item]
            else:
                values[member] = item
        else:
            values[member] = _scalar(member, member_shape)
    return values


def _scalar(member: str, shape: Shape) -> Any:
    kind = shape.type_name
    if kind == "list":  # a list the proto flattens to its items' only member (CommonPrefixes)
        item = cast(ListShape, shape).member
        inner = next(iter(cast(StructureShape, item).members))
        return [{inner: f"{member}-1"}, {inner: f"{member}-2"}]
    if kind == "map":
        return {"color": "blue", "size": "L"}
    if kind in ("integer", "long"):
        return 7
    if kind == "boolean":
        return True
    if kind == "timestamp":
        return _WHEN
    assert kind == "string", (member, kind)
    return shape.enum[0] if shape.enum else f"{member}-value"


def test_the_written_object_carries_what_complete_or_put_answers() -> None:
    carried: set[str] = set()
    for operation in ("CompleteMultipartUpload", "PutObject"):
        _, output_shape = _shapes(operation)
        for member in output_shape.members:
            fd = convert.field_of(pb.WrittenObject, member)
            if fd is not None:
                carried.add(fd.name)
        answer = _sample(pb.WrittenObject, output_shape)
        message = convert.from_response(answer, pb.WrittenObject(), operation)
        assert convert.to_response(message, operation) == answer
    fields = set(pb.WrittenObject.DESCRIPTOR.fields_by_name)
    assert fields - _WRITTEN_BY_THE_GATEWAY == carried


@pytest.mark.parametrize("operation", OPERATIONS)
def test_requests_go_both_ways(operation: str) -> None:
    request, _ = _messages(operation)
    input_shape, _ = _shapes(operation)
    params = _sample(request, input_shape)
    message = convert.from_params(params, request(), operation)  # the CLI's direction
    assert convert.to_params(message, operation) == params  # the gateway's direction


@pytest.mark.parametrize("operation", OPERATIONS)
def test_responses_go_both_ways(operation: str) -> None:
    _, response = _messages(operation)
    _, output_shape = _shapes(operation)
    answer = _sample(response, output_shape)
    message = convert.from_response(answer, response(), operation)  # the gateway's direction
    printed = convert.to_response(message, operation)  # the CLI's direction
    assert printed == answer
    # ... in the order botocore's parser produces: header members first, then the body's.
    headers = [m for m, s in output_shape.members.items() if convert.in_headers(s) and m in answer]
    body = [m for m, s in output_shape.members.items() if not convert.in_headers(s) and m in answer]
    assert list(printed) == headers + body


def test_empty_values_are_absent_except_integers_s3_always_sends() -> None:
    page = pb.ListPartsResponse(parts=[pb.Part(part_number=1, size=0, checksum_crc32="")])
    printed = convert.to_response(page, "ListParts")
    assert printed == {
        "PartNumberMarker": 0,
        "IsTruncated": False,
        "Parts": [{"PartNumber": 1, "Size": 0}],
    }


@pytest.mark.parametrize(
    ("operation", "answer"),
    [
        ("UploadPart", {"ETag": ""}),
        ("CompleteMultipartUpload", {"Bucket": "b", "Key": "k", "ETag": ""}),
        ("UploadPartCopy", {"CopyPartResult": {"ETag": ""}}),
        (
            "ListParts",
            {
                "PartNumberMarker": 5,
                "NextPartNumberMarker": 0,
                "IsTruncated": False,
                "Parts": [{"PartNumber": 1, "ETag": "", "Size": 3}],
                "Initiator": {"ID": "", "DisplayName": ""},
                "Owner": {"DisplayName": "", "ID": ""},
            },
        ),
        ("ListParts", {"PartNumberMarker": 0, "IsTruncated": False, "Owner": {}}),
        (
            "ListMultipartUploads",
            {
                "Bucket": "b",
                "KeyMarker": "",
                "UploadIdMarker": "",
                "NextKeyMarker": "",
                "Prefix": "",
                "Delimiter": "",
                "NextUploadIdMarker": "",
                "IsTruncated": False,
                "Uploads": [{"UploadId": "u", "Key": "k", "Owner": {"DisplayName": "", "ID": ""}}],
            },
        ),
    ],
    ids=["part-etag", "complete-etag", "copy-etag", "owner-and-marker", "empty-owner", "markers"],
)
def test_empty_values_s3_sent_come_back(operation: str, answer: dict[str, Any]) -> None:
    """What S3 sent empty ("" or 0, an empty structure) is told from what it did not send."""
    _, response = _messages(operation)
    message = convert.from_response(answer, response(), operation)
    assert convert.to_response(message, operation) == answer
    # ... and over the wire: the empty values are sent.
    again = response.FromString(message.SerializeToString())
    assert convert.to_response(again, operation) == answer


def test_absent_values_stay_absent() -> None:
    message = convert.from_response(
        {"Bucket": "b", "Key": "k"}, pb.CompleteMultipartUploadResponse(), "CompleteMultipartUpload"
    )
    assert convert.to_response(message, "CompleteMultipartUpload") == {"Bucket": "b", "Key": "k"}


def test_timestamps_can_be_rendered() -> None:
    created = pb.CreateMultipartUploadResponse(upload_id="u")
    created.abort_date.FromDatetime(_WHEN)
    printed = convert.to_response(
        created,
        "CreateMultipartUpload",
        lambda when, shape: f"{when:%Y} {convert.in_headers(shape)}",
    )
    assert printed == {"AbortDate": "2024 True", "UploadId": "u"}


@pytest.mark.parametrize(
    ("params", "message"),
    [
        (
            {"ChecksumAlgorithm": "CRC99"},
            "Invalid value for parameter ChecksumAlgorithm: 'CRC99'; valid values: CRC32, ",
        ),
        ({"Key": b"\xff"}, "Invalid value for parameter Key: not UTF-8"),
        ({"ContentLength": "ten"}, "Invalid value for parameter ContentLength: 'ten'"),
    ],
)
def test_a_value_the_field_cannot_take_is_refused(params: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError) as refused:
        convert.from_params(params, pb.UploadPartHeader(), "UploadPart")
    assert str(refused.value).startswith(message)
