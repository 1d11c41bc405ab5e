"""The one mapping between the gateway's protobuf messages and botocore's S3 parameters and
responses.

Proto field names are S3's member names in snake_case, so the mapping is derived from botocore's
own S3 service model instead of being written out per field: a member is carried by the field
:func:`field_name` names, in the message of the member's structure. A new S3 member therefore
needs only a proto field of the right name. Two exceptions are explicit: members whose snake_case
name botocore spells differently (``ETag`` is ``etag``), and the one structure the proto flattens
(CompleteMultipartUpload's ``MultipartUpload`` is its ``Parts``, the request's ``parts`` field).

Both directions of both kinds of message live here:

* requests: :func:`to_params` (a request message -> botocore parameters, what the gateway sends
  S3) and :func:`from_params` (botocore parameters -> a request message, what the CLI sends the
  gateway);
* responses: :func:`from_response` (what S3 returned -> a response message, what the gateway
  answers) and :func:`to_response` (a response message -> the dict botocore would have returned,
  what the CLI prints).

Proto3 cannot tell an empty string or a 0 from an absent member unless the field has presence.
The response fields S3 may send empty (ETags, owners' names and ids, list markers) are
``optional`` in the proto: :func:`from_response` sets them whenever S3 sent them, even empty, and
:func:`to_response` gives back exactly what was set, "" and 0 included, as botocore would. Other
fields that are empty or 0 are left out, except the few integers S3 always sends.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterable, Mapping
from functools import cache
from typing import Any, cast

from botocore import xform_name
from botocore.loaders import Loader
from botocore.model import ListShape, ServiceModel, Shape, StructureShape
from google.protobuf.descriptor import Descriptor, EnumDescriptor, FieldDescriptor
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp

#: Members whose snake_case name botocore spells differently from the proto.
_FIELD_EXCEPTIONS = {
    "ETag": "etag",
    "ChecksumCRC32C": "checksum_crc32c",
    "ChecksumCRC64NVME": "checksum_crc64nvme",
}
#: Structures the proto flattens to their only member: CompletedMultipartUpload is its ``Parts``.
_FLATTENED = {"MultipartUpload": "Parts"}
#: Integer members S3 always sends, where 0 is a real value (an empty part's Size, the first
#: page's PartNumberMarker); proto3 cannot tell them from unset.
_ZERO_IS_A_VALUE = frozenset({"Size", "PartNumberMarker"})
#: Where botocore's REST-XML parser finds the members it puts first in a response.
_HEADER_LOCATIONS = frozenset({"header", "headers", "statusCode"})

#: How :func:`to_response` renders a timestamp of the given member shape.
TimestampFormat = Callable[[dt.datetime, Shape], Any]


@cache
def service_model() -> ServiceModel:
    """botocore's S3 model (loaded once per process)."""
    return ServiceModel(Loader().load_service_model("s3", "service-2"), service_name="s3")


def field_name(member: str) -> str:
    """The proto field name of an S3 member: ``SSECustomerKeyMD5`` -> ``sse_customer_key_md5``."""
    return _FIELD_EXCEPTIONS.get(member) or xform_name(member)


def field_of(message: Message | type[Message], member: str) -> FieldDescriptor | None:
    """The field of ``message`` carrying the S3 member, or None when the proto has none."""
    descriptor = cast(Descriptor, message.DESCRIPTOR)
    fd: FieldDescriptor | None = descriptor.fields_by_name.get(
        field_name(_FLATTENED.get(member, member))
    )
    return fd


# --- request message -> botocore parameters (the gateway) ----------------------------------------


def to_params(message: Message, operation: str) -> dict[str, Any]:
    """botocore parameters for ``operation`` from the fields the caller set in ``message``."""
    return _structure_to_params(message, _input_shape(operation))


def _structure_to_params(message: Message, shape: StructureShape) -> dict[str, Any]:
    params: dict[str, Any] = {}
    for member, member_shape in shape.members.items():
        fd = field_of(message, member)
        if fd is None:
            continue
        if member in _FLATTENED:
            inner = _FLATTENED[member]
            item_shape = _list_member(_members(member_shape)[inner])
            items = getattr(message, fd.name)
            params[member] = {inner: [_structure_to_params(i, item_shape) for i in items]}
        elif _is_set(message, fd):
            params[member] = _value_to_param(getattr(message, fd.name), fd, member_shape)
    return params


