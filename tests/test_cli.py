"""The ``aws s3api``-mirroring commands, compared with the real aws CLI.

Each comparison runs our CLI against the gateway and ``aws s3api`` (v1, from the test extras)
directly against the moto server behind it, on equivalent state, and compares what they print.
The in-process tests at the end check the pieces (shorthand, formatters, options) against awscli's
own code and model.
"""

from __future__ import annotations

import argparse
import base64
import datetime as dt
import hashlib
import io
import json
import os
import signal
import socket
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import boto3
import grpc
import pytest
from awscrt import checksums as crt
from google.rpc import status_pb2

from gateway.cli import build_parser
from gateway.cli.connection import Endpoint
from gateway.cli.s3api import COMMANDS, output, pagination, shorthand
from gateway.exits import UsageError
from gateway.v1 import upload_service_pb2 as pb
from tests.cli_helpers import (
    Certificate,
    aws_cli,
    gateway_cli,
    mask_enum_values,
    masked,
    output_of,
    parts_json,
    same_json,
    stand_in_gateway,
)

MiB = 1024 * 1024
KEY = "dir/object.bin"


@pytest.fixture(scope="module")
def s3_sync(moto_endpoint: str) -> Any:
    """The CLI is compared with ``aws s3api`` against moto, so these tests use moto only."""
    return boto3.client("s3", endpoint_url=moto_endpoint, region_name="us-east-1")


@pytest.fixture
def new_bucket(moto_bucket: str) -> str:
    return moto_bucket


@pytest.fixture
def part_file(tmp_path: Path) -> Path:
    path = tmp_path / "part.bin"
    path.write_bytes(os.urandom(5000))
    return path


@pytest.fixture
def other_bucket(s3_sync: Any) -> str:
    """A second fresh bucket, so that each CLI works in a bucket of its own."""
    name = f"test-{uuid.uuid4().hex[:20]}"
    s3_sync.create_bucket(Bucket=name)
    return name


@pytest.fixture
def new_upload(s3_sync: Any, new_bucket: str) -> Callable[[], str]:
    """Starts a fresh multipart upload of KEY in new_bucket (directly on moto)."""

    def start() -> str:
        upload_id: str = s3_sync.create_multipart_upload(Bucket=new_bucket, Key=KEY)["UploadId"]
        return upload_id

    return start


def _b64(digest: bytes) -> str:
    return base64.b64encode(digest).decode()


def _upload_part_options(data: bytes) -> dict[str, list[str]]:
    return {
        "no-checksum": [],
        "algorithm-crc32": ["--checksum-algorithm", "CRC32"],
        "algorithm-sha256": ["--checksum-algorithm", "SHA256"],
        "crc32c-value": ["--checksum-crc32-c", _b64(crt.crc32c(data).to_bytes(4, "big"))],
        "content-md5": ["--content-md5", _b64(hashlib.md5(data).digest())],
    }


# --- upload-part, output for output --------------------------------------------------------------


@pytest.mark.parametrize("case", list(_upload_part_options(b"")))
def test_upload_part_prints_what_aws_prints(
    case: str,
    part_file: Path,
    new_bucket: str,
    new_upload: Callable[[], str],
    gateway_address: str,
    moto_endpoint: str,
) -> None:
    options = _upload_part_options(part_file.read_bytes())[case]
    common = ["--bucket", new_bucket, "--key", KEY, "--part-number", "1", "--body", str(part_file)]
    ours = gateway_cli(
        "upload-part", *common, "--upload-id", new_upload(), *options, endpoint=gateway_address
    )
    theirs = aws_cli(
        "upload-part", *common, "--upload-id", new_upload(), *options, endpoint=moto_endpoint
    )
    # Same bytes, same options: ETag and checksums are equal, so the text is too, byte for byte
    # (including botocore's default CRC32 when no checksum option is given).
    assert output_of(ours) == output_of(theirs)
    assert ours.stdout == theirs.stdout


@pytest.mark.parametrize(
    "options",
    [
        ["--output", "text"],
        ["--output", "table"],
        ["--query", "ETag"],
        ["--query", "[ETag, ChecksumCRC32]", "--output", "text"],
    ],
    ids=["text", "table", "query", "query-text"],
)
def test_upload_part_formats_like_aws(
    options: list[str],
    part_file: Path,
    new_bucket: str,
    new_upload: Callable[[], str],
    gateway_address: str,
    moto_endpoint: str,
) -> None:
    common = ["--bucket", new_bucket, "--key", KEY, "--part-number", "2", "--body", str(part_file)]
    ours = gateway_cli(
        "upload-part", *common, "--upload-id", new_upload(), *options, endpoint=gateway_address
    )
    theirs = aws_cli(
        "upload-part", *common, "--upload-id", new_upload(), *options, endpoint=moto_endpoint
    )
    assert (ours.returncode, theirs.returncode) == (0, 0), ours.stderr + theirs.stderr
    assert ours.stdout == theirs.stdout


