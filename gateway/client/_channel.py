"""The one way to open a channel to the gateway: options, TLS credentials, the bearer token."""

from __future__ import annotations

import asyncio
import os
from typing import Any, Literal, Protocol, TypeVar, overload

import grpc

from gateway import bearer
from gateway.pem import load_ca, load_pair
from gateway.units import MiB

#: The largest message a channel sends. It must be at least the largest message a client sends:
#: UploadPart's ``data`` messages carry :data:`CHUNK_SIZE` (1 MiB) plus a few bytes, and the
#: largest unary request, a CompleteMultipartUpload of 10,000 parts, stays under 2 MiB. The
#: gateway decides what it accepts (4 MiB + 64 KiB unless GATEWAY_MAX_MESSAGE_SIZE says more), so
#: the client does not undercut a gateway configured higher: 16 MiB, what the CLI always allowed,
#: only stops a runaway message before it goes on the wire.
MAX_SEND_MESSAGE_SIZE = 16 * MiB
_OPTIONS: list[tuple[str, Any]] = [("grpc.max_send_message_length", MAX_SEND_MESSAGE_SIZE)]

Path = str | os.PathLike[str]


def channel_credentials(
    ca_bundle: Path | None = None,
    client_cert: Path | None = None,
    client_key: Path | None = None,
    *,
    root_certificates: bytes | None = None,
) -> grpc.ChannelCredentials:
    """Client TLS credentials: trust ``root_certificates`` (PEM bytes, taken as they are) or the
    CAs of the ``ca_bundle`` file, else the system's roots; present ``client_cert`` with
    ``client_key`` (PEM files, the key unencrypted) for mutual TLS.

    Raises ValueError when both ``ca_bundle`` and ``root_certificates`` are given or only one of
    ``client_cert`` and ``client_key``, and :class:`gateway.pem.TLSConfigError` (a ValueError)
    when a file cannot be read, does not parse, or the key is not the certificate's."""
    if ca_bundle is not None and root_certificates is not None:
        raise ValueError("ca_bundle and root_certificates exclude each other")
    if (client_cert is None) != (client_key is None):
        raise ValueError("client_cert and client_key go together")
    roots = root_certificates if ca_bundle is None else load_ca(os.fspath(ca_bundle))
    cert_pem = key_pem = None
    if client_cert is not None and client_key is not None:
        cert_pem, key_pem = load_pair(os.fspath(client_cert), os.fspath(client_key))
    return grpc.ssl_channel_credentials(
        root_certificates=roots, private_key=key_pem, certificate_chain=cert_pem
    )


def check_arguments(
    *,
    tls: bool,
    ca_bundle: Path | None,
    client_cert: Path | None,
    client_key: Path | None,
    root_certificates: bytes | None,
) -> None:
    """Raise ValueError for the combinations :func:`open_channel` refuses; nothing is read."""
    if (client_cert is None) != (client_key is None):
        raise ValueError("client_cert and client_key go together")
    if client_cert is not None and not tls:
        raise ValueError("a client certificate (mutual TLS) needs tls=True")
    if ca_bundle is not None and root_certificates is not None:
        raise ValueError("ca_bundle and root_certificates exclude each other")


@overload
def open_channel(
    target: str,
    *,
    tls: bool = False,
    ca_bundle: Path | None = None,
    client_cert: Path | None = None,
    client_key: Path | None = None,
    root_certificates: bytes | None = None,
    server_name: str | None = None,
    token: str | None = None,
    aio: Literal[True] = True,
) -> grpc.aio.Channel: ...


@overload
def open_channel(
    target: str,
    *,
    tls: bool = False,
    ca_bundle: Path | None = None,
    client_cert: Path | None = None,
    client_key: Path | None = None,
    root_certificates: bytes | None = None,
    server_name: str | None = None,
    token: str | None = None,
    aio: Literal[False],
) -> grpc.Channel: ...


