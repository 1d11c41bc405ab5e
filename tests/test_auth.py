"""gateway.security.auth: the token file, bearer metadata, client-certificate identities, rules."""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
from collections.abc import AsyncIterator, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer

from gateway.client import channel_credentials
from gateway.security.auth import (
    ANONYMOUS,
    AuthConfigError,
    Authenticator,
    InvalidAuthorization,
    Principal,
    TokenFile,
    bearer_token,
    generate_token,
    hash_token,
    mtls_identity,
    parse_tokens,
)
from gateway.security.tls import ServerTLS
from tests.certs import CA, Leaf, swap_symlinked

TOKEN = "tok-" + "a" * 40
OTHER = "tok-" + "b" * 40


def token_yaml(*entries: tuple[str, str]) -> str:
    lines = ["tokens:"] + [
        f"  - principal: {principal}\n    sha256: {hash_token(token)}"
        for principal, token in entries
    ]
    return "\n".join(lines) + "\n"


def write(path: Path, text: str | bytes) -> Path:
    """Replace ``path`` atomically (a new inode, as editors and the kubelet do)."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(text.encode() if isinstance(text, str) else text)
    os.replace(tmp, path)
    return path


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


# --- hashing and the token file format ------------------------------------------------------


def test_hash_token_is_hex_sha256() -> None:
    assert hash_token("test") == hashlib.sha256(b"test").hexdigest()
    assert hash_token("test") == "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"


def test_generated_tokens_are_random_and_url_safe() -> None:
    tokens = {generate_token() for _ in range(20)}
    assert len(tokens) == 20
    for token in tokens:
        assert len(token) == 43
        assert bearer_token([("authorization", f"Bearer {token}")]) == token


def test_parse_tokens() -> None:
    text = (
        token_yaml(("batch-job", TOKEN), ("batch-job", OTHER))
        + f"  - principal: ui\n    sha256: '{hash_token('x').upper()}'\n"
    )
    entries = parse_tokens(text)
    assert [name for _, name in entries] == ["batch-job", "batch-job", "ui"]
    assert entries[0][0] == hashlib.sha256(TOKEN.encode()).digest()
    assert entries[2][0] == hashlib.sha256(b"x").digest()  # upper-case hex accepted
    assert parse_tokens("tokens: []\n") == ()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "mapping"),
        ("- a\n", "mapping"),
        ("tokens: [\n", "not valid YAML"),
        ("tokens:\n", "must be a list"),
        ("tokens: []\nextra: 1\n", "unknown key"),
        ("tokens:\n  - principal: a\n", "64 hex"),
        ("tokens:\n  - sha256: " + "a" * 64 + "\n", "principal"),
        ("tokens:\n  - principal: ''\n    sha256: " + "a" * 64 + "\n", "principal"),
        ("tokens:\n  - principal: 7\n    sha256: " + "a" * 64 + "\n", "principal"),
        ('tokens:\n  - principal: "a\\tb"\n    sha256: ' + "a" * 64 + "\n", "control"),
        ("tokens:\n  - principal: a\n    sha256: " + "g" * 64 + "\n", "64 hex"),
        ("tokens:\n  - principal: a\n    sha256: " + "a" * 63 + "\n", "64 hex"),
        ("tokens:\n  - principal: a\n    sha256: " + "1" * 64 + "\n", "quoted"),
        ("tokens:\n  - principal: a\n    sha256: " + "a" * 64 + "\n    role: x\n", "unknown key"),
        ("tokens:\n  - principal: a\n    sha256: " + hash_token("") + "\n", "empty token"),
        ("tokens:\n  - just-a-string\n", "mapping"),
        (
            "tokens:\n  - principal: a\n    sha256: " + "a" * 64 + "\n"
            "  - principal: b\n    sha256: " + "A" * 64 + "\n",
            r"tokens\[1\]: same sha256 as tokens\[0\]",
        ),
        ("tokens: !!python/object:os.system {}\n", "not valid YAML"),
    ],
)
def test_parse_tokens_refuses(text: str, message: str) -> None:
    with pytest.raises(AuthConfigError, match=message):
        parse_tokens(text, "tokens.yaml")


def test_token_file_refuses_missing_oversized_and_invalid_files(tmp_path: Path) -> None:
    with pytest.raises(AuthConfigError, match="cannot read"):
        TokenFile(tmp_path / "missing.yaml")
    big = write(tmp_path / "big.yaml", "tokens: []\n" + "#" * (1024 * 1024))
    with pytest.raises(AuthConfigError, match="larger than"):
        TokenFile(big)
    bad = write(tmp_path / "bad.yaml", "tokens: {}\n")
    with pytest.raises(AuthConfigError, match=r"bad\.yaml"):
        TokenFile(bad)
    assert issubclass(AuthConfigError, ValueError)


def test_principal_for(tmp_path: Path) -> None:
    tokens = TokenFile(write(tmp_path / "t.yaml", token_yaml(("job", TOKEN), ("ui", OTHER))))
    assert tokens.count == 2
    assert tokens.principal_for(TOKEN) == "job"
    assert tokens.principal_for(OTHER) == "ui"
    assert tokens.principal_for(TOKEN + "x") is None
    assert tokens.principal_for(TOKEN[:-1]) is None
    assert tokens.principal_for(hash_token(TOKEN)) is None  # the hash is not the token
    assert tokens.principal_for("") is None


def test_principal_for_compares_every_entry(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No early exit: as many comparisons whether the first, the last or no entry matches."""
    names = [(f"p{i}", f"token-{i}") for i in range(5)]
    tokens = TokenFile(write(tmp_path / "t.yaml", token_yaml(*names)))
    calls = 0
    real = hmac.compare_digest

    def counting(a: bytes, b: bytes) -> bool:
        nonlocal calls
        calls += 1
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", counting)
    for token, expected in [("token-0", "p0"), ("token-4", "p4"), ("nope", None)]:
        calls = 0
        assert tokens.principal_for(token) == expected
        assert calls == 5


