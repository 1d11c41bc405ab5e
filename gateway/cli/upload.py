"""``s3-upload-gateway upload`` and ``s3-upload-gateway demo``: whole uploads with the client.

``upload FILE s3://bucket/key`` uploads a file (``-`` for stdin) through a running gateway with
:class:`gateway.client.GatewayClient`: one WriteObject stream (the gateway cuts and uploads the
parts; a file is written again on a retryable failure), or with ``--client-parts`` a multipart
upload whose parts this process cuts and sends in parallel; a progress bar on stderr when it is a
terminal; what S3 answered (ETag, checksum, size) as JSON on stdout. The object options are
``aws s3 cp``'s, its Content-Type guess from the file name included.

A gateway that authenticates its callers gets the token of ``--token-file`` or
``$GATEWAY_TOKEN`` and, for https://, the client certificate of ``--client-cert`` and
``--client-key``, as with the s3api commands.

``demo`` needs nothing running: it starts the embedded S3 (moto) and a gateway in this process,
uploads a generated file through the gateway, reads it back from the S3 store, compares, and
prints a summary.

Exit codes follow the other commands (:mod:`gateway.exits`): 0 success, 252 a bad command line
(an input file that cannot be read included), 253 a token, certificate or CA file that cannot be
used, 254 the gateway refused the upload, 255 the gateway could not be reached or the upload failed
on the way, 130 interrupted. Ctrl-C (SIGINT) stops sending: a WriteObject stream ends without its
finish, so nothing is written (the gateway aborts the parts it uploaded); with ``--client-parts``
the command aborts the multipart upload it started and says which, and a second Ctrl-C stops
waiting for that abort. Input that is not a regular
file (stdin, a pipe, a FIFO, a device) is read by a daemon thread of its own, so that an interrupt
never waits for a producer that is still writing.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import errno
import hashlib
import json
import logging
import mimetypes
import os
import queue
import signal
import stat
import sys
import tempfile
import threading
import time
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TextIO

import grpc

from gateway import checksums
from gateway.cli.connection import (
    TOKEN_ENV,
    Connection,
    add_caller_parser,
    add_connection_options,
    connection,
)
from gateway.client import (
    CHUNK_SIZE,
    DEFAULT_CONCURRENCY,
    DEFAULT_PART_SIZE,
    CustomerKey,
    GatewayCallError,
    GatewayClient,
    UploadOptions,
    UploadResult,
)
from gateway.exits import CommandError, ExitCode, UsageError
from gateway.units import MiB, format_size, parse_size
from gateway.v1 import upload_service_pb2 as pb

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


def _add_upload_options(parser: argparse.ArgumentParser, *, gateway: str) -> None:
    """How the bytes travel; ``gateway`` says who sizes WriteObject's parts."""
    parser.add_argument(
        "--client-parts",
        action="store_true",
        help="cut the parts here and upload them with CreateMultipartUpload, UploadPart and "
        "CompleteMultipartUpload, instead of one WriteObject stream whose parts the gateway cuts",
    )
    parser.add_argument(
        "--part-size",
        type=size_argument,
        metavar="SIZE",
        help="part size, 5MiB to 5GiB (raised as needed to fit 10,000 parts); default 8MiB; "
        f"{gateway}",
    )
    parser.add_argument(
        "--concurrency",
        type=int,
        metavar="N",
        help=f"parts uploaded at once; default {DEFAULT_CONCURRENCY}; {gateway}",
    )
    parser.add_argument(
        "--checksum-algorithm",
        default="",
        type=str.upper,
        choices=[*checksums.BY_NAME, "NONE"],
        help="the object's checksum, computed while sending; default CRC64NVME (FULL_OBJECT), "
        "CRC32C in a directory bucket; with --client-parts every part's, default CRC32C, "
        "NONE for none",
    )
    parser.add_argument(
        "--checksum-type",
        type=str.upper,
        choices=["COMPOSITE", "FULL_OBJECT"],
        help="how the object checksum is formed (FULL_OBJECT: CRC algorithms only)",
    )


