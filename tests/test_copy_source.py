"""UploadPartCopy's source: the object the policy allows is exactly the object S3 reads.

The integration tests run on every backend with a policy that lets ``alice`` copy within ``a/``
of one bucket (and of one access point) and ``spaced`` within ``a b/``, secrets next to the
allowed objects, and the gateway in front of a counting proxy: a refused source must leave S3
untouched, an allowed one must copy exactly the bytes of the object the policy saw.
"""

from __future__ import annotations

import urllib.parse
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import grpc
import pytest
import yaml
from botocore.handlers import handle_copy_source_param
from hypothesis import given
from hypothesis import strategies as st

from gateway.errors import InvalidRequest
from gateway.security import auth
from gateway.security.guard import CopySource, parse_copy_source
from gateway.v1 import upload_service_pb2 as pb
from gateway.v1 import upload_service_pb2_grpc as pb_grpc
from tests.backends.counting import CountingProxy, counting_proxy
from tests.conftest import Backend
from tests.helpers import (
    GatewayThread,
    create_bucket,
    error_info,
    failure,
    field_violations,
    write_tokens,
)

TOKENS = {"alice": auth.generate_token(), "spaced": auth.generate_token()}
ACCESS_POINT = "arn:aws:s3:us-east-1:123456789012:accesspoint/ap"
OUTPOSTS_ACCESS_POINT = (
    "arn:aws:s3-outposts:us-west-2:123456789012:outpost/op-01234567890123456/accesspoint/ap"
)

#: Objects every integration test finds in the bucket: inside a grant and outside it.
OBJECTS = {
    key: f"object {key!r}".encode()
    for key in (
        "a/x",
        "a/secret",
        "a/x+y",
        "a/x y",
        "a/../secret",
        "a//x",
        "a/./x",
        "a/\u00e9",
        "a/x?y",
        "a/x#y",
        "a/x;y",
        "a b/x",
        # outside every grant
        "secret",
        "a%2Fsecret",
        "a%252Fsecret",
        "/a/x",
        "b/../a/x",
        "A/x",
        "a",
        "a+b/secret",
        "a/x?versionId=null",
    )
}


# --------------------------------------------------------------------------- the parser


@pytest.mark.parametrize(
    ("copy_source", "expected"),
    [
        ("bkt/a/x", CopySource("bkt", "a/x")),
        ("/bkt/a/x", CopySource("bkt", "a/x")),
        ("bkt/a%2Fsecret", CopySource("bkt", "a/secret")),
        ("bkt/%61/x", CopySource("bkt", "a/x")),
        ("bkt/a+b", CopySource("bkt", "a+b")),
        ("bkt/a%2Bb", CopySource("bkt", "a+b")),
        ("bkt/a%20b", CopySource("bkt", "a b")),
        ("bkt/a b", CopySource("bkt", "a b")),
        ("bkt//x", CopySource("bkt", "/x")),
        ("bkt/a//x", CopySource("bkt", "a//x")),
        ("bkt/a/../secret", CopySource("bkt", "a/../secret")),
        ("bkt/a%2F..%2Fsecret", CopySource("bkt", "a/../secret")),
        ("bkt/a/x%3Fy", CopySource("bkt", "a/x?y")),
        ("bkt/a/%C3%A9", CopySource("bkt", "a/\u00e9")),
        ("bkt/a/%c3%a9", CopySource("bkt", "a/\u00e9")),
        ("bkt/a/\u00e9", CopySource("bkt", "a/\u00e9")),
        ("bkt/a/x#y;z&w=v", CopySource("bkt", "a/x#y;z&w=v")),
        ("bkt/a/x?versionId=null", CopySource("bkt", "a/x", "null")),
        ("bkt/a/x?versionId=3HL4kq.t_J-l~c", CopySource("bkt", "a/x", "3HL4kq.t_J-l~c")),
        ("bkt/object/x", CopySource("bkt", "object/x")),
        (f"{ACCESS_POINT}/object/a/x", CopySource(ACCESS_POINT, "a/x")),
        (f"/{ACCESS_POINT}/object/a/x", CopySource(ACCESS_POINT, "a/x")),
        (f"{ACCESS_POINT}/object/object/x", CopySource(ACCESS_POINT, "object/x")),
        (f"{ACCESS_POINT}/object/a%2Fx?versionId=v1", CopySource(ACCESS_POINT, "a/x", "v1")),
        (
            "arn:aws:s3:us-east-1:123456789012:accesspoint:object/object/x",
            CopySource("arn:aws:s3:us-east-1:123456789012:accesspoint:object", "x"),
        ),
        (
            "arn:aws-cn:s3:cn-north-1:123456789012:accesspoint/ap/object/x",
            CopySource("arn:aws-cn:s3:cn-north-1:123456789012:accesspoint/ap", "x"),
        ),
        (f"{OUTPOSTS_ACCESS_POINT}/object/a/x", CopySource(OUTPOSTS_ACCESS_POINT, "a/x")),
        ("logs--usw2-az1--x-s3/a/x", CopySource("logs--usw2-az1--x-s3", "a/x")),
    ],
)
def test_parse_copy_source(copy_source: str, expected: CopySource) -> None:
    assert parse_copy_source(copy_source) == expected


