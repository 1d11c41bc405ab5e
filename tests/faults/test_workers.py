"""``serve --workers 2`` when its processes are killed: a worker killed mid-part is restarted, with
backoff, while the other keeps relaying; a killed supervisor lets its workers drain, once."""

from __future__ import annotations

import contextlib
import hashlib
import os
import signal
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import boto3
import grpc
from prometheus_client.parser import text_string_to_metric_families

from gateway.server.workers import RESTART_DELAY_FIRST, RestartBackoff
from gateway.v1 import upload_service_pb2 as pb
from gateway.v1 import upload_service_pb2_grpc as pb_grpc
from tests.helpers import MiB, chunks, data_message, header_message
from tests.test_workers import (
    Pool,
    fresh_channel,
    handled_by_worker,
    is_running,
    start_pool,
    worker_pool,
)

T = TypeVar("T")
#: Seconds any awaited state change gets: generous for a loaded 2-core machine.
WAIT = 20.0
#: Bytes of a part; its stream pauses half-way.
PART_SIZE = MiB
#: Bytes of a data message.
CHUNK = 64 * 1024
#: The messages of a stream paused half-way: the header and half the data.
HALF_MESSAGES = 1 + PART_SIZE // CHUNK // 2
#: Seconds a paused stream waits to be released before giving up on its call.
RELEASE_TIMEOUT = 60.0


def test_a_worker_killed_mid_part_is_restarted_while_the_other_keeps_relaying(
    moto_endpoint: str,
) -> None:
    s3 = boto3.client("s3", endpoint_url=moto_endpoint, region_name="us-east-1")
    bucket = _new_bucket(s3)
    with worker_pool(moto_endpoint) as pool, contextlib.ExitStack() as stack:
        channels = channel_to_each_worker(pool, bucket, stack)
        victim_pid, survivor_pid = pool.pids
        victim = PausedPart(_header(s3, bucket, "victim"))
        survivor = PausedPart(_header(s3, bucket, "survivor"))
        stack.callback(victim.release.set)
        stack.callback(survivor.release.set)
        victim_call = victim.send(channels["0"])
        survivor_call = survivor.send(channels["1"])
        wait_until_mid_part(pool, ["0", "1"])

        killed_at = time.monotonic()
        os.kill(victim_pid, signal.SIGKILL)
        error = victim_call.exception(timeout=WAIT)
        failed_after = time.monotonic() - killed_at
        assert isinstance(error, grpc.RpcError)
        assert error.code() == grpc.StatusCode.UNAVAILABLE, error
        assert failed_after < 10, f"the killed worker's stream failed after {failed_after:.1f} s"

        survivor.release.set()
        stored = survivor_call.result(timeout=WAIT)
        assert stored.etag == survivor.etag
        part = s3.list_parts(Bucket=bucket, Key="survivor", UploadId=survivor.upload_id)["Parts"]
        assert [(p["PartNumber"], p["ETag"], p["Size"]) for p in part] == [
            (1, survivor.etag, PART_SIZE)
        ]

        back = poll(lambda: _serving_again(pool, 0, 1), "worker 0 serving again")
        assert back["pid"] not in (victim_pid, survivor_pid)
        assert is_running(back["pid"]) and is_running(survivor_pid)
        (restart,) = _restart_records(pool)
        assert restart["worker"] == 0 and restart["pid"] == victim_pid
        assert (restart["signal"], restart["exit_code"]) == ("SIGKILL", -9)
        assert restart["restart_delay"] == RESTART_DELAY_FIRST
        poll(
            lambda: supervisor_gauges(pool) == ({"0": 1.0, "1": 1.0}, {"0": 1.0, "1": 0.0}),
            "both workers up, worker 0 restarted once",
        )
        channel_to_each_worker(pool, bucket, stack)  # new connections reach both workers
        survivor_log = [r for r in pool.records() if r.get("worker") == 1]
        assert not any("shutting down" in r["message"] for r in survivor_log)


