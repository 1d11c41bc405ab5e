"""One WriteObject stream through the gateway versus S3 clients straight to S3, against an S3
stand-in that caps each connection's bandwidth and delays every answer's first byte.

    python -m bench.write_object [--size-mib 256] [--repeat 5] [--warmup 1]
                                 [--cap-mib-s 32] [--first-byte-ms 30] [--continue-ms MS]
                                 [--part-size-mib 8] [--concurrency 4] [--quick] [--json FILE]

Starts, as separate processes on loopback, the stand-in (``bench/sink.py`` with ``--cap-mib-s`` and
``--first-byte-ms``) and the gateway (``s3-upload-gateway serve --embedded-s3 off``, its
``--write-part-size`` and ``--write-parts-in-flight`` set to the part size and concurrency), writes
a random file, then uploads it with each contender, each a fresh process, the order rotated every
round so that machine noise hits all alike:

- ``WriteObject``: a ``grpc.aio`` client streams the file as 1 MiB ``data`` messages (each with its
  CRC32C) and a ``finish`` with the CRC64NVME of the whole, through the gateway;
- ``aws s3 cp``: AWS CLI v1 (s3transfer), ``multipart_chunksize`` and ``max_concurrent_requests``
  from a temporary AWS config file;
- ``awscrt``: awscrt's S3Client (the CLI v2's CRT transfer engine), ``part_size`` and
  ``max_active_connections_override`` (what bounds its connections), a CRC32 trailer as the CLI v2
  sends;
- ``one PutObject``: ``aws s3 cp`` with a ``multipart_threshold`` above the file's size: one
  request on one connection.

Time: for WriteObject, from the client opening the stream to the gateway's last answer; for the
others, as the stand-in saw it, from the first request's head to the last answer sent (process
start-up, which costs the AWS CLI about 1.5 s, is not counted). CPU: utime + stime of each client
process (``wait4``) and of the gateway (``/proc/PID/stat``, before and after); peak RSS: the
client's ``ru_maxrss`` and the gateway's ``VmHWM``, reset through ``/proc/PID/clear_refs`` before
each run. The stand-in checks every object's size and counts its requests and connections.

``--as-client writeobject|crt`` runs one upload in this process (what the benchmark starts as a
contender's process) and prints its timing as JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import AsyncIterator, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench.sink import STATS_PREFIX, sink_process

if TYPE_CHECKING:
    from bench.processes import Gateway

# The contenders' processes (--as-client) import only what their upload needs: bench.processes
# imports grpc, which would count in the awscrt process's memory.

MiB = 1024 * 1024
CHUNK = MiB
BUCKET = "bench"
BIN = Path(sys.executable).parent
CONTENDERS = ("WriteObject", "aws s3 cp", "awscrt", "one PutObject")


@dataclass
class Run:
    """One upload by one contender."""

    contender: str
    key: str
    seconds: float
    mib_s: float
    process_seconds: float
    client_cpu_s: float
    client_peak_rss_mib: float
    gateway_cpu_s: float = 0.0
    gateway_peak_rss_mib: float = 0.0
    endpoint_cpu_s: float = 0.0
    #: What the stand-in saw: its own first-request-to-last-answer window, requests, connections.
    endpoint_seconds: float = 0.0
    requests: int = 0
    connections: int = 0
    peak_in_flight: int = 0


@dataclass
class Summary:
    contender: str
    runs: int
    mib_s: float
    mib_s_min: float
    mib_s_max: float
    client_cpu_s: float
    gateway_cpu_s: float
    cpu_s: float
    client_peak_rss_mib: float
    gateway_peak_rss_mib: float
    connections: int
    peak_in_flight: int
    requests: int
    endpoint_cpu_share: float


@dataclass
class Report:
    size_mib: int
    part_size_mib: int
    concurrency: int
    cap_mib_s: float
    first_byte_ms: float
    continue_ms: float
    repeat: int
    warmup: int
    versions: dict[str, str]
    summaries: list[Summary] = field(default_factory=list)
    runs: list[Run] = field(default_factory=list)


# --- the contenders' own processes --------------------------------------------------------------


async def write_object_client(address: str, path: str, key: str) -> dict[str, float]:
    """Stream ``path`` through one WriteObject call, as the Python client does: the spec with the
    object's size, 1 MiB ``data`` messages with their CRC32C, ``finish`` with the CRC64NVME."""
    import grpc

    from gateway import checksums
    from gateway.v1 import upload_service_pb2 as pb
    from gateway.v1 import upload_service_pb2_grpc as pb_grpc

    size = await asyncio.to_thread(os.path.getsize, path)
    algorithm = checksums.CRC64NVME

    async def messages() -> AsyncIterator[pb.WriteObjectRequest]:
        request = pb.CreateMultipartUploadRequest(
            bucket=BUCKET, key=key, checksum_algorithm=algorithm.proto_value
        )
        yield pb.WriteObjectRequest(spec=pb.WriteObjectSpec(object=request, object_size=size))
        whole = algorithm.new()
        with open(path, "rb") as source:  # noqa: ASYNC230 - read in a thread
            while chunk := await asyncio.to_thread(source.read, CHUNK):
                whole.update(chunk)
                data = pb.ChecksummedData(content=chunk, crc32c=checksums.crc32c(chunk))
                yield pb.WriteObjectRequest(data=data)
        finish = pb.FinishWrite(**{algorithm.field: checksums.encode(whole.digest())})
        yield pb.WriteObjectRequest(finish=finish)

    async with grpc.aio.insecure_channel(address) as channel:
        await channel.channel_ready()
        stub = pb_grpc.UploadServiceStub(channel)  # type: ignore[call-overload]
        started = time.time()
        written = None
        async for response in stub.WriteObject(messages()):
            if response.WhichOneof("message") == "object":
                written = response.object
        ended = time.time()
    if written is None or written.size != size:
        raise SystemExit(f"WriteObject answered {written}")
    return {"started": started, "ended": ended, "parts": written.parts}