def test_token_file_reloads_on_change_at_most_once_per_interval(tmp_path: Path) -> None:
    clock = Clock()
    path = write(tmp_path / "t.yaml", token_yaml(("job", TOKEN)))
    tokens = TokenFile(path, check_interval=10, clock=clock)
    write(path, token_yaml(("ui", OTHER)))
    clock.now += 9.9
    assert tokens.principal_for(TOKEN) == "job"  # not looked at yet
    assert tokens.principal_for(OTHER) is None
    clock.now += 0.1
    assert tokens.principal_for(TOKEN) is None
    assert tokens.principal_for(OTHER) == "ui"
    assert tokens.reloads == 1
    clock.now += 10
    assert tokens.principal_for(OTHER) == "ui"
    assert tokens.reloads == 1  # unchanged file: not re-read


def test_token_file_follows_a_kubernetes_secret_swap(tmp_path: Path) -> None:
    clock = Clock()
    secret = tmp_path / "secret"
    swap_symlinked(secret, {"tokens.yaml": token_yaml(("job", TOKEN)).encode()})
    tokens = TokenFile(secret / "tokens.yaml", check_interval=1, clock=clock)
    swap_symlinked(secret, {"tokens.yaml": token_yaml(("job", OTHER)).encode()})
    clock.now += 1
    assert tokens.principal_for(OTHER) == "job"
    assert tokens.principal_for(TOKEN) is None


