"""Assembles the gateway: the gRPC server, health and reflection, the S3 client, signals.

:class:`Gateway` owns everything with a lifetime (the optional embedded S3, the shared S3 client,
the gRPC server) and releases it in reverse order on :meth:`Gateway.stop`. :func:`run` is what
``s3-upload-gateway serve`` calls: start, wait for SIGTERM/SIGINT, drain, stop; a second signal
stops at once. A ``serve --workers`` worker drains once however many signals arrive, and cancels
in-flight calls only on SIGUSR1 (see :mod:`gateway.server.workers`).

Starting fails in one sentence, never a traceback: an address the gateway cannot listen on raises
:class:`CannotListen` (an ``OSError``), and an AWS configuration botocore refuses (an unknown
``AWS_PROFILE``, a config file it cannot parse, a ``credential_process`` that fails…) raises
:class:`gateway.config.ConfigError`, like any other setting the gateway cannot start with.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import signal
import socket
from collections.abc import Callable, Iterable, Iterator

import grpc
from botocore.exceptions import BotoCoreError, ConfigParseError, ProfileNotFound
from google.protobuf import descriptor_pb2, descriptor_pool
from google.protobuf.descriptor import FileDescriptor
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2, reflection_pb2_grpc

from gateway.config import ConfigError, Settings, listens_on_loopback
from gateway.logs import FIELDS, cap_header_loggers
from gateway.security.guard import Guard
from gateway.security.tls import ServerTLS
from gateway.security.write_tokens import KeySet, Signer, WriteKeys
from gateway.server.admission import Admission
from gateway.server.embedded import EMBEDDED_CREDENTIALS, embedded_s3, wanted
from gateway.server.metrics import Metrics, MetricsInterceptor
from gateway.server.s3 import S3, open_s3
from gateway.server.service import UploadService, add_to_server
from gateway.v1 import upload_service_pb2 as pb

log = logging.getLogger(__name__)

SERVICE_NAME: str = pb.DESCRIPTOR.services_by_name["UploadService"].full_name
#: Server reflection's stable version, which grpcurl and other clients ask for first; the gateway
#: serves it next to v1alpha (reflection.SERVICE_NAME), which older clients ask for.
REFLECTION_V1 = "grpc.reflection.v1.ServerReflection"
#: The file that declares it, as grpc-proto names it.
REFLECTION_V1_FILE = "grpc/reflection/v1/reflection.proto"


class Gateway:
    """A running gateway. ``await start()``, then ``await stop()``.

    AWS credentials come from the standard chain unless ``credentials`` (access key id, secret
    key) are given: the embedded S3 uses fixed ones, and tests use a store's own.
    """

    def __init__(
        self,
        settings: Settings,
        credentials: tuple[str, str] | None = None,
        *,
        reuse_port: bool = False,
    ) -> None:
        self.settings = settings
        self._credentials = credentials
        #: Share the listen port with other processes (SO_REUSEPORT): ``serve --workers N``.
        self.reuse_port = reuse_port
        self.port = 0
        self.s3_endpoint_url = ""
        self.s3: S3 | None = None
        self._stack = contextlib.AsyncExitStack()
        self._server: grpc.aio.Server | None = None
        self._service: UploadService | None = None
        self._health = health.aio.HealthServicer()  # type: ignore[attr-defined]
        self.metrics = Metrics()
        self._hurry = asyncio.Event()
        #: The port /metrics is served on (0 when disabled).
        self.metrics_port = 0
        #: The plaintext health probe port (0 when disabled).
        self.health_port = 0
        self.guard: Guard | None = None

    async def start(self) -> None:
        settings = self.settings
        credentials = self._credentials
        cap_header_loggers()
        try:
            with aws_configuration():
                embedded = await wanted(settings)
            if embedded:
                endpoint = self._stack.enter_context(embedded_s3(settings.embedded_bucket))
                settings = settings.replace(s3_endpoint_url=endpoint)
                credentials = EMBEDDED_CREDENTIALS
            with aws_configuration():
                s3 = self.s3 = await self._stack.enter_async_context(
                    open_s3(settings, self.metrics, credentials)
                )
            self.s3_endpoint_url = s3.endpoint_url
            self.guard = Guard(settings)
            self._watch_files(self.guard)
            admission = Admission(settings, self.metrics)
            signer = self._write_token_signer(settings, embedded)
            service = self._service = UploadService(
                s3, settings, self.metrics, self.guard, admission, signer
            )
            self._server = self._build_server(settings, service)
            self.port = self._add_port(settings)
            if settings.health_address:
                self.health_port = self._listen(
                    "health", self._server.add_insecure_port, settings.health_address
                )
            if settings.metrics_address:
                self._serve_metrics(settings.metrics_address)
            await self._server.start()
        except BaseException:
            await self._stack.aclose()
            raise
        for name in ("", SERVICE_NAME):
            await self._health.set(name, health_pb2.HealthCheckResponse.SERVING)
        log.info(
            "serving gateway.v1.UploadService on %s (port %d), S3 endpoint %s",
            settings.listen_address,
            self.port,
            self.s3_endpoint_url,
            extra={FIELDS: {"grpc_port": self.port, "metrics_port": self.metrics_port}},
        )

    def _write_token_signer(self, settings: Settings, embedded: bool) -> Signer | None:
        """The write token keys: the key file's, else with the embedded S3 a key of this
        process (its uploads end with the process too), else none: resumable writes off."""
        if settings.write_token_keys_file:
            keys = WriteKeys(settings.write_token_keys_file)
            self.metrics.watch("write_token_keys", keys)
            return keys
        if embedded:
            return KeySet.of_process()
        return None

    def _watch_files(self, guard: Guard) -> None:
        """Count the reloads of the token and policy files in the metrics."""
        if guard.tokens is not None:
            self.metrics.watch("tokens", guard.tokens)
        if guard.policy_file is not None:
            self.metrics.watch("policy", guard.policy_file)

    def _add_port(self, settings: Settings) -> int:
        """Listen with TLS when certificate files are configured, else in plaintext."""
        assert self._server is not None
        if settings.tls_cert_file is None or settings.tls_key_file is None:
            if warning := plaintext_warning(settings):
                log.warning("%s", warning)
            return self._listen("gRPC", self._server.add_insecure_port, settings.listen_address)
        tls = ServerTLS(
            settings.tls_cert_file,
            settings.tls_key_file,
            settings.tls_client_ca_file,
            require_client_cert=settings.tls_client_ca_file is not None,
        )
        self.metrics.watch("tls", tls)
        server, credentials = self._server, tls.credentials()
        return self._listen(
            "gRPC",
            lambda address: server.add_secure_port(address, credentials),
            settings.listen_address,
        )

    def _listen(self, what: str, add_port: Callable[[str], int], address: str) -> int:
        """Add a port of the gRPC server; raises CannotListen. The address is tried first with a
        socket of our own: grpc-core would log its failure to stderr before raising."""
        if (problem := unusable(address, self.reuse_port)) is not None:
            raise CannotListen(what, address, problem)
        try:
            return add_port(address)
        except RuntimeError:  # grpc's "Failed to bind to address": lost a race, or grpc's reason
            raise CannotListen(what, address, None) from None

    def _serve_metrics(self, address: str) -> None:
        try:
            server = self.metrics.serve(address)
        except OSError as exc:
            raise CannotListen("metrics", address, exc) from None
        self._stack.callback(server.server_close)
        self._stack.callback(server.shutdown)
        self.metrics_port = server.server_port

    def _build_server(self, settings: Settings, service: UploadService) -> grpc.aio.Server:
        server = grpc.aio.server(
            interceptors=[MetricsInterceptor(self.metrics)],
            options=[
                ("grpc.max_receive_message_length", settings.max_message_size),
                ("grpc.max_send_message_length", settings.max_message_size),
                ("grpc.so_reuseport", int(self.reuse_port)),
                # A fixed per-stream window bounds what a caller can send ahead of the relay;
                # BDP probing would grow it with the link's throughput, and memory with it.
                ("grpc.http2.bdp_probe", 0),
                ("grpc.http2.lookahead_bytes", settings.stream_window),
            ],
        )
        add_to_server(service, server)
        self.metrics.initialize_grpc(SERVICE_NAME, _method_types())
        services = [SERVICE_NAME]
        if settings.health:
            health_pb2_grpc.add_HealthServicer_to_server(self._health, server)
            services.append(health.SERVICE_NAME)
        if settings.reflection:
            enable_reflection(services, server)
        return server

    async def stop(self, grace: float | None = None, drain_delay: float = 0) -> None:
        """Report NOT_SERVING, keep accepting calls for ``drain_delay`` seconds (load balancers
        and clients see NOT_SERVING and go elsewhere), then refuse new calls, let in-flight ones
        finish within ``grace``, cancel the rest (their upstream requests are aborted, nothing
        is committed), and release everything."""
        await self._health.enter_graceful_shutdown()
        if drain_delay > 0:
            log.info("draining: NOT_SERVING for %.1f s before refusing new calls", drain_delay)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._hurry.wait(), drain_delay)
        if self._server is not None:
            await self._server.stop(self.settings.shutdown_grace if grace is None else grace)
        if self._service is not None:
            await self._service.settle()
        await self._stack.aclose()

    async def cancel_calls(self) -> None:
        """Cancel every in-flight call now (upstream requests are aborted with them), and cut a
        drain in progress short."""
        self._hurry.set()
        if self._server is not None:
            await self._server.stop(0)


def enable_reflection(services: Iterable[str], server: grpc.aio.Server) -> None:
    """Serve server reflection of ``services`` (and of itself), as grpc.reflection.v1 and as
    grpc.reflection.v1alpha.

    grpcio-reflection implements v1alpha only (grpc/grpc#38576). v1 is the same protocol under
    another package: the same messages, field for field, so one servicer answers both, with
    v1alpha's messages on the wire. v1's own descriptors join the default pool, so that a client can
    describe the service it reflects through.
    """
    reflection_v1_file()
    names = (*services, REFLECTION_V1, reflection.SERVICE_NAME)
    servicer = reflection.aio.ReflectionServicer(names)  # type: ignore[attr-defined]
    reflection_pb2_grpc.add_ServerReflectionServicer_to_server(servicer, server)
    method = grpc.stream_stream_rpc_method_handler(
        servicer.ServerReflectionInfo,
        request_deserializer=reflection_pb2.ServerReflectionRequest.FromString,
        response_serializer=reflection_pb2.ServerReflectionResponse.SerializeToString,
    )
    v1 = grpc.method_handlers_generic_handler(REFLECTION_V1, {"ServerReflectionInfo": method})
    server.add_generic_rpc_handlers((v1,))


def reflection_v1_file() -> FileDescriptor:
    """grpc/reflection/v1/reflection.proto, added to the default descriptor pool on first use:
    v1alpha's file with its package, and every type named in it, renamed, and not deprecated."""
    pool = descriptor_pool.Default()
    with contextlib.suppress(KeyError):
        return pool.FindFileByName(REFLECTION_V1_FILE)
    proto = descriptor_pb2.FileDescriptorProto()
    reflection_pb2.DESCRIPTOR.CopyToProto(proto)
    old, new = f".{proto.package}.", f".{REFLECTION_V1.rpartition('.')[0]}."
    proto.name = REFLECTION_V1_FILE
    proto.package = new.strip(".")
    proto.options.java_package = proto.options.java_package.replace("v1alpha", "v1")
    proto.options.go_package = proto.options.go_package.replace("v1alpha", "v1")
    proto.options.ClearField("deprecated")
    for message in proto.message_type:
        for field in message.field:
            if field.HasField("type_name"):
                field.type_name = field.type_name.replace(old, new, 1)
    for service in proto.service:
        for rpc in service.method:
            rpc.input_type = rpc.input_type.replace(old, new, 1)
            rpc.output_type = rpc.output_type.replace(old, new, 1)
    pool.AddSerializedFile(proto.SerializeToString())
    return pool.FindFileByName(REFLECTION_V1_FILE)


#: The setting of each address the gateway listens on: its flag and variable name a failure.
_ADDRESS_SETTINGS = {
    "gRPC": ("--listen-address", "GATEWAY_LISTEN_ADDRESS"),
    "health": ("--health-address", "GATEWAY_HEALTH_ADDRESS"),
    "metrics": ("--metrics-address", "GATEWAY_METRICS_ADDRESS"),
}


class CannotListen(OSError):
    """An address the gateway cannot listen on, said in one sentence: which port, which setting
    names it, why, and what to do."""

    def __init__(self, what: str, address: str, problem: OSError | None) -> None:
        flag, variable = _ADDRESS_SETTINGS[what]
        if problem is None:
            why = "gRPC could not bind it (GRPC_VERBOSITY=debug says why)"
        elif problem.errno == errno.EADDRINUSE:
            why = "the address is already in use; stop what listens there or choose another address"
        elif problem.errno == errno.EADDRNOTAVAIL:
            why = "the address is not one of this host's; choose another address"
        elif problem.errno == errno.EACCES:
            why = "permission denied (ports below 1024 need privileges); choose another port"
        else:
            why = problem.strerror or str(problem)
        super().__init__(f"cannot listen on {address} ({what}, {flag} or {variable}): {why}")
        self.address = address


def unusable(address: str, reuse_port: bool = False) -> OSError | None:
    """Why a TCP ``host:port`` cannot be listened on (in use, not this host's…), or None when one
    of the addresses it resolves to can be bound, as grpc needs, or when it cannot tell (port 0,
    a name that does not resolve, a ``unix:`` address: grpc reports those itself)."""
    host, _, port = address.rpartition(":")
    if not port.isdigit() or int(port) == 0 or host.startswith("unix"):
        return None
    try:
        found = socket.getaddrinfo(
            host.strip("[]") or None, int(port), type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
    except OSError:
        return None
    problem: OSError | None = None
    for family, kind, proto, _, sockaddr in found:
        try:
            with socket.socket(family, kind, proto) as probe:
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                if reuse_port:
                    probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
                probe.bind(sockaddr)
        except OSError as exc:
            problem = problem or exc
        else:
            return None
    return problem


@contextlib.contextmanager
def aws_configuration() -> Iterator[None]:
    """Turn what botocore raises for an AWS configuration it cannot use (a profile that does not
    exist, a config file it cannot parse, a credential_process that fails or does not exist,
    partial credentials, a malformed region…) into a ConfigError of one sentence. These come
    while the S3 clients are made, before the gateway serves: nothing is sent to S3 yet."""
    try:
        yield
    except ProfileNotFound as exc:
        config = os.environ.get("AWS_CONFIG_FILE", "~/.aws/config")
        shared = os.environ.get("AWS_SHARED_CREDENTIALS_FILE", "~/.aws/credentials")
        raise ConfigError(
            f"AWS configuration: {exc}: name a profile of {config} or {shared} in AWS_PROFILE, "
            "or unset it"
        ) from None
    except ConfigParseError as exc:
        raise ConfigError(f"AWS configuration: {exc}: fix its syntax") from None
    except BotoCoreError as exc:
        # One line, even when a credential_process wrote several (or nothing) to stderr.
        text = " ".join(str(exc).split())
        if text.endswith(":"):
            text += " no reason given"
        raise ConfigError(f"AWS configuration: {text}") from None
    except OSError as exc:
        command = _credential_process(exc)
        if command is None:
            raise
        raise ConfigError(
            f"AWS configuration: cannot run the credential_process {command}: {exc.strerror or exc}"
        ) from None


def _credential_process(error: OSError) -> str | None:
    """The program of the credential_process that could not be started, when that is what
    ``error`` is (botocore runs it from its ``_retrieve_credentials_using``); only the program:
    its arguments may hold secrets."""
    trace = error.__traceback__
    while trace is not None:
        frame = trace.tb_frame
        if frame.f_code.co_name == "_retrieve_credentials_using":
            command = str(frame.f_locals.get("credential_process") or "")
            return command.split()[0] if command.split() else "(empty)"
        trace = trace.tb_next
    return None


def plaintext_warning(settings: Settings) -> str | None:
    """What to warn about when the gRPC port serves plaintext beyond loopback."""
    if settings.tls_cert_file is not None or listens_on_loopback(settings.listen_address):
        return None
    return (
        f"serving PLAINTEXT gRPC on {settings.listen_address} (GATEWAY_PLAINTEXT=true): tokens "
        "and data cross the network unencrypted unless a mesh or proxy encrypts them"
    )


def _method_types() -> dict[str, str]:
    """go-grpc-prometheus's grpc_type of every UploadService method."""
    service = pb.DESCRIPTOR.services_by_name["UploadService"]
    kinds = {(False, False): "unary", (True, False): "client_stream", (True, True): "bidi_stream"}
    return {m.name: kinds[m.client_streaming, m.server_streaming] for m in service.methods}


async def run(
    settings: Settings,
    *,
    reuse_port: bool = False,
    started: Callable[[Gateway], None] | None = None,
    cancel_signal: signal.Signals | None = None,
) -> None:
    """Serve until SIGTERM or SIGINT, then drain; a second signal cancels in-flight calls.

    With ``cancel_signal`` (a ``serve --workers`` worker), SIGTERM and SIGINT only ever drain,
    however many arrive, and ``cancel_signal`` cancels in-flight calls: a worker's signals come
    from its supervisor, and the supervisor's death alone can deliver several SIGTERMs (see
    :mod:`gateway.server.workers`), which must not count as an operator's second signal.

    ``started`` is called once the gateway serves (a ``serve --workers`` worker reports its ports
    with it); an exception before then means the gateway could not start."""
    gateway = Gateway(settings, reuse_port=reuse_port)
    loop = asyncio.get_running_loop()
    stopping = asyncio.Event()
    hurry: set[asyncio.Task[None]] = set()

    def cancel_calls(reason: str) -> None:
        log.warning("%s: cancelling in-flight calls", reason)
        hurry.add(loop.create_task(gateway.cancel_calls()))
        stopping.set()

    def on_stop_signal(signum: signal.Signals) -> None:
        if not stopping.is_set():
            stopping.set()
        elif cancel_signal is None:
            cancel_calls("second signal")
        else:
            log.info("%s again: still draining (%s cancels)", signum.name, cancel_signal.name)

    handled = [signal.SIGTERM, signal.SIGINT]
    for sig in handled:
        loop.add_signal_handler(sig, on_stop_signal, sig)
    if cancel_signal is not None:
        loop.add_signal_handler(cancel_signal, cancel_calls, cancel_signal.name)
        handled.append(cancel_signal)
    try:
        await gateway.start()
        if started is not None:
            started(gateway)
        await stopping.wait()
        log.info("shutting down: in-flight calls get up to %.0f s", settings.shutdown_grace)
        await gateway.stop(drain_delay=settings.drain_delay)
    finally:
        for sig in handled:
            loop.remove_signal_handler(sig)
    log.info("stopped")
