"""Helpers for the CLI tests: run our CLI and the real ``aws s3api`` as subprocesses, compare their
output, and serve a stand-in gateway over TLS (the real gateway serves plaintext only)."""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import os
import re
import subprocess
import sys
import threading
from collections.abc import Iterator, Mapping
from concurrent import futures
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from gateway.v1 import upload_service_pb2 as pb
from gateway.v1 import upload_service_pb2_grpc as pb_grpc

Result = subprocess.CompletedProcess[str]

#: Output members whose values legitimately differ between two uploads of the same data.
VOLATILE = frozenset({"UploadId", "LastModified", "Initiated", "Bucket", "Location"})


def gateway_cli(*args: str, endpoint: str | None, env: Mapping[str, str] | None = None) -> Result:
    """``python -m gateway <args> --endpoint-url <gateway>`` (no option when endpoint is None)."""
    command = [sys.executable, "-m", "gateway", *args]
    if endpoint is not None:
        command += ["--endpoint-url", endpoint]
    environment = {**os.environ, **(env or {})}
    return subprocess.run(
        command, capture_output=True, text=True, timeout=120, check=False, env=environment
    )


def aws_cli(
    *args: str,
    endpoint: str,
    max_attempts: int | None = None,
    env: Mapping[str, str] | None = None,
) -> Result:
    """``aws s3api <args> --endpoint-url <S3>`` with the aws CLI v1 of the test environment;
    ``env`` adds variables (another store's credentials)."""
    command = [sys.executable, "-m", "awscli", "s3api", *args, "--endpoint-url", endpoint]
    env = {**os.environ, **(env or {})}
    if max_attempts is not None:
        env["AWS_MAX_ATTEMPTS"] = str(max_attempts)
    return subprocess.run(
        command, capture_output=True, text=True, timeout=120, check=False, env=env
    )


def output_of(result: Result) -> Any:
    """The JSON a successful command printed."""
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout) if result.stdout else None


def masked(data: Any, volatile: frozenset[str] = VOLATILE) -> Any:
    """``data`` with the values of volatile members replaced, keys and their order kept."""
    if isinstance(data, dict):
        return {k: "<volatile>" if k in volatile else masked(v, volatile) for k, v in data.items()}
    if isinstance(data, list):
        return [masked(item, volatile) for item in data]
    return data


def same_json(ours: Result, theirs: Result, volatile: frozenset[str] = VOLATILE) -> None:
    """Both commands succeeded and printed the same JSON, same keys in the same order, equal
    values except for the volatile members."""
    ours_data, theirs_data = masked(output_of(ours), volatile), masked(output_of(theirs), volatile)
    assert ours_data == theirs_data
    assert json.dumps(ours_data) == json.dumps(theirs_data), "same keys, different order"


def mask_enum_values(skeleton: str, members: set[str]) -> str:
    """botocore's skeleton generator picks a random value for enum members; mask them."""
    pattern = r'("(?:' + "|".join(map(re.escape, sorted(members))) + r')": )"[^"]*"'
    return re.sub(pattern, r'\1"<enum>"', skeleton)


# --- a stand-in gateway over TLS -----------------------------------------------------------------


@dataclass(frozen=True)
class Certificate:
    """A self-signed certificate (also its own CA) and its key, PEM-encoded."""

    cert_pem: bytes
    key_pem: bytes

    @classmethod
    def self_signed(cls, *names: str) -> Certificate:
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])])
        now = dt.datetime.now(dt.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(days=1))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([_general_name(n) for n in names]), False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256())
        )
        key_pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        return cls(cert.public_bytes(serialization.Encoding.PEM), key_pem)

    def write(self, directory: Path) -> Path:
        path = directory / "ca.pem"
        path.write_bytes(self.cert_pem)
        return path


def _general_name(name: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        return x509.DNSName(name)


class StandInGateway(pb_grpc.UploadServiceServicer):
    """Answers AbortMultipartUpload; upload id "slow" answers only when released."""

    def __init__(self) -> None:
        self.release = threading.Event()

    def AbortMultipartUpload(
        self, request: pb.AbortMultipartUploadRequest, context: grpc.ServicerContext
    ) -> pb.AbortMultipartUploadResponse:
        if request.upload_id == "slow":
            self.release.wait(30)
        return pb.AbortMultipartUploadResponse(request_charged="requester")


@contextmanager
def stand_in_gateway(certificate: Certificate | None) -> Iterator[int]:
    """Serve :class:`StandInGateway` on a free port (TLS when given a certificate)."""
    servicer = StandInGateway()  # type: ignore[abstract]  # the other RPCs stay unimplemented
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    pb_grpc.add_UploadServiceServicer_to_server(servicer, server)
    if certificate is None:
        port = server.add_insecure_port("127.0.0.1:0")
    else:
        pairs = [(certificate.key_pem, certificate.cert_pem)]
        port = server.add_secure_port("127.0.0.1:0", grpc.ssl_server_credentials(pairs))
    server.start()
    try:
        yield port
    finally:
        servicer.release.set()
        server.stop(None).wait(10)


def parts_json(parts: Mapping[int, str]) -> str:
    """--multipart-upload JSON for part numbers and ETags."""
    return json.dumps({"Parts": [{"ETag": e, "PartNumber": n} for n, e in sorted(parts.items())]})