def _add_object_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--content-type",
        help="the object's Content-Type; default: guessed from FILE's name, as aws s3 cp does",
    )
    parser.add_argument(
        "--no-guess-mime-type",
        action="store_true",
        help="do not guess the Content-Type from FILE's name",
    )
    for option, what in (
        ("--content-encoding", "Content-Encoding"),
        ("--content-disposition", "Content-Disposition"),
        ("--content-language", "Content-Language"),
        ("--cache-control", "Cache-Control"),
    ):
        parser.add_argument(option, default="", help=f"the object's {what}")
    parser.add_argument(
        "--metadata",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="user metadata (x-amz-meta-*); repeatable",
    )
    parser.add_argument(
        "--tagging", default="", metavar="TAGS", help="the object's tags, URL-encoded: k1=v1&k2=v2"
    )
    parser.add_argument(
        "--storage-class",
        default="",
        type=str.upper,
        help="STANDARD, STANDARD_IA, INTELLIGENT_TIERING, GLACIER_IR, EXPRESS_ONEZONE…",
    )
    parser.add_argument(
        "--acl", default="", help="a canned ACL: private, bucket-owner-full-control…"
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
    parser.add_argument(
        "--if-none-match",
        action="store_true",
        help="write only if the key holds no object (If-None-Match: *); "
        "else PRECONDITION_FAILED and nothing is written",
    )
    parser.add_argument(
        "--no-progress", action="store_true", help="no progress bar, even on a terminal"
    )
    parser.add_argument(
        "--quiet", action="store_true", help="print nothing but errors: no progress, no JSON"
    )


def options_from(args: argparse.Namespace, *, sized_here: bool) -> UploadOptions:
    """The UploadOptions the command line asks for (``demo`` has no object options).
    ``sized_here``: --part-size and --concurrency are the client's (else the gateway's)."""
    if args.concurrency is not None and args.concurrency < 1:
        raise UsageError("--concurrency must be at least 1")
    if not args.client_parts and args.checksum_algorithm == "NONE":
        raise UsageError(
            "--checksum-algorithm NONE needs --client-parts: a WriteObject always has a checksum"
        )
    if not sized_here and not args.client_parts:
        given = [name for name in ("part_size", "concurrency") if getattr(args, name) is not None]
        if given:
            option = "--" + given[0].replace("_", "-")
            raise UsageError(
                f"{option} goes with --client-parts: the gateway sizes WriteObject's parts "
                "(GATEWAY_WRITE_PART_SIZE, GATEWAY_WRITE_PARTS_IN_FLIGHT)"
            )
    return UploadOptions(
        client_parts=args.client_parts,
        part_size=args.part_size or DEFAULT_PART_SIZE,
        concurrency=args.concurrency or DEFAULT_CONCURRENCY,
        checksum_algorithm=args.checksum_algorithm,
        checksum_type=args.checksum_type or "",
        content_type=_content_type(args),
        content_encoding=getattr(args, "content_encoding", ""),
        content_disposition=getattr(args, "content_disposition", ""),
        content_language=getattr(args, "content_language", ""),
        cache_control=getattr(args, "cache_control", ""),
        metadata=_metadata(getattr(args, "metadata", [])),
        tagging=getattr(args, "tagging", ""),
        storage_class=getattr(args, "storage_class", ""),
        acl=getattr(args, "acl", ""),
        server_side_encryption=getattr(args, "sse", ""),
        ssekms_key_id=getattr(args, "sse_kms_key_id", ""),
        customer_key=_customer_key(getattr(args, "sse_c", ""), getattr(args, "sse_c_key", "")),
        if_none_match=getattr(args, "if_none_match", False),
        resumable=getattr(args, "resumable", False),
        resume_token=getattr(args, "resume", ""),
    )


def _content_type(args: argparse.Namespace) -> str:
    """--content-type, else the type of FILE's name (none for stdin)."""
    given: str | None = getattr(args, "content_type", None)
    if given is not None:
        return given
    file: str = getattr(args, "file", "-")
    if file == "-" or getattr(args, "no_guess_mime_type", True):
        return ""
    return mimetypes.guess_type(file)[0] or ""


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
    upload = add_caller_parser(
        subparsers,
        "upload",
        help="upload a file through the gateway (one WriteObject stream, checksummed)",
        description="Upload FILE (- for stdin) to s3://BUCKET/KEY through a running gateway, "
        "in one WriteObject stream: the gateway cuts the parts, uploads them in parallel, checks "
        "the object's checksum and completes it, or commits nothing. Prints what S3 answered "
        "(ETag, checksum, size) as JSON. A gateway that authenticates its callers takes "
        f"a bearer token (--token-file, else ${TOKEN_ENV}) and/or, over https://, a "
        "client certificate (--client-cert and --client-key).",
    )
    upload.add_argument("file", metavar="FILE", help="the file to upload, - for stdin")
    upload.add_argument(
        "destination", metavar="s3://BUCKET/KEY", nargs="?", help="(not with --resume)"
    )
    upload.add_argument(
        "--resumable",
        action="store_true",
        help="a resumable write: after a failure it continues from the bytes S3 holds, through "
        "any gateway replica; the write token is printed on stderr, for --resume",
    )
    upload.add_argument(
        "--resume",
        metavar="TOKEN",
        default="",
        help="continue the resumable write of this token with FILE (the same bytes)",
    )
    _add_upload_options(upload, gateway="with --client-parts only (WriteObject: the gateway's)")
    _add_object_options(upload)
    add_connection_options(upload)
    upload.set_defaults(func=run_upload)

    demo = add_caller_parser(
        subparsers,
        "demo",
        help="upload a generated file through an in-process gateway and embedded S3",
        description="Start an embedded S3 and a gateway in this process, upload a generated "
        "file through the gateway, read it back from S3, verify it and print a summary.",
    )
    demo.add_argument(
        "--size", type=size_argument, default=64 * MiB, metavar="SIZE", help="default 64MiB"
    )
    _add_upload_options(demo, gateway="WriteObject: the in-process gateway's")
    demo.set_defaults(func=run_demo)


def run_upload(args: argparse.Namespace) -> int:
    try:
        options = options_from(args, sized_here=False)
        if args.resume and args.destination is not None:
            raise UsageError("--resume continues a write whose destination its token holds: "
                             "give FILE alone")  # fmt: skip
        if not args.resume and args.destination is None:
            raise UsageError("the destination s3://BUCKET/KEY is required")
        bucket, key = parse_destination(args.destination) if args.destination else ("", "")
        if (args.resumable or args.resume) and (args.client_parts or args.file == "-"):
            raise UsageError("a resumable write needs a FILE (not stdin) and no --client-parts")
        check_input(args.file)
        target = connection(args, None)
    except CommandError as exc:
        return _fail("upload", exc, exc.code)
    except OSError as exc:  # the file of --sse-c-key
        return _fail("upload", exc, ExitCode.USAGE)
    progress = ProgressBar(sys.stderr, enabled=False if args.quiet or args.no_progress else None)
    hint = ResumeHint(args.file, announce=not args.quiet)
    try:
        result = asyncio.run(_upload(target, args.file, bucket, key, options, progress, hint))
    except Interrupted as exc:
        progress.finish()
        print(f"s3-upload-gateway upload: interrupted: {exc}", file=sys.stderr)
        hint.tell()
        return ExitCode.INTERRUPTED
    except GatewayCallError as exc:
        progress.finish()
        code = ExitCode.CONNECTION if _unreachable(exc) else ExitCode.SERVICE_ERROR
        failed = _fail("upload", _describe(exc, target.endpoint.url), code)
        hint.tell()
        return failed
    except ValueError as exc:  # an option the client refused (the part size for this input…)
        progress.finish()
        return _fail("upload", exc, ExitCode.USAGE)
    except OSError as exc:  # the input could not be read on the way
        progress.finish()
        failed = _fail("upload", exc, ExitCode.CONNECTION)
        hint.tell()
        return failed
    progress.finish()
    if not args.quiet:
        print(json.dumps(result_json(result), indent=4))
    return ExitCode.OK


def check_input(file: str) -> None:
    """Refuse an input that cannot be read before anything is sent (UsageError). A FIFO is not
    opened here: that would wait for its writer."""
    if file == "-":
        return
    try:
        mode = os.stat(file).st_mode
        if stat.S_ISDIR(mode):
            raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR))
        if stat.S_ISREG(mode):
            with open(file, "rb"):
                pass
    except OSError as exc:
        raise UsageError(f"cannot read {file}: {exc.strerror or exc}") from None