def crt_client(
    endpoint: str, path: str, key: str, part_size: int, connections: int
) -> dict[str, float]:
    """Upload ``path`` with awscrt's S3Client: ``part_size`` parts, at most ``connections``
    requests at once (``max_active_connections_override``; the throughput target alone never
    goes below 10), a CRC32 trailer as the AWS CLI v2 sends."""
    from urllib.parse import urlsplit

    from awscrt import auth, http, s3

    size = os.path.getsize(path)
    credentials = auth.AwsCredentialsProvider.new_static(
        os.environ["AWS_ACCESS_KEY_ID"], os.environ["AWS_SECRET_ACCESS_KEY"]
    )
    region = os.environ["AWS_REGION"]
    client = s3.S3Client(
        region=region,
        tls_mode=s3.S3RequestTlsMode.DISABLED,
        signing_config=s3.create_default_s3_signing_config(
            region=region, credential_provider=credentials
        ),
        part_size=part_size,
        multipart_upload_threshold=part_size,
        # What the capped connections can carry; it sizes the client's buffers.
        throughput_target_gbps=connections * 100 * 8 / 1000,
        max_active_connections_override=connections,
    )
    headers = http.HttpHeaders(
        [
            ("Host", urlsplit(endpoint).netloc),
            ("Content-Length", str(size)),
            ("Content-Type", "application/octet-stream"),
        ]
    )
    statuses: list[int] = []
    started = time.time()
    request = client.make_request(
        type=s3.S3RequestType.PUT_OBJECT,
        request=http.HttpRequest("PUT", f"/{BUCKET}/{key}", headers),
        send_filepath=path,
        checksum_config=s3.S3ChecksumConfig(
            algorithm=s3.S3ChecksumAlgorithm.CRC32, location=s3.S3ChecksumLocation.TRAILER
        ),
        on_headers=lambda status_code, headers, **_: statuses.append(status_code),
    )
    request.finished_future.result()
    ended = time.time()
    if statuses[-1:] != [200]:
        raise SystemExit(f"awscrt answered {statuses}")
    return {"started": started, "ended": ended}


# --- the benchmark ------------------------------------------------------------------------------


@dataclass
class Measured:
    """A finished contender process: its output and what it cost."""

    stdout: str
    seconds: float
    cpu_s: float
    peak_rss_mib: float


