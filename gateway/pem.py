"""PEM files for TLS: certificate chains, private keys and CA bundles, read and checked.

grpc takes PEM bytes and reports a bad file only at the first handshake, in words of its own.
:func:`load_pair` and :func:`load_ca` read the files (capped at :data:`MAX_PEM_SIZE`, through
:func:`gateway.watch.read_capped`) and check them with ``cryptography`` first: each file parses, a
key is unencrypted, and it is the key of the chain's first certificate. Anything wrong raises
:class:`TLSConfigError`, whose message names the file and never holds key material.

The server's TLS (:mod:`gateway.security.tls`) and the client's channel (:mod:`gateway.client`)
both read their files here.
"""

from __future__ import annotations

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes, PublicKeyTypes

from gateway.config import ConfigError
from gateway.units import MiB
from gateway.watch import read_capped

#: Largest certificate, key or CA file accepted.
MAX_PEM_SIZE = MiB


class TLSConfigError(ConfigError):
    """A certificate, key or CA file cannot be used. The message never contains key material."""


def _read(path: str, what: str) -> bytes:
    return read_capped(path, MAX_PEM_SIZE, what=what, error=TLSConfigError)[1]


def _certificates(data: bytes, path: str, what: str) -> list[x509.Certificate]:
    try:
        certs = x509.load_pem_x509_certificates(data)
    except ValueError:
        raise TLSConfigError(f"{what} {path!r} holds no valid PEM certificate") from None
    return certs


def _private_key(data: bytes, path: str) -> PrivateKeyTypes:
    # cryptography's messages do not quote the input; they are left out anyway.
    try:
        return serialization.load_pem_private_key(data, password=None)
    except TypeError:
        raise TLSConfigError(f"key file {path!r} is encrypted; grpc needs it unencrypted") from None
    except (ValueError, UnsupportedAlgorithm):
        raise TLSConfigError(f"key file {path!r} holds no valid PEM private key") from None


def _spki(key: PublicKeyTypes) -> bytes:
    return key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def load_pair(cert_file: str, key_file: str) -> tuple[bytes, bytes]:
    """Read a certificate chain and its key; check both parse and that the key is the leaf's.

    Returns ``(cert_chain_pem, key_pem)``. Raises :class:`TLSConfigError`.
    """
    cert_pem = _read(cert_file, "certificate file")
    key_pem = _read(key_file, "key file")
    leaf = _certificates(cert_pem, cert_file, "certificate file")[0]
    key = _private_key(key_pem, key_file)
    if _spki(key.public_key()) != _spki(leaf.public_key()):
        raise TLSConfigError(
            f"key file {key_file!r} does not match the certificate in {cert_file!r}"
        )
    return cert_pem, key_pem


def load_ca(ca_file: str) -> bytes:
    """Read a PEM bundle of CA certificates (at least one). Raises :class:`TLSConfigError`."""
    data = _read(ca_file, "CA file")
    _certificates(data, ca_file, "CA file")
    return data
