"""Who may call the gateway, and what they may do.

A :class:`Guard` is consulted by every UploadService call before anything reaches S3:

1. **Authentication** (:mod:`.auth`): a bearer token from ``authorization`` metadata, or
   the verified client certificate of a mutual-TLS connection. With neither configured every
   caller is ``anonymous``. A caller who proves no known identity gets UNAUTHENTICATED.
2. **Authorization** (:mod:`.policy`): with a policy file, a call the policy does not allow
   gets PERMISSION_DENIED. Without one every authenticated caller may do everything, which
   :class:`gateway.config.Settings` permits only on loopback or with ``GATEWAY_ALLOW_ALL``.

How much a caller may do at once is the server's :mod:`gateway.server.admission`. The service
counts every refusal; no secret ever reaches a log line, a metric label or an error message
(principal names are identities, not secrets).
"""

from __future__ import annotations

import logging
import re
import urllib.parse
from dataclasses import dataclass
from typing import Any

from botocore.handlers import VALID_S3_ARN

from gateway import buckets
from gateway.config import Settings
from gateway.errors import (
    InvalidRequest,
    PermissionDenied,
    Reason,
    Unauthenticated,
)
from gateway.security.auth import Authenticator, Principal, TokenFile
from gateway.security.policy import PolicyFile

log = logging.getLogger(__name__)


class Guard:
    """Authentication and authorization for one gateway process."""

    def __init__(self, settings: Settings) -> None:
        #: The token file, re-read when it changes (None without one).
        self.tokens = TokenFile(settings.auth_tokens_file) if settings.auth_tokens_file else None
        self.authenticator = Authenticator(
            self.tokens, mtls=settings.tls_client_ca_file is not None
        )
        #: With TLS on, a call that arrives without it (on the health port) is refused.
        self.require_tls = settings.tls_cert_file is not None
        self.policy_file = PolicyFile(settings.policy_file) if settings.policy_file else None

    # ---------------------------------------------------------------- authentication

    def authenticate(self, context: Any) -> Principal:
        """The caller of ``context``'s call, or :class:`Unauthenticated`."""
        auth_context = context.auth_context()
        if self.require_tls and auth_context.get("transport_security_type") != [b"ssl"]:
            raise Unauthenticated(
                Reason.TLS_REQUIRED,
                "this port serves health probes only: call the gateway's TLS port",
            )
        principal = self.authenticator.authenticate(context.invocation_metadata(), auth_context)
        if principal is None:
            raise Unauthenticated(
                Reason.UNAUTHENTICATED,
                "no valid credentials: send 'authorization: Bearer <token>' with a token the "
                "gateway knows, or connect with a client certificate its CA issued",
            )
        return principal

    # ---------------------------------------------------------------- authorization

    def authorize(
        self,
        principal: Principal,
        operation: str,
        bucket: str,
        key: str | None = None,
        *,
        prefix: str | None = None,
        part_size: int | None = None,
    ) -> None:
        """Raise :class:`PermissionDenied` unless the policy allows the call."""
        if self.policy_file is None:
            return
        decision = self.policy_file.policy.check(
            principal.name, operation, bucket, key, prefix=prefix, part_size=part_size
        )
        if not decision.allowed:
            self._deny(operation, decision.reason)

    def authorize_copy_source(self, principal: Principal, copy_source: str) -> CopySource:
        """The source of an UploadPartCopy, parsed (:func:`parse_copy_source`) and, with a policy,
        allowed: UploadPartCopy reads it, so the policy must allow UploadPartCopy there too.

        The caller sends S3 exactly the returned value (:meth:`CopySource.botocore`), so the
        object S3 reads is the object the policy allowed.
        """
        source = parse_copy_source(copy_source)
        if self.policy_file is None:
            return source
        decision = self.policy_file.policy.check_copy_source(
            principal.name, source.bucket, source.key
        )
        if not decision.allowed:
            self._deny("UploadPartCopy", f"copy source: {decision.reason}")
        return source

    def _deny(self, operation: str, reason: str) -> None:
        raise PermissionDenied(f"{reason}; nothing was sent to S3", operation)


@dataclass(frozen=True, slots=True)
class CopySource:
    """The object an UploadPartCopy reads: what the policy checks and what S3 is sent."""

    #: A bucket name, or an access point ARN.
    bucket: str
    #: The object key, decoded.
    key: str
    #: The version to read; None for the current one.
    version_id: str | None = None

    def botocore(self) -> dict[str, str]:
        """The ``CopySource`` parameter: botocore encodes this form itself, once."""
        params = {"Bucket": self.bucket, "Key": self.key}
        if self.version_id is not None:
            params["VersionId"] = self.version_id
        return params