def run_measured(command: list[str], env: dict[str, str]) -> Measured:
    """Run ``command`` to its end; its wall time, CPU time and peak RSS (``wait4``)."""
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        started = time.perf_counter()
        process = subprocess.Popen(command, env=env, stdout=out, stderr=err, text=True)
        _, status, usage = os.wait4(process.pid, 0)
        seconds = time.perf_counter() - started
        process.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        if process.returncode != 0:
            raise SystemExit(f"{command[:4]} failed ({process.returncode}): {err.read().strip()}")
        return Measured(
            out.read(), seconds, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024
        )


def key_stats(endpoint: str, key: str) -> dict[str, Any]:
    with urllib.request.urlopen(f"{endpoint}{STATS_PREFIX}{BUCKET}/{key}", timeout=10) as answer:
        stats: dict[str, Any] = json.load(answer)
        return stats


def write_random_file(path: Path, size: int) -> None:
    with path.open("wb") as handle:
        for start in range(0, size, 8 * MiB):
            handle.write(os.urandom(min(8 * MiB, size - start)))


def aws_config(path: Path, part_size_mib: int, concurrency: int, threshold: str) -> Path:
    """An AWS CLI configuration: the part size and concurrency, and no SHA-256 of the payload
    (the CLI signs the payload over plain http only; over https, as against S3, it does not)."""
    path.write_text(
        "[default]\nregion = us-east-1\ns3 =\n"
        f"    multipart_chunksize = {part_size_mib}MB\n"
        f"    multipart_threshold = {threshold}\n"
        f"    max_concurrent_requests = {concurrency}\n"
        "    payload_signing_enabled = false\n"
    )
    return path


class Bench:
    """The processes and files of one benchmark run."""

    def __init__(
        self,
        args: argparse.Namespace,
        directory: Path,
        endpoint: str,
        sink_pid: int,
        gateway: Gateway,
    ) -> None:
        self.args = args
        self.endpoint = endpoint
        self.sink_pid = sink_pid
        self.gateway = gateway
        self.size = args.size_mib * MiB
        self.file = directory / "object.bin"
        write_random_file(self.file, self.size)
        from bench.processes import AWS_ENV

        self.env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")} | AWS_ENV
        configs = {
            "multipart": aws_config(
                directory / "aws-multipart", args.part_size_mib, args.concurrency,
                f"{args.part_size_mib}MB",
            ),
            "single": aws_config(directory / "aws-single", args.part_size_mib, 1, "5GB"),
        }  # fmt: skip
        self.aws_env = {
            name: self.env | {"AWS_CONFIG_FILE": str(config)} for name, config in configs.items()
        }
        self.uploads = 0

    def run(self, contender: str) -> Run:
        from bench.processes import cpu_seconds

        self.uploads += 1
        key = f"{contender.replace(' ', '-')}-{self.uploads}"
        sink_cpu = cpu_seconds(self.sink_pid)
        gateway_cpu = self.gateway.cpu_seconds()
        self.gateway.reset_peak_rss()
        measured = run_measured(self.command(contender, key), self.env_for(contender))
        gateway_cpu = self.gateway.cpu_seconds() - gateway_cpu
        stats = key_stats(self.endpoint, key)
        if stats["size"] != self.size:
            raise SystemExit(f"{contender}: the stand-in holds {stats['size']} bytes of {key}")
        endpoint_seconds = stats["last_answer"] - stats["first_request"]
        seconds = endpoint_seconds
        if contender == "WriteObject":
            timing = json.loads(measured.stdout)
            seconds = timing["ended"] - timing["started"]
        run = Run(
            contender=contender,
            key=key,
            seconds=round(seconds, 3),
            mib_s=round(self.size / MiB / seconds, 1),
            process_seconds=round(measured.seconds, 2),
            client_cpu_s=round(measured.cpu_s, 2),
            client_peak_rss_mib=round(measured.peak_rss_mib, 1),
            endpoint_cpu_s=round(cpu_seconds(self.sink_pid) - sink_cpu, 2),
            endpoint_seconds=round(endpoint_seconds, 3),
            requests=stats["requests"],
            connections=stats["connections"],
            peak_in_flight=stats["peak_in_flight"],
        )
        if contender == "WriteObject":
            run.gateway_cpu_s = round(gateway_cpu, 2)
            run.gateway_peak_rss_mib = round(self.gateway.status("VmHWM") / MiB, 1)
        return run

    def command(self, contender: str, key: str) -> list[str]:
        args = self.args
        me = [sys.executable, "-m", "bench.write_object", "--as-client"]
        if contender == "WriteObject":
            return [*me, "writeobject", self.gateway.address, str(self.file), key]
        if contender == "awscrt":
            return [
                *(*me, "crt", self.endpoint, str(self.file), key),
                *("--part-size-mib", str(args.part_size_mib), "--concurrency"),
                str(args.concurrency),
            ]
        return [
            *(str(BIN / "aws"), "s3", "cp", str(self.file), f"s3://{BUCKET}/{key}"),
            *("--endpoint-url", self.endpoint, "--only-show-errors"),
        ]

    def env_for(self, contender: str) -> dict[str, str]:
        if contender == "aws s3 cp":
            return self.aws_env["multipart"]
        if contender == "one PutObject":
            return self.aws_env["single"]
        return self.env


