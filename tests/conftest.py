"""Shared fixtures: real S3 servers over HTTP and real gateways on free ports.

The integration suite runs against every backend (``backend`` is parametrized): moto's S3 server,
fast and permissive, and a one-node Ceph RADOS Gateway, a real S3 implementation that enforces
signatures, Content-MD5 and SSE-C (tests/backends/rgw.py). Without apt the RGW half is skipped
loudly; in CI (``CI=true``) a missing RGW is a failure.

The gateway under test runs in a thread of its own with its own event loop, exactly as it runs in
production, so tests (async or not) and subprocesses reach it only through its socket.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import grpc
import pytest
from botocore.config import Config
from moto.server import ThreadedMotoServer

from gateway.config import Settings
from gateway.security.write_tokens import generate_key
from gateway.v1 import upload_service_pb2 as pb
from gateway.v1 import upload_service_pb2_grpc as pb_grpc
from tests.backends import rgw as rgw_backend
from tests.helpers import GatewayThread, S3Reader, create_bucket

BACKENDS = ("moto", "rgw")
RGW_CACHE = Path(os.environ.get("RGW_CACHE", Path(__file__).parent.parent / ".cache" / "rgw"))

_AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_REGION": "us-east-1",
    "AWS_CONFIG_FILE": os.devnull,
    "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
    "AWS_EC2_METADATA_DISABLED": "true",
}


@dataclass(frozen=True)
class Backend:
    """An S3 server the gateway relays to."""

    name: str
    endpoint: str
    credentials: tuple[str, str]
    ca_bundle: str | None = None

    def settings(self, **changes: Any) -> Settings:
        return Settings(
            listen_address="127.0.0.1:0",
            metrics_address="127.0.0.1:0",
            drain_delay=0,
            s3_endpoint_url=self.endpoint,
            s3_ca_bundle=self.ca_bundle,
            s3_addressing_style="path",
        ).replace(**changes)

    def client(self) -> Any:
        """A boto3 client straight to the store, to set up and to read back."""
        key_id, secret = self.credentials
        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=key_id,
            aws_secret_access_key=secret,
            region_name="us-east-1",
            verify=self.ca_bundle or True,
            config=Config(
                request_checksum_calculation="when_required",
                response_checksum_validation="when_required",
                s3={"addressing_style": "path"},
            ),
        )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Deselect backend-parametrized tests whose ``backends`` marker excludes the backend."""
    kept, dropped = [], []
    for item in items:
        marker = item.get_closest_marker("backends")
        callspec = getattr(item, "callspec", None)
        backend = callspec.params.get("backend") if callspec else None
        if marker and backend and backend not in marker.args:
            dropped.append(item)
        else:
            kept.append(item)
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = kept


_RGW_SKIPPED: list[str] = []


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if _RGW_SKIPPED:
        terminalreporter.section("Ceph RGW backend", sep="!", red=True, bold=True)
        terminalreporter.line(_RGW_SKIPPED[0], red=True, bold=True)
        terminalreporter.line("Only the moto half of the integration suite ran.", red=True)


@pytest.fixture(scope="session", autouse=True)
def _aws_environment() -> Iterator[None]:
    """No real AWS configuration ever leaks into a test; dummy credentials for moto."""
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
def rgw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[rgw_backend.RgwServer]:
    """A one-node Ceph RGW, provisioned from Debian's packages into RGW_CACHE on first use."""
    if shutil.which("apt-get") is None or not rgw_backend.SYSTEM_PYTHON.is_file():
        message = (
            "Ceph RGW backend unavailable (needs apt-get and Debian's python3): RGW TESTS SKIPPED"
        )
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        _RGW_SKIPPED.append(message)
        pytest.skip(message)
    with rgw_backend.rgw_server(RGW_CACHE, tmp_path_factory.mktemp("rgw")) as server:
        yield server


