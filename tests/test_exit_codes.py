"""Every command, driven into every class of failure it can meet, exits with the status
:mod:`gateway.exits` documents for that class.

The commands that call a gateway run in process (``gateway.cli.main``, as the console script
calls it); ``serve`` runs as a process of its own, as it configures logging and signals.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.cli import main
from gateway.exits import ExitCode

MISSING_BUCKET = "no-such-bucket-for-exit-codes"

#: The commands that call a gateway, each with a command line that is right but for the bucket.
CALLERS: dict[str, list[str]] = {
    "upload": ["upload", "{file}", "s3://{bucket}/k"],
    "reap-uploads": ["reap-uploads", "--bucket", "{bucket}", "--older-than", "1d"],
    "create-multipart-upload": ["create-multipart-upload", "--bucket", "{bucket}", "--key", "k"],
    "upload-part": [
        *("upload-part", "--bucket", "{bucket}", "--key", "k", "--upload-id", "u"),
        *("--part-number", "1", "--body", "{file}"),
    ],
    "upload-part-copy": [
        *("upload-part-copy", "--bucket", "{bucket}", "--key", "k", "--upload-id", "u"),
        *("--part-number", "1", "--copy-source", "{bucket}/source"),
    ],
    "complete-multipart-upload": [
        *("complete-multipart-upload", "--bucket", "{bucket}", "--key", "k", "--upload-id", "u"),
        *("--multipart-upload", "Parts=[{ETag=e,PartNumber=1}]"),
    ],
    "abort-multipart-upload": [
        *("abort-multipart-upload", "--bucket", "{bucket}", "--key", "k", "--upload-id", "u"),
    ],
    "list-parts": ["list-parts", "--bucket", "{bucket}", "--key", "k", "--upload-id", "u"],
    "list-multipart-uploads": ["list-multipart-uploads", "--bucket", "{bucket}"],
}

#: Each class of failure: the options that cause it, the variables it needs, the endpoint
#: ("closed": a port nobody listens on; "gateway": a running gateway) and the exit status.
FAILURES: dict[str, tuple[list[str], dict[str, str], str, ExitCode]] = {
    "unknown-option": (["--no-such-option"], {}, "closed", ExitCode.USAGE),
    "bad-option-value": (["--endpoint-url", "ftp://gateway"], {}, "none", ExitCode.USAGE),
    "token-on-the-command-line": (["--token", "secret"], {}, "closed", ExitCode.USAGE),
    "client-cert-without-key": (["--client-cert", "{file}"], {}, "closed", ExitCode.USAGE),
    "missing-token-file": (["--token-file", "{missing}"], {}, "closed", ExitCode.CLIENT_CONFIG),
    "malformed-token-variable": ([], {"GATEWAY_TOKEN": "two words"}, "closed", 253),
    "malformed-endpoint-variable": ([], {"GATEWAY_ENDPOINT_URL": "ftp://x"}, "none", 253),
    "unreadable-ca-bundle": (["--ca-bundle", "{missing}"], {}, "https", ExitCode.CLIENT_CONFIG),
    "service-error": ([], {}, "gateway", ExitCode.SERVICE_ERROR),
    "unreachable": ([], {}, "closed", ExitCode.CONNECTION),
}

#: Failures only some commands can meet.
EXTRA: dict[str, tuple[list[str], ExitCode]] = {
    "upload-missing-file": (["upload", "{missing}", "s3://{bucket}/k"], ExitCode.USAGE),
    "upload-bad-part-size": (
        ["upload", "{file}", "s3://{bucket}/k", "--part-size", "eight"],
        ExitCode.USAGE,
    ),
    "upload-bad-destination": (["upload", "{file}", "{bucket}/k"], ExitCode.USAGE),
    "upload-part-missing-body": (
        [*CALLERS["upload-part"][:-1], "{missing}"],
        ExitCode.USAGE,
    ),
    "reap-uploads-bad-duration": (
        ["reap-uploads", "--bucket", "{bucket}", "--older-than", "soon"],
        ExitCode.USAGE,
    ),
    "demo-bad-size": (["demo", "--size", "huge"], ExitCode.USAGE),
    "hash-token-bad-principal": (["hash-token", "--principal", " ", "--generate"], 2),
    "hash-token-unknown-option": (["hash-token", "--no-such-option"], 2),
    "no-command": ([], 2),
    "unknown-command": (["no-such-command"], 2),
}


@pytest.fixture
def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


@pytest.fixture
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for name in ("GATEWAY_TOKEN", "GATEWAY_ENDPOINT_URL"):
        monkeypatch.delenv(name, raising=False)
    yield


def _exit_status(argv: list[str]) -> int:
    """What ``s3-upload-gateway ARGV`` exits with (argparse exits through SystemExit)."""
    try:
        return main(argv)
    except SystemExit as exit:
        assert isinstance(exit.code, int)
        return exit.code


def _fill(argv: list[str], **values: str) -> list[str]:
    return [arg.format(**values) if "{" in arg and "Parts=" not in arg else arg for arg in argv]


@pytest.mark.parametrize("failure", list(FAILURES))
@pytest.mark.parametrize("command", list(CALLERS))
def test_commands_that_call_a_gateway(
    command: str,
    failure: str,
    tmp_path: Path,
    closed_port: int,
    gateway_address: str,
    clean_environment: None,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    options, env, endpoint, expected = FAILURES[failure]
    file = tmp_path / "file.bin"
    file.write_bytes(b"hello")
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    bucket = MISSING_BUCKET if failure == "service-error" else "bucket"
    endpoints = {
        "closed": ["--endpoint-url", f"127.0.0.1:{closed_port}"],
        "https": ["--endpoint-url", f"https://127.0.0.1:{closed_port}"],
        "gateway": ["--endpoint-url", gateway_address],
        "none": [],
    }
    argv = [*CALLERS[command], *options, *endpoints[endpoint]]
    argv = _fill(argv, file=str(file), missing=str(tmp_path / "missing"), bucket=bucket)
    status = _exit_status(argv)
    err = capsys.readouterr().err
    assert status == expected, err
    assert "Traceback" not in err
    assert err.strip(), "a failure says what failed"


@pytest.mark.parametrize("case", list(EXTRA))
def test_failures_of_some_commands(
    case: str, tmp_path: Path, clean_environment: None, capsys: pytest.CaptureFixture[str]
) -> None:
    argv, expected = EXTRA[case]
    file = tmp_path / "file.bin"
    file.write_bytes(b"hello")
    argv = _fill(argv, file=str(file), missing=str(tmp_path / "missing"), bucket="bucket")
    if argv and argv[0] not in ("hash-token", "demo", "no-such-command"):
        argv += ["--endpoint-url", "127.0.0.1:1"]
    status = _exit_status(argv)
    err = capsys.readouterr().err
    assert status == expected, err
    assert "Traceback" not in err


def _serve(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway", "serve", "--metrics-address", "", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, "GATEWAY_EMBEDDED_S3": "off"},
    )


def test_serve(moto_endpoint: str) -> None:
    assert _serve("--s3-read-timeout", "-1").returncode == ExitCode.CONFIG
    assert _serve("--no-such-option").returncode == 2
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        taken = f"127.0.0.1:{holder.getsockname()[1]}"
        in_use = _serve("--listen-address", taken, "--s3-endpoint-url", moto_endpoint)
    assert in_use.returncode == ExitCode.FAILED, in_use.stderr


def test_the_table() -> None:
    """The values are the documented ones: scripts and alerts depend on them."""
    assert {code.name: int(code) for code in ExitCode} == {
        "OK": 0,
        "FAILED": 1,
        "CONFIG": 2,
        "INTERRUPTED": 130,
        "USAGE": 252,
        "CLIENT_CONFIG": 253,
        "SERVICE_ERROR": 254,
        "CONNECTION": 255,
    }
