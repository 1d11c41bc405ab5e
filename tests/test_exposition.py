"""What /metrics exposes besides the gateway's own families: prometheus_client's process and
platform collectors, no ``_created`` series, and, under ``serve --workers N``, the supervisor's
merge of every worker's page, which must stay valid OpenMetrics (what Prometheus asks for)."""

from __future__ import annotations

import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.openmetrics import exposition as openmetrics_exposition
from prometheus_client.openmetrics import parser as openmetrics_parser
from prometheus_client.parser import text_string_to_metric_families

from gateway.server.app import SERVICE_NAME, _method_types
from gateway.server.metrics import Metrics, serve_registry
from gateway.server.worker_metrics import WorkerMetrics
from tests.helpers import GatewayThread

#: The families of prometheus_client's ProcessCollector (Linux) and PlatformCollector.
RUNTIME_FAMILIES = {
    "process_virtual_memory_bytes": "gauge",
    "process_resident_memory_bytes": "gauge",
    "process_start_time_seconds": "gauge",
    "process_cpu_seconds": "counter",
    "process_open_fds": "gauge",
    "process_max_fds": "gauge",
    "python_info": "gauge",
}
OPENMETRICS = "application/openmetrics-text; version=1.0.0; charset=utf-8"


def busy_metrics() -> Metrics:
    """A registry as a gateway fills it: every method initialized, some calls, an S3 failure."""
    metrics = Metrics()
    metrics.initialize_grpc(SERVICE_NAME, _method_types())
    labels = ("client_stream", SERVICE_NAME, "UploadPart")
    metrics.grpc_started.labels(*labels).inc()
    metrics.grpc_handled.labels(*labels, "OK").inc()
    metrics.grpc_seconds.labels(*labels).observe(0.2)
    metrics.part_size.labels("general").observe(5 * 1024 * 1024)
    metrics.s3_failed("UploadPart", "SlowDown", "uploads")
    return metrics


def sample_names(text: str, parse: Any = text_string_to_metric_families) -> set[str]:
    return {sample.name for family in parse(text) for sample in family.samples}


@contextmanager
def served(registry: CollectorRegistry) -> Iterator[int]:
    server = serve_registry(registry, "127.0.0.1:0")
    try:
        yield server.server_port
    finally:
        server.shutdown()
        server.server_close()


def test_the_registry_carries_process_and_platform_metrics() -> None:
    families = {f.name: f for f in Metrics().registry.collect()}
    for name, kind in RUNTIME_FAMILIES.items():
        assert families[name].type == kind, name
    assert families["process_resident_memory_bytes"].samples[0].value > 0
    (info,) = families["python_info"].samples
    assert info.labels["implementation"] == "CPython"


def test_no_created_series_in_either_format() -> None:
    registry = busy_metrics().registry
    text = generate_latest(registry).decode()
    openmetrics = openmetrics_exposition.generate_latest(registry).decode()
    for names in (sample_names(text), sample_names(openmetrics, om_parse)):
        assert not {n for n in names if n.endswith("_created")}
        assert "grpc_server_handled_total" in names
        assert "s3gateway_part_size_bytes_bucket" in names
    assert "_created" not in text and "_created" not in openmetrics


def om_parse(text: str) -> Any:
    return openmetrics_parser.text_string_to_metric_families(text)


def test_a_running_gateway_serves_its_process_metrics(moto_gateway: GatewayThread) -> None:
    url = f"http://127.0.0.1:{moto_gateway.gateway.metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=10) as response:
        names = sample_names(response.read().decode())
    assert {"process_resident_memory_bytes", "process_open_fds", "python_info"} <= names
    assert not {n for n in names if n.endswith("_created")}


def test_merged_worker_metrics_are_per_worker_and_valid_openmetrics() -> None:
    """The supervisor's merge of two workers' pages: every sample, process_* included, labelled
    with its worker, and the OpenMetrics rendering parses with the strict parser."""
    collector = WorkerMetrics(2)
    with served(busy_metrics().registry) as first, served(busy_metrics().registry) as second:
        collector.add(0, first)
        collector.add(1, second)
        registry = CollectorRegistry()
        registry.register(collector)
        openmetrics = openmetrics_exposition.generate_latest(registry).decode()
        text = generate_latest(registry).decode()

    families = {f.name: f for f in om_parse(openmetrics)}
    for name, kind in RUNTIME_FAMILIES.items():
        assert families[name].type == kind, name
        assert {s.labels["worker"] for s in families[name].samples} == {"0", "1"}, name
    rss = families["process_resident_memory_bytes"].samples
    assert len(rss) == 2 and all(s.value > 0 for s in rss)
    for family in families.values():
        for sample in family.samples:
            assert sample.labels.get("worker") in ("0", "1"), sample
            assert not sample.name.endswith("_created"), sample
    assert families["grpc_server_handled"].type == "counter"
    assert families["s3gateway_part_size_bytes"].type == "histogram"
    up = {s.labels["worker"]: s.value for s in families["s3gateway_worker_up"].samples}
    assert up == {"0": 1.0, "1": 1.0}
    # The text format too: one TYPE line per family.
    types = [line for line in text.splitlines() if line.startswith("# TYPE ")]
    assert len(types) == len(set(types))
    assert "# TYPE process_resident_memory_bytes gauge" in types


def test_the_supervisor_serves_openmetrics_when_asked() -> None:
    """Prometheus asks for OpenMetrics: the supervisor's /metrics server negotiates it."""
    collector = WorkerMetrics(1)
    with served(busy_metrics().registry) as worker:
        collector.add(0, worker)
        registry = CollectorRegistry()
        registry.register(collector)
        with served(registry) as supervisor:
            request = urllib.request.Request(
                f"http://127.0.0.1:{supervisor}/metrics", headers={"Accept": OPENMETRICS}
            )
            with urllib.request.urlopen(request, timeout=10) as response:
                assert response.headers["Content-Type"].startswith("application/openmetrics-text")
                page = response.read().decode()
    assert page.endswith("# EOF\n")
    names = sample_names(page, om_parse)
    assert "process_cpu_seconds_total" in names
    assert not {n for n in names if n.endswith("_created")}
