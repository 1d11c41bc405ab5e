"""The embedded S3: moto's S3 server on loopback, for a first run without AWS and for demos.

``serve`` uses it when GATEWAY_EMBEDDED_S3 says so (:func:`wanted`); it forgets everything when
the gateway stops. It needs moto, the ``embedded`` extra.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import urllib.request
from collections.abc import Iterator

from aiobotocore.session import get_session

from gateway.config import Settings, listens_on_loopback

log = logging.getLogger(__name__)

#: Credentials the gateway uses against its embedded S3 (moto accepts any).
EMBEDDED_CREDENTIALS = ("embedded", "embedded")


async def wanted(settings: Settings) -> bool:
    """Whether ``settings`` ask for the embedded S3: GATEWAY_EMBEDDED_S3=on, or auto without an
    S3 endpoint, without AWS credentials, on loopback, with moto installed."""
    if settings.embedded_s3 != "auto":
        return settings.embedded_s3 == "on"
    if settings.s3_endpoint_url or not listens_on_loopback(settings.listen_address):
        return False
    if importlib.util.find_spec("moto") is None:
        return False
    if await get_session().get_credentials() is not None:
        return False
    log.warning(
        "no S3 endpoint and no AWS credentials configured: serving against an embedded, "
        "in-memory S3 on loopback (GATEWAY_EMBEDDED_S3=off to refuse)"
    )
    return True


@contextlib.contextmanager
def embedded_s3(bucket: str) -> Iterator[str]:
    """A moto S3 server on a free loopback port, with ``bucket`` created; yields its URL."""
    try:
        from moto.server import ThreadedMotoServer
    except ImportError as exc:  # pragma: no cover - depends on the installation
        raise ImportError(
            "--embedded-s3 needs moto: pip install 's3-upload-gateway[embedded]'"
        ) from exc
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one access line per S3 request
    server.start()
    try:
        host, port = server.get_host_and_port()
        url = f"http://{host}:{port}"
        if bucket:
            _create_bucket(url, bucket)
        log.info("embedded S3 (moto) at %s with bucket %r", url, bucket)
        yield url
    finally:
        server.stop()


def _create_bucket(url: str, bucket: str) -> None:
    request = urllib.request.Request(f"{url}/{bucket}", method="PUT")
    with urllib.request.urlopen(request, timeout=10):
        pass
