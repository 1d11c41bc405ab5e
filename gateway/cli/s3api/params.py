"""Options -> S3 parameters -> the request message, as the aws CLI turns its options into
botocore parameters.

Options (JSON, or shorthand for structures and maps; ``file://`` and ``fileb://`` values read
from files) and ``--cli-input-json`` merge into a parameter dict, which is coerced to the types of
botocore's model (:func:`coerce`; a value it cannot take is a :class:`gateway.exits.UsageError`,
reported before anything is sent). What botocore does to the parameters before it builds a
request, its own handlers do here too: the SSE-C key is base64-encoded and its MD5 computed when
``--sse-customer-key-md5`` is absent, and ``--copy-source`` is URL-encoded, so that it names the
object it names to ``aws s3api upload-part-copy``. The request message is then
:func:`gateway.convert.from_params` of the parameters.
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Mapping
from typing import Any, TypeVar, cast

from botocore import handlers, xform_name
from botocore.model import ListShape, MapShape, Shape, StructureShape
from botocore.utils import parse_to_aware_datetime
from google.protobuf.message import Message

from gateway import convert
from gateway.cli.s3api.model import Command, is_streaming
from gateway.cli.s3api.shorthand import parse_shorthand
from gateway.exits import UsageError

T = TypeVar("T")

#: The handlers of botocore's ``before-parameter-build`` event that the CLI runs too, for the
#: operations botocore registers them for: when the SSE-C key's MD5 is not given, the key is the
#: raw key, sent base64-encoded with the base64 of its MD5; UploadPartCopy's ``CopySource`` is
#: URL-encoded (all but ``/`` and ``~``, a ``?versionId=`` suffix kept), so that the gateway, which
#: decodes it once as S3 decodes ``x-amz-copy-source``, reads the key the user wrote.
_BOTOCORE_HANDLERS = frozenset(
    {handlers.sse_md5, handlers.copy_source_sse_md5, handlers.handle_copy_source_param}
)


def collect_params(command: Command, args: argparse.Namespace) -> dict[str, Any]:
    """The S3 parameters: --cli-input-json, overridden by the options given, typed by the model."""
    members = command.members
    params = _cli_input_json(args.cli_input_json, members)
    for name, shape in members.items():
        value = getattr(args, name, None)
        if is_streaming(shape):
            _set_body(params, name, value)
        elif value is not None:
            params[name] = _parse_option(value, shape, "--" + xform_name(name, "-"))
        if name in params and not is_streaming(shape):
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
    _refuse_unknown(data, members)
    return {name: item for name, item in data.items() if item is not None}


def check_params(command: Command, params: Mapping[str, Any]) -> dict[str, Any]:
    """``params`` checked as botocore checks the parameters of every call: members of the command
    only, each coerced to its type. The paginator adds the tokens of ``--starting-token``, which
    come from the user as the options do."""
    members = command.members
    _refuse_unknown(params, members)
    return {
        name: value if is_streaming(members[name]) else coerce(value, members[name], name)
        for name, value in params.items()
    }


def _refuse_unknown(params: Mapping[str, Any], members: Mapping[str, Shape]) -> None:
    for name in params:
        if name not in members:
            raise UsageError(
                f'Parameter validation failed:\nUnknown parameter in input: "{name}", '
                f"must be one of: {', '.join(members)}"
            )


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


def _before_parameter_build(operation: str, params: dict[str, Any]) -> None:
    """Run botocore's own handlers of :data:`_BOTOCORE_HANDLERS` on the parameters, as a botocore
    client does before it builds the request of ``operation``."""
    event = f"before-parameter-build.s3.{operation}"
    for registration in handlers.BUILTIN_HANDLERS:
        if registration[0] == event and registration[1] in _BOTOCORE_HANDLERS:
            registration[1](params=params)


def build_request(command: Command, params: Mapping[str, Any]) -> Message:
    """The request message (the header, for upload-part) for typed S3 parameters."""
    typed = dict(params)
    _before_parameter_build(command.operation, typed)
    try:
        return convert.from_params(typed, command.request(), command.operation)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
