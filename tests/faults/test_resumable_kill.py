"""Resumable writes across stateless replicas, proven by killing them: a replica killed with
SIGKILL mid-part, and a chaos run that kills and restarts replicas at random while several writes
go on. Every write finishes through whichever replica is alive, byte-identical and
checksum-verified, and no multipart upload is left behind.

The replicas are separate gateway processes on fixed loopback ports, sharing a token key file
and nothing else; the client's channel balances over them (grpc's round_robin), as a client does
over a Kubernetes headless Service.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest

from gateway import checksums
from gateway.client import GatewayCallError, GatewayClient, UploadOptions
from gateway.security.write_tokens import MARKER_PREFIX, WriteKeys, generate_key, parse_marker
from gateway.units import MiB
from tests.conftest import Backend
from tests.gateway_process import collect_stderr, read_ready_port, stop
from tests.helpers import S3Reader, logged_metrics_port, sample_value, scrape

PART = 5 * MiB


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


@dataclass
class Replica:
    """One gateway process on a fixed port, which can be killed and started again."""

    port: int
    command: list[str]
    environment: dict[str, str]
    process: subprocess.Popen[str] | None = None
    log: list[str] = field(default_factory=list)
    metrics_port: int = 0

    def start(self) -> None:
        self.log = []
        self.process = subprocess.Popen(
            self.command, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True,
            env=self.environment,
        )  # fmt: skip
        read_ready_port(self.process, self.log)
        self.metrics_port = logged_metrics_port(self.log)
        threading.Thread(target=collect_stderr, args=(self.process, self.log), daemon=True).start()

    def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait()
        if self.process.stderr is not None:
            self.process.stderr.close()

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def streams(self) -> float:
        """Its streams in flight (s3gateway_inflight_streams); 0 once it is gone."""
        for _ in range(5):  # a loaded machine may keep a scrape waiting
            if not self.alive:
                return 0.0
            try:
                return sample_value(scrape(self.metrics_port), "s3gateway_inflight_streams")
            except OSError:
                time.sleep(0.2)
        return 0.0


@contextmanager
def replicas(backend: Backend, keys: Path, count: int) -> Iterator[list[Replica]]:
    environment = {**os.environ}
    environment["AWS_ACCESS_KEY_ID"], environment["AWS_SECRET_ACCESS_KEY"] = backend.credentials
    started: list[Replica] = []
    try:
        for _ in range(count):
            port = _free_port()
            command = [
                *(sys.executable, "-m", "gateway", "serve", "--embedded-s3", "off"),
                *("--listen-address", f"127.0.0.1:{port}", "--metrics-address", "127.0.0.1:0"),
                *("--drain-delay", "0", "--s3-endpoint-url", backend.endpoint),
                *("--s3-addressing-style", "path", "--write-token-keys-file", str(keys)),
                *("--write-part-size", str(PART), "--write-parts-in-flight", "2"),
            ]
            if backend.ca_bundle:
                command += ["--s3-ca-bundle", backend.ca_bundle]
            replica = Replica(port, command, environment)
            replica.start()
            started.append(replica)
        yield started
    finally:
        for replica in started:
            if replica.process is not None:
                stop(replica.process)
                if replica.process.stderr is not None:
                    replica.process.stderr.close()


@pytest.fixture
def keys(tmp_path: Path) -> Path:
    path = tmp_path / "write-keys.yaml"
    path.write_text(f"signing: k1\nkeys:\n  k1: {generate_key()}\n")
    return path


def balanced(replicas: list[Replica]) -> grpc.aio.Channel:
    """One channel over every replica, round robin, reconnecting fast to a restarted one."""
    target = "ipv4:" + ",".join(f"127.0.0.1:{r.port}" for r in replicas)
    return grpc.aio.insecure_channel(
        target,
        options=[
            ("grpc.lb_policy_name", "round_robin"),
            ("grpc.initial_reconnect_backoff_ms", 100),
            ("grpc.max_reconnect_backoff_ms", 500),
        ],
    )


class Recorder(GatewayClient):
    """A client that counts its writes' resumes (QueryWriteStatus after a failure) and the bytes
    its streams sent."""

    def __init__(self, channel: grpc.aio.Channel) -> None:
        super().__init__(channel)
        self.resumes = 0
        self.sent = 0
        #: StartResumableWrite calls that failed: S3 may have created their uploads.
        self.lost_starts = 0

    async def start_resumable_write(self, request: Any) -> Any:
        try:
            return await super().start_resumable_write(request)
        except GatewayCallError:
            self.lost_starts += 1
            raise

    async def query_write_status(self, request: Any) -> Any:
        self.resumes += 1
        return await super().query_write_status(request)

    async def resume_write(self, *args: Any, on_sent: Any = None, **kwargs: Any) -> Any:
        def count(size: int) -> None:
            self.sent += size
            if on_sent is not None:
                on_sent(size)

        return await super().resume_write(*args, on_sent=count, **kwargs)


def _options(**changes: Any) -> UploadOptions:
    return UploadOptions(resumable=True, max_attempts=20, max_backoff=1.0, **changes)


class Paused(Recorder):
    """A client whose first stream stops sending after ``after`` bytes until ``go`` is set, so
    that the object cannot be finished before the test has killed the replica serving it."""

    def __init__(self, channel: grpc.aio.Channel, after: int) -> None:
        super().__init__(channel)
        self.go = asyncio.Event()
        self._after = after
        self._first = True

    async def resume_write(self, resume: Any, body: Any, *args: Any, **kwargs: Any) -> Any:
        if self._first:
            self._first = False
            body = self._pausing(body)
        return await super().resume_write(resume, body, *args, **kwargs)

    async def _pausing(self, body: Any) -> Any:
        sent = 0
        async for chunk in body:
            if sent >= self._after:
                await self.go.wait()
            sent += len(chunk)
            yield chunk


async def test_a_replica_killed_mid_part_and_the_write_finishes_on_another(
    backend: Backend, keys: Path, new_bucket: str, s3: S3Reader, tmp_path: Path
) -> None:
    """The replica serving a write is killed with SIGKILL once two parts are in S3 and while a
    third is on its way to it; the write finishes through the other replica."""
    data = os.urandom(8 * PART + 4321)
    path = tmp_path / "object.bin"
    path.write_bytes(data)
    with replicas(backend, keys, 2) as running:
        async with balanced(running) as channel:
            client = Paused(channel, after=2 * PART + MiB)
            killed: list[Replica] = []

            def on_token(token: str) -> None:
                if WriteTokenPeek(token).persisted < 2 * PART or client.go.is_set():
                    return
                try:
                    serving = [r for r in running if r.streams() > 0]
                    if len(serving) == 1:  # else the test fails: nothing killed
                        serving[0].kill()
                        killed.append(serving[0])
                finally:
                    client.go.set()  # never leave the stream paused

            written = await client.write_object(
                new_bucket, "killed.bin", str(path), options=_options(), on_token=on_token
            )
    assert killed, "no replica was killed"
    assert client.resumes >= 1
    assert s3.read(new_bucket, "killed.bin") == data
    assert written.size == len(data)
    crc = checksums.encode(checksums.CRC64NVME.compute(data))
    response = written.response
    assert response.computed_checksums["CRC64NVME"] == crc  # type: ignore[union-attr]
    assert s3.uploads(new_bucket) == []


class WriteTokenPeek:
    """What a test reads of a token's payload (signed, not secret): the persisted bytes."""

    def __init__(self, token: str) -> None:
        import base64
        import json

        payload = token.split(".")[1]
        document = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        self.persisted = int(document["z"])


