"""The ``s3-upload-gateway`` command.

``serve`` runs the gateway; ``hash-token`` makes an entry of the token file
(``GATEWAY_AUTH_TOKENS_FILE``); the other subcommands (``upload-part``,
``create-multipart-upload``, …) call a running gateway with the options and output of
``aws s3api`` (:mod:`gateway.cli.s3api`).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import getpass
import os
import sys
from collections.abc import Callable, Sequence

from gateway import __version__, logs
from gateway.cli import reap as reaper
from gateway.cli import s3api as s3api_cli
from gateway.cli import upload as upload_cli
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
    _add_hash_token(subparsers)
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
    if settings.workers > 1:
        from gateway.server.workers import supervise

        return supervise(settings)
    from gateway.server.app import run

    try:
        with asyncio.Runner(loop_factory=loop_factory(settings.event_loop)) as runner:
            runner.run(run(settings))
    except (ImportError, ConfigError) as exc:
        print(f"s3-upload-gateway: configuration error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except OSError as exc:
        print(f"s3-upload-gateway: cannot serve: {exc}", file=sys.stderr)
        return 1
    return 0


def _add_hash_token(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "hash-token",
        help="make a token file entry (GATEWAY_AUTH_TOKENS_FILE) for a bearer token",
        description="Print the entry of GATEWAY_AUTH_TOKENS_FILE's 'tokens' list for a bearer "
        "token: the principal and the token's SHA-256. The token is read from the first line "
        "of stdin (without echo on a terminal), or made with --generate. Clients send it with "
        "--token-file or $GATEWAY_TOKEN.",
    )
    parser.add_argument(
        "--principal", required=True, metavar="NAME", help="the name the token's caller gets"
    )
    parser.add_argument(
        "--generate",
        action="store_true",
        help="make a new random token (256 bits) instead of reading one; it is printed on the "
        "first line of stdout, before the entry: store it safely, it is not shown again",
    )
    parser.set_defaults(func=_hash_token)


def _hash_token(args: argparse.Namespace) -> int:
    import yaml

    from gateway.client import bearer_metadata
    from gateway.security.auth import generate_token, hash_token

    principal = args.principal.strip()
    if not principal or not principal.isprintable():
        return _usage("hash-token", "--principal must be a non-empty name without control codes")
    if args.generate:
        token = generate_token()
    else:
        if sys.stdin.isatty():
            token = getpass.getpass("token: ").strip()
        else:
            token = sys.stdin.readline().strip()
        if not token:
            return _usage("hash-token", "no token on stdin (or use --generate)")
        try:
            bearer_metadata(token)
        except ValueError as exc:
            return _usage("hash-token", str(exc))
    entry = yaml.safe_dump(
        [{"principal": principal, "sha256": hash_token(token)}],
        sort_keys=False,
        default_flow_style=False,
        allow_unicode=True,
    )
    if not args.generate:
        sys.stdout.write(entry)
        return 0
    sys.stdout.write(f"{token}\n{entry}")
    sys.stdout.flush()
    print(
        "s3-upload-gateway hash-token: the first line is the new token: store it safely (a "
        "secret store); it is kept nowhere else. The lines after it are its entry for the "
        "'tokens' list of GATEWAY_AUTH_TOKENS_FILE.",
        file=sys.stderr,
    )
    return 0


def _usage(command: str, message: str) -> int:
    print(f"s3-upload-gateway {command}: error: {message}", file=sys.stderr)
    return EXIT_CONFIG


def loop_factory(choice: str) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """The event loop ``serve`` runs on: uvloop's when chosen (or, for auto, installed)."""
    if choice == "asyncio":
        return None
    try:
        import uvloop
    except ImportError:
        if choice == "uvloop":
            raise ImportError(
                "GATEWAY_EVENT_LOOP=uvloop needs uvloop, which is not installed (none on Windows)"
            ) from None
        return None
    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory


def _as_variable(value: object) -> str:
    """A flag's value spelled as its GATEWAY_* variable would be."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)