def test_a_killed_supervisor_lets_its_workers_drain_once(moto_endpoint: str) -> None:
    s3 = boto3.client("s3", endpoint_url=moto_endpoint, region_name="us-east-1")
    bucket = _new_bucket(s3)
    with worker_pool(moto_endpoint) as pool, contextlib.ExitStack() as stack:
        part = PausedPart(_header(s3, bucket, "drained"))
        stack.callback(part.release.set)
        channel = stack.enter_context(fresh_channel(pool.address))
        call = part.send(channel)
        worker = wait_until_mid_part(pool, ["0", "1"], streams=1)

        pool.process.kill()
        # Reaped only once every thread of it exited: every PR_SET_PDEATHSIG signal is sent.
        pool.process.wait(WAIT)
        poll(lambda: _logged(pool, int(worker), "shutting down"), f"worker {worker} draining")
        part.release.set()
        stored = call.result(timeout=WAIT)
        assert stored.etag == part.etag
        parts = s3.list_parts(Bucket=bucket, Key="drained", UploadId=part.upload_id)["Parts"]
        assert [(p["ETag"], p["Size"]) for p in parts] == [(part.etag, PART_SIZE)]
        poll(lambda: not any(is_running(pid) for pid in pool.pids), "the workers to exit")

    for index in (0, 1):
        messages = [r["message"] for r in pool.records() if r.get("worker") == index]
        assert sum("shutting down" in m for m in messages) == 1, messages
        assert not any("cancelling" in m for m in messages), messages
        assert messages[-1] == "stopped"


def test_repeated_sigterms_to_a_worker_drain_it_once(moto_endpoint: str) -> None:
    """What a dying supervisor can deliver (PR_SET_PDEATHSIG fires once per exiting thread of
    the parent), sent on purpose: the worker still drains and lets its upload finish."""
    s3 = boto3.client("s3", endpoint_url=moto_endpoint, region_name="us-east-1")
    bucket = _new_bucket(s3)
    with worker_pool(moto_endpoint) as pool, contextlib.ExitStack() as stack:
        part = PausedPart(_header(s3, bucket, "twice"))
        stack.callback(part.release.set)
        channel = stack.enter_context(fresh_channel(pool.address))
        call = part.send(channel)
        worker = int(wait_until_mid_part(pool, ["0", "1"], streams=1))

        os.kill(pool.pids[worker], signal.SIGTERM)
        # A signal sent while the same one is pending merges with it: the second waits.
        poll(lambda: _logged(pool, worker, "shutting down"), f"worker {worker} draining")
        os.kill(pool.pids[worker], signal.SIGTERM)
        second = poll(
            lambda: (
                _logged(pool, worker, "again: still draining")
                or _logged(pool, worker, "cancelling in-flight calls")
            ),
            "the second SIGTERM handled",
        )
        assert second["message"] == "SIGTERM again: still draining (SIGUSR1 cancels)"
        part.release.set()
        assert call.result(timeout=WAIT).etag == part.etag
        poll(lambda: _logged(pool, worker, "stopped"), f"worker {worker} to stop")
        # Before the pool stops: the worker is restarted, and its successor logs as it.
        messages = [r["message"] for r in pool.records() if r.get("worker") == worker]
        assert sum("shutting down" in m for m in messages) == 1, messages
        assert not any("cancelling" in m for m in messages), messages


def test_a_crash_loop_is_backed_off(moto_endpoint: str) -> None:
    with worker_pool(moto_endpoint) as pool:
        pids = [pool.pids[0]]
        for restarts in (1, 2):
            os.kill(pids[-1], signal.SIGKILL)
            back = poll(
                lambda n=restarts: _serving_again(pool, 0, n),
                f"restart {restarts} of worker 0",
            )
            pids.append(back["pid"])
        records = _restart_records(pool)
        assert [(r["worker"], r["pid"]) for r in records] == [(0, pids[0]), (0, pids[1])]
        delays = [r["restart_delay"] for r in records]
        assert delays == [RESTART_DELAY_FIRST, 2 * RESTART_DELAY_FIRST]
        assert records[1]["served_seconds"] < 60  # killed at once: no reset of the backoff
        poll(
            lambda: supervisor_gauges(pool)[1] == {"0": 2.0, "1": 0.0},
            "two restarts of worker 0 counted",
        )
        assert len(set(pids)) == 3 and is_running(pids[-1]) and is_running(pool.pids[1])