def _is_set(message: Message, fd: FieldDescriptor) -> bool:
    if fd.is_repeated:
        return len(getattr(message, fd.name)) > 0
    if fd.has_presence:
        return message.HasField(fd.name)
    return bool(getattr(message, fd.name))


def _value_to_param(value: Any, fd: FieldDescriptor, shape: Shape) -> Any:
    if _is_timestamp(fd):
        return value.ToDatetime(tzinfo=dt.UTC)
    if fd.enum_type is not None:
        return enum_to_s3(fd.enum_type, value)
    if _is_map(fd):
        return dict(value)
    if isinstance(shape, StructureShape):
        return _structure_to_params(value, shape)
    return value


# --- botocore parameters -> request message (the CLI) --------------------------------------------


def from_params(params: Mapping[str, Any], message: Message, operation: str) -> Message:
    """Set the fields of the request ``message`` from typed botocore parameters of ``operation``
    (members the proto has no field for are skipped); returns ``message``. Raises ValueError,
    naming the member, for a value its field cannot take (an enum value the proto does not know,
    a string that is not UTF-8, a value of the wrong type)."""
    _params_to_message(message, params, _input_shape(operation))
    return message


def _params_to_message(message: Message, params: Mapping[str, Any], shape: StructureShape) -> None:
    for member, value in params.items():
        fd = field_of(message, member)
        if fd is None:
            continue
        member_shape = shape.members[member]
        if member in _FLATTENED:
            member_shape = _members(member_shape)[_FLATTENED[member]]
            value = value.get(_FLATTENED[member], [])
        try:
            _set_field(message, fd, value, member_shape, member)
        except (TypeError, ValueError) as exc:
            if str(exc).startswith("Invalid value for parameter "):
                raise
            raise ValueError(f"Invalid value for parameter {member}: {value!r}") from None


def _set_field(message: Message, fd: FieldDescriptor, value: Any, shape: Shape, name: str) -> None:
    target = getattr(message, fd.name)
    if _is_map(fd):
        target.update(value)
    elif fd.is_repeated:
        item_shape = _list_member(shape)
        for item in value:
            _params_to_message(target.add(), item, item_shape)
    elif _is_timestamp(fd):
        cast(Timestamp, target).FromDatetime(value)
    elif fd.message_type is not None:
        _params_to_message(target, value, cast(StructureShape, shape))
    elif fd.enum_type is not None:
        setattr(message, fd.name, _enum_number(fd.enum_type, value, name))
    elif fd.type == FieldDescriptor.TYPE_STRING:
        setattr(message, fd.name, _text(value, name))
    else:
        setattr(message, fd.name, value)


def _enum_number(enum: EnumDescriptor, value: str, name: str) -> int:
    number = enum_from_s3(enum, value)
    if number == 0:
        known = [v.name.removeprefix(_enum_prefix(enum)) for v in enum.values[1:]]
        raise ValueError(
            f"Invalid value for parameter {name}: {value!r}; valid values: {', '.join(known)}"
        )
    return number


def _text(value: Any, name: str) -> str:
    if isinstance(value, bytes):
        try:
            return value.decode()
        except UnicodeDecodeError:
            raise ValueError(f"Invalid value for parameter {name}: not UTF-8") from None
    return str(value)


# --- S3's response -> response message (the gateway) --------------------------------------------


def from_response(response: Mapping[str, Any], message: Message, operation: str) -> Message:
    """Fill ``message`` with what S3 returned for ``operation``; returns ``message``."""
    _fill(message, response, _output_shape(operation))
    return message


def _fill(message: Message, data: Mapping[str, Any], shape: StructureShape) -> None:
    for member, value in data.items():
        fd = field_of(message, member)
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


def _scalar(fd: FieldDescriptor, value: Any) -> Any:
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
        target.SetInParent()  # present even when S3 sent it empty (<Owner/>)
        _fill(target, value, shape)


def _fill_repeated(target: Any, fd: FieldDescriptor, values: Any, shape: Shape) -> None:
    item_shape = _list_member(shape)
    for item in values:
        if fd.message_type is None:
            # A list of one-member structures flattened to strings (CommonPrefixes).
            target.append(next(iter(item.values())) if isinstance(item, Mapping) else item)
        else:
            _fill(target.add(), item, item_shape)


# --- response message -> botocore's response (the CLI) -------------------------------------------


def _as_is(value: dt.datetime, shape: Shape) -> dt.datetime:
    return value


