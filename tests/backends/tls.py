"""Throw-away TLS material for test servers: a CA and a server certificate it signs."""

from __future__ import annotations

import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

_OPENSSL_CONFIG = """\
[req]
distinguished_name = dn
prompt = no
[dn]
[ca]
basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
[server]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = serverAuth
subjectAltName = {names}
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
"""


@dataclass(frozen=True)
class Tls:
    ca: Path
    certificate: Path
    key: Path


def make_tls(directory: Path, names: Sequence[str] = ("IP:127.0.0.1", "DNS:localhost")) -> Tls:
    """A CA and a server certificate it signs for ``names`` (subjectAltName entries)."""
    directory.mkdir(parents=True, exist_ok=True)
    config = directory / "openssl.cnf"
    config.write_text(_OPENSSL_CONFIG.format(names=", ".join(names)))
    tls = Tls(directory / "ca.pem", directory / "server.pem", directory / "server.key")
    ca_key, request = directory / "ca.key", directory / "server.csr"
    req = ["openssl", "req", "-config", str(config), "-noenc"]
    new_key = [*req, "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"]
    _openssl([*new_key, "-x509", "-extensions", "ca", "-days", "7", "-subj", "/CN=test-ca",
              "-keyout", ca_key, "-out", tls.ca])  # fmt: skip
    _openssl([*new_key, "-new", "-subj", "/CN=test-server", "-keyout", tls.key, "-out", request])
    _openssl(["openssl", "x509", "-req", "-in", request, "-CA", tls.ca, "-CAkey", ca_key,
              "-set_serial", "2", "-days", "7", "-extfile", config, "-extensions", "server",
              "-out", tls.certificate])  # fmt: skip
    return tls


def _openssl(args: Sequence[str | Path]) -> None:
    result = subprocess.run([str(a) for a in args], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"openssl failed: {' '.join(map(str, args))}\n{result.stderr}")
