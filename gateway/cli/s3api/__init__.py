"""The ``aws s3api``-mirroring commands of the ``s3-upload-gateway`` CLI.

``s3-upload-gateway upload-part --bucket B --key K --upload-id U --part-number 1 --body FILE`` does
what ``aws s3api upload-part`` does, with the same options and the same output, but it talks gRPC to
the gateway (``--endpoint-url``, default ``$GATEWAY_ENDPOINT_URL`` or ``localhost:50051``), which
holds the AWS credentials. The same goes for ``create-multipart-upload``,
``complete-multipart-upload``, ``abort-multipart-upload``, ``list-parts``,
``list-multipart-uploads`` and ``upload-part-copy``.

Design:

* botocore's S3 service model is the single source of truth, as it is for the aws CLI itself. An
  operation's input shape gives the options (``--`` + ``xform_name(member, "-")``, in member order,
  typed by the member's shape, required members as in the model); its output shape gives the JSON
  keys and their order (header members first, as botocore's REST-XML parser produces them); the
  paginator model drives auto-pagination. Nothing is written out per option or per output field.
* S3 members and proto fields map as the gateway maps them, both ways, in :mod:`gateway.convert`
  (``ETag`` is ``etag``, ``SSEKMSKeyId`` is ``ssekms_key_id``; CompleteMultipartUpload's
  ``MultipartUpload.Parts`` is the request's ``parts`` field).
* Commands work on S3-shaped dictionaries as the aws CLI does: options (JSON or shorthand, values
  from ``file://``) and ``--cli-input-json`` merge into a parameter dict, which becomes the request
  message; the response message becomes an output dict, which is paginated, filtered with
  ``--query`` (JMESPath) and printed as json, text or table the way the aws CLI prints them.
* What botocore does on the way is done here the same way, so that requests and output match: the
  SSE-C key is base64-encoded and its MD5 computed when ``--sse-customer-key-md5`` is absent;
  ``upload-part`` computes the checksum of ``--checksum-algorithm`` (CRC32 when none is given,
  unless ``AWS_REQUEST_CHECKSUM_CALCULATION=when_required``) in a streaming pass over the file;
  ``--max-items`` truncation and its ``NextToken`` use botocore's token format.
* ``upload-part`` streams: a header message, then the file in 1 MiB ``data`` messages read lazily,
  each with its CRC32C. The whole part is never in memory.
* Output values are printed as the aws CLI v1 prints them with its default settings: timestamps
  verbatim as S3 sends them (``2024-05-01T12:00:00.000Z`` in XML bodies, RFC 822 in headers), enums
  as S3's strings. Proto3 cannot tell an empty string or a 0 from an absent member, so those are
  omitted (:func:`gateway.convert.to_response`), except the few integers S3 always sends; bools
  always print.
* Errors print as the aws CLI prints them, with S3's error code and message when S3 answered (the
  ErrorInfo's ``s3ErrorCode``), else the gateway's ErrorInfo reason, else the gRPC code. A call
  that never reached the gateway (no rich status: connection refused, TLS failure, deadline) is
  reported in the aws CLI's words for an unreachable endpoint.
* Authentication: ``--client-cert`` and ``--client-key`` present a client certificate to an
  https:// gateway (mutual TLS); a bearer token comes from ``--token-file`` or ``$GATEWAY_TOKEN``
  and travels as ``authorization: Bearer`` metadata on every call (added by a channel
  interceptor). There is deliberately no option taking the token itself: command lines show in
  the process list. The token never appears in the output, errors or the ``--debug`` log.
* Exit codes are the aws CLI's (v2 numbering): 0 success, 252 usage error (argparse's 2 is replaced
  for these commands), 254 error answered by the gateway or S3, 255 gateway unreachable.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import datetime as dt
import email.utils
import functools
import hashlib
import html
import io
import json
import logging
import os
import re
import shutil
import sys
import threading
import unicodedata
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import IO, Any, NoReturn, TypeVar, cast

import grpc
import jmespath
from awscrt import checksums as crt
from botocore import xform_name
from botocore.exceptions import DataNotFoundError
from botocore.loaders import Loader
from botocore.model import ListShape, MapShape, OperationModel, Shape, StructureShape
from botocore.utils import ArgumentGenerator, parse_to_aware_datetime
from google.protobuf import text_format
from google.protobuf.message import Message
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status
from jmespath.exceptions import JMESPathError
from jmespath.parser import ParsedResult

from gateway import checksums, convert
from gateway.cli.connection import add_connection_options, open_channel
from gateway.exits import ConnectionFailure, ExitCode, UsageError
from gateway.v1 import upload_service_pb2 as pb
from gateway.v1 import upload_service_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)

T = TypeVar("T")

#: The size of the ``data`` messages of ``upload-part``.
CHUNK_SIZE = 1024 * 1024
_SERVICE_NAME = "gateway.v1.UploadService"
_DEFAULT_CONNECT_TIMEOUT = 60.0

#: Operations whose SSE-C key botocore base64-encodes and hashes (its sse_md5 handlers).
_SSE_KEY_PREFIXES: Mapping[str, tuple[str, ...]] = {
    "CreateMultipartUpload": ("SSECustomer",),
    "UploadPart": ("SSECustomer",),
    "UploadPartCopy": ("SSECustomer", "CopySourceSSECustomer"),
    "CompleteMultipartUpload": ("SSECustomer",),
}
_REDACTED_FIELDS = frozenset({"sse_customer_key", "copy_source_sse_customer_key"})
_LOG_FORMAT = "%(asctime)s - %(threadName)s - %(name)s - %(levelname)s - %(message)s"
_USAGE_BANNER = """\
usage: {top} [options] <command> [parameters]
To see help text, you can run:

  {top} --help
  {top} <command> --help
