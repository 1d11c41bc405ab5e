"""``s3-upload-gateway serve`` as a process: embedded S3, configuration errors, shutdown."""

from __future__ import annotations

import hashlib
import os
import re
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

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


def _serve(*args: str, env: dict[str, str] | None = None, unset: tuple[str, ...] = ()) -> Any:
    """``s3-upload-gateway serve ARGS`` to completion (it is expected not to start)."""
    environment = {k: v for k, v in os.environ.items() if k not in unset} | (env or {})
    return subprocess.run(
        [sys.executable, "-m", "gateway", "serve", "--drain-delay", "0", *args],
        env=environment,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def _error_lines(stderr: str) -> list[str]:
    """What the command said, without the gateway's JSON log lines."""
    return [line for line in stderr.splitlines() if line and not line.startswith("{")]


@pytest.fixture
def taken_port() -> Iterator[int]:
    """A loopback port another process listens on."""
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        yield holder.getsockname()[1]


@pytest.mark.parametrize(
    ("flag", "variable", "what"),
    [
        ("--listen-address", "GATEWAY_LISTEN_ADDRESS", "gRPC"),
        ("--metrics-address", "GATEWAY_METRICS_ADDRESS", "metrics"),
        ("--health-address", "GATEWAY_HEALTH_ADDRESS", "health"),
    ],
)
def test_an_address_in_use_is_one_line_and_exit_1(
    flag: str, variable: str, what: str, taken_port: int, moto_endpoint: str
) -> None:
    addresses = {
        "--listen-address": "127.0.0.1:0",
        "--metrics-address": "",
        "--health-address": "",
        flag: f"127.0.0.1:{taken_port}",
    }
    result = _serve(
        "--s3-endpoint-url",
        moto_endpoint,
        "--embedded-s3",
        "off",
        *(item for pair in addresses.items() for item in pair),
    )
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert _error_lines(result.stderr) == [
        f"s3-upload-gateway: cannot serve: cannot listen on 127.0.0.1:{taken_port} ({what}, "
        f"{flag} or {variable}): the address is already in use; stop what listens there or "
        "choose another address"
    ]


_CONFIGS = {
    "profile": ("", {"AWS_PROFILE": "nosuchprofile"}, "The config profile (nosuchprofile)"),
    "broken-file": ("[default\nregion = us-east-1\n", {}, "Unable to parse config file"),
    "no-credential-process": (
        "[default]\ncredential_process = /nonexistent/helper --flag\n",
        {},
        "/nonexistent/helper",
    ),
    "failing-credential-process": (
        "[default]\ncredential_process = /bin/false\n",
        {},
        "Error when retrieving credentials from custom-process",
    ),
    "missing-source-profile": (
        "[default]\nrole_arn = arn:aws:iam::123456789012:role/r\nsource_profile = gone\n",
        {},
        'The source_profile "gone" referenced in the profile "default" does not exist',
    ),
    "partial-credentials": (
        "[default]\naws_access_key_id = AKIDONLY\n",
        {},
        "Partial credentials found in config-file",
    ),
    "bad-region": (
        "[default]\nregion = not a region!\n",
        {},
        "Provided region_name 'not a region!' doesn't match a supported format",
    ),
}


@pytest.mark.parametrize("case", list(_CONFIGS))
def test_a_broken_aws_configuration_exits_2_with_one_line(case: str, tmp_path: Path) -> None:
    text, env, message = _CONFIGS[case]
    config = tmp_path / "config"
    config.write_text(text)
    result = _serve(
        *("--listen-address", "127.0.0.1:0", "--metrics-address", ""),
        *("--s3-endpoint-url", "http://127.0.0.1:9", "--embedded-s3", "off"),
        env={"AWS_CONFIG_FILE": str(config), **env},
        # Credentials and a region in the environment would hide the configuration file's.
        unset=("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_REGION", "AWS_DEFAULT_REGION"),
    )
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    [line] = _error_lines(result.stderr)
    assert line.startswith("s3-upload-gateway: configuration error: AWS configuration: ")
    assert message in line


def test_a_broken_aws_configuration_exits_2_in_embedded_s3_auto_mode(tmp_path: Path) -> None:
    """Without an S3 endpoint, the gateway looks for AWS credentials before anything else."""
    result = _serve(
        *("--listen-address", "127.0.0.1:0", "--metrics-address", ""),
        env={"AWS_PROFILE": "nosuchprofile"},
        unset=("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"),
    )
    assert result.returncode == 2, result.stderr
    [line] = _error_lines(result.stderr)
    assert "The config profile (nosuchprofile) could not be found" in line
