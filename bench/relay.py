"""Relay throughput: a part uploaded straight to S3 (A) versus through the gateway (B).

    python -m bench.relay [--size-mib 64] [--repeat 5] [--checksum none|CRC32C|SHA256] [--json FILE]

Starts moto's S3 server and the gateway as separate processes on loopback, then alternates A and B
(so machine noise hits both alike) and reports the median MiB/s of each, the ratio B/A, the
gateway's CPU seconds per GiB relayed and its peak RSS. A uses aiobotocore configured as the
gateway configures it (streamed body, unsigned payload); B streams 1 MiB messages over gRPC.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import time
from collections.abc import AsyncIterator
from dataclasses import asdict, dataclass
from pathlib import Path

import grpc
from aiobotocore.session import get_session

from bench.matrix import Body
from bench.processes import cpu_seconds, moto_server
from gateway import checksums
from gateway.config import Settings
from gateway.server.s3 import client_config
from gateway.v1 import upload_service_pb2 as pb
from gateway.v1 import upload_service_pb2_grpc as pb_grpc
from tests.gateway_process import gateway_process

MiB = 1024 * 1024
CHUNK = MiB
BUCKET = "bench"


@dataclass
class Result:
    size_mib: int
    repeat: int
    checksum: str
    direct_mib_s: float
    relayed_mib_s: float
    ratio: float
    gateway_cpu_s_per_gib: float
    gateway_peak_rss_mib: float
    direct_runs: list[float]
    relayed_runs: list[float]


async def part_messages(
    header: pb.UploadPartHeader, block: bytes, size: int
) -> AsyncIterator[pb.UploadPartRequest]:
    yield pb.UploadPartRequest(header=header)
    left = size
    while left > 0:
        chunk = block[: min(CHUNK, left)]
        left -= len(chunk)
        yield pb.UploadPartRequest(data=pb.ChecksummedData(content=chunk))


async def run(size: int, repeat: int, checksum: str) -> Result:
    algorithm = None if checksum == "none" else checksums.BY_NAME[checksum]
    hashed = [algorithm] if algorithm else []
    block = os.urandom(CHUNK)
    with moto_server() as endpoint, gateway_process("--s3-endpoint-url", endpoint) as gateway:
        config = client_config(Settings(), "us-east-1")
        session = get_session()
        async with (
            session.create_client("s3", endpoint_url=endpoint, config=config) as s3,
            grpc.aio.insecure_channel(gateway.address) as channel,
        ):
            stub = pb_grpc.UploadServiceStub(channel)  # type: ignore[call-overload]
            await s3.create_bucket(Bucket=BUCKET)
            upload = await s3.create_multipart_upload(Bucket=BUCKET, Key="bench")
            target = {"Bucket": BUCKET, "Key": "bench", "UploadId": upload["UploadId"]}
            header = pb.UploadPartHeader(
                bucket=BUCKET,
                key="bench",
                upload_id=upload["UploadId"],
                part_number=2,
                content_length=size,
                checksum_algorithm=algorithm.proto_value if algorithm else 0,
            )
            direct, relayed, cpu = [], [], 0.0
            for _ in range(repeat + 1):  # the first round warms up and is not counted
                started = time.perf_counter()
                await s3.upload_part(
                    **target,
                    PartNumber=1,
                    ContentLength=size,
                    Body=Body(block, size, hashed),
                )
                direct.append(size / MiB / (time.perf_counter() - started))
                cpu_before = cpu_seconds(gateway.process.pid)
                started = time.perf_counter()
                await stub.UploadPart(part_messages(header, block, size))
                relayed.append(size / MiB / (time.perf_counter() - started))
                cpu += cpu_seconds(gateway.process.pid) - cpu_before
            peak = gateway.status("VmHWM")
            await s3.abort_multipart_upload(**target)
    direct, relayed = direct[1:], relayed[1:]
    cpu_per_gib = cpu / ((repeat + 1) * size / (1024 * MiB))
    return Result(
        size_mib=size // MiB,
        repeat=repeat,
        checksum=checksum,
        direct_mib_s=round(statistics.median(direct), 1),
        relayed_mib_s=round(statistics.median(relayed), 1),
        ratio=round(statistics.median(relayed) / statistics.median(direct), 2),
        gateway_cpu_s_per_gib=round(cpu_per_gib, 2),
        gateway_peak_rss_mib=round(peak / MiB, 1),
        direct_runs=[round(x, 1) for x in direct],
        relayed_runs=[round(x, 1) for x in relayed],
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=64)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--checksum", default="none", choices=["none", "CRC32C", "SHA256"])
    parser.add_argument("--json", type=Path, help="also write the result as JSON here")
    args = parser.parse_args()
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "bench")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "bench")
    result = asyncio.run(run(args.size_mib * MiB, args.repeat, args.checksum))
    print(f"part {result.size_mib} MiB, checksum {result.checksum}, median of {result.repeat}:")
    print(f"  A direct (aiobotocore -> moto)    {result.direct_mib_s:8.1f} MiB/s")
    print(f"  B relayed (gRPC -> gateway -> moto) {result.relayed_mib_s:6.1f} MiB/s")
    print(f"  B/A                                {result.ratio:8.2f}")
    print(f"  gateway CPU per GiB relayed        {result.gateway_cpu_s_per_gib:8.2f} s")
    print(f"  gateway peak RSS                   {result.gateway_peak_rss_mib:8.1f} MiB")
    if args.json:
        args.json.write_text(json.dumps(asdict(result), indent=2) + "\n")


if __name__ == "__main__":
    main()
