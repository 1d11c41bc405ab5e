"""The connection to the gateway, for every command that calls one: the options that say where
it is and who the caller is, and the channel they make.

``--endpoint-url`` names the gateway (default ``$GATEWAY_ENDPOINT_URL``, else ``localhost:50051``):
``http://`` or a bare ``host:port`` is plaintext, ``https://`` is TLS, trusting ``--ca-bundle`` or
the system's CAs; ``--no-verify-ssl`` trusts the certificate the gateway presents. ``--client-cert``
and ``--client-key`` present a client certificate (mutual TLS). A bearer token comes from
``--token-file`` or ``$GATEWAY_TOKEN`` and travels as ``authorization: Bearer`` metadata on every
call; there is deliberately no option taking the token itself (command lines show in the process
list), and the token never appears in output, errors or logs.

A bad command line raises :class:`gateway.exits.UsageError` (exit 252); a token, certificate or
CA file, or a ``GATEWAY_*`` variable, that cannot be used raises
:class:`gateway.exits.ClientConfigError` (253); a gateway that cannot be reached while the
connection is set up raises :class:`gateway.exits.ConnectionFailure` (255).
:class:`CallerParser` is the parser of these commands: a bad command line exits 252 there too.
"""

from __future__ import annotations

import argparse
import logging
import os
import socket
import ssl
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, NoReturn
from urllib.parse import urlsplit

import grpc

from gateway import bearer
from gateway.client import open_channel as open_gateway_channel
from gateway.config import ConfigError, listens_on_loopback
from gateway.exits import ClientConfigError, ConnectionFailure, ExitCode, UsageError
from gateway.pem import TLSConfigError, load_ca, load_pair
from gateway.watch import read_capped

log = logging.getLogger(__name__)

#: The environment variable that sets the default ``--endpoint-url``.
ENDPOINT_ENV = "GATEWAY_ENDPOINT_URL"
DEFAULT_ENDPOINT = "localhost:50051"
#: The environment variable holding the bearer token, when ``--token-file`` is not given.
TOKEN_ENV = "GATEWAY_TOKEN"
#: The largest ``--token-file`` read.
_MAX_TOKEN_FILE = 64 * 1024


@dataclass(frozen=True)
class Endpoint:
    """Where the gateway is, from ``--endpoint-url``."""

    target: str
    tls: bool
    url: str

    @classmethod
    def parse(cls, value: str, source: str = "--endpoint-url") -> Endpoint:
        """The endpoint ``value`` names; a bad one raises UsageError, or ClientConfigError when
        it comes from ``$GATEWAY_ENDPOINT_URL`` (``source``)."""
        error = UsageError if source.startswith("--") else ClientConfigError
        scheme, _, rest = value.rpartition("://")
        if scheme not in ("", "http", "https"):
            raise error(f"Bad value for {source}: {value} (http:// or https://)")
        parts = urlsplit(f"//{rest}")
        if not parts.hostname:
            raise error(f"Bad value for {source}: {value} (no host)")
        tls = scheme == "https"
        try:
            port = parts.port or (443 if tls else 80)
        except ValueError:
            raise error(f"Bad value for {source}: {value} (bad port)") from None
        host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
        target = f"{host}:{port}"
        return cls(target, tls, f"{'https' if tls else 'http'}://{target}")

    @property
    def host_port(self) -> tuple[str, int]:
        host, _, port = self.target.rpartition(":")
        return host.strip("[]"), int(port)


@dataclass(frozen=True)
class Connection:
    """How to reach the gateway: where; over TLS, the certificates to trust (None: the system's
    CAs), the name the gateway's certificate is checked against when it is not the endpoint's
    host, and the client certificate and key files to present; the bearer token to send (never
    shown by ``repr``)."""

    endpoint: Endpoint
    root_certificates: bytes | None = None
    server_name: str | None = None
    client_pair: tuple[str, str] | None = None
    token: str | None = field(default=None, repr=False)

    def channel(self) -> grpc.Channel:
        """A synchronous channel (:func:`gateway.client.open_channel`); every call on it carries
        the bearer token, if any."""
        return open_gateway_channel(self.endpoint.target, **self._channel_arguments(), aio=False)

    def aio_channel(self) -> grpc.aio.Channel:
        """The same, for ``grpc.aio``."""
        return open_gateway_channel(self.endpoint.target, **self._channel_arguments(), aio=True)

    def _channel_arguments(self) -> dict[str, Any]:
        cert, key = self.client_pair or (None, None)
        if self.token is not None:
            log.debug("Sending a bearer token with every call")
        return {
            "tls": self.endpoint.tls,
            "root_certificates": self.root_certificates,
            "server_name": self.server_name,
            "client_cert": cert,
            "client_key": key,
            "token": self.token,
        }


