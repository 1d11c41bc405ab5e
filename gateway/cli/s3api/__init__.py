"""The ``aws s3api``-mirroring commands of the ``s3-upload-gateway`` CLI.

``s3-upload-gateway upload-part --bucket B --key K --upload-id U --part-number 1 --body FILE`` does
what ``aws s3api upload-part`` does, with the same options and the same output, but it talks gRPC to
the gateway (``--endpoint-url``, default ``$GATEWAY_ENDPOINT_URL`` or ``localhost:50051``), which
holds the AWS credentials. The same goes for ``create-multipart-upload``,
``complete-multipart-upload``, ``abort-multipart-upload``, ``list-parts``,
``list-multipart-uploads`` and ``upload-part-copy``.

Commands work on S3-shaped dictionaries as the aws CLI does, one module per step:

* :mod:`~gateway.cli.s3api.model`: botocore's S3 model is the single source of truth, as it is for
  the aws CLI itself: it gives each command its options, output and paginator;
* :mod:`~gateway.cli.s3api.params`: options (JSON or :mod:`~gateway.cli.s3api.shorthand`, values
  from ``file://``) and ``--cli-input-json`` merge into botocore parameters, treated as botocore
  treats them, which become the request message (:func:`gateway.convert.from_params`);
* :mod:`~gateway.cli.s3api.calls`: the call, through the connection of
  :mod:`gateway.cli.connection`; ``upload-part`` streams its :mod:`~gateway.cli.s3api.body`;
* the response message becomes the dict botocore would have returned
  (:func:`gateway.convert.to_response`), :mod:`~gateway.cli.s3api.pagination` pages through the
  list commands, and :mod:`~gateway.cli.s3api.output` prints json, text or table, filtered with
  ``--query`` (JMESPath), the way the aws CLI prints them;
* :mod:`~gateway.cli.s3api.errors`: a failed call is reported as the aws CLI reports a failed
  request.

Exit codes are the aws CLI's (v2 numbering, :class:`gateway.exits.ExitCode`): 0 success, 130
interrupted (Ctrl-C), 252 usage error (argparse's 2 is replaced for these commands), 253 a token,
certificate or CA file, or a ``GATEWAY_*`` variable, that cannot be used, 254 error answered by the
gateway or S3, 255 gateway unreachable.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import html
import json
import logging
import re
import sys
from collections.abc import Callable, Iterator
from typing import Any, NoReturn, cast

import grpc
import jmespath
from botocore import xform_name
from botocore.exceptions import PaginationError
from botocore.model import Shape
from botocore.utils import ArgumentGenerator
from jmespath.exceptions import JMESPathError
from jmespath.parser import ParsedResult

from gateway.cli.connection import TOKEN_ENV, CallerParser, add_connection_options
from gateway.cli.s3api.calls import Gateway
from gateway.cli.s3api.errors import report_rpc_error
from gateway.cli.s3api.model import Command, is_streaming
from gateway.cli.s3api.output import Output, json_default
from gateway.cli.s3api.pagination import add_paging_options, paginate, requested_paging
from gateway.cli.s3api.params import build_request, collect_params
from gateway.exits import CommandError, ExitCode, UsageError
from gateway.v1 import upload_service_pb2 as pb

log = logging.getLogger(__name__)

_DEFAULT_CONNECT_TIMEOUT = 60.0
_LOG_FORMAT = "%(asctime)s - %(threadName)s - %(name)s - %(levelname)s - %(message)s"
_USAGE_BANNER = """\
usage: {top} [options] <command> [parameters]
To see help text, you can run:

  {top} --help
  {top} <command> --help
