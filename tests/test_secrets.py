"""Secrets: tokens, the AWS secret key and SSE-C keys never reach logs, /metrics or error
details."""

from __future__ import annotations

import base64
import hashlib
import urllib.request
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc

from gateway.security import auth
from gateway.v1 import upload_service_pb2 as pb
from gateway.v1 import upload_service_pb2_grpc as pb_grpc
from tests.gateway_process import gateway_process
from tests.helpers import (
    GatewayThread,
    bearer,
    data_message,
    failure,
    logged_metrics_port,
    stub_for,
    write_tokens,
)


def test_sse_c_keys_are_redacted_from_errors(
    make_moto_gateway: Callable[..., GatewayThread], moto_bucket: str
) -> None:
    gateway = make_moto_gateway()
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


def test_secrets_never_reach_logs_metrics_or_errors(
    tmp_path: Path, moto_endpoint: str, alice_bucket: str
) -> None:
    token = auth.generate_token()
    wrong_token = auth.generate_token()
    secret_key = f"secret-{uuid.uuid4().hex}"
    sse_key = bytes(range(32))
    sse_key_b64 = base64.b64encode(sse_key).decode()
    tokens = write_tokens(tmp_path / "tokens.yaml", alice=token)
    bucket = alice_bucket
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
                            data_message(b"abc"),
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
        metrics_port = logged_metrics_port(gateway.log)
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
