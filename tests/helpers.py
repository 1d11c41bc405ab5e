"""Test helpers: a gateway in its own thread, stream builders, waits, metric readers, bucket
names, error-detail readers, and the tokens and policy of the security tests."""

from __future__ import annotations

import asyncio
import importlib.util
import re
import threading
import time
import urllib.request
import uuid
from collections.abc import AsyncIterator, Callable, Coroutine, Iterable, Iterator
from concurrent.futures import Future
from pathlib import Path
from types import ModuleType
from typing import Any, TypeVar

import grpc
import pytest
import yaml
from google.rpc import error_details_pb2, status_pb2
from prometheus_client.parser import text_string_to_metric_families

from gateway import checksums
from gateway.config import Settings
from gateway.errors import DOMAIN
from gateway.security import auth
from gateway.server.app import Gateway
from gateway.units import MiB
from gateway.v1 import upload_service_pb2 as pb
from gateway.v1 import upload_service_pb2_grpc as pb_grpc

T = TypeVar("T")


class GatewayThread:
    """Runs a :class:`Gateway` on an event loop in a background thread."""

    def __init__(self, settings: Settings, credentials: tuple[str, str] | None = None) -> None:
        self.settings = settings
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.gateway = Gateway(settings, credentials)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.gateway.port}"

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 30) -> T:
        """Run a coroutine on the gateway's loop and wait for its result."""
        future: Future[T] = asyncio.run_coroutine_threadsafe(coro, self.loop)
        return future.result(timeout)

    def __enter__(self) -> GatewayThread:
        self._thread.start()
        self.run(self.gateway.start())
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            self.run(self.gateway.stop(grace=1))
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(10)
            self.loop.close()

    def call_tasks(self) -> set[asyncio.Task[Any]]:
        """Tasks alive on the gateway's loop besides grpc's own accept loops: RPC handlers and
        anything they started."""

        async def others() -> set[asyncio.Task[Any]]:
            me = asyncio.current_task()
            return {
                t
                for t in asyncio.all_tasks()
                if t is not me and t.get_coro().__qualname__ not in _GRPC_SERVER_LOOPS  # type: ignore[union-attr]
            }

        return self.run(others())


#: The coroutines grpc.aio's server runs for itself, waiting for calls.
_GRPC_SERVER_LOOPS = {
    "AioServer._request_call",
    "AioServer._request_registered_call",
    "AioServer._server_main_loop",
}


class S3Reader:
    """Reads what S3 stored, straight from the store (not through the gateway)."""

    def __init__(self, client: Any) -> None:
        self.client = client

    def parts(self, bucket: str, key: str, upload_id: str) -> dict[int, dict[str, Any]]:
        response = self.client.list_parts(Bucket=bucket, Key=key, UploadId=upload_id)
        return {p["PartNumber"]: p for p in response.get("Parts", [])}

    def read(self, bucket: str, key: str, **extra: Any) -> bytes:
        body: bytes = self.client.get_object(Bucket=bucket, Key=key, **extra)["Body"].read()
        return body

    def uploads(self, bucket: str) -> list[str]:
        response = self.client.list_multipart_uploads(Bucket=bucket)
        return [u["UploadId"] for u in response.get("Uploads", [])]


def header_message(**fields: Any) -> pb.UploadPartRequest:
    return pb.UploadPartRequest(header=pb.UploadPartHeader(**fields))


def data_message(content: bytes, crc32c: int | None = None) -> pb.UploadPartRequest:
    data = pb.ChecksummedData(content=content)
    if crc32c is not None:
        data.crc32c = crc32c
    return pb.UploadPartRequest(data=data)


def trailer_message(**fields: str) -> pb.UploadPartRequest:
    return pb.UploadPartRequest(trailer=pb.UploadPartTrailer(**fields))


def chunks(data: bytes, size: int = MiB) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)] or [b""]


async def stream(messages: Iterable[pb.UploadPartRequest]) -> AsyncIterator[pb.UploadPartRequest]:
    for message in messages:
        yield message


def part_messages(
    header: pb.UploadPartHeader | dict[str, Any],
    data: bytes,
    *,
    chunk_size: int = MiB,
    trailer: dict[str, str] | None = None,
) -> list[pb.UploadPartRequest]:
    """A complete UploadPart stream: header, data in chunks, optional trailer."""
    first = (
        pb.UploadPartRequest(header=header)
        if isinstance(header, pb.UploadPartHeader)
        else header_message(**header)
    )
    messages = [first, *(data_message(c) for c in chunks(data, chunk_size) if c)]
    if trailer is not None:
        messages.append(trailer_message(**trailer))
    return messages