def test_upload_part_streams_a_6_mib_part(
    tmp_path: Path,
    new_bucket: str,
    new_upload: Callable[[], str],
    gateway_address: str,
    moto_endpoint: str,
    s3_sync: Any,
) -> None:
    big = tmp_path / "big.bin"
    big.write_bytes(os.urandom(6 * MiB + 123))
    common = ["--bucket", new_bucket, "--key", KEY, "--part-number", "1", "--body", str(big)]
    upload_id = new_upload()
    ours = gateway_cli(
        "upload-part", *common, "--upload-id", upload_id, "--debug", endpoint=gateway_address
    )
    theirs = aws_cli("upload-part", *common, "--upload-id", new_upload(), endpoint=moto_endpoint)
    assert ours.stdout == theirs.stdout
    assert "Sent 6291579 bytes in 7 data messages" in ours.stderr
    parts = s3_sync.list_parts(Bucket=new_bucket, Key=KEY, UploadId=upload_id)["Parts"]
    assert [(p["PartNumber"], p["Size"]) for p in parts] == [(1, 6 * MiB + 123)]


# --- skeletons -----------------------------------------------------------------------------------


@pytest.mark.parametrize("command", ["upload-part", "complete-multipart-upload"])
def test_generate_cli_skeleton_is_aws_skeleton(command: str, moto_endpoint: str) -> None:
    ours = gateway_cli(command, "--generate-cli-skeleton", endpoint="localhost:1")
    theirs = aws_cli(command, "--generate-cli-skeleton", endpoint=moto_endpoint)
    # Identical text, except that botocore picks a random value for each enum member.
    enums = {"ChecksumAlgorithm", "ChecksumType", "RequestPayer"}
    assert mask_enum_values(ours.stdout, enums) == mask_enum_values(theirs.stdout, enums)
    assert ours.returncode == 0


def test_generate_cli_skeleton_output_is_aws_sample(moto_endpoint: str) -> None:
    args = ["--bucket", "b", "--key", "k", "--upload-id", "u", "--part-number", "1"]
    ours = gateway_cli("upload-part", *args, "--generate-cli-skeleton", "output", endpoint="x:1")
    theirs = aws_cli(
        "upload-part", *args, "--generate-cli-skeleton", "output", endpoint="http://x:1"
    )
    assert (ours.returncode, ours.stdout) == (theirs.returncode, theirs.stdout)


# --- a whole multipart upload, command for command -----------------------------------------------


def _lifecycle(
    run: Callable[..., Any], endpoint: str, bucket: str, small: Path, big: Path
) -> list[Any]:
    """Create, upload two parts, list, complete; and abort a second upload. Returns the outputs."""
    common = ["--bucket", bucket, "--key", KEY]
    created = output_of(
        run("create-multipart-upload", *common, "--checksum-algorithm", "CRC32", endpoint=endpoint)
    )
    upload = [*common, "--upload-id", created["UploadId"]]
    first = output_of(
        run("upload-part", *upload, "--part-number", "1", "--body", str(big), endpoint=endpoint)
    )
    second = output_of(
        run("upload-part", *upload, "--part-number", "2", "--body", str(small), endpoint=endpoint)
    )
    listed = output_of(run("list-parts", *upload, endpoint=endpoint))
    uploads = output_of(run("list-multipart-uploads", "--bucket", bucket, endpoint=endpoint))
    parts = {1: first["ETag"], 2: second["ETag"]}
    completed = output_of(
        run(
            "complete-multipart-upload",
            *upload,
            "--multipart-upload",
            parts_json(parts),
            endpoint=endpoint,
        )
    )
    other = output_of(run("create-multipart-upload", *common, endpoint=endpoint))
    aborted = run(
        "abort-multipart-upload", *common, "--upload-id", other["UploadId"], endpoint=endpoint
    )
    return [
        created,
        first,
        second,
        listed,
        uploads,
        completed,
        (aborted.returncode, aborted.stdout),
    ]


def test_multipart_upload_commands_print_what_aws_prints(
    tmp_path: Path,
    part_file: Path,
    new_bucket: str,
    other_bucket: str,
    gateway_address: str,
    moto_endpoint: str,
) -> None:
    big = tmp_path / "big.bin"
    big.write_bytes(os.urandom(5 * MiB))
    ours = _lifecycle(gateway_cli, gateway_address, new_bucket, part_file, big)
    theirs = _lifecycle(aws_cli, moto_endpoint, other_bucket, part_file, big)
    # UploadId, LastModified, Initiated, Bucket and Location differ between the two uploads.
    assert json.dumps(masked(ours), indent=1) == json.dumps(masked(theirs), indent=1)
    assert list(ours[0]) == ["ChecksumAlgorithm", "Bucket", "Key", "UploadId"]  # headers first


