"""``s3-upload-gateway hash-token``: make an entry of the token file (``GATEWAY_AUTH_TOKENS_FILE``).

The entry is the principal and the token's SHA-256; the token itself is read from stdin (without
echo on a terminal) or made with ``--generate``. Exits 0, or 2 for a bad principal or token (as
``serve`` does for a bad setting).
"""

from __future__ import annotations

import argparse
import getpass
import sys

from gateway import bearer
from gateway.exits import ExitCode


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``hash-token``."""
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
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import yaml

    from gateway.security.auth import generate_token, hash_token

    principal = args.principal.strip()
    if not principal or not principal.isprintable():
        return _refuse("--principal must be a non-empty name without control codes")
    if args.generate:
        token = generate_token()
    else:
        if sys.stdin.isatty():
            token = getpass.getpass("token: ").strip()
        else:
            token = sys.stdin.readline().strip()
        if not token:
            return _refuse("no token on stdin (or use --generate)")
        try:
            bearer.check(token)
        except ValueError as exc:
            return _refuse(str(exc))
    entry = yaml.safe_dump(
        [{"principal": principal, "sha256": hash_token(token)}],
        sort_keys=False,
        default_flow_style=False,
        allow_unicode=True,
    )
    if not args.generate:
        sys.stdout.write(entry)
        return ExitCode.OK
    sys.stdout.write(f"{token}\n{entry}")
    sys.stdout.flush()
    print(
        "s3-upload-gateway hash-token: the first line is the new token: store it safely (a "
        "secret store); it is kept nowhere else. The lines after it are its entry for the "
        "'tokens' list of GATEWAY_AUTH_TOKENS_FILE.",
        file=sys.stderr,
    )
    return ExitCode.OK


def _refuse(message: str) -> int:
    print(f"s3-upload-gateway hash-token: error: {message}", file=sys.stderr)
    return ExitCode.CONFIG
