"""How much of the gateway a caller may use at once: the admission of UploadPart streams.

At most ``GATEWAY_MAX_STREAMS`` streams at once, ``GATEWAY_MAX_STREAMS_PER_PRINCIPAL`` per caller
(per connection for unauthenticated callers, who are all ``anonymous``), and a byte budget
(``GATEWAY_MAX_BUFFER_BYTES``) from which each stream reserves its worst case (its flow-control
window plus one message) and a buffered part what it buffers. Over a limit: RESOURCE_EXHAUSTED
with RetryInfo. The S3 connections a call may hold are :mod:`gateway.server.pool`'s.
"""

from __future__ import annotations

import collections
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from gateway.config import Settings
from gateway.errors import Reason, ResourceExhausted
from gateway.security.auth import Principal
from gateway.server.metrics import Metrics

#: How long a caller refused for capacity should wait before retrying, seconds.
CAPACITY_RETRY_DELAY = 1.0


class Admission:
    """The stream limits and the buffer budget of one gateway process (one event loop: no
    locking)."""

    def __init__(self, settings: Settings, metrics: Metrics) -> None:
        self.max_streams = settings.max_streams
        self.max_streams_per_principal = settings.principal_stream_limit
        self.budget = Budget(settings.max_buffer_bytes, metrics)
        #: What one UploadPart stream may hold: its flow-control window and one message.
        self.stream_reservation = settings.stream_window + settings.max_message_size
        self._streams = 0
        self._streams_by_caller: collections.Counter[str] = collections.Counter()

    def key(self, principal: Principal, context: Any) -> str:
        """Whose limits a call counts against: an authenticated principal's, else (every caller
        is ``anonymous`` then) the caller's own connection's, so that one connection's streams
        cannot take every slot."""
        if principal.method != "anonymous":
            return principal.name
        return f"{principal.name} {context.peer()}"

    @contextmanager
    def stream(self, caller: str) -> Iterator[None]:
        """Admit one UploadPart stream of ``caller`` (a :meth:`key`) for its lifetime,
        or raise :class:`ResourceExhausted`."""
        if self._streams >= self.max_streams:
            self._refuse(
                Reason.STREAM_LIMIT,
                f"the gateway already relays {self.max_streams} streams (GATEWAY_MAX_STREAMS)",
                self.max_streams,
            )
        if self._streams_by_caller[caller] >= self.max_streams_per_principal:
            self._refuse(
                Reason.PRINCIPAL_STREAM_LIMIT,
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

    def _refuse(self, reason: Reason, message: str, limit: int) -> None:
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
                Reason.BUFFER_LIMIT,
                f"the gateway holds {self.held} of its {self.limit} buffer bytes "
                "(GATEWAY_MAX_BUFFER_BYTES); retry later",
                limit=self.limit,
                retry_delay=CAPACITY_RETRY_DELAY,
            )
        self.held += size
        self._metrics.buffer_bytes.set(self.held)

    def try_take(self, size: int) -> bool:
        """Hold ``size`` more bytes if the budget has them; whether it did."""
        if self.held + size > self.limit:
            return False
        self.held += size
        self._metrics.buffer_bytes.set(self.held)
        return True

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