#: How long the chaos run writes objects while replicas are killed.
CHAOS_SECONDS = 40.0
#: Writes in flight at once.
CHAOS_WRITERS = 4


@pytest.mark.backends("moto")
async def test_chaos_kills_and_restarts_lose_nothing(
    backend: Backend, keys: Path, new_bucket: str, s3: S3Reader, tmp_path: Path
) -> None:
    """For 40 s, four writers write objects of 3 to 8 parts, one after another, while one of
    three replicas is killed (SIGKILL) every one to two seconds and started again shortly after:
    every write completes byte-identical and checksum-verified, nothing is left behind. Prints
    the figures: writes, kills, resumes, bytes sent again."""
    rng = random.Random(20261201)
    kills = 0
    written: dict[str, bytes] = {}
    results: dict[str, Any] = {}
    with replicas(backend, keys, 3) as running:
        deadline = time.monotonic() + CHAOS_SECONDS

        async def chaos() -> None:
            nonlocal kills
            while time.monotonic() < deadline:
                await asyncio.sleep(rng.uniform(1.0, 2.0))
                victim = rng.choice([r for r in running if r.alive])
                await asyncio.to_thread(victim.kill)
                kills += 1
                await asyncio.sleep(rng.uniform(0.2, 1.0))
                await asyncio.to_thread(victim.start)

        async def writer(number: int) -> None:
            index = 0
            while time.monotonic() < deadline:
                key = f"chaos-{number}-{index}.bin"
                data = os.urandom(rng.randint(3, 8) * PART + rng.randint(0, PART))
                path = tmp_path / key
                path.write_bytes(data)
                results[key] = await client.write_object(
                    new_bucket, key, str(path), options=_options()
                )
                written[key] = data
                path.unlink()
                index += 1

        async with balanced(running) as channel:
            client = Recorder(channel)
            started = time.monotonic()
            await asyncio.gather(chaos(), *(writer(n) for n in range(CHAOS_WRITERS)))
            seconds = time.monotonic() - started
    answered_by_head = 0
    for key, data in written.items():
        assert s3.read(new_bucket, key) == data, key
        crc = checksums.encode(checksums.CRC64NVME.compute(data))
        computed = results[key].response.computed_checksums.get("CRC64NVME", "")
        # Empty when a replica was killed after S3 completed the object: QueryWriteStatus then
        # answers the object S3 holds (HeadObject), whose bytes the killed replica had verified.
        assert computed in (crc, ""), key
        answered_by_head += not computed
    # A StartResumableWrite whose answer a kill lost may have created an upload (and its
    # marker) that no token names; a replica killed between completing a write and aborting its
    # marker leaves the marker. reap-uploads aborts both once the write has expired. Nothing
    # else may be left.
    left = s3.client.list_multipart_uploads(Bucket=new_bucket).get("Uploads", [])
    markers = [parse_marker(u["Key"]) for u in left if u["Key"].startswith(MARKER_PREFIX)]
    uploads = [u for u in left if not u["Key"].startswith(MARKER_PREFIX)]
    assert len(uploads) <= client.lost_starts, left
    assert {upload["Key"] for upload in uploads} <= set(written)
    assert len(markers) <= client.lost_starts + kills, left
    signing = WriteKeys(keys).value.keys
    assert all(m is not None and m.signed(signing, new_bucket) for m in markers), left
    total = sum(len(data) for data in written.values())
    print(
        f"chaos: {len(written)} writes, {total / MiB:.0f} MiB in {seconds:.1f} s; {kills} kills, "
        f"{client.resumes} resumes, {(client.sent - total) / MiB:.1f} MiB sent again; "
        f"{client.lost_starts} starts lost, {len(uploads)} uploads and {len(markers)} markers "
        "left for reap-uploads, "
        f"{answered_by_head} finished writes found by QueryWriteStatus"
    )
    assert kills >= 5
    assert client.resumes >= 1