def connection(args: argparse.Namespace, connect_timeout: float | None) -> Connection:
    """The connection the options ask for: ``--endpoint-url``, ``--ca-bundle``,
    ``--no-verify-ssl``, ``--client-cert``/``--client-key``, and the token of ``--token-file``
    or ``$GATEWAY_TOKEN``. Every file is read and checked here. Raises UsageError or
    ClientConfigError (ConnectionFailure when ``--no-verify-ssl`` cannot fetch the server's
    certificate)."""
    endpoint = _endpoint(args)
    pair = _client_certificate(args, endpoint)
    token = read_token(args)
    if not endpoint.tls:
        if token is not None and not listens_on_loopback(endpoint.target):
            print(
                f"s3-upload-gateway: warning: sending a bearer token in plaintext to "
                f"{endpoint.target}; use https:// unless a mesh encrypts the connection",
                file=sys.stderr,
            )
        return Connection(endpoint, token=token)
    if args.no_verify_ssl:
        pem, names = _fetch_certificate(endpoint, connect_timeout, pair)
        log.debug("--no-verify-ssl: trusting the certificate the server presented for %s", names)
        host = endpoint.host_port[0]
        server_name = None if host in names or not names else names[0]
        return Connection(endpoint, pem, server_name, pair, token)
    roots = None
    if args.ca_bundle is not None:
        try:
            roots = load_ca(args.ca_bundle)
        except TLSConfigError as exc:
            raise ClientConfigError(f"Bad value for --ca-bundle: {exc}") from None
    return Connection(endpoint, roots, None, pair, token)


def _endpoint(args: argparse.Namespace) -> Endpoint:
    if args.endpoint_url:
        return Endpoint.parse(args.endpoint_url)
    if variable := os.environ.get(ENDPOINT_ENV):
        return Endpoint.parse(variable, f"${ENDPOINT_ENV}")
    return Endpoint.parse(DEFAULT_ENDPOINT)


def open_channel(
    args: argparse.Namespace, connect_timeout: float | None
) -> tuple[grpc.Channel, Endpoint]:
    """A synchronous channel to the gateway the options name (:func:`connection`), and where it
    leads."""
    conn = connection(args, connect_timeout)
    return conn.channel(), conn.endpoint


