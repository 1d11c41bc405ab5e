"""``serve --workers N``: N gateway processes sharing one gRPC port, so one pod uses all its cores.

The supervisor (the ``serve`` process) reserves the port: it binds a socket with SO_REUSEPORT
(picking a free port when the listen port is 0) and keeps it bound, never listening, for its
lifetime. It then starts N workers (multiprocessing, "spawn"); each runs the ordinary gateway on
that host:port with ``grpc.so_reuseport`` on, so the kernel spreads new connections across them
(by a hash of the connection's addresses and ports: one connection stays with one worker).

Each worker serves its own /metrics on a loopback port and reports its ports through a pipe once
started. The supervisor serves GATEWAY_METRICS_ADDRESS: on every scrape it reads every worker's
/metrics and exposes the union, each sample with a ``worker="0".."N-1"`` label (sum over it in
PromQL), plus ``s3gateway_worker_up{worker}`` and ``s3gateway_worker_restarts_total{worker}``. The
``process_*`` series (memory, CPU, file descriptors) and ``python_info`` are each worker's own, so
they come out per worker too; the supervisor exports none of its own. No worker exports ``_created``
series, so every family's samples come out series by series, as OpenMetrics requires.

Restarts: a worker that dies after it started serving (killed, crashed, or exited on its own) is
started again under the same index on the same port, while the others keep serving; the
reservation keeps the port bound in between. The delay before a restart starts at
RESTART_DELAY_FIRST and doubles with every restart of that worker up to RESTART_DELAY_MAX, so a
worker that crashes at once is not restarted in a tight loop; it is back to the first delay when
the worker had served BACKOFF_RESET_AFTER seconds before dying. Every restart is logged (worker,
old pid, exit code or signal, delay) and counted. A worker that cannot start (a configuration
error, the port taken), or dies before it serves, still makes the supervisor stop the others
(SIGTERM, then SIGKILL after GATEWAY_SHUTDOWN_GRACE + GATEWAY_DRAIN_DELAY + a margin) and exit
non-zero (2 for a configuration error): restarting would fail the same way. Nothing is
restarted once the supervisor is stopping.

Signals: the first SIGTERM or SIGINT to the supervisor is forwarded to every worker, which drains;
any further one makes the supervisor send CANCEL_SIGNAL (SIGUSR1), on which workers cancel their
in-flight calls. A worker never escalates on its own: however many SIGTERMs it gets, it drains
once. That matters because workers get SIGTERM when the supervisor dies (PR_SET_PDEATHSIG), and the
kernel sends that signal each time the worker's parent *thread* exits: the supervisor has more than
one thread (its /metrics server), so a kill -9 of the supervisor can deliver two SIGTERMs a few
milliseconds apart, which must not cancel uploads that a drain would let finish. Signals for a
worker still starting are held until it serves. The supervisor exits 0 once every worker has
exited cleanly. Workers live in their own process group (a terminal's ^C reaches only the
supervisor, which forwards it once).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import multiprocessing
import os
import signal
import socket
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from multiprocessing.process import BaseProcess
from typing import Any

from gateway import logs
from gateway.config import ConfigError, Settings
from gateway.exits import ExitCode
from gateway.server.loops import loop_factory
from gateway.server.worker_metrics import WorkerMetrics, serve_metrics

log = logging.getLogger(__name__)

#: The signals the supervisor forwards and the workers drain on.
SIGNALS = (signal.SIGTERM, signal.SIGINT)
#: What the supervisor sends workers on its second signal: cancel in-flight calls now.
CANCEL_SIGNAL = signal.SIGUSR1
#: Seconds before the first restart of a worker that died; doubled for each further restart.
RESTART_DELAY_FIRST = 0.5
#: The longest delay before restarting a worker.
RESTART_DELAY_MAX = 30.0
#: Seconds a worker must have served before dying for its restart delay to start over.
BACKOFF_RESET_AFTER = 60.0
#: Seconds beyond a worker's drain delay and shutdown grace before it is killed.
STOP_MARGIN = 5.0
_PR_SET_PDEATHSIG = 1


def supervise(settings: Settings) -> int:
    """Run ``settings.workers`` gateways on one port until they stop; the exit code."""
    try:
        loop_factory(settings.event_loop)  # refuse a missing uvloop before starting anything
    except ImportError as exc:
        _complain(f"configuration error: {exc}")
        return ExitCode.CONFIG
    stack = contextlib.ExitStack()
    try:
        collector = WorkerMetrics(settings.workers)
        try:
            reservation = stack.enter_context(reserve_port(settings.listen_address))
            metrics_port = 0
            if settings.metrics_address:
                server = serve_metrics(collector, settings.metrics_address)
                stack.callback(server.server_close)
                stack.callback(server.shutdown)
                metrics_port = server.server_port
        except (OSError, ValueError) as exc:
            _complain(f"cannot serve: {exc}")
            return 1
        host = settings.listen_address.rpartition(":")[0]
        address = f"{host}:{reservation.getsockname()[1]}"
        worker_settings = settings.replace(
            listen_address=address,
            workers=1,
            metrics_address="127.0.0.1:0" if settings.metrics_address else "",
            # One in-memory S3 per worker would split uploads between stores.
            embedded_s3="off" if settings.embedded_s3 == "auto" else settings.embedded_s3,
        )
        return _Supervisor(settings, worker_settings, collector, metrics_port).run()
    finally:
        stack.close()


@contextlib.contextmanager
def reserve_port(address: str) -> Iterator[socket.socket]:
    """A socket bound (not listening) to ``address`` with SO_REUSEPORT: it keeps the port for
    the workers, who bind it too; it never receives connections."""
    host, _, port = address.rpartition(":")
    family, kind, proto, _, sockaddr = socket.getaddrinfo(
        host.strip("[]") or None, int(port), type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    reservation = socket.socket(family, kind, proto)
    try:
        reservation.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        reservation.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        reservation.bind(sockaddr)
        yield reservation
    finally:
        reservation.close()


class RestartBackoff:
    """The delays between restarts of one worker: ``first``, doubled after every restart up to
    ``cap``; back to ``first`` when the worker had served ``reset_after`` seconds before dying
    (a crash now and then is not a crash loop)."""

    def __init__(
        self,
        first: float = RESTART_DELAY_FIRST,
        cap: float = RESTART_DELAY_MAX,
        reset_after: float = BACKOFF_RESET_AFTER,
    ) -> None:
        self.first = first
        self.cap = cap
        self.reset_after = reset_after
        self._next = first

    def delay(self, served: float) -> float:
        """Seconds to wait before restarting a worker that died after serving ``served`` s."""
        if served >= self.reset_after:
            self._next = self.first
        delay = self._next
        self._next = min(delay * 2, self.cap)
        return delay


@dataclass
class _Worker:
    index: int
    process: BaseProcess
    #: The end of the pipe the worker reports on; None once read.
    report: Connection | None
    #: Whether it replaces a worker of the same index that died.
    replacement: bool = False
    #: Set once it reported serving: it handles signals from then on.
    ready: bool = False
    #: When it reported serving (time.monotonic()).
    ready_at: float = 0.0
    #: Signals for it, held until it is ready (before, SIGTERM would kill it half-started).
    owed: list[int] = field(default_factory=list)
    #: Set when it is expected to exit: the supervisor stopped it, or it failed to start.
    stopped: bool = False
    reaped: bool = False
    #: Set when it died while serving: it was, or was to be, restarted.
    crashed: bool = False

    @property
    def pid(self) -> int:
        assert self.process.pid is not None
        return self.process.pid

    @property
    def alive(self) -> bool:
        return self.process.exitcode is None


class _Supervisor:
    def __init__(
        self, settings: Settings, worker_settings: Settings, metrics: WorkerMetrics, port: int
    ) -> None:
        self.settings = settings
        self.worker_settings = worker_settings
        self.metrics = metrics
        self.metrics_port = port
        #: The current worker of every index.
        self.workers: list[_Worker] = []
        self.backoffs = [RestartBackoff() for _ in range(settings.workers)]
        #: Worker index to when it is due to be restarted (time.monotonic()).
        self.restarts_due: dict[int, float] = {}
        self.signals: list[int] = []
        self.forwarded = 0
        #: Whether "serving with N workers" was logged.
        self.announced = False
        #: The exit code once a worker failed or exited on its own.
        self.failure: int | None = None
        self.deadline: float | None = None
        self.killed = False
        self.stop_timeout = settings.shutdown_grace + settings.drain_delay + STOP_MARGIN

    def run(self) -> int:
        wake, waker = socket.socketpair()
        wake.setblocking(False)
        waker.setblocking(False)
        handlers = {sig: signal.signal(sig, self._on_signal) for sig in SIGNALS}
        previous_wakeup = signal.set_wakeup_fd(waker.fileno())
        try:
            for index in range(self.settings.workers):
                self._start(index)
            log.info(
                "starting %d workers on %s",
                len(self.workers),
                self.worker_settings.listen_address,
                extra={logs.FIELDS: {"worker_pids": [w.pid for w in self.workers]}},
            )
            self._loop(wake)
        finally:
            for worker in self.workers:
                if worker.alive:  # only on a bug in the loop: never leave orphans
                    worker.process.kill()
                    worker.process.join()
            signal.set_wakeup_fd(previous_wakeup)
            for sig, handler in handlers.items():
                signal.signal(sig, handler)
            wake.close()
            waker.close()
        if self.killed:
            return 1
        if self.failure is not None:
            return self.failure
        # A worker that crashed was already logged and counted; its restart was only cancelled.
        return 0 if all(w.process.exitcode == 0 or w.crashed for w in self.workers) else 1

    def _on_signal(self, signum: int, frame: object) -> None:
        self.signals.append(signum)  # forwarded by the loop, woken by the wakeup fd

    def _start(self, index: int) -> None:
        """Start the worker of ``index``, in place of its dead predecessor if it had one."""
        context = multiprocessing.get_context("spawn")
        report, writer = context.Pipe(duplex=False)
        process = context.Process(
            target=_worker_main,
            args=(self.worker_settings, index, writer, os.getpid()),
            name=f"gateway-worker-{index}",
        )
        try:
            process.start()
        finally:
            writer.close()
        replacement = index < len(self.workers)
        worker = _Worker(index, process, report, replacement=replacement)
        if replacement:
            self.workers[index] = worker
        else:
            self.workers.append(worker)

    def _loop(self, wake: socket.socket) -> None:
        while self.restarts_due or not all(w.reaped for w in self.workers):
            waitables: list[Any] = [wake]
            waitables += [w.process.sentinel for w in self.workers if not w.reaped]
            waitables += [w.report for w in self.workers if w.report is not None]
            ready = wait(waitables, self._timeout())
            with contextlib.suppress(BlockingIOError):
                while wake.recv(512):
                    pass
            self._forward_signals()
            for worker in self.workers:
                if worker.report is not None and worker.report in ready:
                    self._read_report(worker)
            for worker in self.workers:
                if not worker.reaped and not worker.alive:
                    self._reap(worker)
            self._restart_due_workers()
            if self.deadline is not None and time.monotonic() >= self.deadline:
                self._kill_stragglers()

    def _timeout(self) -> float | None:
        """Seconds until the next thing the loop must do without being woken: a restart, or
        killing the workers that outlived their stop."""
        times = list(self.restarts_due.values())
        if self.deadline is not None:
            times.append(self.deadline)
        return max(0.0, min(times) - time.monotonic()) if times else None

    def _forward_signals(self) -> None:
        while self.forwarded < len(self.signals):
            signum = self.signals[self.forwarded]
            self.forwarded += 1
            name = signal.Signals(signum).name
            if self.forwarded == 1:
                log.info("%s: stopping %d workers", name, self.settings.workers)
                self._cancel_restarts()
            else:
                log.warning("%s again: workers cancel their in-flight calls", name)
                signum = CANCEL_SIGNAL
            for worker in self.workers:
                self._send(worker, signum)
            if self.deadline is None:
                self.deadline = time.monotonic() + self.stop_timeout

    def _read_report(self, worker: _Worker) -> None:
        assert worker.report is not None
        try:
            message = worker.report.recv()
        except EOFError:
            message = None  # it died before reporting: its exit code tells
        worker.report.close()
        worker.report = None
        if message is None:
            return
        if message[0] == "failed":
            _, code, text = message
            worker.stopped = True
            if self.failure is None and not self.signals:
                _complain(text)
                self.failure = code
                self._stop_all()
            return
        _, grpc_port, metrics_port = message
        worker.ready = True
        worker.ready_at = time.monotonic()
        for signum in worker.owed:
            os.kill(worker.pid, signum)
        worker.owed.clear()
        if metrics_port:
            self.metrics.add(worker.index, metrics_port)
        if self.signals or self.failure is not None:
            return
        if worker.replacement:
            log.info(
                "worker %d serving again",
                worker.index,
                extra={logs.FIELDS: {"worker": worker.index, "pid": worker.pid}},
            )
        if all(w.ready for w in self.workers) and not self.announced:
            self.announced = True
            log.info(
                "serving with %d workers on %s",
                len(self.workers),
                self.worker_settings.listen_address,
                extra={
                    logs.FIELDS: {
                        "grpc_port": grpc_port,
                        "metrics_port": self.metrics_port,
                        "worker_pids": [w.pid for w in self.workers],
                    }
                },
            )

    def _reap(self, worker: _Worker) -> None:
        if worker.report is not None and worker.report.poll():
            self._read_report(worker)  # a start failure reported just before exiting
        worker.process.join()
        worker.reaped = True
        code = worker.process.exitcode
        if self.signals or worker.stopped:
            self.metrics.remove(worker.index)
            level = logging.INFO if code == 0 else logging.WARNING
            fields = {logs.FIELDS: {"worker": worker.index, "pid": worker.pid, "exit_code": code}}
            log.log(level, "worker %d exited with code %s", worker.index, code, extra=fields)
            return
        if worker.ready and self.failure is None:
            self._schedule_restart(worker)
            return
        # It died before serving: a restart would most likely die the same way.
        self.metrics.remove(worker.index)
        fields = {logs.FIELDS: {"worker": worker.index, "pid": worker.pid, "exit_code": code}}
        log.error("worker %d exited unexpectedly with code %s", worker.index, code, extra=fields)
        if self.failure is None:
            self.failure = 1
            self._stop_all()

    def _schedule_restart(self, worker: _Worker) -> None:
        """Restart a worker that died while serving, after its backoff delay."""
        served = time.monotonic() - worker.ready_at
        delay = self.backoffs[worker.index].delay(served)
        worker.crashed = True
        self.restarts_due[worker.index] = time.monotonic() + delay
        self.metrics.down(worker.index)
        code = worker.process.exitcode
        assert code is not None
        killer = signal.Signals(-code).name if code < 0 else None
        log.log(
            logging.WARNING if code == 0 else logging.ERROR,
            "worker %d (pid %d) %s after serving %.1f s: restarting it in %.1f s",
            worker.index,
            worker.pid,
            f"killed by {killer}" if killer else f"exited with code {code}",
            served,
            delay,
            extra={
                logs.FIELDS: {
                    "worker": worker.index,
                    "pid": worker.pid,
                    "exit_code": code,
                    "signal": killer,
                    "served_seconds": round(served, 3),
                    "restart_delay": delay,
                }
            },
        )

    def _restart_due_workers(self) -> None:
        now = time.monotonic()
        for index, due in sorted(self.restarts_due.items()):
            if due <= now:
                del self.restarts_due[index]
                self._start(index)
                self.metrics.count_restart(index)

    def _cancel_restarts(self) -> None:
        for index in sorted(self.restarts_due):
            log.info("worker %d is not restarted: the supervisor is stopping", index)
        self.restarts_due.clear()

    def _stop_all(self) -> None:
        self._cancel_restarts()
        for worker in self.workers:
            if worker.alive and not worker.stopped:
                worker.stopped = True
                self._send(worker, signal.SIGTERM)
        if self.deadline is None:
            self.deadline = time.monotonic() + self.stop_timeout

    def _send(self, worker: _Worker, signum: int) -> None:
        if not worker.alive:
            return
        if worker.ready:
            os.kill(worker.pid, signum)
        else:
            worker.owed.append(signum)

    def _kill_stragglers(self) -> None:
        for worker in self.workers:
            if worker.alive:
                log.error(
                    "worker %d still running %.0f s after being stopped: killing it",
                    worker.index,
                    self.stop_timeout,
                )
                worker.process.kill()
                self.killed = True
        self.deadline = None


def _complain(message: str) -> None:
    print(f"s3-upload-gateway: {message}", file=sys.stderr, flush=True)


# The worker process.


def _worker_main(settings: Settings, index: int, report: Connection, supervisor: int) -> None:
    """A worker's entry point (in a spawned process): serve until signalled."""
    _detach(supervisor)
    logs.configure(settings.log_level, settings.log_format)
    for handler in logging.getLogger().handlers:
        handler.addFilter(_WorkerField(index))
    code = 0
    try:
        factory = loop_factory(settings.event_loop)
        with asyncio.Runner(loop_factory=factory) as runner:
            code = runner.run(_serve(settings, report))
    finally:
        report.close()
    if code:
        raise SystemExit(code)


