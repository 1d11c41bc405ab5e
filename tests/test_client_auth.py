"""The clients against an authenticating gateway: bearer tokens and client certificates with
GatewayClient, the s3api twins, ``upload`` and ``reap-uploads``; ``hash-token``."""

from __future__ import annotations

import io
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml

from gateway import cli
from gateway.client import (
    GatewayCallError,
    GatewayClient,
    TLSConfigError,
    UploadOptions,
    error_info,
    open_channel,
    status_details,
)
from gateway.config import Settings
from gateway.security.auth import bearer_token, hash_token, parse_tokens
from gateway.v1 import upload_service_pb2 as pb
from gateway.v1 import upload_service_pb2_grpc as pb_grpc
from tests.certs import CA
from tests.cli_helpers import Certificate, gateway_cli
from tests.helpers import GatewayThread, MiB

TOKEN = "tok-" + "A1b2" * 10
WRONG = "tok-" + "Z9y8" * 10
CREDENTIALS = ("testing", "testing")


def _settings(moto_endpoint: str, **changes: object) -> Settings:
    return Settings(
        listen_address="127.0.0.1:0",
        metrics_address="",
        drain_delay=0,
        s3_endpoint_url=moto_endpoint,
    ).replace(**changes)


@pytest.fixture(scope="module")
def token_gateway(
    moto_endpoint: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GatewayThread]:
    """A plaintext gateway that knows TOKEN (principal "ci")."""
    tokens = tmp_path_factory.mktemp("tokens") / "tokens.yaml"
    tokens.write_text(f"tokens:\n  - principal: ci\n    sha256: {hash_token(TOKEN)}\n")
    settings = _settings(moto_endpoint, auth_tokens_file=str(tokens))
    with GatewayThread(settings, CREDENTIALS) as running:
        yield running


@dataclass(frozen=True)
class MtlsFiles:
    ca: Path
    client_cert: Path
    client_key: Path


@pytest.fixture(scope="module")
def mtls(
    moto_endpoint: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[GatewayThread, MtlsFiles]]:
    """A gateway with mutual TLS (server certificate for 127.0.0.1), and a client's files."""
    directory = tmp_path_factory.mktemp("pki")
    server_ca, client_ca = CA("Server CA"), CA("Client CA")
    cert, key = server_ca.server_leaf().write(directory, "server")
    client_cert, client_key = client_ca.issue("uploader").write(directory, "client")
    settings = _settings(
        moto_endpoint,
        tls_cert_file=str(cert),
        tls_key_file=str(key),
        tls_client_ca_file=str(client_ca.write(directory, "client-ca")),
    )
    files = MtlsFiles(server_ca.write(directory, "server-ca"), client_cert, client_key)
    with GatewayThread(settings, CREDENTIALS) as running:
        yield running, files


def _file(tmp_path: Path, size: int = 6 * MiB) -> Path:
    path = tmp_path / "data.bin"
    path.write_bytes(os.urandom(size))
    return path


def _run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """``s3-upload-gateway ARGV`` in this process: (exit code, stdout, stderr)."""
    try:
        code = cli.main(list(argv))
    except SystemExit as exit_:  # argparse's usage errors
        code = int(exit_.code or 0)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


# --- GatewayClient ---------------------------------------------------------------------------