class CallerParser(argparse.ArgumentParser):
    """The parser of a command that calls a gateway: a bad command line, unknown options
    included, exits 252 (:attr:`ExitCode.USAGE`), as the AWS CLI v2 exits, instead of argparse's
    2."""

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(ExitCode.USAGE, f"{self.prog}: error: {message}\n")

    def parse_known_args(  # type: ignore[override]
        self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> tuple[argparse.Namespace, list[str]]:
        # Unknown options are this parser's error, not the top-level parser's (which exits 2).
        parsed, extras = super().parse_known_args(args, namespace)
        if extras:
            self.error(self.unknown(extras))
        return parsed, extras

    def unknown(self, extras: list[str]) -> str:
        """The error for arguments no option takes."""
        return "unrecognized arguments: " + " ".join(extras)


def add_caller_parser(
    subparsers: argparse._SubParsersAction[argparse.ArgumentParser], name: str, **kwargs: Any
) -> argparse.ArgumentParser:
    """Add the subcommand ``name`` with a :class:`CallerParser`."""
    default_class = subparsers._parser_class
    # argparse creates subparsers through this attribute only.
    subparsers._parser_class = CallerParser
    try:
        return subparsers.add_parser(name, **kwargs)
    finally:
        subparsers._parser_class = default_class


def add_connection_options(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """The options of every command that calls the gateway: ``--endpoint-url``, ``--ca-bundle``,
    ``--no-verify-ssl``, ``--client-cert``, ``--client-key`` and ``--token-file``."""
    parser.add_argument(
        "--endpoint-url",
        metavar="<value>",
        help="The gateway: http://host:port (plaintext), https://host:port (TLS) or host:port "
        f"(plaintext). Default: ${ENDPOINT_ENV}, else {DEFAULT_ENDPOINT}.",
    )
    parser.add_argument(
        "--ca-bundle", metavar="<value>", help="PEM file of CAs to trust for https:// gateways."
    )
    parser.add_argument(
        "--no-verify-ssl",
        action="store_true",
        help="With https://, do not verify the gateway's certificate. gRPC cannot skip "
        "verification, so the CLI fetches the certificate the server presents "
        "(ssl.get_server_certificate) and trusts exactly that certificate, under the name "
        "it is issued for, for this connection only. This works for self-signed certificates; "
        "for one issued by a private CA, pass that CA with --ca-bundle.",
    )
    parser.add_argument(
        "--client-cert",
        metavar="<value>",
        help="PEM certificate (chain) to present to an https:// gateway that requires mutual "
        "TLS; with --client-key.",
    )
    parser.add_argument(
        "--client-key",
        metavar="<value>",
        help="The unencrypted PEM private key of --client-cert.",
    )
    parser.add_argument(
        "--token-file",
        metavar="<value>",
        help="A file holding the bearer token to send to the gateway (authorization: Bearer "
        f"metadata, on every call); surrounding whitespace is ignored. Default: ${TOKEN_ENV}, "
        "when set. No option takes the token itself: command lines show in the process list.",
    )
    # A trap for --token VALUE, which argparse would otherwise take for an abbreviation of
    # --token-file (and then quote the token in its "no such file" error).
    parser.add_argument(
        "--token", dest="token_on_command_line", nargs="?", const="", help=argparse.SUPPRESS
    )


def read_token(args: argparse.Namespace) -> str | None:
    """The bearer token: the content of ``--token-file`` (stripped), else ``$GATEWAY_TOKEN``
    (stripped; empty means none). Raises ClientConfigError for a token file or variable that
    cannot be used, UsageError for ``--token``; neither message ever holds the token."""
    if getattr(args, "token_on_command_line", None) is not None:
        raise UsageError(
            "There is no --token option: a token on the command line shows in the process "
            f"list. Put it in a file for --token-file, or in ${TOKEN_ENV}."
        )
    path = getattr(args, "token_file", None)
    if path is not None:
        source = "--token-file"
        try:
            _, data = read_capped(path, _MAX_TOKEN_FILE, what="token file")
        except ConfigError as exc:
            raise ClientConfigError(f"Bad value for --token-file: {exc}") from None
        try:
            token = data.decode("utf-8").strip()
        except UnicodeDecodeError:
            raise ClientConfigError(
                f"Bad value for --token-file: {path} is not UTF-8 text"
            ) from None
        if not token:
            raise ClientConfigError(f"Bad value for --token-file: {path} is empty")
    else:
        source = f"${TOKEN_ENV}"
        token = os.environ.get(TOKEN_ENV, "").strip()
        if not token:
            return None
    try:
        bearer.check(token)
    except ValueError as exc:
        raise ClientConfigError(f"Bad value for {source}: {exc}") from None
    return token


def _client_certificate(args: argparse.Namespace, endpoint: Endpoint) -> tuple[str, str] | None:
    """The ``--client-cert`` and ``--client-key`` paths, checked (None when not given)."""
    cert, key = getattr(args, "client_cert", None), getattr(args, "client_key", None)
    if cert is None and key is None:
        return None
    if cert is None or key is None:
        raise UsageError("--client-cert and --client-key go together")
    if not endpoint.tls:
        raise UsageError(
            "--client-cert and --client-key need an https:// --endpoint-url (mutual TLS), "
            f"not {endpoint.url}"
        )
    try:
        load_pair(cert, key)
    except TLSConfigError as exc:
        raise ClientConfigError(f"Bad value for --client-cert/--client-key: {exc}") from None
    return cert, key


def _fetch_certificate(
    endpoint: Endpoint, timeout: float | None, client: tuple[str, str] | None = None
) -> tuple[bytes, list[str]]:
    """The certificate the server presents, and the names it is issued for (the client
    certificate, if any, is presented: a mutual-TLS server may refuse a handshake without)."""
    address = endpoint.host_port
    try:
        context = _tls_context(client)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        with (
            socket.create_connection(address, timeout=timeout) as raw,
            context.wrap_socket(raw, server_hostname=address[0]) as tls,
        ):
            der = tls.getpeercert(binary_form=True)
        if der is None:
            raise ssl.SSLError("the server presented no certificate")
        pem = ssl.DER_cert_to_PEM_cert(der)
        names = _certificate_names(address, pem, timeout, client)
    except (OSError, ssl.SSLError) as exc:
        raise ConnectionFailure(
            f'Could not connect to the endpoint URL: "{endpoint.url}" ({exc})'
        ) from None
    return pem.encode(), names


def _tls_context(client: tuple[str, str] | None) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    if client is not None:
        context.load_cert_chain(*client)
    return context


def _certificate_names(
    address: tuple[str, int], pem: str, timeout: float | None, client: tuple[str, str] | None
) -> list[str]:
    """The DNS names and IP addresses the certificate is for, read in a handshake that trusts it
    (ssl parses only certificates it verified)."""
    context = _tls_context(client)
    context.check_hostname = False
    context.load_verify_locations(cadata=pem)
    with (
        socket.create_connection(address, timeout=timeout) as raw,
        context.wrap_socket(raw, server_hostname=address[0]) as tls,
    ):
        cert: dict[str, Any] = dict(tls.getpeercert() or {})
    alt_names = [str(value) for _, value in cert.get("subjectAltName", ())]
    common = [str(v) for rdn in cert.get("subject", ()) for k, v in rdn if k == "commonName"]
    return alt_names + common
