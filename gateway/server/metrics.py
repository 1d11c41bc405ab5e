"""Prometheus metrics: go-grpc-prometheus's server metrics and the gateway's own ``s3gateway_*``.

Everything lives in one :class:`Metrics` object with its own registry (nothing global), served on
a separate HTTP port, next to prometheus_client's process and platform collectors (``process_*``:
memory, CPU, open file descriptors; ``python_info``). The gRPC metrics carry go-grpc-prometheus's
exact names and labels, so existing dashboards work; they come from :class:`MetricsInterceptor`,
which counts client-streaming calls message by message and reads the final code of calls that
ended with ``context.abort``. Labels are bounded: operation, outcome, algorithm, bucket type, a
fixed set of S3 error codes — never bucket, key or upload id.

No metric exports a ``_created`` series: counters and histograms would each carry one more series,
the Unix time the series was first touched, which no dashboard or alert reads.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import time
from collections.abc import AsyncGenerator, Awaitable, Callable, Iterator
from typing import Any

import grpc
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    disable_created_metrics,
    start_http_server,
)
from prometheus_client.core import CounterMetricFamily, Metric

from gateway import __version__
from gateway.buckets import is_directory_bucket
from gateway.errors import ADMISSION_REASONS, S3_ERROR_CODES, S3_PATH_REASONS
from gateway.units import MiB

# A switch of prometheus_client's, for the whole process (the exposition reads it at scrape time).
disable_created_metrics()  # type: ignore[no-untyped-call]

#: grpc_code label values, spelled as Go's codes.Code String() spells them.
GO_CODE_NAMES = {
    grpc.StatusCode.OK: "OK",
    grpc.StatusCode.CANCELLED: "Canceled",
    grpc.StatusCode.UNKNOWN: "Unknown",
    grpc.StatusCode.INVALID_ARGUMENT: "InvalidArgument",
    grpc.StatusCode.DEADLINE_EXCEEDED: "DeadlineExceeded",
    grpc.StatusCode.NOT_FOUND: "NotFound",
    grpc.StatusCode.ALREADY_EXISTS: "AlreadyExists",
    grpc.StatusCode.PERMISSION_DENIED: "PermissionDenied",
    grpc.StatusCode.RESOURCE_EXHAUSTED: "ResourceExhausted",
    grpc.StatusCode.FAILED_PRECONDITION: "FailedPrecondition",
    grpc.StatusCode.ABORTED: "Aborted",
    grpc.StatusCode.OUT_OF_RANGE: "OutOfRange",
    grpc.StatusCode.UNIMPLEMENTED: "Unimplemented",
    grpc.StatusCode.INTERNAL: "Internal",
    grpc.StatusCode.UNAVAILABLE: "Unavailable",
    grpc.StatusCode.DATA_LOSS: "DataLoss",
    grpc.StatusCode.UNAUTHENTICATED: "Unauthenticated",
}
#: Gateway-side failures that get their own s3_error_code label value.
_KNOWN_S3_CODES = frozenset(S3_ERROR_CODES) | frozenset(S3_PATH_REASONS)

#: Part sizes from 64 KiB to S3's 5 GiB limit.
PART_SIZE_BUCKETS = (
    64 * 1024,
    MiB,
    5 * MiB,
    8 * MiB,
    16 * MiB,
    32 * MiB,
    64 * MiB,
    128 * MiB,
    256 * MiB,
    512 * MiB,
    1024 * MiB,
    2048 * MiB,
    5120 * MiB,
)
#: S3 calls take milliseconds (small parts) to minutes (a 5 GiB part on a slow link).
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)


#: The ``pool`` label of s3gateway_s3_connections_in_use: streamed parts and copies, and the
#: control calls (create, complete, abort, listings), which have connections of their own.
S3_POOLS = ("data", "control")
#: What happens to resumable writes (s3gateway_resumable_writes_total{event}).
RESUMABLE_EVENTS = ("started", "resumed", "completed", "cancelled", "expired")


def bucket_type(bucket: str) -> str:
    """The bucket_type label: directory (S3 Express One Zone) or general."""
    return "directory" if is_directory_bucket(bucket) else "general"


class Metrics:
    """Every metric the gateway exports, in a registry of its own."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        grpc_labels = ("grpc_type", "grpc_service", "grpc_method")
        self.grpc_started = Counter(
            "grpc_server_started_total", "Total number of RPCs started on the server.",
            grpc_labels, registry=r,
        )  # fmt: skip
        self.grpc_handled = Counter(
            "grpc_server_handled_total",
            "Total number of RPCs completed on the server, regardless of success or failure.",
            (*grpc_labels, "grpc_code"), registry=r,
        )  # fmt: skip
        self.grpc_received = Counter(
            "grpc_server_msg_received_total", "Total number of RPC stream messages received.",
            grpc_labels, registry=r,
        )  # fmt: skip
        self.grpc_sent = Counter(
            "grpc_server_msg_sent_total", "Total number of gRPC stream messages sent.",
            grpc_labels, registry=r,
        )  # fmt: skip
        self.grpc_seconds = Histogram(
            "grpc_server_handling_seconds",
            "Histogram of response latency (seconds) of gRPC that had been application-level "
            "handled by the server.",
            grpc_labels, buckets=DURATION_BUCKETS, registry=r,
        )  # fmt: skip
        self.client_bytes = Counter(
            "s3gateway_client_received_bytes_total", "Object bytes received from callers.",
            ("bucket_type",), registry=r,
        )  # fmt: skip
        self.s3_bytes = Counter(
            "s3gateway_s3_sent_bytes_total", "Part bytes handed to S3 (aborted requests included).",
            ("bucket_type",), registry=r,
        )  # fmt: skip
        self.part_size = Histogram(
            "s3gateway_part_size_bytes", "Size of the parts uploaded successfully.",
            ("bucket_type",), buckets=PART_SIZE_BUCKETS, registry=r,
        )  # fmt: skip
        self.s3_seconds = Histogram(
            "s3gateway_s3_request_duration_seconds", "Duration of S3 calls, failures included.",
            ("operation", "bucket_type"), buckets=DURATION_BUCKETS, registry=r,
        )  # fmt: skip
        self.s3_errors = Counter(
            "s3gateway_s3_errors_total",
            "S3 calls that failed, by S3 error code (codes outside a fixed set count as other).",
            ("operation", "s3_error_code", "bucket_type"), registry=r,
        )  # fmt: skip
        self.checksum_mismatches = Counter(
            "s3gateway_checksum_mismatches_total",
            "Parts refused because their bytes did not match a declared checksum.",
            ("algorithm",), registry=r,
        )  # fmt: skip
        self.inflight_streams = Gauge(
            "s3gateway_inflight_streams",
            "UploadPart and WriteObject streams in progress.",
            registry=r,
        )
        self.write_parts_in_flight = Gauge(
            "s3gateway_write_parts_in_flight",
            "Parts of WriteObject streams being uploaded to S3 (GATEWAY_WRITE_PARTS_IN_FLIGHT caps "
            "them per stream).",
            registry=r,
        )
        self.auth_failures = Counter(
            "s3gateway_auth_failures_total",
            "Calls refused UNAUTHENTICATED: no, a malformed or an unknown credential.",
            registry=r,
        )
        self.policy_denials = Counter(
            "s3gateway_policy_denials_total",
            "Calls refused PERMISSION_DENIED by the authorization policy.",
            ("operation",), registry=r,
        )  # fmt: skip
        self.admission_rejections = Counter(
            "s3gateway_admission_rejections_total",
            "Calls refused or ended RESOURCE_EXHAUSTED, by the limit that was hit.",
            ("limit",), registry=r,
        )  # fmt: skip
        for limit in ADMISSION_REASONS:
            self.admission_rejections.labels(limit)
        self.s3_connections_in_use = Gauge(
            "s3gateway_s3_connections_in_use",
            "S3 connections held by calls, by pool (GATEWAY_S3_MAX_POOL_CONNECTIONS and "
            "GATEWAY_S3_CONTROL_POOL_CONNECTIONS cap them).",
            ("pool",), registry=r,
        )  # fmt: skip
        for pool in S3_POOLS:
            self.s3_connections_in_use.labels(pool)
        self.resumable_writes = Counter(
            "s3gateway_resumable_writes_total",
            "Resumable writes by event: started, resumed (a stream continuing one with bytes "
            "persisted), completed, cancelled, expired (its token refused as too old).",
            ("event",), registry=r,
        )  # fmt: skip
        for event in RESUMABLE_EVENTS:
            self.resumable_writes.labels(event)
        self.buffer_bytes = Gauge(
            "s3gateway_buffer_reserved_bytes",
            "Bytes reserved by in-flight streams (GATEWAY_MAX_BUFFER_BYTES caps it).",
            registry=r,
        )
        self._watched = _WatchedFiles()
        r.register(self._watched)
        self.build_info = Gauge(
            "s3gateway_build_info", "The gateway's version, always 1.", ("version",), registry=r
        )
        self.build_info.labels(__version__).set(1)
        # process_* (this process's memory, CPU, file descriptors; from /proc, so Linux only) and
        # python_info; under `serve --workers N`, one set per worker.
        ProcessCollector(registry=r)
        PlatformCollector(registry=r)

    def watch(self, file: str, watcher: Any) -> None:
        """Export the ``reloads`` / ``reload_failures`` counts of a file watcher (TLS files,
        token file, policy file) as s3gateway_config_reloads_total{file, result}."""
        self._watched.watchers[file] = watcher

    def initialize_grpc(self, service: str, methods: dict[str, str]) -> None:
        """Create every method x code series at zero, as go-grpc-prometheus does."""
        for method, grpc_type in methods.items():
            labels = (grpc_type, service, method)
            for metric in (self.grpc_started, self.grpc_received, self.grpc_sent):
                metric.labels(*labels)
            self.grpc_seconds.labels(*labels)
            for name in GO_CODE_NAMES.values():
                self.grpc_handled.labels(*labels, name)

    def s3_failed(self, operation: str, code: str, bucket: str) -> None:
        label = code if code in _KNOWN_S3_CODES else "other"
        self.s3_errors.labels(operation, label, bucket_type(bucket)).inc()

    def serve(self, address: str) -> Any:
        """Serve /metrics on ``address`` (host:port); returns the server (``.server_port``)."""
        return serve_registry(self.registry, address)


