"""gateway.security.tls against a real grpc.aio server: TLS, mTLS, rotation under load."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from cryptography.hazmat.primitives import serialization
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer

from gateway.client import channel_credentials
from gateway.pem import TLSConfigError, load_pair
from gateway.security.tls import ServerTLS
from tests.certs import CA, swap_symlinked

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
UNAVAILABLE = grpc.StatusCode.UNAVAILABLE
#: Every check opens its own connection: no subchannel shared with an earlier channel.
FRESH = [("grpc.use_local_subchannel_pool", 1)]


@dataclass
class Running:
    port: int
    health: HealthServicer

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"


@asynccontextmanager
async def serve(credentials: grpc.ServerCredentials) -> AsyncIterator[Running]:
    server = grpc.aio.server()
    servicer = HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    port = server.add_secure_port("127.0.0.1:0", credentials)
    await server.start()
    try:
        yield Running(port, servicer)
    finally:
        await server.stop(None)


async def check(target: str, credentials: grpc.ChannelCredentials | None) -> grpc.StatusCode:
    """One Check over a new connection; the status code (UNAVAILABLE when TLS fails)."""
    if credentials is None:
        channel = grpc.aio.insecure_channel(target, options=FRESH)
    else:
        channel = grpc.aio.secure_channel(target, credentials, options=FRESH)
    async with channel:
        try:
            await health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=3
            )
        except grpc.aio.AioRpcError as e:
            return e.code()
    return grpc.StatusCode.OK


@pytest.fixture
def ca() -> CA:
    return CA("Server CA")


@pytest.fixture
def ca_file(ca: CA, tmp_path: Path) -> Path:
    return ca.write(tmp_path, "server-ca")


@pytest.fixture
def server_files(ca: CA, tmp_path: Path) -> tuple[Path, Path]:
    return ca.server_leaf().write(tmp_path, "server")


async def test_tls_serves_tls_clients_and_refuses_plaintext(
    server_files: tuple[Path, Path], ca_file: Path
) -> None:
    tls = ServerTLS(*server_files)
    assert not tls.mutual
    async with serve(tls.credentials()) as running:
        assert await check(running.target, channel_credentials(ca_file)) == grpc.StatusCode.OK
        assert await check(running.target, None) == UNAVAILABLE
        # A client trusting another CA refuses the server.
        other = CA("Other").write(server_files[0].parent, "other-ca")
        assert await check(running.target, channel_credentials(other)) == UNAVAILABLE


async def test_mtls_requires_a_client_certificate_from_the_client_ca(
    server_files: tuple[Path, Path], ca_file: Path, tmp_path: Path
) -> None:
    client_ca = CA("Client CA")
    tls = ServerTLS(*server_files, client_ca_file=client_ca.write(tmp_path, "client-ca"))
    assert tls.mutual
    good = client_ca.issue("good").write(tmp_path, "good")
    foreign = CA("Foreign CA").issue("foreign").write(tmp_path, "foreign")
    async with serve(tls.credentials()) as running:
        code = await check(running.target, channel_credentials(ca_file, *good))
        assert code == grpc.StatusCode.OK
        assert await check(running.target, channel_credentials(ca_file)) == UNAVAILABLE
        code = await check(running.target, channel_credentials(ca_file, *foreign))
        assert code == UNAVAILABLE


async def test_rotation_serves_the_new_certificate_without_dropping_streams(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="gateway.security.tls")
    secret = tmp_path / "secret"  # laid out like a mounted Kubernetes Secret
    old_ca, new_ca = CA("Old CA"), CA("New CA")
    old, new = old_ca.server_leaf(), new_ca.server_leaf()
    swap_symlinked(secret, {"tls.crt": old.cert_pem, "tls.key": old.key_pem})
    old_ca_file, new_ca_file = old_ca.write(tmp_path, "old-ca"), new_ca.write(tmp_path, "new-ca")
    tls = ServerTLS(secret / "tls.crt", secret / "tls.key")

    async with serve(tls.credentials()) as running:
        channel = grpc.aio.secure_channel(
            running.target, channel_credentials(old_ca_file), options=FRESH
        )
        async with channel:
            watch = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest())
            first = await asyncio.wait_for(watch.read(), 3)
            assert first.status == SERVING
            assert await check(running.target, channel_credentials(new_ca_file)) == UNAVAILABLE

            swap_symlinked(secret, {"tls.crt": new.cert_pem, "tls.key": new.key_pem})

            code = await check(running.target, channel_credentials(new_ca_file))
            assert code == grpc.StatusCode.OK
            code = await check(running.target, channel_credentials(old_ca_file))
            assert code == UNAVAILABLE
            assert tls.reloads == 1
            assert "TLS certificate reloaded" in caplog.text

            # The stream opened under the old certificate is still alive.
            await running.health.set("", NOT_SERVING)
            update = await asyncio.wait_for(watch.read(), 3)
            assert update.status == NOT_SERVING
            watch.cancel()


async def test_rotation_applies_to_every_port_sharing_the_files(
    tmp_path: Path, ca: CA, ca_file: Path
) -> None:
    secret = tmp_path / "secret"
    first = ca.server_leaf()
    swap_symlinked(secret, {"tls.crt": first.cert_pem, "tls.key": first.key_pem})
    tls = ServerTLS(secret / "tls.crt", secret / "tls.key")
    new_ca = CA("New CA")
    new_ca_file = new_ca.write(tmp_path, "new-ca")
    async with serve(tls.credentials()) as a, serve(tls.credentials()) as b:
        new = new_ca.server_leaf()
        swap_symlinked(secret, {"tls.crt": new.cert_pem, "tls.key": new.key_pem})
        # a's fetcher reads the files; b's must still hand its port the new certificate.
        assert await check(a.target, channel_credentials(new_ca_file)) == grpc.StatusCode.OK
        assert await check(b.target, channel_credentials(new_ca_file)) == grpc.StatusCode.OK
        assert await check(b.target, channel_credentials(ca_file)) == UNAVAILABLE
        assert tls.reloads == 1


@pytest.mark.parametrize("damage", ["mismatched key", "garbage certificate", "missing key"])
async def test_bad_new_files_keep_the_old_certificate(
    damage: str,
    tmp_path: Path,
    ca: CA,
    ca_file: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    secret = tmp_path / "secret"
    good = ca.server_leaf()
    swap_symlinked(secret, {"tls.crt": good.cert_pem, "tls.key": good.key_pem})
    tls = ServerTLS(secret / "tls.crt", secret / "tls.key")
    async with serve(tls.credentials()) as running:
        replacement = ca.server_leaf()
        if damage == "mismatched key":
            files = {"tls.crt": replacement.cert_pem, "tls.key": good.key_pem}
        elif damage == "garbage certificate":
            files = {"tls.crt": b"-----BEGIN CERTIFICATE-----\nnope\n", "tls.key": good.key_pem}
        else:
            files = {"tls.crt": replacement.cert_pem}  # tls.key now dangles
        swap_symlinked(secret, files)
        for _ in range(3):
            assert await check(running.target, channel_credentials(ca_file)) == grpc.StatusCode.OK
        assert tls.reloads == 0
        warnings = [r for r in caplog.records if r.name == "gateway.security.tls"]
        assert len(warnings) == 1, warnings
        assert warnings[0].levelno == logging.WARNING
        assert "previous" in warnings[0].getMessage()
        # Once the pair is whole again it is taken into use.
        swap_symlinked(secret, {"tls.crt": replacement.cert_pem, "tls.key": replacement.key_pem})
        assert await check(running.target, channel_credentials(ca_file)) == grpc.StatusCode.OK
        assert tls.reloads == 1


async def test_handshakes_do_not_need_the_event_loop(
    server_files: tuple[Path, Path], ca_file: Path
) -> None:
    """The fetcher runs on a grpc core thread: a TLS handshake completes while the loop is stuck.

    If it needed the loop, this would deadlock until the wait below gives up.
    """
    tls = ServerTLS(*server_files)
    refreshed_on: list[threading.Thread] = []
    refresh = tls.refresh

    def spy() -> bool:
        refreshed_on.append(threading.current_thread())
        return refresh()

    tls.refresh = spy  # type: ignore[method-assign]
    async with serve(tls.credentials()) as running:
        ready = threading.Event()

        def connect() -> None:
            with grpc.secure_channel(running.target, channel_credentials(ca_file)) as channel:
                grpc.channel_ready_future(channel).result(timeout=3)
                ready.set()

        client = threading.Thread(target=connect)
        client.start()
        handshake_done = ready.wait(3)  # blocks the event loop's thread on purpose
        client.join()
    assert handshake_done
    assert refreshed_on
    assert threading.current_thread() not in refreshed_on


def test_bad_files_are_refused_at_start(tmp_path: Path, ca: CA) -> None:
    leaf = ca.server_leaf()
    cert, key = leaf.write(tmp_path, "server")
    other_cert, other_key = ca.server_leaf().write(tmp_path, "other")
    garbage = tmp_path / "garbage.pem"
    garbage.write_bytes(b"not pem at all")
    key_text = leaf.key_pem.decode()

    with pytest.raises(TLSConfigError, match="cannot read"):
        ServerTLS(tmp_path / "missing.crt", key)
    with pytest.raises(TLSConfigError, match="no valid PEM certificate"):
        ServerTLS(garbage, key)
    with pytest.raises(TLSConfigError, match="no valid PEM private key"):
        ServerTLS(cert, cert)
    with pytest.raises(TLSConfigError, match="does not match") as mismatch:
        ServerTLS(cert, other_key)
    assert key_text not in str(mismatch.value)
    body = "".join(key_text.splitlines()[1:-1])
    assert body[:40] not in str(mismatch.value)
    with pytest.raises(TLSConfigError, match="no valid PEM certificate"):
        ServerTLS(cert, key, client_ca_file=garbage)
    with pytest.raises(TLSConfigError, match="optional client certificate"):
        ServerTLS(cert, key, client_ca_file=ca.write(tmp_path), require_client_cert=False)
    assert ServerTLS(other_cert, other_key, client_ca_file=ca.write(tmp_path)).mutual


def test_encrypted_keys_are_refused(tmp_path: Path, ca: CA) -> None:
    leaf = ca.server_leaf()
    cert, _ = leaf.write(tmp_path, "server")
    key = serialization.load_pem_private_key(leaf.key_pem, password=None)
    encrypted = tmp_path / "encrypted.key"
    encrypted.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"secret"),
        )
    )
    with pytest.raises(TLSConfigError, match="encrypted"):
        ServerTLS(cert, encrypted)


def test_certificate_chains_are_accepted(tmp_path: Path, ca: CA) -> None:
    leaf = ca.server_leaf()
    chain = tmp_path / "chain.crt"
    chain.write_bytes(leaf.cert_pem + ca.cert_pem)
    key = tmp_path / "server.key"
    key.write_bytes(leaf.key_pem)
    assert load_pair(str(chain), str(key)) == (leaf.cert_pem + ca.cert_pem, leaf.key_pem)
    with pytest.raises(TLSConfigError, match="does not match"):  # the key is the leaf's: first
        swapped = tmp_path / "swapped.crt"
        swapped.write_bytes(ca.cert_pem + leaf.cert_pem)
        load_pair(str(swapped), str(key))


def test_channel_credentials_need_cert_and_key_together(tmp_path: Path, ca: CA) -> None:
    cert, key = ca.issue("client").write(tmp_path, "client")
    with pytest.raises(ValueError, match="go together"):
        channel_credentials(client_cert=cert)
    with pytest.raises(ValueError, match="go together"):
        channel_credentials(client_key=key)
    with pytest.raises(TLSConfigError, match="cannot read"):
        channel_credentials(tmp_path / "missing-ca.crt")
    assert isinstance(channel_credentials(), grpc.ChannelCredentials)
