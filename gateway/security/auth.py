"""Caller authentication: bearer tokens from a token file, or a verified client certificate.

Tokens travel as ``authorization: Bearer <token>`` metadata and are checked against a YAML file of
SHA-256 hashes (:class:`TokenFile`), reloaded when it changes (a mounted Kubernetes Secret)::

    tokens:
      - principal: batch-job
        sha256: 9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08

Tokens are random secrets of 256 bits (:func:`generate_token`), so a plain, unsalted SHA-256 is
enough: nothing can be guessed or brute-forced from a hash, unlike a password, and a slow
password hash would only cost CPU on every call. One principal may have several entries (a token
being rotated); a hash may appear only once.

A client certificate, verified by the TLS layer (:mod:`gateway.security.tls`), names its caller
through the peer properties grpc puts in ``ServicerContext.auth_context()`` (:func:`mtls_identity`).

:class:`Authenticator` combines both. A call that presents a token is judged by the token alone:
a malformed or unknown one is refused even over a connection with a good certificate (fail
closed).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import secrets
import string
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import yaml

from gateway import bearer, watch
from gateway.bearer import InvalidAuthorization as InvalidAuthorization
from gateway.bearer import MetadataPairs
from gateway.config import ConfigError
from gateway.units import MiB

log = logging.getLogger(__name__)

#: Largest token file accepted.
MAX_TOKEN_FILE_SIZE = MiB

Method = Literal["token", "mtls", "anonymous"]

_HEX = frozenset(string.hexdigits)
#: The SHA-256 of the empty string: an entry no real token can match.
_EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()


class AuthConfigError(ConfigError):
    """The token file cannot be used."""


@dataclass(frozen=True)
class Principal:
    """Who is calling, and how that was established."""

    name: str
    method: Method


ANONYMOUS = Principal("anonymous", "anonymous")


def hash_token(token: str) -> str:
    """The hex SHA-256 of ``token`` (UTF-8), as written in the token file."""
    return hashlib.sha256(token.encode()).hexdigest()


def generate_token() -> str:
    """A new random token: 256 bits, URL-safe base64 (43 characters)."""
    return secrets.token_urlsafe(32)


def _entries(document: Any, source: str) -> tuple[tuple[bytes, str], ...]:
    """Validate a parsed token file; ``(digest, principal)`` pairs."""
    if not isinstance(document, dict):
        raise AuthConfigError(f"{source}: expected a mapping with a 'tokens' list")
    unknown = sorted(str(k) for k in document if k != "tokens")
    if unknown:
        raise AuthConfigError(f"{source}: unknown key(s) {', '.join(unknown)}")
    tokens = document.get("tokens")
    if not isinstance(tokens, list):
        raise AuthConfigError(f"{source}: 'tokens' must be a list")
    entries: list[tuple[bytes, str]] = []
    seen: dict[str, int] = {}
    for i, entry in enumerate(tokens):
        where = f"{source}: tokens[{i}]"
        if not isinstance(entry, dict):
            raise AuthConfigError(f"{where}: expected a mapping with 'principal' and 'sha256'")
        unknown = sorted(str(k) for k in entry if k not in ("principal", "sha256"))
        if unknown:
            raise AuthConfigError(f"{where}: unknown key(s) {', '.join(unknown)}")
        principal, digest = entry.get("principal"), entry.get("sha256")
        if not isinstance(principal, str) or not principal.strip():
            raise AuthConfigError(f"{where}: 'principal' must be a non-empty string")
        if not principal.isprintable():
            raise AuthConfigError(f"{where}: 'principal' has control characters")
        if not isinstance(digest, str) or len(digest) != 64 or not _HEX.issuperset(digest):
            raise AuthConfigError(
                f"{where}: 'sha256' must be 64 hex digits (quoted if they are all decimal)"
            )
        digest = digest.lower()
        if digest == _EMPTY_SHA256:
            raise AuthConfigError(f"{where}: 'sha256' is the hash of an empty token")
        if digest in seen:
            raise AuthConfigError(f"{where}: same sha256 as tokens[{seen[digest]}]")
        seen[digest] = i
        entries.append((bytes.fromhex(digest), principal))
    return tuple(entries)


def parse_tokens(text: str | bytes, source: str = "<tokens>") -> tuple[tuple[bytes, str], ...]:
    """Parse and validate a token file's content: ``(sha256 digest, principal)`` pairs.

    Raises :class:`AuthConfigError` naming ``source`` and the faulty entry.
    """
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise AuthConfigError(f"{source}: not valid YAML: {e}") from None
    return _entries(document, source)


class TokenFile(watch.WatchedFile[tuple[tuple[bytes, str], ...]]):
    """The token file at ``path``, loaded now and reloaded when it changes
    (:class:`gateway.watch.Watched`).

    At most once per ``check_interval`` seconds (by ``clock``), a lookup stats the path again,
    following symlinks, so a Kubernetes Secret update (a swapped ``..data`` link) or an edited
    file is seen. A changed file that fails to load keeps the previous tokens and logs one error
    (again only once the file changes anew). A lookup can thus do a stat, and rarely a read of a
    small file, on the caller's thread. Construction raises :class:`AuthConfigError`.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        check_interval: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(
            path,
            parse_tokens,
            limit=MAX_TOKEN_FILE_SIZE,
            what="token file",
            kept="tokens",
            log=log,
            error=AuthConfigError,
            describe=lambda entries: f": {len(entries)} token(s)",
            check_interval=check_interval,
            clock=clock,
        )

    @property
    def count(self) -> int:
        """The number of tokens in force."""
        return len(self.value)

    def principal_for(self, token: str) -> str | None:
        """The principal whose token this is, or None.

        The token's hash is compared with every entry by :func:`hmac.compare_digest`, with no
        early exit: the time taken does not depend on which entry (if any) matches.
        """
        entries = self.value
        if not token:
            return None
        digest = hashlib.sha256(token.encode()).digest()
        found: str | None = None
        for stored, principal in entries:
            if hmac.compare_digest(digest, stored):
                found = principal
        return found