#: An S3 access point ARN, or an S3 on Outposts one: the forms botocore names the object of as
#: ``ARN/object/KEY``. No part of it contains ``/object/``, so the key after it is unambiguous.
_ACCESS_POINT_ARN = re.compile(
    r"arn:aws(?:-[a-z]+)*:s3:[a-z0-9-]*:[0-9]{12}:accesspoint[/:][a-zA-Z0-9.-]{1,63}"
    r"|arn:aws(?:-[a-z]+)*:s3-outposts:[a-z0-9-]+:[0-9]{12}:outpost[/:][a-zA-Z0-9-]{1,63}"
    r"[/:]accesspoint[/:][a-zA-Z0-9-]{1,63}",
    re.ASCII,
)
_ARN_OBJECT = "/object/"
#: An access point ARN as botocore sends it in x-amz-copy-source, its colons encoded.
_ENCODED_ARN = "arn%3a"
#: A version id: characters a URL carries as they are, so no store decodes them differently.
_VERSION_ID = re.compile(r"[A-Za-z0-9._~-]{1,1024}", re.ASCII)
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
#: A ``%`` that does not begin two hex digits.
_BAD_ESCAPE = re.compile(r"%(?![0-9A-Fa-f]{2})")
_SYNTAX = (
    "must be BUCKET/KEY or ACCESS-POINT-ARN/object/KEY, KEY URL-encoded, optionally followed by "
    "?versionId=ID"
)


def parse_copy_source(copy_source: str) -> CopySource:
    """The object an UploadPartCopy ``copy_source`` names, or :class:`InvalidRequest`.

    The syntax is S3's ``x-amz-copy-source``: ``[/]BUCKET/KEY[?versionId=ID]``, or
    ``[/]ARN/object/KEY[?versionId=ID]`` for an access point ARN (its colons may be encoded as
    ``%3A``, as botocore sends them), with KEY URL-encoded:

    - one leading ``/`` is ignored; the bucket ends at the first ``/`` (for an ARN, at the
      ``/object/`` after it), and is a valid bucket name or access point ARN, never encoded;
    - the key is percent-decoded once, as S3 decodes it: ``%2F`` is ``/``, ``%2B`` and ``+``
      are both ``+``, ``%20`` and a space are both a space; every ``%`` begins two hex digits and
      the bytes decode as UTF-8. A literal ``?`` in the key must be ``%3F``;
    - the decoded key is not empty, at most 1024 UTF-8 bytes, and contains no control character
      and no ``%``: stores disagree on decoding the header again (Ceph RGW 16 decodes it twice,
      so ``%252F`` reads ``/`` there, and ``%2F`` on moto, which decodes once as AWS S3 does),
      so a key containing ``%`` cannot be named unambiguously, and double encoding is refused
      rather than guessed;
    - the only query is ``versionId=ID``, ID 1 to 1024 letters, digits, ``-``, ``.``, ``_`` or
      ``~``. Nothing after a ``?`` is part of the key.

    Anything else is refused (INVALID_ARGUMENT on ``copy_source``), never repaired.
    """
    if not copy_source:
        raise InvalidRequest("copy_source", "is required")
    if _CONTROL.search(copy_source):
        raise InvalidRequest("copy_source", "must not contain control characters")
    path, question, query = copy_source.partition("?")
    version_id = None
    if question:
        name, equals, value = query.partition("=")
        if name != "versionId" or not equals or not _VERSION_ID.fullmatch(value):
            raise InvalidRequest(
                "copy_source",
                "the only query accepted is ?versionId=ID, ID 1 to 1024 letters, digits, "
                "'-', '.', '_' or '~' (a '?' in the key is sent as %3F)",
            )
        version_id = value
    path = path.removeprefix("/")
    if path[: len(_ENCODED_ARN)].lower() == _ENCODED_ARN:
        # botocore (aws s3api) encodes the ARN's colons too: S3 reads them decoded.
        head, object_, tail = path.partition(_ARN_OBJECT)
        path = re.sub("%3a", ":", head, flags=re.IGNORECASE) + object_ + tail
    if path.startswith("arn:"):
        arn = _ACCESS_POINT_ARN.match(path)
        if arn is None or not path.startswith(_ARN_OBJECT, arn.end()):
            raise InvalidRequest("copy_source", _SYNTAX)
        bucket, raw_key = arn.group(), path[arn.end() + len(_ARN_OBJECT) :]
        # botocore's CopySource dict names an object of this ARN as ARN/object/KEY.
        if not VALID_S3_ARN.search(bucket):  # pragma: no cover - stricter than botocore
            raise InvalidRequest("copy_source", _SYNTAX)
    else:
        bucket, slash, raw_key = path.partition("/")
        if not slash:
            raise InvalidRequest("copy_source", _SYNTAX)
        try:
            buckets.check_name(bucket, "copy_source")
        except InvalidRequest as exc:
            raise InvalidRequest(
                "copy_source", f"the source bucket {exc.violations[0][1]}"
            ) from None
    return CopySource(bucket, _decode_key(raw_key), version_id)


def _decode_key(raw: str) -> str:
    if _BAD_ESCAPE.search(raw):
        raise InvalidRequest("copy_source", "the key has a '%' that does not begin an escape %XX")
    try:
        key = urllib.parse.unquote(raw, errors="strict")
    except UnicodeDecodeError:
        raise InvalidRequest("copy_source", "the key's escapes are not UTF-8") from None
    if not key:
        raise InvalidRequest("copy_source", f"the key is empty: {_SYNTAX}")
    if len(key.encode("utf-8")) > buckets.MAX_KEY_BYTES:
        raise InvalidRequest(
            "copy_source", f"the key must be at most {buckets.MAX_KEY_BYTES} UTF-8 bytes"
        )
    if _CONTROL.search(key):
        raise InvalidRequest("copy_source", "the key must not contain control characters")
    if "%" in key:
        raise InvalidRequest(
            "copy_source",
            "the decoded key contains '%': S3-compatible stores decode a copy source "
            "differently, so the object read could not be known",
        )
    return key