def _detach(supervisor: int) -> None:
    """Leave the supervisor's process group, so a terminal's ^C reaches only the supervisor
    (which forwards it once), and get SIGTERM when the supervisor dies, however it dies."""
    with contextlib.suppress(OSError):
        os.setpgid(0, 0)
    if sys.platform == "linux":
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    if os.getppid() != supervisor:
        raise SystemExit(1)  # the supervisor died before this worker got going


class _WorkerField(logging.Filter):
    """Adds ``worker`` to every log record's fields."""

    def __init__(self, index: int) -> None:
        super().__init__()
        self._index = index

    def filter(self, record: logging.LogRecord) -> bool:
        fields = getattr(record, logs.FIELDS, None) or {}
        setattr(record, logs.FIELDS, {"worker": self._index, **fields})
        return True


async def _serve(settings: Settings, report: Connection) -> int:
    """:func:`gateway.server.app.run` on a shared port, reporting its ports (or why it could not
    start) to the supervisor; the exit code."""
    from gateway.server.app import Gateway, run

    ready = False

    def started(gateway: Gateway) -> None:
        nonlocal ready
        ready = True
        report.send(("ready", gateway.port, gateway.metrics_port))

    try:
        await run(settings, reuse_port=True, started=started, cancel_signal=CANCEL_SIGNAL)
    except (ImportError, ConfigError) as exc:
        if ready:
            raise
        report.send(("failed", ExitCode.CONFIG, f"configuration error: {exc}"))
        return ExitCode.CONFIG
    except Exception as exc:
        if ready:
            raise
        log.debug("worker cannot start", exc_info=True)
        report.send(("failed", 1, f"cannot serve: {type(exc).__name__}: {exc}"))
        return 1
    return 0
