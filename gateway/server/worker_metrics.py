"""The supervisor's /metrics under ``serve --workers N``: every worker's, merged.

On every scrape :class:`WorkerMetrics` reads each worker's /metrics (on its loopback port) and
exposes the union, each sample with a ``worker="0".."N-1"`` label, plus the supervisor's own
``s3gateway_worker_up{worker}`` and ``s3gateway_worker_restarts_total{worker}``.
"""

from __future__ import annotations

import concurrent.futures
import http.client
import logging
import threading
from collections.abc import Iterable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.parser import text_string_to_metric_families

from gateway.server.metrics import serve_registry

log = logging.getLogger(__name__)

#: Seconds the supervisor waits for a worker's /metrics on a scrape.
SCRAPE_TIMEOUT = 2.0


def serve_metrics(collector: WorkerMetrics, address: str) -> Any:
    """Serve the workers' merged /metrics on ``address``; returns the server (``.server_port``)."""
    registry = CollectorRegistry()
    registry.register(collector)
    return serve_registry(registry, address)


class WorkerMetrics:
    """A prometheus_client collector: every worker's /metrics, read at scrape time, merged, with
    a ``worker`` label on every sample, and the supervisor's own: which workers are up, how often
    each was restarted."""

    def __init__(self, workers: int, timeout: float = SCRAPE_TIMEOUT) -> None:
        self._timeout = timeout
        self._lock = threading.Lock()
        #: Worker index to its metrics port; None while it waits to be restarted (it is down).
        self._ports: dict[int, int | None] = {}
        self._restarts = dict.fromkeys(range(workers), 0)

    def add(self, worker: int, port: int) -> None:
        with self._lock:
            self._ports[worker] = port

    def down(self, worker: int) -> None:
        """The worker died and will be restarted: reported as down until it serves again."""
        with self._lock:
            self._ports[worker] = None

    def remove(self, worker: int) -> None:
        with self._lock:
            self._ports.pop(worker, None)

    def count_restart(self, worker: int) -> None:
        with self._lock:
            self._restarts[worker] = self._restarts.get(worker, 0) + 1

    def describe(self) -> list[Metric]:
        return []  # the names are known only once workers answer

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            targets = sorted(self._ports.items())
            restarts = sorted(self._restarts.items())
        up = GaugeMetricFamily(
            "s3gateway_worker_up",
            "1 when the worker's metrics were read for this scrape, else 0.",
            labels=["worker"],
        )
        families: dict[str, Metric] = {}
        if targets:
            with concurrent.futures.ThreadPoolExecutor(min(len(targets), 16)) as pool:
                parsed = list(pool.map(self._read, (port for _, port in targets)))
            for (worker, _), worker_families in zip(targets, parsed, strict=True):
                up.add_metric([str(worker)], 0 if worker_families is None else 1)
                _merge(families, worker_families or [], str(worker))
        yield from families.values()
        yield up
        restarted = CounterMetricFamily(
            "s3gateway_worker_restarts",
            "Times the worker was started again after it died while serving.",
            labels=["worker"],
        )
        for worker, count in restarts:
            restarted.add_metric([str(worker)], count)
        yield restarted

    def _read(self, port: int | None) -> list[Metric] | None:
        if port is None:
            return None  # waiting to be restarted
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=self._timeout)
        try:
            connection.request("GET", "/metrics")
            response = connection.getresponse()
            text = response.read().decode()
            if response.status != 200:
                return None
            return list(text_string_to_metric_families(text))
        except (OSError, http.client.HTTPException, ValueError) as exc:
            log.warning("cannot read a worker's metrics on port %d: %s", port, exc)
            return None
        finally:
            connection.close()


def _merge(families: dict[str, Metric], worker_families: Iterable[Metric], worker: str) -> None:
    for family in worker_families:
        merged = families.get(family.name)
        if merged is None:
            merged = families[family.name] = Metric(
                family.name, family.documentation, family.type, family.unit
            )
        merged.samples.extend(
            sample._replace(labels={**sample.labels, "worker": worker}) for sample in family.samples
        )