def open_channel(
    target: str,
    *,
    tls: bool = False,
    ca_bundle: Path | None = None,
    client_cert: Path | None = None,
    client_key: Path | None = None,
    root_certificates: bytes | None = None,
    server_name: str | None = None,
    token: str | None = None,
    aio: bool = True,
) -> grpc.aio.Channel | grpc.Channel:
    """A new channel to the gateway at ``target`` (``host:port``, any grpc target): a
    ``grpc.aio.Channel``, or with ``aio=False`` a synchronous ``grpc.Channel``.

    - Plaintext unless ``tls``. With ``tls``, the server's certificate is verified against
      ``root_certificates`` (PEM bytes, used as given), else the CAs of the ``ca_bundle`` PEM
      file, else the system's roots; ``server_name``, when given, is the name it must be issued
      for (and the SNI) instead of ``target``'s host (``grpc.ssl_target_name_override``).
      Without ``tls`` these three are ignored.
    - ``client_cert`` and ``client_key`` (PEM files, the key unencrypted; both or neither) are
      presented for mutual TLS and need ``tls=True``.
    - ``token``, when given, travels as ``authorization: Bearer <token>`` metadata with every
      call made on the channel, after any metadata the call passes itself. The channel is then a
      thin wrapper around grpc's that adds the entry where each call is made; its calls are
      grpc's own call objects. (Not an interceptor: an intercepted ``grpc.aio`` client-streaming
      call proxies ``write()`` through a queue and a task, which hides when the gateway ended an
      UploadPart early, see grpc/grpc#36066 in :mod:`gateway.client`.)
    - Every channel gets the same options: ``grpc.max_send_message_length`` of
      :data:`MAX_SEND_MESSAGE_SIZE` (16 MiB), plus the name override above.

    Everything is checked before anything is opened. Raises ValueError for a bad combination
    (cert without key, a client certificate without ``tls``, both ``ca_bundle`` and
    ``root_certificates``) or a token that is empty or not an RFC 6750 bearer token (the message
    never holds it), and :class:`gateway.pem.TLSConfigError` (a ValueError) when a PEM file
    cannot be read, does not parse or the key is not the certificate's.
    """
    check_arguments(
        tls=tls,
        ca_bundle=ca_bundle,
        client_cert=client_cert,
        client_key=client_key,
        root_certificates=root_certificates,
    )
    metadata = bearer.metadata(token)
    options = list(_OPTIONS)
    channel: grpc.aio.Channel | grpc.Channel
    if not tls:
        channel = (grpc.aio if aio else grpc).insecure_channel(target, options)
    else:
        credentials = channel_credentials(
            ca_bundle, client_cert, client_key, root_certificates=root_certificates
        )
        if server_name is not None:
            options.append(("grpc.ssl_target_name_override", server_name))
        channel = (grpc.aio if aio else grpc).secure_channel(target, credentials, options)
    return with_metadata(channel, metadata) if metadata else channel


@overload
def with_metadata(channel: grpc.aio.Channel, metadata: bearer.Metadata) -> grpc.aio.Channel: ...


@overload
def with_metadata(channel: grpc.Channel, metadata: bearer.Metadata) -> grpc.Channel: ...


def with_metadata(
    channel: grpc.aio.Channel | grpc.Channel, metadata: bearer.Metadata
) -> grpc.aio.Channel | grpc.Channel:
    """``channel``, every call of which also sends ``metadata``."""
    if isinstance(channel, grpc.aio.Channel):
        return _AioMetadataChannel(channel, metadata)
    return _MetadataChannel(channel, metadata)


