"""``s3-upload-gateway reap-uploads``: abort multipart uploads abandoned for too long.

S3 keeps the parts of an upload that was neither completed nor aborted, and bills for them, until
a lifecycle rule aborts it. Directory buckets (S3 Express One Zone) have no such rules, so this
command does the job: it lists the bucket's uploads through the gateway (ListMultipartUploads,
every page), and aborts each one initiated longer ago than ``--older-than``. ``--dry-run`` only
lists. It works for both bucket types and needs no AWS credentials of its own: run it as a
Kubernetes CronJob against the gateway's Service. A gateway that authenticates its callers takes
a bearer token (--token-file, else $GATEWAY_TOKEN) and/or, over https://, a client certificate
(--client-cert and --client-key).

Exit status: 0 when every stale upload was aborted (or listed, with --dry-run); 252 for a bad
command line, 253 for a token, certificate or CA file that cannot be used, 254 when the gateway
refused to list the uploads or to abort one of them, 255 when it could not be reached, 130 on
Ctrl-C (gateway.exits).
"""

from __future__ import annotations

import argparse
import datetime as dt
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass

import grpc

from gateway.cli.connection import add_caller_parser, add_connection_options, open_channel
from gateway.client import status_details
from gateway.exits import CommandError, ExitCode
from gateway.v1 import upload_service_pb2 as pb
from gateway.v1 import upload_service_pb2_grpc as pb_grpc

_DURATION_RE = re.compile(r"(\d+)([smhdw])")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def parse_duration(text: str) -> dt.timedelta:
    """``90s``, ``30m``, ``24h``, ``7d``, ``2w``, or combinations such as ``1d12h``."""
    parts = _DURATION_RE.findall(text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration such as 30m, 24h or 7d")
    return sum((dt.timedelta(**{_UNITS[u]: int(n)}) for n, u in parts), dt.timedelta())


@dataclass(frozen=True)
class Stale:
    key: str
    upload_id: str
    initiated: dt.datetime


def stale_uploads(
    stub: pb_grpc.UploadServiceStub, bucket: str, prefix: str, cutoff: dt.datetime
) -> Iterator[Stale]:
    """Every upload in ``bucket`` under ``prefix`` initiated before ``cutoff``, page by page."""
    request = pb.ListMultipartUploadsRequest(bucket=bucket, prefix=prefix)
    while True:
        page: pb.ListMultipartUploadsResponse = stub.ListMultipartUploads(request)
        for upload in page.uploads:
            initiated = upload.initiated.ToDatetime(tzinfo=dt.UTC)
            if initiated < cutoff:
                yield Stale(upload.key, upload.upload_id, initiated)
        if not page.is_truncated:
            return
        request.key_marker = page.next_key_marker
        request.upload_id_marker = page.next_upload_id_marker


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = add_caller_parser(
        subparsers,
        "reap-uploads",
        help="abort multipart uploads older than a given age",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--bucket", required=True, help="the bucket to clean up")
    parser.add_argument(
        "--older-than",
        required=True,
        type=parse_duration,
        metavar="DURATION",
        help="abort uploads initiated longer ago than this: 90s, 30m, 24h, 7d, 1d12h…",
    )
    parser.add_argument("--prefix", default="", help="only uploads whose key starts with this")
    parser.add_argument("--dry-run", action="store_true", help="list what would be aborted")
    add_connection_options(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    try:
        channel, endpoint = open_channel(args, connect_timeout=None)
    except CommandError as exc:
        print(f"s3-upload-gateway reap-uploads: {exc}", file=sys.stderr)
        return exc.code
    cutoff = dt.datetime.now(dt.UTC) - args.older_than
    verb = "would abort" if args.dry_run else "aborted"
    found = failed = 0
    with channel:
        stub = pb_grpc.UploadServiceStub(channel)
        try:
            for stale in stale_uploads(stub, args.bucket, args.prefix, cutoff):
                found += 1
                if not args.dry_run and not _abort(stub, args.bucket, stale):
                    failed += 1
                    continue
                print(f"{verb}\t{stale.key}\t{stale.upload_id}\t{stale.initiated.isoformat()}")
        except grpc.RpcError as error:
            if _unreachable(error):
                print(
                    f"cannot reach the gateway at {endpoint.url}: {error.details()}",
                    file=sys.stderr,
                )
                return ExitCode.CONNECTION
            print(f"cannot list uploads of {args.bucket}: {_describe(error)}", file=sys.stderr)
            return ExitCode.SERVICE_ERROR
    done = found - failed
    print(
        f"{done} upload(s) older than {args.older_than} {verb} in {args.bucket}"
        + (f"; {failed} could not be aborted" if failed else ""),
        file=sys.stderr,
    )
    return ExitCode.SERVICE_ERROR if failed else ExitCode.OK


def _abort(stub: pb_grpc.UploadServiceStub, bucket: str, stale: Stale) -> bool:
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
