"""``s3-upload-gateway upload`` and ``s3-upload-gateway demo``: whole uploads with the client.

``upload FILE s3://bucket/key`` uploads a file (``-`` for stdin) through a running gateway with
:class:`gateway.client.GatewayClient`: parts in parallel, checksummed, retried; a progress bar on
stderr when it is a terminal; the ETag and checksum as JSON on stdout.

A gateway that authenticates its callers gets the token of ``--token-file`` or
``$GATEWAY_TOKEN`` and, for https://, the client certificate of ``--client-cert`` and
``--client-key``, as with the s3api commands.

``demo`` needs nothing running: it starts the embedded S3 (moto) and a gateway in this process,
uploads a generated file through the gateway, reads it back from the S3 store, compares, and
prints a summary.

Exit codes follow the other commands: 0 success, 252 bad usage, 254 the upload failed, 255 the
gateway could not be reached.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import logging
import os
import stat
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TextIO

import grpc

from gateway import checksums
from gateway.cli.connection import TOKEN_ENV, Connection, add_connection_options, connection
from gateway.client import (
    DEFAULT_CONCURRENCY,
    DEFAULT_PART_SIZE,
    CustomerKey,
    GatewayCallError,
    GatewayClient,
    UploadOptions,
    UploadResult,
)
from gateway.exits import ConnectionFailure, ExitCode, UsageError
from gateway.units import MiB, format_size, parse_size

DEMO_BUCKET = "gateway-demo"


def size_argument(text: str) -> int:
    """A size option (:func:`gateway.units.parse_size`: ``8MiB``, ``8M``, ``512KiB``, a number of
    bytes…), for argparse."""
    try:
        return parse_size(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def parse_destination(text: str) -> tuple[str, str]:
    """``s3://bucket/key`` -> (bucket, key)."""
    bucket, _, key = text.removeprefix("s3://").partition("/")
    if not text.startswith("s3://") or not bucket or not key:
        raise UsageError(f"the destination must be s3://bucket/key, not {text!r}")
    return bucket, key


# --- the progress bar ----------------------------------------------------------------------------


class ProgressBar:
    """A one-line progress display (bytes, percentage, rate, ETA), redrawn at most 10 times a
    second; silent when ``stream`` is not a terminal."""

    WIDTH = 30

    def __init__(self, stream: TextIO, *, enabled: bool | None = None) -> None:
        self.stream = stream
        self.enabled = stream.isatty() if enabled is None else enabled
        self.started: float | None = None  # the first report starts the clock
        self._drawn = 0.0

    def __call__(self, done: int, total: int | None) -> None:
        now = time.monotonic()
        if self.started is None:
            self.started = now
        if not self.enabled or (now - self._drawn < 0.1 and done != total):
            return
        self._drawn = now
        self.stream.write("\r" + self.render(done, total, now - self.started) + "\x1b[K")
        self.stream.flush()

    def render(self, done: int, total: int | None, elapsed: float) -> str:
        rate = done / elapsed if elapsed > 0 else 0.0
        text = f"{format_size(done)}"
        if total:
            fraction = min(1.0, max(0.0, done / total))
            filled = int(fraction * self.WIDTH)
            bar = "#" * filled + "." * (self.WIDTH - filled)
            eta = (total - done) / rate if rate > 0 else 0.0
            text = f"[{bar}] {fraction:4.0%} {text} / {format_size(total)}"
            return f"{text}  {format_size(rate)}/s  ETA {_clock(eta)}"
        return f"{text}  {format_size(rate)}/s  {_clock(elapsed)}"

    def finish(self) -> None:
        if self.enabled:
            self.stream.write("\n")
            self.stream.flush()


def _clock(seconds: float) -> str:
    minutes, secs = divmod(int(seconds + 0.5), 60)
    return f"{minutes}:{secs:02d}"


# --- options -------------------------------------------------------------------------------------


def _add_upload_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--part-size",
        type=size_argument,
        default=DEFAULT_PART_SIZE,
        metavar="SIZE",
        help="part size, 5MiB to 5GiB (raised as needed to fit 10,000 parts); default 8MiB",
    )
    parser.add_argument(
        "--concurrency",
        type=int,
        default=DEFAULT_CONCURRENCY,
        metavar="N",
        help=f"parts uploaded at once; default {DEFAULT_CONCURRENCY}",
    )
    parser.add_argument(
        "--checksum-algorithm",
        default="CRC32C",
        type=str.upper,
        choices=[*checksums.BY_NAME, "NONE"],
        help="checksum of every part, computed while sending; default CRC32C",
    )
    parser.add_argument(
        "--checksum-type",
        type=str.upper,
        choices=["COMPOSITE", "FULL_OBJECT"],
        help="how the object checksum is formed (FULL_OBJECT: CRC algorithms only)",
    )


