"""``s3-upload-gateway serve`` as a process: embedded S3, configuration errors, shutdown."""

from __future__ import annotations

import hashlib
import re
import signal
import subprocess
import sys

import boto3
import grpc
import pytest

from gateway.v1 import upload_service_pb2 as pb
from gateway.v1 import upload_service_pb2_grpc as pb_grpc
from tests.gateway_process import GatewayProcess, gateway_process
from tests.helpers import part_stream

_EMBEDDED = re.compile(r"embedded S3 \(moto\) at (http://127\.0\.0\.1:\d+)")


async def upload_and_read_back(gateway: GatewayProcess, bucket: str) -> None:
    endpoint = _EMBEDDED.search("".join(gateway.log))
    assert endpoint, gateway.log
    data = b"hello through the gateway" * 1000
    async with grpc.aio.insecure_channel(gateway.address) as channel:
        stub = pb_grpc.UploadServiceStub(channel)  # type: ignore[call-overload]
        upload = await stub.CreateMultipartUpload(
            pb.CreateMultipartUploadRequest(bucket=bucket, key="hello.txt")
        )
        header = dict(
            bucket=bucket,
            key="hello.txt",
            upload_id=upload.upload_id,
            part_number=1,
            content_length=len(data),
        )
        part = await stub.UploadPart(part_stream(header, data))
        await stub.CompleteMultipartUpload(
            pb.CompleteMultipartUploadRequest(
                bucket=bucket,
                key="hello.txt",
                upload_id=upload.upload_id,
                parts=[pb.CompletedPart(etag=part.etag, part_number=1)],
            )
        )
    s3 = boto3.client("s3", endpoint_url=endpoint.group(1), region_name="us-east-1")
    body = s3.get_object(Bucket=bucket, Key="hello.txt")["Body"].read()
    assert hashlib.sha256(body).digest() == hashlib.sha256(data).digest()


async def test_embedded_s3_on_request() -> None:
    with gateway_process("--embedded-s3", "--embedded-bucket", "quickstart") as gateway:
        await upload_and_read_back(gateway, "quickstart")


async def test_embedded_s3_is_the_default_without_aws_configuration() -> None:
    unset = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")
    with gateway_process(unset=unset) as gateway:
        assert "serving against an embedded, in-memory S3" in "".join(gateway.log)
        await upload_and_read_back(gateway, "gateway-demo")


async def test_no_embedded_s3_when_credentials_exist() -> None:
    with gateway_process() as gateway:
        assert _EMBEDDED.search("".join(gateway.log)) is None


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("GATEWAY_S3_READ_TIMEOUT", "-1", "GATEWAY_S3_READ_TIMEOUT must be > 0"),
        ("GATEWAY_MAX_PART_SIZE", "lots", "is not a valid int"),
        ("GATEWAY_EMBEDDED_S3", "maybe", "is not a valid EmbeddedS3"),
        ("GATEWAY_S3_ADDRESSING_STYLE", "sideways", "GATEWAY_S3_ADDRESSING_STYLE must be one of"),
    ],
)
def test_bad_configuration_exits_2_with_one_clear_message(
    variable: str, value: str, message: str
) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "gateway", "serve"],
        env={**__import__("os").environ, variable: value},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_flags_override_variables() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "gateway", "serve", "--s3-read-timeout", "0"],
        env={**__import__("os").environ, "GATEWAY_S3_READ_TIMEOUT": "5"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "GATEWAY_S3_READ_TIMEOUT must be > 0" in result.stderr


def test_sigterm_stops_the_gateway(moto_endpoint: str) -> None:
    with gateway_process("--s3-endpoint-url", moto_endpoint) as gateway:
        gateway.process.send_signal(signal.SIGTERM)
        assert gateway.process.wait(30) == 0
    assert "stopped" in "".join(gateway.log)