"""


#: The commands, in the order of ``--help``.
COMMANDS: tuple[Command, ...] = (
    Command("UploadPart", pb.UploadPartHeader),
    Command("CreateMultipartUpload", pb.CreateMultipartUploadRequest),
    Command("CompleteMultipartUpload", pb.CompleteMultipartUploadRequest),
    Command("AbortMultipartUpload", pb.AbortMultipartUploadRequest),
    Command("ListParts", pb.ListPartsRequest),
    Command("ListMultipartUploads", pb.ListMultipartUploadsRequest),
    Command("UploadPartCopy", pb.UploadPartCopyRequest),
)


class S3ApiParser(CallerParser):
    """Reports usage errors as the aws CLI does, exiting 252 rather than argparse's 2."""

    def error(self, message: str) -> NoReturn:
        top = self.prog.split()[0]
        self.exit(
            ExitCode.USAGE, _USAGE_BANNER.format(top=top) + f"{self.prog}: error: {message}\n"
        )

    def unknown(self, extras: list[str]) -> str:
        return "Unknown options: " + ", ".join(extras)


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
    summary = _first_paragraph(command.model.documentation)
    parser = subparsers.add_parser(
        command.name,
        help=f"aws s3api {command.name} through the gateway",
        description=f"{summary}\n\nLike `aws s3api {command.name}`, through the gateway.",
        usage=_synopsis(command),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    required = set(command.input_shape.required_members)
    group = parser.add_argument_group(f"{command.name} options")
    for name, shape in command.members.items():
        _add_member_option(group, name, shape, name in required)
    if command.paginator is not None:
        add_paging_options(parser.add_argument_group("pagination"))
    _add_global_options(parser.add_argument_group("global options"))
    handler = cast(S3ApiParser, parser)
    parser.set_defaults(func=functools.partial(run, command, handler))


def _synopsis(command: Command) -> str:
    required = set(command.input_shape.required_members)
    lines = ["%(prog)s"]
    for name in command.members:
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
    if is_streaming(shape):
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
    group.add_argument(
        "--color",
        choices=("on", "off", "auto"),
        default="auto",
        help="Colour of --output table, as the aws CLI colours it: on, off, or auto (on when "
        "stdout is a terminal; the default).",
    )
    group.add_argument(
        "--region",
        metavar="<value>",
        help="Accepted, as in aws command lines, and ignored: the gateway holds the AWS "
        "credentials and calls S3 in the region it is configured with (GATEWAY_S3_REGION).",
    )
    group.add_argument(
        "--profile",
        metavar="<value>",
        help="Accepted, as in aws command lines, and ignored: the gateway holds the AWS "
        "credentials; this command authenticates to the gateway with --token-file, "
        f"${TOKEN_ENV} or --client-cert.",
    )
    group.add_argument(
        "--no-cli-pager",
        action="store_true",
        help="Accepted, as in aws command lines, and ignored: output is never paged.",
    )
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


def run(command: Command, parser: S3ApiParser, args: argparse.Namespace) -> int:
    """Execute a parsed command; returns the exit code."""
    with _debug_log(args.debug):
        return _run_command(command, parser, args)


def _run_command(command: Command, parser: S3ApiParser, args: argparse.Namespace) -> int:
    if args.generate_cli_skeleton == "input":
        return _print_input_skeleton(command)
    try:
        return _run(command, parser, args)
    except CommandError as exc:
        sys.stderr.write(f"\n{exc}\n")
        return exc.code
    except KeyboardInterrupt:
        # What the aws CLI does on Ctrl-C: a newline on stdout, 128 + SIGINT.
        sys.stdout.write("\n")
        return ExitCode.INTERRUPTED


def _run(command: Command, parser: S3ApiParser, args: argparse.Namespace) -> int:
    params = collect_params(command, args)
    missing = [
        "--" + xform_name(name, "-")
        for name in command.input_shape.required_members
        if name not in params
    ]
    if missing:
        parser.error("the following arguments are required: " + ", ".join(missing))
    build_request(command, params)  # reject values the proto cannot carry before connecting
    for option in ("region", "profile"):
        if getattr(args, option) is not None:
            log.debug("Ignoring --%s: the gateway holds the AWS credentials", option)
    output = Output(args.output, _compile_query(args.query), command.operation, color=args.color)
    if args.generate_cli_skeleton == "output":
        sample = ArgumentGenerator(use_member_names=True).generate_skeleton(command.output_shape)
        output.emit(sample)
        return ExitCode.OK
    paging = requested_paging(command, args)
    with Gateway.connect(args, command) as gateway:
        try:
            if paging is not None:
                output.emit_pages(paginate(command, gateway.call, params, paging))
            else:
                output.emit(gateway.call(params))
        except grpc.RpcError as exc:
            return report_rpc_error(exc, command, gateway.url)
        except PaginationError as exc:
            raise UsageError(str(exc)) from None
    return ExitCode.OK


def _print_input_skeleton(command: Command) -> int:
    members = command.members
    generated = ArgumentGenerator().generate_skeleton(command.input_shape)
    skeleton = {name: value for name, value in generated.items() if name in members}
    sys.stdout.write(json.dumps(skeleton, indent=4, default=json_default) + "\n")
    return ExitCode.OK


def _compile_query(query: str | None) -> ParsedResult | None:
    if query is None:
        return None
    try:
        return jmespath.compile(query)
    except JMESPathError as exc:
        raise UsageError(f"Bad value for --query {query}: {exc}") from None


@contextlib.contextmanager
def _debug_log(enabled: bool) -> Iterator[None]:
    """``--debug``: the CLI's log records (every module of :mod:`gateway.cli`) on stderr, for
    the command's duration."""
    if not enabled:
        yield
        return
    cli_log = logging.getLogger("gateway.cli")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(_LOG_FORMAT))
    saved = cli_log.level, cli_log.propagate
    cli_log.addHandler(handler)
    cli_log.setLevel(logging.DEBUG)
    cli_log.propagate = False
    try:
        yield
    finally:
        cli_log.removeHandler(handler)
        cli_log.level, cli_log.propagate = saved
