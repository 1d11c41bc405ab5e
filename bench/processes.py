"""Processes a benchmark runs against: moto's S3 server, the gateway (quiet), and /proc readings."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import grpc

from tests.gateway_process import stop

#: Dummy credentials and no AWS configuration for every process a benchmark starts.
AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "bench",
    "AWS_SECRET_ACCESS_KEY": "bench",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_REGION": "us-east-1",
    "AWS_CONFIG_FILE": os.devnull,
    "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
    "AWS_EC2_METADATA_DISABLED": "true",
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextmanager
def moto_server() -> Iterator[str]:
    """``python -m moto.server`` on a free loopback port; yields its URL."""
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(200):
            try:
                urllib.request.urlopen(url, timeout=1).close()
                break
            except OSError:
                time.sleep(0.1)
        yield url
    finally:
        process.terminate()
        process.wait(10)


class Gateway:
    """A gateway subprocess: its address and /proc readings."""

    def __init__(self, process: subprocess.Popen[bytes], address: str) -> None:
        self.process = process
        self.address = address

    @property
    def pid(self) -> int:
        return self.process.pid

    def pids(self) -> list[int]:
        """The gateway and its worker processes (``serve --workers N``)."""
        return [self.pid, *descendants(self.pid)]

    def cpu_seconds(self) -> float:
        return sum(cpu_seconds(pid) for pid in self.pids())

    def status(self, field: str) -> int:
        """A size from /proc/PID/status, in bytes (VmRSS, VmHWM), summed over the processes."""
        total = 0
        for pid in self.pids():
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith(f"{field}:"):
                    total += int(line.split()[1]) * 1024
        return total

    def reset_peak_rss(self) -> None:
        for pid in self.pids():
            Path(f"/proc/{pid}/clear_refs").write_text("5")


@contextmanager
def gateway_server(endpoint: str, *extra: str) -> Iterator[Gateway]:
    """``s3-upload-gateway serve`` relaying to ``endpoint``, metrics off, logging at WARNING.

    At WARNING the gateway does not log its port, so it listens on a port chosen here and is ready
    once a gRPC channel to it connects."""
    port = free_port()
    command = [
        *(sys.executable, "-m", "gateway", "serve", "--listen-address", f"127.0.0.1:{port}"),
        *("--metrics-address=", "--drain-delay", "0", "--log-level", "WARNING"),
        *("--embedded-s3", "off", "--s3-endpoint-url", endpoint, *extra),
    ]
    environment = {
        k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "GATEWAY_"))
    } | AWS_ENV
    process = subprocess.Popen(command, env=environment, stdout=subprocess.DEVNULL)
    address = f"127.0.0.1:{port}"
    try:
        with grpc.insecure_channel(address) as channel:
            grpc.channel_ready_future(channel).result(timeout=60)
        yield Gateway(process, address)
    finally:
        stop(process)


def descendants(pid: int) -> list[int]:
    """Every live process below ``pid``, from /proc/*/stat."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            children.setdefault(int(fields[1]), []).append(int(entry.name))
    found, pending = [], [pid]
    while pending:
        for child in children.get(pending.pop(), []):
            found.append(child)
            pending.append(child)
    return found


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (all its threads), from /proc/PID/stat."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
