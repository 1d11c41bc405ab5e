"""What only a store that enforces S3's rules can show: Ceph RGW behind the gateway.

moto accepts wrong signatures, ignores Content-MD5 and SSE-C and answers HTTP 500 for an unknown
upload id; Ceph's RADOS Gateway does what S3 does. Each test asserts the exact gRPC code and the
ErrorInfo the caller gets.
"""

from __future__ import annotations

import base64
import hashlib
import io
import logging
import os
from collections.abc import AsyncIterator, Iterator
from typing import Any

import boto3
import grpc
import pytest
from botocore.config import Config

from gateway import checksums
from gateway.v1 import upload_service_pb2 as pb
from gateway.v1 import upload_service_pb2_grpc as pb_grpc
from tests.backends.rgw import RgwServer
from tests.helpers import (
    GatewayThread,
    MiB,
    data_message,
    error_info,
    header_message,
    part_messages,
    part_stream,
    rpc_error,
    stream,
    upload_part_error,
)

pytestmark = [pytest.mark.rgw, pytest.mark.backends("rgw")]


def store_client(rgw: RgwServer, https: bool = False) -> Any:
    return boto3.client(
        "s3",
        endpoint_url=rgw.https_endpoint if https else rgw.http_endpoint,
        aws_access_key_id=rgw.access_key,
        aws_secret_access_key=rgw.secret_key,
        region_name="us-east-1",
        verify=str(rgw.ca_bundle),
        config=Config(
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
            s3={"addressing_style": "path"},
        ),
    )


@pytest.fixture
def rgw_gateway_with(rgw: RgwServer, make_gateway: Any) -> Any:
    """Gateways against RGW with changed settings or credentials; ``https=True`` for TLS."""

    def make(https: bool = False, **changes: Any) -> GatewayThread:
        if https:
            changes["s3_endpoint_url"] = rgw.https_endpoint
        running: GatewayThread = make_gateway(**changes)
        return running

    return make


@pytest.fixture
async def channel_to() -> AsyncIterator[Any]:
    channels: list[grpc.aio.Channel] = []

    def open_stub(running: GatewayThread) -> pb_grpc.UploadServiceStub:
        channel = grpc.aio.insecure_channel(running.address)
        channels.append(channel)
        return pb_grpc.UploadServiceStub(channel)  # type: ignore[call-overload,no-any-return]

    yield open_stub
    for channel in channels:
        await channel.close()


async def create(stub: Any, new_bucket: str, key: str = "obj", **fields: Any) -> str:
    response = await stub.CreateMultipartUpload(
        pb.CreateMultipartUploadRequest(bucket=new_bucket, key=key, **fields)
    )
    upload_id: str = response.upload_id
    return upload_id


async def test_wrong_secret_key_is_internal_signature_does_not_match(
    rgw: RgwServer, rgw_gateway_with: Any, channel_to: Any, new_bucket: str
) -> None:
    running = rgw_gateway_with(credentials=(rgw.access_key, "not-the-secret"))
    error = await rpc_error(
        channel_to(running).CreateMultipartUpload(
            pb.CreateMultipartUploadRequest(bucket=new_bucket, key="k")
        )
    )
    assert error.code() == grpc.StatusCode.INTERNAL
    info = error_info(error)
    assert info.reason == "SIGNATURE_DOES_NOT_MATCH"
    assert info.metadata["s3ErrorCode"] == "SignatureDoesNotMatch"
    assert info.metadata["httpStatus"] == "403"


async def test_bogus_upload_id_is_not_found_and_the_stream_is_abandoned_early(
    rgw_gateway_with: Any, channel_to: Any, new_bucket: str
) -> None:
    sent = 0
    total = 64 * MiB

    def messages() -> Iterator[pb.UploadPartRequest]:
        nonlocal sent
        yield header_message(
            bucket=new_bucket, key="obj", upload_id="2~bogus", part_number=1, content_length=total
        )
        block = os.urandom(MiB)
        while sent < total:
            sent += MiB
            yield data_message(block)

    running = rgw_gateway_with()
    error = await upload_part_error(running.address, messages())
    assert error.code() == grpc.StatusCode.NOT_FOUND
    info = error_info(error)
    assert info.metadata["s3ErrorCode"] == "NoSuchUpload"
    assert info.metadata["s3RequestId"]
    # RGW answered before the body (Expect: 100-continue): the caller's stream was not drained.
    assert sent < total // 2