def test_paginated_output_and_tokens_match_aws(
    new_bucket: str,
    other_bucket: str,
    s3_sync: Any,
    gateway_address: str,
    moto_endpoint: str,
) -> None:
    def upload_with_parts(bucket: str) -> str:
        upload_id: str = s3_sync.create_multipart_upload(Bucket=bucket, Key=KEY)["UploadId"]
        for number in (1, 2, 3):
            s3_sync.upload_part(
                Bucket=bucket, Key=KEY, UploadId=upload_id, PartNumber=number, Body=b"x" * number
            )
        return upload_id

    ours_args = ["--bucket", new_bucket, "--key", KEY, "--upload-id", upload_with_parts(new_bucket)]
    aws_args = [
        "--bucket",
        other_bucket,
        "--key",
        KEY,
        "--upload-id",
        upload_with_parts(other_bucket),
    ]
    for paging in (
        ["--max-items", "1"],
        ["--max-items", "2", "--page-size", "1"],
        ["--page-size", "2"],
    ):
        ours = gateway_cli("list-parts", *ours_args, *paging, endpoint=gateway_address)
        theirs = aws_cli("list-parts", *aws_args, *paging, endpoint=moto_endpoint)
        same_json(ours, theirs)  # NextToken included: it holds part numbers only
    first = output_of(
        gateway_cli("list-parts", *ours_args, "--max-items", "1", endpoint=gateway_address)
    )
    resume = ["--starting-token", first["NextToken"], "--max-items", "1"]
    ours = gateway_cli("list-parts", *ours_args, *resume, endpoint=gateway_address)
    theirs = aws_cli("list-parts", *aws_args, *resume, endpoint=moto_endpoint)
    same_json(ours, theirs)
    assert [p["PartNumber"] for p in output_of(ours)["Parts"]] == [2]
    query = ["--query", "Parts[].[PartNumber, Size]", "--output", "text", "--page-size", "1"]
    ours = gateway_cli("list-parts", *ours_args, *query, endpoint=gateway_address)
    theirs = aws_cli("list-parts", *aws_args, *query, endpoint=moto_endpoint)
    assert ours.stdout == theirs.stdout == "1\t1\n2\t2\n3\t3\n"


def test_manual_paging_prints_the_raw_page_like_aws(
    new_bucket: str, other_bucket: str, s3_sync: Any, gateway_address: str, moto_endpoint: str
) -> None:
    def upload_with_parts(bucket: str) -> list[str]:
        upload_id: str = s3_sync.create_multipart_upload(Bucket=bucket, Key=KEY)["UploadId"]
        for number in (1, 2):
            s3_sync.upload_part(
                Bucket=bucket, Key=KEY, UploadId=upload_id, PartNumber=number, Body=b"x"
            )
        return ["--bucket", bucket, "--key", KEY, "--upload-id", upload_id]

    ours_args, aws_args = upload_with_parts(new_bucket), upload_with_parts(other_bucket)
    # --max-parts (S3's own paging option) turns auto-pagination off, as in the aws CLI.
    ours = gateway_cli("list-parts", *ours_args, "--max-parts", "1", endpoint=gateway_address)
    theirs = aws_cli("list-parts", *aws_args, "--max-parts", "1", endpoint=moto_endpoint)
    same_json(ours, theirs)
    assert output_of(ours)["IsTruncated"] is True
    clash = gateway_cli(
        "list-parts", *ours_args, "--no-paginate", "--max-items", "1", endpoint=gateway_address
    )
    assert clash.returncode == 252
    assert (
        "Cannot specify --no-paginate along with pagination arguments: --max-items" in clash.stderr
    )


def test_empty_markers_print_as_aws_prints_them(
    new_bucket: str, s3_sync: Any, gateway_address: str, moto_endpoint: str
) -> None:
    """moto sends an empty KeyMarker and UploadIdMarker, as S3 does; one page prints them."""
    s3_sync.create_multipart_upload(Bucket=new_bucket, Key=KEY)
    for options in (["--no-paginate"], ["--max-uploads", "5"], []):
        args = ["list-multipart-uploads", "--bucket", new_bucket, *options]
        ours = gateway_cli(*args, endpoint=gateway_address)
        theirs = aws_cli(*args, endpoint=moto_endpoint)
        assert ours.stdout == theirs.stdout, options
        if options:  # one page, printed whole
            assert (output_of(ours)["KeyMarker"], output_of(ours)["UploadIdMarker"]) == ("", "")


# --- global options ------------------------------------------------------------------------------


def test_table_colours_are_aws_colours(
    new_bucket: str, s3_sync: Any, gateway_address: str, moto_endpoint: str
) -> None:
    upload_id = s3_sync.create_multipart_upload(Bucket=new_bucket, Key=KEY)["UploadId"]
    for number in (1, 2):
        s3_sync.upload_part(
            Bucket=new_bucket, Key=KEY, UploadId=upload_id, PartNumber=number, Body=b"x"
        )
    args = ["list-parts", "--bucket", new_bucket, "--key", KEY, "--upload-id", upload_id]
    for color in ("on", "off", "auto"):
        options = ["--output", "table", "--color", color]
        ours = gateway_cli(*args, *options, endpoint=gateway_address)
        theirs = aws_cli(*args, *options, endpoint=moto_endpoint)
        assert (ours.returncode, ours.stdout) == (0, theirs.stdout), color
        # Not a terminal: "auto" is "off".
        assert ("\x1b[1m\x1b[34m" in ours.stdout) == (color == "on")


