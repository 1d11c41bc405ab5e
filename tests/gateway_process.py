"""A gateway running as a separate process (``python -m gateway serve``), for tests that measure
the process itself (memory) or its life cycle (signals)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

_READY = re.compile(r"serving gateway\.v1\.UploadService on \S+ \(port (\d+)\)")


class GatewayProcess:
    def __init__(self, process: subprocess.Popen[str], port: int, log: list[str]) -> None:
        self.process = process
        self.port = port
        self.log = log

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def status(self, field: str) -> int:
        """A size from /proc/PID/status, in bytes (VmRSS, VmHWM)."""
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) * 1024
        raise KeyError(field)

    def reset_peak_rss(self) -> None:
        """Make VmHWM restart from the current RSS (Linux clear_refs)."""
        Path(f"/proc/{self.process.pid}/clear_refs").write_text("5")


@contextmanager
def gateway_process(
    *args: str, env: dict[str, str] | None = None, unset: tuple[str, ...] = ()
) -> Iterator[GatewayProcess]:
    """Start ``s3-upload-gateway serve ARGS`` on a free loopback port; SIGTERM it at the end.

    ``env`` adds variables to this process's environment; ``unset`` removes some."""
    environment = {k: v for k, v in os.environ.items() if k not in unset} | (env or {})
    command = [
        *(sys.executable, "-m", "gateway", "serve", "--listen-address", "127.0.0.1:0"),
        *("--metrics-address", "127.0.0.1:0", "--drain-delay", "0", *args),
    ]
    process = subprocess.Popen(
        command,
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
        env=environment,
    )
    log: list[str] = []
    try:
        port = read_ready_port(process, log)
    except BaseException:
        process.kill()
        process.wait()
        assert process.stderr is not None
        process.stderr.close()
        raise
    reader = threading.Thread(target=collect_stderr, args=(process, log), daemon=True)
    reader.start()
    try:
        yield GatewayProcess(process, port, log)
    finally:
        stop(process)
        reader.join(5)
        if process.stderr is not None:
            process.stderr.close()


def stop(process: subprocess.Popen[Any], timeout: float = 30) -> None:
    """SIGTERM a process still running and wait for it; SIGKILL it after ``timeout`` seconds."""
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def read_ready_port(process: subprocess.Popen[str], log: list[str]) -> int:
    """Read a starting gateway's stderr into ``log`` until it says which port it serves on."""
    assert process.stderr is not None
    for line in process.stderr:
        log.append(line)
        if match := _READY.search(line):
            return int(match.group(1))
    process.wait()
    raise RuntimeError(f"gateway exited with {process.returncode}:\n{''.join(log)}")


def collect_stderr(process: subprocess.Popen[str], log: list[str]) -> None:
    """Append a process's stderr lines to ``log`` until it closes (run it in a thread)."""
    assert process.stderr is not None
    for line in process.stderr:
        log.append(line)