def part_stream(
    header: pb.UploadPartHeader | dict[str, Any],
    data: bytes,
    *,
    chunk_size: int = MiB,
    trailer: dict[str, str] | None = None,
) -> AsyncIterator[pb.UploadPartRequest]:
    """:func:`part_messages` as the async iterator a grpc.aio stub takes."""
    return stream(part_messages(header, data, chunk_size=chunk_size, trailer=trailer))


async def upload_part_error(
    address: str, messages: Iterable[pb.UploadPartRequest], *, deadline: float | None = None
) -> Any:
    """Send an UploadPart the gateway must refuse (with a grpc deadline of ``deadline`` seconds,
    if given); return the grpc.RpcError.

    This goes through grpc's synchronous API in a worker thread: when a server ends a
    client-streaming call while the client is still writing, grpc.aio clients can report
    INTERNAL "Internal error from Core" instead of the server's status (grpc/grpc#36066); the
    synchronous API reports the server's status.
    """

    def call() -> Any:
        with grpc.insecure_channel(address) as channel:
            stub = pb_grpc.UploadServiceStub(channel)
            try:
                stub.UploadPart(iter(messages), timeout=deadline)
            except grpc.RpcError as error:
                return error
        raise AssertionError("UploadPart succeeded; an error was expected")

    return await asyncio.to_thread(call)


async def rpc_error(call: Any) -> Any:
    """Await a call that must fail; returns its grpc.aio.AioRpcError."""
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    return caught.value


class HeldStream:
    """An UploadPart (grpc's synchronous API) that sends ``messages``, then waits until released
    (or 30 s) before ending its stream."""

    def __init__(
        self, stub: pb_grpc.UploadServiceStub, *messages: pb.UploadPartRequest, **kw: Any
    ) -> None:
        self.release = threading.Event()

        def stream() -> Iterator[pb.UploadPartRequest]:
            yield from messages
            self.release.wait(30)

        self.future = stub.UploadPart.future(stream(), **kw)


def wait_for(
    condition: Callable[[], T],
    what: str,
    timeout: float = 5,
    *,
    detail: Callable[[], object] | None = None,
) -> T:
    """Poll ``condition`` until it returns something truthy, and return that; fail naming
    ``what`` (and ``detail()``, if given) after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not (result := condition()):
        if time.monotonic() > deadline:
            seen = f": {detail()}" if detail is not None else ""
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}{seen}")
        time.sleep(0.02)
    return result


#: Seconds :func:`wait_for_async` waits.
ASYNC_WAIT = 20.0


async def wait_for_async(
    condition: Callable[[], T], what: str, *, detail: Callable[[], object] | None = None
) -> T:
    """:func:`wait_for` for async tests, for up to :data:`ASYNC_WAIT` seconds: polls without
    blocking the test's event loop (state on the gateway's thread can signal no event to it)."""
    deadline = time.monotonic() + ASYNC_WAIT
    while not (result := condition()):
        if time.monotonic() > deadline:
            seen = f": {detail()}" if detail is not None else ""
            raise AssertionError(f"timed out after {ASYNC_WAIT:g} s waiting for {what}{seen}")
        await asyncio.sleep(0.02)
    return result


def metric(running: GatewayThread, name: str, **labels: str) -> float:
    """The current value of one of a gateway's metric samples (0 when it has none yet)."""
    value = running.gateway.metrics.registry.get_sample_value(name, labels)
    return value or 0.0


#: Samples of a /metrics page, keyed by name and labels.
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(target: GatewayThread | int) -> Samples:
    """Every sample of a gateway's /metrics page: a gateway in a thread, or the metrics port of
    one (a gateway process logs it, see :func:`logged_metrics_port`)."""
    port = target if isinstance(target, int) else target.gateway.metrics_port
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def sample_value(samples: Samples, name: str, **labels: str) -> float:
    """One sample of a :func:`scrape`; a KeyError when the page has no such sample."""
    return samples[(name, frozenset(labels.items()))]