class ResumeHint:
    """The token of a resumable write: printed once when the write starts, and with the command
    that continues it when the upload ends without the object."""

    def __init__(self, file: str, *, announce: bool) -> None:
        self.file = file
        self.token = ""
        self._announce = announce

    def __call__(self, token: str) -> None:
        if not self.token and self._announce:
            print(f"s3-upload-gateway upload: resumable write: {token}", file=sys.stderr)
        self.token = token

    def tell(self) -> None:
        if self.token:
            print(
                "s3-upload-gateway upload: the write is kept; continue it with: "
                f"s3-upload-gateway upload --resume {self.token} {self.file}",
                file=sys.stderr,
            )


class Interrupted(Exception):
    """Ctrl-C ended the upload; the message says what became of its multipart upload."""


#: How long an interrupted upload waits for its multipart upload to be aborted.
_ABORT_WAIT = 15.0


async def _upload(
    conn: Connection,
    file: str,
    bucket: str,
    key: str,
    options: UploadOptions,
    progress: Callable[[int, int | None], None],
    hint: ResumeHint,
) -> UploadResult:
    """Upload, until done or interrupted: the first SIGINT cancels the upload (the client aborts
    the multipart upload it started), a second one stops waiting for that abort."""
    loop = asyncio.get_running_loop()
    client = _TrackedClient(conn.aio_channel())
    async with client:
        sending = asyncio.create_task(_send(client, file, bucket, key, options, progress, hint))
        interrupts = 0
        hurry = asyncio.Event()

        def interrupt() -> None:
            nonlocal interrupts
            interrupts += 1
            if interrupts > 1:
                hurry.set()
            sending.cancel()

        loop.add_signal_handler(signal.SIGINT, interrupt)
        try:
            try:
                return await sending
            except (asyncio.CancelledError, Exception):
                if not interrupts:
                    raise
            raise Interrupted(await client.settle(hurry))
        finally:
            loop.remove_signal_handler(signal.SIGINT)


