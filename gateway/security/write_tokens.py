"""Resumable write tokens: what a caller holds to continue a WriteObject on any replica.

A resumable write keeps no state in the gateway. Its multipart upload and parts live in S3; what
S3 cannot tell (who started the write, with which attributes and part size, the checksum of the
bytes persisted so far on stores that do not report part checksums) travels in a token the caller
holds and hands back. The token is authenticated, not encrypted: nothing in it is secret (an SSE-C
key never is; its MD5 is), and the caller cannot change any of it.

A token is ``gw1.<payload>.<mac>``: the payload is the base64url of a compact JSON object, the
mac the base64url HMAC-SHA256 of ``gw1.<payload>`` with the key the payload's ``kid`` names. The
keys come from a YAML file that every replica mounts (a Kubernetes Secret), read again when it
changes::

    signing: "2026-12"
    keys:
      "2026-11": "<base64 of 32 or more random bytes>"
      "2026-12": "<base64 of 32 or more random bytes>"

New tokens are signed with the ``signing`` key; every key of the file verifies. A key is rotated
without breaking live writes: add the new key, make it the signing key once every replica has the
file, and remove the old one after the longest token lifetime.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import logging
import os
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any, Protocol

import yaml

from gateway import watch
from gateway.config import ConfigError

log = logging.getLogger(__name__)

#: The token format's prefix (and version).
PREFIX = "gw1"
#: Largest key file accepted.
MAX_KEY_FILE_SIZE = 64 * 1024
#: Fewest bytes a key may have.
MIN_KEY_BYTES = 32
#: Longest token accepted (a spec with 2 KiB of metadata is far below it).
MAX_TOKEN_LENGTH = 16 * 1024
#: Where resumable writes' markers are (:func:`marker_key`), in the bucket of each write.
MARKER_PREFIX = ".s3-upload-gateway/resumable-writes/"
#: Hex digits of an upload id's digest in a marker key.
_DIGEST_CHARS = 32
#: Bytes of a marker's mac.
_MARKER_MAC_BYTES = 16


class WriteKeysError(ConfigError):
    """The write token key file cannot be used."""


class TokenRejected(Exception):
    """A token that does not verify; ``why`` says how (``malformed``, ``unknown key``,
    ``forged``), never echoing its content."""

    def __init__(self, why: str) -> None:
        super().__init__(why)
        self.why = why


@dataclass(frozen=True)
class KeySet:
    """The keys of the file: the one that signs, and every one that verifies."""

    signing: str
    keys: dict[str, bytes]

    @classmethod
    def of_process(cls) -> KeySet:
        """Keys that never change: one random key of this process, for the embedded S3 (whose
        uploads die with the process too)."""
        return cls("process", {"process": secrets.token_bytes(MIN_KEY_BYTES)})

    def sign(self, token: WriteToken) -> str:
        return sign(token, self.signing, self.keys[self.signing])

    def verify(self, text: str) -> WriteToken:
        """The token ``text`` carries, if one of the keys signed it (:class:`TokenRejected`
        otherwise). Expiry and principal are the caller's to check."""
        return verify(text, self.keys)

    def mark(self, bucket: str, upload_id: str, expires: int) -> str:
        """The marker key of a write (:func:`marker_key`), signed with the signing key."""
        return marker_key(self.signing, self.keys[self.signing], bucket, upload_id, expires)


def generate_key() -> str:
    """A new key for the key file: 32 random bytes, base64."""
    return base64.b64encode(secrets.token_bytes(MIN_KEY_BYTES)).decode("ascii")