"""


@dataclass(frozen=True)
class Command:
    """One ``aws s3api`` command: its S3 operation (also the RPC's name) and request message."""

    operation: str
    request: type[Message]

    @property
    def name(self) -> str:
        return str(xform_name(self.operation, "-"))


COMMANDS: tuple[Command, ...] = (
    Command("UploadPart", pb.UploadPartHeader),
    Command("CreateMultipartUpload", pb.CreateMultipartUploadRequest),
    Command("CompleteMultipartUpload", pb.CompleteMultipartUploadRequest),
    Command("AbortMultipartUpload", pb.AbortMultipartUploadRequest),
    Command("ListParts", pb.ListPartsRequest),
    Command("ListMultipartUploads", pb.ListMultipartUploadsRequest),
    Command("UploadPartCopy", pb.UploadPartCopyRequest),
)


# --- botocore's model ----------------------------------------------------------------------------


@functools.cache
def _paginators() -> Mapping[str, Any]:
    try:
        model = Loader().load_service_model("s3", "paginators-1")
    except DataNotFoundError:
        return {}
    pagination: Mapping[str, Any] = model["pagination"]
    return pagination


def operation_model(command: Command) -> OperationModel:
    return convert.service_model().operation_model(command.operation)


def paginator_config(command: Command) -> Mapping[str, Any] | None:
    """botocore's pagination config of the command, None when it does not paginate."""
    return _paginators().get(command.operation)


def _input_shape(command: Command) -> StructureShape:
    shape = operation_model(command).input_shape
    assert shape is not None
    return shape


def _output_shape(command: Command) -> StructureShape:
    shape = operation_model(command).output_shape
    assert shape is not None
    return shape


# --- S3 member <-> proto field -------------------------------------------------------------------


def command_members(command: Command) -> dict[str, Shape]:
    """The input members the command accepts: those with a proto field, and the streamed body."""
    return {
        name: shape
        for name, shape in _input_shape(command).members.items()
        if convert.field_of(command.request, name) is not None or _is_streaming(shape)
    }


def _is_streaming(shape: Shape) -> bool:
    return shape.type_name == "blob" and bool(shape.serialization.get("streaming"))


# --- the parser ----------------------------------------------------------------------------------


class S3ApiParser(argparse.ArgumentParser):
    """Reports usage errors as the aws CLI does, exiting 252 rather than argparse's 2."""

    def error(self, message: str) -> NoReturn:
        top = self.prog.split()[0]
        self.exit(
            ExitCode.USAGE, _USAGE_BANNER.format(top=top) + f"{self.prog}: error: {message}\n"
        )

    def parse_known_args(  # type: ignore[override]
        self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> tuple[argparse.Namespace, list[str]]:
        parsed, extras = super().parse_known_args(args, namespace)
        if extras:
            self.error("Unknown options: " + ", ".join(extras))
        return parsed, extras


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the s3api commands to the CLI's subcommands."""
    default_class = subparsers._parser_class
    # Our subparsers need their own class: argparse creates them through this attribute only.
    subparsers._parser_class = S3ApiParser
    try:
        for command in COMMANDS:
            _add_command(subparsers, command)
    finally:
        subparsers._parser_class = default_class


def _add_command(
    subparsers: argparse._SubParsersAction[argparse.ArgumentParser], command: Command
) -> None:
    model = operation_model(command)
    summary = _first_paragraph(model.documentation)
    parser = subparsers.add_parser(
        command.name,
        help=f"aws s3api {command.name} through the gateway",
        description=f"{summary}\n\nLike `aws s3api {command.name}`, through the gateway.",
        usage=_synopsis(command),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    required = set(_input_shape(command).required_members)
    group = parser.add_argument_group(f"{command.name} options")
    for name, shape in command_members(command).items():
        _add_member_option(group, name, shape, name in required)
    if paginator_config(command) is not None:
        _add_paging_options(parser.add_argument_group("pagination"))
    _add_global_options(parser.add_argument_group("global options"))
    handler = cast(S3ApiParser, parser)
    parser.set_defaults(func=functools.partial(run, command, handler))


def _synopsis(command: Command) -> str:
    required = set(_input_shape(command).required_members)
    lines = ["%(prog)s"]
    for name in command_members(command):
        option = f"--{xform_name(name, '-')} <value>"
        lines.append(option if name in required else f"[{option}]")
    lines.append("[global options]")
    return "\n  ".join(lines)


def _add_member_option(
    group: argparse._ArgumentGroup, name: str, shape: Shape, required: bool
) -> None:
    flag = "--" + xform_name(name, "-")
    text = _option_help(shape, required)
    if shape.type_name == "boolean":
        group.add_argument(flag, dest=name, action="store_const", const=True, help=text)
        group.add_argument(
            "--no-" + flag[2:], dest=name, action="store_const", const=False, help=f"not {flag}"
        )
        return
    converter: Callable[[str], Any] = int if shape.type_name in ("integer", "long") else str
    group.add_argument(flag, dest=name, type=converter, metavar="<value>", help=text)


def _option_help(shape: Shape, required: bool) -> str:
    if _is_streaming(shape):
        return "The file whose bytes are the part, streamed in 1 MiB messages (a path)."
    text = _first_paragraph(shape.documentation)
    kind = {"map": "JSON or k=v,k2=v2", "structure": "JSON or shorthand", "list": "JSON"}.get(
        shape.type_name, shape.type_name
    )
    if shape.type_name == "timestamp":
        kind = "timestamp, ISO 8601 or epoch seconds"
    elif enum := shape.metadata.get("enum"):
        kind = "one of " + ", ".join(enum)
    prefix = "Required. " if required else ""
    return (prefix + text + f" ({kind})").replace("%", "%%")


def _first_paragraph(documentation: str) -> str:
    first = re.split(r"</p>", documentation or "", maxsplit=1)[0]
    return " ".join(html.unescape(re.sub(r"<[^>]+>", "", first)).split())


def _add_paging_options(group: argparse._ArgumentGroup) -> None:
    group.add_argument(
        "--starting-token",
        metavar="<value>",
        help="Where to start paginating: the NextToken of a previous truncated output.",
    )
    group.add_argument(
        "--page-size",
        type=int,
        metavar="<value>",
        help="The size of each page the gateway is asked for; does not change the output.",
    )
    group.add_argument(
        "--max-items",
        type=int,
        metavar="<value>",
        help="The most items to print; a NextToken is printed when there are more.",
    )


def _add_global_options(group: argparse._ArgumentGroup) -> None:
    group.add_argument(
        "--cli-input-json",
        metavar="<value>",
        help="The parameters as JSON (or file://PATH), in the form --generate-cli-skeleton "
        "prints; options given on the command line override them.",
    )
    group.add_argument(
        "--generate-cli-skeleton",
        nargs="?",
        const="input",
        choices=("input", "output"),
        help="Print a JSON skeleton of the input (default) or a sample output, send nothing.",
    )
    group.add_argument(
        "--debug", action="store_true", help="Log the gRPC calls to stderr (never SSE-C keys)."
    )
    group.add_argument(
        "--no-paginate",
        dest="paginate",
        action="store_false",
        help="Make one call and print the first page only.",
    )
    group.add_argument(
        "--output", choices=("json", "text", "table"), default="json", help="Output format."
    )
    group.add_argument("--query", metavar="<value>", help="A JMESPath query to filter the output.")
    add_connection_options(group)
    group.add_argument(
        "--cli-read-timeout",
        type=float,
        default=0.0,
        metavar="<value>",
        help="The gRPC deadline of each call in seconds; 0 (the default) for none. Unlike the "
        "aws CLI's socket read timeout, a deadline bounds the whole call, part upload included.",
    )
    group.add_argument(
        "--cli-connect-timeout",
        type=float,
        default=_DEFAULT_CONNECT_TIMEOUT,
        metavar="<value>",
        help="Seconds to wait for the connection to the gateway; 0 to wait without limit. "
        "Default 60.",
    )


# --- running a command ---------------------------------------------------------------------------


def run(command: Command, parser: S3ApiParser, args: argparse.Namespace) -> int:
    """Execute a parsed command; returns the exit code."""
    if args.debug:
        _enable_debug_log()
    if args.generate_cli_skeleton == "input":
        return _print_input_skeleton(command)
    try:
        return _run(command, parser, args)
    except UsageError as exc:
        sys.stderr.write(f"\n{exc}\n")
        return ExitCode.USAGE
    except ConnectionFailure as exc:
        sys.stderr.write(f"\n{exc}\n")
        return ExitCode.CONNECTION


def _run(command: Command, parser: S3ApiParser, args: argparse.Namespace) -> int:
    params = collect_params(command, args)
    missing = [
        "--" + xform_name(name, "-")
        for name in _input_shape(command).required_members
        if name not in params
    ]
    if missing:
        parser.error("the following arguments are required: " + ", ".join(missing))
    build_request(command, params)  # reject values the proto cannot carry before connecting
    output = Output(args.output, _compile_query(args.query), command.operation)
    if args.generate_cli_skeleton == "output":
        sample = ArgumentGenerator(use_member_names=True).generate_skeleton(_output_shape(command))
        output.emit(sample)
        return 0
    pagination = _pagination(command, args)
    with Gateway.connect(args, command) as gateway:
        try:
            if pagination is not None:
                output.emit_pages(paginate(gateway.call, params, pagination))
            else:
                output.emit(gateway.call(params))
        except grpc.RpcError as exc:
            return report_rpc_error(cast(grpc.Call, exc), command, gateway.url)
    return 0


def _print_input_skeleton(command: Command) -> int:
    members = command_members(command)
    generated = ArgumentGenerator().generate_skeleton(_input_shape(command))
    skeleton = {name: value for name, value in generated.items() if name in members}
    sys.stdout.write(json.dumps(skeleton, indent=4, default=_json_default) + "\n")
    return 0


def _compile_query(query: str | None) -> ParsedResult | None:
    if query is None:
        return None
    try:
        return jmespath.compile(query)
    except JMESPathError as exc:
        raise UsageError(f"Bad value for --query {query}: {exc}") from None


# --- parameters ----------------------------------------------------------------------------------


def collect_params(command: Command, args: argparse.Namespace) -> dict[str, Any]:
    """The S3 parameters: --cli-input-json, overridden by the options given, typed by the model."""
    members = command_members(command)
    params = _cli_input_json(args.cli_input_json, members)
    for name, shape in members.items():
        value = getattr(args, name, None)
        if _is_streaming(shape):
            _set_body(params, name, value)
        elif value is not None:
            params[name] = _parse_option(value, shape, "--" + xform_name(name, "-"))
        if name in params and not _is_streaming(shape):
            params[name] = coerce(params[name], shape, name)
    return params


def _set_body(params: dict[str, Any], name: str, path: str | None) -> None:
    """The body is a path (str) from the option, or data (bytes) from --cli-input-json, which the
    aws CLI too sends as it is."""
    if isinstance(params.get(name), str):
        params[name] = params[name].encode()
    if path is None:
        return
    path = os.path.expanduser(os.path.expandvars(path))
    if not os.path.isfile(path):
        raise UsageError("Error parsing parameter '--body': Blob values must be a path to a file.")
    params[name] = path


def _cli_input_json(value: str | None, members: Mapping[str, Shape]) -> dict[str, Any]:
    if value is None:
        return {}
    data = _load_json(_param_file(value, "--cli-input-json"), "--cli-input-json")
    if not isinstance(data, dict):
        raise UsageError("Invalid JSON for --cli-input-json: a JSON object is required")
    for name in data:
        if name not in members:
            raise UsageError(
                f'Parameter validation failed:\nUnknown parameter in input: "{name}", '
                f"must be one of: {', '.join(members)}"
            )
    return {name: item for name, item in data.items() if item is not None}


def _parse_option(value: Any, shape: Shape, flag: str) -> Any:
    if not isinstance(value, str):
        return value
    loaded = _param_file(value, flag)
    if shape.type_name not in ("structure", "list", "map") or not isinstance(loaded, str):
        return loaded
    if loaded.lstrip().startswith(("{", "[")) or shape.type_name == "list":
        return _load_json(loaded, flag)
    try:
        return parse_shorthand(loaded)
    except ValueError as exc:
        raise UsageError(f"Error parsing parameter '{flag}': {exc}") from None


def _param_file(value: str, flag: str) -> str | bytes:
    """A value, or the contents of the file it names with file:// (text) or fileb:// (bytes)."""
    for prefix, mode in (("fileb://", "rb"), ("file://", "r")):
        if value.startswith(prefix):
            path = os.path.expandvars(os.path.expanduser(value[len(prefix) :]))
            try:
                with open(path, mode) as handle:
                    return cast(str | bytes, handle.read())
            except (OSError, UnicodeDecodeError) as exc:
                raise UsageError(
                    f"Error parsing parameter '{flag}': Unable to load paramfile {value}: {exc}"
                ) from None
    return value


def _load_json(text: str | bytes, flag: str) -> Any:
    try:
        return json.loads(text)
    except ValueError as exc:
        received = text.decode(errors="replace") if isinstance(text, bytes) else text
        raise UsageError(
            f"Error parsing parameter '{flag}': Invalid JSON: {exc}\nJSON received: {received}"
        ) from None


def coerce(value: Any, shape: Shape, path: str) -> Any:
    """``value`` converted to the Python type of its shape; UsageError when it cannot be."""
    kind = shape.type_name
    if kind == "structure":
        return _coerce_structure(value, cast(StructureShape, shape), path)
    if kind == "list":
        items = value if isinstance(value, list) else [value]
        member = cast(ListShape, shape).member
        return [coerce(item, member, f"{path}[{i}]") for i, item in enumerate(items)]
    if kind == "map":
        value_shape = cast(MapShape, shape).value
        mapping = _expect(value, dict, path)
        return {str(k): coerce(v, value_shape, f"{path}.{k}") for k, v in mapping.items()}
    return _coerce_scalar(value, kind, path)


def _coerce_structure(value: Any, shape: StructureShape, path: str) -> dict[str, Any]:
    mapping = _expect(value, dict, path)
    result = {}
    for name, item in mapping.items():
        if name not in shape.members:
            raise UsageError(
                f'Parameter validation failed:\nUnknown parameter in {path}: "{name}", '
                f"must be one of: {', '.join(shape.members)}"
            )
        result[name] = coerce(item, shape.members[name], f"{path}.{name}")
    return result


def _coerce_scalar(value: Any, kind: str, path: str) -> Any:
    try:
        if kind in ("integer", "long") and not isinstance(value, bool):
            return int(value)
        if kind == "boolean":
            if isinstance(value, str) and value.lower() in ("true", "false"):
                return value.lower() == "true"
            return _expect(value, bool, path)
        if kind == "timestamp":
            return parse_to_aware_datetime(value)
        if kind in ("string", "blob") and isinstance(value, str | bytes):
            return value
    except (ValueError, TypeError):
        pass
    raise UsageError(
        f"Parameter validation failed:\nInvalid value for parameter {path}, value: {value!r}, "
        f"a {kind} is required"
    )


def _expect(value: Any, kind: type[T], path: str) -> T:
    if not isinstance(value, kind):
        raise UsageError(
            f"Parameter validation failed:\nInvalid type for parameter {path}, value: {value!r}, "
            f"type: {type(value)}, valid types: {kind}"
        )
    return value


# --- shorthand syntax ----------------------------------------------------------------------------

_SHORTHAND_KEY = re.compile(r"\s*([^=,\[\]{}'\"\s]+)\s*=")
_UNQUOTED_END = frozenset(",]}")


def parse_shorthand(text: str) -> dict[str, Any]:
    """Parse the aws CLI's shorthand syntax: ``k=v,k2=v2``, ``k=[a,b]``, ``k=[{a=1},{a=2}]``,
    ``k={a=1}``, quoted values, and at the top level ``k=a,b`` for a list."""
    parser = _Shorthand(text)
    result = parser.pairs(top=True)
    parser.finish()
    return result


class _Shorthand:
    def __init__(self, text: str) -> None:
        self._text = text
        self._pos = 0

    def pairs(self, top: bool = False) -> dict[str, Any]:
        result: dict[str, Any] = {}
        while True:
            match = _SHORTHAND_KEY.match(self._text, self._pos)
            if match is None:
                raise ValueError(f"expected key=value at position {self._pos}: {self._text!r}")
            self._pos = match.end()
            value = self._value()
            if top and isinstance(value, str):
                value = self._csv_tail(value)
            result[match.group(1)] = value
            if not self._take(","):
                return result

    def finish(self) -> None:
        if self._text[self._pos :].strip():
            raise ValueError(f"unexpected text at position {self._pos}: {self._text!r}")

    def _csv_tail(self, first: str) -> str | list[str]:
        values = [first]
        while self._peek() == "," and not _SHORTHAND_KEY.match(self._text, self._pos + 1):
            self._pos += 1
            values.append(self._scalar())
        return values[0] if len(values) == 1 else values

    def _value(self) -> Any:
        if self._take("["):
            items: list[Any] = []
            while not self._take("]"):
                if items and not self._take(","):
                    raise ValueError(f"expected ',' or ']' at position {self._pos}")
                items.append(self._value())
            return items
        if self._take("{"):
            mapping = self.pairs()
            if not self._take("}"):
                raise ValueError(f"expected '}}' at position {self._pos}")
            return mapping
        return self._scalar()

    def _scalar(self) -> str:
        self._skip_spaces()
        quote = self._peek()
        if quote in ("'", '"'):
            return self._quoted(quote)
        start = self._pos
        while self._pos < len(self._text) and self._text[self._pos] not in _UNQUOTED_END:
            self._pos += 1
        return self._text[start : self._pos].strip()

    def _quoted(self, quote: str) -> str:
        self._pos += 1
        chars: list[str] = []
        while self._pos < len(self._text):
            char = self._text[self._pos]
            self._pos += 1
            if char == "\\" and self._pos < len(self._text):
                chars.append(self._text[self._pos])
                self._pos += 1
            elif char == quote:
                self._skip_spaces()
                return "".join(chars)
            else:
                chars.append(char)
        raise ValueError(f"unterminated quoted value: {self._text!r}")

    def _peek(self) -> str:
        return self._text[self._pos] if self._pos < len(self._text) else ""

    def _skip_spaces(self) -> None:
        while self._peek().isspace():
            self._pos += 1

    def _take(self, char: str) -> bool:
        self._skip_spaces()
        if self._peek() == char:
            self._pos += 1
            return True
        return False


def _encode_sse_keys(command: Command, params: dict[str, Any]) -> None:
    """Do what botocore's sse_md5 handlers do: when the key's MD5 is not given, the key is the raw
    key, sent base64-encoded with the base64 of its MD5."""
    for prefix in _SSE_KEY_PREFIXES.get(command.operation, ()):
        key = params.get(prefix + "Key")
        if key is None or prefix + "KeyMD5" in params:
            continue
        raw = key.encode() if isinstance(key, str) else key
        params[prefix + "Key"] = base64.b64encode(raw).decode()
        params[prefix + "KeyMD5"] = base64.b64encode(hashlib.md5(raw).digest()).decode()


def build_request(command: Command, params: Mapping[str, Any]) -> Message:
    """The request message (the header, for upload-part) for typed S3 parameters."""
    typed = dict(params)
    _encode_sse_keys(command, typed)
    try:
        return convert.from_params(typed, command.request(), command.operation)
    except ValueError as exc:
        raise UsageError(str(exc)) from None


def format_timestamp(value: dt.datetime, shape: Shape) -> str:
    """A timestamp as the aws CLI v1 prints it by default: verbatim as S3 sent it, i.e. ISO 8601
    with milliseconds and Z in XML bodies, RFC 822 in headers."""
    default = "rfc822" if convert.in_headers(shape) else "iso8601"
    form = shape.serialization.get("timestampFormat") or default
    if form == "rfc822":
        return email.utils.format_datetime(value, usegmt=True)
    if form == "unixTimestamp":
        return str(int(value.timestamp()))
    return value.strftime("%Y-%m-%dT%H:%M:%S.") + f"{value.microsecond // 1000:03d}Z"


@dataclass
class Gateway:
    """A channel to the gateway and the calls of one command."""

    command: Command
    channel: grpc.Channel
    url: str
    timeout: float | None
    stub: pb_grpc.UploadServiceStub = field(init=False)

    def __post_init__(self) -> None:
        self.stub = pb_grpc.UploadServiceStub(self.channel)

    @classmethod
    def connect(cls, args: argparse.Namespace, command: Command) -> Gateway:
        connect_timeout = args.cli_connect_timeout or None
        channel, endpoint = open_channel(args, connect_timeout)
        url = f"{endpoint.url}/{_SERVICE_NAME}/{command.operation}"
        log.debug("Connecting to %s (%s)", endpoint.target, "TLS" if endpoint.tls else "plaintext")
        gateway = cls(command, channel, url, args.cli_read_timeout or None)
        gateway.wait_until_connected(connect_timeout)
        return gateway

    def __enter__(self) -> Gateway:
        return self

    def __exit__(self, *exc: object) -> None:
        self.channel.close()

    def wait_until_connected(self, timeout: float | None) -> None:
        """Wait for the connection to succeed or fail. A failure is left to the call to report,
        with gRPC's reason; only a connection that neither succeeds nor fails in time ends here."""
        settled = threading.Event()
        states: list[grpc.ChannelConnectivity] = []

        def watch(state: grpc.ChannelConnectivity) -> None:
            if state in (
                grpc.ChannelConnectivity.READY,
                grpc.ChannelConnectivity.TRANSIENT_FAILURE,
            ):
                states.append(state)
                settled.set()

        self.channel.subscribe(watch, try_to_connect=True)
        try:
            settled.wait(timeout)
        finally:
            self.channel.unsubscribe(watch)
        if not states:
            self.channel.close()
            raise ConnectionFailure(f'Connect timeout on endpoint URL: "{self.url}"')
        log.debug("Channel state: %s", states[0].name)

    def call(self, params: Mapping[str, Any]) -> dict[str, Any]:
        """One call of the command's RPC with S3 parameters; returns the output dict."""
        if self.command.operation == "UploadPart":
            response = self._upload_part(dict(params))
        else:
            request = build_request(self.command, params)
            log.debug("Calling %s with %s", self.url, _loggable(request))
            method = getattr(self.stub, self.command.operation)
            response = method(request, timeout=self.timeout)
        log.debug("Response: %s", _loggable(response))
        return convert.to_response(response, self.command.operation, format_timestamp)

    def _upload_part(self, params: dict[str, Any]) -> Message:
        body = params.pop("Body", None)
        with open_body(body) as stream:
            resolve_part_checksum(params, stream)
            header = cast(pb.UploadPartHeader, build_request(self.command, params))
            if not header.HasField("content_length"):
                header.content_length = remaining_size(stream)
            log.debug("Calling %s with header %s", self.url, _loggable(header))
            response: pb.UploadPartResponse = self.stub.UploadPart(
                part_messages(header, stream), timeout=self.timeout
            )
        return response


# --- upload-part ---------------------------------------------------------------------------------


def open_body(body: str | bytes | None) -> IO[bytes]:
    """The part's bytes: the file at a path, or data; no body is an empty part."""
    if isinstance(body, str):
        try:
            return open(body, "rb")
        except OSError as exc:
            raise UsageError(f"Error parsing parameter '--body': {exc}") from None
    return io.BytesIO(body or b"")


def remaining_size(stream: IO[bytes]) -> int:
    start = stream.tell()
    size = stream.seek(0, os.SEEK_END) - start
    stream.seek(start)
    return size


def resolve_part_checksum(params: dict[str, Any], stream: IO[bytes]) -> None:
    """Compute the part's checksum as botocore does: nothing when a checksum value is given; the
    algorithm of --checksum-algorithm; else CRC32 unless AWS_REQUEST_CHECKSUM_CALCULATION is
    when_required."""
    if any(name.startswith("Checksum") and name != "ChecksumAlgorithm" for name in params):
        return
    name = params.get("ChecksumAlgorithm")
    if name is None:
        setting = os.environ.get("AWS_REQUEST_CHECKSUM_CALCULATION", "when_supported")
        if setting.lower() != "when_supported":
            return
        name = params["ChecksumAlgorithm"] = "CRC32"
    algorithm = checksums.BY_NAME.get(str(name).upper())
    if algorithm is None:
        raise UsageError(f"Unsupported checksum algorithm: {str(name).lower()}")
    params[algorithm.s3_member] = checksums.encode(file_digest(stream, algorithm))


def file_digest(stream: IO[bytes], algorithm: checksums.Algorithm) -> bytes:
    """The digest of the rest of ``stream``, read in chunks; the stream is rewound after."""
    start = stream.tell()
    hasher = algorithm.new()
    while chunk := stream.read(CHUNK_SIZE):
        hasher.update(chunk)
    stream.seek(start)
    return hasher.digest()


def part_messages(header: pb.UploadPartHeader, stream: IO[bytes]) -> Iterator[pb.UploadPartRequest]:
    """The UploadPart stream: the header, then the bytes in CHUNK_SIZE messages, read lazily."""
    yield pb.UploadPartRequest(header=header)
    sent = messages = 0
    while chunk := stream.read(CHUNK_SIZE):
        yield pb.UploadPartRequest(data=pb.ChecksummedData(content=chunk, crc32c=crt.crc32c(chunk)))
        sent += len(chunk)
        messages += 1
    log.debug("Sent %d bytes in %d data messages", sent, messages)


# --- errors --------------------------------------------------------------------------------------


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


# --- debug log -----------------------------------------------------------------------------------


def _enable_debug_log() -> None:
    """``--debug``: the CLI's log records (every module of :mod:`gateway.cli`) on stderr."""
    cli_log = logging.getLogger("gateway.cli")
    if cli_log.handlers:
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(_LOG_FORMAT))
    cli_log.addHandler(handler)
    cli_log.setLevel(logging.DEBUG)
    cli_log.propagate = False


def _loggable(message: Message) -> str:
    """The message on one line, SSE-C keys replaced."""
    shown = type(message)()
    shown.CopyFrom(message)
    for fd in shown.DESCRIPTOR.fields:
        if fd.name in _REDACTED_FIELDS and getattr(shown, fd.name):
            setattr(shown, fd.name, "*** redacted ***")
    return text_format.MessageToString(shown, as_one_line=True)


# --- pagination ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Pagination:
    """botocore's paginator config and the paging options of one run."""

    config: Mapping[str, Any]
    starting_token: str | None
    page_size: int | None
    max_items: int | None

    def keys(self, name: str) -> list[str]:
        value = self.config.get(name, [])
        return list(value) if isinstance(value, list) else [value]


@dataclass
class Pages:
    """The pages of a paginated command, as botocore's PageIterator yields them."""

    pages: list[dict[str, Any]]
    result_keys: list[str]
    non_aggregate: dict[str, Any]
    resume_token: str | None

    def full_result(self) -> dict[str, Any]:
        """What botocore's build_full_result makes of the pages (the json and table output)."""
        complete: dict[str, Any] = {}
        for page in self.pages:
            for key in self.result_keys:
                value = page.get(key)
                if value is None:
                    continue
                if key not in complete:
                    complete[key] = list(value) if isinstance(value, list) else value
                elif isinstance(value, list):
                    complete[key].extend(value)
                else:
                    complete[key] = complete[key] + value
        complete.update(self.non_aggregate)
        if self.resume_token is not None:
            complete["NextToken"] = self.resume_token
        return complete


def _pagination(command: Command, args: argparse.Namespace) -> Pagination | None:
    config = paginator_config(command)
    if config is None:
        return None
    pagination = Pagination(config, args.starting_token, args.page_size, args.max_items)
    manual = [
        name
        for name in pagination.keys("input_token") + pagination.keys("limit_key")
        if getattr(args, name, None) is not None
    ]
    if args.paginate and not manual:
        return pagination
    options = ("starting-token", "page-size", "max-items")
    used = [f"--{name}" for name in options if getattr(args, name.replace("-", "_")) is not None]
    if used:
        raise UsageError(
            "Cannot specify --no-paginate along with pagination arguments: " + ", ".join(used)
        )
    return None


def paginate(
    fetch: Callable[[Mapping[str, Any]], dict[str, Any]],
    params: Mapping[str, Any],
    pagination: Pagination,
) -> Pages:
    """Call page after page as botocore's paginator does, honouring --starting-token, --page-size
    and --max-items (whose NextToken is botocore's: base64 JSON of the input tokens and
    ``boto_truncate_amount``)."""
    inputs, primary = pagination.keys("input_token"), pagination.keys("result_key")[0]
    request = dict(params)
    token: dict[str, Any] = dict.fromkeys(inputs)
    skip = 0
    if pagination.starting_token is not None:
        token, skip = decode_token(pagination.starting_token, inputs)
        _inject_token(request, token)
    if pagination.page_size is not None:
        request[pagination.keys("limit_key")[0]] = pagination.page_size
    pages = Pages([], pagination.keys("result_key"), {}, None)
    total = 0
    while True:
        page = fetch(request)
        if not pages.pages:
            _skip_items(page, pages.result_keys, skip)
            pages.non_aggregate = {k: page.get(k) for k in pagination.keys("non_aggregate_keys")}
        else:
            skip = 0
        pages.pages.append(page)
        items = page.get(primary) or []
        limit = pagination.max_items
        if limit is not None and total + len(items) > limit:
            keep = limit - total
            page[primary] = items[:keep]
            pages.resume_token = encode_token({**token, "boto_truncate_amount": keep + skip})
            return pages
        total += len(items)
        next_token = _next_token(page, pagination)
        if all(value is None for value in next_token.values()):
            return pages
        if limit is not None and total == limit:
            pages.resume_token = encode_token(next_token)
            return pages
        if next_token == token:
            raise UsageError(f"The same next token was received twice: {next_token}")
        token = next_token
        _inject_token(request, token)


def _skip_items(page: dict[str, Any], result_keys: list[str], skip: int) -> None:
    """On the first page after a --starting-token, drop the items already printed."""
    if not skip:
        return
    primary, *others = result_keys
    if isinstance(page.get(primary), list):
        page[primary] = page[primary][skip:]
    for key in others:
        if isinstance(page.get(key), list):
            page[key] = []


def _next_token(page: Mapping[str, Any], pagination: Pagination) -> dict[str, Any]:
    more = pagination.config.get("more_results")
    if more is not None and not page.get(more):
        return {}
    pairs = zip(pagination.keys("output_token"), pagination.keys("input_token"), strict=True)
    return {input_key: page.get(output_key) or None for output_key, input_key in pairs}


def _inject_token(request: dict[str, Any], token: Mapping[str, Any]) -> None:
    for name, value in token.items():
        if value is not None and value != "None":
            request[name] = value
        else:
            request.pop(name, None)


def encode_token(token: Mapping[str, Any]) -> str:
    return base64.b64encode(json.dumps(token).encode()).decode()


def decode_token(value: str, inputs: list[str]) -> tuple[dict[str, Any], int]:
    """The input tokens and truncation amount of a NextToken."""
    try:
        token = json.loads(base64.b64decode(value, validate=True))
        skip = int(token.pop("boto_truncate_amount", 0))
    except (ValueError, TypeError, AttributeError, binascii.Error):
        raise UsageError(f"Bad starting token: {value}") from None
    if not isinstance(token, dict) or set(token) != set(inputs):
        raise UsageError(f"Bad starting token: {value}")
    return token, skip


# --- output --------------------------------------------------------------------------------------


def _json_default(value: object) -> str:
    if isinstance(value, dt.datetime | dt.date):
        return value.isoformat()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


@dataclass(frozen=True)
class Output:
    """Prints results as the aws CLI's json, text and table formatters do."""

    form: str
    query: ParsedResult | None
    title: str
    stream: IO[str] = field(default_factory=lambda: sys.stdout)

    def emit(self, data: Any) -> None:
        self._write(self._filter(data))

    def emit_pages(self, pages: Pages) -> None:
        if self.form != "text":
            self.emit(pages.full_result())
            return
        for i, page in enumerate(pages.pages):
            current = dict(pages.non_aggregate) if i == 0 else {}
            current.update({key: page.get(key) for key in pages.result_keys})
            self._write(self._filter(current))
        if pages.resume_token is not None:
            self._write(self._filter({"NextToken": {"NextToken": pages.resume_token}}))

    def _filter(self, data: Any) -> Any:
        return data if self.query is None else self.query.search(data)

    def _write(self, data: Any) -> None:
        if self.form == "json":
            if data != {}:
                text = json.dumps(data, indent=4, default=_json_default, ensure_ascii=False)
                self.stream.write(text + "\n")
        elif self.form == "text":
            self.stream.writelines(line + "\n" for line in text_lines(data))
        else:
            self.stream.writelines(line + "\n" for line in table_lines(self.title, data))
        self.stream.flush()


def _scalar(value: Any) -> bool:
    return not isinstance(value, dict | list)


def text_lines(
    item: Any, identifier: str | None = None, scalar_keys: list[str] | None = None
) -> Iterator[str]:
    """The aws CLI's text format: scalars of a dict tab-separated in key order, nested values
    after them, each line prefixed with the upper-cased key it came from."""
    if isinstance(item, dict):
        yield from _text_dict(item, identifier, scalar_keys)
    elif isinstance(item, list):
        yield from _text_list(item, identifier)
    else:
        yield str(item)


def _text_dict(
    item: dict[str, Any], identifier: str | None, keys: list[str] | None
) -> Iterator[str]:
    if keys is None:
        scalars = [str(v) for k, v in sorted(item.items()) if _scalar(v)]
        nested = [(k, v) for k, v in sorted(item.items()) if not _scalar(v)]
    else:
        scalars = [str(item.get(k, "")) for k in keys]
        nested = [(k, item[k]) for k in sorted(set(item) - set(keys))]
    if scalars:
        yield "\t".join(([identifier.upper()] if identifier is not None else []) + scalars)
    for key, value in nested:
        yield from text_lines(value, key)


def _text_list(items: list[Any], identifier: str | None) -> Iterator[str]:
    if any(isinstance(el, dict) for el in items):
        keys = sorted(
            {k for el in items if isinstance(el, dict) for k, v in el.items() if _scalar(v)}
        )
        for element in items:
            yield from text_lines(element, identifier, keys)
        return
    scalars = [el for el in items if _scalar(el)]
    if scalars:
        if identifier is not None:
            yield from (f"{identifier.upper()}\t{el}" for el in scalars)
        else:
            yield "\t".join(str(el) for el in scalars)
    for nested in (el for el in items if not _scalar(el)):
        yield from text_lines(nested, identifier)


# --- table output --------------------------------------------------------------------------------


def _width(text: str) -> int:
    return sum(2 if unicodedata.east_asian_width(c) in "WFA" else 1 for c in text)


@dataclass
class _Section:
    title: str
    indent: int
    headers: list[str] = field(default_factory=list)
    rows: list[list[str]] = field(default_factory=list)

    def widths(self) -> list[int]:
        columns = [self.headers] if self.headers else []
        columns += self.rows
        return (
            [max(_width(row[i]) for row in columns) for i in range(len(columns[0]))]
            if columns
            else []
        )

    def total_width(self) -> int:
        cells = sum(w + 4 for w in self.widths()) + 2 + 2 * self.indent
        return max(_width(self.title) + 2 + 2 * self.indent, cells)

    def scaled_widths(self, total: int) -> list[int]:
        natural = [w + 4 for w in self.widths()]
        if not natural:
            return []
        scaled = [round(total / sum(natural) * w) for w in natural]
        off = sum(scaled) - total
        while off:
            order = range(len(scaled)) if off > 0 else reversed(range(len(scaled)))
            for i in order:
                step = 1 if off > 0 else -1
                scaled[i] -= step
                off -= step
                if not off:
                    break
        return scaled


class _TableBuilder:
    """Lays out data in sections as the aws CLI's table formatter does."""

    def __init__(self) -> None:
        self.sections: list[_Section] = []

    def build(self, title: str | None, data: Any, indent: int = 0) -> None:
        if not data:
            return
        if title is not None:
            self.sections.append(_Section(title, indent))
        if isinstance(data, list):
            self._list(title, data, indent)
        elif isinstance(data, dict):
            self._dict(data, indent)

    def _add_row(self, row: Sequence[Any]) -> None:
        self.sections[-1].rows.append([str(v) for v in row])

    def _list(self, title: str | None, data: list[Any], indent: int) -> None:
        if isinstance(data[0], dict):
            self._list_of_dicts(title or "", data, indent)
            return
        for item in data:
            if _scalar(item):
                self._add_row([item])
            elif all(_scalar(el) for el in item):
                self._add_row(item)
            else:
                self.build(None, item)

    def _dict(self, data: dict[str, Any], indent: int) -> None:
        headers = sorted(k for k, v in data.items() if _scalar(v))
        if len(headers) == 1:
            self._add_row([headers[0], data[headers[0]]])
        elif headers:
            self.sections[-1].headers = headers
            self._add_row([data[k] for k in headers])
        for key in sorted(k for k, v in data.items() if not _scalar(v)):
            self.build(key, data[key], indent + 1)

    def _list_of_dicts(self, title: str, data: list[dict[str, Any]], indent: int) -> None:
        headers = sorted({k for el in data for k, v in el.items() if _scalar(v)})
        nested = sorted({k for el in data for k, v in el.items() if not _scalar(v)})
        self.sections[-1].headers = headers
        for i, element in enumerate(data):
            if i and nested:
                self.sections.append(_Section(title, indent, headers))
            self._add_row([element.get(h, "") for h in headers])
            for key in nested:
                if key in element:
                    self.build(key, element[key], indent + 1)


def table_lines(title: str, data: Any, terminal_width: int | None = None) -> list[str]:
    """The aws CLI's table format (without colours)."""
    if terminal_width is None:
        terminal_width = shutil.get_terminal_size().columns
    builder = _TableBuilder()
    builder.build(title, data)
    sections = builder.sections
    if not sections:
        return []
    width = max(s.total_width() for s in sections)
    if width > terminal_width:
        sections = [_vertical(s) for s in sections]
        width = max(s.total_width() for s in sections)
    lines = ["-" * width]
    for section in sections:
        edge = "|" * section.indent
        inner = width - 2 * section.indent
        lines += [edge + line + edge for line in _section_lines(section, inner)]
    return lines


def _vertical(section: _Section) -> _Section:
    if len(section.rows) != 1 or not section.headers:
        return section
    rows = [[h, v] for h, v in zip(section.headers, section.rows[0], strict=True)]
    return _Section(section.title, section.indent, [], rows)


def _section_lines(section: _Section, width: int) -> list[str]:
    lines = []
    if section.title:
        lines.append(_centered(section.title, width, "|"))
        if not section.headers and not section.rows:
            lines.append("+" + "-" * (width - 2) + "+")
    widths = section.scaled_widths(width)
    rule = "".join(
        ("+" if i == 0 else "") + "-" * (w - 2 + (i > 0)) + "+" for i, w in enumerate(widths)
    )
    if section.headers:
        lines.append(rule)
        lines.append(
            "".join(
                _centered(h, w, "|" if i == 0 else "")
                for i, (w, h) in enumerate(zip(widths, section.headers, strict=True))
            )
        )
    if section.rows:
        lines.append(rule)
        lines += [
            "".join(
                _left(v, w, "|" if i == 0 else "")
                for i, (w, v) in enumerate(zip(widths, row, strict=True))
            )
            for row in section.rows
        ]
        lines.append(rule)
    return lines


def _centered(text: str, length: int, left: str) -> str:
    start = length // 2 - _width(text) // 2 - 1
    head = left + " " * start + text
    return head + " " * (length - 1 - (len(left) + start + _width(text))) + "|"


def _left(text: str, length: int, left: str) -> str:
    padding = 2 if length - (_width(text) + 2 + len(left) + 1) >= 0 else 0
    head = left + " " * padding + text
    return head + " " * (length - len(left) - padding - _width(text) - 1) + "|"
