"""``s3-upload-gateway serve``: run the gateway.

Every setting of :class:`gateway.config.Settings` is a ``GATEWAY_*`` variable and a flag of the
same name (``GATEWAY_S3_READ_TIMEOUT`` is ``--s3-read-timeout``); a flag overrides its variable.
Exits 0 after a clean stop (SIGTERM or SIGINT); 1 when the gateway could not serve, such as an
address already in use (:class:`gateway.server.app.CannotListen`); 2 for a configuration it
cannot start with: a setting, or an AWS configuration botocore refuses (an unknown
``AWS_PROFILE``, a config file it cannot parse, a failing ``credential_process``…). Either way
in one line on stderr (:class:`gateway.exits.ExitCode`).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os
import sys

from gateway import logs
from gateway.config import ConfigError, Settings
from gateway.exits import ExitCode
from gateway.server.loops import loop_factory


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``serve``, with one flag per setting."""
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
    serve.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    flags = {
        f.metadata["setting"].env: _as_variable(value)
        for f in dataclasses.fields(Settings)
        if (value := getattr(args, f.name, None)) is not None
    }
    try:
        settings = Settings.from_env({**os.environ, **flags})
    except ConfigError as exc:
        return _configuration_error(exc)
    logs.configure(settings.log_level, settings.log_format)
    if settings.workers > 1:
        from gateway.server.workers import supervise

        return supervise(settings)
    from gateway.server.app import run as serve

    try:
        with asyncio.Runner(loop_factory=loop_factory(settings.event_loop)) as runner:
            runner.run(serve(settings))
    except (ImportError, ConfigError) as exc:
        return _configuration_error(exc)
    except OSError as exc:
        print(f"s3-upload-gateway: cannot serve: {exc}", file=sys.stderr)
        return ExitCode.FAILED
    return ExitCode.OK


def _configuration_error(exc: Exception) -> int:
    print(f"s3-upload-gateway: configuration error: {exc}", file=sys.stderr)
    return ExitCode.CONFIG


def _as_variable(value: object) -> str:
    """A flag's value spelled as its GATEWAY_* variable would be."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)