@pytest.mark.parametrize(
    ("copy_source", "message"),
    [
        ("", "is required"),
        ("bkt", "must be BUCKET/KEY"),
        ("bkt/", "the key is empty"),
        ("/bkt/", "the key is empty"),
        ("/", "must be BUCKET/KEY"),
        ("//bkt/a/x", "the source bucket is required"),
        ("/a/x", "the source bucket must be 3 to 63"),
        ("Bkt/a/x", "the source bucket must be 3 to 63"),
        (" bkt/a/x", "the source bucket must be 3 to 63"),
        ("bkt%2Fa/x", "the source bucket must be 3 to 63"),
        ("bkt%2Fa%2Fx", "must be BUCKET/KEY"),
        ("127.0.0.1/a/x", "the source bucket must not be formatted as an IP address"),
        # double encoding, and any other literal %
        ("bkt/a%252Fsecret", "contains '%'"),
        ("bkt/a/100%25", "contains '%'"),
        # broken escapes
        ("bkt/a/x%", "does not begin an escape"),
        ("bkt/a/x%2", "does not begin an escape"),
        ("bkt/a/x%zz", "does not begin an escape"),
        ("bkt/a/x%%41", "does not begin an escape"),
        ("bkt/a/%FF", "not UTF-8"),
        ("bkt/a/%C3", "not UTF-8"),
        ("bkt/a/%ED%A0%80", "not UTF-8"),
        # control characters, raw or encoded
        ("bkt/a/x\n", "must not contain control characters"),
        ("bkt/a/x\x00", "must not contain control characters"),
        ("bkt/a/x\x7f", "must not contain control characters"),
        ("bkt/a/x?versionId=v\r\nx-amz-acl: public", "must not contain control characters"),
        ("bkt/a/x%0A", "the key must not contain control characters"),
        ("bkt/a/x%00", "the key must not contain control characters"),
        ("bkt/a/x%7f", "the key must not contain control characters"),
        # the query
        ("bkt/a/x?", "the only query accepted is ?versionId=ID"),
        ("bkt/a/x?versionId", "the only query accepted"),
        ("bkt/a/x?versionId=", "the only query accepted"),
        ("bkt/a/x?versionid=v", "the only query accepted"),
        ("bkt/a/x?VersionId=v", "the only query accepted"),
        ("bkt/a/x?foo=bar", "the only query accepted"),
        ("bkt/a/x?versionId=null&foo=bar", "the only query accepted"),
        ("bkt/a/x?foo=bar&versionId=null", "the only query accepted"),
        ("bkt/a/x?versionId=a+b", "the only query accepted"),
        ("bkt/a/x?versionId=a%2Bb", "the only query accepted"),
        ("bkt/a/x?versionId=a/b", "the only query accepted"),
        ("bkt/a/x?versionId=null?", "the only query accepted"),
        ("bkt/a/x?versionId=" + "v" * 1025, "the only query accepted"),
        ("bkt/a?b", "the only query accepted"),
        ("bkt?versionId=null", "must be BUCKET/KEY"),
        # access point ARNs
        (ACCESS_POINT, "must be BUCKET/KEY"),
        (f"{ACCESS_POINT}/object/", "the key is empty"),
        (f"{ACCESS_POINT}/a/x", "must be BUCKET/KEY"),
        (f"{ACCESS_POINT}object/a/x", "must be BUCKET/KEY"),
        (f"{ACCESS_POINT}/object/a%252Fx", "contains '%'"),
        ("arn:aws/object/x:s3:us-east-1:123456789012:accesspoint/ap/object/a/x", "BUCKET/KEY"),
        ("arn:aws:s3:us-east-1:12345678901:accesspoint/ap/object/a/x", "must be BUCKET/KEY"),
        ("arn:aws:s3:us-east-1:123456789012:bucket/ap/object/a/x", "must be BUCKET/KEY"),
        ("arn:aws:s3-object-lambda:us-east-1:123456789012:accesspoint/ap/object/x", "BUCKET/KEY"),
        ("arn:aws:s3:us-east-1:123456789012:accesspoint/a_p/object/x", "must be BUCKET/KEY"),
        # S3's key length
        ("bkt/a/" + "x" * 1023, "at most 1024 UTF-8 bytes"),
        ("bkt/a/" + "%C3%A9" * 512, "at most 1024 UTF-8 bytes"),
    ],
)
def test_parse_copy_source_refuses_what_is_not_exactly_one_object(
    copy_source: str, message: str
) -> None:
    with pytest.raises(InvalidRequest) as caught:
        parse_copy_source(copy_source)
    assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert caught.value.violations[0][0] == "copy_source"
    assert message in caught.value.violations[0][1]


