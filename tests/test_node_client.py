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
from botocore.config import Config

from gateway import checksums
from tests.helpers import load_script

ROOT = Path(__file__).resolve().parent.parent
NODE_EXAMPLE = ROOT / "examples" / "node"
MiB = 1024 * 1024
#: The moto gateway's part size (GATEWAY_WRITE_PART_SIZE's default).
PART_SIZE = 8 * MiB


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
    # Without the optional crc32c package moto stores a CRC-32 (IEEE) as an object's CRC32C, which
    # boto3 would refuse on reading the object back.
    config = Config(response_checksum_validation="when_required")
    return boto3.client("s3", endpoint_url=moto_endpoint, region_name="us-east-1", config=config)


def upload(node: str, *args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [node, str(NODE_EXAMPLE / "upload.js"), *map(str, args)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def run_script(node: str, script: str, *args: str | Path) -> Any:
    """Run ``script`` in examples/node with ``args``; the JSON it printed."""
    done = subprocess.run(
        [node, "-e", script, *map(str, args)],
        cwd=NODE_EXAMPLE,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return json.loads(done.stdout)


@pytest.fixture(scope="module")
def payload(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """12 MiB + 12345 bytes: two parts for the gateway, of 8 MiB and the rest."""
    path = tmp_path_factory.mktemp("node") / "payload.bin"
    path.write_bytes(os.urandom(12 * MiB + 12345))
    return path


def digest_of(algorithm: str, data: bytes) -> str:
    hasher = checksums.BY_NAME[algorithm].new()
    hasher.update(data)
    return checksums.encode(hasher.digest())


def nothing_left(s3: Any, bucket: str) -> None:
    """No multipart upload and no object in ``bucket``."""
    assert s3.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []
    assert "Contents" not in s3.list_objects_v2(Bucket=bucket)


def error_info(described: dict[str, Any]) -> dict[str, Any]:
    (info,) = [d for d in described["details"] if d["@type"].endswith("google.rpc.ErrorInfo")]
    return info


@pytest.mark.parametrize("algorithm", [None, "SHA256"])
def test_write_file_as_one_stream(
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
        "--content-type",
        "application/x-test",
        *extra,
    )
    assert done.returncode == 0, done.stderr
    written = json.loads(done.stdout)
    data = payload.read_bytes()
    assert written["bucket"] == moto_bucket
    assert written["key"] == key
    assert written["size"] == str(len(data))  # int64 values are strings in JSON
    assert written["parts"] == 2
    assert written["etag"].startswith('"') and written["etag"].endswith('-2"')
    # The client sent this value in its finish; the gateway computed the same over the bytes
    # (a different one would have been CHECKSUM_MISMATCH, as below).
    name = algorithm or "CRC32C"
    assert written["computed_checksums"] == {name: digest_of(name, data)}

    stored = s3.get_object(Bucket=moto_bucket, Key=key)
    assert stored["Body"].read() == data
    assert stored["ContentType"] == "application/x-test"
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
    info = error_info(described)
    assert info["domain"] == "s3-upload-gateway"
    assert info["reason"] == "NO_SUCH_BUCKET"
    assert info["metadata"]["operation"] == "CreateMultipartUpload"


@pytest.mark.parametrize(
    "args",
    [
        ["file.bin", "not-an-s3-url"],
        ["file.bin", "s3://bucket/key", "--part-size", "5MiB"],  # the gateway's now
        ["file.bin", "s3://bucket/key", "--checksum-algorithm", "CRC33"],
    ],
)
def test_usage_error_exits_2(node: str, args: list[str]) -> None:
    done = upload(node, *args)
    assert done.returncode == 2
    assert "usage: upload.js" in done.stderr
    assert done.stdout == ""


#: writeFile with every CRC-32C off by one bit: shows that the checksums are sent and checked.
_WRONG_CRC = """
const crc = require('./lib/crc32c');
const right = crc.crc32c;
crc.crc32c = (buf, seed) => (right(buf, seed) ^ 1) >>> 0;
const { createClient, writeFile } = require('./lib/gateway');
const { describeError } = require('./lib/errors');
const [address, bucket, key, path] = process.argv.slice(1);
const client = createClient(address);
writeFile(client, { bucket, key, path })
  .then(() => { console.log('{}'); process.exitCode = 3; })
  .catch((err) => { console.log(JSON.stringify(describeError(err))); })
  .finally(() => client.close());
"""


def test_crc32c_is_sent_and_a_wrong_one_refused(
    node: str, gateway_address: str, moto_bucket: str, s3: Any, payload: Path
) -> None:
    described = run_script(node, _WRONG_CRC, gateway_address, moto_bucket, "bad.bin", payload)
    assert described["codeName"] == "INVALID_ARGUMENT", described
    assert error_info(described)["reason"] == "CHECKSUM_MISMATCH"
    nothing_left(s3, moto_bucket)


#: writeFile whose finish carries a wrong CRC-32C of the object, every message's being right.
_WRONG_FINISH = """
const crc = require('./lib/crc32c');
const right = crc.crc32cBase64;
crc.crc32cBase64 = (value) => right(value ^ 1);
const { createClient, writeFile } = require('./lib/gateway');
const { describeError } = require('./lib/errors');
const [address, bucket, key, path] = process.argv.slice(1);
const client = createClient(address);
writeFile(client, { bucket, key, path })
  .then(() => { console.log('{}'); process.exitCode = 3; })
  .catch((err) => { console.log(JSON.stringify(describeError(err))); })
  .finally(() => client.close());
"""


def test_wrong_object_checksum_commits_nothing(
    node: str, gateway_address: str, moto_bucket: str, s3: Any, payload: Path
) -> None:
    described = run_script(node, _WRONG_FINISH, gateway_address, moto_bucket, "bad.bin", payload)
    assert described["codeName"] == "INVALID_ARGUMENT", described
    info = error_info(described)
    assert info["reason"] == "CHECKSUM_MISMATCH"
    right = digest_of("CRC32C", payload.read_bytes())
    assert info["metadata"]["algorithm"] == "CRC32C"
    assert info["metadata"]["computed"] == right
    assert info["metadata"]["expected"] != right
    # The first part was in S3 before the finish arrived: the gateway aborted the upload.
    nothing_left(s3, moto_bucket)


#: writeFile reporting the progress messages it read.
_PROGRESS = """
const { createClient, writeFile } = require('./lib/gateway');
const [address, bucket, key, path] = process.argv.slice(1);
const client = createClient(address);
const progress = [];
const onProgress = (persisted, size) => progress.push([persisted, size]);
writeFile(client, { bucket, key, path, onProgress })
  .then((written) => console.log(JSON.stringify({ progress, written })))
  .finally(() => client.close());
"""


def test_progress_is_reported(
    node: str, gateway_address: str, moto_bucket: str, payload: Path
) -> None:
    result = run_script(node, _PROGRESS, gateway_address, moto_bucket, "progress.bin", payload)
    size = payload.stat().st_size
    assert result["written"]["size"] == str(size)
    progress = result["progress"]
    # One message per part committed, unless both landed together; the last covers the object.
    assert progress in ([[PART_SIZE, size], [size, size]], [[size, size]])


#: A resumable write whose process dies once S3 holds some of it: prints its latest token. Its
#: stream stops sending after 20 MiB (a write that never drains), so that it dies mid-object.
_CUT_OFF = """
const { createClient, writeFileResumable, MiB } = require('./lib/gateway');
const [address, bucket, key, path] = process.argv.slice(1);
const client = createClient(address);
const writeObject = client.WriteObject.bind(client);
client.WriteObject = (options) => {
  const call = writeObject(options);
  const write = call.write.bind(call);
  let sent = 0;
  call.write = (message) => {
    sent += message.data?.content.length ?? 0;
    return sent > 20 * MiB ? false : write(message);
  };
  return call;
};
const onToken = (token, persisted) => {
  if (persisted > 0) {
    console.log(JSON.stringify({ token, persisted }));
    process.exit(0); // the connection dies with the process, mid-write
  }
};
writeFileResumable(client, { bucket, key, path, onToken }).then(() => process.exit(3));
"""

#: Continue a resumable write from its token alone.
_RESUME = """
const { createClient, writeFileResumable } = require('./lib/gateway');
const [address, token, path] = process.argv.slice(1);
const client = createClient(address);
writeFileResumable(client, { token, path })
  .then((written) => console.log(JSON.stringify(written)))
  .finally(() => client.close());
"""


def test_a_resumable_write_continues_in_another_process(
    node: str, gateway_address: str, moto_bucket: str, s3: Any, tmp_path: Path
) -> None:
    """The process writing dies once a part is in S3, mid-object; another continues from the
    token alone, sending only what S3 does not hold."""
    key = f"node/{uuid.uuid4().hex}.bin"
    payload = tmp_path / "large.bin"
    payload.write_bytes(os.urandom(40 * MiB + 7))
    data = payload.read_bytes()
    cut = run_script(node, _CUT_OFF, gateway_address, moto_bucket, key, payload)
    assert 0 < cut["persisted"] < len(data) and cut["persisted"] % PART_SIZE == 0
    assert "Contents" not in s3.list_objects_v2(Bucket=moto_bucket, Prefix=key)
    written = run_script(node, _RESUME, gateway_address, cut["token"], payload)
    assert (written["key"], written["size"]) == (key, str(len(data)))
    assert written["computed_checksums"]["CRC32C"] == digest_of("CRC32C", data)
    assert s3.get_object(Bucket=moto_bucket, Key=key)["Body"].read() == data
    assert s3.list_multipart_uploads(Bucket=moto_bucket).get("Uploads", []) == []


def test_upload_js_resumable_prints_its_token_and_resume_returns_the_object(
    node: str, gateway_address: str, moto_bucket: str, s3: Any, payload: Path
) -> None:
    """``upload.js --resumable`` announces its token; ``--resume TOKEN`` of a write that is
    finished answers the object it wrote, writing nothing again."""
    key = f"node/{uuid.uuid4().hex}.bin"
    done = upload(node, payload, f"s3://{moto_bucket}/{key}", "--resumable",
                      "--endpoint", gateway_address)  # fmt: skip
    assert done.returncode == 0, done.stderr
    (line,) = done.stderr.splitlines()
    assert line.startswith("upload.js: resumable write: gw1.")
    token = line.split()[-1]
    first = json.loads(done.stdout)
    again = upload(node, payload, "--resume", token, "--endpoint", gateway_address)
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["etag"] == first["etag"]
    assert s3.get_object(Bucket=moto_bucket, Key=key)["Body"].read() == payload.read_bytes()