async def test_content_md5_mismatch_found_by_s3_is_bad_digest(
    rgw_gateway_with: Any, channel_to: Any, new_bucket: str, s3_sync: Any
) -> None:
    """With the gateway's own verification off, S3's second check is what catches the lie."""
    running = rgw_gateway_with(verify_checksums=False)
    stub = channel_to(running)
    upload_id = await create(stub, new_bucket)
    data = os.urandom(MiB)
    wrong_md5 = base64.b64encode(hashlib.md5(data + b"x").digest()).decode()
    header = dict(
        bucket=new_bucket,
        key="obj",
        upload_id=upload_id,
        part_number=1,
        content_length=len(data),
        content_md5=wrong_md5,
    )
    error = await upload_part_error(running.address, part_messages(header, data))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error_info(error).metadata["s3ErrorCode"] == "BadDigest"
    parts = s3_sync.list_parts(Bucket=new_bucket, Key="obj", UploadId=upload_id)
    assert parts.get("Parts", []) == []


async def test_entity_too_small_and_invalid_part_at_complete(
    rgw_gateway_with: Any, channel_to: Any, new_bucket: str
) -> None:
    stub = channel_to(rgw_gateway_with())
    upload_id = await create(stub, new_bucket)
    etags = []
    for number in (1, 2):
        header = dict(
            bucket=new_bucket, key="obj", upload_id=upload_id, part_number=number, content_length=5
        )
        etags.append((await stub.UploadPart(part_stream(header, b"small"))).etag)

    def complete(parts: list[tuple[int, str]]) -> Any:
        return stub.CompleteMultipartUpload(
            pb.CompleteMultipartUploadRequest(
                bucket=new_bucket,
                key="obj",
                upload_id=upload_id,
                parts=[pb.CompletedPart(part_number=n, etag=e) for n, e in parts],
            )
        )

    too_small = await rpc_error(complete([(1, etags[0]), (2, etags[1])]))
    assert too_small.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error_info(too_small).metadata["s3ErrorCode"] == "EntityTooSmall"
    invalid = await rpc_error(complete([(1, '"00000000000000000000000000000000"')]))
    assert invalid.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert error_info(invalid).metadata["s3ErrorCode"] == "InvalidPart"


SSE_KEY = os.urandom(32)
OTHER_KEY = os.urandom(32)


def sse_fields(key: bytes) -> dict[str, str]:
    return {
        "sse_customer_algorithm": "AES256",
        "sse_customer_key": base64.b64encode(key).decode(),
        "sse_customer_key_md5": base64.b64encode(hashlib.md5(key).digest()).decode(),
    }


