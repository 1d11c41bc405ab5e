"""Bounded waits of a streamed part: on the caller (:class:`IdleTimer`) and on S3
(:class:`SendWatch`), both on :class:`Deadline`, a deadline that is cheap to move.

Each cancels the task that waits once its limit passes, and turns the cancellation into the error
that says which wait ran out; a cancellation of anyone else (the caller's, a shutdown's) passes
through unchanged.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any, TypeVar

from gateway.errors import GatewayError, Reason, ResourceExhausted, s3_stalled

#: A message of a caller's stream.
M = TypeVar("M")


class Deadline:
    """A point in time that moves often and passes rarely.

    Moving it costs no timer event: one timer, armed lazily, looks at the deadline when it
    fires, re-arms itself for a deadline that moved later, and calls ``expire`` once it has
    passed. A stream that moves its deadlines on every message of thousands a second thus
    schedules about one timer event per timeout, not one per message.
    """

    def __init__(self, expire: Callable[[], None]) -> None:
        self._loop = asyncio.get_running_loop()
        self._expire = expire
        self._when: float | None = None
        self._handle: asyncio.TimerHandle | None = None

    def set(self, when: float | None) -> None:
        """Expire at loop time ``when``; None: not at all (until set again)."""
        self._when = when
        if when is None or (self._handle is not None and self._handle.when() <= when):
            return
        if self._handle is not None:
            self._handle.cancel()
        self._handle = self._loop.call_at(when, self._check)

    def _check(self) -> None:
        self._handle = None
        when = self._when
        if when is None:
            return
        if self._loop.time() < when:
            self._handle = self._loop.call_at(when, self._check)
            return
        self._when = None
        self._expire()

    def close(self) -> None:
        self._when = None
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None


class IdleTimer:
    """Ends a wait for the caller's next message that lasts ``timeout`` seconds: a stalled or
    trickling caller must not hold its slot, its buffers and an S3 connection forever."""

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self._loop = asyncio.get_running_loop()
        self._deadline = Deadline(self._expire)
        self._waiter: asyncio.Task[Any] | None = None
        self._expired = False
        self._held = False

    def hold(self, held: bool) -> None:
        """While held, the caller is not idle: the stream waits on S3 for what the caller sent
        (each such wait has its own bound). Released, a new timeout starts."""
        if held == self._held:
            return
        self._held = held
        if self._waiter is not None:
            self._deadline.set(None if held else self._loop.time() + self.timeout)

    async def next(self, messages: AsyncIterator[M]) -> M | None:
        """The next message (None at the end of the stream), or :class:`ResourceExhausted`."""
        task = asyncio.current_task()
        assert task is not None
        cancelling = task.cancelling()
        self._waiter = task
        self._deadline.set(None if self._held else self._loop.time() + self.timeout)
        try:
            return await anext(messages, None)
        except asyncio.CancelledError:
            if self._expired and task.uncancel() <= cancelling:
                raise ResourceExhausted(
                    Reason.IDLE_TIMEOUT,
                    f"no message arrived for {self.timeout:g} s (GATEWAY_IDLE_TIMEOUT); the "
                    "stream was ended and nothing was committed",
                    limit=self.timeout,
                    retry_delay=0,
                ) from None
            raise
        finally:
            self._waiter = None
            self._deadline.set(None)

    def _expire(self) -> None:
        if self._waiter is not None:
            self._expired = True
            self._waiter.cancel()

    def close(self) -> None:
        self._deadline.close()


class SendWatch:
    """Bounds what a streamed part waits for from S3 while its body is sent.

    aiohttp pulls the body chunk by chunk and writes each to the socket, waiting while S3 does
    not take it (the kernel queues little: see :mod:`.s3`). So between handing a chunk to
    aiohttp and aiohttp asking for the next, the relay waits for S3; while aiohttp waits for the
    next chunk, it waits for the caller (whose waits :class:`IdleTimer` bounds). The first pull
    comes once S3 has answered ``100 Continue``. A wait for S3 longer than ``timeout`` cancels
    the task that awaits S3's answer; the call then fails with S3_STALLED (UNAVAILABLE with
    RetryInfo), and the aborted request commits nothing. Once the body has been sent, aiohttp's
    read timeout bounds the wait for S3's answer.

    The body also reports here why it aborted the request itself (:meth:`fail`: a checksum
    mismatch, a stream too short…): aiobotocore can only report such an abort as a broken
    connection, and the body's reason is the call's answer.
    """

    def __init__(self, timeout: float, operation: str = "UploadPart") -> None:
        self.timeout = timeout
        self._operation = operation
        self._loop = asyncio.get_running_loop()
        self._deadline = Deadline(self._expire)
        self._task: asyncio.Task[Any] | None = None
        self._cancelling = 0
        #: Whether aiohttp has asked for the body (S3 answered 100 Continue, if it was asked).
        self.invited = False
        self._expired = False
        #: Why the body aborted the request, if it did.
        self.failure: GatewayError | None = None

    def start(self) -> None:
        """The calling task starts the request; the wait for 100 Continue begins."""
        self._task = asyncio.current_task()
        assert self._task is not None
        self._cancelling = self._task.cancelling()
        self._deadline.set(self._loop.time() + self.timeout)

    def wanted(self) -> None:
        """aiohttp asks for more of the body: S3 took what it had."""
        self.invited = True
        self._deadline.set(None)

    def handed(self) -> None:
        """A chunk goes to aiohttp: S3 has ``timeout`` seconds to take it."""
        if self._task is not None:
            self._deadline.set(self._loop.time() + self.timeout)

    def sent(self) -> None:
        """The whole body has been handed over; aiohttp's read timeout takes it from here."""
        self._deadline.set(None)

    def gave(self, size: int) -> None:
        """The body's read returned ``size`` bytes: :meth:`handed`, or :meth:`sent` at the end."""
        if size:
            self.handed()
        else:
            self.sent()

    def fail(self, error: GatewayError) -> None:
        """The body aborts the request for ``error``."""
        self.failure = error

    def _expire(self) -> None:
        if self._task is not None:
            self._expired = True
            self._task.cancel()

    def expired(self) -> GatewayError | None:
        """The error for the task cancelled by this watch (uncancelling it), else None."""
        if not self._expired or self._task is None or self._task.uncancel() > self._cancelling:
            return None
        what = (
            f"S3 took no byte of the body for {self.timeout:g} s"
            if self.invited
            else f"S3 did not invite the body (100 Continue) within {self.timeout:g} s"
        )
        return s3_stalled(self._operation, what)

    def close(self) -> None:
        self._deadline.close()


async def next_message(messages: AsyncIterator[M], timer: IdleTimer | None) -> M | None:
    """The caller's next message (None at the end of the stream), within ``timer``'s limit."""
    if timer is None:
        return await anext(messages, None)
    return await timer.next(messages)