#: The bearer token of a call's metadata, None without an ``authorization`` entry; raises
#: :class:`InvalidAuthorization` for anything but one well-formed ``Bearer <token>``.
bearer_token = bearer.parse


def _first(auth_context: Mapping[str, Iterable[bytes]], key: str) -> str | None:
    for value in auth_context.get(key, ()):
        if value:
            try:
                return value.decode()
            except UnicodeDecodeError:
                return None
    return None


def mtls_identity(auth_context: Mapping[str, Iterable[bytes]]) -> str | None:
    """The caller's name from its verified client certificate, or None without one.

    Read from ``ServicerContext.auth_context()``: the first URI SAN (a SPIFFE ID, say), else the
    first DNS SAN, else the subject common name.

    Observed with grpcio 1.85.1 (tests/test_auth.py checks it on real connections): over TLS,
    ``transport_security_type`` is ``[b'ssl']`` (``[b'insecure']`` in plaintext), with
    ``security_level``, ``ssl_session_reused``, ``ssl_tls_version`` and
    ``ssl_negotiated_key_exchange_group``. Only when the client presented a certificate are there
    also ``x509_pem_cert``, ``x509_subject`` (``b'CN=...'``), ``x509_common_name`` (``b''`` when the
    subject is empty) and, per SAN type, ``peer_dns``, ``peer_uri`` and ``peer_ip``, each in
    certificate order; ``x509_subject_alternative_name`` mixes them all, so URI and DNS SANs are
    told apart by ``peer_uri`` / ``peer_dns``. ``peer_spiffe_id`` appears only when the
    certificate has exactly one URI SAN and it is ``spiffe://`` (then it repeats ``peer_uri``).
    grpc Python either requires *and verifies* a client certificate or does not request one, so a
    certificate in the context has been verified against the client CA.
    """
    if list(auth_context.get("transport_security_type", ())) != [b"ssl"]:
        return None
    if not any(auth_context.get("x509_pem_cert", ())):
        return None
    for key in ("peer_uri", "peer_dns", "x509_common_name"):
        identity = _first(auth_context, key)
        if identity:
            return identity
    return None


class Authenticator:
    """Decides who a call is from: a bearer token, else a verified client certificate.

    - ``authorization`` present but malformed, or a token not in ``tokens`` (or no token file):
      None, whatever certificate the connection has.
    - A known token: ``Principal(<its principal>, "token")``.
    - No token, ``mtls`` and a verified client certificate: ``Principal(<identity>, "mtls")``.
    - Otherwise None (unauthenticated).

    With neither ``tokens`` nor ``mtls``, authentication is off and every call is
    :data:`ANONYMOUS`.
    """

    def __init__(self, tokens: TokenFile | None, mtls: bool) -> None:
        self.tokens = tokens
        self.mtls = mtls

    @property
    def enabled(self) -> bool:
        """Whether calls must authenticate."""
        return self.tokens is not None or self.mtls

    def authenticate(
        self,
        metadata: MetadataPairs | None,
        auth_context: Mapping[str, Iterable[bytes]],
    ) -> Principal | None:
        """The caller of a call with ``metadata`` on a connection with ``auth_context``."""
        if not self.enabled:
            return ANONYMOUS
        try:
            token = bearer_token(metadata)
        except InvalidAuthorization:
            return None
        if token is not None:
            name = None if self.tokens is None else self.tokens.principal_for(token)
            return None if name is None else Principal(name, "token")
        if self.mtls:
            identity = mtls_identity(auth_context)
            if identity is not None:
                return Principal(identity, "mtls")
        return None
