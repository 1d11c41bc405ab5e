"""Logging: the gateway's own lines, and the library logs it never lets through.

botocore's and aiohttp's DEBUG logs print whole requests: headers with the SSE-C key, the
Authorization signature, session tokens. The gateway holds those on its callers' behalf, so those
loggers are capped at INFO whatever level the gateway runs at.
"""

from __future__ import annotations

import logging
import sys

#: Loggers whose DEBUG output carries request headers.
_HEADER_LOGGERS = ("botocore", "aiobotocore", "aiohttp", "urllib3", "s3transfer")


def configure(level: str) -> None:
    """Log to stderr at ``level`` (the ``serve`` command's set-up)."""
    logging.basicConfig(
        level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )
    cap_header_loggers()


def cap_header_loggers() -> None:
    """Never emit the DEBUG lines of libraries that log request headers."""
    for name in _HEADER_LOGGERS:
        logger = logging.getLogger(name)
        if logger.getEffectiveLevel() < logging.INFO or logger.level == logging.NOTSET:
            logger.setLevel(logging.INFO)
