"""The Java example client (examples/java) against live gateways relaying to moto.

The client is built from the .proto with Debian's toolchain (protoc, grpc-java's plugin, javac and
the jars of libgrpc-java & co.; there is no Maven Central here). A module fixture installs the
packages with apt-get when a tool or jar is missing, then runs examples/java/build.sh into a
temporary directory; a failure to install or to build fails the tests, it never skips them.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import boto3
import grpc
import pytest
from botocore.config import Config
from google.protobuf import any_pb2, duration_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from gateway import checksums
from gateway.config import Settings
from gateway.security.auth import hash_token
from gateway.v1 import upload_service_pb2 as pb
from gateway.v1 import upload_service_pb2_grpc as pb_grpc
from tests.certs import CA
from tests.helpers import GatewayThread
from tests.toolchains import apt_install

# apt-get install, javac and the tests: well beyond the suite's default 300 s on a fresh machine.
pytestmark = pytest.mark.timeout(1200)

ROOT = Path(__file__).resolve().parent.parent
JAVA_EXAMPLE = ROOT / "examples" / "java"
MiB = 1024 * 1024
#: The moto gateway's part size (GATEWAY_WRITE_PART_SIZE's default).
PART_SIZE = 8 * MiB
TOKEN = "tok-" + "J4v4" * 10

#: Debian 12's packages for the build (shared/recipes/polyglot-clients.md, plus gson for
#: protobuf-java-util's JsonFormat and libprotobuf-dev for google/protobuf/*.proto).
PACKAGES = (
    "default-jdk-headless",
    "libgrpc-java",
    "libprotobuf-java",
    "libnetty-java",
    "libperfmark-java",
    "libgeronimo-annotation-1.3-spec-java",
    "libgoogle-gson-java",
    "protobuf-compiler-grpc-java-plugin",
    "protobuf-compiler",
    "libprotobuf-dev",
)
_JARS = Path("/usr/share/java")
#: What build.sh needs from those packages; any missing means: install them.
NEEDED = (
    Path("/usr/bin/grpc_java_plugin"),
    Path("/usr/include/google/protobuf/timestamp.proto"),
    *(
        _JARS / f"{name}.jar"
        for name in (
            "grpc-netty",
            "grpc-protobuf",
            "grpc-stub",
            "protobuf",
            "protobuf-util",
            "gson",
            "guava",
            "perfmark-api",
            "geronimo-annotation-1.3-spec",
            "netty-codec-http2",
            "netty-handler",
        )
    ),
)


def _missing() -> list[str]:
    tools = [tool for tool in ("javac", "java", "protoc") if shutil.which(tool) is None]
    return tools + [str(path) for path in NEEDED if not path.exists()]


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The built client's launcher (``OUT/client``), the toolchain installed if it was not."""
    if _missing():
        apt_install(PACKAGES, "the Java toolchain")
        if missing := _missing():
            pytest.fail(f"still missing after apt-get install: {', '.join(missing)}")
    out = tmp_path_factory.mktemp("java-client")
    built = subprocess.run(
        ["bash", str(JAVA_EXAMPLE / "build.sh"), str(out)],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    if built.returncode != 0:
        pytest.fail(
            f"examples/java/build.sh failed:\n{built.stdout[-4000:]}\n{built.stderr[-8000:]}"
        )
    launcher = out / "client"
    assert launcher.is_file()
    return launcher


def run(client: Path, *args: object, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(client), *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def ok(done: subprocess.CompletedProcess[str]) -> Any:
    """The JSON a successful run printed."""
    assert done.returncode == 0, done.stdout + done.stderr
    return json.loads(done.stdout)


def described_error(stderr: str) -> dict[str, Any]:
    """The JSON of the google.rpc.Status a failed run printed (after its one-line summary)."""
    lines = stderr.splitlines()
    start = lines.index("{")
    described: dict[str, Any] = json.loads("\n".join(lines[start:]))
    return described


def error_info(described: dict[str, Any]) -> dict[str, Any]:
    infos: list[dict[str, Any]] = [
        d for d in described["details"] if d["@type"].endswith("google.rpc.ErrorInfo")
    ]
    (info,) = infos
    return info


def crc32c(data: bytes) -> str:
    hasher = checksums.BY_NAME["CRC32C"].new()
    hasher.update(data)
    return checksums.encode(hasher.digest())


@pytest.fixture(scope="module")
def s3(moto_endpoint: str) -> Any:
    """moto_s3 without response checksum validation: without the optional crc32c package moto
    stores a CRC-32 (IEEE) as an object's CRC32C, which boto3 would refuse on reading it back."""
    config = Config(response_checksum_validation="when_required")
    return boto3.client("s3", endpoint_url=moto_endpoint, region_name="us-east-1", config=config)


def uploads_left(s3: Any, bucket: str) -> list[Any]:
    uploads: list[Any] = s3.list_multipart_uploads(Bucket=bucket).get("Uploads", [])
    return uploads


@pytest.fixture
def payload(tmp_path: Path) -> Path:
    """12 MiB + 12345 bytes: two parts for the gateway, of 8 MiB and the rest."""
    path = tmp_path / "payload.bin"
    path.write_bytes(os.urandom(12 * MiB + 12345))
    return path


def test_write_is_one_stream_with_crc32c(
    client: Path, gateway_address: str, moto_bucket: str, s3: Any, payload: Path
) -> None:
    key = f"java/{uuid.uuid4().hex}.bin"
    written = ok(run(client, "--endpoint", gateway_address, "write", payload, moto_bucket, key))
    data = payload.read_bytes()
    assert (written["bucket"], written["key"]) == (moto_bucket, key)
    assert written["size"] == str(len(data))  # int64 values are strings in JSON
    assert written["parts"] == 2
    assert written["etag"].startswith('"') and written["etag"].endswith('-2"')
    # The gateway computed this over the bytes and compared it with the client's finish value.
    assert written["computed_checksums"] == {"CRC32C": crc32c(data)}
    assert s3.get_object(Bucket=moto_bucket, Key=key)["Body"].read() == data
    assert uploads_left(s3, moto_bucket) == []


def test_a_resumable_write_dies_and_another_process_finishes_it(
    client: Path, gateway_address: str, moto_bucket: str, s3: Any, tmp_path: Path
) -> None:
    """The process stops after 12 MiB sent, and exits mid-stream once S3 holds a part, printing
    its latest token; ``resume TOKEN FILE`` finishes the write from the token alone."""
    key = f"java/{uuid.uuid4().hex}.bin"
    payload = tmp_path / "large.bin"
    payload.write_bytes(os.urandom(20 * MiB + 7))
    data = payload.read_bytes()
    cut = run(client, "--endpoint", gateway_address, "resumable", payload, moto_bucket, key,
              "--die-after-bytes", 12 * MiB)  # fmt: skip
    died = ok(cut)
    assert died["sent_bytes"] >= 12 * MiB
    assert 0 < died["persisted_size"] < len(data) and died["persisted_size"] % PART_SIZE == 0
    # The token of the progress message, newer than the one announced at the start.
    (line,) = cut.stderr.splitlines()
    assert line.startswith("client: resumable write: gw1.")
    assert died["write_token"].startswith("gw1.") and died["write_token"] != line.split()[-1]
    assert "Contents" not in s3.list_objects_v2(Bucket=moto_bucket, Prefix=key)

    written = ok(run(client, "--endpoint", gateway_address, "resume", died["write_token"], payload))
    assert (written["key"], written["size"]) == (key, str(len(data)))
    assert written["computed_checksums"]["CRC32C"] == crc32c(data)
    assert s3.get_object(Bucket=moto_bucket, Key=key)["Body"].read() == data
    assert uploads_left(s3, moto_bucket) == []
    # Resuming a finished write answers the object; it writes nothing again.
    again = ok(run(client, "--endpoint", gateway_address, "resume", died["write_token"], payload))
    assert again["etag"] == written["etag"]


def test_multipart_declares_each_part_crc32c(
    client: Path, gateway_address: str, moto_bucket: str, s3: Any, payload: Path
) -> None:
    key = f"java/{uuid.uuid4().hex}.bin"
    part_size = 5 * MiB
    done = ok(run(client, "--endpoint", gateway_address, "multipart", payload, moto_bucket, key,
                  "--part-size", part_size))  # fmt: skip
    data = payload.read_bytes()
    pieces = [data[i : i + part_size] for i in range(0, len(data), part_size)]
    assert [p["part_number"] for p in done["parts"]] == [1, 2, 3]
    for part, piece in zip(done["parts"], pieces, strict=True):
        assert part["size"] == str(len(piece))
        # Computed in Java, declared in the header, verified by the gateway before S3 kept it.
        assert part["declared_checksum_crc32c"] == crc32c(piece)
        assert part.get("checksum_crc32c", crc32c(piece)) == crc32c(piece)
    assert done["object"]["etag"].endswith('-3"')
    assert s3.get_object(Bucket=moto_bucket, Key=key)["Body"].read() == data
    assert uploads_left(s3, moto_bucket) == []


def test_an_unknown_upload_id_is_not_found_with_its_reason(
    client: Path, gateway_address: str, moto_bucket: str
) -> None:
    done = run(client, "--endpoint", gateway_address, "listparts", moto_bucket, "k", "no-such")
    assert done.returncode == 1
    assert done.stdout == ""
    assert done.stderr.startswith("client: NOT_FOUND (5): ")
    described = described_error(done.stderr)
    assert (described["code"], described["codeName"]) == (5, "NOT_FOUND")
    info = error_info(described)
    assert info["domain"] == "s3-upload-gateway"
    assert info["reason"] == "NO_SUCH_UPLOAD"
    assert info["metadata"]["operation"] == "ListParts"
    assert info["metadata"]["s3ErrorCode"] == "NoSuchUpload"


def test_usage_error_exits_2(client: Path) -> None:
    for args in ([], ["write", "only-a-file"], ["frobnicate"], ["--part-size", "x", "listparts"]):
        done = run(client, *args)
        assert done.returncode == 2, args
        assert "usage: client" in done.stderr
        assert done.stdout == ""


@pytest.fixture(scope="module")
def tls_gateway(
    moto_endpoint: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[GatewayThread, Path, Path]]:
    """A TLS gateway (certificate for 127.0.0.1) that knows TOKEN: it, its CA and a token file."""
    directory = tmp_path_factory.mktemp("java-tls")
    ca = CA("Java test CA")
    cert, key = ca.server_leaf().write(directory, "server")
    tokens = directory / "tokens.yaml"
    tokens.write_text(f"tokens:\n  - principal: java\n    sha256: {hash_token(TOKEN)}\n")
    token_file = directory / "java.token"
    token_file.write_text(TOKEN + "\n")
    settings = Settings(
        listen_address="127.0.0.1:0",
        metrics_address="",
        drain_delay=0,
        s3_endpoint_url=moto_endpoint,
        tls_cert_file=str(cert),
        tls_key_file=str(key),
        auth_tokens_file=str(tokens),
    )
    with GatewayThread(settings, ("testing", "testing")) as running:
        yield running, ca.write(directory, "ca"), token_file


def test_tls_and_a_bearer_token(
    client: Path,
    tls_gateway: tuple[GatewayThread, Path, Path],
    moto_bucket: str,
    s3: Any,
    tmp_path: Path,
) -> None:
    gateway, ca, token_file = tls_gateway
    data = os.urandom(MiB + 3)
    (tmp_path / "small.bin").write_bytes(data)
    connect = ["--endpoint", gateway.address, "--ca", ca]
    write = ["write", tmp_path / "small.bin", moto_bucket, "authed.bin"]

    refused = run(client, *connect, *write)
    assert refused.returncode == 1
    assert refused.stderr.startswith("client: UNAUTHENTICATED (16): ")
    assert described_error(refused.stderr)["codeName"] == "UNAUTHENTICATED"
    (tmp_path / "wrong.token").write_text("tok-" + "Z9y8" * 10)
    wrong = run(client, *connect, "--token-file", tmp_path / "wrong.token", *write)
    assert wrong.stderr.startswith("client: UNAUTHENTICATED (16): "), wrong.stderr
    assert "Contents" not in s3.list_objects_v2(Bucket=moto_bucket)

    written = ok(run(client, *connect, "--token-file", token_file, *write))
    assert written["size"] == str(len(data))
    assert "parts" not in written  # 0, one PutObject: JSON leaves out default values
    assert written["computed_checksums"] == {"CRC32C": crc32c(data)}
    assert s3.get_object(Bucket=moto_bucket, Key="authed.bin")["Body"].read() == data


class _Throttled(pb_grpc.UploadServiceServicer):
    """ListParts answers UNAVAILABLE with a RetryInfo of 1.5 s once, then a page."""

    def __init__(self) -> None:
        self.calls: list[float] = []

    def ListParts(self, request: pb.ListPartsRequest, context: grpc.ServicerContext) -> Any:
        self.calls.append(time.monotonic())
        if len(self.calls) == 1:
            info, retry = any_pb2.Any(), any_pb2.Any()
            info.Pack(error_details_pb2.ErrorInfo(reason="SLOW_DOWN", domain="s3-upload-gateway"))
            retry.Pack(
                error_details_pb2.RetryInfo(
                    retry_delay=duration_pb2.Duration(seconds=1, nanos=5 * 10**8)
                )
            )
            status = status_pb2.Status(
                code=code_pb2.UNAVAILABLE, message="S3 is throttling", details=[info, retry]
            )
            context.abort_with_status(rpc_status.to_status(status))
        return pb.ListPartsResponse(
            bucket=request.bucket,
            key=request.key,
            upload_id=request.upload_id,
            parts=[pb.Part(part_number=1, size=5, etag='"e"')],
        )


def test_unavailable_is_retried_after_the_retry_info_delay(client: Path) -> None:
    servicer = _Throttled()  # type: ignore[abstract]  # the RPCs it does not define: UNIMPLEMENTED
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    pb_grpc.add_UploadServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        done = run(client, "--endpoint", f"127.0.0.1:{port}", "listparts", "b", "k", "u")
    finally:
        server.stop(grace=None)
    listed = ok(done)
    assert listed["parts"] == [{"part_number": 1, "etag": '"e"', "size": "5"}]
    assert len(servicer.calls) == 2
    assert servicer.calls[1] - servicer.calls[0] >= 1.4
    (line,) = done.stderr.splitlines()
    assert "UNAVAILABLE (14): S3 is throttling; retrying in 1500 ms (RetryInfo" in line
