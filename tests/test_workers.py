"""``serve --workers N``: worker processes sharing one port, merged /metrics, signals, failures."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import grpc
from prometheus_client.openmetrics import parser as openmetrics_parser
from prometheus_client.parser import text_string_to_metric_families

from gateway.v1 import upload_service_pb2 as pb
from gateway.v1 import upload_service_pb2_grpc as pb_grpc
from tests.gateway_process import stop
from tests.helpers import create_bucket, part_messages, wait_for

_SERVE = (sys.executable, "-m", "gateway", "serve")
#: Seconds a two-worker gateway gets to start (spawned interpreters import grpc, aiobotocore…).
_START_TIMEOUT = 30


@dataclass
class Pool:
    process: subprocess.Popen[str]
    log: list[str]
    #: The supervisor's "serving with N workers" record.
    ready: dict[str, Any]

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.ready['grpc_port']}"

    @property
    def pids(self) -> list[int]:
        pids: list[int] = self.ready["worker_pids"]
        return pids

    def worker_pids(self) -> set[int]:
        """Every worker pid the supervisor reported: the first ones and every restarted one."""
        restarted = (r["pid"] for r in self.records() if r["message"].endswith("serving again"))
        return {*self.pids, *restarted}

    def metrics(self, accept: str | None = None) -> str:
        url = f"http://127.0.0.1:{self.ready['metrics_port']}/metrics"
        request = urllib.request.Request(url, headers={"Accept": accept} if accept else {})
        with urllib.request.urlopen(request, timeout=10) as response:
            text: str = response.read().decode()
            return text

    def records(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in list(self.log) if line.startswith("{")]


def start_pool(moto_endpoint: str, *args: str) -> subprocess.Popen[str]:
    """``serve --workers 2`` against moto on a free port (ARGS may override the options)."""
    command = [
        *(*_SERVE, "--workers", "2", "--listen-address", "127.0.0.1:0"),
        *("--metrics-address", "127.0.0.1:0", "--drain-delay", "0"),
        *("--embedded-s3", "off", "--s3-endpoint-url", moto_endpoint, *args),
    ]
    return subprocess.Popen(command, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)


@contextmanager
def worker_pool(moto_endpoint: str, *args: str) -> Iterator[Pool]:
    """:func:`start_pool`, once every worker serves; stopped (and its workers gone) at the end."""
    process = start_pool(moto_endpoint, *args)
    assert process.stderr is not None
    log: list[str] = []
    ready = None
    timer = threading.Timer(_START_TIMEOUT, process.kill)
    timer.start()
    for line in process.stderr:
        log.append(line)
        if "serving with" in line:
            ready = json.loads(line)
            break
    timer.cancel()
    reader = threading.Thread(target=lambda: log.extend(process.stderr or ()), daemon=True)
    reader.start()
    pool = Pool(process, log, ready or {})
    try:
        assert ready is not None, f"no pool started (exit {process.poll()}):\n{''.join(log)}"
        yield pool
    finally:
        stop(process)
        for pid in pool.worker_pids():  # never leave a worker behind, whatever the test did
            if is_running(pid):
                os.kill(pid, signal.SIGKILL)
        reader.join(5)
        process.stderr.close()


def is_running(pid: int) -> bool:
    """Whether ``pid`` is a process that has not exited (zombies count as exited)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def draining_workers(pool: Pool) -> list[int]:
    """The workers that logged they are draining."""
    records = pool.records()
    return [r["worker"] for r in records if "worker" in r and r["message"].startswith("draining")]


def fresh_channel(address: str) -> grpc.Channel:
    """A channel with its own connection: gRPC otherwise shares subchannels across channels."""
    return grpc.insecure_channel(address, options=[("grpc.use_local_subchannel_pool", 1)])


def handled_by_worker(text: str) -> Counter[str]:
    handled: Counter[str] = Counter()
    for family in text_string_to_metric_families(text):
        if family.name == "grpc_server_handled":
            for sample in family.samples:
                handled[sample.labels["worker"]] += int(sample.value)
    return handled


