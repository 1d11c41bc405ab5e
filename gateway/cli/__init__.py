"""The ``s3-upload-gateway`` command: the parser of its subcommands, and the dispatch.

Each command is a module of this package:

* ``serve`` (:mod:`gateway.cli.serve`) runs the gateway;
* ``hash-token`` (:mod:`gateway.cli.tokens`) makes an entry of the token file
  (``GATEWAY_AUTH_TOKENS_FILE``);
* ``upload-part``, ``create-multipart-upload``, … (:mod:`gateway.cli.s3api`) call a running
  gateway with the options and output of ``aws s3api``;
* ``reap-uploads`` (:mod:`gateway.cli.reap`) aborts abandoned uploads;
* ``upload`` and ``demo`` (:mod:`gateway.cli.upload`) upload whole files.

The exit statuses are :class:`gateway.exits.ExitCode`; its module documents the table. Ctrl-C
(SIGINT) ends any command with 130 and one line, never a traceback (``serve`` takes SIGINT, once
it serves, as the order to drain and stop: 0).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from gateway import __version__
from gateway.cli import reap, s3api, serve, tokens, upload
from gateway.exits import ExitCode


def main(argv: Sequence[str] | None = None) -> int:
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
        if not hasattr(args, "func"):
            parser.print_help(sys.stderr)
            return ExitCode.CONFIG
        code: int = args.func(args)
    except KeyboardInterrupt:
        print("s3-upload-gateway: interrupted", file=sys.stderr)
        return ExitCode.INTERRUPTED
    return code


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="s3-upload-gateway",
        description="A gRPC gateway that streams multipart uploads into Amazon S3.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    subparsers = parser.add_subparsers(title="commands", metavar="COMMAND")
    serve.register(subparsers)
    tokens.register(subparsers)
    s3api.register(subparsers)
    reap.register(subparsers)
    upload.register(subparsers)
    return parser
