"""The relay benchmark matrix: direct (A) versus relayed (B) across part sizes, streams, checksums.

    python -m bench.matrix [--quick] [--json FILE] [--endpoints sink,moto]

A: this process uploads parts straight to the S3 endpoint with aiobotocore (the gateway's own client
configuration: streamed body, unsigned payload), computing the configuration's checksums in the body
iterator. B: this process streams the same bytes as 1 MiB gRPC messages through the gateway (a
subprocess, metrics off, logging at WARNING) to the same endpoint, declaring the checksum in
``header.checksum_algorithm`` so the gateway computes it ("all": every value the header can carry,
Content-MD5 and the ten x-amz-checksum algorithms, given up front so the gateway computes and checks
all eleven). Each stream reuses its own part number, so moto's memory stays bounded.

Endpoints: ``sink`` (bench/sink.py, a process that drains bodies and answers like S3, so the backend
is not the bottleneck) and ``moto`` (``python -m moto.server``, a real S3 implementation; fewer
configurations). A and B alternate round by round (A B, then B A, ...) so machine noise hits both.

Reported per configuration: MiB/s of A and B (bytes / wall time of a round, median over rounds),
B/A, the gateway's CPU seconds per GiB relayed (utime+stime of the gateway process from
/proc/PID/stat over the B rounds), the client's CPU seconds per GiB (getrusage of this process over
the A rounds, and over the B rounds: what sending costs each way), and the gateway's peak RSS
(VmHWM, reset through /proc/PID/clear_refs before each configuration) with its growth over the RSS
at the configuration's start. Then p50/p99 latency of small sequential parts (64 KiB, 1 MiB; no
checksum), A and B interleaved part by part.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import platform
import resource
import statistics
import sys
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AsyncExitStack, ExitStack
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import grpc
from aiobotocore.session import get_session

from bench.processes import AWS_ENV, Gateway, gateway_server, moto_server
from bench.sink import sink_process
from gateway import checksums
from gateway.config import Settings
from gateway.server.s3 import client_config
from gateway.v1 import upload_service_pb2 as pb
from gateway.v1 import upload_service_pb2_grpc as pb_grpc

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB
CHUNK = MiB
CHANNELS = 1
BUCKET = "bench"
KEY = "matrix"
CHECKSUM_MODES = ("none", "CRC32C", "SHA256", "all")


def algorithms_for(mode: str) -> tuple[checksums.Algorithm, ...]:
    if mode == "none":
        return ()
    if mode == "all":
        return checksums.ALL
    return (checksums.BY_NAME[mode],)


@dataclass(frozen=True)
class Config:
    endpoint: str
    part_mib: int
    streams: int
    checksum: str


@dataclass
class Row:
    endpoint: str
    part_mib: int
    streams: int
    checksum: str
    rounds: int
    parts_per_stream: int
    direct_mib_s: float
    relayed_mib_s: float
    ratio: float
    gateway_cpu_s_per_gib: float
    direct_client_cpu_s_per_gib: float
    relayed_client_cpu_s_per_gib: float
    gateway_rss_start_mib: float
    gateway_peak_rss_mib: float
    gateway_rss_growth_mib: float
    direct_runs: list[float] = field(default_factory=list)
    relayed_runs: list[float] = field(default_factory=list)


@dataclass
class Latency:
    endpoint: str
    part_kib: int
    parts: int
    direct_p50_ms: float
    direct_p99_ms: float
    relayed_p50_ms: float
    relayed_p99_ms: float
    added_p50_ms: float


def own_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class Body:
    """A streamed aiobotocore body: ``size`` bytes in 1 MiB chunks, fed to the given hashers."""

    def __init__(self, block: bytes, size: int, algorithms: Sequence[checksums.Algorithm]) -> None:
        self._block = block
        self._left = size
        self._hasher = checksums.MultiHasher(algorithms) if algorithms else None

    def __aiter__(self) -> Body:
        return self

    async def __anext__(self) -> bytes:
        if self._left <= 0:
            if self._hasher is not None:
                self._hasher.digests()  # finish the digests, as a client sending them would
                self._hasher = None
            raise StopAsyncIteration
        chunk = self._block if self._left >= len(self._block) else self._block[: self._left]
        self._left -= len(chunk)
        if self._hasher is not None:
            self._hasher.update(chunk)
        return chunk

    async def read(self, size: int = -1) -> bytes:
        try:
            return await self.__anext__()
        except StopAsyncIteration:
            return b""

    def seek(self, *_: Any) -> int:
        raise OSError("not seekable")

    def tell(self) -> int:
        raise OSError("not seekable")


class Client:
    """Both sides' clients in this process, and the bytes they send."""

    def __init__(self, s3: Any, stub: Any, upload_id: str, more_stubs: Sequence[Any] = ()) -> None:
        self.s3 = s3
        self.stub = stub
        #: Stream N uses stub N modulo their number (one connection each).
        self.stubs = [stub, *more_stubs]
        self.upload_id = upload_id
        self.block = os.urandom(CHUNK)
        self._declared: dict[int, dict[str, str]] = {}

    def _declared_values(self, size: int) -> dict[str, str]:
        """Every header value for a part of ``size`` bytes ("all"), computed once, untimed."""
        if size not in self._declared:
            hasher = checksums.MultiHasher(checksums.ALL)
            left = size
            while left > 0:
                hasher.update(self.block[: min(CHUNK, left)])
                left -= CHUNK
            self._declared[size] = {
                a.field: checksums.encode(d) for a, d in hasher.digests().items()
            }
        return self._declared[size]

    async def direct(self, part_number: int, size: int, mode: str) -> None:
        body = Body(self.block[: min(CHUNK, size)], size, algorithms_for(mode))
        await self.s3.upload_part(
            Bucket=BUCKET,
            Key=KEY,
            UploadId=self.upload_id,
            PartNumber=part_number,
            ContentLength=size,
            Body=body,
        )

    def header(self, part_number: int, size: int, mode: str) -> pb.UploadPartRequest:
        header = pb.UploadPartHeader(
            bucket=BUCKET,
            key=KEY,
            upload_id=self.upload_id,
            part_number=part_number,
            content_length=size,
        )
        if mode == "all":
            for name, value in self._declared_values(size).items():
                setattr(header, name, value)
        elif mode != "none":
            header.checksum_algorithm = checksums.BY_NAME[mode].proto_value  # type: ignore[assignment]
        return pb.UploadPartRequest(header=header)

    async def relayed(self, part_number: int, size: int, mode: str) -> None:
        header = self.header(part_number, size, mode)
        data = pb.UploadPartRequest(data=pb.ChecksummedData(content=self.block[: min(CHUNK, size)]))

        async def messages() -> AsyncIterator[pb.UploadPartRequest]:
            yield header
            for _ in range(size // CHUNK or 1):
                yield data

        stub = self.stubs[(part_number - 1) % len(self.stubs)]
        await stub.UploadPart(messages())


async def timed_round(
    send: Callable[[int, int, str], Any], config: Config, parts_per_stream: int
) -> tuple[float, float]:
    """Run ``streams`` concurrent streams of ``parts_per_stream`` sequential parts; returns
    (wall seconds, this process's CPU seconds)."""
    size = config.part_mib * MiB

    async def stream(number: int) -> None:
        for _ in range(parts_per_stream):
            await send(number, size, config.checksum)

    cpu = own_cpu_seconds()
    started = time.perf_counter()
    await asyncio.gather(*(stream(i + 1) for i in range(config.streams)))
    return time.perf_counter() - started, own_cpu_seconds() - cpu


async def measure(
    client: Client, gateway: Gateway, config: Config, round_bytes: int, rounds: int
) -> Row:
    size = config.part_mib * MiB
    parts_per_stream = max(1, math.ceil(round_bytes / (size * config.streams)))
    moved = size * config.streams * parts_per_stream
    if moved >= GiB:
        rounds = 1
    start_rss = gateway.status("VmRSS")
    gateway.reset_peak_rss()
    direct, relayed = [], []
    gateway_cpu = direct_cpu = relayed_cpu = 0.0
    for index in range(rounds):
        for side in "AB" if index % 2 == 0 else "BA":
            if side == "A":
                wall, cpu = await timed_round(client.direct, config, parts_per_stream)
                direct.append(moved / MiB / wall)
                direct_cpu += cpu
            else:
                before = gateway.cpu_seconds()
                wall, cpu = await timed_round(client.relayed, config, parts_per_stream)
                gateway_cpu += gateway.cpu_seconds() - before
                relayed.append(moved / MiB / wall)
                relayed_cpu += cpu
    peak = gateway.status("VmHWM")
    gib = moved * rounds / GiB
    return Row(
        endpoint=config.endpoint,
        part_mib=config.part_mib,
        streams=config.streams,
        checksum=config.checksum,
        rounds=rounds,
        parts_per_stream=parts_per_stream,
        direct_mib_s=round(statistics.median(direct), 1),
        relayed_mib_s=round(statistics.median(relayed), 1),
        ratio=round(statistics.median(relayed) / statistics.median(direct), 2),
        gateway_cpu_s_per_gib=round(gateway_cpu / gib, 2),
        direct_client_cpu_s_per_gib=round(direct_cpu / gib, 2),
        relayed_client_cpu_s_per_gib=round(relayed_cpu / gib, 2),
        gateway_rss_start_mib=round(start_rss / MiB, 1),
        gateway_peak_rss_mib=round(peak / MiB, 1),
        gateway_rss_growth_mib=round((peak - start_rss) / MiB, 1),
        direct_runs=[round(x, 1) for x in direct],
        relayed_runs=[round(x, 1) for x in relayed],
    )


def percentile(values: list[float], q: int) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1]


