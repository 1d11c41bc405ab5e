"""Logging: JSON lines (or text) on stderr, one line per RPC, and the library logs the gateway
never lets through.

botocore's and aiohttp's DEBUG logs print whole requests: headers with the SSE-C key, the
Authorization signature, session tokens. The gateway holds those on its callers' behalf, so those
loggers are capped at INFO whatever level the gateway runs at. The gateway's own lines carry only
named fields (method, code, duration, bytes, bucket, part number), never request payloads.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import sys
from typing import Any

#: Loggers whose DEBUG output carries request headers.
_HEADER_LOGGERS = ("botocore", "aiobotocore", "aiohttp", "urllib3", "s3transfer")
#: The logger of the one-line-per-RPC records.
ACCESS_LOGGER = "gateway.access"
#: Attribute of a LogRecord holding structured fields (``extra={"fields": {...}}``).
FIELDS = "fields"


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, and the record's fields."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(
                timespec="milliseconds"
            ),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        line.update(getattr(record, FIELDS, None) or {})
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str)


class TextFormatter(logging.Formatter):
    """Classic text lines, with the record's fields appended as key=value."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        fields = getattr(record, FIELDS, None)
        if fields:
            text += " " + " ".join(f"{k}={v}" for k, v in fields.items())
        return text


def configure(level: str, fmt: str = "json") -> None:
    """Log to stderr at ``level`` in ``fmt`` (the ``serve`` command's set-up)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    cap_header_loggers()


def cap_header_loggers() -> None:
    """Never emit the DEBUG lines of libraries that log request headers."""
    for name in _HEADER_LOGGERS:
        logger = logging.getLogger(name)
        if logger.getEffectiveLevel() < logging.INFO or logger.level == logging.NOTSET:
            logger.setLevel(logging.INFO)
