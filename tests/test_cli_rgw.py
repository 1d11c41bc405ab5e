"""The ``aws s3api`` mirror against Ceph RGW, compared with ``aws s3api`` against the same RGW.

RGW answers with values moto never sends: empty strings (an Owner without name or id, a completed
upload without an ETag), a NextPartNumberMarker of 0, and errors without a message. Proto3 cannot
tell those from absent values unless the field has presence; the CLI prints them as aws does.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.cli_helpers import aws_cli, gateway_cli, masked, output_of, parts_json, same_json
from tests.conftest import Backend
from tests.helpers import GatewayThread, create_bucket

pytestmark = pytest.mark.backends("rgw")

KEY = "dir/object.bin"


def _aws_env(backend: Backend) -> dict[str, str]:
    key_id, secret = backend.credentials
    return {"AWS_ACCESS_KEY_ID": key_id, "AWS_SECRET_ACCESS_KEY": secret}


def _upload_with_a_part(s3: Any, bucket: str) -> list[str]:
    upload_id = s3.create_multipart_upload(Bucket=bucket, Key=KEY)["UploadId"]
    s3.upload_part(Bucket=bucket, Key=KEY, UploadId=upload_id, PartNumber=1, Body=b"x" * 100)
    return ["--bucket", bucket, "--key", KEY, "--upload-id", upload_id]


@pytest.mark.parametrize(
    "options",
    [[], ["--no-paginate"], ["--max-parts", "1"], ["--part-number-marker", "5"]],
    ids=["paginated", "no-paginate", "max-parts", "past-the-last-part"],
)
def test_list_parts_prints_the_empty_owner_and_markers_as_aws_does(
    options: list[str], backend: Backend, gateway: GatewayThread, s3_sync: Any, new_bucket: str
) -> None:
    args = _upload_with_a_part(s3_sync, new_bucket)
    ours = gateway_cli("list-parts", *args, *options, endpoint=gateway.address)
    theirs = aws_cli(
        "list-parts", *args, *options, endpoint=backend.endpoint, env=_aws_env(backend)
    )
    assert ours.stdout == theirs.stdout, ours.stderr + theirs.stderr
    printed = output_of(ours)
    assert printed["Owner"] == {"DisplayName": "", "ID": ""}
    if options == ["--part-number-marker", "5"]:
        assert printed["NextPartNumberMarker"] == 0


def test_list_multipart_uploads_prints_what_aws_prints(
    backend: Backend, gateway: GatewayThread, s3_sync: Any, new_bucket: str
) -> None:
    _upload_with_a_part(s3_sync, new_bucket)
    for options in ([], ["--no-paginate"], ["--max-uploads", "1", "--delimiter", "/"]):
        args = ["list-multipart-uploads", "--bucket", new_bucket, *options]
        ours = gateway_cli(*args, endpoint=gateway.address)
        theirs = aws_cli(*args, endpoint=backend.endpoint, env=_aws_env(backend))
        assert ours.stdout == theirs.stdout, options


def test_complete_prints_the_empty_etag_as_aws_does(
    backend: Backend, gateway: GatewayThread, s3_sync: Any, new_bucket: str, tmp_path: Path
) -> None:
    def complete(run: Any, endpoint: str, bucket: str, **kwargs: Any) -> Any:
        args = _upload_with_a_part(s3_sync, bucket)
        parts = s3_sync.list_parts(Bucket=bucket, Key=KEY, UploadId=args[-1])["Parts"]
        etags = {part["PartNumber"]: part["ETag"] for part in parts}
        multipart = ["--multipart-upload", parts_json(etags)]
        return run("complete-multipart-upload", *args, *multipart, endpoint=endpoint, **kwargs)

    ours = complete(gateway_cli, gateway.address, new_bucket)
    other = create_bucket(s3_sync)
    theirs = complete(aws_cli, backend.endpoint, other, env=_aws_env(backend))
    same_json(ours, theirs)
    assert output_of(ours)["ETag"] == ""  # Ceph RGW 16 answers Complete with an empty ETag
    assert json.dumps(masked(output_of(ours))) == json.dumps(masked(output_of(theirs)))


@pytest.mark.parametrize(
    ("command", "options", "code", "status"),
    [
        ("abort-multipart-upload", ["--upload-id", "bogus"], "NoSuchUpload", "404 Not Found"),
        ("list-parts", ["--upload-id", "bogus"], "NoSuchKey", "404 Not Found"),
    ],
)
def test_an_error_without_a_message_prints_the_code_and_http_status(
    command: str,
    options: list[str],
    code: str,
    status: str,
    backend: Backend,
    gateway: GatewayThread,
    new_bucket: str,
) -> None:
    """RGW's errors have no Message. aws s3api (v1 and v2) then fails in its own error handler
    (``argument of type 'NoneType' is not iterable``), and botocore's message is "None"; the
    mirror prints the error code and the HTTP status instead."""
    args = [command, "--bucket", new_bucket, "--key", KEY, *options]
    ours = gateway_cli(*args, endpoint=gateway.address)
    theirs = aws_cli(*args, endpoint=backend.endpoint, env=_aws_env(backend))
    assert "argument of type 'NoneType' is not iterable" in theirs.stderr
    operation = "".join(word.title() for word in command.split("-"))
    assert (ours.returncode, ours.stdout) == (254, "")
    assert ours.stderr == (
        f"\nAn error occurred ({code}) when calling the {operation} operation: "
        f"S3 sent no message (HTTP {status})\n"
    )
