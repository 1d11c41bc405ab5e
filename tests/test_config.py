"""Settings: parsing, validation, and the README's table kept in step with the code."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

from gateway.config import ConfigError, Settings, describe, listens_on_loopback


def test_defaults() -> None:
    settings = Settings.from_env({})
    assert settings.listen_address == "127.0.0.1:50051"
    assert settings.s3_endpoint_url is None
    assert settings.max_part_size == 5 * 1024**3
    assert settings.unknown_length_limit == 16 * 1024**2
    assert settings.verify_checksums is True
    assert settings.embedded_s3 == "auto"


def test_variables_are_parsed_by_type() -> None:
    settings = Settings.from_env(
        {
            "GATEWAY_S3_ENDPOINT_URL": "http://127.0.0.1:9000",
            "GATEWAY_S3_VERIFY_TLS": "no",
            "GATEWAY_S3_MAX_POOL_CONNECTIONS": "8",
            "GATEWAY_S3_READ_TIMEOUT": "2.5",
            "GATEWAY_EMBEDDED_S3": "true",
            "GATEWAY_S3_REGION": "",
        }
    )
    assert settings.s3_endpoint_url == "http://127.0.0.1:9000"
    assert settings.s3_verify_tls is False
    assert settings.s3_max_pool_connections == 8
    assert settings.s3_read_timeout == 2.5
    assert settings.embedded_s3 == "on"
    assert settings.s3_region is None


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"GATEWAY_S3_VERIFY_TLS": "perhaps"}, "not a valid bool"),
        ({"GATEWAY_S3_MAX_POOL_CONNECTIONS": "1"}, "must be >= 2"),
        (
            {"GATEWAY_S3_MAX_POOL_CONNECTIONS": "64", "GATEWAY_MAX_STREAMS_PER_PRINCIPAL": "64"},
            "below GATEWAY_S3_MAX_POOL_CONNECTIONS",
        ),
        ({"GATEWAY_S3_STALL_TIMEOUT": "0"}, "GATEWAY_S3_STALL_TIMEOUT must be > 0"),
        ({"GATEWAY_S3_POOL_TIMEOUT": "-1"}, "GATEWAY_S3_POOL_TIMEOUT must be > 0"),
        ({"GATEWAY_MAX_PART_SIZE": str(5 * 1024**3 + 1)}, "GATEWAY_MAX_PART_SIZE must be"),
        (
            {"GATEWAY_MAX_PART_SIZE": "1000", "GATEWAY_UNKNOWN_LENGTH_LIMIT": "2000"},
            "GATEWAY_UNKNOWN_LENGTH_LIMIT must be",
        ),
        ({"GATEWAY_LISTEN_ADDRESS": "nowhere"}, "host:port"),
        ({"GATEWAY_LOG_LEVEL": "LOUD"}, "GATEWAY_LOG_LEVEL"),
        ({"GATEWAY_S3_CA_BUNDLE": "/no/such/file.pem"}, "must name a file"),
        ({"GATEWAY_MAX_MESSAGE_SIZE": "100"}, "GATEWAY_MAX_MESSAGE_SIZE"),
    ],
)
def test_bad_values_raise_one_clear_error(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        Settings.from_env(env)


@pytest.mark.parametrize(
    ("address", "loopback"),
    [
        ("127.0.0.1:50051", True),
        ("localhost:1", True),
        ("[::1]:50051", True),
        ("0.0.0.0:50051", False),
        ("[::]:50051", False),
        ("10.0.0.5:50051", False),
        ("127.0.0.2:1", True),
        ("[::ffff:127.0.0.1]:1", True),
        ("[::ffff:10.0.0.1]:1", False),
        ("gateway.example:1", False),
    ],
)
def test_loopback_detection(address: str, loopback: bool) -> None:
    assert listens_on_loopback(address) is loopback


def test_one_caller_gets_half_the_s3_pool_unless_told_otherwise() -> None:
    assert Settings().principal_stream_limit == 32
    assert Settings(s3_max_pool_connections=10).principal_stream_limit == 5
    assert Settings(max_streams_per_principal=9).principal_stream_limit == 9


def test_readme_documents_every_setting() -> None:
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    documented = set(re.findall(r"^\| `(GATEWAY_[A-Z0-9_]+)` \|", readme, flags=re.MULTILINE))
    assert documented == {env for env, _, _ in describe()}
    assert len(describe()) == len(dataclasses.fields(Settings))
