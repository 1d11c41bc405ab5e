"""The Node.js example client (examples/node) against a live gateway relaying to moto.

`npm ci` installs its pinned dependencies on first use (from the npm registry, by the lock file
only). Without node and npm the tests skip, except in CI (``CI=true``), where that is a failure.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import uuid
from pathlib import Path
from typing import Any

import boto3
import pytest

from tests.helpers import load_script

ROOT = Path(__file__).resolve().parent.parent
NODE_EXAMPLE = ROOT / "examples" / "node"
MiB = 1024 * 1024


check_proto = load_script("check_proto")


@pytest.fixture(scope="module")
def node() -> str:
    """The node binary, with examples/node's dependencies installed."""
    try:
        check_proto.npm_ci(NODE_EXAMPLE)
    except check_proto.ToolError as error:
        message = f"Node.js example not runnable: {error}"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    path = shutil.which("node")
    assert path is not None
    return path


@pytest.fixture(scope="module")
def s3(moto_endpoint: str) -> Any:
    return boto3.client("s3", endpoint_url=moto_endpoint, region_name="us-east-1")


def upload(node: str, *args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [node, str(NODE_EXAMPLE / "upload.js"), *map(str, args)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.fixture(scope="module")
def payload(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """About 12 MiB, not a multiple of anything: parts of 5, 5 and 2 MiB + 12345 bytes."""
    path = tmp_path_factory.mktemp("node") / "payload.bin"
    path.write_bytes(os.urandom(12 * MiB + 12345))
    return path


@pytest.mark.parametrize("algorithm", [None, "CRC32C"])
def test_upload_file_in_three_parts(
    node: str, gateway_address: str, moto_bucket: str, s3: Any, payload: Path, algorithm: str | None
) -> None:
    key = f"node/{uuid.uuid4().hex}.bin"
    extra = ["--checksum-algorithm", algorithm] if algorithm else []
    done = upload(
        node,
        payload,
        f"s3://{moto_bucket}/{key}",
        "--endpoint",
        gateway_address,
        "--part-size",
        "5MiB",
        *extra,
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["bucket"] == moto_bucket
    assert result["key"] == key
    assert result["etag"].startswith('"') and result["etag"].endswith('-3"')

    stored = s3.get_object(Bucket=moto_bucket, Key=key)
    assert stored["Body"].read() == payload.read_bytes()
    assert stored["ContentLength"] == payload.stat().st_size
    # With CRC32C every 1 MiB message carries its CRC-32C and every part's trailer the part's,
    # which the gateway verified; moto over http stores no part checksums, so there is none to
    # compare with here.
    assert s3.list_multipart_uploads(Bucket=moto_bucket).get("Uploads", []) == []


def test_error_is_decoded_and_exits_non_zero(
    node: str, gateway_address: str, payload: Path
) -> None:
    missing = f"missing-{uuid.uuid4().hex[:16]}"
    done = upload(node, payload, f"s3://{missing}/k", "--endpoint", gateway_address)
    assert done.returncode == 1
    assert done.stdout == ""
    first, _, rest = done.stderr.partition("\n")
    assert first.startswith("upload.js: NOT_FOUND (5): ")
    described = json.loads(rest)
    assert described["code"] == 5
    (info,) = [d for d in described["details"] if d["@type"].endswith("google.rpc.ErrorInfo")]
    assert info["domain"] == "s3-upload-gateway"
    assert info["reason"] == "NO_SUCH_BUCKET"
    assert info["metadata"]["operation"] == "CreateMultipartUpload"


def test_usage_error_exits_2(node: str) -> None:
    done = upload(node, "file.bin", "not-an-s3-url")
    assert done.returncode == 2
    assert "usage: upload.js" in done.stderr


#: uploadFile with every CRC-32C off by one bit: shows that the checksums are sent and checked.
_WRONG_CRC = """
const crc = require('./lib/crc32c');
const right = crc.crc32c;
crc.crc32c = (buf, seed) => (right(buf, seed) ^ 1) >>> 0;
const { createClient, uploadFile } = require('./lib/gateway');
const { describeError } = require('./lib/errors');
const [address, bucket, key, path] = process.argv.slice(1);
const client = createClient(address);
uploadFile(client, { bucket, key, path, partSize: 5 * 1024 * 1024, checksumAlgorithm: 'CRC32C' })
  .then(() => { console.log('{}'); process.exitCode = 3; })
  .catch((err) => { console.log(JSON.stringify(describeError(err))); })
  .finally(() => client.close());
"""


def test_crc32c_is_sent_and_a_wrong_one_refused(
    node: str, gateway_address: str, moto_bucket: str, s3: Any, payload: Path
) -> None:
    done = subprocess.run(
        [node, "-e", _WRONG_CRC, gateway_address, moto_bucket, "bad.bin", str(payload)],
        cwd=NODE_EXAMPLE,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    described = json.loads(done.stdout)
    assert described["codeName"] == "INVALID_ARGUMENT", described
    (info,) = [d for d in described["details"] if d["@type"].endswith("google.rpc.ErrorInfo")]
    assert info["reason"] == "CHECKSUM_MISMATCH"
    # The failed upload was aborted, and nothing was stored.
    assert s3.list_multipart_uploads(Bucket=moto_bucket).get("Uploads", []) == []
    assert "Contents" not in s3.list_objects_v2(Bucket=moto_bucket)
