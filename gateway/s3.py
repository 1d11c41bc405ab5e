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
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlparse

from aiobotocore.session import AioSession, get_session
from botocore import xform_name
from botocore.config import Config

from gateway import __version__
from gateway.config import Settings
from gateway.errors import from_s3_exception
from gateway.metrics import Metrics, bucket_type
from gateway.validate import is_directory_bucket

DEFAULT_REGION = "us-east-1"


def client_config(settings: Settings, region: str, *, directory: bool = False) -> Config:
    s3_options: dict[str, Any] = {
        "payload_signing_enabled": False,
        "addressing_style": "virtual" if directory else settings.s3_addressing_style,
    }
    if not settings.s3_express_session_auth:
        s3_options["disable_s3_express_session_auth"] = True
    return Config(
        region_name=region,
        connect_timeout=settings.s3_connect_timeout,
        read_timeout=settings.s3_read_timeout,
        max_pool_connections=settings.s3_max_pool_connections,
        retries={"total_max_attempts": 1, "mode": "standard"},
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
        s3=s3_options,
        user_agent_extra=f"s3-upload-gateway/{__version__}",
    )


class S3:
    """Async facade over the clients: calls by operation name, routed by bucket type, errors
    classified."""

    def __init__(self, general: Any, directory: Any, region: str, metrics: Metrics) -> None:
        self._general = general
        self._directory = directory
        self.region = region
        self._metrics = metrics
        self.endpoint_url: str = general.meta.endpoint_url

    def client_for(self, bucket: str) -> Any:
        return self._directory if is_directory_bucket(bucket) else self._general

    @property
    def events(self) -> Any:
        """botocore's event system of the general purpose client (hooks for metrics, tests)."""
        return self._general.meta.events

    @property
    def directory_events(self) -> Any:
        """The event system of the client serving directory buckets."""
        return self._directory.meta.events

    def uses_tls(self, bucket: str) -> bool:
        """Whether requests for ``bucket`` go over https."""
        endpoint_url: str = self.client_for(bucket).meta.endpoint_url
        return urlparse(endpoint_url).scheme == "https"

    async def call(self, operation: str, params: dict[str, Any]) -> dict[str, Any]:
        """Call ``operation`` (e.g. ``"ListParts"``); any failure becomes a GatewayError."""
        bucket = params.get("Bucket", "")
        method = getattr(self.client_for(bucket), xform_name(operation))
        started = time.perf_counter()
        try:
            response: dict[str, Any] = await method(**params)
        except Exception as exc:  # classified, never swallowed
            aborted = getattr(params.get("Body"), "failure", None)
            if aborted is not None:
                # The body aborted the request on purpose (aiobotocore reports a connection
                # error): its reason is the answer, and S3 did nothing wrong.
                raise aborted from None
            error = from_s3_exception(exc, operation)
            code = error.metadata.get("s3ErrorCode", error.reason)
            self._metrics.s3_failed(operation, code, bucket)
            raise error from exc
        finally:
            elapsed = time.perf_counter() - started
            self._metrics.s3_seconds.labels(operation, bucket_type(bucket)).observe(elapsed)
        return response


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
        yield S3(general, directory, region, metrics)


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