def parse_keys(text: str | bytes, source: str = "<write keys>") -> KeySet:
    """The key set of a key file's text; :class:`WriteKeysError` naming what is wrong."""
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise WriteKeysError(f"write token key file {source}: not valid YAML: {exc}") from None
    if not isinstance(document, dict) or set(document) != {"signing", "keys"}:
        raise WriteKeysError(
            f"write token key file {source}: must be a mapping of 'signing' (a key id) and "
            "'keys' (key id: base64 key)"
        )
    raw = document["keys"]
    if not isinstance(raw, dict) or not raw:
        raise WriteKeysError(f"write token key file {source}: 'keys' must map key ids to keys")
    keys: dict[str, bytes] = {}
    for kid, value in raw.items():
        if not isinstance(kid, str) or not kid or not kid.isprintable() or "." in kid:
            raise WriteKeysError(
                f"write token key file {source}: key ids must be printable strings without '.'"
            )
        try:
            key = base64.b64decode(str(value), validate=True)
        except (binascii.Error, ValueError):
            raise WriteKeysError(
                f"write token key file {source}: key {kid!r} is not base64"
            ) from None
        if len(key) < MIN_KEY_BYTES:
            raise WriteKeysError(
                f"write token key file {source}: key {kid!r} has {len(key)} bytes; "
                f"at least {MIN_KEY_BYTES} are needed"
            )
        keys[kid] = key
    signing = document["signing"]
    if not isinstance(signing, str) or signing not in keys:
        raise WriteKeysError(f"write token key file {source}: 'signing' must name one of the keys")
    return KeySet(signing, keys)


@dataclass(frozen=True)
class WriteToken:
    """What a resumable write's token carries."""

    #: Who started the write: a digest of the principal's name.
    principal: str
    #: Unix time the write started.
    started: int
    #: Unix time after which the token is refused.
    expires: int
    upload_id: str
    part_size: int
    #: The write's spec (a serialized ``WriteObjectSpec``, the SSE-C key removed).
    spec: bytes
    #: Parts persisted, as far as the gateway knew when it issued the token: 1 to ``parts``.
    parts: int = 0
    #: Their bytes.
    persisted: int = 0
    #: The checksum of those bytes, of the spec's algorithm (a CRC); empty for none yet.
    crc: bytes = b""
    #: The write's marker (:func:`marker_key`) and its upload id; empty in tokens of gateways
    #: that made none.
    marker_key: str = ""
    marker_upload_id: str = ""
    #: The key that signed it (set by :meth:`WriteKeys.verify`).
    kid: str = ""

    def advanced(self, parts: int, persisted: int, crc: bytes) -> WriteToken:
        return replace(self, parts=parts, persisted=persisted, crc=crc)

    def _payload(self, kid: str) -> dict[str, Any]:
        return {
            "k": kid,
            "p": self.principal,
            "t": self.started,
            "x": self.expires,
            "u": self.upload_id,
            "s": self.part_size,
            "o": _b64(self.spec),
            "n": self.parts,
            "z": self.persisted,
            "c": _b64(self.crc),
            "mk": self.marker_key,
            "mu": self.marker_upload_id,
        }

    @classmethod
    def _of(cls, payload: dict[str, Any]) -> WriteToken:
        try:
            token = cls(
                principal=str(payload["p"]),
                started=int(payload["t"]),
                expires=int(payload["x"]),
                upload_id=str(payload["u"]),
                part_size=int(payload["s"]),
                spec=_unb64(str(payload["o"])),
                parts=int(payload["n"]),
                persisted=int(payload["z"]),
                crc=_unb64(str(payload["c"])),
                marker_key=str(payload.get("mk", "")),
                marker_upload_id=str(payload.get("mu", "")),
                kid=str(payload["k"]),
            )
        except (KeyError, TypeError, ValueError, binascii.Error):
            raise TokenRejected("malformed") from None
        if min(token.parts, token.persisted, token.part_size) < 0:
            raise TokenRejected("malformed")
        return token


def principal_digest(principal: str) -> str:
    """What a token records of its principal: enough to recognise it, without naming it."""
    return hashlib.sha256(principal.encode()).hexdigest()[:32]


class Signer(Protocol):
    """What signs and verifies tokens: :class:`WriteKeys`, or a fixed :class:`KeySet`."""

    def sign(self, token: WriteToken) -> str: ...

    def verify(self, text: str) -> WriteToken: ...

    def mark(self, bucket: str, upload_id: str, expires: int) -> str: ...