async def test_client_with_the_token_can_make_every_call(
    token_gateway: GatewayThread, moto_bucket: str, tmp_path: Path
) -> None:
    path = _file(tmp_path)
    async with GatewayClient.connect(token_gateway.address, token=TOKEN) as client:
        assert TOKEN not in repr(client) and TOKEN not in str(client)
        result = await client.upload_file(path, moto_bucket, "whole.bin")  # WriteObject
        assert result.size == path.stat().st_size and result.parts == 0  # one PutObject
        options = UploadOptions(client_parts=True)
        result = await client.upload_file(path, moto_bucket, "split.bin", options)
        assert result.size == path.stat().st_size and result.parts == 1

        created = await client.create_multipart_upload(
            pb.CreateMultipartUploadRequest(bucket=moto_bucket, key="parts.bin")
        )
        ids: dict[str, Any] = {"bucket": moto_bucket, "key": "parts.bin"}
        ids["upload_id"] = created.upload_id
        first = await client.upload_part(
            pb.UploadPartHeader(**ids, part_number=1, content_length=5 * MiB), b"x" * 5 * MiB
        )
        copied = await client.upload_part_copy(
            pb.UploadPartCopyRequest(**ids, part_number=2, copy_source=f"{moto_bucket}/whole.bin")
        )
        parts = await client.list_parts(pb.ListPartsRequest(**ids))
        assert [p.part_number for p in parts.parts] == [1, 2]
        listed = await client.list_multipart_uploads(
            pb.ListMultipartUploadsRequest(bucket=moto_bucket)
        )
        assert created.upload_id in [u.upload_id for u in listed.uploads]
        done = await client.complete_multipart_upload(
            pb.CompleteMultipartUploadRequest(
                **ids,
                parts=[
                    pb.CompletedPart(part_number=1, etag=first.etag),
                    pb.CompletedPart(part_number=2, etag=copied.copy_part_result.etag),
                ],
            )
        )
        assert done.etag.endswith('-2"')
        other = await client.create_multipart_upload(
            pb.CreateMultipartUploadRequest(bucket=moto_bucket, key="aborted.bin")
        )
        await client.abort_multipart_upload(
            pb.AbortMultipartUploadRequest(
                bucket=moto_bucket, key="aborted.bin", upload_id=other.upload_id
            )
        )


async def test_the_plain_constructor_takes_a_token(
    token_gateway: GatewayThread, moto_bucket: str
) -> None:
    channel = grpc.aio.insecure_channel(token_gateway.address)
    async with GatewayClient(channel, token=TOKEN) as client:
        await client.list_multipart_uploads(pb.ListMultipartUploadsRequest(bucket=moto_bucket))


@pytest.mark.parametrize("token", [None, WRONG], ids=["no-token", "wrong-token"])
async def test_client_without_the_right_token_is_unauthenticated(
    token_gateway: GatewayThread, moto_bucket: str, tmp_path: Path, token: str | None
) -> None:
    path = _file(tmp_path, 1024)
    async with GatewayClient.connect(token_gateway.address, token=token) as client:
        with pytest.raises(GatewayCallError) as caught:
            await client.upload_file(path, moto_bucket, "refused.bin")
        assert caught.value.code == grpc.StatusCode.UNAUTHENTICATED
        # The gateway refuses the stream as it starts, while the client sends 5 MiB: the client
        # sees grpc/grpc#36066's INTERNAL more often than not, and must find out the real status.
        header = pb.UploadPartHeader(
            bucket=moto_bucket, key="k", upload_id="u", part_number=1, content_length=5 * MiB
        )
        for _ in range(3):
            with pytest.raises(GatewayCallError) as part:
                await client.upload_part(header, b"x" * 5 * MiB)
            assert part.value.code == grpc.StatusCode.UNAUTHENTICATED
    for error in (caught.value, part.value):
        assert WRONG not in str(error) and WRONG not in repr(error)


def test_connect_refuses_bad_combinations_without_quoting_the_token(tmp_path: Path) -> None:
    cert, key = CA().issue("c").write(tmp_path, "client")
    with pytest.raises(ValueError, match="go together"):
        GatewayClient.connect("127.0.0.1:1", tls=True, client_cert=str(cert))
    with pytest.raises(ValueError, match="go together"):
        GatewayClient.connect("127.0.0.1:1", tls=True, client_key=str(key))
    with pytest.raises(ValueError, match="tls=True"):
        GatewayClient.connect("127.0.0.1:1", client_cert=str(cert), client_key=str(key))
    for bad in ("has space-secret", "line\nbreak-secret", ""):
        with pytest.raises(ValueError) as caught:
            GatewayClient.connect("127.0.0.1:1", token=bad)
        assert "secret" not in str(caught.value)


async def test_client_over_mutual_tls(
    mtls: tuple[GatewayThread, MtlsFiles], moto_bucket: str, tmp_path: Path
) -> None:
    gateway, files = mtls
    path = _file(tmp_path)
    async with GatewayClient.connect(
        gateway.address,
        tls=True,
        ca_bundle=str(files.ca),
        client_cert=str(files.client_cert),
        client_key=str(files.client_key),
    ) as client:
        result = await client.upload_file(path, moto_bucket, "mtls.bin")
    assert result.size == path.stat().st_size
    async with GatewayClient.connect(gateway.address, tls=True, ca_bundle=str(files.ca)) as bare:
        with pytest.raises(GatewayCallError) as caught:
            await bare.list_multipart_uploads(pb.ListMultipartUploadsRequest(bucket=moto_bucket))
    assert caught.value.code == grpc.StatusCode.UNAVAILABLE


