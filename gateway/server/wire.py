"""Request decoding: no request bytes can make a handler fail outside the error table, and part
payloads are not copied.

grpc hands every request to a *deserializer* as one ``bytes`` object, copied once out of the
HTTP/2 frames. The generated code decodes it with protobuf, which copies a ``bytes`` field again
(and ``ChecksummedData.content`` once more when the handler reads it); for UploadPart that is two
extra copies of every relayed byte, the largest cost of the relay. So the gateway registers its
own deserializers:

* The streamed requests' decoders (:func:`stream_decoder`: UploadPart's and WriteObject's)
  recognise the message that carries bytes, a ``data`` field holding ``content`` and perhaps
  ``crc32c`` (field 2 of both request types), by reading its few bytes of framing,
  and returns :class:`Data` whose ``content`` is a ``memoryview`` into grpc's buffer. Anything else
  (a header, a trailer, an unusual encoding of data) is decoded by protobuf as before; the fast path
  accepts a message only where protobuf would decode the same content and crc32c.
* Every deserializer returns :class:`Malformed` instead of raising, so a request that is not valid
  protobuf is answered INVALID_ARGUMENT by the handler (grpc.aio answers a raising deserializer
  with UNKNOWN, quoting the exception).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from google.protobuf.message import DecodeError, Message

from gateway import checksums
from gateway.errors import ChecksumMismatch
from gateway.v1 import upload_service_pb2 as pb

M = TypeVar("M", bound=Message)

#: Wire tags: field 2 (``UploadPartRequest.data``) length-delimited; in ``ChecksummedData``
#: field 1 (``content``) length-delimited and field 2 (``crc32c``) fixed32.
_DATA_TAG = 0x12
_CONTENT_TAG = 0x0A
_CRC32C_TAG = 0x15
#: A length varint longer than this is not one the fast path accepts (2**35 > any message).
_MAX_VARINT_BYTES = 5


@dataclass(frozen=True, slots=True)
class Data:
    """Part bytes from one ``data`` message."""

    content: bytes | memoryview
    crc32c: int | None = None


@dataclass(frozen=True, slots=True)
class Malformed:
    """A request that is not a valid encoding of its message type."""

    error: str


PartMessage = pb.UploadPartRequest | Data | Malformed
WriteMessage = pb.WriteObjectRequest | Data | Malformed
#: The streamed request types: ``data`` (field 2, ChecksummedData) carries the bytes in each.
StreamRequest = TypeVar("StreamRequest", pb.UploadPartRequest, pb.WriteObjectRequest)


def stream_decoder(
    message_type: type[StreamRequest],
) -> Callable[[bytes], StreamRequest | Data | Malformed]:
    """A deserializer of a streamed request type: :class:`Data` for the bytes, otherwise the
    decoded message, or :class:`Malformed`."""

    def decode(raw: bytes) -> StreamRequest | Data | Malformed:
        data = _data_fast_path(raw)
        if data is not None:
            return data
        try:
            message = message_type.FromString(raw)
        except DecodeError as exc:
            return Malformed(str(exc) or f"not a valid {message_type.__name__}")
        if message.WhichOneof("message") == "data":
            return as_data(message.data)
        return message

    return decode


#: One UploadPart request message.
decode_part_message = stream_decoder(pb.UploadPartRequest)
#: One WriteObject request message.
decode_write_message = stream_decoder(pb.WriteObjectRequest)


def checked_content(data: Data) -> bytes | memoryview:
    """The message's bytes, once their CRC32C matches the one the caller sent with them, if it
    sent one; :class:`gateway.errors.ChecksumMismatch` otherwise."""
    content = data.content
    if data.crc32c is not None:
        computed = checksums.crc32c(content)
        if computed != data.crc32c:
            raise ChecksumMismatch(
                "CRC32C",
                checksums.encode(data.crc32c.to_bytes(4, "big")),
                checksums.encode(computed.to_bytes(4, "big")),
                where="data message",
            )
    return content


def as_data(data: pb.ChecksummedData) -> Data:
    return Data(data.content, data.crc32c if data.HasField("crc32c") else None)


def decoder(message_type: type[M]) -> Callable[[bytes], M | Malformed]:
    """A deserializer for a unary request type that returns :class:`Malformed` instead of
    raising."""

    def decode(raw: bytes) -> M | Malformed:
        try:
            return message_type.FromString(raw)
        except DecodeError as exc:
            return Malformed(str(exc) or f"not a valid {message_type.__name__}")

    return decode


def _data_fast_path(raw: Any) -> Data | None:
    """``raw`` as :class:`Data` if it is exactly one ``data`` field holding at most one
    ``content`` and at most one ``crc32c``; None for anything else."""
    end = len(raw)
    if end < 2 or raw[0] != _DATA_TAG:
        return None
    length, pos = _varint(raw, 1, end)
    if length < 0 or pos + length != end:
        return None
    content: tuple[int, int] | None = None
    crc32c: int | None = None
    while pos < end:
        tag = raw[pos]
        if tag == _CONTENT_TAG and content is None:
            size, pos = _varint(raw, pos + 1, end)
            if size < 0 or pos + size > end:
                return None
            content = (pos, pos + size)
            pos += size
        elif tag == _CRC32C_TAG and crc32c is None:
            if pos + 5 > end:
                return None
            crc32c = int.from_bytes(raw[pos + 1 : pos + 5], "little")
            pos += 5
        else:
            return None
    if content is None:
        return Data(b"", crc32c)
    return Data(memoryview(raw)[content[0] : content[1]], crc32c)


def _varint(raw: Any, pos: int, end: int) -> tuple[int, int]:
    """The unsigned varint at ``pos`` and the position after it; (-1, pos) if there is none or it
    is longer than the fast path accepts."""
    value = 0
    for index in range(_MAX_VARINT_BYTES):
        if pos + index >= end:
            return -1, pos
        byte = raw[pos + index]
        value |= (byte & 0x7F) << (7 * index)
        if not byte & 0x80:
            if index and not byte:
                return -1, pos  # a padded varint; let protobuf decide
            return value, pos + index + 1
    return -1, pos
