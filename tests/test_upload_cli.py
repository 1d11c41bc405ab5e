"""``s3-upload-gateway upload`` and ``demo``: argument parsing, the progress bar, and both commands
end to end as subprocesses."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any, BinaryIO

import grpc
import pytest

from gateway import checksums
from gateway.cli import build_parser
from gateway.cli.upload import ProgressBar, options_from, parse_destination, size_argument
from gateway.exits import UsageError
from tests.cli_helpers import gateway_cli
from tests.conftest import Backend
from tests.helpers import GatewayThread, MiB, S3Reader, crc64, wait_for


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("8MiB", 8 * MiB),
        ("8M", 8 * MiB),
        ("8MB", 8 * MiB),
        ("512KiB", 512 * 1024),
        ("1GiB", 1024 * MiB),
        ("1048576", MiB),
        ("1.5MiB", 3 * MiB // 2),
    ],
)
def test_size_argument(text: str, size: int) -> None:
    assert size_argument(text) == size


def test_size_argument_refuses_nonsense() -> None:
    with pytest.raises(argparse.ArgumentTypeError, match="not a size"):
        size_argument("eight")


def test_parse_destination() -> None:
    assert parse_destination("s3://bucket/dir/key.bin") == ("bucket", "dir/key.bin")
    for bad in ("bucket/key", "s3://bucket", "s3://bucket/", "s3:///key"):
        with pytest.raises(UsageError):
            parse_destination(bad)


def test_progress_bar_shows_bytes_rate_and_eta() -> None:
    bar = ProgressBar(io.StringIO(), enabled=True)
    line = bar.render(16 * MiB, 64 * MiB, 2.0)
    assert "25%" in line and "16.0 MiB / 64.0 MiB" in line
    assert "8.0 MiB/s" in line and "ETA 0:06" in line
    assert "8.0 MiB/s" in bar.render(16 * MiB, None, 2.0)


def test_progress_bar_is_silent_when_not_a_terminal() -> None:
    stream = io.StringIO()
    bar = ProgressBar(stream)
    bar(1, 2)
    bar(2, 2)
    bar.finish()
    assert stream.getvalue() == ""


def test_upload_writes_one_object_stream(
    backend: Backend, gateway: GatewayThread, new_bucket: str, s3: S3Reader, tmp_path: Path
) -> None:
    """By default one WriteObject stream: the gateway's parts (8 MiB), CRC64NVME of the whole,
    the object options of aws s3 cp, the Content-Type guessed from the name."""
    data = os.urandom(11 * MiB)
    path = tmp_path / "page.html"
    path.write_bytes(data)
    result = gateway_cli(
        "upload",
        str(path),
        f"s3://{new_bucket}/site/page.html",
        "--cache-control",
        "max-age=60",
        "--content-language",
        "en",
        "--metadata",
        "team=a",
        "--tagging",
        "team=a&tier=web",
        # The one-node Ceph RGW has no storage class but STANDARD.
        *(["--storage-class", "standard_ia"] if backend.name == "moto" else []),
        endpoint=gateway.address,
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    output = json.loads(result.stdout)
    assert s3.read(new_bucket, "site/page.html") == data
    assert (output["Bucket"], output["Key"], output["Size"], output["Parts"]) == (
        new_bucket,
        "site/page.html",
        len(data),
        2,
    )
    assert output["ChecksumCRC64NVME"] == crc64(data)
    assert output["ChecksumType"] == "FULL_OBJECT"
    assert output["ChecksumComputedBy"] in ("S3", "gateway")
    head = s3.client.head_object(Bucket=new_bucket, Key="site/page.html")
    assert head["ContentType"] == "text/html"
    assert (head["CacheControl"], head["ContentLanguage"]) == ("max-age=60", "en")
    assert head["Metadata"] == {"team": "a"}
    if backend.name == "moto":
        assert head.get("StorageClass") == "STANDARD_IA"
    assert output["ETag"] in (head["ETag"], "")  # Ceph RGW 16 answers Complete without an ETag
    if backend.name == "moto":  # Ceph RGW 16 keeps no tags given to CreateMultipartUpload
        tags = s3.client.get_object_tagging(Bucket=new_bucket, Key="site/page.html")["TagSet"]
        assert sorted((tag["Key"], tag["Value"]) for tag in tags) == [
            ("team", "a"),
            ("tier", "web"),
        ]


@pytest.mark.backends("moto")
def test_upload_if_none_match_refuses_an_existing_key(
    gateway: GatewayThread, new_bucket: str, s3: S3Reader, tmp_path: Path
) -> None:
    path = tmp_path / "once.bin"
    path.write_bytes(b"first")
    destination = f"s3://{new_bucket}/once.bin"
    first = gateway_cli(
        "upload", str(path), destination, "--if-none-match", "--quiet", endpoint=gateway.address
    )
    assert (first.returncode, first.stdout, first.stderr) == (0, "", "")
    path.write_bytes(b"second")
    again = gateway_cli(
        "upload", str(path), destination, "--if-none-match", endpoint=gateway.address
    )
    assert again.returncode == 254, again.stderr
    assert again.stderr.startswith("s3-upload-gateway upload: error: FAILED_PRECONDITION")
    assert s3.read(new_bucket, "once.bin") == b"first"


def test_upload_with_client_parts_prints_etag_and_checksum(
    gateway: GatewayThread, new_bucket: str, s3: S3Reader, tmp_path: Path
) -> None:
    data = os.urandom(11 * MiB)
    path = tmp_path / "file.bin"
    path.write_bytes(data)
    destination = f"s3://{new_bucket}/dir/file.bin"
    result = gateway_cli(
        "upload",
        str(path),
        destination,
        "--client-parts",
        "--part-size",
        "5MiB",
        "--concurrency",
        "3",
        "--content-type",
        "text/plain",
        "--metadata",
        "team=a",
        endpoint=gateway.address,
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""  # no progress bar without a terminal
    output = json.loads(result.stdout)
    assert s3.read(new_bucket, "dir/file.bin") == data
    assert (output["Bucket"], output["Key"], output["Size"], output["Parts"]) == (
        new_bucket,
        "dir/file.bin",
        len(data),
        3,
    )
    sums = [checksums.CRC32C.compute(data[i : i + 5 * MiB]) for i in range(0, len(data), 5 * MiB)]
    assert (
        output["ChecksumCRC32C"]
        == checksums.encode(checksums.CRC32C.compute(b"".join(sums))) + "-3"
    )
    assert output["ChecksumType"] == "COMPOSITE"
    head = s3.client.head_object(Bucket=new_bucket, Key="dir/file.bin")
    assert head["ContentType"] == "text/plain"
    assert head["Metadata"] == {"team": "a"}
    assert output["ETag"] in (head["ETag"], "")  # Ceph RGW 16 answers Complete without an ETag


@pytest.mark.backends("moto")
def test_upload_from_stdin(gateway: GatewayThread, new_bucket: str, s3: S3Reader) -> None:
    data = os.urandom(9 * MiB + 1)
    command = [sys.executable, "-m", "gateway", "upload", "-", f"s3://{new_bucket}/stdin.bin"]
    command += ["--endpoint-url", gateway.address]
    result = subprocess.run(command, input=data, capture_output=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    output = json.loads(result.stdout)
    assert (output["Size"], output["Parts"]) == (len(data), 2)
    assert output["ChecksumCRC64NVME"] == crc64(data)
    assert s3.read(new_bucket, "stdin.bin") == data
    head = s3.client.head_object(Bucket=new_bucket, Key="stdin.bin")
    assert head["ContentType"] in ("", "binary/octet-stream")  # nothing guessed from stdin


@pytest.mark.backends("moto")
def test_upload_from_stdin_with_client_parts(
    gateway: GatewayThread, new_bucket: str, s3: S3Reader
) -> None:
    data = os.urandom(6 * MiB + 1)
    command = [sys.executable, "-m", "gateway", "upload", "-", f"s3://{new_bucket}/stdin.bin"]
    command += [
        "--client-parts",
        "--part-size",
        "5MiB",
        "--checksum-algorithm",
        "SHA256",
        "--endpoint-url",
        gateway.address,
    ]
    result = subprocess.run(command, input=data, capture_output=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    output = json.loads(result.stdout)
    assert (output["Size"], output["Parts"]) == (len(data), 2)
    assert output["ChecksumSHA256"].endswith("-2")
    assert s3.read(new_bucket, "stdin.bin") == data


@pytest.mark.backends("moto")
def test_upload_failure_is_one_line_and_non_zero(gateway: GatewayThread, tmp_path: Path) -> None:
    path = tmp_path / "file.bin"
    path.write_bytes(b"hello")
    result = gateway_cli(
        "upload", str(path), "s3://no-such-bucket-here/k", endpoint=gateway.address
    )
    assert result.returncode == 254
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("s3-upload-gateway upload: error: NOT_FOUND NO_SUCH_BUCKET:")


def test_upload_to_an_unreachable_gateway(tmp_path: Path, unused_port: int) -> None:
    path = tmp_path / "file.bin"
    path.write_bytes(b"hello")
    result = gateway_cli("upload", str(path), "s3://bucket/k", endpoint=f"127.0.0.1:{unused_port}")
    assert result.returncode == 255
    assert "cannot reach the gateway at http://127.0.0.1:" in result.stderr


def test_upload_usage_errors(tmp_path: Path) -> None:
    result = gateway_cli("upload", str(tmp_path / "missing"), "bucket/key", endpoint="127.0.0.1:1")
    assert result.returncode == 252
    assert "s3://bucket/key" in result.stderr


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--part-size", "16MiB"], "--part-size goes with --client-parts"),
        (["--concurrency", "8"], "--concurrency goes with --client-parts"),
        (["--checksum-algorithm", "none"], "--checksum-algorithm NONE needs --client-parts"),
        (["--client-parts", "--concurrency", "0"], "--concurrency must be at least 1"),
    ],
)
def test_upload_options_that_do_not_go_together(
    tmp_path: Path, options: list[str], message: str
) -> None:
    """Refused before anything is sent (the endpoint is never dialled)."""
    path = tmp_path / "file.bin"
    path.write_bytes(b"x")
    result = gateway_cli("upload", str(path), "s3://b/k", *options, endpoint="127.0.0.1:1")
    assert result.returncode == 252, result.stderr
    assert result.stderr.startswith("s3-upload-gateway upload: error: ")
    assert message in result.stderr


@pytest.mark.parametrize(
    ("name", "flags", "expected"),
    [
        ("notes.txt", [], "text/plain"),
        ("photo.JPG", [], "image/jpeg"),
        ("data.unknownext", [], ""),
        ("notes.txt", ["--no-guess-mime-type"], ""),
        ("notes.txt", ["--content-type", "application/x-notes"], "application/x-notes"),
    ],
)
def test_upload_content_type_is_guessed_from_the_name(
    name: str, flags: list[str], expected: str
) -> None:
    args = build_parser().parse_args(["upload", name, "s3://b/k", *flags])
    assert options_from(args, sized_here=False).content_type == expected


def test_a_missing_input_file_is_a_usage_error(gateway_address: str, tmp_path: Path) -> None:
    """Found before anything is sent: the gateway is reachable, nothing is created there."""
    missing = tmp_path / "missing.bin"
    result = gateway_cli("upload", str(missing), "s3://bucket/key", endpoint=gateway_address)
    assert result.returncode == 252, result.stderr
    assert result.stderr == (
        f"s3-upload-gateway upload: error: cannot read {missing}: No such file or directory\n"
    )
    directory = gateway_cli("upload", str(tmp_path), "s3://bucket/key", endpoint=gateway_address)
    assert directory.returncode == 252
    assert "Is a directory" in directory.stderr


def _uploads(s3: Any, bucket: str) -> list[str]:
    return [
        upload["UploadId"] for upload in s3.list_multipart_uploads(Bucket=bucket).get("Uploads", [])
    ]


def _feed(writer: BinaryIO, data: bytes) -> None:
    """Write ``data`` and keep the pipe open: a producer that has more to say."""
    with contextlib.suppress(OSError):
        writer.write(data)
        writer.flush()


@pytest.fixture
def producer(tmp_path: Path) -> Iterator[tuple[str, BinaryIO | None]]:
    """A FIFO, and the end of it a producer writes to (kept open until the test ends)."""
    fifo = tmp_path / "input.fifo"
    os.mkfifo(fifo)
    # Read-write: opening does not wait for a reader, and the reader never sees an end of file.
    writer = os.fdopen(os.open(fifo, os.O_RDWR), "wb")
    try:
        yield str(fifo), writer
    finally:
        writer.close()


@pytest.mark.parametrize("mode", ["WriteObject", "client-parts"])
@pytest.mark.parametrize("source", ["stdin", "fifo"])
def test_ctrl_c_aborts_the_upload_and_exits_130(
    source: str,
    mode: str,
    producer: tuple[str, BinaryIO],
    gateway_address: str,
    moto_s3: Any,
    moto_bucket: str,
) -> None:
    """SIGINT while the upload waits for its producer, once a part is in S3: the command exits
    130 at once, though the producer never ends, and says in one line what became of the upload:
    the WriteObject stream ends without its finish (the gateway aborts its multipart upload); with
    --client-parts the command aborts the multipart upload it started."""
    fifo, fifo_writer = producer
    command = [sys.executable, "-m", "gateway", "upload", "-" if source == "stdin" else fifo]
    command += [f"s3://{moto_bucket}/interrupted.bin"]
    if mode == "client-parts":
        command += ["--client-parts", "--part-size", "5MiB"]
    command += ["--endpoint-url", gateway_address]
    process = subprocess.Popen(
        command,
        stdin=subprocess.PIPE if source == "stdin" else subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    writer = process.stdin if source == "stdin" else fifo_writer
    assert writer is not None
    feeder = threading.Thread(target=_feed, args=(writer, os.urandom(9 * MiB)), daemon=True)
    feeder.start()
    try:
        deadline = time.monotonic() + 60
        while not (started := _uploads(moto_s3, moto_bucket)) or not moto_s3.list_parts(
            Bucket=moto_bucket, Key="interrupted.bin", UploadId=started[0]
        ).get("Parts"):
            assert process.poll() is None, process.communicate()
            assert time.monotonic() < deadline, "the upload never sent its first part"
            time.sleep(0.1)
        process.send_signal(signal.SIGINT)
        try:
            status = process.wait(15)
        except subprocess.TimeoutExpired:
            pytest.fail("the upload did not end on SIGINT")
        assert process.stdout is not None and process.stderr is not None
        out, err = process.stdout.read().decode(), process.stderr.read().decode()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        for stream in (process.stdin, process.stdout, process.stderr):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()
    assert status == 130, err
    assert out == ""
    if mode == "client-parts":
        assert err == (
            f"s3-upload-gateway upload: interrupted: aborted multipart upload {started[0]} of "
            f"s3://{moto_bucket}/interrupted.bin\n"
        )
        assert _uploads(moto_s3, moto_bucket) == []
    else:
        assert err == (
            "s3-upload-gateway upload: interrupted: nothing was written to "
            f"s3://{moto_bucket}/interrupted.bin\n"
        )
        wait_for(lambda: not _uploads(moto_s3, moto_bucket), "the gateway aborts the upload")
    with pytest.raises(moto_s3.exceptions.ClientError):
        moto_s3.head_object(Bucket=moto_bucket, Key="interrupted.bin")


@pytest.mark.parametrize(
    ("flags", "checksum"),
    [([], " (FULL_OBJECT)"), (["--client-parts"], "-3 (COMPOSITE)")],
    ids=["WriteObject", "client-parts"],
)
def test_demo_uploads_reads_back_and_summarizes(flags: list[str], checksum: str) -> None:
    """--part-size sizes the in-process gateway's WriteObject parts, or the client's."""
    result = subprocess.run(
        [sys.executable, "-m", "gateway", "demo", "--size", "12MiB", "--part-size", "5MiB", *flags],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    summary = dict(line.split(":", 1) for line in result.stdout.strip().splitlines())
    summary = {k: v.strip() for k, v in summary.items()}
    assert summary["size"] == "12582912 bytes (12.0 MiB)"
    assert summary["parts"] == "3"
    assert summary["read back"] == "identical"
    assert summary["throughput"].endswith(" s)") and "MiB/s" in summary["throughput"]
    algorithm = "CRC32C " if flags else "CRC64NVME "
    assert summary["checksum"].startswith(algorithm) and summary["checksum"].endswith(checksum)
    assert summary["etag"].endswith('-3"')


@pytest.fixture
def unused_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def test_a_resumable_upload_prints_its_token(
    gateway_address: str, moto_s3: Any, moto_bucket: str, tmp_path: Path
) -> None:
    data = os.urandom(6 * MiB)
    path = tmp_path / "resumable.bin"
    path.write_bytes(data)
    result = gateway_cli(
        "upload", str(path), f"s3://{moto_bucket}/resumable.bin", "--resumable",
        endpoint=gateway_address,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    (line,) = result.stderr.splitlines()
    assert line.startswith("s3-upload-gateway upload: resumable write: gw1.")
    assert json.loads(result.stdout)["Size"] == len(data)
    body = moto_s3.get_object(Bucket=moto_bucket, Key="resumable.bin")["Body"].read()
    assert body == data


def test_upload_resume_continues_a_write_from_its_token(
    gateway_address: str, moto_s3: Any, moto_bucket: str, tmp_path: Path
) -> None:
    """A write cut off after its first part (its token in hand) is finished by ``upload --resume
    TOKEN FILE``: from the persisted size, the destination from the token."""
    data = os.urandom(2 * 8 * MiB + 123)
    path = tmp_path / "cut.bin"
    path.write_bytes(data)
    token = asyncio.run(_cut_off_write(gateway_address, moto_bucket, "cut.bin", data))
    result = gateway_cli("upload", "--resume", token, str(path), endpoint=gateway_address)
    assert result.returncode == 0, result.stderr
    output = json.loads(result.stdout)
    assert (output["Key"], output["Size"]) == ("cut.bin", len(data))
    body = moto_s3.get_object(Bucket=moto_bucket, Key="cut.bin")["Body"].read()
    assert body == data
    assert _uploads(moto_s3, moto_bucket) == []


async def _cut_off_write(address: str, bucket: str, key: str, data: bytes) -> str:
    """Start a resumable write of ``data``, stream it until a part is persisted, cancel; the
    latest token."""
    from gateway.v1 import upload_service_pb2 as pb
    from gateway.v1 import upload_service_pb2_grpc as pb_grpc

    async with grpc.aio.insecure_channel(address) as channel:
        stub = pb_grpc.UploadServiceStub(channel)  # type: ignore[call-overload]
        spec = pb.WriteObjectSpec(
            object=pb.CreateMultipartUploadRequest(bucket=bucket, key=key), object_size=len(data)
        )
        started = await stub.StartResumableWrite(pb.StartResumableWriteRequest(spec=spec))
        held = asyncio.Event()

        async def messages() -> AsyncIterator[pb.WriteObjectRequest]:
            resume = pb.ResumeWrite(write_token=started.write_token, write_offset=0)
            yield pb.WriteObjectRequest(resume=resume)
            for offset in range(0, len(data) - MiB, MiB):
                content = data[offset : offset + MiB]
                yield pb.WriteObjectRequest(data=pb.ChecksummedData(content=content))
            await held.wait()

        call = stub.WriteObject(messages())
        token = started.write_token
        async for response in call:
            if response.progress.write_token:
                token = response.progress.write_token
                break
        call.cancel()
        return str(token)


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["{file}", "s3://b/k", "--resume", "gw1.x.y"], "give FILE alone"),
        (["{file}"], "the destination s3://BUCKET/KEY is required"),
        (["-", "s3://b/k", "--resumable"], "needs a FILE (not stdin)"),
        (["{file}", "s3://b/k", "--resumable", "--client-parts"], "no --client-parts"),
    ],
)
def test_resumable_usage_errors(tmp_path: Path, arguments: list[str], message: str) -> None:
    path = tmp_path / "file.bin"
    path.write_bytes(b"x")
    argv = [a.replace("{file}", str(path)) for a in arguments]
    result = gateway_cli("upload", *argv, endpoint="127.0.0.1:1")
    assert result.returncode == 252, result.stderr
    assert message in result.stderr
