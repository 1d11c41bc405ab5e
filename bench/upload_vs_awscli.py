"""Whole-file upload: ``s3-upload-gateway upload`` through the gateway versus ``aws s3 cp`` straight
to the same S3, with the same part size and concurrency.

    python -m bench.upload_vs_awscli [--size-mib 256] [--part-size-mib 8] [--concurrency 4]
                                     [--repeat 3] [--checksum-algorithm CRC32C]

Starts moto's S3 server and the gateway (``serve``) as separate processes on loopback, writes a
random file, then alternates the two commands (so machine noise hits both alike), each a fresh
process timed from start to exit, and reports the median MiB/s of each. ``aws s3 cp`` gets
``multipart_chunksize`` and ``max_concurrent_requests`` from a temporary AWS config file.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from bench.relay import moto_server
from tests.gateway_process import gateway_process

MiB = 1024 * 1024
BUCKET = "bench"
BIN = Path(sys.executable).parent


def timed(command: list[str], env: dict[str, str]) -> float:
    started = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    elapsed = time.perf_counter() - started
    if result.returncode != 0:
        raise SystemExit(f"{command[0]} failed ({result.returncode}): {result.stderr.strip()}")
    return elapsed


def object_size(endpoint: str, key: str) -> int:
    request = urllib.request.Request(f"{endpoint}/{BUCKET}/{key}", method="HEAD")
    with urllib.request.urlopen(request, timeout=10) as response:
        return int(response.headers["Content-Length"])


def write_random_file(path: Path, size: int) -> None:
    with path.open("wb") as handle:
        for start in range(0, size, 8 * MiB):
            handle.write(os.urandom(min(8 * MiB, size - start)))


def aws_config(directory: Path, part_size_mib: int, concurrency: int) -> Path:
    config = directory / "aws-config"
    config.write_text(
        "[default]\nregion = us-east-1\ns3 =\n"
        f"    multipart_chunksize = {part_size_mib}MB\n"
        f"    multipart_threshold = {part_size_mib}MB\n"
        f"    max_concurrent_requests = {concurrency}\n"
    )
    return config


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=256)
    parser.add_argument("--part-size-mib", type=int, default=8)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--checksum-algorithm", default="CRC32C")
    args = parser.parse_args()
    size = args.size_mib * MiB
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        path = directory / "upload.bin"
        write_random_file(path, size)
        env = {
            **os.environ,
            "AWS_ACCESS_KEY_ID": "bench",
            "AWS_SECRET_ACCESS_KEY": "bench",
            "AWS_CONFIG_FILE": str(aws_config(directory, args.part_size_mib, args.concurrency)),
            "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
        }
        os.environ.update({k: env[k] for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")})
        with moto_server() as endpoint, gateway_process("--s3-endpoint-url", endpoint) as gateway:
            urllib.request.urlopen(
                urllib.request.Request(f"{endpoint}/{BUCKET}", method="PUT"), timeout=10
            ).close()
            ours = [
                *(BIN / "s3-upload-gateway", "upload", str(path)),
                *("--part-size", f"{args.part_size_mib}MiB", "--concurrency"),
                *(str(args.concurrency), "--checksum-algorithm", args.checksum_algorithm),
                *("--endpoint-url", gateway.address),
            ]
            theirs = [str(BIN / "aws"), "s3", "cp", str(path), "--endpoint-url", endpoint]
            theirs += ["--only-show-errors"]
            gateway_runs, aws_runs = [], []
            for run in range(args.repeat + 1):  # the first round warms up and is not counted
                gateway_key, aws_key = f"gateway-{run}", f"awscli-{run}"
                seconds = timed([*ours[:3], f"s3://{BUCKET}/{gateway_key}", *ours[3:]], env)
                gateway_runs.append(args.size_mib / seconds)
                seconds = timed([*theirs[:4], f"s3://{BUCKET}/{aws_key}", *theirs[4:]], env)
                aws_runs.append(args.size_mib / seconds)
                assert object_size(endpoint, gateway_key) == size
                assert object_size(endpoint, aws_key) == size
    gateway_runs, aws_runs = gateway_runs[1:], aws_runs[1:]
    ratio = statistics.median(gateway_runs) / statistics.median(aws_runs)
    print(
        f"{args.size_mib} MiB file, {args.part_size_mib} MiB parts, concurrency "
        f"{args.concurrency}, median of {args.repeat} (process start to exit):"
    )
    print(
        f"  s3-upload-gateway upload ({args.checksum_algorithm}) -> gateway -> moto "
        f"{statistics.median(gateway_runs):7.1f} MiB/s  runs {_runs(gateway_runs)}"
    )
    print(
        f"  aws s3 cp -> moto                                  "
        f"{statistics.median(aws_runs):7.1f} MiB/s  runs {_runs(aws_runs)}"
    )
    print(f"  gateway / awscli                                   {ratio:7.2f}")


def _runs(values: list[float]) -> str:
    return ", ".join(f"{v:.1f}" for v in values)


if __name__ == "__main__":
    main()
