"""The process's S3 clients and the calls the gateway makes with them.

The clients are configured for relaying: the gateway verifies checksums itself, so botocore
computes none it is not asked for (``when_required``) and sends payloads unsigned; retries are off,
because a streamed part cannot be replayed and a retry would hide S3's real answer — a transient
failure reaches the caller as UNAVAILABLE with RetryInfo instead, and the caller re-sends.

Directory buckets (S3 Express One Zone, ``name--azid--x-s3``) are routed by botocore's own endpoint
rules: to ``https://{bucket}.s3express-{az}.{region}.amazonaws.com``, virtual-host style, with
CreateSession credentials that aiobotocore's identity resolver caches per bucket and refreshes
before they expire (one CreateSession per bucket, shared by every stream). One client serves both
bucket types unless the operator points directory buckets at an endpoint of their own, which then
gets a second client: botocore binds an endpoint override to a client.

No wait on S3 is unbounded:

- **Connections.** A call takes a connection from :class:`.pool.ConnectionSlots` first:
  at most ``GATEWAY_S3_POOL_TIMEOUT`` of waiting, fairly shared among callers. UploadPart and
  UploadPartCopy use the *data* slots (``GATEWAY_S3_MAX_POOL_CONNECTIONS``); the control calls
  (create, complete, abort, listings) have *control* slots of their own
  (``GATEWAY_S3_CONTROL_POOL_CONNECTIONS``), so streams, however many and however stalled, cannot
  starve them. aiohttp's pool holds both and some more, so a call holding a slot never waits for
  aiohttp, nor do the calls botocore makes by itself (S3 Express CreateSession).
- **Sending.** Every S3 socket has ``TCP_USER_TIMEOUT`` set to ``GATEWAY_S3_STALL_TIMEOUT``: when
  S3 stops acknowledging (or stops reading: a zero window) for that long, the kernel aborts the
  connection. ``TCP_NOTSENT_LOWAT`` keeps at most :data:`UNSENT_LOW_WATER` bytes unsent in the
  kernel, so aiohttp asks a streamed body for more only as S3 takes it (the body's
  :class:`.timers.SendWatch` sees every wait on S3 as it happens) and the read timeout,
  which starts when the last byte is written, does not count megabytes still queued in socket
  buffers.
- **Answers.** ``GATEWAY_S3_READ_TIMEOUT`` between two bytes of S3's answer (aiohttp's read
  timeout), ``GATEWAY_S3_CONNECT_TIMEOUT`` to connect.

aiohttp re-sends a request, once, when the connection closes before the request's body has begun
(RFC 9112 retries of idempotent methods on a persistent connection; UploadPart is a PUT): no byte
of the caller's stream has been read by then, so the second attempt carries exactly the bytes the
first would have. Once the body has begun, aiohttp never re-sends it.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import AsyncIterator, Callable
from typing import Any, Literal, Protocol
from urllib.parse import urlparse

import grpc
from aiobotocore.config import AioConfig
from aiobotocore.session import AioSession, get_session
from botocore import xform_name

from gateway import __version__, errors
from gateway.buckets import is_directory_bucket
from gateway.config import Settings
from gateway.errors import GatewayError, S3Error
from gateway.server.metrics import Metrics, bucket_type
from gateway.server.pool import ConnectionSlots

DEFAULT_REGION = "us-east-1"
Pool = Literal["data", "control"]
#: The operations that use the data slots; every other one uses the control slots.
DATA_OPERATIONS = frozenset({"UploadPart", "UploadPartCopy", "PutObject"})
#: Bytes of a request the kernel may hold not yet sent (TCP_NOTSENT_LOWAT).
UNSENT_LOW_WATER = 128 * 1024
#: Connections aiohttp's pool may open beyond the slots, for botocore's own calls.
POOL_HEADROOM = 8
#: Linux's socket option numbers, for Pythons that do not name them.
_TCP_USER_TIMEOUT = getattr(socket, "TCP_USER_TIMEOUT", 18)
_TCP_NOTSENT_LOWAT = getattr(socket, "TCP_NOTSENT_LOWAT", 25)


def client_config(settings: Settings, region: str, *, directory: bool = False) -> AioConfig:
    s3_options: dict[str, Any] = {
        "payload_signing_enabled": False,
        "addressing_style": "virtual" if directory else settings.s3_addressing_style,
    }
    if not settings.s3_express_session_auth:
        s3_options["disable_s3_express_session_auth"] = True
    slots = settings.s3_max_pool_connections + settings.s3_control_pool_connections
    return AioConfig(
        region_name=region,
        connect_timeout=settings.s3_connect_timeout,
        read_timeout=settings.s3_read_timeout,
        max_pool_connections=slots + POOL_HEADROOM,
        retries={"total_max_attempts": 1, "mode": "standard"},
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
        s3=s3_options,
        user_agent_extra=f"s3-upload-gateway/{__version__}",
        connector_args={"socket_factory": socket_factory(settings.s3_stall_timeout)},
    )


def socket_factory(stall_timeout: float) -> Callable[[Any], socket.socket]:
    """aiohttp's socket factory for S3 connections: the kernel aborts a connection on which S3
    acknowledged nothing for ``stall_timeout`` seconds, and queues little unsent."""

    def create(addr_info: Any) -> socket.socket:
        family, kind, proto, _, _ = addr_info
        sock = socket.socket(family=family, type=kind, proto=proto)
        if family in (socket.AF_INET, socket.AF_INET6):
            for option, value in (
                (_TCP_USER_TIMEOUT, max(1, int(stall_timeout * 1000))),
                (_TCP_NOTSENT_LOWAT, UNSENT_LOW_WATER),
            ):
                with contextlib.suppress(OSError):  # not every platform has both
                    sock.setsockopt(socket.IPPROTO_TCP, option, value)
        return sock

    return create


class Watch(Protocol):
    """Bounds the waits on S3 of one call from inside, and knows why its body aborted the
    request, if it did (see :class:`.timers.SendWatch`)."""

    failure: GatewayError | None

    def start(self) -> None: ...

    def expired(self) -> GatewayError | None: ...

    def close(self) -> None: ...


def _skip_continue(params: dict[str, Any], **_: Any) -> None:
    """Send a body that asks for it (``skip_continue``: the first attempt of a WriteObject part,
    held in memory) without ``Expect: 100-continue``, which botocore asks for before every
    file-like body. Waiting for S3's invitation costs a round trip per part and spares nothing
    the gateway needs: the bytes stay in memory until S3 has them. What it buys is S3's early
    refusal read as such rather than as a connection S3 closed mid-body, so a part's retries
    ask for it again. A relayed part always does: its bytes are the caller's stream."""
    body = params.get("body")
    if getattr(body, "skip_continue", False):
        params["headers"].pop("Expect", None)