def test_workers_share_the_port_and_merge_their_metrics(moto_endpoint: str, moto_s3: Any) -> None:
    bucket = create_bucket(moto_s3, "workers")
    with worker_pool(moto_endpoint) as pool:
        serving = [r for r in pool.records() if "serving gateway.v1.UploadService" in r["message"]]
        assert sorted(r["worker"] for r in serving) == [0, 1]
        assert {r["grpc_port"] for r in serving} == {pool.ready["grpc_port"]}
        assert f"serving with 2 workers on {pool.address}" in pool.ready["message"]

        # New connections are spread by the kernel: 40 of them all landing on one worker
        # happens with probability 2**-39.
        for _ in range(40):
            with fresh_channel(pool.address) as channel:
                stub = pb_grpc.UploadServiceStub(channel)
                stub.ListMultipartUploads(pb.ListMultipartUploadsRequest(bucket=bucket), timeout=10)

        data = os.urandom(256 * 1024)
        with fresh_channel(pool.address) as channel:
            stub = pb_grpc.UploadServiceStub(channel)
            upload = stub.CreateMultipartUpload(
                pb.CreateMultipartUploadRequest(bucket=bucket, key="k"), timeout=10
            )
            header = dict(
                bucket=bucket,
                key="k",
                upload_id=upload.upload_id,
                part_number=1,
                content_length=len(data),
            )
            part = stub.UploadPart(iter(part_messages(header, data)), timeout=10)
            stub.CompleteMultipartUpload(
                pb.CompleteMultipartUploadRequest(
                    bucket=bucket,
                    key="k",
                    upload_id=upload.upload_id,
                    parts=[pb.CompletedPart(etag=part.etag, part_number=1)],
                ),
                timeout=10,
            )
        assert moto_s3.get_object(Bucket=bucket, Key="k")["Body"].read() == data

        text = pool.metrics()
        families = list(text_string_to_metric_families(text))
        handled = handled_by_worker(text)
        assert set(handled) == {"0", "1"}
        assert all(count > 0 for count in handled.values()), handled
        assert sum(handled.values()) == 40 + 3
        for family in families:
            for sample in family.samples:
                assert sample.labels.get("worker") in ("0", "1"), sample
        by_name = {f.name: f for f in families}
        assert by_name["grpc_server_handled"].type == "counter"
        assert by_name["s3gateway_part_size_bytes"].type == "histogram"
        up = {s.labels["worker"]: s.value for s in by_name["s3gateway_worker_up"].samples}
        assert up == {"0": 1.0, "1": 1.0}
        # One HELP and TYPE per family, all of its samples together.
        types = [line for line in text.splitlines() if line.startswith("# TYPE ")]
        assert len(types) == len(set(types))
        assert "# TYPE grpc_server_handled_total counter" in types

        # OpenMetrics (what Prometheus asks for) parses strictly; no _created series.
        om = pool.metrics("application/openmetrics-text; version=1.0.0")
        om_families = {f.name: f for f in openmetrics_parser.text_string_to_metric_families(om)}
        samples = om_families["grpc_server_handled"].samples
        assert {s.labels["worker"] for s in samples} == {"0", "1"}
        assert not [s for f in om_families.values() for s in f.samples if "_created" in s.name]


def test_sigterm_stops_every_worker_and_exits_0(moto_endpoint: str) -> None:
    with worker_pool(moto_endpoint) as pool:
        assert all(is_running(pid) for pid in pool.pids)
        started = time.monotonic()
        pool.process.send_signal(signal.SIGTERM)
        assert pool.process.wait(20) == 0
        assert time.monotonic() - started < 10
        assert not any(is_running(pid) for pid in pool.pids)
    records = pool.records()
    assert sum(r["message"] == "stopped" for r in records) == 2
    assert [r["exit_code"] for r in records if "exited with code" in r["message"]] == [0, 0]


def test_sigterm_while_workers_start_stops_them_once_they_serve(moto_endpoint: str) -> None:
    process = start_pool(moto_endpoint)
    try:
        assert process.stderr is not None
        starting = json.loads(next(line for line in process.stderr if "starting 2" in line))
        process.send_signal(signal.SIGTERM)  # the workers are still importing
        assert process.wait(20) == 0
        log = process.stderr.read()
    finally:
        process.kill()
        process.wait()
        if process.stderr is not None:
            process.stderr.close()
    assert not any(is_running(pid) for pid in starting["worker_pids"])
    assert "serving with" not in log
    assert log.count('"message": "stopped"') == 2


def test_a_second_sigterm_reaches_the_workers(moto_endpoint: str) -> None:
    with worker_pool(moto_endpoint, "--drain-delay", "60") as pool:
        pool.process.send_signal(signal.SIGTERM)
        wait_for(
            lambda: sorted(draining_workers(pool)) == [0, 1],
            "both workers draining",
            _START_TIMEOUT,
            detail=lambda: "".join(pool.log),
        )
        assert pool.process.poll() is None  # draining for 60 s
        started = time.monotonic()
        pool.process.send_signal(signal.SIGTERM)
        assert pool.process.wait(20) == 0
        assert time.monotonic() - started < 10
        assert not any(is_running(pid) for pid in pool.pids)
    hurried = [r for r in pool.records() if "cancelling in-flight calls" in r["message"]]
    assert sorted(r["worker"] for r in hurried) == [0, 1]


def test_a_worker_that_dies_before_serving_stops_the_pool_with_an_error(
    moto_endpoint: str,
) -> None:
    """Only a worker that served is restarted (tests/faults/test_workers.py): one that dies while
    starting would most likely die again."""
    process = start_pool(moto_endpoint)
    try:
        assert process.stderr is not None
        starting = json.loads(next(line for line in process.stderr if "starting 2" in line))
        victim, survivor = starting["worker_pids"]
        os.kill(victim, signal.SIGKILL)  # the workers are still importing
        assert process.wait(20) == 1
        log = process.stderr.read()
    finally:
        process.kill()
        process.wait()
        if process.stderr is not None:
            process.stderr.close()
    assert not is_running(survivor)
    assert "worker 0 exited unexpectedly with code -9" in log
    assert "restarting" not in log
    assert "serving with" not in log


def test_a_worker_that_cannot_start_fails_serve() -> None:
    process = start_pool("not-a-url")
    try:
        _, stderr = process.communicate(timeout=60)
    finally:
        process.kill()
        process.wait()
    assert process.returncode == 1
    assert "s3-upload-gateway: cannot serve: ValueError: Invalid endpoint: not-a-url" in stderr
    assert "serving with" not in stderr
    pids = json.loads(next(line for line in stderr.splitlines() if "starting 2" in line))
    assert not any(is_running(pid) for pid in pids["worker_pids"])


def test_workers_with_the_embedded_s3_is_a_configuration_error() -> None:
    result = subprocess.run(
        [*_SERVE, "--workers", "2", "--embedded-s3", "on"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "GATEWAY_EMBEDDED_S3=on needs GATEWAY_WORKERS=1" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
