"""Authentication, authorization and admission limits, against a live gateway in front of moto.

Calls go through grpc's synchronous API: a refused client-streaming call must report the
gateway's status, not grpc.aio's early-status race (grpc/grpc#36066).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import os
import re
import socket
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import boto3
import grpc
import h2.config
import h2.connection
import h2.events
import h2.exceptions
import pytest
import yaml

from gateway.config import ConfigError, Settings
from gateway.security import auth
from gateway.server.app import plaintext_warning
from gateway.v1 import upload_service_pb2 as pb
from gateway.v1 import upload_service_pb2_grpc as pb_grpc
from tests.backends.counting import CountingProxy, counting_proxy
from tests.certs import CA, swap_symlinked
from tests.gateway_process import gateway_process
from tests.helpers import (
    GatewayThread,
    HeldStream,
    error_info,
    metric,
    retry_info,
    wait_for,
)

MiB = 1024 * 1024
TOKEN_A = auth.generate_token()
TOKEN_B = auth.generate_token()

POLICY = {
    "version": 1,
    "principals": {
        "alice": [
            {
                "operations": ["*"],
                "buckets": ["alice-*"],
                "prefixes": ["in/"],
                "max_part_size": "1MiB",
            }
        ],
        "bob": [{"operations": ["ListMultipartUploads", "ListParts"], "buckets": ["alice-*"]}],
    },
}


def write_tokens(path: Path, **tokens: str) -> Path:
    entries = [{"principal": name, "sha256": auth.hash_token(t)} for name, t in tokens.items()]
    path.write_text(yaml.safe_dump({"tokens": entries}))
    return path


def bearer(token: str) -> list[tuple[str, str]]:
    return [("authorization", f"Bearer {token}")]


def settings(endpoint: str, **changes: Any) -> Settings:
    return Settings(
        listen_address="127.0.0.1:0",
        metrics_address="",
        drain_delay=0,
        s3_endpoint_url=endpoint,
        **changes,
    )


@pytest.fixture
def start(moto_endpoint: str) -> Iterator[Callable[..., GatewayThread]]:
    """Start gateways with changed settings (endpoint: moto unless given); stopped at the end."""
    started: list[GatewayThread] = []

    def make(endpoint: str = moto_endpoint, **changes: Any) -> GatewayThread:
        running = GatewayThread(settings(endpoint, **changes), ("testing", "testing"))
        started.append(running.__enter__())
        return running

    yield make
    for running in started:
        running.__exit__(None, None, None)


@pytest.fixture
def proxy(moto_endpoint: str) -> Iterator[CountingProxy]:
    with counting_proxy(moto_endpoint) as running:
        yield running


@pytest.fixture
def alice_bucket(moto_endpoint: str) -> str:
    name = f"alice-{uuid.uuid4().hex[:16]}"
    boto3.client("s3", endpoint_url=moto_endpoint, region_name="us-east-1").create_bucket(
        Bucket=name
    )
    return name


@pytest.fixture
def policy_gateway(
    start: Callable[..., GatewayThread], proxy: CountingProxy, tmp_path: Path
) -> GatewayThread:
    tokens = write_tokens(tmp_path / "tokens.yaml", alice=TOKEN_A, bob=TOKEN_B)
    policy = tmp_path / "policy.yaml"
    policy.write_text(yaml.safe_dump(POLICY))
    return start(proxy.url, auth_tokens_file=str(tokens), policy_file=str(policy))


def stub_for(address: str) -> tuple[grpc.Channel, pb_grpc.UploadServiceStub]:
    channel = grpc.insecure_channel(address)
    return channel, pb_grpc.UploadServiceStub(channel)


def failure(call: Callable[[], Any]) -> Any:
    with pytest.raises(grpc.RpcError) as caught:
        call()
    return caught.value


def header(
    bucket: str, key: str, upload_id: str, size: int, number: int = 1
) -> pb.UploadPartRequest:
    return pb.UploadPartRequest(
        header=pb.UploadPartHeader(
            bucket=bucket, key=key, upload_id=upload_id, part_number=number, content_length=size
        )
    )


def data(content: bytes) -> pb.UploadPartRequest:
    return pb.UploadPartRequest(data=pb.ChecksummedData(content=content))


# --------------------------------------------------------------------------- authentication


def test_calls_without_valid_tokens_are_unauthenticated(
    start: Callable[..., GatewayThread], tmp_path: Path, moto_bucket: str
) -> None:
    gateway = start(auth_tokens_file=str(write_tokens(tmp_path / "t.yaml", alice=TOKEN_A)))
    channel, stub = stub_for(gateway.address)
    request = pb.ListMultipartUploadsRequest(bucket=moto_bucket)
    with channel:
        for metadata in (
            None,
            bearer("not-a-known-token"),
            bearer(TOKEN_B),
            [("authorization", f"Basic {TOKEN_A}")],
            [("authorization", f"Bearer {TOKEN_A}"), ("authorization", f"Bearer {TOKEN_A}")],
        ):
            error = failure(lambda m=metadata: stub.ListMultipartUploads(request, metadata=m))
            assert error.code() == grpc.StatusCode.UNAUTHENTICATED, metadata
            assert error_info(error).reason == "UNAUTHENTICATED"
            assert TOKEN_A not in error.details() and TOKEN_B not in error.details()
        stub.ListMultipartUploads(request, metadata=bearer(TOKEN_A))
        parts = [header(moto_bucket, "k", "u", 3), data(b"abc")]
        error = failure(lambda: stub.UploadPart(iter(parts), metadata=bearer("wrong")))
        assert error.code() == grpc.StatusCode.UNAUTHENTICATED
    failures = gateway.gateway.metrics.auth_failures._value.get()
    assert failures == 6


def test_token_file_is_reloaded(
    start: Callable[..., GatewayThread], tmp_path: Path, moto_bucket: str
) -> None:
    tokens = write_tokens(tmp_path / "t.yaml", alice=TOKEN_A)
    gateway = start(auth_tokens_file=str(tokens))
    assert gateway.gateway.guard is not None
    token_file = gateway.gateway.guard.authenticator.tokens
    assert token_file is not None
    token_file.check_interval = 0.1
    request = pb.ListMultipartUploadsRequest(bucket=moto_bucket)
    channel, stub = stub_for(gateway.address)
    with channel:
        stub.ListMultipartUploads(request, metadata=bearer(TOKEN_A))
        write_tokens(tokens, bob=TOKEN_B)  # rotate: alice's token revoked, bob's added
        deadline = time.monotonic() + 5
        while True:
            try:
                stub.ListMultipartUploads(request, metadata=bearer(TOKEN_B))
                break
            except grpc.RpcError:
                assert time.monotonic() < deadline, "the new token never took effect"
                time.sleep(0.1)
        error = failure(lambda: stub.ListMultipartUploads(request, metadata=bearer(TOKEN_A)))
        assert error.code() == grpc.StatusCode.UNAUTHENTICATED


# --------------------------------------------------------------------------- authorization


def test_denied_calls_never_reach_s3(
    policy_gateway: GatewayThread, proxy: CountingProxy, alice_bucket: str, moto_endpoint: str
) -> None:
    channel, stub = stub_for(policy_gateway.address)
    with channel:
        upload = stub.CreateMultipartUpload(
            pb.CreateMultipartUploadRequest(bucket=alice_bucket, key="in/a.bin"),
            metadata=bearer(TOKEN_A),
        )
        stub.UploadPart(
            iter([header(alice_bucket, "in/a.bin", upload.upload_id, 5), data(b"hello")]),
            metadata=bearer(TOKEN_A),
        )
        before = proxy.count
        denied: list[tuple[str, Callable[[], Any]]] = [
            (
                "CreateMultipartUpload",
                lambda: stub.CreateMultipartUpload(
                    pb.CreateMultipartUploadRequest(bucket=alice_bucket, key="out/a.bin"),
                    metadata=bearer(TOKEN_A),
                ),
            ),
            (
                "CreateMultipartUpload",
                lambda: stub.CreateMultipartUpload(
                    pb.CreateMultipartUploadRequest(bucket="carol-data", key="in/a.bin"),
                    metadata=bearer(TOKEN_A),
                ),
            ),
            (
                "UploadPart",  # a prefix the policy does not grant
                lambda: stub.UploadPart(
                    iter([header(alice_bucket, "other/a.bin", upload.upload_id, 5), data(b"x")]),
                    metadata=bearer(TOKEN_A),
                ),
            ),
            (
                "UploadPart",  # over the grant's max_part_size
                lambda: stub.UploadPart(
                    iter([header(alice_bucket, "in/a.bin", upload.upload_id, 2 * MiB)]),
                    metadata=bearer(TOKEN_A),
                ),
            ),
            (
                "UploadPart",  # bob may only list
                lambda: stub.UploadPart(
                    iter([header(alice_bucket, "in/a.bin", upload.upload_id, 5), data(b"hello")]),
                    metadata=bearer(TOKEN_B),
                ),
            ),
            (
                "ListMultipartUploads",  # alice may list only under in/
                lambda: stub.ListMultipartUploads(
                    pb.ListMultipartUploadsRequest(bucket=alice_bucket), metadata=bearer(TOKEN_A)
                ),
            ),
            (
                "UploadPartCopy",  # the source is outside alice's grants
                lambda: stub.UploadPartCopy(
                    pb.UploadPartCopyRequest(
                        bucket=alice_bucket,
                        key="in/a.bin",
                        upload_id=upload.upload_id,
                        part_number=2,
                        copy_source=f"{alice_bucket}/secret/b.bin",
                    ),
                    metadata=bearer(TOKEN_A),
                ),
            ),
            (
                "AbortMultipartUpload",
                lambda: stub.AbortMultipartUpload(
                    pb.AbortMultipartUploadRequest(
                        bucket=alice_bucket, key="in/a.bin", upload_id=upload.upload_id
                    ),
                    metadata=bearer(TOKEN_B),
                ),
            ),
        ]
        for operation, call in denied:
            error = failure(call)
            assert error.code() == grpc.StatusCode.PERMISSION_DENIED, (operation, error.details())
            info = error_info(error)
            assert info.reason == "POLICY_DENIED" and info.metadata["operation"] == operation
            assert "nothing was sent to S3" in error.details()
        assert proxy.count == before, proxy.requests[before:]
        # Allowed calls still go through, and did reach S3.
        listing = stub.ListMultipartUploads(
            pb.ListMultipartUploadsRequest(bucket=alice_bucket, prefix="in/"),
            metadata=bearer(TOKEN_B),
        )
        assert [u.key for u in listing.uploads] == ["in/a.bin"]
        assert proxy.count == before + 1
    metrics = policy_gateway.gateway.metrics
    denials = {
        s.labels["operation"]: s.value
        for s in metrics.policy_denials.collect()[0].samples
        if s.name.endswith("_total")
    }
    assert denials == {
        "CreateMultipartUpload": 2,
        "UploadPart": 3,
        "ListMultipartUploads": 1,
        "UploadPartCopy": 1,
        "AbortMultipartUpload": 1,
    }
    parts = boto3.client("s3", endpoint_url=moto_endpoint, region_name="us-east-1").list_parts(
        Bucket=alice_bucket, Key="in/a.bin", UploadId=upload.upload_id
    )
    assert [p["Size"] for p in parts["Parts"]] == [5]


def test_policy_changes_take_effect_without_restart(
    policy_gateway: GatewayThread, alice_bucket: str, tmp_path: Path
) -> None:
    guard = policy_gateway.gateway.guard
    assert guard is not None and guard.policy_file is not None
    guard.policy_file.check_interval = 0.1
    channel, stub = stub_for(policy_gateway.address)
    request = pb.CreateMultipartUploadRequest(bucket=alice_bucket, key="out/a.bin")
    with channel:
        error = failure(lambda: stub.CreateMultipartUpload(request, metadata=bearer(TOKEN_A)))
        assert error.code() == grpc.StatusCode.PERMISSION_DENIED
        widened = yaml.safe_load(yaml.safe_dump(POLICY))
        widened["principals"]["alice"][0]["prefixes"] = ["in/", "out/"]
        Path(guard.policy_file.path).write_text(yaml.safe_dump(widened))
        deadline = time.monotonic() + 5
        while True:
            try:
                stub.CreateMultipartUpload(request, metadata=bearer(TOKEN_A))
                break
            except grpc.RpcError as exc:
                assert exc.code() == grpc.StatusCode.PERMISSION_DENIED
                assert time.monotonic() < deadline, "the widened policy never took effect"
                time.sleep(0.1)
        # A broken policy file keeps the last good one in force.
        Path(guard.policy_file.path).write_text("version: 1\nprincipals: [oops\n")
        time.sleep(0.3)
        stub.CreateMultipartUpload(request, metadata=bearer(TOKEN_A))
        assert guard.policy_file.reload_failures >= 1


def test_without_a_policy_an_exposed_address_needs_allow_all(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="GATEWAY_POLICY_FILE"):
        Settings(listen_address="0.0.0.0:50051", plaintext=True)
    with pytest.raises(ConfigError, match="GATEWAY_PLAINTEXT"):
        Settings(listen_address="0.0.0.0:50051", allow_all=True)
    policy = tmp_path / "policy.yaml"
    policy.write_text(yaml.safe_dump(POLICY))
    with pytest.raises(ConfigError, match="contradict"):
        Settings(
            listen_address="0.0.0.0:50051", plaintext=True, allow_all=True, policy_file=str(policy)
        )
    Settings(listen_address="0.0.0.0:50051", plaintext=True, allow_all=True)
    Settings(listen_address="0.0.0.0:50051", plaintext=True, policy_file=str(policy))
    Settings(listen_address="127.0.0.1:50051")  # loopback: neither needed


# --------------------------------------------------------------------------- mutual TLS


def test_mtls_identity_is_the_principal_and_the_health_port_serves_only_health(
    start: Callable[..., GatewayThread], tmp_path: Path, alice_bucket: str
) -> None:
    ca = CA()
    server_cert, server_key = ca.server_leaf().write(tmp_path, "server")
    client_ca = ca.write(tmp_path, "clients")
    alice_cert, alice_key = ca.issue("ignored-cn", uris=["alice"]).write(tmp_path, "alice")
    mallory_cert, mallory_key = ca.issue("mallory").write(tmp_path, "mallory")
    policy = tmp_path / "policy.yaml"
    policy.write_text(yaml.safe_dump(POLICY))
    gateway = start(
        tls_cert_file=str(server_cert),
        tls_key_file=str(server_key),
        tls_client_ca_file=str(client_ca),
        policy_file=str(policy),
        health_address="127.0.0.1:0",
    )

    def channel(cert: Path, key: Path) -> grpc.Channel:
        credentials = grpc.ssl_channel_credentials(ca.cert_pem, key.read_bytes(), cert.read_bytes())
        return grpc.secure_channel(gateway.address, credentials)

    request = pb.CreateMultipartUploadRequest(bucket=alice_bucket, key="in/a.bin")
    with channel(alice_cert, alice_key) as alice:
        pb_grpc.UploadServiceStub(alice).CreateMultipartUpload(request)
    with channel(mallory_cert, mallory_key) as mallory:
        error = failure(lambda: pb_grpc.UploadServiceStub(mallory).CreateMultipartUpload(request))
        assert error.code() == grpc.StatusCode.PERMISSION_DENIED
        assert '"mallory"' in error.details()
    health_address = f"127.0.0.1:{gateway.gateway.health_port}"
    with grpc.insecure_channel(health_address) as plain:
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        answer = health_pb2_grpc.HealthStub(plain).Check(health_pb2.HealthCheckRequest())
        assert answer.status == health_pb2.HealthCheckResponse.SERVING
        error = failure(lambda: pb_grpc.UploadServiceStub(plain).CreateMultipartUpload(request))
        assert error.code() == grpc.StatusCode.UNAUTHENTICATED
        assert error_info(error).reason == "TLS_REQUIRED"


# --------------------------------------------------------------------------- admission limits


def inflight(gateway: GatewayThread) -> float:
    return metric(gateway, "s3gateway_inflight_streams")


def rejections(gateway: GatewayThread) -> dict[str, float]:
    samples = gateway.gateway.metrics.admission_rejections.collect()[0].samples
    return {s.labels["limit"]: s.value for s in samples if s.name.endswith("_total")}


@pytest.mark.parametrize(
    ("limits", "reason"),
    [
        ({"max_streams": 2}, "STREAM_LIMIT"),
        ({"max_streams_per_principal": 2}, "PRINCIPAL_STREAM_LIMIT"),
        ({"max_buffer_bytes": 2 * (64 * 1024 + 64 * 1024), "stream_window": 64 * 1024,
          "max_message_size": 64 * 1024}, "BUFFER_LIMIT"),
    ],
    ids=["overall", "per-principal", "buffer"],
)  # fmt: skip
def test_stream_limits_refuse_with_retry_info(
    start: Callable[..., GatewayThread], moto_bucket: str, limits: dict[str, int], reason: str
) -> None:
    gateway = start(**limits)
    channel, stub = stub_for(gateway.address)
    with channel:
        first = header(moto_bucket, "k", "upload-id", 10)
        held = [HeldStream(stub, first) for _ in range(2)]
        try:
            wait_for(lambda: inflight(gateway) == 2, "two streams admitted")
            error = failure(lambda: stub.UploadPart(iter([first, data(b"0123456789")])))
            assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert error_info(error).reason == reason
            delay = retry_info(error)
            assert delay is not None and delay.retry_delay.seconds >= 1
        finally:
            for stream in held:
                stream.release.set()
        for stream in held:
            with pytest.raises(grpc.RpcError):
                stream.future.result(10)
        wait_for(lambda: inflight(gateway) == 0, "streams released")
        assert rejections(gateway)[reason] == 1
        # Capacity is back: a normal part goes through.
        upload = stub.CreateMultipartUpload(
            pb.CreateMultipartUploadRequest(bucket=moto_bucket, key="k")
        )
        stub.UploadPart(iter([header(moto_bucket, "k", upload.upload_id, 3), data(b"abc")]))


def test_one_principal_cannot_take_every_slot(
    start: Callable[..., GatewayThread], tmp_path: Path, moto_bucket: str
) -> None:
    tokens = write_tokens(tmp_path / "t.yaml", alice=TOKEN_A, bob=TOKEN_B)
    gateway = start(auth_tokens_file=str(tokens), max_streams_per_principal=2, max_streams=10)
    channel, stub = stub_for(gateway.address)
    with channel:
        first = header(moto_bucket, "k", "upload-id", 10)
        held = [HeldStream(stub, first, metadata=bearer(TOKEN_A)) for _ in range(2)]
        try:
            wait_for(lambda: inflight(gateway) == 2, "alice's streams admitted")
            error = failure(lambda: stub.UploadPart(iter([first]), metadata=bearer(TOKEN_A)))
            assert error_info(error).reason == "PRINCIPAL_STREAM_LIMIT"
            upload = stub.CreateMultipartUpload(
                pb.CreateMultipartUploadRequest(bucket=moto_bucket, key="k"),
                metadata=bearer(TOKEN_B),
            )
            parts = [header(moto_bucket, "k", upload.upload_id, 3), data(b"abc")]
            stub.UploadPart(iter(parts), metadata=bearer(TOKEN_B))
        finally:
            for stream in held:
                stream.release.set()


def test_buffered_parts_count_against_the_buffer_cap(
    start: Callable[..., GatewayThread], moto_bucket: str
) -> None:
    reservation = 64 * 1024 + 256 * 1024
    gateway = start(
        stream_window=64 * 1024,
        max_message_size=256 * 1024,
        max_buffer_bytes=reservation + 300 * 1024,
    )
    channel, stub = stub_for(gateway.address)
    with channel:
        upload = stub.CreateMultipartUpload(
            pb.CreateMultipartUploadRequest(bucket=moto_bucket, key="k")
        )
        no_length = pb.UploadPartRequest(
            header=pb.UploadPartHeader(
                bucket=moto_bucket, key="k", upload_id=upload.upload_id, part_number=1
            )
        )
        chunk = b"x" * (200 * 1024)
        stub.UploadPart(iter([no_length, data(chunk)]))  # 200 KiB buffered: fits
        error = failure(lambda: stub.UploadPart(iter([no_length, data(chunk), data(chunk)])))
        assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert error_info(error).reason == "BUFFER_LIMIT"
    assert gateway.gateway.guard is not None
    wait_for(lambda: gateway.gateway.guard.budget.held == 0, "buffer released")  # type: ignore[union-attr]


def test_an_idle_stream_is_ended_and_nothing_is_committed(
    start: Callable[..., GatewayThread], moto_bucket: str, moto_endpoint: str
) -> None:
    gateway = start(idle_timeout=0.5)
    channel, stub = stub_for(gateway.address)
    with channel:
        upload = stub.CreateMultipartUpload(
            pb.CreateMultipartUploadRequest(bucket=moto_bucket, key="k")
        )
        release = threading.Event()

        def stalls_after_one_chunk() -> Iterator[pb.UploadPartRequest]:
            yield header(moto_bucket, "k", upload.upload_id, 2 * 1024)
            yield data(b"y" * 1024)
            release.wait(10)

        started = time.monotonic()
        error = failure(lambda: stub.UploadPart(stalls_after_one_chunk()))
        release.set()
        assert time.monotonic() - started < 5
        assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert error_info(error).reason == "IDLE_TIMEOUT"
        assert retry_info(error) is not None

        def never_sends_a_header() -> Iterator[pb.UploadPartRequest]:
            release.wait(10)
            yield header(moto_bucket, "k", upload.upload_id, 1)

        release.clear()
        error = failure(lambda: stub.UploadPart(never_sends_a_header()))
        release.set()
        assert error_info(error).reason == "IDLE_TIMEOUT"
    parts = boto3.client("s3", endpoint_url=moto_endpoint, region_name="us-east-1").list_parts(
        Bucket=moto_bucket, Key="k", UploadId=upload.upload_id
    )
    assert parts.get("Parts", []) == []
    assert rejections(gateway)["IDLE_TIMEOUT"] == 2
    wait_for(lambda: inflight(gateway) == 0, "idle streams released")


def test_part_size_and_message_size_limits(
    start: Callable[..., GatewayThread], moto_bucket: str
) -> None:
    gateway = start(max_part_size=MiB, unknown_length_limit=MiB, max_message_size=128 * 1024)
    channel, stub = stub_for(gateway.address)
    with channel:
        error = failure(lambda: stub.UploadPart(iter([header(moto_bucket, "k", "u", MiB + 1)])))
        assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert error_info(error).reason == "PART_TOO_LARGE"
        assert retry_info(error) is None  # the same request can never fit
        upload = stub.CreateMultipartUpload(
            pb.CreateMultipartUploadRequest(bucket=moto_bucket, key="k")
        )
        big = [header(moto_bucket, "k", upload.upload_id, 256 * 1024), data(b"z" * 256 * 1024)]
        error = failure(lambda: stub.UploadPart(iter(big)))
        assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert rejections(gateway)["PART_TOO_LARGE"] == 1
    wait_for(lambda: inflight(gateway) == 0, "the oversized stream released")


def test_sse_c_keys_are_redacted_from_errors(
    start: Callable[..., GatewayThread], moto_bucket: str
) -> None:
    gateway = start()
    key = base64.b64encode(b"k" * 32).decode()
    channel, stub = stub_for(gateway.address)
    with channel:
        request = pb.CreateMultipartUploadRequest(
            bucket=moto_bucket,
            key="k",
            sse_customer_algorithm="AES256",
            sse_customer_key=key,
            sse_customer_key_md5="bm90LXRoZS1tZDU=",
        )
        error = failure(lambda: stub.CreateMultipartUpload(request))
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        everything = error.details() + repr(error.trailing_metadata())
        assert key not in everything and base64.b64decode(key).decode() not in everything


# --------------------------------------------------------------------------- hostile clients


def trickle(address: str, *, seconds: float, interval: float = 0.2) -> tuple[int | None, float]:
    """A slow-loris UploadPart over raw HTTP/2: it announces a 1000-byte gRPC message and sends
    one byte of it every ``interval`` seconds. Returns the grpc-status the gateway ended the
    stream with (None if it never did within ``seconds``) and when."""
    host, _, port = address.rpartition(":")
    connection = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    started = time.monotonic()
    with socket.create_connection((host, int(port)), timeout=5) as sock:
        connection.initiate_connection()
        stream = connection.get_next_available_stream_id()
        connection.send_headers(
            stream,
            [
                (":method", "POST"),
                (":scheme", "http"),
                (":path", "/gateway.v1.UploadService/UploadPart"),
                (":authority", address),
                ("content-type", "application/grpc"),
                ("te", "trailers"),
            ],
        )
        connection.send_data(stream, b"\x00" + (1000).to_bytes(4, "big"))
        sock.sendall(connection.data_to_send())
        sock.settimeout(interval)
        while time.monotonic() - started < seconds:
            try:
                received = sock.recv(65536)
            except TimeoutError:
                received = None
            if received == b"":
                return None, time.monotonic() - started
            for event in connection.receive_data(received) if received else ():
                if isinstance(event, (h2.events.TrailersReceived, h2.events.ResponseReceived)):
                    headers = dict(event.headers)
                    if b"grpc-status" in headers:
                        return int(headers[b"grpc-status"]), time.monotonic() - started
            with contextlib.suppress(h2.exceptions.StreamClosedError):
                connection.send_data(stream, b"x")
            sock.sendall(connection.data_to_send())
    return None, time.monotonic() - started


def test_slow_loris_streams_are_ended_and_others_are_served(
    start: Callable[..., GatewayThread], moto_bucket: str
) -> None:
    gateway = start(idle_timeout=1.0)
    results: list[tuple[int | None, float]] = []
    threads = [
        threading.Thread(target=lambda: results.append(trickle(gateway.address, seconds=10)))
        for _ in range(20)
    ]
    for thread in threads:
        thread.start()
    wait_for(lambda: inflight(gateway) == 20, "every trickling stream admitted")
    channel, stub = stub_for(gateway.address)
    with channel:
        upload = stub.CreateMultipartUpload(
            pb.CreateMultipartUploadRequest(bucket=moto_bucket, key="k")
        )
        parts = [header(moto_bucket, "k", upload.upload_id, 3), data(b"abc")]
        stub.UploadPart(iter(parts), timeout=5)  # served while the tricklers hold streams
        for thread in threads:
            thread.join(15)
        codes = {code for code, _ in results}
        assert codes == {grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]}, results
        assert max(seconds for _, seconds in results) < 5
        wait_for(lambda: inflight(gateway) == 0, "trickling streams released")
        stub.UploadPart(iter(parts), timeout=5)
    assert rejections(gateway)["IDLE_TIMEOUT"] == 20


def test_secrets_never_reach_logs_metrics_or_errors(tmp_path: Path, moto_endpoint: str) -> None:
    token = auth.generate_token()
    wrong_token = auth.generate_token()
    secret_key = f"secret-{uuid.uuid4().hex}"
    sse_key = bytes(range(32))
    sse_key_b64 = base64.b64encode(sse_key).decode()
    tokens = write_tokens(tmp_path / "tokens.yaml", alice=token)
    bucket = f"alice-{uuid.uuid4().hex[:16]}"
    boto3.client("s3", endpoint_url=moto_endpoint, region_name="us-east-1").create_bucket(
        Bucket=bucket
    )
    seen: list[str] = []
    environment = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": secret_key}
    with gateway_process(
        *("--s3-endpoint-url", moto_endpoint, "--log-level", "DEBUG"),
        *("--auth-tokens-file", str(tokens)),
        env=environment,
    ) as gateway:
        with grpc.insecure_channel(gateway.address) as channel:
            stub = pb_grpc.UploadServiceStub(channel)
            sse = {
                "sse_customer_algorithm": "AES256",
                "sse_customer_key": sse_key_b64,
                "sse_customer_key_md5": base64.b64encode(hashlib.md5(sse_key).digest()).decode(),
            }
            calls: list[Callable[[], Any]] = [
                lambda: stub.CreateMultipartUpload(
                    pb.CreateMultipartUploadRequest(bucket=bucket, key="k", **sse),
                    metadata=bearer(token),
                ),
                lambda: stub.CreateMultipartUpload(
                    pb.CreateMultipartUploadRequest(bucket=bucket, key="k", **sse),
                    metadata=bearer(wrong_token),
                ),
                lambda: stub.UploadPart(
                    iter(
                        [
                            pb.UploadPartRequest(
                                header=pb.UploadPartHeader(
                                    bucket=bucket,
                                    key="k",
                                    upload_id="no-such-upload",
                                    part_number=1,
                                    content_length=3,
                                    **sse,
                                )
                            ),
                            data(b"abc"),
                        ]
                    ),
                    metadata=bearer(token),
                ),
                lambda: stub.CreateMultipartUpload(
                    pb.CreateMultipartUploadRequest(
                        bucket=bucket, key="k", **{**sse, "sse_customer_key_md5": "AAAA"}
                    ),
                    metadata=bearer(token),
                ),
                lambda: stub.ListParts(
                    pb.ListPartsRequest(bucket=bucket, key="k", upload_id="x"),
                    metadata=[("authorization", f"Bearer {token} trailing-garbage")],
                ),
            ]
            for call in calls:
                try:
                    seen.append(repr(call()))
                except grpc.RpcError as error:
                    seen += [error.details() or "", repr(error.trailing_metadata()), repr(error)]
        metrics_port = next(
            int(m.group(1))
            for line in gateway.log
            if (m := re.search(r'"metrics_port": (\d+)', line))
        )
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10) as r:
            seen.append(r.read().decode())
    seen += gateway.log
    captured = "\n".join(seen)
    assert "UNAUTHENTICATED" in captured and "DEBUG" in captured  # the run really logged
    for name, secret in {
        "token": token,
        "wrong token": wrong_token,
        "AWS secret key": secret_key,
        "SSE-C key": sse_key_b64,
        "SSE-C key (raw)": sse_key.hex(),
    }.items():
        assert secret not in captured, f"the {name} leaked"
    assert "Signature=" not in captured


def test_plaintext_beyond_loopback_is_warned_about(tmp_path: Path) -> None:
    exposed = Settings(listen_address="0.0.0.0:50051", plaintext=True, allow_all=True)
    assert "PLAINTEXT" in (plaintext_warning(exposed) or "")
    assert plaintext_warning(Settings(listen_address="127.0.0.1:50051")) is None
    ca = CA()
    cert, key = ca.server_leaf().write(tmp_path, "server")
    tls = exposed.replace(plaintext=False, tls_cert_file=str(cert), tls_key_file=str(key))
    assert plaintext_warning(tls) is None


@pytest.mark.parametrize(
    ("variable", "content", "message"),
    [
        ("GATEWAY_POLICY_FILE", "version: 2\nprincipals: {}\n", "version"),
        ("GATEWAY_AUTH_TOKENS_FILE", "tokens:\n  - principal: a\n    sha256: nothex\n", "sha256"),
        ("GATEWAY_TLS_CERT_FILE", "not a certificate", "certificate"),
    ],
)
def test_bad_security_files_stop_the_start(
    tmp_path: Path, moto_endpoint: str, variable: str, content: str, message: str
) -> None:
    path = tmp_path / "file"
    path.write_text(content)
    environment = {**os.environ, variable: str(path), "GATEWAY_EMBEDDED_S3": "off"}
    if variable == "GATEWAY_TLS_CERT_FILE":
        environment["GATEWAY_TLS_KEY_FILE"] = str(path)
    result = subprocess.run(
        [
            *(sys.executable, "-m", "gateway", "serve", "--listen-address", "127.0.0.1:0"),
            *("--metrics-address=", "--s3-endpoint-url", moto_endpoint),
        ],
        env=environment,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2, result.stderr
    assert "configuration error" in result.stderr and message in result.stderr
    assert "Traceback" not in result.stderr


def test_certificate_rotation_keeps_streams_and_serves_the_new_certificate(
    start: Callable[..., GatewayThread], tmp_path: Path, moto_bucket: str, moto_endpoint: str
) -> None:
    old_ca, new_ca = CA("old CA"), CA("new CA")
    secret = tmp_path / "tls"  # laid out like a mounted Kubernetes Secret
    old_leaf = old_ca.server_leaf()
    swap_symlinked(secret, {"tls.crt": old_leaf.cert_pem, "tls.key": old_leaf.key_pem})
    gateway = start(tls_cert_file=str(secret / "tls.crt"), tls_key_file=str(secret / "tls.key"))

    def channel(ca: CA) -> grpc.Channel:
        return grpc.secure_channel(
            gateway.address,
            grpc.ssl_channel_credentials(ca.cert_pem),
            options=[("grpc.use_local_subchannel_pool", 1)],
        )

    request = pb.CreateMultipartUploadRequest(bucket=moto_bucket, key="k")
    body = os.urandom(3 * MiB)
    with channel(old_ca) as before:
        stub = pb_grpc.UploadServiceStub(before)
        upload = stub.CreateMultipartUpload(request)
        halfway = threading.Event()
        rotated = threading.Event()

        def messages() -> Iterator[pb.UploadPartRequest]:
            yield header(moto_bucket, "k", upload.upload_id, len(body))
            yield data(body[:MiB])
            halfway.set()
            rotated.wait(10)
            yield data(body[MiB:])

        in_flight = stub.UploadPart.future(messages(), timeout=30)
        assert halfway.wait(10)
        new_leaf = new_ca.server_leaf()
        swap_symlinked(secret, {"tls.crt": new_leaf.cert_pem, "tls.key": new_leaf.key_pem})
        with channel(new_ca) as after:
            pb_grpc.UploadServiceStub(after).CreateMultipartUpload(request, timeout=10)
        with channel(old_ca) as stale:
            error = failure(
                lambda: pb_grpc.UploadServiceStub(stale).CreateMultipartUpload(request, timeout=10)
            )
            assert error.code() == grpc.StatusCode.UNAVAILABLE
        rotated.set()
        etag = in_flight.result(30).etag
    assert etag.strip('"') == hashlib.md5(body).hexdigest()
    parts = boto3.client("s3", endpoint_url=moto_endpoint, region_name="us-east-1").list_parts(
        Bucket=moto_bucket, Key="k", UploadId=upload.upload_id
    )
    assert [p["Size"] for p in parts["Parts"]] == [len(body)]
    watched = {
        (sample.labels["file"], sample.labels["result"]): sample.value
        for family in gateway.gateway.metrics.registry.collect()
        for sample in family.samples
        if sample.name == "s3gateway_config_reloads_total"
    }
    assert watched[("tls", "success")] == 1


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--plaintext"], "GATEWAY_POLICY_FILE"),
        (["--allow-all"], "GATEWAY_PLAINTEXT"),
    ],
)
def test_serve_refuses_an_exposed_address_without_transport_and_authorization(
    flags: list[str], message: str
) -> None:
    """The refusal comes from the settings, before anything is bound."""
    result = subprocess.run(
        [sys.executable, "-m", "gateway", "serve", "--listen-address", "0.0.0.0:0", *flags],
        env={**os.environ, "GATEWAY_EMBEDDED_S3": "off"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2, result.stderr
    assert "is not a loopback address" in result.stderr and message in result.stderr
