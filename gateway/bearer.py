"""Bearer tokens in gRPC metadata: the one grammar both the client and the gateway follow.

A caller authenticates with one ``authorization: Bearer <token>`` metadata entry (RFC 6750,
section 2.1: ``"Bearer" 1*SP b64token``; the scheme is case-insensitive, RFC 9110). A token is a
b64token: letters, digits and ``-._~+/``, optionally followed by ``=`` padding; nothing else, no
whitespace. The client builds the entry with :func:`metadata`; the gateway reads it back with
:func:`parse`. Neither ever puts a token in an error message.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

#: The metadata key carrying credentials (gRPC keys are lower case).
AUTHORIZATION = "authorization"
#: The scheme :func:`metadata` writes; :func:`parse` accepts it in any case.
SCHEME = "Bearer"
#: Longest bearer token the gateway accepts (ours are 43 characters).
MAX_TOKEN_LENGTH = 4096
#: RFC 6750's b64token.
TOKEN = re.compile(r"[A-Za-z0-9\-._~+/]+=*")
_HEADER = re.compile(rf"(?i:{SCHEME}) +({TOKEN.pattern})")

#: Call metadata: ``(key, value)`` pairs.
Metadata = tuple[tuple[str, str], ...]
#: Call metadata as grpc hands it to a server: values ``str`` (``bytes`` for ``-bin`` keys).
MetadataPairs = Iterable[tuple[str, str | bytes]]


class InvalidAuthorization(ValueError):
    """The call carries ``authorization`` metadata that is not one well-formed bearer token."""


def check(token: str) -> None:
    """Raise ValueError when ``token`` is empty or not a b64token; the message never holds it."""
    if not token:
        raise ValueError("the token is empty")
    if TOKEN.fullmatch(token) is None:
        raise ValueError(
            "the token is not a bearer token: it may hold only letters, digits and "
            "-._~+/ (with = at the end), no spaces or line breaks"
        )


def metadata(token: str | None) -> Metadata:
    """The call metadata carrying ``token``: ``authorization: Bearer <token>``; none without a
    token. Raises ValueError for a token that is empty or not a bearer token (:func:`check`)."""
    if token is None:
        return ()
    check(token)
    return ((AUTHORIZATION, f"{SCHEME} {token}"),)


def parse(pairs: MetadataPairs | None) -> str | None:
    """The bearer token of a call's metadata; None when it has no ``authorization`` entry.

    Accepted: exactly one ``authorization`` entry whose value is ``Bearer <token>`` (scheme in
    any case, one or more spaces, a b64token of at most :data:`MAX_TOKEN_LENGTH` characters, no
    other whitespace). Anything else present under that key (two entries, another scheme, a
    missing or malformed token, non-ASCII bytes) raises :class:`InvalidAuthorization`: a caller
    that tried to authenticate is never mistaken for one that did not.
    """
    values = [v for k, v in pairs or () if k.lower() == AUTHORIZATION]
    if not values:
        return None
    if len(values) > 1:
        raise InvalidAuthorization("more than one authorization entry")
    value = values[0]
    if isinstance(value, bytes):
        try:
            value = value.decode("ascii")
        except UnicodeDecodeError:
            raise InvalidAuthorization("authorization is not ASCII") from None
    match = _HEADER.fullmatch(value)
    if match is None:
        raise InvalidAuthorization("authorization is not 'Bearer <token>'")
    found = match.group(1)
    if len(found) > MAX_TOKEN_LENGTH:
        raise InvalidAuthorization("bearer token too long")
    return found
