"""Reading the files the gateway follows on disk: TLS files, the token file, the policy file.

Kubernetes updates a mounted Secret or ConfigMap by writing a new directory and swapping the
``..data`` symlink to it, so a file is identified by the stat of what its path leads to now
(:func:`signature`), and read through one descriptor whose own stat is the version actually read
(:func:`read_capped`). Every read is capped: these files are small, and a huge one is a mistake or
an attack. :class:`Watched` keeps a value read from such files current.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

from gateway.config import ConfigError

#: What identifies one version of a file: inode, device, modification time (ns), size.
StatSignature = tuple[int, int, int, int]

#: Attempts to read a file whose directory a symlink swap may remove between resolving and opening.
_ATTEMPTS = 3


def _of(st: os.stat_result) -> StatSignature:
    return (st.st_ino, st.st_dev, st.st_mtime_ns, st.st_size)


def signature(path: str) -> StatSignature | None:
    """The signature of the file ``path`` leads to now (symlinks followed); None if none."""
    try:
        return _of(os.stat(path))
    except OSError:
        return None


def read_capped(
    path: str, limit: int, *, what: str, error: type[ConfigError] = ConfigError
) -> tuple[StatSignature, bytes]:
    """The signature and bytes of the file ``path`` leads to, read through one descriptor.

    Raises ``error`` ("<what> <path>: cannot read: …" or "…: larger than <limit> bytes").
    """
    for attempt in range(_ATTEMPTS):
        resolved = os.path.realpath(path)
        try:
            with open(resolved, "rb") as handle:
                found = _of(os.fstat(handle.fileno()))
                if found[3] > limit:
                    raise error(f"{what} {path}: larger than {limit} bytes")
                data = handle.read(limit + 1)
        except FileNotFoundError as exc:
            if attempt + 1 < _ATTEMPTS and os.path.realpath(path) != resolved:
                continue  # the directory it led to was swapped away: read the new one
            raise error(f"{what} {path}: cannot read: {exc.strerror or exc}") from None
        except OSError as exc:
            raise error(f"{what} {path}: cannot read: {exc.strerror or exc}") from None
        if len(data) > limit:
            raise error(f"{what} {path}: larger than {limit} bytes")
        return found, data
    raise AssertionError("unreachable")  # pragma: no cover


T = TypeVar("T")


class Watched(Generic[T]):
    """A value read from files, read again when they change on disk: the token file, the policy
    file, the TLS files.

    ``load`` reads every file and returns the value, raising ``error`` when a file is missing,
    unreadable or invalid. The first load happens now; its error propagates. Later,
    :meth:`check` compares the files' stat signatures with those of the version in force and,
    when they changed, loads again:

    - a good version takes effect: :attr:`reloads` counts it, ``log`` says so (INFO, with
      ``describe(value)``);
    - a bad version leaves the one in force (``kept`` names it in the log line):
      :attr:`reload_failures` counts it, ``log`` says so once (at ``failure_level``), and not
      again until the files change anew;
    - files that changed while being read are looked at again at the next check.

    :attr:`value` checks first when ``check_interval`` seconds of ``clock`` have passed since the
    last check (0: at every access). A check stats the files, and reads them only when they
    changed; while one thread checks, others use the value in force.
    """

    def __init__(
        self,
        paths: Sequence[str],
        load: Callable[[], T],
        *,
        what: str,
        kept: str,
        log: logging.Logger,
        error: type[ConfigError] = ConfigError,
        describe: Callable[[T], str] = lambda value: "",
        failure_level: int = logging.ERROR,
        check_interval: float = 0.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if check_interval < 0:
            raise ValueError("check_interval must be >= 0")
        self.paths = tuple(paths)
        self.reloads = 0
        #: Changed versions that failed to load (the previous one stayed in force).
        self.reload_failures = 0
        self._load = load
        self._what = what
        self._kept = kept
        self._log = log
        self._describe = describe
        self._failure_level = failure_level
        self._check_interval = check_interval
        self._clock = clock
        self._lock = threading.Lock()
        self._rejected: tuple[StatSignature | None, ...] | None = None
        loaded = self._attempt() or self._attempt()
        if loaded is None:
            raise error(f"{what} {', '.join(self.paths)}: kept changing while being read")
        self._signature, self._value = loaded
        self._next_check = clock() + check_interval

    @property
    def value(self) -> T:
        """The value in force, after a check when the interval has passed."""
        if self._clock() >= self._next_check:
            self.check(wait=False)
        return self._value

    def check(self, *, wait: bool = True) -> bool:
        """Load the files again if they changed; True when a new version took effect. Without
        ``wait``, return at once when another thread is checking."""
        if not self._lock.acquire(blocking=wait):
            return False
        try:
            self._next_check = self._clock() + self._check_interval
            current = self._signatures()
            if current == self._signature:
                self._rejected = None  # back to the version in force: a new failure logs again
                return False
            if current == self._rejected:
                return False
            try:
                loaded = self._attempt()
            except ConfigError as exc:
                self._rejected = current
                self.reload_failures += 1
                self._log.log(
                    self._failure_level,
                    "%s not reloaded, keeping the previous %s: %s",
                    self._what,
                    self._kept,
                    exc,
                )
                return False
            if loaded is None:
                return False
            self._signature, self._value = loaded
            self._rejected = None
            self.reloads += 1
            details = self._describe(self._value)
        finally:
            self._lock.release()
        self._log.info("%s reloaded from %s%s", self._what, ", ".join(self.paths), details)
        return True

    def _signatures(self) -> tuple[StatSignature | None, ...]:
        return tuple(signature(path) for path in self.paths)

    def _attempt(self) -> tuple[tuple[StatSignature | None, ...], T] | None:
        """The files' signatures and value; None when a file changed while being read."""
        before = self._signatures()
        value = self._load()
        return (before, value) if self._signatures() == before else None


class WatchedFile(Watched[T]):
    """One file at ``path``, read whole (at most ``limit`` bytes, :func:`read_capped`) and
    parsed by ``parse(data, path)``, kept current as :class:`Watched` keeps any value: the token
    file, the write token key file. ``what`` names the file in log lines and errors."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        parse: Callable[[bytes, str], T],
        *,
        limit: int,
        what: str,
        kept: str,
        log: logging.Logger,
        error: type[ConfigError] = ConfigError,
        describe: Callable[[T], str] = lambda value: "",
        check_interval: float = 0.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.path = os.fspath(path)

        def load() -> T:
            _, data = read_capped(self.path, limit, what=what, error=error)
            return parse(data, self.path)

        super().__init__(
            (self.path,),
            load,
            what=what,
            kept=kept,
            log=log,
            error=error,
            describe=describe,
            check_interval=check_interval,
            clock=clock,
        )