# --- open_channel ------------------------------------------------------------------------------


def test_a_sync_channel_sends_the_token_with_every_call(
    token_gateway: GatewayThread, moto_bucket: str
) -> None:
    request = pb.ListMultipartUploadsRequest(bucket=moto_bucket)
    with open_channel(token_gateway.address, token=TOKEN, aio=False) as channel:
        assert TOKEN not in repr(channel)
        stub = pb_grpc.UploadServiceStub(channel)
        stub.ListMultipartUploads(request, timeout=10)
        _, call = stub.ListMultipartUploads.with_call(request, timeout=10, metadata=[("x-a", "b")])
        assert call.code() == grpc.StatusCode.OK
        assert stub.ListMultipartUploads.future(request, timeout=10).result() is not None
    with (
        open_channel(token_gateway.address, aio=False) as channel,
        pytest.raises(grpc.RpcError) as caught,
    ):
        pb_grpc.UploadServiceStub(channel).ListMultipartUploads(request, timeout=10)
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
    status = status_details(caught.value)
    assert status is not None and status.code == grpc.StatusCode.UNAUTHENTICATED.value[0]
    info = error_info(caught.value)
    assert info is not None and info.reason == "UNAUTHENTICATED"


async def test_an_aio_channel_sends_the_token_with_every_call(
    token_gateway: GatewayThread, moto_bucket: str, tmp_path: Path
) -> None:
    path = _file(tmp_path, 1024)
    async with GatewayClient(open_channel(token_gateway.address, token=TOKEN)) as client:
        result = await client.upload_file(path, moto_bucket, "aio-channel.bin")
    assert result.size == 1024


def test_a_sync_channel_over_mutual_tls_with_a_server_name(
    mtls: tuple[GatewayThread, MtlsFiles], moto_bucket: str
) -> None:
    gateway, files = mtls
    request = pb.ListMultipartUploadsRequest(bucket=moto_bucket)
    pair = {"client_cert": files.client_cert, "client_key": files.client_key}
    with open_channel(
        gateway.address,
        tls=True,
        root_certificates=files.ca.read_bytes(),
        server_name="localhost",
        aio=False,
        **pair,
    ) as channel:
        pb_grpc.UploadServiceStub(channel).ListMultipartUploads(request, timeout=10)
    with (
        open_channel(
            gateway.address,
            tls=True,
            ca_bundle=files.ca,
            server_name="x.example",
            aio=False,
            **pair,
        ) as channel,
        pytest.raises(grpc.RpcError) as caught,
    ):
        pb_grpc.UploadServiceStub(channel).ListMultipartUploads(request, timeout=10)
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    assert status_details(caught.value) is None  # the handshake failed: no gateway status


def test_open_channel_refuses_before_opening_anything(tmp_path: Path) -> None:
    ca = CA()
    ca_file = ca.write(tmp_path)
    with pytest.raises(ValueError, match="exclude each other"):
        open_channel("127.0.0.1:1", tls=True, ca_bundle=ca_file, root_certificates=ca.cert_pem)
    with pytest.raises(ValueError, match="go together"):
        open_channel("127.0.0.1:1", tls=True, client_key=ca_file, aio=False)
    with pytest.raises(TLSConfigError, match="no valid PEM"):
        open_channel("127.0.0.1:1", tls=True, client_cert=ca_file, client_key=ca_file)
    with pytest.raises(ValueError) as caught:
        open_channel("127.0.0.1:1", token="a secret")
    assert "secret" not in str(caught.value)


# --- the CLI ---------------------------------------------------------------------------------


def _endpoint(gateway: GatewayThread) -> list[str]:
    return ["--endpoint-url", f"http://{gateway.address}"]


@pytest.fixture
def token_file(tmp_path: Path) -> Path:
    path = tmp_path / "token"
    path.write_text(f"\n  {TOKEN}  \n")  # surrounding whitespace is not part of the token
    return path