def test_the_longest_key_is_accepted() -> None:
    assert parse_copy_source("bkt/a/" + "x" * 1022).key == "a/" + "x" * 1022
    assert parse_copy_source("bkt/a/" + "%C3%A9" * 511).key == "a/" + "\u00e9" * 511


def sent_header(source: CopySource) -> str:
    """The x-amz-copy-source value botocore builds from ``source`` (its own handler)."""
    params: dict[str, Any] = {"CopySource": source.botocore()}
    handle_copy_source_param(params)
    header: str = params["CopySource"]
    return header


def test_botocore_sends_the_parsed_source_encoded_once() -> None:
    assert sent_header(parse_copy_source("bkt/a%2Fsecret")) == "bkt/a/secret"
    assert sent_header(parse_copy_source("bkt/a+b%20c")) == "bkt/a%2Bb%20c"
    assert sent_header(parse_copy_source("/bkt/a/x%3Fy?versionId=v1")) == (
        "bkt/a/x%3Fy?versionId=v1"
    )
    assert sent_header(parse_copy_source(f"{ACCESS_POINT}/object/a/x")) == (
        "arn%3Aaws%3As3%3Aus-east-1%3A123456789012%3Aaccesspoint/ap/object/a/x"
    )
    assert sent_header(parse_copy_source(f"{OUTPOSTS_ACCESS_POINT}/object/x")).endswith(
        "%3Aoutpost/op-01234567890123456/accesspoint/ap/object/x"
    )


# Keys without control characters or "%", as any client would encode them.
_keys = st.text(
    st.characters(exclude_categories=("Cs",), exclude_characters="%\x7f"), min_size=1
).filter(lambda key: not any(ord(c) < 0x20 for c in key) and len(key.encode()) <= 1024)


@given(key=_keys, safe=st.sampled_from(["", "/", "/+ ", "/+ :@!$&'()*,;="]))
def test_any_encoding_of_a_key_names_that_key_and_every_store_reads_it(key: str, safe: str) -> None:
    source = parse_copy_source(f"bkt/{urllib.parse.quote(key, safe=safe)}")
    assert source == CopySource("bkt", key)
    header = sent_header(source)
    # S3 and moto decode the header once, Ceph RGW 16 twice: the same object either way.
    once = urllib.parse.unquote(header)
    assert once == f"bkt/{key}"
    assert urllib.parse.unquote(once) == once


# --------------------------------------------------------------------------- against S3