def summarize(contender: str, runs: list[Run]) -> Summary:
    def median(values: Iterator[float]) -> float:
        return round(statistics.median(values), 2)

    return Summary(
        contender=contender,
        runs=len(runs),
        mib_s=median(r.mib_s for r in runs),
        mib_s_min=min(r.mib_s for r in runs),
        mib_s_max=max(r.mib_s for r in runs),
        client_cpu_s=median(r.client_cpu_s for r in runs),
        gateway_cpu_s=median(r.gateway_cpu_s for r in runs),
        cpu_s=median(r.client_cpu_s + r.gateway_cpu_s for r in runs),
        client_peak_rss_mib=median(r.client_peak_rss_mib for r in runs),
        gateway_peak_rss_mib=median(r.gateway_peak_rss_mib for r in runs),
        connections=max(r.connections for r in runs),
        peak_in_flight=max(r.peak_in_flight for r in runs),
        requests=max(r.requests for r in runs),
        endpoint_cpu_share=round(max(r.endpoint_cpu_s / r.endpoint_seconds for r in runs), 2),
    )


def versions() -> dict[str, str]:
    found = {"python": platform.python_version(), "cpus": str(os.cpu_count())}
    for package in ("s3-upload-gateway", "grpcio", "awscli", "s3transfer", "botocore", "awscrt"):
        found[package] = metadata.version(package)
    found["aiobotocore"] = metadata.version("aiobotocore")
    found["uvloop"] = metadata.version("uvloop")
    return found


@contextmanager
def processes(args: argparse.Namespace) -> Iterator[tuple[str, int, Gateway]]:
    """The stand-in and the gateway relaying to it."""
    from bench.processes import gateway_server

    with ExitStack() as stack:
        endpoint, sink = stack.enter_context(
            sink_process(args.cap_mib_s, args.first_byte_ms, args.continue_ms)
        )
        gateway = stack.enter_context(
            gateway_server(
                endpoint,
                *("--write-part-size", str(args.part_size_mib * MiB)),
                *("--write-parts-in-flight", str(args.concurrency)),
            )
        )
        yield endpoint, sink.pid, gateway


def run(args: argparse.Namespace) -> Report:
    report = Report(
        size_mib=args.size_mib,
        part_size_mib=args.part_size_mib,
        concurrency=args.concurrency,
        cap_mib_s=args.cap_mib_s,
        first_byte_ms=args.first_byte_ms,
        continue_ms=args.first_byte_ms if args.continue_ms is None else args.continue_ms,
        repeat=args.repeat,
        warmup=args.warmup,
        versions=versions(),
    )
    with tempfile.TemporaryDirectory() as tmp, processes(args) as (endpoint, sink_pid, gateway):
        bench = Bench(args, Path(tmp), endpoint, sink_pid, gateway)
        bench.run("WriteObject")  # the gateway's first call loads botocore's models
        contenders = [c for c in CONTENDERS if c in args.contenders]
        for round_number in range(args.warmup + args.repeat):
            shift = round_number % len(contenders)
            for contender in contenders[shift:] + contenders[:shift]:
                result = bench.run(contender)
                counted = round_number >= args.warmup
                print(
                    f"{'' if counted else '(warm-up) '}{contender:14} {result.mib_s:7.1f} MiB/s  "
                    f"{result.seconds:6.2f} s  client CPU {result.client_cpu_s:5.2f} s  "
                    f"gateway CPU {result.gateway_cpu_s:5.2f} s  connections "
                    f"{result.connections} (at once {result.peak_in_flight})",
                    file=sys.stderr,
                    flush=True,
                )
                if counted:
                    report.runs.append(result)
    for contender in contenders:
        runs = [r for r in report.runs if r.contender == contender]
        report.summaries.append(summarize(contender, runs))
    return report


