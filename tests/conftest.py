"""Shared fixtures: a real moto S3 server over HTTP and real gateways on free ports.

The gateway under test runs in a thread of its own with its own event loop, exactly as it runs in
production, so tests (async or not) and subprocesses reach it only through its socket.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Callable, Iterator

import boto3
import grpc
import pytest
from moto.server import ThreadedMotoServer

from gateway.config import Settings
from gateway.v1 import upload_service_pb2 as pb
from gateway.v1 import upload_service_pb2_grpc as pb_grpc
from tests.helpers import GatewayThread, S3Reader

_AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_REGION": "us-east-1",
    "AWS_CONFIG_FILE": os.devnull,
    "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
    "AWS_EC2_METADATA_DISABLED": "true",
}


@pytest.fixture(scope="session", autouse=True)
def _aws_environment() -> Iterator[None]:
    """No real AWS configuration ever leaks into a test; dummy credentials for the local stores."""
    saved = dict(os.environ)
    for name in list(os.environ):
        if name.startswith(("AWS_", "GATEWAY_")):
            del os.environ[name]
    os.environ.update(_AWS_ENV)
    yield
    os.environ.clear()
    os.environ.update(saved)


@pytest.fixture(scope="session")
def moto_endpoint(_aws_environment: None) -> Iterator[str]:
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture(scope="session")
def gateway_settings(moto_endpoint: str) -> Settings:
    return Settings(listen_address="127.0.0.1:0", s3_endpoint_url=moto_endpoint)


@pytest.fixture(scope="session")
def gateway(gateway_settings: Settings) -> Iterator[GatewayThread]:
    with GatewayThread(gateway_settings) as running:
        yield running


@pytest.fixture(scope="session")
def gateway_address(gateway: GatewayThread) -> str:
    return gateway.address


@pytest.fixture
def make_gateway(gateway_settings: Settings) -> Iterator[Callable[..., GatewayThread]]:
    """Start extra gateways with changed settings; all are stopped after the test."""
    started: list[GatewayThread] = []

    def make(**changes: object) -> GatewayThread:
        running = GatewayThread(gateway_settings.replace(**changes)).__enter__()
        started.append(running)
        return running

    yield make
    for running in started:
        running.__exit__(None, None, None)


@pytest.fixture(scope="session")
def s3_sync(moto_endpoint: str):  # type: ignore[no-untyped-def]
    return boto3.client("s3", endpoint_url=moto_endpoint, region_name="us-east-1")


@pytest.fixture
def s3(s3_sync) -> S3Reader:  # type: ignore[no-untyped-def]
    return S3Reader(s3_sync)


@pytest.fixture
def new_bucket(s3_sync) -> str:  # type: ignore[no-untyped-def]
    name = f"test-{uuid.uuid4().hex[:20]}"
    s3_sync.create_bucket(Bucket=name)
    return name


@pytest.fixture
async def stub(gateway_address: str) -> AsyncIterator[pb_grpc.UploadServiceAsyncStub]:
    async with grpc.aio.insecure_channel(
        gateway_address,
        options=[("grpc.max_send_message_length", 8 * 1024 * 1024)],
    ) as channel:
        yield pb_grpc.UploadServiceStub(channel)  # type: ignore[call-overload]


@pytest.fixture
async def upload(
    stub: pb_grpc.UploadServiceAsyncStub, new_bucket: str
) -> pb.CreateMultipartUploadResponse:
    """A fresh multipart upload (no checksum algorithm) in a fresh bucket."""
    response: pb.CreateMultipartUploadResponse = await stub.CreateMultipartUpload(
        pb.CreateMultipartUploadRequest(bucket=new_bucket, key="object.bin")
    )
    return response