@pytest.fixture(scope="module")
def bucket(backend: Backend) -> str:
    """A versioned bucket holding :data:`OBJECTS` (shared by the tests of one backend)."""
    s3 = backend.client()
    name = create_bucket(s3, "copy")
    s3.put_bucket_versioning(Bucket=name, VersioningConfiguration={"Status": "Enabled"})
    for key, body in OBJECTS.items():
        s3.put_object(Bucket=name, Key=key, Body=body)
    listed = s3.list_objects_v2(Bucket=name)["Contents"]
    assert sorted(o["Key"] for o in listed) == sorted(OBJECTS)
    return name


@pytest.fixture(scope="module")
def proxy(backend: Backend) -> Iterator[CountingProxy]:
    with counting_proxy(backend.endpoint) as running:
        yield running


@pytest.fixture(scope="module")
def stub(
    backend: Backend,
    proxy: CountingProxy,
    tmp_path_factory: pytest.TempPathFactory,
    bucket: str,
) -> Iterator[pb_grpc.UploadServiceStub]:
    """A gateway, in front of the counting proxy, with the policy of this module."""
    directory = tmp_path_factory.mktemp("copy-source")
    tokens = write_tokens(directory / "tokens.yaml", **TOKENS)
    policy = directory / "policy.yaml"
    principals = {
        "alice": [
            {
                "operations": ["UploadPartCopy"],
                "buckets": [bucket, ACCESS_POINT],
                "prefixes": ["a/"],
            }
        ],
        "spaced": [{"operations": ["UploadPartCopy"], "buckets": [bucket], "prefixes": ["a b/"]}],
    }
    policy.write_text(yaml.safe_dump({"version": 1, "principals": principals}))
    settings = backend.settings(
        s3_endpoint_url=proxy.url, auth_tokens_file=str(tokens), policy_file=str(policy)
    )
    with (
        GatewayThread(settings, backend.credentials) as running,
        grpc.insecure_channel(running.address) as channel,
    ):
        yield pb_grpc.UploadServiceStub(channel)


@pytest.fixture
def upload(s3_sync: Any, bucket: str) -> Callable[[str], pb.UploadPartCopyRequest]:
    """A new upload to a key inside the grant of ``principal``, as a copy request to fill in."""

    def make(principal: str) -> pb.UploadPartCopyRequest:
        key = f"{'a b' if principal == 'spaced' else 'a'}/mine-{uuid.uuid4().hex[:8]}"
        upload_id = s3_sync.create_multipart_upload(Bucket=bucket, Key=key)["UploadId"]
        return pb.UploadPartCopyRequest(bucket=bucket, key=key, upload_id=upload_id, part_number=1)

    return make


def copy(
    stub: pb_grpc.UploadServiceStub, request: pb.UploadPartCopyRequest, principal: str
) -> pb.UploadPartCopyResponse:
    response: pb.UploadPartCopyResponse = stub.UploadPartCopy(
        request, metadata=[("authorization", f"Bearer {TOKENS[principal]}")]
    )
    return response


def refused(
    stub: pb_grpc.UploadServiceStub, request: pb.UploadPartCopyRequest, principal: str
) -> Any:
    return failure(lambda: copy(stub, request, principal))


def complete_and_read(s3: Any, request: pb.UploadPartCopyRequest, etag: str) -> bytes:
    """Complete the upload of ``request`` with its one copied part; the bytes S3 stored."""
    s3.complete_multipart_upload(
        Bucket=request.bucket,
        Key=request.key,
        UploadId=request.upload_id,
        MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": etag}]},
    )
    body: bytes = s3.get_object(Bucket=request.bucket, Key=request.key)["Body"].read()
    return body


def test_percent_2f_names_the_slash_key_and_never_the_secret(
    stub: pb_grpc.UploadServiceStub, upload: Any, s3_sync: Any, bucket: str
) -> None:
    """The measured bypass: the policy saw ``a/secret`` while S3 read ``a%2Fsecret``."""
    request = upload("alice")
    request.copy_source = f"{bucket}/a%2Fsecret"
    etag = copy(stub, request, "alice").copy_part_result.etag
    assert complete_and_read(s3_sync, request, etag) == OBJECTS["a/secret"]


