"""The gateway's settings: one frozen, validated dataclass read from ``GATEWAY_*`` variables.

AWS credentials are not settings: they come from the standard AWS chain (environment, shared
files, web identity / IRSA, container and instance metadata), resolved by botocore.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

MiB = 1024 * 1024
GiB = 1024 * MiB
#: S3's largest part.
MAX_S3_PART_SIZE = 5 * GiB

AddressingStyle = Literal["auto", "path", "virtual"]
EmbeddedS3 = Literal["auto", "on", "off"]
LogFormat = Literal["json", "text"]
_ADDRESSING_STYLES = ("auto", "path", "virtual")
_LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


class ConfigError(ValueError):
    """A setting has a value the gateway cannot run with."""


@dataclass(frozen=True)
class Setting:
    """Describes one setting: its variable, help text and parser."""

    env: str
    help: str


def _setting(default: Any, env: str, help: str) -> Any:
    return field(default=default, metadata={"setting": Setting(env, help)})


@dataclass(frozen=True)
class Settings:
    """Everything the gateway can be configured with. Build with :meth:`from_env`."""

    listen_address: str = _setting(
        "127.0.0.1:50051", "GATEWAY_LISTEN_ADDRESS", "host:port the gRPC server listens on"
    )
    s3_endpoint_url: str | None = _setting(
        None, "GATEWAY_S3_ENDPOINT_URL", "S3 endpoint URL; AWS's regional endpoint when unset"
    )
    s3_region: str | None = _setting(
        None, "GATEWAY_S3_REGION", "AWS region; from the AWS chain (AWS_REGION), else us-east-1"
    )
    s3_directory_endpoint_url: str | None = _setting(
        None,
        "GATEWAY_S3_DIRECTORY_ENDPOINT_URL",
        "endpoint for directory buckets (*--x-s3), addressed virtual-host style; AWS's zonal "
        "endpoints when unset",
    )
    s3_express_session_auth: bool = _setting(
        True,
        "GATEWAY_S3_EXPRESS_SESSION_AUTH",
        "authenticate directory bucket requests with CreateSession credentials (cached per bucket)",
    )
    s3_addressing_style: AddressingStyle = _setting(
        "auto", "GATEWAY_S3_ADDRESSING_STYLE", "bucket addressing: auto, path or virtual"
    )
    s3_verify_tls: bool = _setting(True, "GATEWAY_S3_VERIFY_TLS", "verify S3's TLS certificate")
    s3_ca_bundle: str | None = _setting(
        None, "GATEWAY_S3_CA_BUNDLE", "PEM file of CAs to trust for S3's certificate"
    )
    s3_max_pool_connections: int = _setting(
        64, "GATEWAY_S3_MAX_POOL_CONNECTIONS", "HTTP connections to S3 kept in the pool"
    )
    s3_trailing_checksums: bool = _setting(
        True,
        "GATEWAY_S3_TRAILING_CHECKSUMS",
        "over https, send S3 checksum values known only at the end as an aws-chunked trailer "
        "(off for stores without trailer support, such as Ceph RGW 16)",
    )
    s3_connect_timeout: float = _setting(
        10.0, "GATEWAY_S3_CONNECT_TIMEOUT", "seconds to connect to S3"
    )
    s3_read_timeout: float = _setting(
        120.0, "GATEWAY_S3_READ_TIMEOUT", "seconds to wait for S3's answer"
    )
    max_part_size: int = _setting(
        MAX_S3_PART_SIZE, "GATEWAY_MAX_PART_SIZE", "largest content_length accepted, bytes"
    )
    unknown_length_limit: int = _setting(
        16 * MiB,
        "GATEWAY_UNKNOWN_LENGTH_LIMIT",
        "largest part accepted without content_length (buffered), bytes",
    )
    max_message_size: int = _setting(
        4 * MiB + 64 * 1024, "GATEWAY_MAX_MESSAGE_SIZE", "largest gRPC message accepted, bytes"
    )
    stream_window: int = _setting(
        1024 * 1024,
        "GATEWAY_STREAM_WINDOW",
        "bytes a caller may send ahead of the relay on each stream (its HTTP/2 flow-control "
        "window): memory per stream is about this plus one message; larger suits callers on "
        "high-latency links",
    )
    verify_checksums: bool = _setting(
        True,
        "GATEWAY_VERIFY_CHECKSUMS",
        "verify declared checksums in the gateway (turn off only to test the store's own checks)",
    )
    metrics_address: str = _setting(
        "127.0.0.1:9464",
        "GATEWAY_METRICS_ADDRESS",
        "host:port of the Prometheus /metrics HTTP server; empty to disable",
    )
    health: bool = _setting(True, "GATEWAY_HEALTH", "serve grpc.health.v1.Health")
    reflection: bool = _setting(True, "GATEWAY_REFLECTION", "serve gRPC server reflection")
    drain_delay: float = _setting(
        5.0,
        "GATEWAY_DRAIN_DELAY",
        "seconds between reporting NOT_SERVING on SIGTERM and refusing new calls",
    )
    embedded_s3: EmbeddedS3 = _setting(
        "auto",
        "GATEWAY_EMBEDDED_S3",
        "on: serve against a local in-memory S3 (moto) on loopback; auto: do so only when no "
        "S3 endpoint and no AWS credentials are configured and the gateway listens on loopback",
    )
    embedded_bucket: str = _setting(
        "gateway-demo", "GATEWAY_EMBEDDED_BUCKET", "bucket created in the embedded S3"
    )
    log_level: str = _setting("INFO", "GATEWAY_LOG_LEVEL", "DEBUG, INFO, WARNING or ERROR")
    log_format: LogFormat = _setting(
        "json", "GATEWAY_LOG_FORMAT", "json (one object per line) or text"
    )
    shutdown_grace: float = _setting(
        30.0, "GATEWAY_SHUTDOWN_GRACE", "seconds in-flight calls get to finish on shutdown"
    )

    def __post_init__(self) -> None:
        _check(":" in self.listen_address, "GATEWAY_LISTEN_ADDRESS must be host:port")
        _check(
            self.s3_addressing_style in _ADDRESSING_STYLES,
            f"GATEWAY_S3_ADDRESSING_STYLE must be one of {', '.join(_ADDRESSING_STYLES)}",
        )
        _check(self.s3_max_pool_connections >= 1, "GATEWAY_S3_MAX_POOL_CONNECTIONS must be >= 1")
        _check(self.s3_connect_timeout > 0, "GATEWAY_S3_CONNECT_TIMEOUT must be > 0")
        _check(self.s3_read_timeout > 0, "GATEWAY_S3_READ_TIMEOUT must be > 0")
        _check(
            0 < self.max_part_size <= MAX_S3_PART_SIZE,
            f"GATEWAY_MAX_PART_SIZE must be 1..{MAX_S3_PART_SIZE}",
        )
        _check(
            0 <= self.unknown_length_limit <= self.max_part_size,
            "GATEWAY_UNKNOWN_LENGTH_LIMIT must be 0..GATEWAY_MAX_PART_SIZE",
        )
        _check(self.max_message_size >= 64 * 1024, "GATEWAY_MAX_MESSAGE_SIZE must be >= 65536")
        _check(
            64 * 1024 <= self.stream_window <= 64 * MiB,
            "GATEWAY_STREAM_WINDOW must be 65536..67108864",
        )
        _check(
            self.embedded_s3 in ("auto", "on", "off"), "GATEWAY_EMBEDDED_S3 must be auto, on or off"
        )
        _check(self.log_level in _LOG_LEVELS, f"GATEWAY_LOG_LEVEL must be one of {_LOG_LEVELS}")
        _check(self.shutdown_grace >= 0, "GATEWAY_SHUTDOWN_GRACE must be >= 0")
        _check(self.drain_delay >= 0, "GATEWAY_DRAIN_DELAY must be >= 0")
        _check(self.log_format in ("json", "text"), "GATEWAY_LOG_FORMAT must be json or text")
        _check(
            self.metrics_address == "" or ":" in self.metrics_address,
            "GATEWAY_METRICS_ADDRESS must be host:port, or empty to disable",
        )
        if self.s3_directory_endpoint_url is not None:
            _check(
                _has_host_name(self.s3_directory_endpoint_url),
                "GATEWAY_S3_DIRECTORY_ENDPOINT_URL must be http(s)://HOSTNAME[:PORT]: directory "
                "buckets are addressed virtual-host style, which an IP address cannot carry",
            )
        if self.s3_ca_bundle is not None:
            _check(os.path.isfile(self.s3_ca_bundle), "GATEWAY_S3_CA_BUNDLE must name a file")

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Read every ``GATEWAY_*`` variable; ``overrides`` (e.g. CLI flags) win over them."""
        env = os.environ if env is None else env
        values: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            setting: Setting = f.metadata["setting"]
            raw = env.get(setting.env)
            if raw == "" and f.type == "str":
                values[f.name] = ""  # an explicit empty string, e.g. "disabled"
            elif raw:
                values[f.name] = _parse(f.type, raw, setting.env)
        values.update({k: v for k, v in overrides.items() if v is not None})
        try:
            return cls(**values)
        except TypeError as exc:
            raise ConfigError(str(exc)) from None

    def replace(self, **changes: Any) -> Settings:
        return dataclasses.replace(self, **changes)


