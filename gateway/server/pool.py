"""Fair, bounded access to a fixed number of S3 connections.

aiohttp's connection pool makes a request wait, without a time limit and in arrival order, when
every connection is busy: streams stalled on a slow store would freeze every other call, and one
caller with many streams would take every connection that frees up. :class:`ConnectionSlots`
sits in front of each pool and hands out its connections instead:

- a call waits at most ``timeout`` seconds for a connection, then fails with
  :class:`gateway.errors.ResourceExhausted` (``S3_POOL_EXHAUSTED``, with RetryInfo);
- when a connection frees up it goes to the waiting caller that holds the fewest connections
  (the earliest waiter among equals), so a caller with one stream is served before a caller with
  fifty, however many of them wait.

Callers are named by the admission key of their principal
(:meth:`gateway.security.guard.Guard.admission_key`).
One event loop: no locking.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
from collections.abc import AsyncIterator

from gateway.errors import Reason, ResourceExhausted
from gateway.server.metrics import Metrics

#: How long a caller refused a connection should wait before retrying, seconds.
POOL_RETRY_DELAY = 1.0


class ConnectionSlots:
    """``size`` S3 connections of one pool, shared fairly among callers."""

    def __init__(self, name: str, size: int, timeout: float, metrics: Metrics) -> None:
        self.name = name
        self.size = size
        self.timeout = timeout
        self.in_use = 0
        self._held: collections.Counter[str] = collections.Counter()
        self._waiting: dict[str, collections.deque[tuple[int, asyncio.Future[None]]]] = {}
        self._order = itertools.count()
        self._gauge = metrics.s3_connections_in_use.labels(name)

    @contextlib.asynccontextmanager
    async def slot(self, caller: str) -> AsyncIterator[None]:
        """Hold one connection for ``caller`` for the duration of the block."""
        if self.in_use < self.size and not self._waiting:
            self._grant(caller)
        else:
            await self._wait(caller)
        try:
            yield
        finally:
            self._release(caller)

    async def _wait(self, caller: str) -> None:
        granted: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        entry = (next(self._order), granted)
        self._waiting.setdefault(caller, collections.deque()).append(entry)
        try:
            async with asyncio.timeout(self.timeout):
                await asyncio.shield(granted)
        except BaseException as exc:
            if granted.done():
                # Granted just as the wait ended: hand the connection on.
                self._release(caller)
            else:
                self._forget(caller, entry)
                granted.cancel()
            if isinstance(exc, TimeoutError):
                raise ResourceExhausted(
                    Reason.S3_POOL_EXHAUSTED,
                    f"all {self.size} S3 connections of the {self.name} pool stayed busy for "
                    f"{self.timeout:g} s (GATEWAY_S3_POOL_TIMEOUT); nothing was sent to S3, "
                    "retry later",
                    limit=self.size,
                    retry_delay=POOL_RETRY_DELAY,
                ) from None
            raise

    def _forget(self, caller: str, entry: tuple[int, asyncio.Future[None]]) -> None:
        queue = self._waiting[caller]
        queue.remove(entry)
        if not queue:
            del self._waiting[caller]

    def _grant(self, caller: str) -> None:
        self.in_use += 1
        self._held[caller] += 1
        self._gauge.set(self.in_use)

    def _release(self, caller: str) -> None:
        self.in_use -= 1
        self._held[caller] -= 1
        if not self._held[caller]:
            del self._held[caller]
        self._gauge.set(self.in_use)
        if self._waiting and self.in_use < self.size:
            self._grant_next()

    def _grant_next(self) -> None:
        """The connection goes to the waiter whose caller holds the fewest, then the earliest."""
        caller = min(self._waiting, key=lambda c: (self._held[c], self._waiting[c][0][0]))
        queue = self._waiting[caller]
        _, granted = queue.popleft()
        if not queue:
            del self._waiting[caller]
        self._grant(caller)
        granted.set_result(None)