def to_response(
    message: Message, operation: str, timestamp: TimestampFormat = _as_is
) -> dict[str, Any]:
    """The dict botocore returns for ``operation`` when S3 answers what ``message`` holds: S3
    member names, in the order botocore's REST-XML parser produces them (header members first),
    only the members that are set. Timestamps are ``datetime`` objects unless ``timestamp``
    renders them (it gets the member's shape too)."""
    members = list(_output_shape(operation).members.items())
    ordered = [m for m in members if in_headers(m[1])] + [
        m for m in members if not in_headers(m[1])
    ]
    return _structure_output(message, ordered, timestamp)


def _structure_output(
    message: Message, members: Iterable[tuple[str, Shape]], timestamp: TimestampFormat
) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for name, shape in members:
        fd = field_of(message, name)
        if fd is None:
            continue
        value = _field_output(message, fd, shape, name, timestamp)
        if value is not None:
            result[name] = value
    return result


def _field_output(
    message: Message, fd: FieldDescriptor, shape: Shape, name: str, timestamp: TimestampFormat
) -> Any:
    value = getattr(message, fd.name)
    if _is_map(fd):
        return dict(value) or None
    if fd.is_repeated:
        item_shape = _list_member(shape)
        return [_item_output(item, item_shape, timestamp) for item in value] or None
    if fd.message_type is not None:
        if not message.HasField(fd.name):
            return None
        if _is_timestamp(fd):
            return timestamp(value.ToDatetime(tzinfo=dt.UTC), shape)
        return _structure_output(value, _members(shape).items(), timestamp)
    if fd.has_presence:
        if not message.HasField(fd.name):
            return None
        if fd.enum_type is None and fd.type != FieldDescriptor.TYPE_BOOL:
            return int(value) if shape.type_name in ("integer", "long") else value  # "" and 0 too
    return _scalar_output(value, fd, shape, name)


def _item_output(item: Any, shape: Shape, timestamp: TimestampFormat) -> Any:
    if isinstance(item, Message):
        return _structure_output(item, _members(shape).items(), timestamp)
    if shape.type_name == "structure":
        # A one-member structure the proto flattens to its value (CommonPrefixes).
        return {next(iter(_members(shape))): item}
    return item


def _scalar_output(value: Any, fd: FieldDescriptor, shape: Shape, name: str) -> Any:
    if fd.enum_type is not None:
        return enum_to_s3(fd.enum_type, value) if value else None
    if fd.type == FieldDescriptor.TYPE_BOOL:
        return bool(value)
    if value in ("", 0) and not (value == 0 and name in _ZERO_IS_A_VALUE):
        return None
    if shape.type_name in ("integer", "long"):
        return int(value)
    return value


# --- enums, shapes, fields -----------------------------------------------------------------------


def in_headers(shape: Shape) -> bool:
    """Whether S3 sends the member of this shape in the HTTP headers (or status) of its response,
    rather than in the XML body."""
    return shape.serialization.get("location") in _HEADER_LOCATIONS


def enum_to_s3(enum: EnumDescriptor, number: int) -> str:
    """``CHECKSUM_ALGORITHM_CRC32C`` -> ``CRC32C``."""
    return str(enum.values_by_number[number].name).removeprefix(_enum_prefix(enum))


def enum_from_s3(enum: EnumDescriptor, value: str) -> int:
    """``CRC32C`` -> the enum number; 0 (UNSPECIFIED) for a value the proto does not know."""
    found = enum.values_by_name.get(_enum_prefix(enum) + value.upper())
    return found.number if found is not None else 0


def _enum_prefix(enum: EnumDescriptor) -> str:
    unspecified: str = enum.values_by_number[0].name
    return unspecified.removesuffix("UNSPECIFIED")


def _input_shape(operation: str) -> StructureShape:
    shape = service_model().operation_model(operation).input_shape
    assert shape is not None
    return shape


def _output_shape(operation: str) -> StructureShape:
    shape = service_model().operation_model(operation).output_shape
    assert shape is not None
    return shape


def _members(shape: Shape) -> Mapping[str, Shape]:
    members: Mapping[str, Shape] = cast(StructureShape, shape).members
    return members


def _list_member(shape: Shape) -> StructureShape:
    return cast(StructureShape, cast(ListShape, shape).member)


def _is_timestamp(fd: FieldDescriptor) -> bool:
    message_type = fd.message_type
    return message_type is not None and message_type.full_name == Timestamp.DESCRIPTOR.full_name


def _is_map(fd: FieldDescriptor) -> bool:
    return fd.message_type is not None and fd.message_type.GetOptions().map_entry