@pytest.fixture(scope="session", params=BACKENDS)
def backend(request: pytest.FixtureRequest, _aws_environment: None) -> Backend:
    if request.param == "moto":
        endpoint = request.getfixturevalue("moto_endpoint")
        return Backend("moto", endpoint, ("testing", "testing"))
    server: rgw_backend.RgwServer = request.getfixturevalue("rgw")
    return Backend(
        "rgw", server.http_endpoint, (server.access_key, server.secret_key), str(server.ca_bundle)
    )


@pytest.fixture(scope="session")
def gateway(backend: Backend) -> Iterator[GatewayThread]:
    with GatewayThread(backend.settings(), backend.credentials) as running:
        yield running


@pytest.fixture
def make_gateway(backend: Backend) -> Iterator[Callable[..., GatewayThread]]:
    """Start extra gateways for the backend with changed settings; all stop after the test."""
    started: list[GatewayThread] = []

    def make(credentials: tuple[str, str] | None = None, **changes: Any) -> GatewayThread:
        running = GatewayThread(backend.settings(**changes), credentials or backend.credentials)
        started.append(running.__enter__())
        return running

    yield make
    for running in started:
        running.__exit__(None, None, None)


@pytest.fixture(scope="session")
def s3_sync(backend: Backend) -> Any:
    return backend.client()


@pytest.fixture
def s3(s3_sync: Any) -> S3Reader:
    return S3Reader(s3_sync)


@pytest.fixture
def new_bucket(s3_sync: Any) -> str:
    return create_bucket(s3_sync)


@pytest.fixture
async def stub(gateway: GatewayThread) -> AsyncIterator[pb_grpc.UploadServiceAsyncStub]:
    async with grpc.aio.insecure_channel(
        gateway.address, options=[("grpc.max_send_message_length", 8 * 1024 * 1024)]
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


# Moto-only fixtures, for tests that compare with moto directly (the CLI against `aws s3api`).


@pytest.fixture(scope="session")
def moto_gateway(
    moto_endpoint: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GatewayThread]:
    """A gateway on moto with the default settings, resumable writes on (a key file of its own)."""
    keys = tmp_path_factory.mktemp("write-keys") / "write-keys.yaml"
    keys.write_text(f"signing: k1\nkeys:\n  k1: {generate_key()}\n")
    settings = Settings(
        listen_address="127.0.0.1:0",
        metrics_address="127.0.0.1:0",
        drain_delay=0,
        s3_endpoint_url=moto_endpoint,
        write_token_keys_file=str(keys),
    )
    with GatewayThread(settings, ("testing", "testing")) as running:
        yield running


@pytest.fixture(scope="session")
def gateway_address(moto_gateway: GatewayThread) -> str:
    return moto_gateway.address


@pytest.fixture(scope="session")
def moto_s3(moto_endpoint: str) -> Any:
    """A boto3 client straight to moto."""
    return boto3.client("s3", endpoint_url=moto_endpoint, region_name="us-east-1")


@pytest.fixture
def moto_bucket(moto_s3: Any) -> str:
    return create_bucket(moto_s3)


@pytest.fixture
def alice_bucket(moto_s3: Any) -> str:
    """A bucket in moto that :data:`tests.helpers.POLICY` grants to alice."""
    return create_bucket(moto_s3, "alice")


@pytest.fixture
def make_moto_gateway(moto_endpoint: str) -> Iterator[Callable[..., GatewayThread]]:
    """Start gateways without a metrics port in front of moto (or of ``endpoint``), with changed
    settings; all stop after the test."""
    started: list[GatewayThread] = []

    def make(endpoint: str = moto_endpoint, **changes: Any) -> GatewayThread:
        settings = Settings(
            listen_address="127.0.0.1:0",
            metrics_address="",
            drain_delay=0,
            s3_endpoint_url=endpoint,
            **changes,
        )
        running = GatewayThread(settings, ("testing", "testing"))
        started.append(running.__enter__())
        return running

    yield make
    for running in started:
        running.__exit__(None, None, None)