def print_report(report: Report) -> None:
    print(
        f"{report.size_mib} MiB object, {report.part_size_mib} MiB parts, concurrency "
        f"{report.concurrency}; stand-in: {report.cap_mib_s:g} MiB/s per connection, first byte "
        f"{report.first_byte_ms:g} ms (100 Continue {report.continue_ms:g} ms); median of "
        f"{report.repeat} (after {report.warmup} warm-up round)"
    )
    print()
    print(
        "| contender | MiB/s median | min-max | client CPU s | gateway CPU s | client peak RSS "
        "MiB | gateway peak RSS MiB | S3 connections (at once) | requests |"
    )
    print("|---|---:|---|---:|---:|---:|---:|---:|---:|")
    for s in report.summaries:
        gateway = s.contender == "WriteObject"
        print(
            f"| {s.contender} | {s.mib_s:.1f} | {s.mib_s_min:.1f}-{s.mib_s_max:.1f} | "
            f"{s.client_cpu_s:.2f} | {f'{s.gateway_cpu_s:.2f}' if gateway else '-'} | "
            f"{s.client_peak_rss_mib:.0f} | "
            f"{f'{s.gateway_peak_rss_mib:.0f}' if gateway else '-'} | "
            f"{s.connections} ({s.peak_in_flight}) | {s.requests} |"
        )
    by_name = {s.contender: s for s in report.summaries}
    print()
    share = max(s.endpoint_cpu_share for s in report.summaries)
    print(f"stand-in CPU: at most {share:.0%} of one core during a run")
    ours = by_name.get("WriteObject")
    if ours is None:
        return
    for other, target in (("aws s3 cp", 0.9), ("one PutObject", 3.0), ("awscrt", None)):
        if other in by_name:
            ratio = ours.mib_s / by_name[other].mib_s
            verdict = "" if target is None else f"  (target >= {target}: {ratio >= target})"
            print(f"WriteObject / {other}: {ratio:.2f}{verdict}")


def client_main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.write_object --as-client")
    parser.add_argument("kind", choices=["writeobject", "crt"])
    parser.add_argument("target", help="the gateway's address, or the S3 endpoint's URL")
    parser.add_argument("file")
    parser.add_argument("key")
    parser.add_argument("--part-size-mib", type=int, default=8)
    parser.add_argument("--concurrency", type=int, default=4)
    args = parser.parse_args(argv)
    if args.kind == "writeobject":
        timing = asyncio.run(write_object_client(args.target, args.file, args.key))
    else:
        part_size = args.part_size_mib * MiB
        timing = crt_client(args.target, args.file, args.key, part_size, args.concurrency)
    print(json.dumps(timing))


def main() -> None:
    if sys.argv[1:2] == ["--as-client"]:
        client_main(sys.argv[2:])
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=256)
    parser.add_argument("--part-size-mib", type=int, default=8)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1, help="uncounted rounds first")
    parser.add_argument("--cap-mib-s", type=float, default=32.0, help="per S3 connection")
    parser.add_argument("--first-byte-ms", type=float, default=30.0)
    parser.add_argument("--continue-ms", type=float, help="default: --first-byte-ms")
    parser.add_argument(
        "--contenders",
        type=lambda text: [c.strip() for c in text.split(",")],
        default=list(CONTENDERS),
        help=f"comma-separated, from: {', '.join(CONTENDERS)}",
    )
    parser.add_argument("--quick", action="store_true", help="64 MiB, one round, no warm-up")
    parser.add_argument("--json", type=Path, help="also write the report as JSON here")
    args = parser.parse_args()
    if args.quick:
        args.size_mib, args.repeat, args.warmup = 64, 1, 0
    report = run(args)
    print_report(report)
    if args.json:
        args.json.write_text(json.dumps(asdict(report), indent=2) + "\n")


if __name__ == "__main__":
    main()