@pytest.mark.parametrize("damage", ["invalid", "missing"])
def test_bad_reload_keeps_the_previous_tokens_and_logs_once(
    damage: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    clock = Clock()
    path = write(tmp_path / "t.yaml", token_yaml(("job", TOKEN)))
    tokens = TokenFile(path, check_interval=1, clock=clock)
    if damage == "invalid":
        write(path, "tokens:\n  - principal: job\n    sha256: nope\n")
    else:
        path.unlink()
    for _ in range(3):
        clock.now += 1
        assert tokens.principal_for(TOKEN) == "job"
    errors = [r for r in caplog.records if r.name == "gateway.security.auth"]
    assert [r.levelno for r in errors] == [logging.ERROR]
    assert "previous tokens" in errors[0].getMessage()
    assert tokens.reloads == 0
    write(path, token_yaml(("ui", OTHER)))
    clock.now += 1
    assert tokens.principal_for(OTHER) == "ui"
    assert tokens.principal_for(TOKEN) is None
    assert tokens.reloads == 1


def test_token_file_changed_in_place(tmp_path: Path) -> None:
    path = write(tmp_path / "t.yaml", token_yaml(("job", TOKEN)))
    tokens = TokenFile(path)
    path.write_text(token_yaml(("job", TOKEN), ("ui", OTHER)))  # same inode
    assert tokens.check()
    assert tokens.principal_for(OTHER) == "ui"
    assert not tokens.check()


# --- bearer metadata ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("metadata", "token"),
    [
        (None, None),
        ([], None),
        ([("x-other", "Bearer abc")], None),
        ([("authorization", "Bearer abc")], "abc"),
        ([("authorization", "bearer abc")], "abc"),
        ([("authorization", "BEARER abc")], "abc"),
        ([("authorization", "Bearer   abc")], "abc"),  # RFC 6750: 1*SP
        ([("authorization", b"Bearer abc")], "abc"),
        ([("Authorization", "Bearer abc")], "abc"),
        ([("authorization", "Bearer a-b_c.d~e+f/g==")], "a-b_c.d~e+f/g=="),
        ([("x-request-id", "1"), ("authorization", "Bearer abc")], "abc"),
    ],
)
def test_bearer_token(metadata: list[tuple[str, str | bytes]] | None, token: str | None) -> None:
    assert bearer_token(metadata) == token


@pytest.mark.parametrize(
    "metadata",
    [
        [("authorization", "Bearer abc"), ("authorization", "Bearer abc")],
        [("authorization", "Bearer abc"), ("Authorization", "Bearer def")],
        [("authorization", "Basic dXNlcjpwYXNz")],
        [("authorization", "Token abc")],
        [("authorization", "Bearer")],
        [("authorization", "Bearer ")],
        [("authorization", "")],
        [("authorization", "abc")],
        [("authorization", " Bearer abc")],
        [("authorization", "Bearer abc ")],
        [("authorization", "Bearer\tabc")],
        [("authorization", "Bearer abc def")],
        [("authorization", "Bearer a=b")],
        [("authorization", "Bearerabc")],
        [("authorization", "Bearer " + "a" * 4097)],
        [("authorization", "Bearer ab\u00e7")],
        [("authorization", b"Bearer ab\xe7")],
    ],
)
def test_malformed_authorization_is_invalid_not_absent(
    metadata: list[tuple[str, str | bytes]],
) -> None:
    with pytest.raises(InvalidAuthorization):
        bearer_token(metadata)


# --- client certificates over real connections ----------------------------------------------


@dataclass
class Seen:
    """What the servicer saw of each call."""

    auth_contexts: list[Mapping[str, Iterable[bytes]]] = field(default_factory=list)
    metadata: list[list[tuple[str, str | bytes]]] = field(default_factory=list)