def test_aws_global_options_are_accepted(
    new_bucket: str, s3_sync: Any, gateway_address: str, moto_endpoint: str
) -> None:
    """Options pasted from an aws command line work, and change nothing the gateway decides."""
    upload_id = s3_sync.create_multipart_upload(Bucket=new_bucket, Key=KEY)["UploadId"]
    args = ["list-parts", "--bucket", new_bucket, "--key", KEY, "--upload-id", upload_id]
    pasted = [
        *("--region", "eu-west-3", "--profile", "production", "--no-cli-pager"),
        *("--color", "off", "--cli-read-timeout", "30", "--cli-connect-timeout", "5"),
        "--no-paginate",
    ]
    ours = gateway_cli(*args, *pasted, endpoint=gateway_address)
    theirs = aws_cli(*args, "--region", "eu-west-3", "--no-paginate", endpoint=moto_endpoint)
    assert ours.returncode == 0, ours.stderr
    assert ours.stdout == theirs.stdout
    assert "IsTruncated" in output_of(ours)  # one raw page, not the paginated whole


def test_help_says_what_region_and_profile_mean_here() -> None:
    result = gateway_cli("list-parts", "--help", endpoint=None)
    text = " ".join(result.stdout.split())
    for option in ("--region", "--profile", "--color", "--no-cli-pager", "--no-paginate"):
        assert option in text, option
    assert "the gateway holds the AWS credentials" in text


# --- errors --------------------------------------------------------------------------------------


def test_s3_error_is_reported_like_aws(
    new_bucket: str, gateway_address: str, moto_endpoint: str
) -> None:
    args = ["--bucket", new_bucket, "--key", KEY, "--upload-id", "bogus"]
    ours = gateway_cli("abort-multipart-upload", *args, endpoint=gateway_address)
    theirs = aws_cli("abort-multipart-upload", *args, endpoint=moto_endpoint)
    # moto answers NoSuchUpload here as S3 does; the gateway relays S3's code and message, so the
    # two stderr are identical. Exit codes: ours is the aws CLI v2's 254 for a service error;
    # the aws CLI v1 of the test environment exits 255 for every error.
    assert ours.stderr.startswith("\nAn error occurred (NoSuchUpload) when calling the ")
    assert ours.stderr == theirs.stderr
    assert (ours.returncode, theirs.returncode) == (254, 255)
    assert ours.stdout == theirs.stdout == ""


@pytest.mark.parametrize(
    ("options", "reason"),
    [(["--checksum-crc32", "AAAAAA=="], "CHECKSUM_MISMATCH"), (["--content-length", "10"], "")],
    ids=["checksum-mismatch", "length-mismatch"],
)
def test_gateway_error_is_reported_with_its_reason(
    options: list[str],
    reason: str,
    part_file: Path,
    new_bucket: str,
    new_upload: Callable[[], str],
    gateway_address: str,
) -> None:
    args = ["--bucket", new_bucket, "--key", KEY, "--upload-id", new_upload(), "--part-number", "1"]
    ours = gateway_cli(
        "upload-part", *args, "--body", str(part_file), *options, endpoint=gateway_address
    )
    assert ours.returncode == 254
    assert ours.stderr.startswith(f"\nAn error occurred ({reason}")
    assert "when calling the UploadPart operation: " in ours.stderr


def test_missing_required_option_is_a_usage_error(moto_endpoint: str) -> None:
    args = ["--key", KEY, "--upload-id", "x"]
    ours = gateway_cli("abort-multipart-upload", *args, endpoint="localhost:1")
    theirs = aws_cli("abort-multipart-upload", *args, endpoint=moto_endpoint)
    # Ours exits with the aws CLI v2's 252; the aws CLI v1 leaves argparse's 2.
    assert (ours.returncode, theirs.returncode) == (252, 2)
    for result in (ours, theirs):
        assert result.stderr.endswith("error: the following arguments are required: --bucket\n")


@pytest.mark.parametrize(
    "args",
    [
        ["--part-number", "one"],
        ["--part-number", "1", "--body", "/nonexistent/part"],
        ["--part-number", "1", "--checksum-algorithm", "NOPE"],
        ["--part-number", "1", "--bogus"],
        ["--part-number", "1", "--cli-input-json", "{bad"],
        ["--part-number", "1", "--cli-input-json", '{"Nope": 1}'],
        ["--part-number", "1", "--query", "[bad"],
    ],
    ids=["int", "body", "enum", "unknown-option", "json", "json-member", "query"],
)
def test_bad_input_exits_252_without_calling(args: list[str], part_file: Path) -> None:
    common = ["--bucket", "b", "--key", "k", "--upload-id", "u", "--body", str(part_file)]
    # The endpoint is unreachable: a usage error must be found before any connection.
    result = gateway_cli("upload-part", *common, *args, endpoint="127.0.0.1:1")
    assert result.returncode == 252, result.stderr
    assert result.stdout == ""


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def test_unreachable_gateway_exits_255_like_aws() -> None:
    port = _closed_port()
    args = ["--bucket", "b", "--key", "k", "--upload-id", "u"]
    ours = gateway_cli("abort-multipart-upload", *args, endpoint=f"127.0.0.1:{port}")
    theirs = aws_cli(
        "abort-multipart-upload", *args, endpoint=f"http://127.0.0.1:{port}", max_attempts=1
    )
    url = f"http://127.0.0.1:{port}/gateway.v1.UploadService/AbortMultipartUpload"
    assert (ours.returncode, ours.stderr) == (
        255,
        f'\nCould not connect to the endpoint URL: "{url}"\n',
    )
    assert theirs.returncode == 255
    assert theirs.stderr.startswith('\nCould not connect to the endpoint URL: "')