@pytest.mark.parametrize("source", ["env", "file"])
def test_s3api_commands_send_the_token(
    token_gateway: GatewayThread,
    moto_bucket: str,
    token_file: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    source: str,
) -> None:
    auth = ["--token-file", str(token_file)] if source == "file" else []
    if source == "env":
        monkeypatch.setenv("GATEWAY_TOKEN", TOKEN)
    where = ["--bucket", moto_bucket, *_endpoint(token_gateway), *auth]
    code, out, err = _run_cli(capsys, "create-multipart-upload", *where, "--key", "k", "--debug")
    assert code == 0, err
    upload_id = json.loads(out)["UploadId"]
    assert TOKEN not in err  # --debug logs the calls, never the token
    code, out, err = _run_cli(capsys, "list-multipart-uploads", *where)
    assert code == 0, err
    assert upload_id in [u["UploadId"] for u in json.loads(out)["Uploads"]]
    code, out, err = _run_cli(
        capsys, "reap-uploads", *where, "--older-than", "0s", "--prefix", "k", "--dry-run"
    )
    assert code == 0, err
    assert f"would abort\tk\t{upload_id}" in out


def test_upload_sends_the_token_from_a_file(
    token_gateway: GatewayThread,
    moto_bucket: str,
    token_file: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    path = _file(tmp_path)
    destination = f"s3://{moto_bucket}/up.bin"
    code, out, err = _run_cli(
        capsys, "upload", str(path), destination, *_endpoint(token_gateway), "--token-file",
        str(token_file),
    )  # fmt: skip
    assert code == 0, err
    assert json.loads(out)["Size"] == path.stat().st_size


def test_upload_sends_the_token_from_the_environment(
    token_gateway: GatewayThread, moto_bucket: str, tmp_path: Path
) -> None:
    """As a real process, with GATEWAY_TOKEN in its environment."""
    path = _file(tmp_path)
    result = gateway_cli(
        "upload",
        str(path),
        f"s3://{moto_bucket}/env.bin",
        endpoint=f"http://{token_gateway.address}",
        env={"GATEWAY_TOKEN": TOKEN},
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["Size"] == path.stat().st_size


@pytest.mark.parametrize("token", [None, WRONG], ids=["no-token", "wrong-token"])
def test_cli_without_the_right_token_fails_as_a_service_error(
    token_gateway: GatewayThread,
    moto_bucket: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    token: str | None,
) -> None:
    if token is not None:
        monkeypatch.setenv("GATEWAY_TOKEN", token)
    where = ["--bucket", moto_bucket, *_endpoint(token_gateway)]
    path = _file(tmp_path, 1024)
    runs = {
        "create-multipart-upload": ["create-multipart-upload", *where, "--key", "k", "--debug"],
        "list-multipart-uploads": ["list-multipart-uploads", *where],
        "upload": ["upload", str(path), f"s3://{moto_bucket}/k", *_endpoint(token_gateway)],
        "reap-uploads": ["reap-uploads", *where, "--older-than", "1d"],
    }
    for name, argv in runs.items():
        code, out, err = _run_cli(capsys, *argv)
        assert code == 254, (name, err)
        assert "UNAUTHENTICATED" in err, name
        assert WRONG not in out + err, name


def test_a_wrong_token_never_shows_even_in_a_real_process(
    token_gateway: GatewayThread, moto_bucket: str, tmp_path: Path
) -> None:
    token_path = tmp_path / "token"
    token_path.write_text(WRONG)
    results = [
        gateway_cli(
            "create-multipart-upload",
            "--bucket",
            moto_bucket,
            "--key",
            "k",
            "--debug",
            endpoint=f"http://{token_gateway.address}",
            env={"GATEWAY_TOKEN": WRONG, "GRPC_VERBOSITY": "debug"},
        ),
        gateway_cli(
            "upload",
            str(_file(tmp_path, 10)),
            f"s3://{moto_bucket}/k",
            "--token-file",
            str(token_path),
            endpoint=f"http://{token_gateway.address}",
        ),
    ]
    for result in results:
        assert result.returncode == 254, result.stderr
        assert "UNAUTHENTICATED" in result.stderr
        assert WRONG not in result.stdout + result.stderr


def test_cli_over_mutual_tls(
    mtls: tuple[GatewayThread, MtlsFiles],
    moto_bucket: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    gateway, files = mtls
    https = ["--endpoint-url", f"https://{gateway.address}"]
    trust = ["--ca-bundle", str(files.ca)]
    identity = ["--client-cert", str(files.client_cert), "--client-key", str(files.client_key)]
    where = ["--bucket", moto_bucket, *https]
    code, out, err = _run_cli(capsys, "create-multipart-upload", *where, "--key", "k", *trust,
                              *identity)  # fmt: skip
    assert code == 0, err
    upload_id = json.loads(out)["UploadId"]
    code, out, err = _run_cli(capsys, "list-multipart-uploads", *where, *trust, *identity)
    assert code == 0, err
    assert upload_id in [u["UploadId"] for u in json.loads(out)["Uploads"]]
    path = _file(tmp_path)
    code, out, err = _run_cli(capsys, "upload", str(path), f"s3://{moto_bucket}/m", *https, *trust,
                              *identity)  # fmt: skip
    assert code == 0, err
    assert json.loads(out)["Size"] == path.stat().st_size
    code, out, err = _run_cli(capsys, "reap-uploads", *where, *trust, *identity,
                              "--older-than", "0s", "--dry-run")  # fmt: skip
    assert code == 0, err
    assert upload_id in out
    # Without a client certificate the handshake fails: the gateway cannot be reached.
    code, out, err = _run_cli(capsys, "list-multipart-uploads", *where, *trust)
    assert code == 255, err
    code, out, err = _run_cli(capsys, "upload", str(path), f"s3://{moto_bucket}/m", *https, *trust)
    assert code == 255, err


def test_no_verify_ssl_presents_the_client_certificate(
    moto_endpoint: str, moto_bucket: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--no-verify-ssl fetches the server's certificate in handshakes of its own; against a
    mutual-TLS gateway they present the client certificate too."""
    server = Certificate.self_signed("gateway.internal")  # not even the right name
    cert, key = tmp_path / "server.crt", tmp_path / "server.key"
    cert.write_bytes(server.cert_pem)
    key.write_bytes(server.key_pem)
    client_ca = CA("Client CA")
    client_cert, client_key = client_ca.issue("uploader").write(tmp_path, "client")
    settings = _settings(
        moto_endpoint,
        tls_cert_file=str(cert),
        tls_key_file=str(key),
        tls_client_ca_file=str(client_ca.write(tmp_path, "client-ca")),
    )
    with GatewayThread(settings, CREDENTIALS) as gateway:
        argv = ["list-multipart-uploads", "--bucket", moto_bucket, "--no-verify-ssl"]
        argv += ["--endpoint-url", f"https://{gateway.address}"]
        code, out, err = _run_cli(
            capsys, *argv, "--client-cert", str(client_cert), "--client-key", str(client_key)
        )
        assert code == 0, err
        assert isinstance(json.loads(out), dict)
        code, _, err = _run_cli(capsys, *argv)
        assert code == 255, err


CERT = ["--client-cert", "c", "--client-key", "k"]


@pytest.mark.parametrize(
    ("endpoint", "options", "message", "code"),
    [
        (
            "http://127.0.0.1:1",
            ["--client-cert", "c", "--client-key", "k"],
            "need an https://",
            252,
        ),
        ("127.0.0.1:1", ["--client-cert", "c", "--client-key", "k"], "need an https://", 252),
        ("https://127.0.0.1:1", ["--client-cert", "c"], "go together", 252),
        ("https://127.0.0.1:1", ["--client-key", "k"], "go together", 252),
        # Files the options name that cannot be used: the configuration, not the command line.
        ("https://127.0.0.1:1", CERT, "--client-cert", 253),
        ("http://127.0.0.1:1", ["--token-file", "/nonexistent/token"], "--token-file", 253),
        ("http://127.0.0.1:1", ["--token", TOKEN], "no --token option", 252),
        ("http://127.0.0.1:1", [f"--token={TOKEN}"], "no --token option", 252),
    ],
)
def test_cli_usage_errors(
    capsys: pytest.CaptureFixture[str], endpoint: str, options: list[str], message: str, code: int
) -> None:
    runs = [
        ["create-multipart-upload", "--bucket", "b", "--key", "k"],
        ["upload", os.devnull, "s3://b/k"],
        ["reap-uploads", "--bucket", "b", "--older-than", "1d"],
    ]
    for argv in runs:
        exit_code, out, err = _run_cli(capsys, *argv, "--endpoint-url", endpoint, *options)
        assert exit_code == code, (argv, err)
        assert message in err, argv
        assert TOKEN not in out + err


def test_a_bad_token_is_a_configuration_error(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    empty = tmp_path / "empty"
    empty.write_text("\n")
    code, _, err = _run_cli(capsys, "list-multipart-uploads", "--bucket", "b", "--token-file",
                            str(empty), "--endpoint-url", "127.0.0.1:1")  # fmt: skip
    assert code == 253 and "is empty" in err
    monkeypatch.setenv("GATEWAY_TOKEN", "two words-secret")
    code, out, err = _run_cli(capsys, "upload", os.devnull, "s3://b/k", "--endpoint-url",
                              "127.0.0.1:1")  # fmt: skip
    assert code == 253 and "$GATEWAY_TOKEN" in err
    assert "secret" not in out + err


@pytest.mark.parametrize("command", ["create-multipart-upload", "upload", "reap-uploads"])
def test_help_documents_the_credentials(capsys: pytest.CaptureFixture[str], command: str) -> None:
    code, out, _ = _run_cli(capsys, command, "--help")
    assert code == 0
    text = " ".join(out.split())
    for option in ("--client-cert", "--client-key", "--token-file", "$GATEWAY_TOKEN", "mutual"):
        assert option in text, option
    assert "--token " not in text  # no option takes the token itself


# --- hash-token ------------------------------------------------------------------------------


def _as_token_file(entry: str) -> tuple[tuple[bytes, str], ...]:
    """The entry pasted into a token file, as the gateway reads it."""
    indented = "".join(f"  {line}\n" for line in entry.splitlines())
    return parse_tokens("tokens:\n" + indented)


def test_hash_token_reads_stdin(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO(f"  {TOKEN}  \nignored\n"))
    code, out, err = _run_cli(capsys, "hash-token", "--principal", "batch-job")
    assert code == 0, err
    assert yaml.safe_load(out) == [{"principal": "batch-job", "sha256": hash_token(TOKEN)}]
    assert out.startswith("- principal: batch-job\n  sha256: ")
    assert _as_token_file(out) == ((bytes.fromhex(hash_token(TOKEN)), "batch-job"),)
    assert TOKEN not in out + err


@pytest.mark.parametrize("stdin", ["", "\n", "   \nsecond line\n"])
def test_hash_token_refuses_an_empty_token(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, stdin: str
) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO(stdin))
    code, out, err = _run_cli(capsys, "hash-token", "--principal", "p")
    assert (code, out) == (2, "")
    assert "no token" in err


def test_hash_token_needs_a_principal(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO(TOKEN))
    code, out, _ = _run_cli(capsys, "hash-token")
    assert code == 2 and out == ""


def test_hash_token_generates_a_token(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = _run_cli(capsys, "hash-token", "--generate", "--principal", "spiffe://x/y")
    assert code == 0, err
    token, entry = out.split("\n", 1)
    assert bearer_token([("authorization", f"Bearer {token}")]) == token
    assert yaml.safe_load(entry) == [{"principal": "spiffe://x/y", "sha256": hash_token(token)}]
    assert _as_token_file(entry) == ((bytes.fromhex(hash_token(token)), "spiffe://x/y"),)
    assert "store it safely" in err
    code, again, _ = _run_cli(capsys, "hash-token", "--generate", "--principal", "spiffe://x/y")
    assert again.split("\n", 1)[0] != token


def test_a_token_sent_in_plaintext_beyond_loopback_is_warned_about(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GATEWAY_TOKEN", TOKEN)
    far = ["--endpoint-url", "http://gateway.invalid:50051", "--cli-connect-timeout", "1"]
    code, _, err = _run_cli(capsys, "list-multipart-uploads", "--bucket", "b", *far)
    assert code == 255  # nothing answers there
    assert "warning: sending a bearer token in plaintext to gateway.invalid:50051" in err
    assert TOKEN not in err
    near = ["--endpoint-url", "http://127.0.0.1:9", "--cli-connect-timeout", "1"]
    code, _, err = _run_cli(capsys, "list-multipart-uploads", "--bucket", "b", *near)
    assert "warning" not in err
