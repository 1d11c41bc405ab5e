"""Test PKI: throwaway CAs issuing server and client certificates, made with ``cryptography``.

Keys are P-256 (fast to generate). A server certificate names ``localhost`` and ``127.0.0.1`` so a
client connecting to ``127.0.0.1`` verifies it without a target-name override.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _name(cn: str | None) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)] if cn else [])


@dataclass(frozen=True)
class Leaf:
    """An issued certificate and its key, PEM-encoded."""

    cert_pem: bytes
    key_pem: bytes

    def write(self, directory: Path, stem: str) -> tuple[Path, Path]:
        """Write ``<stem>.crt`` and ``<stem>.key`` into ``directory``; return both paths."""
        cert, key = directory / f"{stem}.crt", directory / f"{stem}.key"
        cert.write_bytes(self.cert_pem)
        key.write_bytes(self.key_pem)
        return cert, key


class CA:
    """A self-signed certificate authority."""

    def __init__(self, name: str = "Test CA") -> None:
        self.key = _key()
        now = dt.datetime.now(dt.UTC)
        self.cert = (
            x509.CertificateBuilder()
            .subject_name(_name(name))
            .issuer_name(_name(name))
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(
                x509.SubjectKeyIdentifier.from_public_key(self.key.public_key()), critical=False
            )
            .sign(self.key, hashes.SHA256())
        )
        self.cert_pem = self.cert.public_bytes(serialization.Encoding.PEM)

    def write(self, directory: Path, stem: str = "ca") -> Path:
        """Write the CA certificate to ``<stem>.crt`` in ``directory``; return its path."""
        path = directory / f"{stem}.crt"
        path.write_bytes(self.cert_pem)
        return path

    def issue(
        self,
        cn: str | None = None,
        *,
        dns: Iterable[str] = (),
        ips: Iterable[str] = (),
        uris: Iterable[str] = (),
        server: bool = False,
    ) -> Leaf:
        """A leaf certificate for ``cn`` and the given SANs (client usage unless ``server``)."""
        key = _key()
        now = dt.datetime.now(dt.UTC)
        sans: list[x509.GeneralName] = [x509.DNSName(d) for d in dns]
        sans += [x509.IPAddress(ipaddress.ip_address(i)) for i in ips]
        sans += [x509.UniformResourceIdentifier(u) for u in uris]
        usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
        builder = (
            x509.CertificateBuilder()
            .subject_name(_name(cn))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()),
                critical=False,
            )
        )
        if sans:
            # An empty subject requires the SANs to be critical (RFC 5280 4.2.1.6).
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=not cn)
        cert = builder.sign(self.key, hashes.SHA256())
        return Leaf(cert.public_bytes(serialization.Encoding.PEM), _key_pem(key))

    def server_leaf(self) -> Leaf:
        """A server certificate for ``localhost`` and ``127.0.0.1``."""
        return self.issue("localhost", dns=["localhost"], ips=["127.0.0.1"], server=True)


def swap_symlinked(directory: Path, files: dict[str, bytes]) -> None:
    """Replace ``files`` in ``directory`` the way the kubelet updates a mounted Secret.

    Each ``directory/<name>`` is a symlink to ``..data/<name>``; ``..data`` is a symlink to a
    timestamped directory holding the files. An update writes a new timestamped directory and
    renames a fresh ``..data`` link over the old one: one atomic step, whatever the file count.
    """
    directory.mkdir(parents=True, exist_ok=True)
    generation = 0
    while (directory / f"..gen{generation}").exists():
        generation += 1
    target = directory / f"..gen{generation}"
    target.mkdir()
    for name, data in files.items():
        (target / name).write_bytes(data)
    tmp_link = directory / "..data_tmp"
    os.symlink(target.name, tmp_link)
    os.replace(tmp_link, directory / "..data")
    for name in files:
        link = directory / name
        if not link.is_symlink():
            os.symlink(f"..data/{name}", link)
