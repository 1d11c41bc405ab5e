"""Memory stays bounded while S3 stalls: callers push, flow control holds them back."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest

from gateway.v1 import upload_service_pb2 as pb
from gateway.v1 import upload_service_pb2_grpc as pb_grpc
from tests.faults.proxy import FaultProxy, Stall
from tests.gateway_process import gateway_process
from tests.helpers import MiB, data_message, error_info, header_message, part_messages

pytestmark = pytest.mark.backends("moto")

STREAMS = 16
PART_SIZE = 64 * MiB
STALL_TIMEOUT = 3.0
#: The bound of the memory tests: 8 MiB per stream.
RSS_GROWTH_LIMIT = STREAMS * 8 * MiB


def pushing(
    header: pb.UploadPartRequest, block: bytes, size: int
) -> Iterator[pb.UploadPartRequest]:
    """A caller that sends its part as fast as the gateway lets it."""
    yield header
    for _ in range(size // len(block)):
        yield data_message(block)


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_parts_stalled_in_s3_keep_peak_rss_bounded_and_the_gateway_serving(
    proxy: FaultProxy, s3_sync: object, new_bucket: str
) -> None:
    client = s3_sync
    upload_id = client.create_multipart_upload(Bucket=new_bucket, Key="k")["UploadId"]  # type: ignore[attr-defined]
    block = os.urandom(MiB)
    args = ("--s3-endpoint-url", proxy.url, "--s3-stall-timeout", str(STALL_TIMEOUT))
    with (
        gateway_process(*args, "--embedded-s3", "off") as gateway,
        grpc.insecure_channel(gateway.address) as channel,
        ThreadPoolExecutor(STREAMS) as pool,
    ):
        stub = pb_grpc.UploadServiceStub(channel)

        def relay(number: int) -> grpc.StatusCode:
            header = header_message(
                bucket=new_bucket, key="k", upload_id=upload_id, part_number=number,
                content_length=PART_SIZE,
            )  # fmt: skip
            try:
                stub.UploadPart(pushing(header, block, PART_SIZE), timeout=60)
            except grpc.RpcError as error:
                assert error_info(error).reason == "S3_STALLED"
                return error.code()  # type: ignore[no-any-return]
            return grpc.StatusCode.OK

        warm_up = part_messages(
            {"bucket": new_bucket, "key": "k", "upload_id": upload_id, "part_number": 100,
             "content_length": 8 * MiB},
            os.urandom(8 * MiB),
        )  # fmt: skip
        stub.UploadPart(iter(warm_up), timeout=60)
        baseline = gateway.status("VmRSS")
        gateway.reset_peak_rss()
        proxy.add(Stall(after=MiB), times=None)
        started = time.monotonic()
        codes = list(pool.map(relay, range(1, STREAMS + 1)))
        waited = time.monotonic() - started
        peak = gateway.status("VmHWM")
        proxy.clear()
        proxy.drop_connections()
        served = stub.UploadPart(iter(warm_up), timeout=60)
    growth = peak - baseline
    print(
        f"gateway RSS {baseline / MiB:.1f} MiB, peak {peak / MiB:.1f} MiB with {STREAMS} parts "
        f"stalled in S3; all refused after {waited:.1f} s"
    )
    assert codes == [grpc.StatusCode.UNAVAILABLE] * STREAMS
    assert waited < 3 * STALL_TIMEOUT
    assert growth < RSS_GROWTH_LIMIT, f"peak RSS grew by {growth / MiB:.1f} MiB"
    assert served.etag
