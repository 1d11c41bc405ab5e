"""Debian packages the client tests need (Go, Java): installed with apt-get when missing, so that
a fresh CI machine builds every example. A failed install fails the test, never skips it."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Sequence

import pytest


def installed(packages: Sequence[str]) -> bool:
    """Whether dpkg has every one of ``packages`` installed."""
    done = subprocess.run(
        ["dpkg-query", "-W", "-f=${db:Status-Abbrev}\n", *packages],
        capture_output=True,
        text=True,
        check=False,
    )
    lines = done.stdout.splitlines()
    return (
        done.returncode == 0
        and len(lines) == len(packages)
        and all(line.startswith("ii") for line in lines)
    )


def _apt_get(*args: str) -> subprocess.CompletedProcess[str]:
    # The lock timeout: another apt-get on the machine (a CI step, another test's install) waits.
    return subprocess.run(
        ["apt-get", "-o", "DPkg::Lock::Timeout=600", *args],
        env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"},
        capture_output=True,
        text=True,
        timeout=1200,
        check=False,
    )


def apt_install(packages: Sequence[str], what: str) -> None:
    """``apt-get install`` ``packages`` (``what`` names them in failures); after a failure, once
    more after ``apt-get update``. Fails the test when they cannot be installed."""
    if shutil.which("apt-get") is None:
        pytest.fail(f"{what} is missing and there is no apt-get to install {' '.join(packages)}")
    done = _apt_get("install", "-y", "-q", *packages)
    if done.returncode != 0:  # stale or absent package lists: update them once, then again
        updated = _apt_get("update", "-q")
        if updated.returncode != 0:
            pytest.fail(
                f"apt-get update failed:\n{updated.stdout[-2000:]}\n{updated.stderr[-4000:]}"
            )
        done = _apt_get("install", "-y", "-q", *packages)
    if done.returncode != 0:
        pytest.fail(
            f"apt-get install {' '.join(packages)} failed (exit {done.returncode}):\n"
            f"{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
        )
    if not installed(packages):
        pytest.fail(f"{what}: still missing after apt-get install: some of {' '.join(packages)}")