class S3:
    """Async facade over the clients: calls by operation name, routed by bucket type and pool,
    bounded, errors classified."""

    def __init__(
        self,
        general: Any,
        directory: Any,
        slots: dict[Pool, ConnectionSlots],
        region: str,
        metrics: Metrics,
    ) -> None:
        self._general = general
        self._directory = directory
        self._slots = slots
        self.region = region
        self._metrics = metrics
        self.endpoint_url: str = general.meta.endpoint_url
        for client in {id(c): c for c in (general, directory)}.values():
            # After botocore's own handler of the event (it adds the header).
            client.meta.events.register_last("before-call.s3", _skip_continue)

    def client_for(self, bucket: str) -> Any:
        return self._directory if is_directory_bucket(bucket) else self._general

    def register(self, event: str, handler: Callable[..., Any]) -> None:
        """Register a botocore event handler with every client (hooks for tests)."""
        for client in {id(c): c for c in (self._general, self._directory)}.values():
            client.meta.events.register(event, handler)

    def unregister(self, event: str, handler: Callable[..., Any]) -> None:
        for client in {id(c): c for c in (self._general, self._directory)}.values():
            client.meta.events.unregister(event, handler)

    def uses_tls(self, bucket: str) -> bool:
        """Whether requests for ``bucket`` go over https."""
        endpoint_url: str = self.client_for(bucket).meta.endpoint_url
        return urlparse(endpoint_url).scheme == "https"

    async def call(
        self,
        operation: str,
        params: dict[str, Any],
        *,
        caller: str = "",
        watch: Watch | None = None,
    ) -> dict[str, Any]:
        """Call ``operation`` (e.g. ``"ListParts"``) for ``caller`` (an admission key: who waits
        for a connection); any failure becomes a GatewayError.

        S3 answers some requests for an upload that does not exist with a server error instead
        of NoSuchUpload (moto for UploadPart and CompleteMultipartUpload, Ceph RGW for
        CompleteMultipartUpload): a caller trusting the RetryInfo of that UNAVAILABLE would
        retry forever. So when an operation on an upload id fails with a server error, one
        ListParts asks whether the upload exists, and NOT_FOUND / NO_SUCH_UPLOAD is the answer
        when it does not.
        """
        try:
            return await self._call(operation, params, caller, watch)
        except S3Error as error:
            if not _may_mean_gone(error, operation, params):
                raise
            if await self._upload_gone(params, caller):
                raise errors.upload_gone(error) from error
            raise

    async def _call(
        self, operation: str, params: dict[str, Any], caller: str, watch: Watch | None
    ) -> dict[str, Any]:
        bucket = params.get("Bucket", "")
        method = getattr(self.client_for(bucket), xform_name(operation))
        pool: Pool = "data" if operation in DATA_OPERATIONS else "control"
        async with self._slots[pool].slot(caller):
            started = time.perf_counter()
            try:
                response: dict[str, Any] = await _send(method, params, watch)
            except Exception as exc:  # classified, never swallowed
                if watch is not None and watch.failure is not None:
                    # The body aborted the request on purpose (aiobotocore reports a connection
                    # error): its reason is the answer, and S3 did nothing wrong.
                    raise watch.failure from None
                error = errors.from_s3_exception(exc, operation)
                code = error.metadata.get("s3ErrorCode", error.reason)
                self._metrics.s3_failed(operation, code, bucket)
                raise error from exc
            finally:
                elapsed = time.perf_counter() - started
                self._metrics.s3_seconds.labels(operation, bucket_type(bucket)).observe(elapsed)
        return response

    async def _upload_gone(self, params: dict[str, Any], caller: str) -> bool:
        """Whether ListParts says the upload of ``params`` does not exist."""
        probe = {k: params[k] for k in _PROBE_PARAMETERS if k in params}
        try:
            await self._call("ListParts", {**probe, "MaxParts": 1}, caller, None)
        except errors.GatewayError as error:
            return error.code == grpc.StatusCode.NOT_FOUND
        return False


