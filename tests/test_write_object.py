"""WriteObject through a real gateway to real S3 stores (moto, Ceph RGW): one stream per object,
the gateway owning the multipart upload."""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import grpc
import pytest

from gateway import checksums
from gateway.security import auth
from gateway.units import MiB
from gateway.v1 import upload_service_pb2 as pb
from gateway.v1 import upload_service_pb2_grpc as pb_grpc
from tests.backends.counting import counting_proxy
from tests.conftest import Backend
from tests.helpers import (
    GatewayThread,
    S3Reader,
    bearer,
    crc64,
    error_info,
    metric,
    wait_for_async,
    write_messages,
    write_object,
    write_refused,
    write_spec,
    write_stream,
    write_tokens,
)

Stub = pb_grpc.UploadServiceStub
#: Small parts, so that multipart objects stay small.
PART = 5 * MiB


@pytest.fixture
def gateway(make_gateway: Callable[..., GatewayThread]) -> GatewayThread:
    return make_gateway(write_part_size=PART, write_parts_in_flight=2)


@pytest.fixture
async def stub(gateway: GatewayThread) -> AsyncIterator[Stub]:
    async with grpc.aio.insecure_channel(gateway.address) as channel:
        yield pb_grpc.UploadServiceStub(channel)  # type: ignore[call-overload]


SIZES = {
    "empty": 0,
    "one byte": 1,
    "just under a part": PART - 1,
    "exactly one part": PART,
    "three and a half parts": PART * 7 // 2,
}