async def latency(client: Client, endpoint: str, size: int, parts: int) -> Latency:
    direct, relayed = [], []
    for index in range(parts + 10):  # the first 10 of each warm up
        for side in "AB" if index % 2 == 0 else "BA":
            started = time.perf_counter()
            if side == "A":
                await client.direct(1, size, "none")
            else:
                await client.relayed(1, size, "none")
            elapsed = (time.perf_counter() - started) * 1000
            if index >= 10:
                (direct if side == "A" else relayed).append(elapsed)
    d50, r50 = statistics.median(direct), statistics.median(relayed)
    return Latency(
        endpoint=endpoint,
        part_kib=size // KiB,
        parts=parts,
        direct_p50_ms=round(d50, 2),
        direct_p99_ms=round(percentile(direct, 99), 2),
        relayed_p50_ms=round(r50, 2),
        relayed_p99_ms=round(percentile(relayed, 99), 2),
        added_p50_ms=round(r50 - d50, 2),
    )


@dataclass(frozen=True)
class Plan:
    configs: dict[str, list[Config]]
    latency_sizes: dict[str, list[int]]
    latency_parts: int
    round_bytes: int
    rounds: int


def plan(quick: bool, endpoints: Sequence[str], checksum: str = "CRC32C") -> Plan:
    if quick:
        configs = {
            "sink": [Config("sink", 64, s, checksum) for s in (1, 8, 32)],
            "moto": [Config("moto", 64, 1, "CRC32C")],
        }
        sizes = {"sink": [64 * KiB], "moto": []}
        return Plan({k: v for k, v in configs.items() if k in endpoints}, sizes, 50, 256 * MiB, 1)
    configs = {
        "sink": [
            Config("sink", size, streams, mode)
            for size in (8, 64)
            for streams in (1, 8, 32)
            for mode in CHECKSUM_MODES
        ],
        "moto": [Config("moto", 64, streams, "CRC32C") for streams in (1, 8)],
    }
    sizes = {"sink": [64 * KiB, MiB], "moto": [64 * KiB, MiB]}
    return Plan({k: v for k, v in configs.items() if k in endpoints}, sizes, 200, 512 * MiB, 3)