def test_the_restart_delay_doubles_up_to_a_cap_and_starts_over_after_a_long_run() -> None:
    backoff = RestartBackoff(first=0.5, cap=4.0, reset_after=60.0)
    assert [backoff.delay(served=1.0) for _ in range(6)] == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]
    assert backoff.delay(served=60.0) == 0.5
    assert backoff.delay(served=59.0) == 1.0


def test_no_restart_while_the_supervisor_stops(moto_endpoint: str) -> None:
    with worker_pool(moto_endpoint, "--drain-delay", "60") as pool:
        pool.process.send_signal(signal.SIGTERM)
        poll(lambda: _logged(pool, 0, "draining"), "worker 0 draining")
        os.kill(pool.pids[0], signal.SIGKILL)
        poll(lambda: _supervisor_logged(pool, "worker 0 exited with code -9"), "worker 0 reaped")
        pool.process.send_signal(signal.SIGTERM)  # worker 1 stops draining at once
        assert pool.process.wait(WAIT) == 1  # a worker did not exit cleanly
    assert not _restart_records(pool)
    assert not any("serving again" in r["message"] for r in pool.records())
    assert not any(is_running(pid) for pid in pool.worker_pids())


def test_a_worker_with_a_configuration_error_is_not_restarted(
    moto_endpoint: str, tmp_path: Path
) -> None:
    tokens = tmp_path / "tokens.yaml"
    tokens.write_text("tokens: 5\n")
    process = start_pool(moto_endpoint, "--auth-tokens-file", str(tokens))
    try:
        _, stderr = process.communicate(timeout=60)
    finally:
        process.kill()
        process.wait()
    assert process.returncode == 2
    assert f"configuration error: {tokens}: 'tokens' must be a list" in stderr
    assert "restarting" not in stderr


# Helpers.


class PausedPart:
    """An UploadPart of a fresh multipart upload whose stream sends the header and the first half
    of the data, then waits for ``release`` before sending the rest: mid-part for as long as a
    test needs, without timing."""

    def __init__(self, header: dict[str, Any]) -> None:
        self.header = header
        self.upload_id: str = header["upload_id"]
        self.data = os.urandom(PART_SIZE)
        self.etag = f'"{hashlib.md5(self.data).hexdigest()}"'
        self.release = threading.Event()

    def send(self, channel: grpc.Channel) -> Any:
        """Start the call on ``channel``; returns its future."""
        stub = pb_grpc.UploadServiceStub(channel)
        return stub.UploadPart.future(self._messages(), timeout=RELEASE_TIMEOUT + WAIT)

    def _messages(self) -> Iterator[pb.UploadPartRequest]:
        pieces = chunks(self.data, CHUNK)
        half = len(pieces) // 2
        yield header_message(**self.header)
        yield from (data_message(piece) for piece in pieces[:half])
        if self.release.wait(RELEASE_TIMEOUT):
            yield from (data_message(piece) for piece in pieces[half:])


