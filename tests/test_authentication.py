"""Authentication: bearer tokens and their file, mTLS identities, the plaintext health port, and
the server certificate rotated under open streams."""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc

from gateway.units import MiB
from gateway.v1 import upload_service_pb2 as pb
from gateway.v1 import upload_service_pb2_grpc as pb_grpc
from tests.certs import CA, swap_symlinked
from tests.helpers import (
    POLICY,
    TOKEN_A,
    TOKEN_B,
    GatewayThread,
    bearer,
    data_message,
    error_info,
    failure,
    metric,
    sized_header,
    stub_for,
    wait_for,
    write_tokens,
)


def test_calls_without_valid_tokens_are_unauthenticated(
    make_moto_gateway: Callable[..., GatewayThread], tmp_path: Path, moto_bucket: str
) -> None:
    gateway = make_moto_gateway(
        auth_tokens_file=str(write_tokens(tmp_path / "t.yaml", alice=TOKEN_A))
    )
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
        parts = [sized_header(moto_bucket, "k", "u", 3), data_message(b"abc")]
        error = failure(lambda: stub.UploadPart(iter(parts), metadata=bearer("wrong")))
        assert error.code() == grpc.StatusCode.UNAUTHENTICATED
    assert metric(gateway, "s3gateway_auth_failures_total") == 6


def test_token_file_is_reloaded(
    make_moto_gateway: Callable[..., GatewayThread], tmp_path: Path, moto_bucket: str
) -> None:
    tokens = write_tokens(tmp_path / "t.yaml", alice=TOKEN_A)
    gateway = make_moto_gateway(auth_tokens_file=str(tokens))
    assert gateway.gateway.guard is not None
    token_file = gateway.gateway.guard.authenticator.tokens
    assert token_file is not None
    token_file.check_interval = 0.1
    request = pb.ListMultipartUploadsRequest(bucket=moto_bucket)
    channel, stub = stub_for(gateway.address)
    with channel:
        stub.ListMultipartUploads(request, metadata=bearer(TOKEN_A))
        write_tokens(tokens, bob=TOKEN_B)  # rotate: alice's token revoked, bob's added

        def bob_is_let_in() -> bool:
            try:
                stub.ListMultipartUploads(request, metadata=bearer(TOKEN_B))
            except grpc.RpcError:
                return False
            return True

        wait_for(bob_is_let_in, "the new token to take effect")
        error = failure(lambda: stub.ListMultipartUploads(request, metadata=bearer(TOKEN_A)))
        assert error.code() == grpc.StatusCode.UNAUTHENTICATED


def test_mtls_identity_is_the_principal_and_the_health_port_serves_only_health(
    make_moto_gateway: Callable[..., GatewayThread], tmp_path: Path, alice_bucket: str
) -> None:
    ca = CA()
    server_cert, server_key = ca.server_leaf().write(tmp_path, "server")
    client_ca = ca.write(tmp_path, "clients")
    alice_cert, alice_key = ca.issue("ignored-cn", uris=["alice"]).write(tmp_path, "alice")
    mallory_cert, mallory_key = ca.issue("mallory").write(tmp_path, "mallory")
    policy = tmp_path / "policy.yaml"
    policy.write_text(yaml.safe_dump(POLICY))
    gateway = make_moto_gateway(
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
        answer = health_pb2_grpc.HealthStub(plain).Check(health_pb2.HealthCheckRequest())
        assert answer.status == health_pb2.HealthCheckResponse.SERVING
        error = failure(lambda: pb_grpc.UploadServiceStub(plain).CreateMultipartUpload(request))
        assert error.code() == grpc.StatusCode.UNAUTHENTICATED
        assert error_info(error).reason == "TLS_REQUIRED"


def test_certificate_rotation_keeps_streams_and_serves_the_new_certificate(
    make_moto_gateway: Callable[..., GatewayThread], tmp_path: Path, moto_bucket: str, moto_s3: Any
) -> None:
    old_ca, new_ca = CA("old CA"), CA("new CA")
    secret = tmp_path / "tls"  # laid out like a mounted Kubernetes Secret
    old_leaf = old_ca.server_leaf()
    swap_symlinked(secret, {"tls.crt": old_leaf.cert_pem, "tls.key": old_leaf.key_pem})
    gateway = make_moto_gateway(
        tls_cert_file=str(secret / "tls.crt"), tls_key_file=str(secret / "tls.key")
    )

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
            yield sized_header(moto_bucket, "k", upload.upload_id, len(body))
            yield data_message(body[:MiB])
            halfway.set()
            rotated.wait(10)
            yield data_message(body[MiB:])

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
    parts = moto_s3.list_parts(Bucket=moto_bucket, Key="k", UploadId=upload.upload_id)
    assert [p["Size"] for p in parts["Parts"]] == [len(body)]
    reloads = metric(gateway, "s3gateway_config_reloads_total", file="tls", result="success")
    assert reloads == 1
