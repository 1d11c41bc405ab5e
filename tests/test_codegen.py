"""buf.gen.yaml generates the same API in Go, Java, Python and TypeScript: `buf generate` with
the plugins it names (Debian's, and ts-proto pinned in examples/tools), every RPC in every
language's client, and the generated Python describing the same messages as the package's own."""

from __future__ import annotations

import ast
import os
import re
import subprocess
from pathlib import Path

import pytest
from google.protobuf import descriptor_pb2

from gateway.v1 import upload_service_pb2 as pb
from tests.helpers import load_script
from tests.toolchains import apt_install, installed

ROOT = Path(__file__).resolve().parent.parent
check_proto = load_script("check_proto")
#: The Debian packages of the plugins buf.gen.yaml runs (protoc for the built-in generators).
PACKAGES = (
    "protobuf-compiler",
    "protoc-gen-go",
    "protoc-gen-go-grpc",
    "protobuf-compiler-grpc-java-plugin",
    "protobuf-compiler-grpc",
)
RPCS = [method.name for method in pb.DESCRIPTOR.services_by_name["UploadService"].methods]


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """What `buf generate` writes, under a temporary directory."""
    if not installed(PACKAGES):
        apt_install(PACKAGES, "the code generators of buf.gen.yaml")
    try:
        buf = check_proto.buf_path()  # npm ci in examples/tools: buf and ts-proto
    except check_proto.ToolError as error:
        pytest.fail(str(error))
    out = tmp_path_factory.mktemp("gen")
    path = (
        f"{ROOT / 'examples' / 'tools' / 'node_modules' / '.bin'}{os.pathsep}{os.environ['PATH']}"
    )
    done = subprocess.run(
        [str(buf), "generate", "--template", "buf.gen.yaml", "--output", str(out)],
        cwd=ROOT,
        env={**os.environ, "PATH": path, "BUF_CACHE_DIR": str(check_proto.BUF_CACHE)},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    if done.returncode != 0:
        pytest.fail(f"buf generate failed:\n{done.stdout}{done.stderr}")
    return out / "examples" / "gen"


#: Each language's client file, and how it spells an RPC's name.
CLIENTS = {
    "go": ("go/gateway/v1/upload_service_grpc.pb.go", "func (c *uploadServiceClient) {rpc}("),
    "java": (
        "java/io/github/s3uploadgateway/gateway/v1/UploadServiceGrpc.java",
        'generateFullMethodName(SERVICE_NAME, "{rpc}")',
    ),
    "python": ("python/gateway/v1/upload_service_pb2_grpc.py", "'/gateway.v1.UploadService/{rpc}'"),
    "ts": ("ts/gateway/v1/upload_service.ts", '"/gateway.v1.UploadService/{rpc}"'),
}


@pytest.mark.parametrize("language", sorted(CLIENTS))
def test_every_rpc_is_in_every_language(generated: Path, language: str) -> None:
    file, spelled = CLIENTS[language]
    text = (generated / file).read_text()
    missing = [rpc for rpc in RPCS if spelled.format(rpc=rpc) not in text]
    assert not missing, f"{language} lacks {missing}"


def test_the_generated_python_describes_the_packages_messages(generated: Path) -> None:
    """buf's Python (protoc 3.21's generator) and the committed gateway/v1 (grpcio-tools') are
    the same API: the same messages with the same fields and numbers."""
    # Not imported: it would register gateway/v1/upload_service.proto in the default pool, where
    # the package's own module already did. Its serialized descriptor is what it would register.
    source = (generated / "python" / "gateway" / "v1" / "upload_service_pb2.py").read_text()
    match = re.search(r"AddSerializedFile\((b'.*?')\)", source, re.DOTALL)
    assert match, "no serialized descriptor in the generated module"
    serialized = ast.literal_eval(match.group(1))
    theirs = descriptor_pb2.FileDescriptorProto.FromString(serialized)
    ours = descriptor_pb2.FileDescriptorProto()
    pb.DESCRIPTOR.CopyToProto(ours)

    def shape(file: descriptor_pb2.FileDescriptorProto) -> dict[str, list[tuple[str, int]]]:
        return {m.name: sorted((f.name, f.number) for f in m.field) for m in file.message_type}

    assert shape(theirs) == shape(ours)
    assert [s.name for s in theirs.service] == [s.name for s in ours.service]