class _MetadataCallable:
    """A multi-callable (sync or aio, any arity) whose calls also send fixed metadata."""

    def __init__(self, inner: Any, metadata: bearer.Metadata) -> None:
        self._inner = inner
        self._metadata = metadata

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._inner!r}, <{len(self._metadata)} hidden>)"

    def __call__(
        self, request: Any = None, timeout: float | None = None, *args: Any, **kw: Any
    ) -> Any:
        return self._inner(request, **self._keywords(timeout, *args, **kw))

    def with_call(
        self, request: Any = None, timeout: float | None = None, *args: Any, **kw: Any
    ) -> Any:
        """Synchronous unary-response calls only, as grpc's."""
        return self._inner.with_call(request, **self._keywords(timeout, *args, **kw))

    def future(
        self, request: Any = None, timeout: float | None = None, *args: Any, **kw: Any
    ) -> Any:
        """Synchronous unary-response calls only, as grpc's."""
        return self._inner.future(request, **self._keywords(timeout, *args, **kw))

    def _keywords(
        self,
        timeout: float | None,
        metadata: Any = None,
        credentials: grpc.CallCredentials | None = None,
        wait_for_ready: bool | None = None,
        compression: grpc.Compression | None = None,
    ) -> dict[str, Any]:
        """A call's arguments after the request, by keyword (grpc.aio takes them no other way),
        with the fixed metadata after the call's own."""
        return {
            "timeout": timeout,
            "metadata": (*(metadata or ()), *self._metadata),
            "credentials": credentials,
            "wait_for_ready": wait_for_ready,
            "compression": compression,
        }


class _MetadataMethods:
    """The call factories of a channel whose every call also sends fixed metadata."""

    def __init__(self, channel: Any, metadata: bearer.Metadata) -> None:
        self._channel = channel
        self._metadata = metadata

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._channel!r}, <{len(self._metadata)} hidden>)"

    def unary_unary(self, method: str, *args: Any, **kwargs: Any) -> Any:
        return self._wrap("unary_unary", method, args, kwargs)

    def unary_stream(self, method: str, *args: Any, **kwargs: Any) -> Any:
        return self._wrap("unary_stream", method, args, kwargs)

    def stream_unary(self, method: str, *args: Any, **kwargs: Any) -> Any:
        return self._wrap("stream_unary", method, args, kwargs)

    def stream_stream(self, method: str, *args: Any, **kwargs: Any) -> Any:
        return self._wrap("stream_stream", method, args, kwargs)

    def _wrap(self, kind: str, method: str, args: Any, kwargs: Any) -> _MetadataCallable:
        factory = getattr(self._channel, kind)
        return _MetadataCallable(factory(method, *args, **kwargs), self._metadata)


class _MetadataChannel(_MetadataMethods, grpc.Channel):
    """A synchronous channel whose every call also sends fixed metadata."""

    def subscribe(self, callback: Any, try_to_connect: bool = False) -> None:
        self._channel.subscribe(callback, try_to_connect=try_to_connect)

    def unsubscribe(self, callback: Any) -> None:
        self._channel.unsubscribe(callback)

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> _MetadataChannel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _AioMetadataChannel(_MetadataMethods, grpc.aio.Channel):
    """A ``grpc.aio`` channel whose every call also sends fixed metadata."""

    def get_state(self, try_to_connect: bool = False) -> grpc.ChannelConnectivity:
        state: grpc.ChannelConnectivity = self._channel.get_state(try_to_connect)
        return state

    async def wait_for_state_change(self, last_observed_state: grpc.ChannelConnectivity) -> None:
        await self._channel.wait_for_state_change(last_observed_state)

    async def channel_ready(self) -> None:
        await self._channel.channel_ready()

    async def close(self, grace: float | None = None) -> None:
        await self._channel.close(grace)

    async def __aenter__(self) -> _AioMetadataChannel:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close(None)


M = TypeVar("M", contravariant=True)


class _Writable(Protocol[M]):
    """A grpc.aio call the client streams messages on (UploadPart, WriteObject)."""

    def done(self) -> bool: ...

    async def write(self, request: M) -> None: ...


async def write_message(call: _Writable[M], message: M) -> bool:
    """Write ``message`` on a client stream; False when the call has already ended (the gateway
    answered early: reading the call gives its status)."""
    if call.done():
        return False
    try:
        await call.write(message)
    except asyncio.InvalidStateError:  # finished between the check and the write
        return False
    return True