#: The operations on an upload id whose server errors may mean that the upload is gone.
_ON_AN_UPLOAD = frozenset(
    {"UploadPart", "UploadPartCopy", "CompleteMultipartUpload", "AbortMultipartUpload"}
)
#: What a ListParts about the same upload takes from the failed request.
_PROBE_PARAMETERS = (
    "Bucket",
    "Key",
    "UploadId",
    "ExpectedBucketOwner",
    "RequestPayer",
    "SSECustomerAlgorithm",
    "SSECustomerKey",
    "SSECustomerKeyMD5",
)


def _may_mean_gone(error: S3Error, operation: str, params: dict[str, Any]) -> bool:
    status = int(error.metadata.get("httpStatus") or 0)
    return operation in _ON_AN_UPLOAD and "UploadId" in params and status >= 500


async def _send(method: Any, params: dict[str, Any], watch: Watch | None) -> dict[str, Any]:
    if watch is None:
        response: dict[str, Any] = await method(**params)
        return response
    watch.start()
    try:
        response = await method(**params)
        return response
    except asyncio.CancelledError:
        error = watch.expired()
        if error is None:
            raise
        raise error from None
    finally:
        watch.close()


@contextlib.asynccontextmanager
async def open_s3(
    settings: Settings, metrics: Metrics, static_credentials: tuple[str, str] | None = None
) -> AsyncIterator[S3]:
    """Create the clients and close them (and their connection pools) on exit.

    Credentials come from the standard AWS chain unless ``static_credentials`` (access key id,
    secret key) are given, as for the embedded S3.
    """
    session = get_session()
    region = settings.s3_region or session.get_config_variable("region") or DEFAULT_REGION
    async with contextlib.AsyncExitStack() as stack:
        general = await stack.enter_async_context(
            _client(session, settings, region, settings.s3_endpoint_url, static_credentials)
        )
        directory = general
        directory_url = settings.s3_directory_endpoint_url
        if directory_url is not None and directory_url != settings.s3_endpoint_url:
            directory = await stack.enter_async_context(
                _client(session, settings, region, directory_url, static_credentials, True)
            )
        slots: dict[Pool, ConnectionSlots] = {
            "data": ConnectionSlots(
                "data", settings.s3_max_pool_connections, settings.s3_pool_timeout, metrics
            ),
            "control": ConnectionSlots(
                "control", settings.s3_control_pool_connections, settings.s3_pool_timeout, metrics
            ),
        }
        yield S3(general, directory, slots, region, metrics)


def _client(
    session: AioSession,
    settings: Settings,
    region: str,
    endpoint_url: str | None,
    credentials: tuple[str, str] | None,
    directory: bool = False,
) -> Any:
    key_id, secret = credentials or (None, None)
    return session.create_client(
        "s3",
        region_name=region,
        endpoint_url=endpoint_url,
        verify=settings.s3_ca_bundle or settings.s3_verify_tls,
        aws_access_key_id=key_id,
        aws_secret_access_key=secret,
        config=client_config(settings, region, directory=directory),
    )