async def run_endpoint(
    name: str, url: str, gateway: Gateway, plan: Plan, progress: Callable[[str], None]
) -> tuple[list[Row], list[Latency]]:
    config = client_config(Settings(), "us-east-1")
    async with (
        AsyncExitStack() as stack,
        get_session().create_client(
            "s3",
            endpoint_url=url,
            config=config,
            aws_access_key_id=AWS_ENV["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=AWS_ENV["AWS_SECRET_ACCESS_KEY"],
        ) as s3,
        grpc.aio.insecure_channel(gateway.address) as channel,
    ):
        await s3.create_bucket(Bucket=BUCKET)
        upload = await s3.create_multipart_upload(Bucket=BUCKET, Key=KEY)
        # Extra channels, each its own connection, so `serve --workers N` can spread them.
        extra = [
            await stack.enter_async_context(
                grpc.aio.insecure_channel(
                    gateway.address, options=[("grpc.use_local_subchannel_pool", 1)]
                )
            )
            for _ in range(CHANNELS - 1)
        ]
        client = Client(
            s3,
            pb_grpc.UploadServiceStub(channel),  # type: ignore[call-overload]
            upload["UploadId"],
            [pb_grpc.UploadServiceStub(c) for c in extra],  # type: ignore[call-overload]
        )
        try:
            for mode in ("none", "CRC32C"):  # warm up both paths (imports, pools, connections)
                await client.direct(1, 8 * MiB, mode)
                await client.relayed(1, 8 * MiB, mode)
            rows = []
            for item in plan.configs.get(name, []):
                started = time.perf_counter()
                row = await measure(client, gateway, item, plan.round_bytes, plan.rounds)
                rows.append(row)
                progress(
                    f"{name} {item.part_mib} MiB x{item.streams} {item.checksum}: "
                    f"A {row.direct_mib_s} B {row.relayed_mib_s} MiB/s "
                    f"({time.perf_counter() - started:.0f} s)"
                )
            latencies = []
            for size in plan.latency_sizes.get(name, []):
                latencies.append(await latency(client, name, size, plan.latency_parts))
                progress(f"{name} latency {size // KiB} KiB done")
        finally:
            await s3.abort_multipart_upload(Bucket=BUCKET, Key=KEY, UploadId=upload["UploadId"])
    return rows, latencies


def versions() -> dict[str, Any]:
    return {
        "nproc": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "grpcio": metadata.version("grpcio"),
        "aiobotocore": metadata.version("aiobotocore"),
        "botocore": metadata.version("botocore"),
        "protobuf": metadata.version("protobuf"),
        "awscrt": metadata.version("awscrt"),
        "moto": metadata.version("moto"),
    }


def targets(rows: list[Row], latencies: list[Latency]) -> list[dict[str, Any]]:
    """The issue's targets, checked against the sink rows (64 MiB parts, CRC32C)."""

    def row(streams: int) -> Row | None:
        for r in rows:
            if (r.endpoint, r.part_mib, r.checksum, r.streams) == ("sink", 64, "CRC32C", streams):
                return r
        return None

    checks: list[dict[str, Any]] = []
    for streams, label in ((1, "1 stream"), (8, "8 streams")):
        if (r := row(streams)) is None:
            continue
        checks.append({"target": f"{label} B/A >= 0.7", "value": r.ratio, "holds": r.ratio >= 0.7})
        checks.append(
            {
                "target": f"gateway CPU/GiB <= 2x direct client CPU/GiB ({label})",
                "value": f"{r.gateway_cpu_s_per_gib} vs 2 x {r.direct_client_cpu_s_per_gib}",
                "holds": r.gateway_cpu_s_per_gib <= 2 * r.direct_client_cpu_s_per_gib,
            }
        )
    if (many := row(32)) is not None:
        per_stream = round(many.gateway_rss_growth_mib / 32, 2)
        checks.append(
            {
                "target": "RSS growth <= 8 MiB per stream at 32 streams",
                "value": f"{many.gateway_rss_growth_mib} MiB / 32 = {per_stream} MiB",
                "holds": per_stream <= 8,
            }
        )
    for lat in latencies:
        if lat.endpoint == "sink" and lat.part_kib == 64:
            checks.append(
                {
                    "target": "gateway adds <= 2 ms p50 to a 64 KiB part",
                    "value": f"+{lat.added_p50_ms} ms",
                    "holds": lat.added_p50_ms <= 2,
                }
            )
    return checks


def table(rows: list[Row], latencies: list[Latency], checks: list[dict[str, Any]]) -> str:
    lines = [
        "| endpoint | part | streams | checksum | A MiB/s | B MiB/s | B/A | gateway CPU s/GiB "
        "| A client CPU s/GiB | B client CPU s/GiB | gateway peak RSS MiB | RSS growth MiB |",
        "|---|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r.endpoint} | {r.part_mib} MiB | {r.streams} | {r.checksum} "
            f"| {r.direct_mib_s} | {r.relayed_mib_s} | {r.ratio} | {r.gateway_cpu_s_per_gib} "
            f"| {r.direct_client_cpu_s_per_gib} | {r.relayed_client_cpu_s_per_gib} "
            f"| {r.gateway_peak_rss_mib} | {r.gateway_rss_growth_mib} |"
        )
    if latencies:
        lines += [
            "",
            "| endpoint | part | parts | A p50 ms | A p99 ms | B p50 ms | B p99 ms | B-A p50 ms |",
            "|---|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for lat in latencies:
            lines.append(
                f"| {lat.endpoint} | {lat.part_kib} KiB | {lat.parts} | {lat.direct_p50_ms} "
                f"| {lat.direct_p99_ms} | {lat.relayed_p50_ms} | {lat.relayed_p99_ms} "
                f"| {lat.added_p50_ms} |"
            )
    if checks:
        lines += ["", "| target (sink, 64 MiB, CRC32C) | measured | holds |", "|---|---|---|"]
        for check in checks:
            lines.append(
                f"| {check['target']} | {check['value']} | {'yes' if check['holds'] else 'NO'} |"
            )
    return "\n".join(lines)


async def run(
    plan: Plan, endpoints: Sequence[str], gateway_args: Sequence[str] = ()
) -> tuple[list[Row], list[Latency]]:
    def progress(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    rows: list[Row] = []
    latencies: list[Latency] = []
    for name in endpoints:
        with ExitStack() as stack:
            if name == "sink":
                url, _ = stack.enter_context(sink_process())
            else:
                url = stack.enter_context(moto_server())
            gateway = stack.enter_context(gateway_server(url, *gateway_args))
            more_rows, more_latencies = await run_endpoint(name, url, gateway, plan, progress)
        rows += more_rows
        latencies += more_latencies
    return rows, latencies


def main() -> None:
    global CHUNK, CHANNELS
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick",
        action="store_true",
        help="64 MiB CRC32C on the sink (1/8/32 streams) and moto (1 stream), ~15 s",
    )
    parser.add_argument("--json", type=Path, help="also write the results as JSON here")
    parser.add_argument(
        "--endpoints", default="sink,moto", help="comma-separated: sink, moto (default both)"
    )
    parser.add_argument(
        "--chunk-kib",
        type=int,
        default=CHUNK // KiB,
        help="bytes per data message (B) and per body chunk (A), KiB (default %(default)s)",
    )
    parser.add_argument(
        "--checksum",
        default="CRC32C",
        choices=CHECKSUM_MODES,
        help="with --quick: the sink rows' checksum mode (default CRC32C)",
    )
    parser.add_argument(
        "--channels",
        type=int,
        default=1,
        help="gRPC channels (connections) B's streams are spread over (default 1)",
    )
    parser.add_argument(
        "--gateway-arg",
        action="append",
        default=[],
        metavar="ARG",
        help="extra argument for the gateway's serve command, e.g. --gateway-arg=--workers=2",
    )
    args = parser.parse_args()
    CHUNK = args.chunk_kib * KiB
    CHANNELS = max(1, args.channels)
    endpoints = [e for e in args.endpoints.split(",") if e]
    if unknown := set(endpoints) - {"sink", "moto"}:
        parser.error(f"unknown endpoints: {', '.join(sorted(unknown))}")
    os.environ.update(AWS_ENV)
    the_plan = plan(args.quick, endpoints, args.checksum)
    started = time.perf_counter()
    rows, latencies = asyncio.run(run(the_plan, endpoints, args.gateway_arg))
    checks = targets(rows, latencies)
    print(table(rows, latencies, checks))
    elapsed = time.perf_counter() - started
    print(f"\n{'quick' if args.quick else 'full'} matrix in {elapsed:.0f} s")
    if args.json:
        document = {
            "machine": versions(),
            "quick": args.quick,
            "chunk_kib": args.chunk_kib,
            "channels": CHANNELS,
            "gateway_args": args.gateway_arg,
            "seconds": round(elapsed, 1),
            "rows": [asdict(r) for r in rows],
            "latency": [asdict(lat) for lat in latencies],
            "targets": checks,
        }
        args.json.write_text(json.dumps(document, indent=2) + "\n")


if __name__ == "__main__":
    main()