def _add_object_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--content-type", default="", help="the object's Content-Type")
    parser.add_argument(
        "--metadata",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="user metadata (x-amz-meta-*); repeatable",
    )
    parser.add_argument(
        "--sse",
        default="",
        nargs="?",
        const="AES256",
        metavar="AES256|aws:kms|aws:kms:dsse",
        help="server-side encryption (alone: AES256)",
    )
    parser.add_argument("--sse-kms-key-id", default="", help="the KMS key for --sse aws:kms")
    parser.add_argument(
        "--sse-c",
        default="",
        nargs="?",
        const="AES256",
        metavar="AES256",
        help="SSE-C with the key of --sse-c-key",
    )
    parser.add_argument(
        "--sse-c-key",
        default="",
        metavar="KEY",
        help="the 32-byte SSE-C key, verbatim or fileb://PATH",
    )


def options_from(args: argparse.Namespace) -> UploadOptions:
    """The UploadOptions the command line asks for (``demo`` has no object options)."""
    algorithm = "" if args.checksum_algorithm == "NONE" else args.checksum_algorithm
    if args.concurrency < 1:
        raise UsageError("--concurrency must be at least 1")
    return UploadOptions(
        part_size=args.part_size,
        concurrency=args.concurrency,
        checksum_algorithm=algorithm,
        checksum_type=args.checksum_type or "",
        content_type=getattr(args, "content_type", ""),
        metadata=_metadata(getattr(args, "metadata", [])),
        server_side_encryption=getattr(args, "sse", ""),
        ssekms_key_id=getattr(args, "sse_kms_key_id", ""),
        customer_key=_customer_key(getattr(args, "sse_c", ""), getattr(args, "sse_c_key", "")),
    )


def _metadata(pairs: list[str]) -> dict[str, str]:
    metadata = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise UsageError(f"--metadata takes KEY=VALUE, not {pair!r}")
        metadata[key] = value
    return metadata


def _customer_key(algorithm: str, key: str) -> CustomerKey | None:
    if bool(algorithm) != bool(key):
        raise UsageError("--sse-c and --sse-c-key go together")
    if not key:
        return None
    if key.startswith("fileb://"):
        with open(key.removeprefix("fileb://"), "rb") as handle:
            raw = handle.read()
    else:
        raw = key.encode()
    if len(raw) != 32:
        raise UsageError(f"the SSE-C key must be 32 bytes, not {len(raw)}")
    return CustomerKey(raw, algorithm=algorithm)


# --- upload --------------------------------------------------------------------------------------


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``upload`` and ``demo``."""
    upload = subparsers.add_parser(
        "upload",
        help="upload a file through the gateway (multipart, parallel, checksummed)",
        description="Upload FILE (- for stdin) to s3://BUCKET/KEY through a running gateway. "
        "Prints the ETag and checksum as JSON. A gateway that authenticates its callers takes "
        f"a bearer token (--token-file, else ${TOKEN_ENV}) and/or, over https://, a "
        "client certificate (--client-cert and --client-key).",
    )
    upload.add_argument("file", metavar="FILE", help="the file to upload, - for stdin")
    upload.add_argument("destination", metavar="s3://BUCKET/KEY")
    _add_upload_options(upload)
    _add_object_options(upload)
    add_connection_options(upload)
    upload.set_defaults(func=run_upload)

    demo = subparsers.add_parser(
        "demo",
        help="upload a generated file through an in-process gateway and embedded S3",
        description="Start an embedded S3 and a gateway in this process, upload a generated "
        "file through the gateway, read it back from S3, verify it and print a summary.",
    )
    demo.add_argument(
        "--size", type=size_argument, default=64 * MiB, metavar="SIZE", help="default 64MiB"
    )
    _add_upload_options(demo)
    demo.set_defaults(func=run_demo)


def run_upload(args: argparse.Namespace) -> int:
    try:
        options = options_from(args)
        bucket, key = parse_destination(args.destination)
        target = connection(args, None)
    except (UsageError, OSError) as exc:
        return _fail("upload", exc, ExitCode.USAGE)
    except ConnectionFailure as exc:
        return _fail("upload", exc, ExitCode.CONNECTION)
    progress = ProgressBar(sys.stderr)
    try:
        result = asyncio.run(_upload(target, args.file, bucket, key, options, progress))
    except GatewayCallError as exc:
        progress.finish()
        code = ExitCode.CONNECTION if _unreachable(exc) else ExitCode.SERVICE_ERROR
        return _fail("upload", _describe(exc, target.endpoint.url), code)
    except (OSError, ValueError) as exc:
        progress.finish()
        return _fail("upload", exc, ExitCode.SERVICE_ERROR)
    progress.finish()
    print(json.dumps(result_json(result), indent=4))
    return ExitCode.OK


async def _upload(
    conn: Connection,
    file: str,
    bucket: str,
    key: str,
    options: UploadOptions,
    progress: Callable[[int, int | None], None],
) -> UploadResult:
    async with GatewayClient(conn.aio_channel()) as client:
        if file == "-":
            return await client.upload_stream(
                sys.stdin.buffer, bucket, key, None, options, progress
            )
        if stat.S_ISREG(os.stat(file).st_mode):
            return await client.upload_file(file, bucket, key, options, progress)
        with open(file, "rb") as handle:  # noqa: ASYNC230 - a pipe or device, read in a thread
            return await client.upload_stream(handle, bucket, key, None, options, progress)


def result_json(result: UploadResult) -> dict[str, Any]:
    """The JSON ``upload`` prints, with S3's member names."""
    output: dict[str, Any] = {"Bucket": result.bucket, "Key": result.key, "ETag": result.etag}
    if result.checksum:
        output[f"Checksum{result.checksum_algorithm}"] = result.checksum
        output["ChecksumType"] = result.checksum_type
        output["ChecksumComputedBy"] = "S3" if result.checksum_from_s3 else "client"
    output["Size"] = result.size
    output["Parts"] = result.parts
    return output