def logged_metrics_port(log: list[str]) -> int:
    """The metrics port a gateway process logged once it served."""
    for line in list(log):
        if match := re.search(r'"metrics_port": (\d+)', line):
            return int(match.group(1))
    raise AssertionError(f"no metrics port in the log:\n{''.join(log)}")


def inflight_streams(running: GatewayThread) -> float:
    """UploadPart streams the gateway holds (s3gateway_inflight_streams)."""
    return metric(running, "s3gateway_inflight_streams")


def create_bucket(s3: Any, prefix: str = "test") -> str:
    """Create a bucket with a fresh name starting with ``prefix`` through the boto3 client
    ``s3``; returns its name."""
    name = f"{prefix}-{uuid.uuid4().hex[:20]}"
    s3.create_bucket(Bucket=name)
    return name


def load_script(name: str) -> ModuleType:
    """Import ``scripts/NAME.py`` (the scripts folder is not a package)."""
    path = Path(__file__).resolve().parent.parent / "scripts" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def status_details(error: grpc.RpcError | status_pb2.Status) -> status_pb2.Status:
    """The google.rpc.Status of a failed call (either grpc API), or the Status itself."""
    if isinstance(error, status_pb2.Status):
        return error
    for key, value in error.trailing_metadata() or ():  # type: ignore[attr-defined]
        if key == "grpc-status-details-bin":
            status = status_pb2.Status()
            status.ParseFromString(value)  # type: ignore[arg-type]
            return status
    raise AssertionError(f"no google.rpc.Status in the error: {error!r}")


def error_info(error: grpc.RpcError | status_pb2.Status) -> error_details_pb2.ErrorInfo:
    """The one ErrorInfo of an error (asserting there is exactly one, in our domain)."""
    infos = []
    for detail in status_details(error).details:
        info = error_details_pb2.ErrorInfo()
        if detail.Unpack(info):
            infos.append(info)
    assert len(infos) == 1, infos
    assert infos[0].domain == DOMAIN
    return infos[0]


def retry_info(error: grpc.RpcError | status_pb2.Status) -> error_details_pb2.RetryInfo | None:
    for detail in status_details(error).details:
        info = error_details_pb2.RetryInfo()
        if detail.Unpack(info):
            return info
    return None


def field_violations(error: grpc.RpcError | status_pb2.Status) -> list[str]:
    for detail in status_details(error).details:
        bad = error_details_pb2.BadRequest()
        if detail.Unpack(bad):
            return [v.field for v in bad.field_violations]
    return []


# Authentication and authorization, for calls through grpc's synchronous API: a refused
# client-streaming call must report the gateway's status, not grpc.aio's early-status race
# (grpc/grpc#36066).

TOKEN_A = auth.generate_token()
TOKEN_B = auth.generate_token()

#: A policy for the principals of TOKEN_A (alice) and TOKEN_B (bob): alice may do anything in
#: ``in/`` of the buckets named ``alice-*``, with parts of at most 1 MiB; bob may only list there.
POLICY = {
    "version": 1,
    "principals": {
        "alice": [
            {
                "operations": ["*"],
                "buckets": ["alice-*"],
                "prefixes": ["in/"],
                "max_part_size": "1MiB",
            }
        ],
        "bob": [{"operations": ["ListMultipartUploads", "ListParts"], "buckets": ["alice-*"]}],
    },
}


def write_tokens(path: Path, **tokens: str) -> Path:
    """A token file giving each principal (the keyword) its token (the value)."""
    entries = [{"principal": name, "sha256": auth.hash_token(t)} for name, t in tokens.items()]
    path.write_text(yaml.safe_dump({"tokens": entries}))
    return path


def bearer(token: str) -> list[tuple[str, str]]:
    return [("authorization", f"Bearer {token}")]


def stub_for(address: str) -> tuple[grpc.Channel, pb_grpc.UploadServiceStub]:
    """A channel (grpc's synchronous API) to ``address`` and an UploadService stub on it."""
    channel = grpc.insecure_channel(address)
    return channel, pb_grpc.UploadServiceStub(channel)


def failure(call: Callable[[], Any]) -> Any:
    """Make a call (grpc's synchronous API) that must fail; returns its grpc.RpcError."""
    with pytest.raises(grpc.RpcError) as caught:
        call()
    return caught.value