@pytest.mark.parametrize(
    ("principal", "source", "key"),
    [
        ("alice", "{bucket}/a/x", "a/x"),
        ("alice", "/{bucket}/a/x", "a/x"),
        ("alice", "{bucket}/%61%2Fx", "a/x"),
        ("alice", "{bucket}/a/x+y", "a/x+y"),
        ("alice", "{bucket}/a/x%2By", "a/x+y"),
        ("alice", "{bucket}/a/x%20y", "a/x y"),
        ("alice", "{bucket}/a/x y", "a/x y"),
        ("alice", "{bucket}/a/../secret", "a/../secret"),
        ("alice", "{bucket}/a%2F..%2Fsecret", "a/../secret"),
        ("alice", "{bucket}/a//x", "a//x"),
        ("alice", "{bucket}/a/./x", "a/./x"),
        ("alice", "{bucket}/a/%C3%A9", "a/\u00e9"),
        ("alice", "{bucket}/a/\u00e9", "a/\u00e9"),
        ("alice", "{bucket}/a/x%3Fy", "a/x?y"),
        ("alice", "{bucket}/a/x#y", "a/x#y"),
        ("alice", "{bucket}/a/x;y", "a/x;y"),
        ("spaced", "{bucket}/a%20b/x", "a b/x"),
        ("spaced", "{bucket}/a b/x", "a b/x"),
    ],
)
def test_an_allowed_source_copies_exactly_the_object_allowed(
    stub: pb_grpc.UploadServiceStub,
    upload: Any,
    proxy: CountingProxy,
    s3_sync: Any,
    bucket: str,
    principal: str,
    source: str,
    key: str,
) -> None:
    request = upload(principal)
    request.copy_source = source.format(bucket=bucket)
    before = proxy.count
    etag = copy(stub, request, principal).copy_part_result.etag
    assert proxy.count == before + 1
    assert complete_and_read(s3_sync, request, etag) == OBJECTS[key]


def test_a_version_id_copies_that_version(
    stub: pb_grpc.UploadServiceStub, upload: Any, s3_sync: Any, bucket: str
) -> None:
    key = f"a/versioned-{uuid.uuid4().hex[:8]}"
    first = s3_sync.put_object(Bucket=bucket, Key=key, Body=b"first")["VersionId"]
    s3_sync.put_object(Bucket=bucket, Key=key, Body=b"second")
    request = upload("alice")
    request.copy_source = f"{bucket}/{key}?versionId={first}"
    copied = copy(stub, request, "alice")
    assert complete_and_read(s3_sync, request, copied.copy_part_result.etag) == b"first"


@pytest.mark.parametrize(
    ("principal", "source"),
    [
        ("alice", "{bucket}/secret"),
        ("alice", "{bucket}/%73ecret"),
        ("alice", "/{bucket}/secret"),
        ("alice", "{bucket}/a"),
        ("alice", "{bucket}/A/x"),
        # a leading slash in the key is part of it; S3 does not resolve dot segments
        ("alice", "{bucket}//a/x"),
        ("alice", "{bucket}/%2Fa/x"),
        ("alice", "{bucket}/b/../a/x"),
        # "+" is a plus for S3 (moto and RGW alike), never a space
        ("spaced", "{bucket}/a+b/secret"),
        ("spaced", "{bucket}/a%2Bb/secret"),
        # the query is never part of the key
        ("alice", "{bucket}/secret?versionId=null"),
        ("alice", "{bucket}/secret%3FversionId=null"),
        # other buckets, access points and the keys inside them
        ("alice", "other-{bucket}/a/x"),
        ("spaced", f"{ACCESS_POINT}/object/a b/x"),
        ("alice", f"{ACCESS_POINT}/object/secret"),
        ("alice", f"{ACCESS_POINT}/object/secret/object/a/x"),
        ("alice", f"{ACCESS_POINT}x/object/a/x"),
        ("alice", "arn:aws:s3:us-east-1:123456789012:accesspoint/other/object/a/x"),
        ("alice", "arn:aws:s3:us-east-1:123456789012:accesspoint:ap/object/a/x"),
    ],
)
def test_a_source_outside_the_grant_is_denied_before_s3(
    stub: pb_grpc.UploadServiceStub,
    upload: Any,
    proxy: CountingProxy,
    s3_sync: Any,
    bucket: str,
    principal: str,
    source: str,
) -> None:
    request = upload(principal)
    request.copy_source = source.format(bucket=bucket)
    before = proxy.count
    error = refused(stub, request, principal)
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED, error.details()
    info = error_info(error)
    assert info.reason == "POLICY_DENIED" and info.metadata["operation"] == "UploadPartCopy"
    assert "copy source" in error.details() and "nothing was sent to S3" in error.details()
    assert proxy.count == before, proxy.requests[before:]
    parts = s3_sync.list_parts(Bucket=bucket, Key=request.key, UploadId=request.upload_id)
    assert not parts.get("Parts")


