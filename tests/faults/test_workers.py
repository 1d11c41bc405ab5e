"""``serve --workers 2`` when its processes are killed: a killed supervisor lets its workers
drain, once."""

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
from typing import Any, TypeVar

import boto3
import grpc
from prometheus_client.parser import text_string_to_metric_families

from gateway.v1 import upload_service_pb2 as pb
from gateway.v1 import upload_service_pb2_grpc as pb_grpc
from tests.helpers import MiB, chunks, data_message, header_message
from tests.test_workers import (
    Pool,
    fresh_channel,
    is_running,
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

Recorder = Callable[[str, object], None]


def test_a_killed_supervisor_lets_its_workers_drain_once(
    moto_endpoint: str, record_property: Recorder
) -> None:
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
    repeats = [r for r in pool.records() if "again: still draining" in r["message"]]
    record_property("repeated_sigterms_after_supervisor_kill", len(repeats))


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


def wait_until_mid_part(pool: Pool, workers: list[str], streams: int | None = None) -> str:
    """Wait until ``streams`` UploadPart streams (one per worker of ``workers`` when None) each
    had their first half read by a worker; the worker of the last one."""
    wanted = len(workers) if streams is None else streams

    def halfway() -> list[str]:
        received = _part_messages_by_worker(pool.metrics())
        mid = [w for w in workers if received.get(w, 0) >= HALF_MESSAGES]
        return mid if len(mid) >= wanted else []

    return poll(halfway, "streams half-way")[-1]


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


def _logged(pool: Pool, worker: int, text: str) -> dict[str, Any] | None:
    """The first record of ``worker``'s with ``text`` in its message."""
    for record in pool.records():
        if record.get("worker") == worker and text in record["message"]:
            return record
    return None


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
