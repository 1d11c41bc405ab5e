"""Test helpers: a gateway in its own thread, stream builders, error-detail readers."""

from __future__ import annotations

import asyncio
import importlib.util
import threading
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Iterable, Iterator
from concurrent.futures import Future
from pathlib import Path
from types import ModuleType
from typing import Any, TypeVar

import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2

from gateway.config import Settings
from gateway.errors import DOMAIN
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


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 5) -> None:
    """Poll ``condition`` until it holds; fail naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.02)


def metric(running: GatewayThread, name: str, **labels: str) -> float:
    """The current value of one of a gateway's metric samples (0 when it has none yet)."""
    value = running.gateway.metrics.registry.get_sample_value(name, labels)
    return value or 0.0


def load_script(name: str) -> ModuleType:
    """Import ``scripts/NAME.py`` (the scripts folder is not a package)."""
    path = Path(__file__).resolve().parent.parent / "scripts" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def status_details(error: grpc.aio.AioRpcError) -> status_pb2.Status:
    for key, value in error.trailing_metadata() or ():
        if key == "grpc-status-details-bin":
            status = status_pb2.Status()
            status.ParseFromString(value)  # type: ignore[arg-type]
            return status
    raise AssertionError(f"no google.rpc.Status in the error: {error!r}")


def error_info(error: grpc.aio.AioRpcError) -> error_details_pb2.ErrorInfo:
    """The one ErrorInfo of an error (asserting there is exactly one, in our domain)."""
    infos = []
    for detail in status_details(error).details:
        info = error_details_pb2.ErrorInfo()
        if detail.Unpack(info):
            infos.append(info)
    assert len(infos) == 1, infos
    assert infos[0].domain == DOMAIN
    return infos[0]


def retry_info(error: grpc.aio.AioRpcError) -> error_details_pb2.RetryInfo | None:
    for detail in status_details(error).details:
        info = error_details_pb2.RetryInfo()
        if detail.Unpack(info):
            return info
    return None


def field_violations(error: grpc.aio.AioRpcError) -> list[str]:
    for detail in status_details(error).details:
        bad = error_details_pb2.BadRequest()
        if detail.Unpack(bad):
            return [v.field for v in bad.field_violations]
    return []