class Recorder(HealthServicer):  # type: ignore[misc]  # grpc_health ships no types
    def __init__(self, seen: Seen) -> None:
        super().__init__()
        self.seen = seen

    async def Check(self, request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        self.seen.auth_contexts.append(context.auth_context())
        self.seen.metadata.append(list(context.invocation_metadata() or ()))
        return await super().Check(request, context)


@dataclass
class PKI:
    dir: Path
    server_ca: Path
    client_ca: CA
    server_cert: Path
    server_key: Path

    def client(self, leaf: Leaf, stem: str) -> grpc.ChannelCredentials:
        return channel_credentials(self.server_ca, *leaf.write(self.dir, stem))


@pytest.fixture
def pki(tmp_path: Path) -> PKI:
    server_ca = CA("Server CA")
    cert, key = server_ca.server_leaf().write(tmp_path, "server")
    return PKI(tmp_path, server_ca.write(tmp_path, "server-ca"), CA("Client CA"), cert, key)


@dataclass
class Ports:
    mtls: str
    tls: str
    plain: str
    seen: Seen


@pytest.fixture
async def ports(pki: PKI) -> AsyncIterator[Ports]:
    """One server with an mTLS, a TLS-only and a plaintext port, recording every Check."""
    seen = Seen()
    server = grpc.aio.server()
    health_pb2_grpc.add_HealthServicer_to_server(Recorder(seen), server)
    client_ca = pki.client_ca.write(pki.dir, "client-ca")
    mtls = ServerTLS(pki.server_cert, pki.server_key, client_ca_file=client_ca)
    mtls_port = server.add_secure_port("127.0.0.1:0", mtls.credentials())
    tls_port = server.add_secure_port(
        "127.0.0.1:0", ServerTLS(pki.server_cert, pki.server_key).credentials()
    )
    plain_port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield Ports(
            f"127.0.0.1:{mtls_port}", f"127.0.0.1:{tls_port}", f"127.0.0.1:{plain_port}", seen
        )
    finally:
        await server.stop(None)


async def call(
    target: str,
    credentials: grpc.ChannelCredentials | None,
    seen: Seen,
    metadata: tuple[tuple[str, str], ...] = (),
) -> tuple[Mapping[str, Iterable[bytes]], list[tuple[str, str | bytes]]]:
    """Make one Check; the auth context and metadata the server saw."""
    channel = (
        grpc.aio.insecure_channel(target)
        if credentials is None
        else grpc.aio.secure_channel(target, credentials)
    )
    async with channel:
        await health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(), metadata=metadata, timeout=3
        )
    return seen.auth_contexts[-1], seen.metadata[-1]


async def test_mtls_identity_prefers_the_uri_san(pki: PKI, ports: Ports) -> None:
    leaf = pki.client_ca.issue(
        "cn-name",
        dns=["dns.example"],
        uris=["spiffe://example.org/ns/jobs/sa/batch"],
        ips=["10.0.0.1"],
    )
    context, _ = await call(ports.mtls, pki.client(leaf, "uri"), ports.seen)
    assert mtls_identity(context) == "spiffe://example.org/ns/jobs/sa/batch"
    # The evidence the function is written from.
    assert list(context["transport_security_type"]) == [b"ssl"]
    assert list(context["peer_uri"]) == [b"spiffe://example.org/ns/jobs/sa/batch"]
    assert list(context["peer_spiffe_id"]) == [b"spiffe://example.org/ns/jobs/sa/batch"]
    assert list(context["peer_dns"]) == [b"dns.example"]
    assert list(context["peer_ip"]) == [b"10.0.0.1"]
    assert set(context["x509_subject_alternative_name"]) == {
        b"dns.example",
        b"spiffe://example.org/ns/jobs/sa/batch",
        b"10.0.0.1",
    }
    assert list(context["x509_common_name"]) == [b"cn-name"]
    assert list(context["x509_pem_cert"]) == [leaf.cert_pem]


async def test_mtls_identity_takes_the_first_of_several_uri_sans(pki: PKI, ports: Ports) -> None:
    leaf = pki.client_ca.issue(
        "cn-name", uris=["https://id.example/a", "spiffe://example.org/b"], dns=["dns.example"]
    )
    context, _ = await call(ports.mtls, pki.client(leaf, "uris"), ports.seen)
    assert "peer_spiffe_id" not in context  # grpc sets it only for a lone spiffe:// URI SAN
    assert list(context["peer_uri"]) == [b"https://id.example/a", b"spiffe://example.org/b"]
    assert mtls_identity(context) == "https://id.example/a"


async def test_mtls_identity_falls_back_to_the_first_dns_san(pki: PKI, ports: Ports) -> None:
    leaf = pki.client_ca.issue(None, dns=["first.example", "second.example"])
    context, _ = await call(ports.mtls, pki.client(leaf, "dns"), ports.seen)
    assert "peer_uri" not in context
    assert list(context["x509_common_name"]) == [b""]  # empty subject: present but empty
    assert mtls_identity(context) == "first.example"


async def test_mtls_identity_falls_back_to_the_common_name(pki: PKI, ports: Ports) -> None:
    leaf = pki.client_ca.issue("batch-job")
    context, _ = await call(ports.mtls, pki.client(leaf, "cn"), ports.seen)
    assert "peer_dns" not in context
    assert "x509_subject_alternative_name" not in context
    assert mtls_identity(context) == "batch-job"