async def _send(
    client: GatewayClient,
    file: str,
    bucket: str,
    key: str,
    options: UploadOptions,
    progress: Callable[[int, int | None], None],
    hint: ResumeHint,
) -> UploadResult:
    if options.resumable or options.resume_token:
        return await client.write_object(
            bucket, key, file, options=options, progress=progress, on_token=hint
        )
    if file != "-" and stat.S_ISREG(os.stat(file).st_mode):
        return await client.upload_file(file, bucket, key, options, progress)
    reader = InputReader(None if file == "-" else file)
    return await client.upload_stream(reader.chunks(), bucket, key, None, options, progress)


class _TrackedClient(GatewayClient):
    """A client that knows the multipart upload its upload started and whether it was aborted,
    so that an interrupted upload can make sure, and say, what became of it."""

    def __init__(self, channel: grpc.aio.Channel) -> None:
        super().__init__(channel)
        self.request: pb.CreateMultipartUploadRequest | None = None
        self.upload_id = ""
        self._creating: asyncio.Future[pb.CreateMultipartUploadResponse] | None = None
        #: True once aborted; the error of the last attempt, if it failed.
        self.aborted = False
        self.abort_error: GatewayCallError | None = None
        #: The object a WriteObject stream was opened for.
        self.writing = ""
        #: Whether it is a resumable write (its parts stay when the stream ends).
        self.resumable = False

    async def start_resumable_write(
        self, request: pb.StartResumableWriteRequest
    ) -> pb.StartResumableWriteResponse:
        self.resumable = True
        return await super().start_resumable_write(request)

    async def query_write_status(
        self, request: pb.QueryWriteStatusRequest
    ) -> pb.QueryWriteStatusResponse:
        self.resumable = True
        return await super().query_write_status(request)

    async def write(
        self,
        spec: pb.WriteObjectSpec,
        body: bytes | AsyncIterable[bytes],
        *,
        on_sent: Callable[[int], None] | None = None,
        on_persisted: Callable[[int], None] | None = None,
    ) -> pb.WrittenObject:
        self.writing = f"s3://{spec.object.bucket}/{spec.object.key}"
        return await super().write(spec, body, on_sent=on_sent, on_persisted=on_persisted)

    async def create_multipart_upload(
        self, request: pb.CreateMultipartUploadRequest
    ) -> pb.CreateMultipartUploadResponse:
        # Shielded: when interrupted, the upload may be created anyway; settle() waits for the
        # answer and aborts it.
        self.request = request
        self._creating = asyncio.ensure_future(super().create_multipart_upload(request))
        response = await asyncio.shield(self._creating)
        self.upload_id = response.upload_id
        return response

    async def abort_multipart_upload(
        self, request: pb.AbortMultipartUploadRequest
    ) -> pb.AbortMultipartUploadResponse:
        try:
            response = await super().abort_multipart_upload(request)
        except GatewayCallError as exc:
            self.abort_error = exc
            raise
        self.aborted = True
        return response

    async def settle(self, hurry: asyncio.Event) -> str:
        """After an interrupt: abort the multipart upload this client started unless that is
        done, waiting at most :data:`_ABORT_WAIT` seconds, or until ``hurry`` is set; says what
        became of it."""
        finishing = asyncio.ensure_future(self._finish())
        hurrying = asyncio.ensure_future(hurry.wait())
        try:
            await asyncio.wait(
                {finishing, hurrying}, timeout=_ABORT_WAIT, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            finishing.cancel()
            hurrying.cancel()
        failure = None
        if finishing.done() and not finishing.cancelled():
            failure = finishing.exception()  # not a GatewayCallError: those are suppressed
        request, creating = self.request, self._creating
        if self.resumable:
            return "the resumable write keeps what S3 holds"
        if (request is None or creating is None) and self.writing:
            # The stream ended without its finish: the gateway aborts what it uploaded.
            return f"nothing was written to {self.writing}"
        if request is None or creating is None:
            return "nothing was uploaded"
        where = f"s3://{request.bucket}/{request.key}"
        if not self.upload_id:
            if creating.done():  # CreateMultipartUpload failed: nothing to abort
                return "nothing was uploaded"
            return (
                f"a multipart upload of {where} may have been created: look for it with "
                f"s3-upload-gateway list-multipart-uploads --bucket {request.bucket}"
            )
        upload = f"multipart upload {self.upload_id} of {where}"
        if self.aborted:
            return f"aborted {upload}"
        error = self.abort_error
        if error is not None and error.code == grpc.StatusCode.NOT_FOUND:
            return f"{upload} was no longer in progress"
        why = f" ({error.code.name}: {error.message})" if error is not None else ""
        if failure is not None:
            why = f" ({type(failure).__name__}: {failure})"
        return (
            f"{upload} may still be in progress{why}: abort it with s3-upload-gateway "
            f"abort-multipart-upload --bucket {request.bucket} --key {request.key} "
            f"--upload-id {self.upload_id}"
        )

    async def _finish(self) -> None:
        """Wait for CreateMultipartUpload's answer if it is still on the way, then abort the
        upload unless it is aborted or gone."""
        if self._creating is not None and not self._creating.done():
            with contextlib.suppress(GatewayCallError):
                self.upload_id = (await asyncio.shield(self._creating)).upload_id
        if self.request is None or not self.upload_id or self.aborted:
            return
        if self.abort_error is not None and self.abort_error.code == grpc.StatusCode.NOT_FOUND:
            return
        request = pb.AbortMultipartUploadRequest(
            bucket=self.request.bucket, key=self.request.key, upload_id=self.upload_id
        )
        with contextlib.suppress(GatewayCallError):
            await self.abort_multipart_upload(request)


class InputReader:
    """The bytes of stdin (``path`` None) or of a pipe, FIFO or device, read by a daemon thread of
    its own, one read per :meth:`chunks` step.

    Neither ``asyncio.to_thread`` nor a file object will do for an input that may block forever:
    the interpreter waits for the executor's threads at exit, and a daemon thread blocked in a
    buffered file's read holds the file's lock then (a fatal error). This thread reads the file
    descriptor itself; a read nobody waits for any more is left behind, and dies with the
    process."""

    def __init__(self, path: str | None) -> None:
        self._path = path
        self._requests: queue.SimpleQueue[
            tuple[asyncio.AbstractEventLoop, asyncio.Future[bytes]]
        ] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None

    async def chunks(self) -> AsyncIterator[bytes]:
        while chunk := await self._read():
            yield chunk

    async def _read(self) -> bytes:
        if self._thread is None:
            self._thread = threading.Thread(target=self._serve, name="upload-input", daemon=True)
            self._thread.start()
        loop = asyncio.get_running_loop()
        future: asyncio.Future[bytes] = loop.create_future()
        self._requests.put((loop, future))
        return await future

    def _serve(self) -> None:
        fd: int | None = None
        try:
            while True:
                loop, future = self._requests.get()
                try:
                    if fd is None:
                        fd = 0 if self._path is None else os.open(self._path, os.O_RDONLY)
                    data = os.read(fd, CHUNK_SIZE)
                except OSError as exc:
                    _resolve(loop, future, exc)
                    return
                _resolve(loop, future, data)
                if not data:
                    return
        finally:
            if fd is not None and fd != 0:
                os.close(fd)


def _resolve(
    loop: asyncio.AbstractEventLoop, future: asyncio.Future[bytes], outcome: bytes | OSError
) -> None:
    """Hand a read's outcome to the loop waiting for it (if it still is)."""

    def settle() -> None:
        if future.done():
            return
        if isinstance(outcome, OSError):
            future.set_exception(outcome)
        else:
            future.set_result(outcome)

    with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits any more
        loop.call_soon_threadsafe(settle)


def result_json(result: UploadResult) -> dict[str, Any]:
    """The JSON ``upload`` prints, with S3's member names. ``ChecksumComputedBy``: ``S3`` when
    S3 reported the checksum, else ``gateway`` (WriteObject: computed over the bytes and matched
    to the client's) or ``client`` (derived from the part checksums)."""
    output: dict[str, Any] = {"Bucket": result.bucket, "Key": result.key, "ETag": result.etag}
    response = result.response
    if isinstance(response, pb.WrittenObject) and response.version_id:
        output["VersionId"] = response.version_id
    if result.checksum:
        output[f"Checksum{result.checksum_algorithm}"] = result.checksum
        output["ChecksumType"] = result.checksum_type
        written = isinstance(response, pb.WrittenObject)
        by = "S3" if result.checksum_from_s3 else "gateway" if written else "client"
        output["ChecksumComputedBy"] = by
    for field, member in (
        ("server_side_encryption", "ServerSideEncryption"),
        ("ssekms_key_id", "SSEKMSKeyId"),
        ("sse_customer_algorithm", "SSECustomerAlgorithm"),
        ("sse_customer_key_md5", "SSECustomerKeyMD5"),
    ):
        if value := getattr(response, field, ""):
            output[member] = value
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
        options = options_from(args, sized_here=True)
    except CommandError as exc:
        return _fail("demo", exc, exc.code)
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
            listen_address="127.0.0.1:0",
            metrics_address="",
            drain_delay=0,
            s3_endpoint_url=s3_url,
            write_part_size=options.part_size,
            write_parts_in_flight=options.concurrency,
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
