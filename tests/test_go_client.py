"""The Go example client (examples/go) against a live gateway relaying to moto.

The client is generated from the .proto and built with Debian's Go toolchain by
examples/go/build.sh (GOPATH mode: there is no Go module proxy here). When the toolchain is not
installed, the module fixture installs it with apt-get first. A failure to install or to build
fails the tests; it never skips them.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.config import Config

from gateway import checksums
from gateway.security.auth import hash_token
from gateway.security.write_tokens import MARKER_PREFIX
from tests.certs import CA
from tests.helpers import GatewayThread
from tests.toolchains import apt_install, installed

ROOT = Path(__file__).resolve().parent.parent
GO_EXAMPLE = ROOT / "examples" / "go"
#: Rebuilds reuse the compiled packages (.cache/ is ignored by git).
GOCACHE = ROOT / ".cache" / "go-build"
MiB = 1024 * 1024
#: The moto gateway's part size (GATEWAY_WRITE_PART_SIZE's default).
PART_SIZE = 8 * MiB

#: Debian 12's Go toolchain, gRPC and protobuf for Go (see shared recipe and examples/go/README.md).
PACKAGES = (
    "golang-go",
    "golang-google-grpc-dev",
    "golang-google-protobuf-dev",
    "golang-github-golang-protobuf-1-5-dev",
    "golang-google-genproto-dev",
    "protoc-gen-go",
    "protoc-gen-go-grpc",
    "protobuf-compiler",
)

TOKEN = "tok-" + "G0go" * 10

#: A first run installs the toolchain and compiles grpc-go: well beyond the default timeout.
pytestmark = pytest.mark.timeout(1200)


@pytest.fixture(scope="module")
def go_client(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The client binary, generated and built by examples/go/build.sh into a temporary directory."""
    if not installed(PACKAGES) or shutil.which("go") is None:
        apt_install(PACKAGES, "the Go toolchain")
        if shutil.which("go") is None:
            pytest.fail("go is not on PATH after apt-get install")
    binary = tmp_path_factory.mktemp("go") / "client"
    GOCACHE.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(
        ["sh", str(GO_EXAMPLE / "build.sh"), str(binary)],
        capture_output=True,
        text=True,
        env={**os.environ, "GOCACHE": str(GOCACHE)},
        timeout=900,
        check=False,
    )
    if done.returncode != 0 or not binary.is_file():
        pytest.fail(f"examples/go/build.sh failed (exit {done.returncode}):\n{done.stderr[-6000:]}")
    return binary


