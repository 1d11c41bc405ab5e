"""The ``s3-upload-gateway`` command.

``serve`` runs the gateway; the other subcommands (``upload-part``, ``create-multipart-upload``, …)
call a running gateway with the options and output of ``aws s3api`` (:mod:`gateway.s3api_cli`).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os
import sys
from collections.abc import Sequence

from gateway import __version__, logs, reaper, s3api_cli, upload_cli
from gateway.config import ConfigError, Settings

#: Exit code for a configuration the gateway cannot start with.
EXIT_CONFIG = 2


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "func"):
        parser.print_help(sys.stderr)
        return EXIT_CONFIG
    code: int = args.func(args)
    return code


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="s3-upload-gateway",
        description="A gRPC gateway that streams multipart uploads into Amazon S3.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    subparsers = parser.add_subparsers(title="commands", metavar="COMMAND")
    _add_serve(subparsers)
    s3api_cli.register(subparsers)
    reaper.register(subparsers)
    upload_cli.register(subparsers)
    return parser


def _add_serve(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    serve = subparsers.add_parser(
        "serve",
        help="run the gateway",
        description="Run the gateway. Every setting is a GATEWAY_* variable; a flag overrides "
        "its variable. AWS credentials come from the standard AWS chain.",
    )
    for f in dataclasses.fields(Settings):
        setting = f.metadata["setting"]
        default = "" if f.default is None else f", default {f.default}"
        text = f"{setting.help} [{setting.env}{default}]".replace("%", "%%")
        flag = "--" + f.name.replace("_", "-")
        if f.type == "bool":
            serve.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction, help=text)
        elif f.name == "embedded_s3":
            serve.add_argument(
                flag, dest=f.name, nargs="?", const="on", choices=("auto", "on", "off"), help=text
            )
        else:
            serve.add_argument(flag, dest=f.name, metavar="VALUE", help=text)
    serve.set_defaults(func=_serve)


def _serve(args: argparse.Namespace) -> int:
    flags = {
        f.metadata["setting"].env: _as_variable(value)
        for f in dataclasses.fields(Settings)
        if (value := getattr(args, f.name, None)) is not None
    }
    try:
        settings = Settings.from_env({**os.environ, **flags})
    except ConfigError as exc:
        print(f"s3-upload-gateway: configuration error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    logs.configure(settings.log_level, settings.log_format)
    from gateway.server import run

    try:
        asyncio.run(run(settings))
    except OSError as exc:
        print(f"s3-upload-gateway: cannot serve: {exc}", file=sys.stderr)
        return 1
    return 0


def _as_variable(value: object) -> str:
    """A flag's value spelled as its GATEWAY_* variable would be."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)