async def test_no_identity_without_a_client_certificate(pki: PKI, ports: Ports) -> None:
    context, _ = await call(ports.tls, channel_credentials(pki.server_ca), ports.seen)
    assert list(context["transport_security_type"]) == [b"ssl"]
    assert "x509_pem_cert" not in context
    assert mtls_identity(context) is None
    context, _ = await call(ports.plain, None, ports.seen)
    assert list(context["transport_security_type"]) == [b"insecure"]
    assert mtls_identity(context) is None


def test_mtls_identity_needs_tls_and_a_certificate() -> None:
    forged: dict[str, list[bytes]] = {
        "transport_security_type": [b"insecure"],
        "x509_pem_cert": [b"-----BEGIN CERTIFICATE-----"],
        "x509_common_name": [b"admin"],
    }
    assert mtls_identity(forged) is None
    forged["transport_security_type"] = [b"ssl"]
    assert mtls_identity(forged) == "admin"
    del forged["x509_pem_cert"]
    assert mtls_identity(forged) is None
    assert mtls_identity({}) is None
    assert mtls_identity({"transport_security_type": [b"ssl"], "x509_pem_cert": [b"x"]}) is None


# --- the rules --------------------------------------------------------------------------------


@pytest.fixture
def token_file(tmp_path: Path) -> TokenFile:
    return TokenFile(write(tmp_path / "tokens.yaml", token_yaml(("batch-job", TOKEN))))


async def test_authenticator_rules_over_real_connections(
    pki: PKI, ports: Ports, token_file: TokenFile
) -> None:
    good_cert = pki.client(pki.client_ca.issue("cert-user"), "user")
    bearer = (("authorization", f"Bearer {TOKEN}"),)
    unknown = (("authorization", f"Bearer {OTHER}"),)
    malformed = (("authorization", f"Basic {TOKEN}"),)
    both = Authenticator(token_file, mtls=True)
    tokens_only = Authenticator(token_file, mtls=False)
    mtls_only = Authenticator(None, mtls=True)

    def judge(auth: Authenticator, seen: tuple[Any, Any]) -> Principal | None:
        context, metadata = seen
        return auth.authenticate(metadata, context)

    cert_and_token = await call(ports.mtls, good_cert, ports.seen, bearer)
    assert judge(both, cert_and_token) == Principal("batch-job", "token")
    assert judge(tokens_only, cert_and_token) == Principal("batch-job", "token")
    assert judge(mtls_only, cert_and_token) is None  # no token file: every token is unknown

    cert_only = await call(ports.mtls, good_cert, ports.seen)
    assert judge(both, cert_only) == Principal("cert-user", "mtls")
    assert judge(mtls_only, cert_only) == Principal("cert-user", "mtls")
    assert judge(tokens_only, cert_only) is None

    # A bad token is never rescued by a good certificate.
    assert judge(both, await call(ports.mtls, good_cert, ports.seen, unknown)) is None
    assert judge(both, await call(ports.mtls, good_cert, ports.seen, malformed)) is None

    tls_token = await call(ports.tls, channel_credentials(pki.server_ca), ports.seen, bearer)
    assert judge(both, tls_token) == Principal("batch-job", "token")
    assert judge(mtls_only, tls_token) is None
    anonymous = await call(ports.plain, None, ports.seen)
    assert judge(both, anonymous) is None


def test_authenticator_off_and_on(token_file: TokenFile) -> None:
    off = Authenticator(None, mtls=False)
    assert not off.enabled
    assert off.authenticate(None, {}) == ANONYMOUS == Principal("anonymous", "anonymous")
    assert off.authenticate([("authorization", "garbage")], {}) == ANONYMOUS
    assert Authenticator(token_file, mtls=False).enabled
    assert Authenticator(None, mtls=True).enabled
    on = Authenticator(token_file, mtls=True)
    assert on.authenticate(None, {}) is None
    two = [("authorization", f"Bearer {TOKEN}"), ("authorization", f"Bearer {TOKEN}")]
    assert on.authenticate(two, {}) is None