@pytest.mark.parametrize("size", SIZES.values(), ids=SIZES.keys())
@pytest.mark.parametrize("announced", [True, False], ids=["size given", "size unknown"])
async def test_an_object_is_written_whole_and_verified(
    stub: Stub, backend: Backend, new_bucket: str, s3: S3Reader, size: int, announced: bool
) -> None:
    data = os.urandom(size)
    first = write_spec(new_bucket, "object.bin", **({"object_size": size} if announced else {}))
    responses = await write_object(stub, first, data)
    written = responses[-1].object
    assert (written.bucket, written.key, written.size) == (new_bucket, "object.bin", size)
    assert written.parts == (0 if size < PART else -(-size // PART))
    assert written.computed_checksums == {"CRC64NVME": crc64(data)}
    assert s3.read(new_bucket, "object.bin") == data
    if written.parts == 0:
        assert written.etag == f'"{hashlib.md5(data).hexdigest()}"'
    else:
        head = s3.client.head_object(Bucket=new_bucket, Key="object.bin")
        # Ceph RGW 16 answers Complete with an empty ETag (docs/s3-compatibility.md).
        assert written.etag == ("" if backend.name == "rgw" else head["ETag"])
        assert head["ETag"].endswith(f'-{written.parts}"')
        progress = [r.progress.persisted_size for r in responses if r.HasField("progress")]
        assert progress == sorted(progress) and progress[-1] == size
    assert s3.uploads(new_bucket) == []


@pytest.mark.backends("moto")
async def test_parts_go_without_100_continue_the_first_time(
    gateway: GatewayThread, stub: Stub, new_bucket: str
) -> None:
    """A WriteObject's parts are in memory: their first attempt goes without ``Expect:
    100-continue`` (a round trip per part). Its PutObject (one attempt) and a relayed UploadPart
    keep it, so that an early refusal by S3 is read as such."""
    sent: list[tuple[str, str]] = []

    def record(request: Any, event_name: str, **_: Any) -> None:
        expect = request.headers.get("Expect", b"")
        sent.append((event_name.rpartition(".")[2], expect.decode() if expect else ""))

    assert gateway.gateway.s3 is not None
    s3 = gateway.gateway.s3
    events = [f"before-send.s3.{op}" for op in ("UploadPart", "PutObject")]
    for event in events:
        s3.register(event, record)
    try:
        await write_object(stub, write_spec(new_bucket, "two.bin"), os.urandom(PART + 1))
        await write_object(stub, write_spec(new_bucket, "one.bin"), os.urandom(1000))
        created = await stub.CreateMultipartUpload(
            pb.CreateMultipartUploadRequest(bucket=new_bucket, key="relayed.bin")
        )
        header = pb.UploadPartHeader(
            bucket=new_bucket, key="relayed.bin", upload_id=created.upload_id, part_number=1,
            content_length=1000,
        )  # fmt: skip

        async def part() -> AsyncIterator[pb.UploadPartRequest]:
            yield pb.UploadPartRequest(header=header)
            yield pb.UploadPartRequest(data=pb.ChecksummedData(content=os.urandom(1000)))

        await stub.UploadPart(part())
    finally:
        for event in events:
            s3.unregister(event, record)
    assert sent == [
        ("UploadPart", ""),
        ("UploadPart", ""),
        ("PutObject", "100-continue"),
        ("UploadPart", "100-continue"),
    ]


async def test_a_composite_checksum_is_verified_over_the_bytes(
    stub: Stub, new_bucket: str, s3: S3Reader
) -> None:
    data = os.urandom(PART * 2 + 100)
    sha = checksums.encode(checksums.SHA256.compute(data))
    first = write_spec(new_bucket, "sha.bin", checksum_algorithm=pb.CHECKSUM_ALGORITHM_SHA256)
    responses = await write_object(stub, first, data, pb.FinishWrite(checksum_sha256=sha))
    assert responses[-1].object.computed_checksums == {"SHA256": sha}
    assert s3.read(new_bucket, "sha.bin") == data


async def test_a_checksum_mismatch_in_the_finish_commits_nothing(
    gateway: GatewayThread, new_bucket: str, s3: S3Reader
) -> None:
    data = os.urandom(PART * 3)
    finish = pb.FinishWrite(checksum_crc64nvme=crc64(data + b"!"))
    error = await write_refused(
        gateway.address, write_stream(write_spec(new_bucket, "bad.bin"), data, finish)
    )
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    info = error_info(error)
    assert info.reason == "CHECKSUM_MISMATCH"
    assert info.metadata["computed"] == crc64(data)
    assert s3.client.list_objects_v2(Bucket=new_bucket).get("KeyCount") == 0
    await wait_for_async(lambda: s3.uploads(new_bucket) == [], "the upload aborted")


async def test_a_stream_without_finish_commits_nothing(
    gateway: GatewayThread, new_bucket: str, s3: S3Reader
) -> None:
    first = write_spec(new_bucket, "unfinished.bin")
    error = await write_refused(gateway.address, write_stream(first, os.urandom(PART * 2), None))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "finish" in error.details()
    assert s3.client.list_objects_v2(Bucket=new_bucket).get("KeyCount") == 0
    await wait_for_async(lambda: s3.uploads(new_bucket) == [], "the upload aborted")


async def test_an_announced_object_that_ends_before_its_first_part_leaves_no_upload(
    stub: Stub, new_bucket: str, s3: S3Reader
) -> None:
    """With object_size above one part, the upload is created as the spec arrives, before any
    part is full: a stream cancelled then aborts it all the same."""
    held = asyncio.Event()

    async def messages() -> AsyncIterator[pb.WriteObjectRequest]:
        yield write_spec(new_bucket, "early.bin", object_size=3 * PART)
        yield pb.WriteObjectRequest(data=pb.ChecksummedData(content=os.urandom(MiB)))
        await held.wait()

    call = stub.WriteObject(messages())
    await wait_for_async(lambda: s3.uploads(new_bucket), "the upload created")
    call.cancel()
    await wait_for_async(lambda: s3.uploads(new_bucket) == [], "the upload aborted")
    assert s3.client.list_objects_v2(Bucket=new_bucket).get("KeyCount") == 0


async def test_a_cancel_mid_object_leaves_no_upload(
    stub: Stub, new_bucket: str, s3: S3Reader
) -> None:
    held = asyncio.Event()

    async def messages() -> AsyncIterator[pb.WriteObjectRequest]:
        yield write_spec(new_bucket, "cancelled.bin")
        for _ in range(3 * PART // MiB):
            yield pb.WriteObjectRequest(data=pb.ChecksummedData(content=os.urandom(MiB)))
        await held.wait()

    call = stub.WriteObject(messages())
    async for response in call:
        if response.HasField("progress"):
            break  # a part is committed: the upload exists
    assert s3.uploads(new_bucket) != []
    call.cancel()
    held.set()
    await wait_for_async(lambda: s3.uploads(new_bucket) == [], "the upload aborted")
    assert s3.client.list_objects_v2(Bucket=new_bucket).get("KeyCount") == 0


async def test_more_bytes_than_announced_are_out_of_range(
    gateway: GatewayThread, new_bucket: str, s3: S3Reader
) -> None:
    data = os.urandom(PART + 10)
    first = write_spec(new_bucket, "k", object_size=PART)
    error = await write_refused(gateway.address, write_stream(first, data, None))
    assert error.code() == grpc.StatusCode.OUT_OF_RANGE
    await wait_for_async(lambda: s3.uploads(new_bucket) == [], "the upload aborted")


async def test_finish_may_carry_only_the_objects_algorithm(
    gateway: GatewayThread, new_bucket: str
) -> None:
    data = b"abc"
    finish = pb.FinishWrite(checksum_sha256=checksums.encode(checksums.SHA256.compute(data)))
    error = await write_refused(
        gateway.address, write_stream(write_spec(new_bucket, "k"), data, finish)
    )
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "CRC64NVME" in error.details()


@pytest.mark.backends("moto")
async def test_if_none_match_refuses_a_second_write(
    gateway: GatewayThread, stub: Stub, new_bucket: str
) -> None:
    """A retry of a whole write whose answer was lost: the object exists, nothing is written."""
    data = os.urandom(PART + 1)
    first = write_spec(new_bucket, "once.bin", if_none_match="*")
    await write_object(stub, first, data)
    error = await write_refused(gateway.address, write_stream(first, data, pb.FinishWrite()))
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION


@pytest.mark.backends("rgw")
async def test_an_sse_c_object_round_trips(stub: Stub, new_bucket: str, s3: S3Reader) -> None:
    key = os.urandom(32)
    sse = {
        "sse_customer_algorithm": "AES256",
        "sse_customer_key": checksums.encode(key),
        "sse_customer_key_md5": checksums.encode(checksums.MD5.compute(key)),
    }
    data = os.urandom(PART * 2 + 3)
    responses = await write_object(stub, write_spec(new_bucket, "secret.bin", **sse), data)
    assert responses[-1].object.sse_customer_algorithm == "AES256"
    read = s3.read(new_bucket, "secret.bin", SSECustomerAlgorithm="AES256", SSECustomerKey=key)
    assert read == data


@pytest.mark.backends("moto")
async def test_a_denied_write_never_reaches_s3(
    moto_endpoint: str, make_moto_gateway: Callable[..., GatewayThread], tmp_path: Path
) -> None:
    token = auth.generate_token()
    tokens = write_tokens(tmp_path / "tokens.yaml", writer=token)
    policy = tmp_path / "policy.yaml"
    policy.write_text(
        "version: 1\nprincipals:\n  writer:\n"
        "    - {operations: [WriteObject], buckets: [allowed], prefixes: [in/]}\n"
    )
    with counting_proxy(moto_endpoint) as proxy:
        gateway = make_moto_gateway(
            proxy.url, auth_tokens_file=str(tokens), policy_file=str(policy)
        )
        for bucket, key in (("allowed", "out/x"), ("other", "in/x")):
            messages = write_stream(write_spec(bucket, key), b"data", pb.FinishWrite())
            error = await write_refused(gateway.address, messages, metadata=bearer(token))
            assert error.code() == grpc.StatusCode.PERMISSION_DENIED
        assert proxy.count == 0


@pytest.mark.backends("moto")
async def test_objects_beyond_10000_parts_need_their_size(
    backend: Backend, make_gateway: Callable[..., GatewayThread], new_bucket: str
) -> None:
    from gateway.server import write_object as module

    gateway = make_gateway(write_part_size=PART)
    saved = module.MAX_PARTS
    module.MAX_PARTS = 2  # the gateway runs in this process
    try:
        messages = write_stream(write_spec(new_bucket, "k"), os.urandom(PART * 2 + 1), None)
        error = await write_refused(gateway.address, messages)
    finally:
        module.MAX_PARTS = saved
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert error_info(error).reason == "TOO_MANY_PARTS"


async def test_a_full_budget_holds_the_stream_back_instead_of_failing_it(
    make_gateway: Callable[..., GatewayThread], new_bucket: str, s3: S3Reader
) -> None:
    """Room for two parts only: the stream still writes the object (one part in flight at a
    time); a second stream that cannot reserve its two parts is refused, and nothing stays held."""
    window, message = MiB, MiB + 64 * 1024
    gateway = make_gateway(
        write_part_size=PART,
        write_parts_in_flight=4,
        stream_window=window,
        max_message_size=message,
        max_buffer_bytes=window + message + 2 * PART,
    )
    data = os.urandom(PART * 4 + 1)
    held = asyncio.Event()

    async def first() -> AsyncIterator[pb.WriteObjectRequest]:
        async for message in write_messages(write_spec(new_bucket, "a"), data, None):
            yield message
        await held.wait()
        yield pb.WriteObjectRequest(finish=pb.FinishWrite(checksum_crc64nvme=crc64(data)))

    async with grpc.aio.insecure_channel(gateway.address) as channel:
        stub: Stub = pb_grpc.UploadServiceStub(channel)  # type: ignore[call-overload]
        call = stub.WriteObject(first())
        async for response in call:
            if response.HasField("progress"):
                break
        messages = write_stream(write_spec(new_bucket, "b"), b"x", None)
        second = await write_refused(gateway.address, messages)
        held.set()
        responses = [response async for response in call]
    assert second.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert error_info(second).reason == "BUFFER_LIMIT"
    assert responses[-1].object.parts == 5
    assert s3.read(new_bucket, "a") == data
    assert metric(gateway, "s3gateway_buffer_reserved_bytes") == 0


async def test_a_shutdown_mid_object_aborts_the_upload(
    backend: Backend, new_bucket: str, s3: S3Reader
) -> None:
    running = GatewayThread(
        backend.settings(write_part_size=PART, shutdown_grace=0.5), backend.credentials
    ).__enter__()
    held = asyncio.Event()

    async def messages() -> AsyncIterator[pb.WriteObjectRequest]:
        yield write_spec(new_bucket, "interrupted.bin")
        for _ in range(2 * PART // MiB):
            yield pb.WriteObjectRequest(data=pb.ChecksummedData(content=os.urandom(MiB)))
        await held.wait()

    try:
        async with grpc.aio.insecure_channel(running.address) as channel:
            stub: Stub = pb_grpc.UploadServiceStub(channel)  # type: ignore[call-overload]
            call = stub.WriteObject(messages())
            async for response in call:
                if response.HasField("progress"):
                    break
            assert s3.uploads(new_bucket) != []
            await asyncio.to_thread(running.__exit__, None, None, None)
            with pytest.raises(grpc.aio.AioRpcError):
                async for _ in call:
                    pass
    finally:
        held.set()
    # Aborted before the gateway closed its S3 client: nothing is left to wait for.
    assert s3.uploads(new_bucket) == []
    assert s3.client.list_objects_v2(Bucket=new_bucket).get("KeyCount") == 0


async def test_a_deadline_mid_object_aborts_the_upload(
    stub: Stub, new_bucket: str, s3: S3Reader
) -> None:
    async def messages() -> AsyncIterator[pb.WriteObjectRequest]:
        yield write_spec(new_bucket, "late.bin")
        for _ in range(2 * PART // MiB):
            yield pb.WriteObjectRequest(data=pb.ChecksummedData(content=os.urandom(MiB)))
        await asyncio.sleep(30)

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        async for _ in stub.WriteObject(messages(), timeout=3):
            pass
    assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    await wait_for_async(lambda: s3.uploads(new_bucket) == [], "the upload aborted")