def test_endpoint_url_defaults_to_the_environment() -> None:
    args = ["--bucket", "b", "--key", "k", "--upload-id", "u"]
    with stand_in_gateway(None) as port:
        env = {"GATEWAY_ENDPOINT_URL": f"http://127.0.0.1:{port}"}
        result = gateway_cli("abort-multipart-upload", *args, endpoint=None, env=env)
    assert (result.returncode, output_of(result)) == (0, {"RequestCharged": "requester"})


@pytest.fixture
def silent_listener() -> Iterator[int]:
    """A TCP port that accepts connections and never speaks."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


def test_connect_and_read_timeouts(silent_listener: int) -> None:
    args = ["--bucket", "b", "--key", "k"]
    slow = gateway_cli(
        "abort-multipart-upload",
        *args,
        "--upload-id",
        "u",
        "--cli-connect-timeout",
        "0.5",
        endpoint=f"127.0.0.1:{silent_listener}",
    )
    assert slow.returncode == 255
    assert slow.stderr.startswith('\nConnect timeout on endpoint URL: "http://127.0.0.1:')
    with stand_in_gateway(None) as port:
        late = gateway_cli(
            "abort-multipart-upload",
            *args,
            "--upload-id",
            "slow",
            "--cli-read-timeout",
            "0.3",
            endpoint=f"http://127.0.0.1:{port}",
        )
    assert late.returncode == 255
    assert late.stderr.startswith('\nRead timeout on endpoint URL: "http://127.0.0.1:')


def test_ctrl_c_exits_130_like_aws() -> None:
    """SIGINT while a call waits for its answer: as the aws CLI, a newline on stdout, 130."""
    args = ["--bucket", "b", "--key", "k", "--upload-id", "slow"]
    with stand_in_gateway(None) as port:
        command = [sys.executable, "-m", "gateway", "abort-multipart-upload", *args]
        process = subprocess.Popen(
            [*command, "--endpoint-url", f"127.0.0.1:{port}", "--debug"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert process.stderr is not None
        for line in process.stderr:  # --debug logs the call before it waits for the answer
            if "Calling http://" in line:
                break
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=15)
    assert process.returncode == 130, err
    assert out == "\n"
    assert "Traceback" not in err


# --- inputs: shorthand, JSON, files, SSE-C -------------------------------------------------------


def test_shorthand_json_and_cli_input_json(
    tmp_path: Path, part_file: Path, new_bucket: str, gateway_address: str, s3_sync: Any
) -> None:
    request = tmp_path / "create.json"
    request.write_text(json.dumps({"Bucket": new_bucket, "Key": "ignored", "ContentType": "a/b"}))
    created = output_of(
        gateway_cli(
            "create-multipart-upload",
            "--cli-input-json",
            f"file://{request}",
            "--key",
            KEY,
            "--metadata",
            'color=blue,note="a, b"',
            endpoint=gateway_address,
        )
    )
    upload = ["--bucket", new_bucket, "--key", KEY, "--upload-id", created["UploadId"]]
    part = output_of(
        gateway_cli(
            "upload-part",
            *upload,
            "--part-number",
            "1",
            "--body",
            str(part_file),
            endpoint=gateway_address,
        )
    )
    parts = f"Parts=[{{ETag={part['ETag']},PartNumber=1}}]"
    completed = gateway_cli(
        "complete-multipart-upload",
        *upload,
        "--multipart-upload",
        parts,
        endpoint=gateway_address,
    )
    assert output_of(completed)["Key"] == KEY
    head = s3_sync.head_object(Bucket=new_bucket, Key=KEY)
    assert head["Metadata"] == {"color": "blue", "note": "a, b"}
    assert head["ContentType"] == "a/b"
    assert head["ContentLength"] == part_file.stat().st_size


def test_sse_customer_key_is_encoded_like_aws_and_never_logged(
    new_bucket: str, gateway_address: str
) -> None:
    key = "0123456789abcdef0123456789abcdef"
    result = gateway_cli(
        "create-multipart-upload",
        "--bucket",
        new_bucket,
        "--key",
        KEY,
        "--debug",
        "--sse-customer-algorithm",
        "AES256",
        "--sse-customer-key",
        key,
        endpoint=gateway_address,
    )
    assert result.returncode == 0, result.stderr
    # As botocore's sse_md5 handler: the raw key is sent base64-encoded, with its MD5.
    assert f'sse_customer_key_md5: "{_b64(hashlib.md5(key.encode()).digest())}"' in result.stderr
    assert key not in result.stderr
    assert _b64(key.encode()) not in result.stderr
    assert "*** redacted ***" in result.stderr


# --- TLS -----------------------------------------------------------------------------------------


def test_https_with_ca_bundle_and_without_verification(tmp_path: Path) -> None:
    args = ["--bucket", "b", "--key", "k", "--upload-id", "u"]
    matching = Certificate.self_signed("localhost", "127.0.0.1")
    with stand_in_gateway(matching) as port:
        endpoint = f"https://127.0.0.1:{port}"
        trusted = gateway_cli(
            "abort-multipart-upload",
            *args,
            "--ca-bundle",
            str(matching.write(tmp_path)),
            endpoint=endpoint,
        )
        untrusted = gateway_cli("abort-multipart-upload", *args, endpoint=endpoint)
    assert (trusted.returncode, output_of(trusted)) == (0, {"RequestCharged": "requester"})
    assert untrusted.returncode == 255
    # (grpc-core may log the failed handshake to stderr first: GRPC_VERBOSITY is the process's.)
    assert f"\nSSL validation failed for {endpoint}/gateway.v1." in untrusted.stderr
    assert "CERTIFICATE_VERIFY_FAILED" in untrusted.stderr
    # A certificate for another name: --no-verify-ssl trusts it anyway, under its own name.
    with stand_in_gateway(Certificate.self_signed("gateway.internal")) as port:
        unverified = gateway_cli(
            "abort-multipart-upload", *args, "--no-verify-ssl", endpoint=f"https://127.0.0.1:{port}"
        )
    assert (unverified.returncode, output_of(unverified)) == (0, {"RequestCharged": "requester"})


# --- the pieces, in process ----------------------------------------------------------------------


def _parser_options() -> dict[str, set[str]]:
    parser = build_parser()
    subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return {name: set(sub._option_string_actions) for name, sub in subparsers.choices.items()}


def _awscli_s3_model() -> dict[str, Any]:
    """The S3 model the installed aws CLI was built with (it ships its own botocore copy)."""
    import awscli  # type: ignore[import-untyped]

    vendored = Path(awscli.__file__).parent / "botocore/data/s3/2006-03-01/service-2.json"
    if not vendored.exists():
        pytest.skip("this awscli does not ship its own botocore")
    model: dict[str, Any] = json.loads(vendored.read_text())
    return model


def test_every_aws_option_has_a_counterpart() -> None:
    from botocore import xform_name

    options = _parser_options()
    model = _awscli_s3_model()
    common = {
        "--cli-input-json",
        "--generate-cli-skeleton",
        "--debug",
        "--endpoint-url",
        "--no-verify-ssl",
        "--no-paginate",
        "--output",
        "--query",
        "--ca-bundle",
        "--cli-read-timeout",
        "--cli-connect-timeout",
        "--region",
        "--profile",
        "--color",
    }
    for command in COMMANDS:
        shape = model["shapes"][model["operations"][command.operation]["input"]["shape"]]
        wanted = {"--" + xform_name(member, "-") for member in shape["members"]} | common
        assert wanted <= options[command.name], command.name
        # ... and every member of the project's model reaches the proto.
        assert set(command.members) == set(command.input_shape.members)
    assert {"--starting-token", "--page-size", "--max-items"} <= options["list-parts"]
    assert "--no-bucket-key-enabled" in options["create-multipart-upload"]


@pytest.mark.parametrize(
    ("text", "parsed"),
    [
        ("a=1,b=2", {"a": "1", "b": "2"}),
        ("a=x=y, b = two words ", {"a": "x=y", "b": "two words"}),
        ('a="1,2",b=\'q"\'', {"a": "1,2", "b": 'q"'}),
        (
            "Parts=[{ETag=e1,PartNumber=1},{ETag=e2,PartNumber=2}]",
            {"Parts": [{"ETag": "e1", "PartNumber": "1"}, {"ETag": "e2", "PartNumber": "2"}]},
        ),
        ("k=a,b,c,other=d", {"k": ["a", "b", "c"], "other": "d"}),
        ("k=[a,b],m={x=1}", {"k": ["a", "b"], "m": {"x": "1"}}),
    ],
)
def test_shorthand(text: str, parsed: dict[str, Any]) -> None:
    from awscli.shorthand import ShorthandParser  # type: ignore[import-untyped]

    assert shorthand.parse_shorthand(text) == parsed == ShorthandParser().parse(text)


@pytest.mark.parametrize("text", ["a", "a=[1", "a={b=1", "a='open", "=1"])
def test_shorthand_errors(text: str) -> None:
    with pytest.raises(ValueError):
        shorthand.parse_shorthand(text)


_SAMPLES: list[Any] = [
    {"ETag": '"abc"', "ChecksumCRC32": "+LCs+g=="},
    {
        "Parts": [
            {
                "PartNumber": 1,
                "ETag": '"e1"',
                "Size": 5,
                "LastModified": "2024-01-01T00:00:00.000Z",
            },
            {"PartNumber": 2, "ETag": '"e2"', "Size": 0, "ChecksumSHA256": "x" * 44},
        ],
        "Initiator": {"ID": "arn:aws:iam::1:user/u", "DisplayName": "u"},
        "IsTruncated": False,
        "StorageClass": None,
    },
    {
        "Uploads": [{"Key": "k", "Owner": {"ID": "o"}}, {"Key": "日本語"}],
        "CommonPrefixes": [{"Prefix": "p/"}],
    },
    {"RequestCharged": "requester"},
    ["a", "b", "c"],
    [[1, 2], [3, 4]],
    "scalar",
    {"Wide": "w" * 120, "Other": "o"},
    {"AbortDate": dt.datetime(1970, 1, 1), "IsTruncated": True, "MaxParts": 0},
]


@pytest.mark.parametrize("data", _SAMPLES)
def test_text_and_table_formats_are_awscli_formats(
    data: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    import awscli.table  # type: ignore[import-untyped]
    from awscli.formatter import TableFormatter, TextFormatter  # type: ignore[import-untyped]

    monkeypatch.setattr(awscli.table, "determine_terminal_width", lambda: 80)
    args = argparse.Namespace(query=None, color="off")
    for formatter, ours in (
        (TextFormatter(args), "".join(f"{line}\n" for line in output.text_lines(data))),
        (
            TableFormatter(args),
            "".join(f"{line}\n" for line in output.table_lines("Op", data, 80)),
        ),
    ):
        stream = io.StringIO()
        formatter("Op", data, stream)
        assert ours == stream.getvalue()


def test_endpoint_urls() -> None:
    parse = Endpoint.parse
    assert parse("localhost:50051") == Endpoint("localhost:50051", False, "http://localhost:50051")
    assert parse("https://gw.example:8443/") == Endpoint(
        "gw.example:8443", True, "https://gw.example:8443"
    )
    assert parse("http://[::1]:7") == Endpoint("[::1]:7", False, "http://[::1]:7")
    assert parse("https://gw.example").target == "gw.example:443"
    for bad in ("ftp://x:1", "http://", "http://x:port"):
        with pytest.raises(UsageError):
            parse(bad)


def test_pages_and_next_token_are_botocores() -> None:
    from botocore.paginate import TokenDecoder

    command = next(c for c in COMMANDS if c.operation == "ListParts")
    pages: dict[int | None, dict[str, Any]] = {
        None: {"Parts": [{"PartNumber": 1}, {"PartNumber": 2}], "IsTruncated": True},
        2: {"Parts": [{"PartNumber": 3}], "IsTruncated": False},
    }
    pages[None]["NextPartNumberMarker"] = 2
    calls: list[dict[str, Any]] = []

    def fetch(params: Any) -> dict[str, Any]:
        calls.append(dict(params))
        return json.loads(json.dumps(pages[params.get("PartNumberMarker")]))

    params = {"Bucket": "b", "Key": "k", "UploadId": "u"}
    first = pagination.paginate(command, fetch, params, {"MaxItems": 1}).build_full_result()
    assert first["Parts"] == [{"PartNumber": 1}]
    assert (
        first["NextToken"]
        == "eyJQYXJ0TnVtYmVyTWFya2VyIjogbnVsbCwgImJvdG9fdHJ1bmNhdGVfYW1vdW50IjogMX0="
    )
    assert TokenDecoder().decode(first["NextToken"]) == {
        "PartNumberMarker": None,
        "boto_truncate_amount": 1,
    }
    resume = {"StartingToken": first["NextToken"], "PageSize": 5}
    rest = pagination.paginate(command, fetch, params, resume).build_full_result()
    assert [p["PartNumber"] for p in rest["Parts"]] == [2, 3]
    assert "NextToken" not in rest
    assert calls[-1] == {**params, "MaxParts": 5, "PartNumberMarker": 2}
    # A token that is not botocore's is taken as S3's own marker, and checked as options are.
    with pytest.raises(UsageError, match="parameter PartNumberMarker"):
        pagination.paginate(command, fetch, params, {"StartingToken": "x"}).build_full_result()


def test_sse_customer_keys_are_encoded_where_botocore_encodes_them() -> None:
    from gateway.cli.s3api.params import build_request

    commands = {command.operation: command for command in COMMANDS}
    key, other = "k" * 32, "o" * 32
    params = {"Bucket": "b", "Key": "k", "UploadId": "u"}
    copy = build_request(
        commands["UploadPartCopy"],
        {
            **params,
            "PartNumber": 1,
            "CopySource": "s/o",
            "SSECustomerKey": key,
            "CopySourceSSECustomerKey": other,
        },
    )
    assert isinstance(copy, pb.UploadPartCopyRequest)
    assert (copy.sse_customer_key, copy.sse_customer_key_md5) == (
        _b64(key.encode()),
        _b64(hashlib.md5(key.encode()).digest()),
    )
    assert copy.copy_source_sse_customer_key == _b64(other.encode())
    # A key given with its MD5 is sent as it is; ListParts' key always, as botocore sends it.
    given = {**params, "PartNumber": 1, "SSECustomerKey": "raw", "SSECustomerKeyMD5": "md5"}
    header = build_request(commands["UploadPart"], given)
    assert isinstance(header, pb.UploadPartHeader) and header.sse_customer_key == "raw"
    listed = build_request(commands["ListParts"], {**params, "SSECustomerKey": key})
    assert isinstance(listed, pb.ListPartsRequest) and listed.sse_customer_key == key


# --- upload-part-copy's --copy-source ------------------------------------------------------------


def test_copy_source_is_url_encoded_as_botocore_encodes_it() -> None:
    from gateway.cli.s3api.params import build_request

    command = next(c for c in COMMANDS if c.operation == "UploadPartCopy")
    params = {"Bucket": "b", "Key": "k", "UploadId": "u", "PartNumber": 1}
    for written, sent in (
        ("src/dir/a b+c%2Fd~e.bin", "src/dir/a%20b%2Bc%252Fd~e.bin"),
        ("src/a b?versionId=v1", "src/a%20b?versionId=v1"),
    ):
        request = build_request(command, {**params, "CopySource": written})
        assert isinstance(request, pb.UploadPartCopyRequest)
        assert request.copy_source == sent


def test_copy_source_names_the_object_it_names_to_aws(
    new_bucket: str, other_bucket: str, s3_sync: Any, gateway_address: str, moto_endpoint: str
) -> None:
    """A key with a space, a ``+`` and a literal ``%2F``: ``--copy-source`` names the same object
    as for ``aws s3api``, never the object its decoded text would name."""
    spaced, percent, slash = "dir/a b+c.bin", "dir/a b+c%2Fd.bin", "dir/a b+c/d.bin"
    etags = {}
    for bucket in (new_bucket, other_bucket):
        for key in (spaced, percent, slash):
            etags[key] = s3_sync.put_object(Bucket=bucket, Key=key, Body=key.encode() * 100)["ETag"]

    def copy(run: Callable[..., Any], endpoint: str, bucket: str, key: str) -> Any:
        upload_id = s3_sync.create_multipart_upload(Bucket=bucket, Key=KEY)["UploadId"]
        args = ["--bucket", bucket, "--key", KEY, "--upload-id", upload_id, "--part-number", "1"]
        return run("upload-part-copy", *args, "--copy-source", f"{bucket}/{key}", endpoint=endpoint)

    ours = copy(gateway_cli, gateway_address, new_bucket, spaced)
    theirs = copy(aws_cli, moto_endpoint, other_bucket, spaced)
    same_json(ours, theirs)
    assert output_of(ours)["CopyPartResult"]["ETag"] == etags[spaced]
    theirs = copy(aws_cli, moto_endpoint, other_bucket, percent)
    assert output_of(theirs)["CopyPartResult"]["ETag"] == etags[percent]
    # The gateway refuses a key that holds '%' once decoded (S3-compatible stores decode a copy
    # source differently), rather than copy dir/a b+c/d.bin.
    ours = copy(gateway_cli, gateway_address, new_bucket, percent)
    assert ours.returncode == 254, ours.stdout
    assert "'%'" in ours.stderr


# --- error reports, in process -------------------------------------------------------------------


class _FailedCall(grpc.RpcError, grpc.Call):  # type: ignore[misc]
    """A failed synchronous call carrying the gateway's rich status."""

    def __init__(self, code: grpc.StatusCode, message: str, info: Any) -> None:
        status = status_pb2.Status(code=code.value[0], message=message)
        status.details.add().Pack(info)
        self._code, self._message = code, message
        self._trailing = (("grpc-status-details-bin", status.SerializeToString()),)

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._message

    def trailing_metadata(self) -> Any:
        return self._trailing