@pytest.mark.parametrize(
    "source",
    [
        # the secret a%2Fsecret, double encoded
        "{bucket}/a%252Fsecret",
        "{bucket}/a/x%25",
        "{bucket}/a/x%",
        "{bucket}/a/x%zz",
        "{bucket}/a/%FF",
        "{bucket}/a/x%0A",
        "{bucket}/a/x%00",
        "{bucket}/a/x\n",
        # a query that is not exactly ?versionId=ID
        "{bucket}/a/x?versionId=",
        "{bucket}/a/x?",
        "{bucket}/a/x?foo=bar",
        "{bucket}/a/x?versionId=null&foo=bar",
        "{bucket}/a/x?versionId=a+b",
        # a raw "?" never joins the key: a/x?versionId=null exists, and is not read
        "{bucket}/a/x?versionId=null?versionId=null",
        "{bucket}/a/x?y",
        # no bucket, no key
        "",
        "{bucket}",
        "{bucket}/",
        "//{bucket}/a/x",
        "{bucket}%2Fa/x",
        f"{ACCESS_POINT}/object/",
        f"{ACCESS_POINT}/a/x",
    ],
)
def test_a_source_that_names_no_single_object_is_refused_before_s3(
    stub: pb_grpc.UploadServiceStub,
    upload: Any,
    proxy: CountingProxy,
    bucket: str,
    source: str,
) -> None:
    request = upload("alice")
    request.copy_source = source.format(bucket=bucket)
    before = proxy.count
    error = refused(stub, request, "alice")
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error.details()
    assert field_violations(error) == ["copy_source"]
    assert proxy.count == before, proxy.requests[before:]


def test_an_allowed_access_point_source_reaches_s3(
    stub: pb_grpc.UploadServiceStub, upload: Any, proxy: CountingProxy
) -> None:
    """Neither moto nor RGW serves access points: the store answers, not the gateway."""
    request = upload("alice")
    request.copy_source = f"{ACCESS_POINT}/object/a/x"
    before = proxy.count
    error = refused(stub, request, "alice")
    assert proxy.count == before + 1
    assert "s3ErrorCode" in error_info(error).metadata, error.details()


def test_without_a_policy_the_source_is_parsed_the_same_way(
    gateway: GatewayThread, s3_sync: Any, bucket: str
) -> None:
    key = f"a/mine-{uuid.uuid4().hex[:8]}"
    upload_id = s3_sync.create_multipart_upload(Bucket=bucket, Key=key)["UploadId"]
    request = pb.UploadPartCopyRequest(bucket=bucket, key=key, upload_id=upload_id, part_number=1)
    with grpc.insecure_channel(gateway.address) as channel:
        open_stub = pb_grpc.UploadServiceStub(channel)
        request.copy_source = f"{bucket}/a%252Fsecret"
        with pytest.raises(grpc.RpcError) as caught:
            open_stub.UploadPartCopy(request)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        request.copy_source = f"{bucket}/a%2Fsecret"
        etag = open_stub.UploadPartCopy(request).copy_part_result.etag
    assert complete_and_read(s3_sync, request, etag) == OBJECTS["a/secret"]


def test_an_access_point_arn_encoded_as_botocore_sends_it_names_the_same_object() -> None:
    plain = parse_copy_source(f"{ACCESS_POINT}/object/a/x")
    encoded = parse_copy_source(ACCESS_POINT.replace(":", "%3A") + "/object/a/x")
    assert encoded == plain == CopySource(ACCESS_POINT, "a/x")
    with pytest.raises(InvalidRequest):
        parse_copy_source(ACCESS_POINT.replace(":", "%3A").replace("/ap", "%2Fap") + "/object/x")
