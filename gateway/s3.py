"""The process's one aiobotocore S3 client and the calls the gateway makes with it.

The client is configured for relaying: the gateway verifies checksums itself, so botocore computes
none it is not asked for (``when_required``) and sends payloads unsigned; retries are off, because
a streamed part cannot be replayed and a retry would hide S3's real answer — a transient failure
reaches the caller as UNAVAILABLE with RetryInfo instead, and the caller re-sends.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlparse

from aiobotocore.session import get_session
from botocore import xform_name
from botocore.config import Config

from gateway import __version__
from gateway.config import Settings
from gateway.errors import from_s3_exception

DEFAULT_REGION = "us-east-1"


def client_config(settings: Settings, region: str) -> Config:
    return Config(
        region_name=region,
        connect_timeout=settings.s3_connect_timeout,
        read_timeout=settings.s3_read_timeout,
        max_pool_connections=settings.s3_max_pool_connections,
        retries={"total_max_attempts": 1, "mode": "standard"},
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
        s3={"payload_signing_enabled": False, "addressing_style": settings.s3_addressing_style},
        user_agent_extra=f"s3-upload-gateway/{__version__}",
    )


class S3:
    """Thin async facade over the shared client: calls by operation name, errors classified."""

    def __init__(self, client: Any, endpoint_url: str) -> None:
        self._client = client
        self.endpoint_url = endpoint_url

    @property
    def events(self) -> Any:
        """botocore's event system of the client (hooks for metrics and tests)."""
        return self._client.meta.events

    @property
    def uses_tls(self) -> bool:
        return urlparse(self.endpoint_url).scheme == "https"

    async def call(self, operation: str, params: dict[str, Any]) -> dict[str, Any]:
        """Call ``operation`` (e.g. ``"ListParts"``); any failure becomes a GatewayError."""
        method = getattr(self._client, xform_name(operation))
        try:
            response: dict[str, Any] = await method(**params)
        except Exception as exc:  # classified, never swallowed
            raise from_s3_exception(exc, operation) from exc
        return response


@contextlib.asynccontextmanager
async def open_s3(
    settings: Settings, static_credentials: tuple[str, str] | None = None
) -> AsyncIterator[S3]:
    """Create the shared client and close it (and its connection pool) on exit.

    Credentials come from the standard AWS chain unless ``static_credentials`` (access key id,
    secret key) are given, as for the embedded S3.
    """
    session = get_session()
    region = settings.s3_region or session.get_config_variable("region") or DEFAULT_REGION
    verify: bool | str = settings.s3_ca_bundle or settings.s3_verify_tls
    key_id, secret = static_credentials or (None, None)
    async with session.create_client(
        "s3",
        region_name=region,
        endpoint_url=settings.s3_endpoint_url,
        verify=verify,
        aws_access_key_id=key_id,
        aws_secret_access_key=secret,
        config=client_config(settings, region),
    ) as client:
        yield S3(client, client.meta.endpoint_url)
