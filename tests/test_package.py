"""The package as users and the container image get it.

The wheel is built from the checkout, then ``deploy/install-wheel.sh`` (the Dockerfile's install
step) installs it without extras into a fresh virtual environment made by the system's python3: the
dependencies exactly as ``deploy/requirements.lock`` pins them, hashes checked, then the wheel. That
installation has to start: ``--version``, every module importable, and ``serve`` relaying an upload
to a separate moto S3 server. The lock itself must be what ``deploy/lock.sh`` makes of
pyproject.toml's dependencies. Both need the package index.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import boto3
import pytest
from prometheus_client.parser import text_string_to_metric_families

from gateway import __version__
from tests.gateway_process import collect_stderr, read_ready_port, stop

ROOT = Path(__file__).parent.parent
INSTALL_SCRIPT = ROOT / "deploy" / "install-wheel.sh"
LOCK = ROOT / "deploy" / "requirements.lock"
LOCK_SCRIPT = ROOT / "deploy" / "lock.sh"
#: What the Dockerfile copies into its build stage to make the wheel.
WHEEL_SOURCES = ("pyproject.toml", "README.md", "gateway")
#: ``python -m gateway`` runs the CLI when imported; ``--version`` covers it instead.
SCRIPT_MODULES = frozenset({"gateway.__main__"})
_MOTO_READY = re.compile(r"Running on http://127\.0\.0\.1:(\d+)")

#: Run in the fresh environment: import every module of the installed package.
_IMPORT_ALL = """
import importlib, importlib.util, json, pkgutil, sys
import gateway
skip = set(sys.argv[1:])
imported, failed = ["gateway"], {}
for module in pkgutil.walk_packages(gateway.__path__, "gateway."):
    if module.name in skip:
        continue
    try:
        importlib.import_module(module.name)
    except Exception as exc:
        failed[module.name] = f"{type(exc).__name__}: {exc}"
    else:
        imported.append(module.name)
print(json.dumps({
    "file": gateway.__file__,
    "imported": imported,
    "failed": failed,
    "uvloop": importlib.util.find_spec("uvloop") is not None,
    "moto": importlib.util.find_spec("moto") is not None,
}))
"""

#: Run in the fresh environment: every installed distribution and its version.
_DISTRIBUTIONS = (
    "import importlib.metadata as m, json; "
    "print(json.dumps({d.metadata['Name']: d.version for d in m.distributions()}))"
)


def _run(command: list[str | Path], env: dict[str, str], timeout: float) -> str:
    """Run ``command`` to completion; its stdout, or a failed test showing what it printed."""
    result = subprocess.run(
        [str(part) for part in command],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
        check=False,
    )
    assert result.returncode == 0, (
        f"{' '.join(map(str, command))} exited with {result.returncode}:\n"
        f"{result.stdout}\n{result.stderr}"
    )
    return result.stdout


def _fresh_environment() -> dict[str, str]:
    """This process's environment without the dev venv: nothing of it on PATH or sys.path."""
    dev_bin = Path(sys.prefix) / "bin"
    env = {
        name: value
        for name, value in os.environ.items()
        if name not in ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "VIRTUAL_ENV")
    }
    entries = env.get("PATH", os.defpath).split(os.pathsep)
    env["PATH"] = os.pathsep.join(p for p in entries if p and Path(p) != dev_bin)
    env["PIP_QUIET"] = "1"
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    return env


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _locked() -> dict[str, str]:
    """The lock's pins: canonical name to version."""
    pins = re.findall(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^ \\\n]+)", LOCK.read_text(), re.M)
    return {_canonical(name): version for name, version in pins}


def test_the_lock_is_what_lock_sh_makes_of_pyproject(tmp_path: Path) -> None:
    """deploy/requirements.lock is current: deploy/lock.sh (uv, keeping the pins it has) writes it
    again unchanged. It fails when pyproject.toml's dependencies changed and the lock did not."""
    uv = Path(sys.executable).parent / "uv"
    assert uv.is_file(), "uv comes with the dev extra: pip install -e '.[dev]'"
    regenerated = tmp_path / "requirements.lock"
    shutil.copy2(LOCK, regenerated)
    _run(["sh", LOCK_SCRIPT, regenerated], {**os.environ, "UV": str(uv)}, timeout=300)
    assert regenerated.read_text() == LOCK.read_text(), "the lock is stale: run deploy/lock.sh"


def test_the_lock_pins_only_runtime_dependencies() -> None:
    """No extra: neither moto (embedded) nor the test tools; uvloop, for Linux, is there."""
    locked = _locked()
    assert {"grpcio", "aiobotocore", "prometheus-client", "uvloop"} <= set(locked)
    assert not {"moto", "pytest", "boto3", "hypothesis", "awscli", "s3-upload-gateway"} & set(
        locked
    )
    assert LOCK.read_text().count("--hash=sha256:") >= len(locked)


