"""Profile the gateway with py-spy while it relays 64 MiB CRC32C parts, one stream, to the sink.

    python -m bench.profile [--parts 40] [--native] [--output /tmp/gateway.folded]

Needs ``py-spy`` on the PATH or in this venv (``pip install py-spy``; not a project dependency).
Samples every thread of the gateway process (``--idle`` off: only threads on CPU) and prints the
top functions by own samples and by inclusive samples, as shares of all samples, next to the
gateway's CPU seconds from /proc (py-spy sees Python threads only: what the gRPC core's own threads
burn shows as the difference). The folded stacks stay in ``--output`` for a flame graph.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import grpc
from aiobotocore.session import get_session

from bench.matrix import BUCKET, KEY, Client
from bench.processes import AWS_ENV, gateway_server
from bench.sink import sink_process
from gateway.config import Settings
from gateway.server.s3 import client_config
from gateway.v1 import upload_service_pb2_grpc as pb_grpc

MiB = 1024 * 1024


def py_spy() -> str:
    local = Path(sys.executable).parent / "py-spy"
    found = str(local) if local.exists() else shutil.which("py-spy")
    if found is None:
        raise SystemExit("py-spy not found: pip install py-spy")
    return found


def frame_name(frame: str) -> str:
    """``function (path/to/file.py:LINE)`` -> ``function (file.py)``, lines merged."""
    name, _, where = frame.partition(" (")
    path = where.rstrip(")").rsplit(":", 1)[0]
    parts = path.split("/")
    short = "/".join(parts[-2:]) if len(parts) > 1 else path
    return f"{name} ({short})"


def summarize(folded: Path, top: int) -> str:
    own: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    total = 0
    for line in folded.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack:
            continue
        count = int(count_text)
        frames = [frame_name(f) for f in stack.split(";")]
        # the first frame is the thread ("process 123:..." / "thread (0x...)"): skip it
        frames = [f for f in frames if not f.startswith(("process ", "thread "))]
        if not frames:
            continue
        total += count
        own[frames[-1]] += count
        for name in set(frames):
            inclusive[name] += count
    lines = [f"{total} samples on CPU", "", "own samples:"]
    lines += [f"  {100 * n / total:5.1f}%  {name}" for name, n in own.most_common(top)]
    lines += ["", "inclusive samples:"]
    lines += [f"  {100 * n / total:5.1f}%  {name}" for name, n in inclusive.most_common(top)]
    return "\n".join(lines)


async def relay(address: str, endpoint: str, parts: int) -> float:
    config = client_config(Settings(), "us-east-1")
    async with (
        get_session().create_client("s3", endpoint_url=endpoint, config=config) as s3,
        grpc.aio.insecure_channel(address) as channel,
    ):
        upload = await s3.create_multipart_upload(Bucket=BUCKET, Key=KEY)
        client = Client(s3, pb_grpc.UploadServiceStub(channel), upload["UploadId"])  # type: ignore[call-overload]
        await client.relayed(1, 8 * MiB, "CRC32C")  # warm up
        started = time.perf_counter()
        for _ in range(parts):
            await client.relayed(1, 64 * MiB, "CRC32C")
        return time.perf_counter() - started


def thread_times(pid: int) -> dict[str, tuple[str, float, float]]:
    """Thread id -> (name, user seconds, system seconds), from /proc/PID/task/*/stat."""
    tick = os.sysconf("SC_CLK_TCK")
    times = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            stat = (task / "stat").read_text()
        except OSError:
            continue
        name = stat[stat.index("(") + 1 : stat.rindex(")")]
        fields = stat[stat.rindex(")") + 2 :].split()
        times[task.name] = (name, int(fields[11]) / tick, int(fields[12]) / tick)
    return times


def thread_table(
    before: dict[str, tuple[str, float, float]],
    after: dict[str, tuple[str, float, float]],
    gib: float,
) -> str:
    """CPU seconds per GiB by thread name (threads of one name summed), user and system."""
    totals: dict[str, list[float]] = {}
    for tid, (name, user, system) in after.items():
        _, user0, system0 = before.get(tid, (name, 0.0, 0.0))
        total = totals.setdefault(name, [0.0, 0.0])
        total[0] += user - user0
        total[1] += system - system0
    lines = ["thread            user s/GiB  system s/GiB"]
    for name, (user, system) in sorted(totals.items(), key=lambda item: -sum(item[1])):
        if user + system > 0:
            lines.append(f"{name:16s}  {user / gib:10.3f}  {system / gib:12.3f}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parts", type=int, default=40, help="64 MiB parts to relay")
    parser.add_argument("--rate", type=int, default=200, help="samples per second")
    parser.add_argument(
        "--native", action="store_true", help="include native (C) frames; pauses the gateway"
    )
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument(
        "--threads-only",
        action="store_true",
        help="no py-spy: only the CPU time of each gateway thread (user and system) per GiB",
    )
    parser.add_argument("--output", type=Path, default=Path("/tmp/gateway.folded"))
    args = parser.parse_args()
    os.environ.update(AWS_ENV)
    if args.threads_only:
        with sink_process() as (endpoint, _), gateway_server(endpoint) as gateway:
            asyncio.run(relay(gateway.address, endpoint, 2))  # warm up
            before = thread_times(gateway.pid)
            wall = asyncio.run(relay(gateway.address, endpoint, args.parts))
            after = thread_times(gateway.pid)
        gib = args.parts * 64 / 1024
        rate = gib * 1024 / wall
        print(f"relayed {args.parts} x 64 MiB CRC32C in {wall:.1f} s ({rate:.0f} MiB/s)")
        print(thread_table(before, after, gib))
        return
    with sink_process() as (endpoint, _), gateway_server(endpoint) as gateway:
        command = [
            *(py_spy(), "record", "--pid", str(gateway.pid), "--rate", str(args.rate)),
            *("--format", "raw", "--output", str(args.output), "--threads"),
            *(["--native"] if args.native else ["--nonblocking"]),
        ]
        profiler = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        time.sleep(1)  # let py-spy attach
        cpu_before = gateway.cpu_seconds()
        wall = asyncio.run(relay(gateway.address, endpoint, args.parts))
        cpu = gateway.cpu_seconds() - cpu_before
        profiler.send_signal(signal.SIGINT)
        _, errors = profiler.communicate(timeout=60)
    gib = args.parts * 64 / 1024
    print(
        f"relayed {args.parts} x 64 MiB CRC32C in {wall:.1f} s ({gib * 1024 / wall:.0f} MiB/s); "
        f"gateway CPU {cpu:.2f} s = {cpu / gib:.2f} s/GiB"
    )
    if not args.output.exists():
        raise SystemExit(f"py-spy wrote nothing: {errors.decode(errors='replace')}")
    print(summarize(args.output, args.top))


if __name__ == "__main__":
    main()
