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

from gateway.units import GiB, MiB

#: S3's largest part.
MAX_S3_PART_SIZE = 5 * GiB

AddressingStyle = Literal["auto", "path", "virtual"]
EmbeddedS3 = Literal["auto", "on", "off"]
EventLoop = Literal["auto", "asyncio", "uvloop"]
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
        64,
        "GATEWAY_S3_MAX_POOL_CONNECTIONS",
        "HTTP connections to S3 for the calls that carry data (UploadPart, UploadPartCopy, "
        "WriteObject's parts); a stream takes one when its first bytes arrive",
    )
    s3_control_pool_connections: int = _setting(
        16,
        "GATEWAY_S3_CONTROL_POOL_CONNECTIONS",
        "HTTP connections to S3 of their own for CreateMultipartUpload, "
        "CompleteMultipartUpload, AbortMultipartUpload and the listings, so that streams "
        "cannot starve them",
    )
    s3_pool_timeout: float = _setting(
        10.0,
        "GATEWAY_S3_POOL_TIMEOUT",
        "seconds a call may wait for a free S3 connection before it is refused "
        "(RESOURCE_EXHAUSTED with RetryInfo); a freed connection goes to the waiting caller "
        "holding the fewest",
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
        120.0,
        "GATEWAY_S3_READ_TIMEOUT",
        "seconds to wait for S3's answer once the request is sent (between two bytes of it)",
    )
    s3_stall_timeout: float = _setting(
        30.0,
        "GATEWAY_S3_STALL_TIMEOUT",
        "seconds S3 may go without accepting a byte of a request body, or without answering "
        "'100 Continue' to an UploadPart, before the request is aborted (UNAVAILABLE with "
        "RetryInfo; nothing is committed)",
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
        MiB,
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
    event_loop: EventLoop = _setting(
        "auto",
        "GATEWAY_EVENT_LOOP",
        "asyncio, uvloop (installed except on Windows), or auto: uvloop when installed",
    )
    workers: int = _setting(
        1,
        "GATEWAY_WORKERS",
        "gateway processes sharing the gRPC port (SO_REUSEPORT; Linux); one per core to use "
        "them all. With more than one, GATEWAY_EMBEDDED_S3=auto means off and on is refused "
        "(each worker would get its own in-memory S3); /metrics merges the workers' metrics, "
        "with a worker label",
    )
    tls_cert_file: str | None = _setting(
        None,
        "GATEWAY_TLS_CERT_FILE",
        "PEM certificate (chain) of the gRPC port; with GATEWAY_TLS_KEY_FILE it turns TLS on. "
        "Both are re-read when they change on disk, without dropping streams",
    )
    tls_key_file: str | None = _setting(
        None, "GATEWAY_TLS_KEY_FILE", "PEM private key of GATEWAY_TLS_CERT_FILE (unencrypted)"
    )
    tls_client_ca_file: str | None = _setting(
        None,
        "GATEWAY_TLS_CLIENT_CA_FILE",
        "PEM CAs that issue client certificates: mutual TLS, every connection must present one; "
        "its URI SAN, else DNS SAN, else CN is the caller's principal",
    )
    health_address: str = _setting(
        "",
        "GATEWAY_HEALTH_ADDRESS",
        "host:port of an extra plaintext port for health probes (Kubernetes gRPC probes cannot "
        "use TLS); with TLS on, UploadService calls arriving there are refused; empty for none",
    )
    plaintext: bool = _setting(
        False,
        "GATEWAY_PLAINTEXT",
        "serve without TLS on a non-loopback address (behind a TLS-terminating mesh or proxy); "
        "without TLS files the gateway refuses to start there otherwise",
    )
    auth_tokens_file: str | None = _setting(
        None,
        "GATEWAY_AUTH_TOKENS_FILE",
        "YAML file of principals and SHA-256 hashes of their bearer tokens "
        "(s3-upload-gateway hash-token); callers send 'authorization: Bearer TOKEN'",
    )
    policy_file: str | None = _setting(
        None,
        "GATEWAY_POLICY_FILE",
        "YAML authorization policy: per principal, operations, buckets, key prefixes, part "
        "sizes; anything it does not allow is denied. Re-read when it changes",
    )
    allow_all: bool = _setting(
        False,
        "GATEWAY_ALLOW_ALL",
        "without a policy, let every authenticated caller do everything; a non-loopback "
        "address needs a policy or this",
    )
    max_streams: int = _setting(
        256, "GATEWAY_MAX_STREAMS", "UploadPart streams in flight at once, over all callers"
    )
    max_streams_per_principal: int = _setting(
        0,
        "GATEWAY_MAX_STREAMS_PER_PRINCIPAL",
        "UploadPart streams in flight at once per caller (per connection for unauthenticated "
        "callers); below GATEWAY_S3_MAX_POOL_CONNECTIONS, so one caller never holds every S3 "
        "connection; 0: half of GATEWAY_S3_MAX_POOL_CONNECTIONS",
    )
    max_buffer_bytes: int = _setting(
        GiB,
        "GATEWAY_MAX_BUFFER_BYTES",
        "bytes the gateway may hold for streams: each reserves GATEWAY_STREAM_WINDOW + "
        "GATEWAY_MAX_MESSAGE_SIZE, a part without content_length also what it buffers, a "
        "WriteObject two parts and one more per part in flight beyond the first",
    )
    write_part_size: int = _setting(
        8 * MiB,
        "GATEWAY_WRITE_PART_SIZE",
        "WriteObject's part size, bytes (5 MiB to 5 GiB); larger for an object whose announced "
        "size 10,000 of them cannot hold",
    )
    write_parts_in_flight: int = _setting(
        4,
        "GATEWAY_WRITE_PARTS_IN_FLIGHT",
        "parts of one WriteObject stream uploaded at once, each on an S3 connection of its own "
        "(1 to 64); a stream holds up to this many parts plus one",
    )
    write_token_keys_file: str | None = _setting(
        None,
        "GATEWAY_WRITE_TOKEN_KEYS_FILE",
        "YAML file of the keys that sign resumable write tokens ('signing: ID' and 'keys: "
        "{ID: base64}'), the same on every replica; without it resumable writes are off "
        "(with the embedded S3: a key of the process's own)",
    )
    write_token_ttl: float = _setting(
        7 * 24 * 3600.0,
        "GATEWAY_WRITE_TOKEN_TTL",
        "seconds a resumable write may last from its start; then its token is refused, and "
        "reap-uploads --write-token-keys-file aborts what is left",
    )
    idle_timeout: float = _setting(
        60.0,
        "GATEWAY_IDLE_TIMEOUT",
        "seconds an UploadPart or WriteObject stream may go without a message before it is ended "
        "and its S3 request aborted; 0 disables",
    )

    def __post_init__(self) -> None:
        _check(":" in self.listen_address, "GATEWAY_LISTEN_ADDRESS must be host:port")
        _check(
            self.s3_addressing_style in _ADDRESSING_STYLES,
            f"GATEWAY_S3_ADDRESSING_STYLE must be one of {', '.join(_ADDRESSING_STYLES)}",
        )
        _check(self.s3_max_pool_connections >= 2, "GATEWAY_S3_MAX_POOL_CONNECTIONS must be >= 2")
        _check(
            self.s3_control_pool_connections >= 1,
            "GATEWAY_S3_CONTROL_POOL_CONNECTIONS must be >= 1",
        )
        _check(self.s3_pool_timeout > 0, "GATEWAY_S3_POOL_TIMEOUT must be > 0")
        _check(self.s3_connect_timeout > 0, "GATEWAY_S3_CONNECT_TIMEOUT must be > 0")
        _check(self.s3_read_timeout > 0, "GATEWAY_S3_READ_TIMEOUT must be > 0")
        _check(self.s3_stall_timeout > 0, "GATEWAY_S3_STALL_TIMEOUT must be > 0")
        _check(
            0 <= self.max_streams_per_principal < self.s3_max_pool_connections,
            f"GATEWAY_MAX_STREAMS_PER_PRINCIPAL ({self.max_streams_per_principal}) must be 0.."
            f"{self.s3_max_pool_connections - 1}: below GATEWAY_S3_MAX_POOL_CONNECTIONS "
            f"({self.s3_max_pool_connections}), so one caller can never hold every S3 connection",
        )
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
            self.event_loop in ("auto", "asyncio", "uvloop"),
            "GATEWAY_EVENT_LOOP must be auto, asyncio or uvloop",
        )
        _check(1 <= self.workers <= 256, "GATEWAY_WORKERS must be 1..256")
        _check(
            self.workers == 1 or self.embedded_s3 != "on",
            "GATEWAY_EMBEDDED_S3=on needs GATEWAY_WORKERS=1: each worker would get its own "
            "in-memory S3",
        )
        self._check_security()
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

    def _check_security(self) -> None:
        _check(
            (self.tls_cert_file is None) == (self.tls_key_file is None),
            "GATEWAY_TLS_CERT_FILE and GATEWAY_TLS_KEY_FILE go together",
        )
        _check(
            self.tls_client_ca_file is None or self.tls_cert_file is not None,
            "GATEWAY_TLS_CLIENT_CA_FILE needs GATEWAY_TLS_CERT_FILE and GATEWAY_TLS_KEY_FILE",
        )
        files = (
            "tls_cert_file",
            "tls_key_file",
            "tls_client_ca_file",
            "auth_tokens_file",
            "write_token_keys_file",
        )
        for name in (*files, "policy_file"):
            path = getattr(self, name)
            _check(path is None or os.path.isfile(path), f"GATEWAY_{name.upper()} must name a file")
        _check(
            not (self.allow_all and self.policy_file),
            "GATEWAY_ALLOW_ALL and GATEWAY_POLICY_FILE contradict each other: choose one",
        )
        _check(
            self.health_address == "" or ":" in self.health_address,
            "GATEWAY_HEALTH_ADDRESS must be host:port, or empty for none",
        )
        exposed = not listens_on_loopback(self.listen_address)
        _check(
            not exposed or self.tls_cert_file is not None or self.plaintext,
            f"{self.listen_address} is not a loopback address: configure TLS "
            "(GATEWAY_TLS_CERT_FILE, GATEWAY_TLS_KEY_FILE) or set GATEWAY_PLAINTEXT=true",
        )
        _check(
            not exposed or self.policy_file is not None or self.allow_all,
            f"{self.listen_address} is not a loopback address: configure an authorization "
            "policy (GATEWAY_POLICY_FILE) or set GATEWAY_ALLOW_ALL=true",
        )
        _check(self.max_streams >= 1, "GATEWAY_MAX_STREAMS must be >= 1")
        _check(
            self.max_buffer_bytes >= self.stream_window + self.max_message_size,
            "GATEWAY_MAX_BUFFER_BYTES must hold at least one stream: "
            "GATEWAY_STREAM_WINDOW + GATEWAY_MAX_MESSAGE_SIZE",
        )
        _check(self.idle_timeout >= 0, "GATEWAY_IDLE_TIMEOUT must be >= 0")
        _check(
            5 * MiB <= self.write_part_size <= MAX_S3_PART_SIZE,
            f"GATEWAY_WRITE_PART_SIZE must be {5 * MiB}..{MAX_S3_PART_SIZE}",
        )
        _check(1 <= self.write_parts_in_flight <= 64, "GATEWAY_WRITE_PARTS_IN_FLIGHT must be 1..64")
        _check(self.write_token_ttl >= 60, "GATEWAY_WRITE_TOKEN_TTL must be >= 60 seconds")

    @property
    def principal_stream_limit(self) -> int:
        """UploadPart streams one caller may have in flight (GATEWAY_MAX_STREAMS_PER_PRINCIPAL,
        or half the S3 pool)."""
        return self.max_streams_per_principal or self.s3_max_pool_connections // 2

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
        "EventLoop": str.lower,
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
    if host == "localhost":
        return True
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return False
    mapped = getattr(ip, "ipv4_mapped", None)
    return ip.is_loopback or (mapped is not None and mapped.is_loopback)


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)