class WriteKeys(watch.WatchedFile[KeySet]):
    """The key file at ``path``, loaded now and read again when it changes
    (:class:`gateway.watch.WatchedFile`); signs and verifies tokens with the keys in force."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        check_interval: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(
            path,
            parse_keys,
            limit=MAX_KEY_FILE_SIZE,
            what="write token key file",
            kept="keys",
            log=log,
            error=WriteKeysError,
            describe=lambda keys: f": {len(keys.keys)} key(s), signing with {keys.signing!r}",
            check_interval=check_interval,
            clock=clock,
        )

    def sign(self, token: WriteToken) -> str:
        return self.value.sign(token)

    def verify(self, text: str) -> WriteToken:
        return self.value.verify(text)

    def mark(self, bucket: str, upload_id: str, expires: int) -> str:
        return self.value.mark(bucket, upload_id, expires)


def sign(token: WriteToken, kid: str, key: bytes) -> str:
    payload = json.dumps(token._payload(kid), separators=(",", ":"), sort_keys=True)
    body = f"{PREFIX}.{_b64(payload.encode())}"
    return f"{body}.{_b64(_mac(key, body))}"


def verify(text: str, keys: dict[str, bytes]) -> WriteToken:
    if len(text) > MAX_TOKEN_LENGTH:
        raise TokenRejected("malformed")
    prefix, _, rest = text.partition(".")
    encoded, _, mac = rest.partition(".")
    if prefix != PREFIX or not encoded or not mac or "." in mac:
        raise TokenRejected("malformed")
    try:
        payload = json.loads(_unb64(encoded))
        given = _unb64(mac)
    except (binascii.Error, ValueError, UnicodeDecodeError):
        raise TokenRejected("malformed") from None
    if not isinstance(payload, dict):
        raise TokenRejected("malformed")
    key = keys.get(str(payload.get("k")))
    if key is None:
        raise TokenRejected("unknown key")
    if not hmac.compare_digest(given, _mac(key, f"{PREFIX}.{encoded}")):
        raise TokenRejected("forged")
    return WriteToken._of(payload)


def marker_key(kid: str, secret: bytes, bucket: str, upload_id: str, expires: int) -> str:
    """The key of the marker of the resumable write of upload ``upload_id`` in ``bucket``, which
    expires at ``expires``: ``MARKER_PREFIX<expires>/<upload digest>.<kid>.<mac>``.

    S3's listing of multipart uploads carries nothing a gateway can set, so a resumable write is
    made known to ``reap-uploads`` by a second, empty multipart upload at this key, created with
    the write and aborted when it ends. The mac (over the bucket, the digest and the expiry) lets
    the reaper, holding the same keys, tell a marker from an upload anybody could have created at
    such a key; the digest of the upload id names the upload it marks."""
    digest = upload_digest(upload_id)
    return f"{MARKER_PREFIX}{expires}/{digest}.{kid}.{_marker_mac(secret, bucket, digest, expires)}"


@dataclass(frozen=True)
class Marker:
    """A marker key, parsed (:func:`parse_marker`): not yet verified."""

    expires: int
    #: :func:`upload_digest` of the upload it marks.
    upload: str
    kid: str
    mac: str

    def signed(self, keys: dict[str, bytes], bucket: str) -> bool:
        """True if one of ``keys`` signed this marker for ``bucket``."""
        secret = keys.get(self.kid)
        if secret is None:
            return False
        expected = _marker_mac(secret, bucket, self.upload, self.expires)
        return hmac.compare_digest(expected, self.mac)


def parse_marker(key: str) -> Marker | None:
    """The marker ``key`` names, or None for a key that is not one."""
    if not key.startswith(MARKER_PREFIX):
        return None
    expires, _, rest = key[len(MARKER_PREFIX) :].partition("/")
    digest, _, signed = rest.partition(".")
    kid, _, mac = signed.rpartition(".")
    if not expires.isdigit() or len(expires) > 12 or len(digest) != _DIGEST_CHARS:
        return None
    if not kid or not mac or not all(c in "0123456789abcdef" for c in digest):
        return None
    return Marker(int(expires), digest, kid, mac)


def upload_digest(upload_id: str) -> str:
    """What a marker key records of the upload id it marks (which may be 1 KiB long)."""
    return hashlib.sha256(upload_id.encode()).hexdigest()[:_DIGEST_CHARS]


def _marker_mac(secret: bytes, bucket: str, digest: str, expires: int) -> str:
    message = "\0".join(("marker", bucket, digest, str(expires)))
    mac = hmac.new(secret, message.encode(), hashlib.sha256).digest()
    return _b64(mac[:_MARKER_MAC_BYTES])


def _mac(key: bytes, body: str) -> bytes:
    return hmac.new(key, body.encode("ascii"), hashlib.sha256).digest()


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