def sized_header(
    bucket: str, key: str, upload_id: str, size: int, number: int = 1
) -> pb.UploadPartRequest:
    """An UploadPart header message announcing ``size`` bytes."""
    return header_message(
        bucket=bucket, key=key, upload_id=upload_id, part_number=number, content_length=size
    )


# WriteObject streams.


def write_spec(bucket: str, key: str, **fields: Any) -> pb.WriteObjectRequest:
    """The first message of a WriteObject stream: the object's CreateMultipartUpload fields, and
    ``if_none_match``, ``if_match``, ``object_size`` for the spec itself."""
    extra = {k: fields.pop(k) for k in ("if_none_match", "if_match", "object_size") if k in fields}
    request = pb.CreateMultipartUploadRequest(bucket=bucket, key=key, **fields)
    return pb.WriteObjectRequest(spec=pb.WriteObjectSpec(object=request, **extra))


def crc64(data: bytes) -> str:
    """The base64 CRC64NVME of ``data``: WriteObject's default whole-object checksum."""
    return checksums.encode(checksums.CRC64NVME.compute(data))


def write_stream(
    first: pb.WriteObjectRequest,
    data: bytes,
    finish: pb.FinishWrite | None,
    chunk: int = MiB,
) -> list[pb.WriteObjectRequest]:
    """The messages of a WriteObject stream: ``first``, ``data`` in messages of ``chunk`` bytes
    (each with its CRC32C), then ``finish`` unless it is None."""
    messages = [first]
    for offset in range(0, len(data), chunk):
        content = data[offset : offset + chunk]
        messages.append(
            pb.WriteObjectRequest(
                data=pb.ChecksummedData(content=content, crc32c=checksums.crc32c(content))
            )
        )
    if finish is not None:
        messages.append(pb.WriteObjectRequest(finish=finish))
    return messages


async def write_messages(
    first: pb.WriteObjectRequest,
    data: bytes,
    finish: pb.FinishWrite | None,
    chunk: int = MiB,
) -> AsyncIterator[pb.WriteObjectRequest]:
    """:func:`write_stream` as the async iterator a grpc.aio stub takes."""
    for message in write_stream(first, data, finish, chunk):
        yield message


async def write_object(
    stub: Any, first: pb.WriteObjectRequest, data: bytes, finish: pb.FinishWrite | None = None
) -> list[pb.WriteObjectResponse]:
    """Write ``data``, finishing with its CRC64NVME unless ``finish`` says otherwise; every
    answer of the stream."""
    finish = finish if finish is not None else pb.FinishWrite(checksum_crc64nvme=crc64(data))
    return [response async for response in stub.WriteObject(write_messages(first, data, finish))]


def resume_write(token: str, offset: int) -> pb.WriteObjectRequest:
    """The first message of a WriteObject stream that continues a resumable write."""
    return pb.WriteObjectRequest(resume=pb.ResumeWrite(write_token=token, write_offset=offset))


async def send_until_persisted(
    stub: Any, first: pb.WriteObjectRequest, data: bytes, persisted: int
) -> str:
    """Stream ``data`` after ``first`` and cancel once ``persisted`` bytes are committed; the
    token of the last progress."""
    held = asyncio.Event()

    async def messages() -> AsyncIterator[pb.WriteObjectRequest]:
        async for message in write_messages(first, data, None):
            yield message
        await held.wait()  # no finish: the stream is cut off

    call = stub.WriteObject(messages())
    token = ""
    async for response in call:
        if response.HasField("progress"):
            token = response.progress.write_token or token
            if response.progress.persisted_size >= persisted:
                break
    call.cancel()
    held.set()
    return token


async def write_refused(
    address: str,
    messages: Iterable[pb.WriteObjectRequest],
    *,
    metadata: list[tuple[str, str]] | None = None,
    deadline: float | None = None,
) -> Any:
    """Send a WriteObject stream the gateway must refuse; its grpc.RpcError. Through grpc's
    synchronous API, for the reason :func:`upload_part_error` gives."""

    def call() -> Any:
        with grpc.insecure_channel(address) as channel:
            stub = pb_grpc.UploadServiceStub(channel)
            try:
                for _ in stub.WriteObject(iter(messages), metadata=metadata, timeout=deadline):
                    pass
            except grpc.RpcError as error:
                return error
        raise AssertionError("WriteObject succeeded; an error was expected")

    return await asyncio.to_thread(call)