def channel_to_each_worker(
    pool: Pool, bucket: str, stack: contextlib.ExitStack
) -> dict[str, grpc.Channel]:
    """A channel (with a connection of its own) to each worker, by worker label: new connections
    until each worker served one (the kernel picks a worker per connection)."""
    channels: dict[str, grpc.Channel] = {}
    for _ in range(40):  # all on one worker: probability 2**-39
        channel = fresh_channel(pool.address)
        before = handled_by_worker(pool.metrics())
        stub = pb_grpc.UploadServiceStub(channel)
        stub.ListMultipartUploads(pb.ListMultipartUploadsRequest(bucket=bucket), timeout=10)
        worker = poll(lambda b=before: _one_more(b, handled_by_worker(pool.metrics())), "a call")
        if worker in channels:
            channel.close()
            continue
        channels[worker] = stack.enter_context(channel)
        if len(channels) == 2:
            return channels
    raise AssertionError(f"40 connections reached only worker(s) {sorted(channels)}")


def wait_until_mid_part(pool: Pool, workers: list[str], streams: int | None = None) -> str:
    """Wait until ``streams`` UploadPart streams (one per worker of ``workers`` when None) each
    had their first half read by a worker; the worker of the last one."""
    wanted = len(workers) if streams is None else streams

    def halfway() -> list[str]:
        received = _part_messages_by_worker(pool.metrics())
        mid = [w for w in workers if received.get(w, 0) >= HALF_MESSAGES]
        return mid if len(mid) >= wanted else []

    return poll(halfway, "streams half-way")[-1]


def supervisor_gauges(pool: Pool) -> tuple[dict[str, float], dict[str, float]]:
    """``s3gateway_worker_up`` and ``s3gateway_worker_restarts_total`` by worker."""
    families = {f.name: f for f in text_string_to_metric_families(pool.metrics())}
    up = {s.labels["worker"]: s.value for s in families["s3gateway_worker_up"].samples}
    restarts = families["s3gateway_worker_restarts"].samples
    return up, {s.labels["worker"]: s.value for s in restarts if s.name.endswith("_total")}


def poll(condition: Callable[[], T], what: str, timeout: float = WAIT) -> T:
    """``condition()`` once it is truthy; fails after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not (result := condition()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.05)
    return result


def _part_messages_by_worker(text: str) -> Counter[str]:
    """UploadPart messages each worker read (counted as they are decoded, unlike bytes)."""
    received: Counter[str] = Counter()
    for family in text_string_to_metric_families(text):
        if family.name == "grpc_server_msg_received":
            for sample in family.samples:
                if sample.labels["grpc_method"] == "UploadPart":
                    received[sample.labels["worker"]] += int(sample.value)
    return received


def _one_more(before: Counter[str], after: Counter[str]) -> str | None:
    grown = [w for w in after if after[w] > before.get(w, 0)]
    return grown[0] if len(grown) == 1 else None


def _logged(pool: Pool, worker: int, text: str) -> dict[str, Any] | None:
    """The first record of ``worker``'s with ``text`` in its message."""
    for record in pool.records():
        if record.get("worker") == worker and text in record["message"]:
            return record
    return None


def _supervisor_logged(pool: Pool, text: str) -> dict[str, Any] | None:
    for record in pool.records():
        if record["logger"] == "gateway.server.workers" and text in record["message"]:
            return record
    return None


def _serving_again(pool: Pool, worker: int, times: int) -> dict[str, Any] | None:
    """The ``times``-th "serving again" record of ``worker``, once logged."""
    records = [
        r
        for r in pool.records()
        if r["message"] == f"worker {worker} serving again" and r["worker"] == worker
    ]
    return records[times - 1] if len(records) >= times else None


def _restart_records(pool: Pool) -> list[dict[str, Any]]:
    return [r for r in pool.records() if "restarting it in" in r["message"]]


def _header(s3: Any, bucket: str, key: str) -> dict[str, Any]:
    """The header of part 1 of a new multipart upload of ``key``."""
    upload_id = s3.create_multipart_upload(Bucket=bucket, Key=key)["UploadId"]
    return dict(
        bucket=bucket, key=key, upload_id=upload_id, part_number=1, content_length=PART_SIZE
    )


def _new_bucket(s3: Any) -> str:
    bucket = f"faults-{uuid.uuid4().hex[:12]}"
    s3.create_bucket(Bucket=bucket)
    return bucket
