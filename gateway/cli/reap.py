"""``s3-upload-gateway reap-uploads``: abort multipart uploads abandoned for too long.

S3 keeps the parts of an upload that was neither completed nor aborted, and bills for them, until
a lifecycle rule aborts it. Directory buckets (S3 Express One Zone) have no such rules, so this
command does the job: it lists the bucket's uploads through the gateway (ListMultipartUploads,
every page), and aborts each one initiated longer ago than ``--older-than``.

With the write token keys of the gateway (``--write-token-keys-file``, else
$GATEWAY_WRITE_TOKEN_KEYS_FILE), it also aborts the uploads of resumable writes that have expired,
however young ``--older-than`` would find them, and their markers: each resumable write has a
marker, an empty upload under ``.s3-upload-gateway/resumable-writes/`` in its bucket whose key,
signed with those keys, names the write's expiry and upload. An upload that merely looks like a
marker is not one, and neither it nor what it names is touched. At least one of ``--older-than``
and the keys is needed. ``--dry-run`` only lists.

It works for both bucket types and needs no AWS credentials of its own: run it as a Kubernetes
CronJob against the gateway's Service. A gateway that authenticates its callers takes a bearer
token (--token-file, else $GATEWAY_TOKEN) and/or, over https://, a client certificate
(--client-cert and --client-key).

Each upload aborted is a line of its own on standard output: the verb, the key, the upload id, the
time it was initiated, and why (``older than``, ``expired write``, ``marker``).

Exit status: 0 when every stale upload was aborted (or listed, with --dry-run); 252 for a bad
command line, 253 for a token, certificate, CA or key file that cannot be used, 254 when the
gateway refused to list the uploads or to abort one of them, 255 when it could not be reached, 130
on Ctrl-C (gateway.exits).
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import re
import sys
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass

import grpc

from gateway.cli.connection import add_caller_parser, add_connection_options, open_channel
from gateway.client import status_details
from gateway.exits import ClientConfigError, CommandError, ExitCode, UsageError
from gateway.security.write_tokens import (
    MARKER_PREFIX,
    WriteKeys,
    WriteKeysError,
    parse_marker,
    upload_digest,
)
from gateway.v1 import upload_service_pb2 as pb
from gateway.v1 import upload_service_pb2_grpc as pb_grpc

#: The variable naming the write token key file, as for the gateway.
KEYS_ENV = "GATEWAY_WRITE_TOKEN_KEYS_FILE"
_DURATION_RE = re.compile(r"(\d+)([smhdw])")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def parse_duration(text: str) -> dt.timedelta:
    """``90s``, ``30m``, ``24h``, ``7d``, ``2w``, or combinations such as ``1d12h``."""
    parts = _DURATION_RE.findall(text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration such as 30m, 24h or 7d")
    return sum((dt.timedelta(**{_UNITS[u]: int(n)}) for n, u in parts), dt.timedelta())


@dataclass(frozen=True)
class Upload:
    key: str
    upload_id: str
    initiated: dt.datetime


@dataclass(frozen=True)
class Stale:
    upload: Upload
    #: ``older than``, ``expired write`` or ``marker``.
    why: str


def uploads(stub: pb_grpc.UploadServiceStub, bucket: str, prefix: str) -> Iterator[Upload]:
    """Every upload in ``bucket`` under ``prefix``, page by page."""
    request = pb.ListMultipartUploadsRequest(bucket=bucket, prefix=prefix)
    while True:
        page: pb.ListMultipartUploadsResponse = stub.ListMultipartUploads(request)
        for upload in page.uploads:
            initiated = upload.initiated.ToDatetime(tzinfo=dt.UTC)
            yield Upload(upload.key, upload.upload_id, initiated)
        if not page.is_truncated:
            return
        request.key_marker = page.next_key_marker
        request.upload_id_marker = page.next_upload_id_marker


def expired_markers(
    stub: pb_grpc.UploadServiceStub, bucket: str, keys: dict[str, bytes], now: dt.datetime
) -> dict[str, Upload]:
    """The markers of the resumable writes in ``bucket`` that expired before ``now``, signed by
    one of ``keys``, by the digest of the upload each marks."""
    found: dict[str, Upload] = {}
    for upload in uploads(stub, bucket, MARKER_PREFIX):
        marker = parse_marker(upload.key)
        if marker is None or marker.expires > now.timestamp():
            continue
        if marker.signed(keys, bucket):
            found[marker.upload] = upload
    return found


def stale_uploads(
    stub: pb_grpc.UploadServiceStub,
    bucket: str,
    prefix: str,
    cutoff: dt.datetime | None,
    markers: dict[str, Upload],
) -> Iterator[Stale]:
    """The uploads under ``prefix`` to abort: initiated before ``cutoff``, or marked by one of
    ``markers`` (which this leaves out: :func:`run` aborts them once their write is gone)."""
    marker_ids = {marker.upload_id for marker in markers.values()}
    for upload in uploads(stub, bucket, prefix):
        if upload.upload_id in marker_ids:
            continue
        if upload_digest(upload.upload_id) in markers:
            yield Stale(upload, "expired write")
        elif cutoff is not None and upload.initiated < cutoff:
            yield Stale(upload, "older than")


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = add_caller_parser(
        subparsers,
        "reap-uploads",
        help="abort multipart uploads older than a given age, and expired resumable writes",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--bucket", required=True, help="the bucket to clean up")
    parser.add_argument(
        "--older-than",
        type=parse_duration,
        metavar="DURATION",
        help="abort uploads initiated longer ago than this: 90s, 30m, 24h, 7d, 1d12h…",
    )
    parser.add_argument(
        "--write-token-keys-file",
        metavar="FILE",
        default=os.environ.get(KEYS_ENV) or None,
        help="the gateway's write token key file: abort the uploads of expired resumable "
        f"writes too. Default: ${KEYS_ENV}",
    )
    parser.add_argument("--prefix", default="", help="only uploads whose key starts with this")
    parser.add_argument("--dry-run", action="store_true", help="list what would be aborted")
    add_connection_options(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    try:
        if args.older_than is None and args.write_token_keys_file is None:
            raise UsageError(
                "give --older-than, --write-token-keys-file (or $GATEWAY_WRITE_TOKEN_KEYS_FILE), "
                "or both"
            )
        keys = _keys(args.write_token_keys_file)
        channel, endpoint = open_channel(args, connect_timeout=None)
    except CommandError as exc:
        print(f"s3-upload-gateway reap-uploads: {exc}", file=sys.stderr)
        return exc.code
    now = dt.datetime.now(dt.UTC)
    cutoff = None if args.older_than is None else now - args.older_than
    verb = "would abort" if args.dry_run else "aborted"
    counts: Counter[str] = Counter()
    failed = 0

    def abort(stale: Stale) -> bool:
        nonlocal failed
        if not args.dry_run and not _abort(stub, args.bucket, stale.upload):
            failed += 1
            return False
        upload = stale.upload
        initiated = upload.initiated.isoformat()
        print(f"{verb}\t{upload.key}\t{upload.upload_id}\t{initiated}\t{stale.why}")
        counts[stale.why] += 1
        return True

    with channel:
        stub = pb_grpc.UploadServiceStub(channel)
        try:
            markers = {} if keys is None else expired_markers(stub, args.bucket, keys, now)
            found: set[str] = set()
            kept: set[str] = set()
            for stale in stale_uploads(stub, args.bucket, args.prefix, cutoff, markers):
                digest = upload_digest(stale.upload.upload_id)
                found.add(digest)
                if not abort(stale) and digest in markers:
                    kept.add(digest)  # its marker stays until the write's upload is gone
            for digest, marker in markers.items():
                # A marker whose write was not listed names a write that ended, unless the
                # write is outside --prefix.
                if digest not in kept and (digest in found or not args.prefix):
                    abort(Stale(marker, "marker"))
        except grpc.RpcError as error:
            if _unreachable(error):
                print(
                    f"cannot reach the gateway at {endpoint.url}: {error.details()}",
                    file=sys.stderr,
                )
                return ExitCode.CONNECTION
            print(f"cannot list uploads of {args.bucket}: {_describe(error)}", file=sys.stderr)
            return ExitCode.SERVICE_ERROR
    told = []
    if cutoff is not None:
        told.append(f"{counts['older than']} upload(s) older than {args.older_than}")
    if keys is not None:
        told.append(
            f"{counts['expired write']} expired resumable write(s) and {counts['marker']} marker(s)"
        )
    print(
        f"{'; '.join(told)} {verb} in {args.bucket}"
        + (f"; {failed} could not be aborted" if failed else ""),
        file=sys.stderr,
    )
    return ExitCode.SERVICE_ERROR if failed else ExitCode.OK


def _keys(path: str | None) -> dict[str, bytes] | None:
    """The keys of the write token key file ``path`` (None for none)."""
    if path is None:
        return None
    try:
        return WriteKeys(path).value.keys
    except WriteKeysError as exc:
        raise ClientConfigError(str(exc)) from None


def _abort(stub: pb_grpc.UploadServiceStub, bucket: str, stale: Upload) -> bool:
    request = pb.AbortMultipartUploadRequest(
        bucket=bucket, key=stale.key, upload_id=stale.upload_id
    )
    try:
        stub.AbortMultipartUpload(request)
    except grpc.RpcError as error:
        if error.code() == grpc.StatusCode.NOT_FOUND:
            return True  # completed or aborted meanwhile: gone either way
        print(f"cannot abort {stale.key} {stale.upload_id}: {_describe(error)}", file=sys.stderr)
        return False
    return True


def _describe(error: grpc.RpcError) -> str:
    return f"{error.code().name}: {error.details()}"


def _unreachable(error: grpc.RpcError) -> bool:
    """A call that never reached the gateway: UNAVAILABLE without the gateway's rich status."""
    return error.code() == grpc.StatusCode.UNAVAILABLE and status_details(error) is None