_GONE = "S3 AbortMultipartUpload failed: NoSuchUpload (HTTP 404)"


@pytest.mark.parametrize(
    ("metadata", "details", "printed"),
    [
        (
            {"s3ErrorCode": "NoSuchUpload", "s3Message": "Gone.", "httpStatus": "404"},
            f"{_GONE}: Gone.",
            "Gone.",
        ),
        (  # a gateway older than s3Message
            {"s3ErrorCode": "NoSuchUpload", "httpStatus": "404"},
            f"{_GONE}: The specified upload does not exist.",
            "The specified upload does not exist.",
        ),
        (  # S3 sent no message (Ceph RGW): the gateway sends no s3Message
            {"s3ErrorCode": "NoSuchUpload", "httpStatus": "404"},
            _GONE,
            "S3 sent no message (HTTP 404 Not Found)",
        ),
        (
            {"s3ErrorCode": "NoSuchUpload", "s3Message": "", "httpStatus": "404"},
            _GONE,
            "S3 sent no message (HTTP 404 Not Found)",
        ),
    ],
    ids=["s3-message", "older-gateway", "no-message", "empty-message"],
)
def test_s3_message_is_s3s_own(
    metadata: dict[str, str], details: str, printed: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from google.rpc import error_details_pb2

    from gateway.cli.s3api.errors import report_rpc_error

    command = next(c for c in COMMANDS if c.operation == "AbortMultipartUpload")
    info = error_details_pb2.ErrorInfo(reason="NO_SUCH_UPLOAD", metadata=metadata)
    code = report_rpc_error(_FailedCall(grpc.StatusCode.NOT_FOUND, details, info), command, "url")
    assert code == 254
    head = "\nAn error occurred (NoSuchUpload) when calling the AbortMultipartUpload operation:"
    assert capsys.readouterr().err == f"{head} {printed}\n"