def _unreachable(error: GatewayCallError) -> bool:
    return error.code == grpc.StatusCode.UNAVAILABLE and error.error_info is None


def _describe(error: GatewayCallError, url: str) -> str:
    if _unreachable(error):
        return f"cannot reach the gateway at {url}: {error.message}"
    reason = f" {error.reason}" if error.reason else ""
    return f"{error.code.name}{reason}: {error.message}"


def _fail(command: str, error: object, code: int) -> int:
    print(f"s3-upload-gateway {command}: error: {error}", file=sys.stderr)
    return code


# --- demo ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DemoSummary:
    size: int
    seconds: float
    result: UploadResult
    sha256: str
    verified: bool

    def lines(self) -> list[str]:
        rate = self.size / MiB / self.seconds if self.seconds > 0 else 0.0
        result = self.result
        checksum = (
            f"{result.checksum_algorithm} {result.checksum} ({result.checksum_type})"
            if result.checksum
            else "none"
        )
        return [
            f"size:       {self.size} bytes ({format_size(self.size)})",
            f"parts:      {result.parts}",
            f"throughput: {rate:.1f} MiB/s ({self.seconds:.2f} s)",
            f"checksum:   {checksum}",
            f"etag:       {result.etag}",
            f"sha256:     {self.sha256}",
            f"read back:  {'identical' if self.verified else 'DIFFERENT'}",
        ]


def run_demo(args: argparse.Namespace) -> int:
    try:
        options = options_from(args)
    except UsageError as exc:
        return _fail("demo", exc, ExitCode.USAGE)
    progress = ProgressBar(sys.stderr)
    try:
        summary = asyncio.run(_demo(args.size, options, progress))
    except (GatewayCallError, OSError, ValueError, RuntimeError) as exc:
        progress.finish()
        return _fail("demo", exc, ExitCode.SERVICE_ERROR)
    progress.finish()
    print("\n".join(summary.lines()))
    return ExitCode.OK if summary.verified else ExitCode.SERVICE_ERROR


async def _demo(
    size: int, options: UploadOptions, progress: Callable[[int, int | None], None]
) -> DemoSummary:
    from gateway.config import Settings
    from gateway.server.app import Gateway
    from gateway.server.embedded import EMBEDDED_CREDENTIALS, embedded_s3

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # moto's request log
    with embedded_s3(DEMO_BUCKET) as s3_url, _random_file(size) as (path, digest):
        settings = Settings(
            listen_address="127.0.0.1:0", metrics_address="", drain_delay=0, s3_endpoint_url=s3_url
        )
        gateway = Gateway(settings, EMBEDDED_CREDENTIALS)
        await gateway.start()
        try:
            async with GatewayClient.connect(f"127.0.0.1:{gateway.port}") as client:
                started = time.monotonic()
                result = await client.upload_file(path, DEMO_BUCKET, "demo.bin", options, progress)
                seconds = time.monotonic() - started
        finally:
            await gateway.stop(grace=1)
        stored = await _sha256_of_object(s3_url, DEMO_BUCKET, "demo.bin")
    return DemoSummary(size, seconds, result, digest, stored == digest)


@contextmanager
def _random_file(size: int) -> Iterator[tuple[str, str]]:
    """A temporary file of ``size`` random bytes, and its sha256."""
    digest = hashlib.sha256()
    with tempfile.NamedTemporaryFile(prefix="gateway-demo-", suffix=".bin") as handle:
        left = size
        while left > 0:
            block = os.urandom(min(8 * MiB, left))
            digest.update(block)
            handle.write(block)
            left -= len(block)
        handle.flush()
        yield handle.name, digest.hexdigest()


async def _sha256_of_object(url: str, bucket: str, key: str) -> str:
    """Read the object straight from the S3 store (not through the gateway)."""
    from aiobotocore.session import get_session

    from gateway.server.embedded import EMBEDDED_CREDENTIALS

    key_id, secret = EMBEDDED_CREDENTIALS
    digest = hashlib.sha256()
    session = get_session()
    async with session.create_client(
        "s3",
        endpoint_url=url,
        region_name="us-east-1",
        aws_access_key_id=key_id,
        aws_secret_access_key=secret,
    ) as s3:
        response = await s3.get_object(Bucket=bucket, Key=key)
        async with response["Body"] as body:
            async for chunk in body.iter_chunks(MiB):
                digest.update(chunk)
    return digest.hexdigest()


__all__ = ["ProgressBar", "parse_destination", "register", "result_json", "size_argument"]
