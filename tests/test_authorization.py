"""Authorization: the policy end to end. A denied call never reaches S3; a changed policy file
takes effect without a restart, a broken one leaves the last good one in force."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml

from gateway.units import MiB
from gateway.v1 import upload_service_pb2 as pb
from tests.backends.counting import CountingProxy, counting_proxy
from tests.helpers import (
    POLICY,
    TOKEN_A,
    TOKEN_B,
    GatewayThread,
    bearer,
    data_message,
    error_info,
    failure,
    metric,
    sized_header,
    stub_for,
    wait_for,
    write_tokens,
)

#: The UploadService operations, the ``operation`` label of s3gateway_policy_denials_total.
OPERATIONS = [m.name for m in pb.DESCRIPTOR.services_by_name["UploadService"].methods]


@pytest.fixture
def proxy(moto_endpoint: str) -> Iterator[CountingProxy]:
    with counting_proxy(moto_endpoint) as running:
        yield running


@pytest.fixture
def policy_gateway(
    make_moto_gateway: Callable[..., GatewayThread], proxy: CountingProxy, tmp_path: Path
) -> GatewayThread:
    tokens = write_tokens(tmp_path / "tokens.yaml", alice=TOKEN_A, bob=TOKEN_B)
    policy = tmp_path / "policy.yaml"
    policy.write_text(yaml.safe_dump(POLICY))
    return make_moto_gateway(proxy.url, auth_tokens_file=str(tokens), policy_file=str(policy))


def test_denied_calls_never_reach_s3(
    policy_gateway: GatewayThread, proxy: CountingProxy, alice_bucket: str, moto_s3: Any
) -> None:
    channel, stub = stub_for(policy_gateway.address)
    with channel:
        upload = stub.CreateMultipartUpload(
            pb.CreateMultipartUploadRequest(bucket=alice_bucket, key="in/a.bin"),
            metadata=bearer(TOKEN_A),
        )
        stub.UploadPart(
            iter(
                [
                    sized_header(alice_bucket, "in/a.bin", upload.upload_id, 5),
                    data_message(b"hello"),
                ]
            ),
            metadata=bearer(TOKEN_A),
        )
        before = proxy.count
        denied: list[tuple[str, Callable[[], Any]]] = [
            (
                "CreateMultipartUpload",
                lambda: stub.CreateMultipartUpload(
                    pb.CreateMultipartUploadRequest(bucket=alice_bucket, key="out/a.bin"),
                    metadata=bearer(TOKEN_A),
                ),
            ),
            (
                "CreateMultipartUpload",
                lambda: stub.CreateMultipartUpload(
                    pb.CreateMultipartUploadRequest(bucket="carol-data", key="in/a.bin"),
                    metadata=bearer(TOKEN_A),
                ),
            ),
            (
                "UploadPart",  # a prefix the policy does not grant
                lambda: stub.UploadPart(
                    iter(
                        [
                            sized_header(alice_bucket, "other/a.bin", upload.upload_id, 5),
                            data_message(b"x"),
                        ]
                    ),
                    metadata=bearer(TOKEN_A),
                ),
            ),
            (
                "UploadPart",  # over the grant's max_part_size
                lambda: stub.UploadPart(
                    iter([sized_header(alice_bucket, "in/a.bin", upload.upload_id, 2 * MiB)]),
                    metadata=bearer(TOKEN_A),
                ),
            ),
            (
                "UploadPart",  # bob may only list
                lambda: stub.UploadPart(
                    iter(
                        [
                            sized_header(alice_bucket, "in/a.bin", upload.upload_id, 5),
                            data_message(b"hello"),
                        ]
                    ),
                    metadata=bearer(TOKEN_B),
                ),
            ),
            (
                "ListMultipartUploads",  # alice may list only under in/
                lambda: stub.ListMultipartUploads(
                    pb.ListMultipartUploadsRequest(bucket=alice_bucket), metadata=bearer(TOKEN_A)
                ),
            ),
            (
                "UploadPartCopy",  # the source is outside alice's grants
                lambda: stub.UploadPartCopy(
                    pb.UploadPartCopyRequest(
                        bucket=alice_bucket,
                        key="in/a.bin",
                        upload_id=upload.upload_id,
                        part_number=2,
                        copy_source=f"{alice_bucket}/secret/b.bin",
                    ),
                    metadata=bearer(TOKEN_A),
                ),
            ),
            (
                "AbortMultipartUpload",
                lambda: stub.AbortMultipartUpload(
                    pb.AbortMultipartUploadRequest(
                        bucket=alice_bucket, key="in/a.bin", upload_id=upload.upload_id
                    ),
                    metadata=bearer(TOKEN_B),
                ),
            ),
        ]
        for operation, call in denied:
            error = failure(call)
            assert error.code() == grpc.StatusCode.PERMISSION_DENIED, (operation, error.details())
            info = error_info(error)
            assert info.reason == "POLICY_DENIED" and info.metadata["operation"] == operation
            assert "nothing was sent to S3" in error.details()
        assert proxy.count == before, proxy.requests[before:]
        # Allowed calls still go through, and did reach S3.
        listing = stub.ListMultipartUploads(
            pb.ListMultipartUploadsRequest(bucket=alice_bucket, prefix="in/"),
            metadata=bearer(TOKEN_B),
        )
        assert [u.key for u in listing.uploads] == ["in/a.bin"]
        assert proxy.count == before + 1
    denials = {
        operation: metric(policy_gateway, "s3gateway_policy_denials_total", operation=operation)
        for operation in OPERATIONS
    }
    assert {operation: count for operation, count in denials.items() if count} == {
        "CreateMultipartUpload": 2,
        "UploadPart": 3,
        "ListMultipartUploads": 1,
        "UploadPartCopy": 1,
        "AbortMultipartUpload": 1,
    }
    parts = moto_s3.list_parts(Bucket=alice_bucket, Key="in/a.bin", UploadId=upload.upload_id)
    assert [p["Size"] for p in parts["Parts"]] == [5]


def test_policy_changes_take_effect_without_restart(
    policy_gateway: GatewayThread, alice_bucket: str, tmp_path: Path
) -> None:
    guard = policy_gateway.gateway.guard
    assert guard is not None and guard.policy_file is not None
    guard.policy_file.check_interval = 0.1
    channel, stub = stub_for(policy_gateway.address)
    request = pb.CreateMultipartUploadRequest(bucket=alice_bucket, key="out/a.bin")
    with channel:
        error = failure(lambda: stub.CreateMultipartUpload(request, metadata=bearer(TOKEN_A)))
        assert error.code() == grpc.StatusCode.PERMISSION_DENIED
        widened = yaml.safe_load(yaml.safe_dump(POLICY))
        widened["principals"]["alice"][0]["prefixes"] = ["in/", "out/"]
        Path(guard.policy_file.path).write_text(yaml.safe_dump(widened))

        def widened_policy_in_force() -> bool:
            try:
                stub.CreateMultipartUpload(request, metadata=bearer(TOKEN_A))
            except grpc.RpcError as exc:
                assert exc.code() == grpc.StatusCode.PERMISSION_DENIED
                return False
            return True

        wait_for(widened_policy_in_force, "the widened policy to take effect")
        # A broken policy file keeps the last good one in force.
        Path(guard.policy_file.path).write_text("version: 1\nprincipals: [oops\n")
        policy_file = guard.policy_file

        def broken_file_read() -> bool:
            stub.CreateMultipartUpload(request, metadata=bearer(TOKEN_A))
            return policy_file.reload_failures >= 1

        wait_for(broken_file_read, "the broken policy file to be read")
        stub.CreateMultipartUpload(request, metadata=bearer(TOKEN_A))
