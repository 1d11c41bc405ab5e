"""Who may call the gateway, what they may do, and how much of it at once.

A :class:`Guard` is consulted by every UploadService call before anything reaches S3:

1. **Authentication** (:mod:`gateway.auth`): a bearer token from ``authorization`` metadata, or
   the verified client certificate of a mutual-TLS connection. With neither configured every
   caller is ``anonymous``. A caller who proves no known identity gets UNAUTHENTICATED.
2. **Authorization** (:mod:`gateway.policy`): with a policy file, a call the policy does not allow
   gets PERMISSION_DENIED. Without one every authenticated caller may do everything, which
   :class:`gateway.config.Settings` permits only on loopback or with ``GATEWAY_ALLOW_ALL``.
3. **Admission** of UploadPart streams: at most ``max_streams`` at once,
   ``max_streams_per_principal`` per caller, and a byte budget (``max_buffer_bytes``) from which
   each stream reserves its
   worst case (its flow-control window plus one message) and a buffered part what it buffers.
   Over a limit: RESOURCE_EXHAUSTED with RetryInfo.

The service counts every refusal in :class:`gateway.metrics.Metrics`; no secret ever reaches a log
line, a metric label or an error message (principal names are identities, not secrets).
"""

from __future__ import annotations

import collections
import logging
import urllib.parse
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from gateway.auth import Authenticator, Principal, TokenFile
from gateway.config import Settings
from gateway.errors import PermissionDenied, ResourceExhausted, Unauthenticated
from gateway.metrics import Metrics
from gateway.policy import PolicyFile

log = logging.getLogger(__name__)

#: How long a caller refused for capacity should wait before retrying, seconds.
CAPACITY_RETRY_DELAY = 1.0


class Guard:
    """Authentication, authorization and admission for one gateway process."""

    def __init__(self, settings: Settings, metrics: Metrics) -> None:
        tokens = TokenFile(settings.auth_tokens_file) if settings.auth_tokens_file else None
        self.authenticator = Authenticator(tokens, mtls=settings.tls_client_ca_file is not None)
        #: With TLS on, a call that arrives without it (on the health port) is refused.
        self.require_tls = settings.tls_cert_file is not None
        self.policy_file = PolicyFile(settings.policy_file) if settings.policy_file else None
        if tokens is not None:
            metrics.watch("tokens", tokens)
        if self.policy_file is not None:
            metrics.watch("policy", self.policy_file)
        self.max_streams = settings.max_streams
        self.max_streams_per_principal = settings.principal_stream_limit
        self.budget = Budget(settings.max_buffer_bytes, metrics)
        #: What one UploadPart stream may hold: its flow-control window and one message.
        self.stream_reservation = settings.stream_window + settings.max_message_size
        self._streams = 0
        self._streams_by_caller: collections.Counter[str] = collections.Counter()

    # ---------------------------------------------------------------- authentication

    def authenticate(self, context: Any) -> Principal:
        """The caller of ``context``'s call, or :class:`Unauthenticated`."""
        auth_context = context.auth_context()
        if self.require_tls and auth_context.get("transport_security_type") != [b"ssl"]:
            raise Unauthenticated(
                "TLS_REQUIRED",
                "this port serves health probes only: call the gateway's TLS port",
            )
        principal = self.authenticator.authenticate(context.invocation_metadata(), auth_context)
        if principal is None:
            raise Unauthenticated(
                "UNAUTHENTICATED",
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

    def authorize_copy_source(self, principal: Principal, copy_source: str) -> None:
        """UploadPartCopy reads its source: the policy must allow UploadPartCopy there too."""
        if self.policy_file is None:
            return
        bucket, key = parse_copy_source(copy_source)
        decision = self.policy_file.policy.check_copy_source(principal.name, bucket, key)
        if not decision.allowed:
            self._deny("UploadPartCopy", f"copy source: {decision.reason}")

    def _deny(self, operation: str, reason: str) -> None:
        raise PermissionDenied(f"{reason}; nothing was sent to S3", operation)

    # ---------------------------------------------------------------- admission

    def admission_key(self, principal: Principal, context: Any) -> str:
        """Whose limits a call counts against: an authenticated principal's, else (every caller
        is ``anonymous`` then) the caller's own connection's, so that one connection's streams
        cannot take every slot."""
        if principal.method != "anonymous":
            return principal.name
        return f"{principal.name} {context.peer()}"

    @contextmanager
    def stream(self, caller: str) -> Iterator[None]:
        """Admit one UploadPart stream of ``caller`` (an :meth:`admission_key`) for its lifetime,
        or raise :class:`ResourceExhausted`."""
        if self._streams >= self.max_streams:
            self._refuse(
                "STREAM_LIMIT",
                f"the gateway already relays {self.max_streams} streams (GATEWAY_MAX_STREAMS)",
                self.max_streams,
            )
        if self._streams_by_caller[caller] >= self.max_streams_per_principal:
            self._refuse(
                "PRINCIPAL_STREAM_LIMIT",
                f"this caller already has {self.max_streams_per_principal} streams in flight "
                "(GATEWAY_MAX_STREAMS_PER_PRINCIPAL)",
                self.max_streams_per_principal,
            )
        with self.budget.reserve(self.stream_reservation):
            self._streams += 1
            self._streams_by_caller[caller] += 1
            try:
                yield
            finally:
                self._streams -= 1
                self._streams_by_caller[caller] -= 1
                if not self._streams_by_caller[caller]:
                    del self._streams_by_caller[caller]

    def _refuse(self, reason: str, message: str, limit: int) -> None:
        raise ResourceExhausted(
            reason, f"{message}; retry later", limit=limit, retry_delay=CAPACITY_RETRY_DELAY
        )


class Budget:
    """Bytes the gateway may hold for streams, shared by all of them (one event loop: no
    locking)."""

    def __init__(self, limit: int, metrics: Metrics) -> None:
        self.limit = limit
        self.held = 0
        self._metrics = metrics

    def take(self, size: int) -> None:
        """Hold ``size`` more bytes, or raise :class:`ResourceExhausted`."""
        if self.held + size > self.limit:
            raise ResourceExhausted(
                "BUFFER_LIMIT",
                f"the gateway holds {self.held} of its {self.limit} buffer bytes "
                "(GATEWAY_MAX_BUFFER_BYTES); retry later",
                limit=self.limit,
                retry_delay=CAPACITY_RETRY_DELAY,
            )
        self.held += size
        self._metrics.buffer_bytes.set(self.held)

    def give_back(self, size: int) -> None:
        self.held -= size
        self._metrics.buffer_bytes.set(self.held)

    @contextmanager
    def reserve(self, size: int) -> Iterator[None]:
        self.take(size)
        try:
            yield
        finally:
            self.give_back(size)


def parse_copy_source(copy_source: str) -> tuple[str, str]:
    """(bucket, key) of an UploadPartCopy source: ``bucket/key`` or ``/bucket/key``, URL-encoded,
    perhaps with ``?versionId=``; an access point or Outposts ARN keeps the ARN as the bucket."""
    source = copy_source.split("?", 1)[0]
    source = urllib.parse.unquote(source).lstrip("/")
    if source.startswith("arn:") and "/object/" in source:
        bucket, _, key = source.partition("/object/")
        return bucket, key
    bucket, _, key = source.partition("/")
    return bucket, key