def _source_modules(source: Path) -> set[str]:
    """The modules of the gateway package in the sources under ``source``."""
    modules = set()
    for path in (source / "gateway").rglob("*.py"):
        parts = path.relative_to(source).with_suffix("").parts
        modules.add(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return modules


def _build_wheel(work: Path) -> tuple[Path, Path]:
    """The project's wheel, built by the dev venv's pip from a copy of the Dockerfile's sources
    (building in place would leave build/ and *.egg-info in the checkout), and that copy."""
    source = work / "source"
    source.mkdir()
    for name in WHEEL_SOURCES:
        if (ROOT / name).is_dir():
            ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
            shutil.copytree(ROOT / name, source / name, ignore=ignore)
        else:
            shutil.copy2(ROOT / name, source / name)
    wheels = work / "wheels"
    command = [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", wheels, source]
    _run(command, os.environ.copy(), timeout=300)
    built = list(wheels.glob("*.whl"))
    assert len(built) == 1, built
    return built[0], source


@contextmanager
def _moto_server() -> Iterator[str]:
    """moto's S3 server as a process of its own, from the dev venv, on a free loopback port."""
    command = [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", "0"]
    process = subprocess.Popen(
        command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    log: list[str] = []
    reader: threading.Thread | None = None
    try:
        assert process.stderr is not None
        port = None
        for line in process.stderr:
            log.append(line)
            if match := _MOTO_READY.search(line):
                port = int(match.group(1))
                break
        assert port is not None, f"moto exited with {process.wait()}:\n{''.join(log)}"
        reader = threading.Thread(target=collect_stderr, args=(process, log), daemon=True)
        reader.start()
        yield f"http://127.0.0.1:{port}"
    finally:
        stop(process)
        if reader is not None:
            reader.join(5)
        if process.stderr is not None:
            process.stderr.close()


@pytest.mark.timeout(600)
def test_wheel_without_extras_installs_starts_and_relays_an_upload(tmp_path: Path) -> None:
    wheel, source = _build_wheel(tmp_path)
    venv = tmp_path / "venv"
    env = _fresh_environment()
    _run(["sh", INSTALL_SCRIPT, venv, wheel], env, timeout=480)
    python, cli = venv / "bin" / "python", venv / "bin" / "s3-upload-gateway"
    _run([python, "-m", "pip", "check"], env, timeout=120)
    # Exactly the lock's pins, and the gateway.
    listed = json.loads(_run([python, "-I", "-c", _DISTRIBUTIONS], env, timeout=120))
    installed = {_canonical(name): version for name, version in listed.items()}
    installed.pop("s3-upload-gateway")
    for tool in ("pip", "setuptools", "wheel"):  # the venv's own
        installed.pop(tool, None)
    assert installed == _locked()

    # The console script and ``python -m gateway``.
    assert _run([cli, "--version"], env, timeout=60).strip() == f"s3-upload-gateway {__version__}"
    assert __version__ in _run([python, "-m", "gateway", "--version"], env, timeout=60)

    # Every module imports; uvloop came without an extra; moto (the embedded extra) did not.
    found = json.loads(_run([python, "-I", "-c", _IMPORT_ALL, *SCRIPT_MODULES], env, timeout=120))
    assert Path(found["file"]).is_relative_to(venv), found["file"]
    assert found["failed"] == {}
    assert set(found["imported"]) == _source_modules(source) - SCRIPT_MODULES
    assert found["uvloop"] is (sys.platform != "win32")
    assert found["moto"] is False

    # The embedded S3 needs that extra: its absence is a message at start, not an import error.
    embedded = subprocess.run(
        [
            *(cli, "serve", "--embedded-s3", "on", "--listen-address", "127.0.0.1:0"),
            *("--metrics-address", "127.0.0.1:0"),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert embedded.returncode == 2
    assert embedded.stderr.strip() == (
        "s3-upload-gateway: configuration error: --embedded-s3 needs moto: "
        "pip install 's3-upload-gateway[embedded]'"
    )

    # serve relays an upload to a separate S3 server, answers /metrics, and stops on SIGTERM.
    data = os.urandom(300_000)
    upload_file = tmp_path / "upload.bin"
    upload_file.write_bytes(data)
    with _moto_server() as s3_endpoint:
        s3 = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1")
        bucket = f"test-{uuid.uuid4().hex[:20]}"
        s3.create_bucket(Bucket=bucket)
        # AWS_* are conftest's dummy credentials for moto.
        gateway_env = {
            **env,
            "GATEWAY_S3_ENDPOINT_URL": s3_endpoint,
            "GATEWAY_S3_ADDRESSING_STYLE": "path",
        }
        serve = [
            *(cli, "serve", "--listen-address", "127.0.0.1:0"),
            *("--metrics-address", "127.0.0.1:0", "--embedded-s3", "off", "--drain-delay", "0"),
        ]
        gateway = subprocess.Popen(
            [str(part) for part in serve],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            env=gateway_env,
        )
        log: list[str] = []
        reader: threading.Thread | None = None
        try:
            port = read_ready_port(gateway, log)
            metrics_port = json.loads(log[-1])["metrics_port"]
            reader = threading.Thread(target=collect_stderr, args=(gateway, log), daemon=True)
            reader.start()

            uploaded = json.loads(
                _run(
                    [
                        *(cli, "upload", upload_file, f"s3://{bucket}/object.bin"),
                        *("--endpoint-url", f"127.0.0.1:{port}"),
                    ],
                    env,
                    timeout=120,
                )
            )
            stored = s3.get_object(Bucket=bucket, Key="object.bin")
            assert stored["Body"].read() == data
            assert uploaded["ETag"] == stored["ETag"]

            url = f"http://127.0.0.1:{metrics_port}/metrics"
            with urllib.request.urlopen(url, timeout=10) as response:
                assert response.status == 200
                exposition = response.read().decode()
            samples = [
                sample
                for family in text_string_to_metric_families(exposition)
                for sample in family.samples
            ]
            build = [s.labels for s in samples if s.name == "s3gateway_build_info"]
            assert build == [{"version": __version__}]
            received = [
                s.value for s in samples if s.name == "s3gateway_client_received_bytes_total"
            ]
            assert sum(received) == len(data)

            gateway.send_signal(signal.SIGTERM)
            assert gateway.wait(60) == 0, "".join(log)
        finally:
            stop(gateway)
            if reader is not None:
                reader.join(5)
            if gateway.stderr is not None:
                gateway.stderr.close()
