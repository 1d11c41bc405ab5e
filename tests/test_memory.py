"""Memory bound: a part is relayed, never buffered whole."""

from __future__ import annotations

import hashlib
import os
from collections.abc import AsyncIterator

import grpc
import pytest

from gateway.v1 import upload_service_pb2 as pb
from gateway.v1 import upload_service_pb2_grpc as pb_grpc
from tests.gateway_process import gateway_process
from tests.helpers import MiB, data_message, header_message

PART_SIZE = 256 * MiB
#: The bound the issue sets for relaying one 256 MiB part.
RSS_GROWTH_LIMIT = 64 * MiB


async def stream_part(
    header: pb.UploadPartHeader, size: int, digest: hashlib._Hash
) -> AsyncIterator[pb.UploadPartRequest]:
    yield pb.UploadPartRequest(header=header)
    block = os.urandom(MiB)
    for index in range(size // MiB):
        chunk = index.to_bytes(8, "big") + block[8:]
        digest.update(chunk)
        yield data_message(chunk)


@pytest.mark.slow
async def test_256_mib_part_raises_peak_rss_by_less_than_64_mib(
    moto_endpoint: str, moto_bucket: str
) -> None:
    with gateway_process("--s3-endpoint-url", moto_endpoint) as gateway:
        async with grpc.aio.insecure_channel(gateway.address) as channel:
            stub = pb_grpc.UploadServiceStub(channel)  # type: ignore[call-overload]
            upload = await stub.CreateMultipartUpload(
                pb.CreateMultipartUploadRequest(bucket=moto_bucket, key="big.bin")
            )

            async def relay(number: int, size: int) -> tuple[str, str]:
                header = header_message(
                    bucket=moto_bucket,
                    key="big.bin",
                    upload_id=upload.upload_id,
                    part_number=number,
                    content_length=size,
                    checksum_algorithm=pb.CHECKSUM_ALGORITHM_CRC32C,
                ).header
                digest = hashlib.md5()
                response = await stub.UploadPart(stream_part(header, size, digest))
                return response.etag, f'"{digest.hexdigest()}"'

            await relay(1, 8 * MiB)  # warm up: imports, pools, first connection
            baseline = gateway.status("VmRSS")
            gateway.reset_peak_rss()
            etag, expected = await relay(2, PART_SIZE)
            peak = gateway.status("VmHWM")
    growth = peak - baseline
    print(f"gateway RSS {baseline / MiB:.1f} MiB, peak {peak / MiB:.1f} MiB while relaying 256 MiB")
    assert etag == expected
    assert growth < RSS_GROWTH_LIMIT, f"peak RSS grew by {growth / MiB:.1f} MiB"
