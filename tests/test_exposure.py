"""Exposure: a gateway beyond loopback needs transport security and an authorization decision
(or says loudly that it has none), and bad security files stop it from starting."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from gateway.config import ConfigError, Settings
from gateway.server.app import plaintext_warning
from tests.certs import CA
from tests.helpers import POLICY


def test_without_a_policy_an_exposed_address_needs_allow_all(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="GATEWAY_POLICY_FILE"):
        Settings(listen_address="0.0.0.0:50051", plaintext=True)
    with pytest.raises(ConfigError, match="GATEWAY_PLAINTEXT"):
        Settings(listen_address="0.0.0.0:50051", allow_all=True)
    policy = tmp_path / "policy.yaml"
    policy.write_text(yaml.safe_dump(POLICY))
    with pytest.raises(ConfigError, match="contradict"):
        Settings(
            listen_address="0.0.0.0:50051", plaintext=True, allow_all=True, policy_file=str(policy)
        )
    Settings(listen_address="0.0.0.0:50051", plaintext=True, allow_all=True)
    Settings(listen_address="0.0.0.0:50051", plaintext=True, policy_file=str(policy))
    Settings(listen_address="127.0.0.1:50051")  # loopback: neither needed


def test_plaintext_beyond_loopback_is_warned_about(tmp_path: Path) -> None:
    exposed = Settings(listen_address="0.0.0.0:50051", plaintext=True, allow_all=True)
    assert "PLAINTEXT" in (plaintext_warning(exposed) or "")
    assert plaintext_warning(Settings(listen_address="127.0.0.1:50051")) is None
    ca = CA()
    cert, key = ca.server_leaf().write(tmp_path, "server")
    tls = exposed.replace(plaintext=False, tls_cert_file=str(cert), tls_key_file=str(key))
    assert plaintext_warning(tls) is None


@pytest.mark.parametrize(
    ("variable", "content", "message"),
    [
        ("GATEWAY_POLICY_FILE", "version: 2\nprincipals: {}\n", "version"),
        ("GATEWAY_AUTH_TOKENS_FILE", "tokens:\n  - principal: a\n    sha256: nothex\n", "sha256"),
        ("GATEWAY_TLS_CERT_FILE", "not a certificate", "certificate"),
    ],
)
def test_bad_security_files_stop_the_start(
    tmp_path: Path, moto_endpoint: str, variable: str, content: str, message: str
) -> None:
    path = tmp_path / "file"
    path.write_text(content)
    environment = {**os.environ, variable: str(path), "GATEWAY_EMBEDDED_S3": "off"}
    if variable == "GATEWAY_TLS_CERT_FILE":
        environment["GATEWAY_TLS_KEY_FILE"] = str(path)
    result = subprocess.run(
        [
            *(sys.executable, "-m", "gateway", "serve", "--listen-address", "127.0.0.1:0"),
            *("--metrics-address=", "--s3-endpoint-url", moto_endpoint),
        ],
        env=environment,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2, result.stderr
    assert "configuration error" in result.stderr and message in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--plaintext"], "GATEWAY_POLICY_FILE"),
        (["--allow-all"], "GATEWAY_PLAINTEXT"),
    ],
)
def test_serve_refuses_an_exposed_address_without_transport_and_authorization(
    flags: list[str], message: str
) -> None:
    """The refusal comes from the settings, before anything is bound."""
    result = subprocess.run(
        [sys.executable, "-m", "gateway", "serve", "--listen-address", "0.0.0.0:0", *flags],
        env={**os.environ, "GATEWAY_EMBEDDED_S3": "off"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2, result.stderr
    assert "is not a loopback address" in result.stderr and message in result.stderr