async def test_sse_c_end_to_end(
    rgw_gateway_with: Any,
    channel_to: Any,
    new_bucket: str,
    s3_sync: Any,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    running = rgw_gateway_with(log_level="DEBUG")
    stub = channel_to(running)
    key_fields = sse_fields(SSE_KEY)
    created = await stub.CreateMultipartUpload(
        pb.CreateMultipartUploadRequest(bucket=new_bucket, key="secret.bin", **key_fields)
    )
    assert created.sse_customer_algorithm == "AES256"
    assert created.sse_customer_key_md5 == key_fields["sse_customer_key_md5"]
    parts, blobs = [], []
    for number, size in ((1, 5 * MiB), (2, 1234)):
        data = os.urandom(size)
        blobs.append(data)
        header = dict(
            bucket=new_bucket,
            key="secret.bin",
            upload_id=created.upload_id,
            part_number=number,
            content_length=size,
            **key_fields,
        )
        response = await stub.UploadPart(part_stream(header, data))
        assert response.sse_customer_algorithm == "AES256"
        assert response.sse_customer_key_md5 == key_fields["sse_customer_key_md5"]
        parts.append(pb.CompletedPart(part_number=number, etag=response.etag))
    wrong = dict(
        bucket=new_bucket,
        key="secret.bin",
        upload_id=created.upload_id,
        part_number=3,
        content_length=3,
        **sse_fields(OTHER_KEY),
    )
    error = await upload_part_error(running.address, part_messages(wrong, b"abc"))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    await stub.CompleteMultipartUpload(
        pb.CompleteMultipartUploadRequest(
            bucket=new_bucket,
            key="secret.bin",
            upload_id=created.upload_id,
            parts=parts,
            **key_fields,
        )
    )
    body = s3_sync.get_object(
        Bucket=new_bucket, Key="secret.bin", SSECustomerAlgorithm="AES256", SSECustomerKey=SSE_KEY
    )["Body"].read()
    assert body == b"".join(blobs)
    logged = caplog.text + "".join(str(r.__dict__) for r in caplog.records)
    for secret in (key_fields["sse_customer_key"], OTHER_KEY.hex(), SSE_KEY.hex()):
        assert secret not in logged


@pytest.mark.parametrize("https", [False, True], ids=["http", "https"])
async def test_three_part_crc32c_upload_matches_a_direct_upload(
    rgw: RgwServer, rgw_gateway_with: Any, channel_to: Any, new_bucket: str, https: bool
) -> None:
    store = store_client(rgw, https=https)
    stub = channel_to(rgw_gateway_with(https=https))
    blobs = [os.urandom(5 * MiB), os.urandom(5 * MiB + 7), os.urandom(99)]

    upload_id = await create(
        stub, new_bucket, "via-gateway", checksum_algorithm=pb.CHECKSUM_ALGORITHM_CRC32C
    )
    parts = []
    for number, data in enumerate(blobs, start=1):
        header = dict(
            bucket=new_bucket,
            key="via-gateway",
            upload_id=upload_id,
            part_number=number,
            content_length=len(data),
            checksum_crc32c=checksums.encode(checksums.CRC32C.compute(data)),
        )
        response = await stub.UploadPart(part_stream(header, data))
        parts.append(pb.CompletedPart(part_number=number, etag=response.etag))
    await stub.CompleteMultipartUpload(
        pb.CompleteMultipartUploadRequest(
            bucket=new_bucket, key="via-gateway", upload_id=upload_id, parts=parts
        )
    )

    direct = store.create_multipart_upload(
        Bucket=new_bucket, Key="direct", ChecksumAlgorithm="CRC32C"
    )
    direct_parts = []
    for number, data in enumerate(blobs, start=1):
        response = store.upload_part(
            Bucket=new_bucket,
            Key="direct",
            UploadId=direct["UploadId"],
            PartNumber=number,
            Body=io.BytesIO(data),
            ChecksumCRC32C=checksums.encode(checksums.CRC32C.compute(data)),
        )
        direct_parts.append({"PartNumber": number, "ETag": response["ETag"]})
    store.complete_multipart_upload(
        Bucket=new_bucket,
        Key="direct",
        UploadId=direct["UploadId"],
        MultipartUpload={"Parts": direct_parts},
    )

    via, plain = (store.get_object(Bucket=new_bucket, Key=k) for k in ("via-gateway", "direct"))
    assert via["ETag"] == plain["ETag"]
    assert via["ETag"].endswith('-3"')
    assert via["Body"].read() == plain["Body"].read() == b"".join(blobs)


async def test_trailer_checksum_over_https(
    rgw_gateway_with: Any, channel_to: Any, new_bucket: str
) -> None:
    """A value known only at the end travels to S3 as an aws-chunked trailer over https. RGW 16
    does not accept aws-chunked bodies; with trailers off the gateway verifies the value alone."""
    data = os.urandom(MiB)
    trailer = {"checksum_crc32c": checksums.encode(checksums.CRC32C.compute(data))}

    async def part(stub: Any) -> list[pb.UploadPartRequest]:
        upload_id = await create(stub, new_bucket, checksum_algorithm=pb.CHECKSUM_ALGORITHM_CRC32C)
        header = dict(
            bucket=new_bucket,
            key="obj",
            upload_id=upload_id,
            part_number=1,
            content_length=len(data),
            checksum_algorithm=pb.CHECKSUM_ALGORITHM_CRC32C,
        )
        return part_messages(header, data, trailer=trailer)

    with_trailers = rgw_gateway_with(https=True)
    messages = await part(channel_to(with_trailers))
    error = await upload_part_error(with_trailers.address, messages)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error_info(error).metadata["s3ErrorCode"] == "MissingContentLength"

    without = channel_to(rgw_gateway_with(https=True, s3_trailing_checksums=False))
    response = await without.UploadPart(stream(await part(without)))
    assert response.etag == f'"{hashlib.md5(data).hexdigest()}"'
