"""Conversion between the gateway's protobuf messages and botocore's S3 parameters.

Proto field names are S3's member names in snake_case, so the mapping is derived from botocore's
own S3 service model instead of being written out per field: every input member of an operation
whose snake_case name is a field of the request message is copied when the caller set it, and every
output member S3 returned is copied into the response message. A new S3 member therefore needs only
a proto field of the right name.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from functools import cache
from typing import Any

from botocore import xform_name
from botocore.loaders import Loader
from botocore.model import ServiceModel, Shape, StructureShape
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp

#: Members whose snake_case name botocore spells differently from the proto.
_FIELD_EXCEPTIONS = {
    "ETag": "etag",
    "ChecksumCRC32C": "checksum_crc32c",
    "ChecksumCRC64NVME": "checksum_crc64nvme",
}


@cache
def service_model() -> ServiceModel:
    """botocore's S3 model (loaded once per process)."""
    return ServiceModel(Loader().load_service_model("s3", "service-2"), service_name="s3")


def field_name(member: str) -> str:
    """The proto field name of an S3 member: ``SSECustomerKeyMD5`` -> ``sse_customer_key_md5``."""
    return _FIELD_EXCEPTIONS.get(member) or xform_name(member)


def to_params(message: Message, operation: str) -> dict[str, Any]:
    """botocore parameters for ``operation`` from the fields the caller set in ``message``."""
    input_shape = service_model().operation_model(operation).input_shape
    assert input_shape is not None
    params = _structure_to_params(message, input_shape)
    parts = getattr(message, "parts", None)
    if operation == "CompleteMultipartUpload" and parts is not None:
        shape = input_shape.members["MultipartUpload"]
        assert isinstance(shape, StructureShape)
        part_shape = shape.members["Parts"].member
        params["MultipartUpload"] = {"Parts": [_structure_to_params(p, part_shape) for p in parts]}
    return params


def from_response(response: Mapping[str, Any], message: Message, operation: str) -> Message:
    """Fill ``message`` with what S3 returned for ``operation``; returns ``message``."""
    output_shape = service_model().operation_model(operation).output_shape
    assert output_shape is not None
    _fill(message, response, output_shape)
    return message


def _structure_to_params(message: Message, shape: StructureShape) -> dict[str, Any]:
    fields = message.DESCRIPTOR.fields_by_name
    params: dict[str, Any] = {}
    for member, member_shape in shape.members.items():
        fd = fields.get(field_name(member))
        if fd is None or not _is_set(message, fd):
            continue
        params[member] = _value_to_param(getattr(message, fd.name), fd, member_shape)
    return params


def _is_set(message: Message, fd: Any) -> bool:
    if fd.is_repeated:
        return len(getattr(message, fd.name)) > 0
    if fd.has_presence:
        return message.HasField(fd.name)
    return bool(getattr(message, fd.name))


def _value_to_param(value: Any, fd: Any, shape: Shape) -> Any:
    if fd.message_type is not None and fd.message_type.full_name == Timestamp.DESCRIPTOR.full_name:
        return value.ToDatetime(tzinfo=dt.UTC)
    if fd.enum_type is not None:
        return enum_to_s3(fd.enum_type, value)
    if fd.message_type is not None and fd.message_type.GetOptions().map_entry:
        return dict(value)
    if isinstance(shape, StructureShape):
        return _structure_to_params(value, shape)
    return value


def _fill(message: Message, data: Mapping[str, Any], shape: StructureShape) -> None:
    fields = message.DESCRIPTOR.fields_by_name
    for member, value in data.items():
        fd = fields.get(field_name(member))
        if fd is None or value is None or member not in shape.members:
            continue
        member_shape = shape.members[member]
        if fd.is_repeated:
            _fill_repeated(getattr(message, fd.name), fd, value, member_shape)
        elif fd.message_type is not None:
            _fill_message(getattr(message, fd.name), value, member_shape)
        elif fd.enum_type is not None:
            setattr(message, fd.name, enum_from_s3(fd.enum_type, str(value)))
        else:
            setattr(message, fd.name, _scalar(fd, value))


def _scalar(fd: Any, value: Any) -> Any:
    """S3's XML is loosely typed (markers arrive as numbers or strings): coerce to the field."""
    if fd.type == FieldDescriptor.TYPE_STRING:
        return str(value)
    if fd.type == FieldDescriptor.TYPE_BOOL:
        return bool(value)
    if fd.cpp_type in _INTEGER_TYPES:
        return int(value)
    return value


_INTEGER_TYPES = (
    FieldDescriptor.CPPTYPE_INT32,
    FieldDescriptor.CPPTYPE_INT64,
    FieldDescriptor.CPPTYPE_UINT32,
    FieldDescriptor.CPPTYPE_UINT64,
)


def _fill_message(target: Message, value: Any, shape: Shape) -> None:
    if isinstance(target, Timestamp):
        target.FromDatetime(value)
    elif isinstance(shape, StructureShape):
        _fill(target, value, shape)


def _fill_repeated(target: Any, fd: Any, values: Any, shape: Shape) -> None:
    item_shape = shape.member
    for item in values:
        if fd.message_type is None:
            # A list of one-member structures flattened to strings (CommonPrefixes).
            target.append(next(iter(item.values())) if isinstance(item, Mapping) else item)
        else:
            _fill(target.add(), item, item_shape)


def enum_to_s3(enum: Any, number: int) -> str:
    """``CHECKSUM_ALGORITHM_CRC32C`` -> ``CRC32C``."""
    return str(enum.values_by_number[number].name).removeprefix(_enum_prefix(enum))


def enum_from_s3(enum: Any, value: str) -> int:
    """``CRC32C`` -> the enum number; 0 (UNSPECIFIED) for a value the proto does not know."""
    found = enum.values_by_name.get(_enum_prefix(enum) + value.upper())
    return found.number if found is not None else 0


def _enum_prefix(enum: Any) -> str:
    unspecified: str = enum.values_by_number[0].name
    return unspecified.removesuffix("UNSPECIFIED")