def describe() -> list[tuple[str, str, str]]:
    """(variable, default, help) for every setting, for --help and the README."""
    rows = []
    for f in dataclasses.fields(Settings):
        setting: Setting = f.metadata["setting"]
        rows.append((setting.env, "" if f.default is None else str(f.default), setting.help))
    return rows


def _parse(type_name: Any, raw: str, env: str) -> Any:
    parsers: dict[str, Callable[[str], Any]] = {
        "bool": _parse_bool,
        "EmbeddedS3": _parse_switch,
        "LogFormat": str.lower,
        "int": int,
        "float": float,
    }
    parser = parsers.get(str(type_name), str)
    try:
        return parser(raw.strip())
    except ValueError:
        raise ConfigError(f"{env}={raw!r} is not a valid {type_name}") from None


def _parse_bool(raw: str) -> bool:
    lowered = raw.lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError(raw)


def _parse_switch(raw: str) -> str:
    """auto, or a boolean spelled any way _parse_bool accepts, as on/off."""
    if raw.lower() == "auto":
        return "auto"
    return "on" if _parse_bool(raw) else "off"


def _has_host_name(url: str) -> bool:
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or ""
    if parts.scheme not in ("http", "https") or not host:
        return False
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return True
    return False


def listens_on_loopback(address: str) -> bool:
    host = address.rsplit(":", 1)[0].strip("[]")
    return host == "localhost" or host.startswith("127.") or host == "::1"


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)
