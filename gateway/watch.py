"""Reading the files the gateway follows on disk: TLS files, the token file, the policy file.

Kubernetes updates a mounted Secret or ConfigMap by writing a new directory and swapping the
``..data`` symlink to it, so a file is identified by the stat of what its path leads to now
(:func:`signature`), and read through one descriptor whose own stat is the version actually read
(:func:`read_capped`). Every read is capped: these files are small, and a huge one is a mistake or
an attack.
"""

from __future__ import annotations

import os

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