def run(
    go_client: Path, *args: str | Path, timeout: float = 180
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(go_client), *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def error_report(done: subprocess.CompletedProcess[str]) -> tuple[str, dict[str, Any]]:
    """The first stderr line after any retry notes, and the JSON of the error after it."""
    lines = done.stderr.splitlines(keepends=True)
    start = next(i for i, line in enumerate(lines) if line.startswith("{"))
    return lines[start - 1], json.loads("".join(lines[start:]))


def digest_of(algorithm: str, data: bytes) -> str:
    hasher = checksums.BY_NAME[algorithm].new()
    hasher.update(data)
    return checksums.encode(hasher.digest())


def uploads_in(s3: Any, bucket: str) -> list[Any]:
    uploads: list[Any] = s3.list_multipart_uploads(Bucket=bucket).get("Uploads", [])
    return uploads


@pytest.fixture(scope="module")
def s3_reader(moto_endpoint: str) -> Any:
    """A boto3 client to moto that does not validate the checksums it reads back: without the
    optional crc32c package moto stores a CRC-32 (IEEE) as an object's CRC32C (see
    tests/test_node_client.py)."""
    config = Config(response_checksum_validation="when_required")
    return boto3.client("s3", endpoint_url=moto_endpoint, region_name="us-east-1", config=config)


def read_back(s3_reader: Any, bucket: str, key: str) -> bytes:
    body: bytes = s3_reader.get_object(Bucket=bucket, Key=key)["Body"].read()
    return body


@pytest.fixture(scope="module")
def payload(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """12 MiB + 12345 bytes: two parts for the gateway, of 8 MiB and the rest."""
    path = tmp_path_factory.mktemp("go-payload") / "payload.bin"
    path.write_bytes(os.urandom(12 * MiB + 12345))
    return path


def test_the_sources_are_gofmt_clean(go_client: Path) -> None:
    gofmt = shutil.which("gofmt") or "/usr/lib/go/bin/gofmt"
    done = subprocess.run(
        [gofmt, "-l", str(GO_EXAMPLE)], capture_output=True, text=True, check=True
    )
    assert done.stdout == ""


def test_write_one_stream(
    go_client: Path,
    gateway_address: str,
    moto_bucket: str,
    moto_s3: Any,
    s3_reader: Any,
    payload: Path,
) -> None:
    key = f"go/{uuid.uuid4().hex}.bin"
    done = run(go_client, "write", payload, moto_bucket, key, "--endpoint", gateway_address,
               "--content-type", "application/x-test")  # fmt: skip
    assert done.returncode == 0, done.stderr
    written = json.loads(done.stdout)
    data = payload.read_bytes()
    assert (written["bucket"], written["key"]) == (moto_bucket, key)
    assert written["size"] == str(len(data))  # int64 values are strings in proto3 JSON
    assert written["parts"] == 2
    assert written["etag"].startswith('"') and written["etag"].endswith('-2"')
    # The finish carried the CRC32C Go computed; the gateway computed the same over the bytes (a
    # different one would have been CHECKSUM_MISMATCH).
    assert written["computed_checksums"] == {"CRC32C": digest_of("CRC32C", data)}
    stored = s3_reader.get_object(Bucket=moto_bucket, Key=key)
    assert stored["Body"].read() == data
    assert stored["ContentType"] == "application/x-test"
    assert uploads_in(moto_s3, moto_bucket) == []


def test_a_resumable_write_continues_in_another_process(
    go_client: Path,
    gateway_address: str,
    moto_bucket: str,
    moto_s3: Any,
    s3_reader: Any,
    tmp_path: Path,
) -> None:
    """The writing process stops sending after 20 MiB and exits once a part is in S3, printing
    the latest token; another process finishes the write from the token alone."""
    key = f"go/{uuid.uuid4().hex}.bin"
    path = tmp_path / "large.bin"
    path.write_bytes(os.urandom(40 * MiB + 7))
    data = path.read_bytes()
    cut = run(go_client, "resumable", path, moto_bucket, key, "--die-after-bytes", "20MiB",
              "--endpoint", gateway_address)  # fmt: skip
    assert cut.returncode == 3, cut.stderr
    assert cut.stderr.startswith("client: resumable write: gw1.")
    state = json.loads(cut.stdout)
    assert state["write_token"].startswith("gw1.")
    assert 0 < state["persisted_size"] < len(data)
    assert state["persisted_size"] % PART_SIZE == 0
    assert state["sent_bytes"] == 20 * MiB
    assert "Contents" not in moto_s3.list_objects_v2(Bucket=moto_bucket, Prefix=key)
    # The write's upload, parts kept, and its marker (for reap-uploads).
    keys = sorted(u["Key"] for u in uploads_in(moto_s3, moto_bucket))
    assert len(keys) == 2 and keys[0].startswith(MARKER_PREFIX) and keys[1] == key

    done = run(go_client, "resume", state["write_token"], path, "--endpoint", gateway_address)
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""  # no retry was needed
    written = json.loads(done.stdout)
    assert (written["key"], written["size"], written["parts"]) == (key, str(len(data)), 6)
    assert written["computed_checksums"]["CRC32C"] == digest_of("CRC32C", data)
    assert read_back(s3_reader, moto_bucket, key) == data
    assert uploads_in(moto_s3, moto_bucket) == []

    # The token of a finished write answers the object; nothing is written again.
    again = run(go_client, "resume", state["write_token"], path, "--endpoint", gateway_address)
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["etag"] == written["etag"]


def test_multipart_declares_each_parts_crc32c(
    go_client: Path,
    gateway_address: str,
    moto_bucket: str,
    moto_s3: Any,
    s3_reader: Any,
    payload: Path,
) -> None:
    key = f"go/{uuid.uuid4().hex}.bin"
    done = run(go_client, "multipart", payload, moto_bucket, key, "--part-size", "5MiB",
               "--endpoint", gateway_address)  # fmt: skip
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    data = payload.read_bytes()
    sizes = [5 * MiB, 5 * MiB, len(data) - 10 * MiB]
    assert [(p["part_number"], p["size"]) for p in result["parts"]] == list(
        zip([1, 2, 3], sizes, strict=True)
    )
    offset = 0
    for part, size in zip(result["parts"], sizes, strict=True):
        # What Go declared in the header is the CRC32C of the part's bytes; the gateway checked
        # it against the bytes before it let S3 complete the part.
        assert part["checksum_crc32c"] == digest_of("CRC32C", data[offset : offset + size])
        assert part["response"]["etag"].startswith('"')
        offset += size
    assert result["complete"]["key"] == key
    assert result["complete"]["etag"].endswith('-3"')
    assert read_back(s3_reader, moto_bucket, key) == data
    assert uploads_in(moto_s3, moto_bucket) == []


def test_listparts_of_an_unknown_upload_decodes_the_status(
    go_client: Path, gateway_address: str, moto_bucket: str
) -> None:
    done = run(go_client, "listparts", moto_bucket, "k", "no-such-upload",
               "--endpoint", gateway_address)  # fmt: skip
    assert done.returncode == 1
    assert done.stdout == ""
    first, described = error_report(done)
    assert first.startswith("client: NOT_FOUND (5): S3 ListParts failed: NoSuchUpload")
    assert done.stderr.startswith(first)  # NOT_FOUND is never retried
    assert (described["code"], described["code_name"]) == (5, "NOT_FOUND")
    assert described["reason"] == "NO_SUCH_UPLOAD"
    assert described["domain"] == "s3-upload-gateway"
    assert described["metadata"]["operation"] == "ListParts"
    assert described["metadata"]["s3ErrorCode"] == "NoSuchUpload"
    assert "retry_delay" not in described
    (info,) = described["details"]
    assert info["@type"] == "type.googleapis.com/google.rpc.ErrorInfo"
    assert info["reason"] == "NO_SUCH_UPLOAD"


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


def test_unavailable_is_retried_after_the_retry_info_delay(
    go_client: Path, make_moto_gateway: Callable[..., GatewayThread]
) -> None:
    """A gateway whose S3 refuses connections: UNAVAILABLE with a RetryInfo of 1 s, retried after
    that delay, then reported."""
    gateway = make_moto_gateway(endpoint=f"http://127.0.0.1:{_closed_port()}")
    started = time.monotonic()
    done = run(go_client, "listparts", "bucket", "k", "upload",
               "--endpoint", gateway.address, "--retries", "2")  # fmt: skip
    elapsed = time.monotonic() - started
    assert done.returncode == 1
    first, described = error_report(done)
    retries = [line for line in done.stderr.splitlines() if line.startswith("client: ListParts:")]
    assert retries == [
        "client: ListParts: UNAVAILABLE (S3_UNREACHABLE), retry 1 of 2 in 1s",
        "client: ListParts: UNAVAILABLE (S3_UNREACHABLE), retry 2 of 2 in 1s",
    ]
    assert elapsed >= 2
    assert first.startswith("client: UNAVAILABLE (14): ")
    assert (described["code_name"], described["reason"]) == ("UNAVAILABLE", "S3_UNREACHABLE")
    assert described["retry_delay"] == "1s"
    types = sorted(d["@type"].rsplit(".", 1)[-1] for d in described["details"])
    assert types == ["ErrorInfo", "RetryInfo"]


@pytest.fixture
def tls_gateway(
    make_moto_gateway: Callable[..., GatewayThread], tmp_path: Path
) -> tuple[GatewayThread, Path, Path]:
    """A gateway with TLS (a certificate for 127.0.0.1) that knows TOKEN; its CA and the token
    file."""
    ca = CA("Go test CA")
    cert, key = ca.server_leaf().write(tmp_path, "server")
    tokens = tmp_path / "tokens.yaml"
    tokens.write_text(f"tokens:\n  - principal: go\n    sha256: {hash_token(TOKEN)}\n")
    token_file = tmp_path / "go.token"
    token_file.write_text(TOKEN + "\n")
    gateway = make_moto_gateway(
        tls_cert_file=str(cert), tls_key_file=str(key), auth_tokens_file=str(tokens)
    )
    return gateway, ca.write(tmp_path, "ca"), token_file


def test_tls_and_bearer_token(
    go_client: Path,
    tls_gateway: tuple[GatewayThread, Path, Path],
    moto_bucket: str,
    moto_s3: Any,
    s3_reader: Any,
    payload: Path,
) -> None:
    gateway, ca, token_file = tls_gateway
    target: list[str | Path] = ["--endpoint", gateway.address, "--ca", ca]

    refused = run(go_client, "write", payload, moto_bucket, "refused.bin", *target)
    assert refused.returncode == 1
    first, described = error_report(refused)
    assert first.startswith("client: UNAUTHENTICATED (16): ")
    assert (described["code"], described["reason"]) == (16, "UNAUTHENTICATED")
    assert TOKEN not in refused.stderr

    done = run(
        go_client, "write", payload, moto_bucket, "go.bin", *target, "--token-file", token_file
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["size"] == str(payload.stat().st_size)
    assert read_back(s3_reader, moto_bucket, "go.bin") == payload.read_bytes()
    assert TOKEN not in done.stdout + done.stderr

    # Plaintext to a TLS port: the connection fails (UNAVAILABLE without a RetryInfo).
    plain = run(go_client, "listparts", moto_bucket, "k", "u", "--endpoint", gateway.address,
                "--token-file", token_file, "--retries", "0")  # fmt: skip
    assert plain.returncode == 1
    assert error_report(plain)[1]["code_name"] == "UNAVAILABLE"


def test_a_token_is_never_sent_in_plaintext_beyond_loopback(
    go_client: Path, tmp_path: Path
) -> None:
    token_file = tmp_path / "go.token"
    token_file.write_text(TOKEN + "\n")
    done = run(go_client, "listparts", "b", "k", "u", "--endpoint", "192.0.2.1:50051",
               "--token-file", token_file)  # fmt: skip
    assert done.returncode == 2
    assert "refusing to send a bearer token without TLS" in done.stderr
    assert TOKEN not in done.stderr


@pytest.mark.parametrize(
    "args",
    [
        [],
        ["upload", "file", "bucket", "key"],
        ["write", "file", "bucket"],
        ["resumable", "file", "bucket", "key", "--die-after-bytes", "lots"],
        ["listparts", "bucket", "key", "upload", "--no-such-flag"],
    ],
)
def test_usage_errors_exit_2(go_client: Path, args: list[str]) -> None:
    done = run(go_client, *args)
    assert done.returncode == 2
    assert "usage: client" in done.stderr
    assert done.stdout == ""
