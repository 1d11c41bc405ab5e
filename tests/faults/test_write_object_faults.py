"""WriteObject against an S3 that fails, stalls or resets a part, through a fault proxy.

The gateway holds each part in memory, so a part that fails with a retryable error is sent
again and the object is written; a part that keeps failing ends the stream with S3's status, and
the multipart upload is aborted: no part is left behind.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import grpc
import pytest

from gateway.security.write_tokens import generate_key
from gateway.server.write_object import PART_ATTEMPTS, PART_RETRY_DELAYS
from gateway.units import MiB
from gateway.v1 import upload_service_pb2 as pb
from gateway.v1 import upload_service_pb2_grpc as pb_grpc
from tests.faults.conftest import LIMITS
from tests.faults.proxy import Fault, FaultProxy, Reset, Respond, Stall, Throttle
from tests.helpers import (
    GatewayThread,
    S3Reader,
    crc64,
    error_info,
    resume_write,
    send_until_persisted,
    wait_for_async,
    write_object,
    write_refused,
    write_spec,
    write_stream,
)

PART = 5 * MiB
STALL = LIMITS["s3_stall_timeout"]


def part_attempts(proxy: FaultProxy, number: int) -> int:
    return sum(r.query["partNumber"] == [str(number)] for r in proxy.matching("PUT", "partNumber"))


RECOVERED: dict[str, Fault] = {
    "503 SlowDown": Respond(503, "SlowDown", "Reduce your request rate."),
    "500 InternalError": Respond(500, "InternalError", "Try again."),
    "reset mid-part": Reset(after=MiB),
    "stalled mid-part": Stall(after=MiB),
}


@pytest.mark.parametrize("fault", RECOVERED.values(), ids=RECOVERED.keys())
async def test_a_part_that_fails_once_is_sent_again(
    behind_proxy: Callable[..., GatewayThread],
    proxy: FaultProxy,
    new_bucket: str,
    s3: S3Reader,
    fault: Fault,
) -> None:
    gateway = behind_proxy(write_part_size=PART, write_parts_in_flight=2)
    data = os.urandom(PART * 3)
    proxy.add(fault, times=1)
    started = time.monotonic()
    async with grpc.aio.insecure_channel(gateway.address) as channel:
        stub = pb_grpc.UploadServiceStub(channel)  # type: ignore[call-overload]
        responses = await write_object(stub, write_spec(new_bucket, "retried.bin"), data)
    waited = time.monotonic() - started
    assert responses[-1].object.parts == 3
    assert s3.read(new_bucket, "retried.bin") == data
    assert sum(part_attempts(proxy, n) for n in (1, 2, 3)) == 4  # one part twice
    assert s3.uploads(new_bucket) == []
    assert waited < STALL * 3  # a stalled part is given up within the stall timeout


async def test_a_part_that_keeps_failing_aborts_the_upload(
    behind_proxy: Callable[..., GatewayThread],
    proxy: FaultProxy,
    new_bucket: str,
    s3: S3Reader,
) -> None:
    gateway = behind_proxy(write_part_size=PART, write_parts_in_flight=2)
    proxy.add(Respond(500, "InternalError", "Try again."), times=None)
    messages = write_stream(write_spec(new_bucket, "failed.bin"), os.urandom(PART * 3), None)
    error = await write_refused(gateway.address, messages)
    assert error.code() == grpc.StatusCode.UNAVAILABLE
    info = error_info(error)
    assert info.reason == "INTERNAL_ERROR"
    assert info.metadata["operation"] == "UploadPart"
    assert part_attempts(proxy, 1) == PART_ATTEMPTS
    await wait_for_async(lambda: s3.uploads(new_bucket) == [], "the upload aborted")
    assert proxy.matching("DELETE", "uploadId")  # aborted through the same S3 client
    assert s3.client.list_objects_v2(Bucket=new_bucket).get("KeyCount") == 0


async def test_a_caller_waiting_while_s3_takes_its_parts_is_not_idle(
    behind_proxy: Callable[..., GatewayThread],
    proxy: FaultProxy,
    new_bucket: str,
    s3: S3Reader,
) -> None:
    """The idle timeout bounds a caller that sends nothing while the gateway waits for it, not
    one that waits for its parts to persist while S3 takes them slowly (every wait on S3 has its
    own bound). Here each part takes S3 about 2.5 s, the idle timeout is 1 s, and the caller
    sends the second part only once the first is acknowledged."""
    gateway = behind_proxy(write_part_size=PART, write_parts_in_flight=2, idle_timeout=1.0)
    proxy.add(Throttle(rate=2 * MiB), times=None)
    data = os.urandom(2 * PART)
    first_persisted = asyncio.Event()

    async def messages() -> AsyncIterator[pb.WriteObjectRequest]:
        yield write_spec(new_bucket, "patient.bin", object_size=len(data))
        for offset in range(0, PART, MiB):
            yield pb.WriteObjectRequest(
                data=pb.ChecksummedData(content=data[offset : offset + MiB])
            )
        await first_persisted.wait()
        for offset in range(PART, len(data), MiB):
            yield pb.WriteObjectRequest(
                data=pb.ChecksummedData(content=data[offset : offset + MiB])
            )
        yield pb.WriteObjectRequest(finish=pb.FinishWrite(checksum_crc64nvme=crc64(data)))

    started = time.monotonic()
    async with grpc.aio.insecure_channel(gateway.address) as channel:
        stub = pb_grpc.UploadServiceStub(channel)  # type: ignore[call-overload]
        answers = []
        async for answer in stub.WriteObject(messages()):
            answers.append(answer)
            if answer.HasField("progress") and answer.progress.persisted_size >= PART:
                first_persisted.set()
    waited = time.monotonic() - started
    assert answers[-1].object.parts == 2
    assert s3.read(new_bucket, "patient.bin") == data
    assert waited > 2 * 1.0  # the caller waited longer than the idle timeout, twice
    assert s3.uploads(new_bucket) == []


async def test_a_caller_idle_while_no_part_is_in_flight_is_still_cut_off(
    behind_proxy: Callable[..., GatewayThread], new_bucket: str, s3: S3Reader
) -> None:
    gateway = behind_proxy(write_part_size=PART, write_parts_in_flight=2, idle_timeout=1.0)
    held = asyncio.Event()

    async def messages() -> AsyncIterator[pb.WriteObjectRequest]:
        yield write_spec(new_bucket, "idle.bin", object_size=2 * PART)
        yield pb.WriteObjectRequest(data=pb.ChecksummedData(content=os.urandom(MiB)))
        await held.wait()

    async with grpc.aio.insecure_channel(gateway.address) as channel:
        stub = pb_grpc.UploadServiceStub(channel)  # type: ignore[call-overload]
        with pytest.raises(grpc.aio.AioRpcError) as ended:
            async for _ in stub.WriteObject(messages()):
                pass
    held.set()
    assert ended.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert error_info(ended.value).reason == "IDLE_TIMEOUT"
    await wait_for_async(lambda: s3.uploads(new_bucket) == [], "the upload aborted")


async def test_a_resumable_write_whose_part_stalls_fails_in_bounded_time_and_resumes(
    behind_proxy: Callable[..., GatewayThread],
    proxy: FaultProxy,
    new_bucket: str,
    s3: S3Reader,
    tmp_path: Path,
) -> None:
    """S3 stops taking a resumable write's second part on every attempt: the stream ends
    UNAVAILABLE within the attempts' stall bounds, the first part stays persisted, and once S3
    recovers the write resumes from it and finishes byte-identical."""
    keys = tmp_path / "write-keys.yaml"
    keys.write_text(f"signing: k\nkeys:\n  k: {generate_key()}\n")
    gateway = behind_proxy(
        write_part_size=PART, write_parts_in_flight=1, write_token_keys_file=str(keys)
    )
    data = os.urandom(3 * PART)
    finish = pb.FinishWrite(checksum_crc64nvme=crc64(data))
    async with grpc.aio.insecure_channel(gateway.address) as channel:
        stub = pb_grpc.UploadServiceStub(channel)  # type: ignore[call-overload]
        spec = write_spec(new_bucket, "stalled.bin", object_size=len(data)).spec
        started = await stub.StartResumableWrite(pb.StartResumableWriteRequest(spec=spec))
        # The first part goes through; the stream is cut off once S3 has it.
        first = resume_write(started.write_token, 0)
        token = await send_until_persisted(stub, first, data[:PART], PART)
        proxy.add(Stall(after=MiB), times=None)
        began = time.monotonic()
        with pytest.raises(grpc.aio.AioRpcError) as failed:
            await write_object(stub, resume_write(token, PART), data[PART:], finish)
        waited = time.monotonic() - began
        assert failed.value.code() == grpc.StatusCode.UNAVAILABLE
        assert part_attempts(proxy, 2) == PART_ATTEMPTS
        # Each attempt is given up within the stall bound, plus the retry delays.
        assert waited < PART_ATTEMPTS * STALL + sum(PART_RETRY_DELAYS) + 5
        proxy.clear()
        # The last progress token vouches for part 1 (moto and Ceph RGW list no part checksums).
        status = await stub.QueryWriteStatus(pb.QueryWriteStatusRequest(write_token=token))
        assert status.persisted_size == PART
        resumed = resume_write(status.write_token, PART)
        answers = await write_object(stub, resumed, data[PART:], finish)
    assert answers[-1].object.size == len(data)
    assert s3.read(new_bucket, "stalled.bin") == data
    assert s3.uploads(new_bucket) == []