def serve_registry(registry: CollectorRegistry, address: str) -> Any:
    """Serve ``registry`` as /metrics on ``address`` (host:port) from a thread; returns the
    server (``.server_port``)."""
    host, _, port = address.rpartition(":")
    server, _thread = start_http_server(int(port), host.strip("[]"), registry=registry)
    return server


class _WatchedFiles:
    """Reload counts of the watched files, read at scrape time."""

    def __init__(self) -> None:
        self.watchers: dict[str, Any] = {}

    def collect(self) -> Iterator[Metric]:
        family = CounterMetricFamily(
            "s3gateway_config_reloads",
            "Times a watched file (TLS files, token file, policy) changed on disk and was re-read, "
            "by result; a failed reload keeps the previous contents in force.",
            labels=("file", "result"),
        )
        for file, watcher in self.watchers.items():
            family.add_metric((file, "success"), watcher.reloads)
            family.add_metric((file, "failure"), watcher.reload_failures)
        yield family


Behavior = Callable[[Any, Any], Awaitable[Any]]
#: grpc_type, grpc_service, grpc_method.
Labels = tuple[str, str, str]


class MetricsInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[type-arg]
    """Counts every call as go-grpc-prometheus's server interceptors do."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Any]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Any:
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        service, _, method = handler_call_details.method.lstrip("/").rpartition("/")
        if handler.unary_unary is not None:
            wrapped = self._wrap(handler.unary_unary, ("unary", service, method))
            return grpc.unary_unary_rpc_method_handler(
                wrapped, handler.request_deserializer, handler.response_serializer
            )
        if handler.stream_unary is not None:
            labels = ("client_stream", service, method)
            received = self._metrics.grpc_received.labels(*labels)
            return grpc.stream_unary_rpc_method_handler(
                self._wrap(handler.stream_unary, labels),
                _counting(handler.request_deserializer, received),
                handler.response_serializer,
            )
        if handler.stream_stream is not None:
            labels = ("bidi_stream", service, method)
            received = self._metrics.grpc_received.labels(*labels)
            sent = self._metrics.grpc_sent.labels(*labels)
            behavior = handler.stream_stream
            # An async generator (grpc's reflection), or a coroutine writing its answers.
            observed: Callable[[Any, Any], Any]
            if inspect.isasyncgenfunction(behavior):
                observed = self._wrap_generator(behavior, labels)
            else:
                observed = self._wrap(behavior, labels)
            return grpc.stream_stream_rpc_method_handler(
                observed,
                _counting(handler.request_deserializer, received),
                _counting(handler.response_serializer, sent),
            )
        return handler

    def _wrap(self, behavior: Behavior, labels: Labels) -> Behavior:
        """Count a call; the messages of a stream are counted as they are decoded or encoded."""
        m = self._metrics
        kind = labels[0]

        async def observed(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            m.grpc_started.labels(*labels).inc()
            if kind == "unary":
                m.grpc_received.labels(*labels).inc()
            started = time.perf_counter()
            code = grpc.StatusCode.UNKNOWN
            try:
                response = await behavior(request, context)
                code = grpc.StatusCode.OK
                if kind != "bidi_stream":
                    m.grpc_sent.labels(*labels).inc()
                return response
            except asyncio.CancelledError:
                code = _cancelled_code(context)
                raise
            except BaseException:
                code = _final_code(context)
                raise
            finally:
                m.grpc_handled.labels(*labels, GO_CODE_NAMES[code]).inc()
                m.grpc_seconds.labels(*labels).observe(time.perf_counter() - started)

        return observed

    def _wrap_generator(
        self, behavior: Callable[[Any, Any], AsyncGenerator[Any, None]], labels: Labels
    ) -> Callable[[Any, Any], AsyncGenerator[Any, None]]:
        """:meth:`_wrap` for a handler that is an async generator."""
        m = self._metrics

        async def observed(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            m.grpc_started.labels(*labels).inc()
            started = time.perf_counter()
            code = grpc.StatusCode.UNKNOWN
            try:
                async with contextlib.aclosing(behavior(request, context)) as responses:
                    async for response in responses:
                        yield response
                code = grpc.StatusCode.OK
            except asyncio.CancelledError:
                code = _cancelled_code(context)
                raise
            except BaseException:
                code = _final_code(context)
                raise
            finally:
                m.grpc_handled.labels(*labels, GO_CODE_NAMES[code]).inc()
                m.grpc_seconds.labels(*labels).observe(time.perf_counter() - started)

        return observed


def _counting(code: Callable[[Any], Any] | None, counter: Any) -> Callable[[Any], Any]:
    """A (de)serializer that counts each message of a stream as it is decoded or encoded."""

    def counted(message: Any) -> Any:
        counter.inc()
        return message if code is None else code(message)

    return counted


def _final_code(context: grpc.aio.ServicerContext[Any, Any]) -> grpc.StatusCode:
    """The code a call ended with when its handler raised: the one context.abort set."""
    code = context.code()
    if isinstance(code, grpc.StatusCode):
        return code
    if isinstance(code, int):
        return next((c for c in grpc.StatusCode if c.value[0] == code), grpc.StatusCode.UNKNOWN)
    return grpc.StatusCode.UNKNOWN


def _cancelled_code(context: grpc.aio.ServicerContext[Any, Any]) -> grpc.StatusCode:
    """A handler task is cancelled when the caller cancels or its deadline passes."""
    remaining = context.time_remaining()
    if remaining is not None and remaining <= 0:
        return grpc.StatusCode.DEADLINE_EXCEEDED
    return grpc.StatusCode.CANCELLED
