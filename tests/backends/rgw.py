"""A one-node Ceph RADOS Gateway (Ceph 16 from Debian bookworm) on loopback, as a real S3 backend.

Nothing is installed system-wide: `provision` downloads the Debian packages with `apt-get download`
and unpacks them with `dpkg-deb -x` into a cache directory; `start` runs the daemons from there
(`LD_LIBRARY_PATH` and `PYTHONPATH` point into it). The cluster is one monitor, one memstore OSD
(objects live in RAM) and radosgw serving S3 over http and https, every daemon bound to 127.0.0.1
and run in the foreground under `subprocess.Popen`, so `RgwServer.stop` ends them by pid.

    python -m tests.backends.rgw --cache .cache/rgw
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import os
import platform
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tests.backends.tls import Tls, make_tls

# The smallest set of Debian bookworm packages that runs ceph-mon, a memstore ceph-osd, radosgw,
# radosgw-admin and the `ceph` CLI. Every other shared library they load is in the base image.
PACKAGES: tuple[str, ...] = (
    "ceph-base",  # monmaptool, rados-classes, erasure-code/compressor/crypto plugins
    "ceph-common",  # ceph CLI, ceph-authtool, radosgw-admin, libceph-common
    "ceph-mon",
    "ceph-osd",
    "radosgw",
    "libaio1",
    "libboost-context1.74.0",
    "libboost-thread1.74.0",
    "libdaxctl1",
    "libfmt9",
    "libfuse2",
    "libibverbs1",
    "libleveldb1d",
    "liblua5.3-0",
    "libndctl6",
    "libnl-3-200",
    "libnl-route-3-200",
    "liboath0",
    "libpmem1",
    "librabbitmq4",
    "librados2",
    "librdmacm1",
    "libsnappy1v5",
    "python3-ceph-argparse",  # the `ceph` CLI's imports
    "python3-prettytable",
    "python3-rados",
    "python3-wcwidth",
)

ACCESS_KEY = "RGWTESTACCESSKEY0001"
SECRET_KEY = "RgwTestSecretKey0000000000000000000000001"
# The `ceph` CLI needs the interpreter that python3-rados was built for, not the venv's.
SYSTEM_PYTHON = Path("/usr/bin/python3")
LOOPBACK = "127.0.0.1"
START_TIMEOUT = 120.0
STOP_TIMEOUT = 15.0
MARKER = "provisioned.txt"
RGW_NAME = "client.rgw.a"


Arg = str | Path  # one command-line argument


class RgwError(RuntimeError):
    """Provisioning or starting the gateway failed."""


# --------------------------------------------------------------------------- commands and logs


def _run(
    args: Sequence[Arg],
    *,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
    log: Path | None = None,
    timeout: float = 300.0,
) -> str:
    """Run a command to completion; on failure raise RgwError with its output and `log`'s tail."""
    argv = [str(arg) for arg in args]
    try:
        done = subprocess.run(
            argv,
            env=env,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise RgwError(f"{argv[0]} timed out after {timeout} s{_log_note(log)}") from exc
    output = done.stdout.decode(errors="replace")
    if done.returncode != 0:
        tail = "\n".join(output.splitlines()[-40:])
        raise RgwError(f"{' '.join(argv)} exited with {done.returncode}:\n{tail}{_log_note(log)}")
    return output


def _log_note(log: Path | None, tail: int = 30) -> str:
    """The last lines of a Ceph log, after the earlier error lines (level -1) that led to them."""
    if log is None:
        return ""
    try:
        lines = log.read_text(errors="replace").splitlines()
    except FileNotFoundError:
        return f"\n--- {log} does not exist"
    if not lines:
        return ""
    errors = [line for line in lines[:-tail] if line.split(maxsplit=3)[2:3] == ["-1"]]
    shown = [*errors[-10:], "...", *lines[-tail:]] if errors else lines[-tail:]
    return f"\n--- {log}:\n" + "\n".join(shown)


# --------------------------------------------------------------------------- provisioning


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive lock on `path`, so parallel test workers provision the cache only once."""
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def provision(cache_dir: Path) -> Path:
    """Download and unpack the packages into `cache_dir` once; return the unpacked root."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    root, marker = cache_dir / "root", cache_dir / MARKER
    wanted = "\n".join(PACKAGES) + "\n"
    with _locked(cache_dir / ".lock"):
        if root.is_dir() and marker.is_file() and marker.read_text() == wanted:
            return root
        marker.unlink(missing_ok=True)
        debs = _download(cache_dir / "debs", PACKAGES)
        _extract(debs, root)
        marker.write_text(wanted)
    return root


def _find_deb(debs_dir: Path, package: str) -> Path | None:
    found = sorted(debs_dir.glob(f"{package}_*.deb"))
    return found[-1] if found else None


def _download(debs_dir: Path, packages: Sequence[str]) -> list[Path]:
    debs_dir.mkdir(parents=True, exist_ok=True)
    missing = [package for package in packages if _find_deb(debs_dir, package) is None]
    if missing:
        try:
            _apt_download(debs_dir, missing)
        except RgwError:
            # Missing or stale package lists: refresh them once and retry.
            _run(["apt-get", "update"])
            _apt_download(debs_dir, missing)
    debs = [_find_deb(debs_dir, package) for package in packages]
    absent = [package for package, deb in zip(packages, debs, strict=True) if deb is None]
    if absent:
        raise RgwError(f"apt-get download did not produce: {' '.join(absent)}")
    return [deb for deb in debs if deb is not None]


def _apt_download(debs_dir: Path, packages: Sequence[str]) -> None:
    """`apt-get download` into a scratch directory, so an interrupted run leaves no partial .deb."""
    with tempfile.TemporaryDirectory(dir=debs_dir.parent, prefix="download-") as scratch:
        # The sandbox user cannot write to a root-owned scratch directory; don't warn about it.
        _run(
            ["apt-get", "-q", "-o", "APT::Sandbox::User=root", "download", *packages],
            cwd=Path(scratch),
        )
        for deb in Path(scratch).glob("*.deb"):
            deb.rename(debs_dir / deb.name)


def _extract(debs: Sequence[Path], root: Path) -> None:
    partial = root.with_name(root.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir()
    for deb in debs:
        _run(["dpkg-deb", "-x", deb, partial])
    shutil.rmtree(root, ignore_errors=True)
    partial.rename(root)


# --------------------------------------------------------------------------- daemons


@dataclass
class _Daemon:
    name: str
    process: subprocess.Popen[bytes]
    log: Path
    output: Path


class _Daemons:
    """The daemons started so far, stopped in reverse order of their start."""

    def __init__(self, env: dict[str, str]) -> None:
        self._env = env
        self._daemons: list[_Daemon] = []

    @property
    def pids(self) -> list[int]:
        return [daemon.process.pid for daemon in self._daemons]

    def spawn(self, name: str, args: Sequence[Arg], log: Path) -> None:
        output = log.with_suffix(".out")
        with output.open("wb") as sink:
            process = subprocess.Popen(
                [str(arg) for arg in args],
                env=self._env,
                stdin=subprocess.DEVNULL,
                stdout=sink,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # a Ctrl-C reaches the test process, which stops us
            )
        self._daemons.append(_Daemon(name, process, log, output))

    def check_alive(self) -> None:
        for daemon in self._daemons:
            code = daemon.process.poll()
            if code is not None:
                raise RgwError(
                    f"{daemon.name} (pid {daemon.process.pid}) exited with {code}"
                    f"{_log_note(daemon.output)}{_log_note(daemon.log)}"
                )

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """SIGTERM each daemon by pid, SIGKILL it after `timeout` seconds, and reap it."""
        for daemon in reversed(self._daemons):
            _terminate(daemon.process, timeout)


def _terminate(process: subprocess.Popen[bytes], timeout: float) -> None:
    if process.poll() is not None:
        return  # already reaped: its pid may belong to someone else by now
    os.kill(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        os.kill(process.pid, signal.SIGKILL)
        process.wait()


# --------------------------------------------------------------------------- the server


@dataclass
class RgwServer:
    http_endpoint: str
    https_endpoint: str
    access_key: str
    secret_key: str
    ca_bundle: Path
    pids: list[int]
    state_dir: Path
    _daemons: _Daemons = field(repr=False, compare=False)

    def stop(self) -> None:
        """Stop every daemon by pid (SIGTERM, then SIGKILL after a timeout) and wait for it."""
        self._daemons.stop()


@dataclass(frozen=True)
class _Ports:
    mon: int
    http: int
    https: int


def _free_ports(count: int) -> list[int]:
    """Ports free on the loopback right now (held open together, so they are distinct)."""
    with contextlib.ExitStack() as stack:
        sockets = [stack.enter_context(socket.socket()) for _ in range(count)]
        for sock in sockets:
            sock.bind((LOOPBACK, 0))
        return [sock.getsockname()[1] for sock in sockets]


def _library_dirs(root: Path) -> list[Path]:
    triplet = f"{platform.machine()}-linux-gnu"
    return [
        root / "usr/lib" / triplet,
        root / "lib" / triplet,
        root / "usr/lib" / triplet / "ceph",
        root / "usr/lib",
    ]


def _environment(root: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["LD_LIBRARY_PATH"] = os.pathsep.join(str(path) for path in _library_dirs(root))
    env["PYTHONPATH"] = str(root / "usr/lib/python3/dist-packages")
    return env


def _ceph_config(root: Path, state: Path, fsid: str, ports: _Ports, tls: Tls) -> str:
    libs = root / "usr/lib" / f"{platform.machine()}-linux-gnu"
    frontends = (
        f"beast endpoint={LOOPBACK}:{ports.http} ssl_endpoint={LOOPBACK}:{ports.https}"
        f" ssl_certificate={tls.certificate} ssl_private_key={tls.key}"
    )
    return f"""\
[global]
fsid = {fsid}
mon host = [v1:{LOOPBACK}:{ports.mon}]
mon initial members = a
ms bind msgr2 = false
auth cluster required = none
auth service required = none
auth client required = none
osd pool default size = 1
osd pool default min size = 1
mon allow pool size one = true
osd pool default pg num = 8
osd pool default pgp num = 8
osd pool default pg autoscale mode = off
mon max pg per osd = 1000
# Every osdmap change (the gateway makes a dozen at its first start) waited 1 s by default.
paxos propose interval = 0.01
paxos min wait = 0.001
osd crush chooseleaf type = 0
osd objectstore = memstore
memstore device bytes = 2147483648
osd class dir = {libs}/rados-classes
osd crush update on start = false
osd class update on start = false
run dir = {state}/run
admin socket = {state}/run/$name.asok
log file = {state}/log/$name.log
pid file = {state}/run/$name.pid
plugin dir = {libs}/ceph
erasure code dir = {libs}/ceph/erasure-code
keyring = {state}/keyring
mon data = {state}/mon.$id
osd data = {state}/osd.$id
[osd]
public addr = {LOOPBACK}
cluster addr = {LOOPBACK}
[{RGW_NAME}]
rgw frontends = {frontends}
rgw crypt require ssl = false
# The lifecycle thread sleeps 5 s at a time and holds up radosgw's shutdown.
rgw enable lc threads = false
rgw data = {state}/rgw
"""


class _Cluster:
    """Creates and starts the monitor, the OSD and the gateway, step by step."""

    def __init__(self, root: Path, state: Path) -> None:
        self.root = root
        self.state = state
        self.config = state / "ceph.conf"
        self.env = _environment(root)
        self.daemons = _Daemons(self.env)

    def bin(self, name: str) -> Path:
        return self.root / "usr/bin" / name

    def log(self, name: str) -> Path:
        return self.state / "log" / f"{name}.log"

    def tool(self, name: str, *args: Arg, log: Path | None = None) -> str:
        return _run([self.bin(name), *args], env=self.env, log=log)

    def spawn(self, tool: str, name: str, *args: str) -> None:
        """Run `tool` in the foreground as the daemon `name` (its log is `name`.log)."""
        command: list[Arg] = [self.bin(tool), "-c", self.config, *args, "-f"]
        self.daemons.spawn(tool, command, self.log(name))

    def ceph(self, *args: str) -> str:
        command: list[Arg] = [self.bin("ceph"), "-c", self.config, "--connect-timeout", "30", *args]
        return _run([SYSTEM_PYTHON, *command], env=self.env, log=self.log("mon.a"))

    def write_config(self, fsid: str, ports: _Ports, tls: Tls) -> None:
        for directory in ("mon.a", "osd.0", "run", "log", "rgw"):
            (self.state / directory).mkdir(parents=True, exist_ok=True)
        self.config.write_text(_ceph_config(self.root, self.state, fsid, ports, tls))

    def start_monitor(self, fsid: str, port: int) -> None:
        keyring, monmap, log = self.state / "keyring", self.state / "monmap", self.log("mon.a")
        # A port other than 6789 means msgr2 unless the address says v1.
        address = f"[v1:{LOOPBACK}:{port}]"
        self.tool("ceph-authtool", "--create-keyring", keyring, "--gen-key", "-n", "mon.")
        self.tool("monmaptool", "--create", "--fsid", fsid, "--addv", "a", address, monmap)
        self.tool("ceph-mon", "-c", self.config, "-i", "a", "--mkfs", "--monmap", monmap, log=log)
        self.spawn("ceph-mon", "mon.a", "-i", "a")

    def start_osd(self) -> None:
        osd_uuid = str(uuid.uuid4())
        osd_id = self.ceph("osd", "new", osd_uuid).strip()
        if osd_id != "0":
            raise RgwError(f"expected osd id 0, the monitor gave {osd_id!r}")
        self.ceph("osd", "crush", "add", "osd.0", "1.0", "root=default")
        mkfs = ["--mkfs", "--osd-uuid", osd_uuid]
        self.tool("ceph-osd", "-c", self.config, "-i", "0", *mkfs, log=self.log("osd.0"))
        self.spawn("ceph-osd", "osd.0", "-i", "0")

    def start_gateway(self) -> None:
        self.spawn("radosgw", RGW_NAME, "-n", RGW_NAME)

    def wait_until_serving(self, urls: Sequence[str], ca: Path, timeout: float) -> None:
        context = ssl.create_default_context(cafile=str(ca))
        # Straight to the loopback, whatever *_proxy says.
        opener = urllib.request.build_opener(
            urllib.request.ProxyHandler({}), urllib.request.HTTPSHandler(context=context)
        )
        deadline, pending, log = time.monotonic() + timeout, list(urls), self.log(RGW_NAME)
        while True:
            self.daemons.check_alive()
            try:
                pending = [url for url in pending if not _answers(opener, url)]
            except ssl.SSLError as error:  # up, but TLS is broken: waiting will not help
                raise RgwError(f"TLS to radosgw failed: {error}{_log_note(log)}") from error
            if not pending:
                return
            if time.monotonic() > deadline:
                raise RgwError(
                    f"radosgw did not answer on {' '.join(pending)} within {timeout} s"
                    f"{_log_note(log)}"
                )
            time.sleep(0.2)

    def create_user(self) -> None:
        user = ["--uid=test", "--display-name=test"]
        keys = [f"--access-key={ACCESS_KEY}", f"--secret-key={SECRET_KEY}"]
        command: list[Arg] = ["-c", self.config, "user", "create", *user, *keys]
        self.tool("radosgw-admin", *command, log=self.log(RGW_NAME))


def _answers(opener: urllib.request.OpenerDirector, url: str) -> bool:
    try:
        with opener.open(url, timeout=2) as response:
            response.read()
            return True
    except urllib.error.HTTPError as error:
        error.close()
        return True  # any HTTP answer means the frontend is up
    except urllib.error.URLError as error:
        if isinstance(error.reason, ssl.SSLError):
            raise error.reason from error
        return False
    except ssl.SSLError:
        raise
    except OSError:
        return False


def start(root: Path, state_dir: Path) -> RgwServer:
    """Start mon, memstore OSD and radosgw from `root` with state in `state_dir`."""
    if not SYSTEM_PYTHON.is_file():
        raise RgwError(f"{SYSTEM_PYTHON} (Debian's python3, for the ceph CLI) is missing")
    state_dir.mkdir(parents=True, exist_ok=True)
    cluster = _Cluster(root, state_dir)
    try:
        ports = _Ports(*_free_ports(3))
        tls = make_tls(state_dir / "tls")
        fsid = str(uuid.uuid4())
        cluster.write_config(fsid, ports, tls)
        cluster.start_monitor(fsid, ports.mon)
        cluster.start_osd()
        cluster.start_gateway()
        http, https = f"http://{LOOPBACK}:{ports.http}", f"https://{LOOPBACK}:{ports.https}"
        cluster.wait_until_serving([http, https], tls.ca, START_TIMEOUT)
        cluster.create_user()
    except BaseException:
        cluster.daemons.stop()
        raise
    return RgwServer(
        http_endpoint=http,
        https_endpoint=https,
        access_key=ACCESS_KEY,
        secret_key=SECRET_KEY,
        ca_bundle=tls.ca,
        pids=cluster.daemons.pids,
        state_dir=state_dir,
        _daemons=cluster.daemons,
    )


@contextlib.contextmanager
def rgw_server(cache_dir: Path, state_dir: Path) -> Iterator[RgwServer]:
    """Provision (cached), start, and always stop a gateway."""
    server = start(provision(cache_dir), state_dir)
    try:
        yield server
    finally:
        server.stop()


# --------------------------------------------------------------------------- command line


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m tests.backends.rgw",
        description="Provision, start and stop a one-node Ceph RGW; print endpoints and timing.",
    )
    parser.add_argument("--cache", type=Path, default=Path(".cache/rgw"), help="package cache")
    parser.add_argument("--state", type=Path, help="state directory (default: a temporary one)")
    args = parser.parse_args(argv)

    began = time.monotonic()
    root = provision(args.cache)
    provisioned = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="rgw-") as scratch:
        server = start(root, args.state or Path(scratch))
        started = time.monotonic()
        try:
            print(f"http:  {server.http_endpoint}")
            print(f"https: {server.https_endpoint} (CA bundle {server.ca_bundle})")
            print(f"keys:  {server.access_key} / {server.secret_key}")
            print(f"pids:  {' '.join(map(str, server.pids))}")
        finally:
            server.stop()
        stopped = time.monotonic()
    print(
        f"provision {provisioned - began:.2f} s, start {started - provisioned:.2f} s,"
        f" stop {stopped - started:.2f} s"
    )


if __name__ == "__main__":
    main()
