"""TLS for the gateway's port (optionally mutual), reloaded when the files change.

:class:`ServerTLS` reads a certificate chain, its key and optionally a CA bundle for client
certificates, checks them (PEM, key matches the certificate) and builds server credentials with
``grpc.dynamic_ssl_server_credentials``. gRPC calls the fetcher before *every* TLS handshake, from
one of its core threads (never the asyncio loop's thread); the fetcher compares the files' stat
signatures and re-reads them only when one changed. Paths are resolved again at each look, so a
Kubernetes Secret update (the kubelet swaps the ``..data`` symlink) is picked up by the next
connection. Established connections and their streams keep the certificate they were set up with:
a rotation drops nothing. A half-written or mismatched pair is ignored (one warning per bad set of
files) and the old certificate keeps serving until a good pair appears.

The fetcher runs with the GIL held on a core thread; it only stats and reads small files under a
short lock, and never touches the event loop, so it cannot deadlock with it.

grpc Python only knows two client-certificate modes: require-and-verify, or don't ask
(``GRPC_SSL_DONT_REQUEST_CLIENT_CERTIFICATE``; a client CA given in that mode is ignored and no
client certificate ever reaches ``auth_context()``). An *optional* client certificate is not
possible, so :class:`ServerTLS` refuses a client CA with ``require_client_cert=False``.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import grpc

from gateway import watch

# The files are read and checked in gateway.pem, shared with the client; these names stay
# importable from here.
from gateway.pem import TLSConfigError, load_ca, load_pair

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Material:
    """One consistent read of the files."""

    cert_pem: bytes
    key_pem: bytes
    client_ca_pem: bytes | None


class ServerTLS(watch.Watched[_Material]):
    """Server TLS (mTLS when ``client_ca_file`` is set) whose files are reloaded on change
    (:class:`gateway.watch.Watched`, checked before every handshake).

    With ``client_ca_file``, every client must present a certificate issued by one of its CAs
    (``require_client_cert`` must stay True, see the module docstring). Without it, no client
    certificate is requested. The files are read and checked at once: :class:`TLSConfigError`.

    ``reloads`` counts the new certificate sets taken into use after the first.
    """

    def __init__(
        self,
        cert_file: str | os.PathLike[str],
        key_file: str | os.PathLike[str],
        client_ca_file: str | os.PathLike[str] | None = None,
        require_client_cert: bool = True,
    ) -> None:
        if client_ca_file is not None and not require_client_cert:
            raise TLSConfigError(
                "grpc cannot request an optional client certificate: with a client CA file, "
                "client certificates must be required"
            )
        self.cert_file = os.fspath(cert_file)
        self.key_file = os.fspath(key_file)
        self.client_ca_file = None if client_ca_file is None else os.fspath(client_ca_file)
        paths = [self.cert_file, self.key_file]
        if self.client_ca_file is not None:
            paths.append(self.client_ca_file)
        super().__init__(
            paths,
            self._read,
            what="TLS certificate",
            kept="certificate",
            log=log,
            error=TLSConfigError,
            failure_level=logging.WARNING,
        )

    @property
    def mutual(self) -> bool:
        """Whether clients must present a certificate."""
        return self.client_ca_file is not None

    def _read(self) -> _Material:
        cert_pem, key_pem = load_pair(self.cert_file, self.key_file)
        client_ca = None if self.client_ca_file is None else load_ca(self.client_ca_file)
        return _Material(cert_pem, key_pem, client_ca)

    def _configuration(self, material: _Material) -> grpc.ServerCertificateConfiguration:
        return grpc.ssl_server_certificate_configuration(
            [(material.key_pem, material.cert_pem)], material.client_ca_pem
        )

    def refresh(self) -> bool:
        """Re-read the files if their stat signatures changed; True when new ones took effect.
        Thread-safe; called by the credentials' fetcher before each handshake."""
        return self.check()

    def credentials(self) -> grpc.ServerCredentials:
        """Server credentials serving the current files, following later changes."""
        served = self.reloads
        initial = self._configuration(self.value)

        def fetch() -> grpc.ServerCertificateConfiguration | None:
            # Runs on a grpc core thread before each handshake: no event loop here. Each
            # credentials object tracks what it serves, so several ports can share one ServerTLS.
            nonlocal served
            self.refresh()
            if served == self.reloads:
                return None
            served = self.reloads
            return self._configuration(self.value)

        return grpc.dynamic_ssl_server_credentials(
            initial,
            fetch,  # type: ignore[arg-type]  # the stubs omit the documented None (no change)
            require_client_authentication=self.mutual,
        )
