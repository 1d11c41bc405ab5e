"""The gateway's side of a command: the channel, and one call of the command's RPC with S3
parameters, answered with the dict the aws CLI would print."""

from __future__ import annotations

import argparse
import logging
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, cast

import grpc
from google.protobuf import text_format
from google.protobuf.message import Message

from gateway import convert
from gateway.cli.connection import open_channel
from gateway.cli.s3api.body import open_body, part_messages, remaining_size, resolve_part_checksum
from gateway.cli.s3api.model import Command
from gateway.cli.s3api.output import format_timestamp
from gateway.cli.s3api.params import build_request
from gateway.exits import ConnectionFailure
from gateway.v1 import upload_service_pb2 as pb
from gateway.v1 import upload_service_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)

_SERVICE_NAME = pb.DESCRIPTOR.services_by_name["UploadService"].full_name
#: The fields ``--debug`` never shows.
_REDACTED_FIELDS = frozenset({"sse_customer_key", "copy_source_sse_customer_key"})


@dataclass
class Gateway:
    """A channel to the gateway and the calls of one command."""

    command: Command
    channel: grpc.Channel
    url: str
    timeout: float | None
    stub: pb_grpc.UploadServiceStub = field(init=False)

    def __post_init__(self) -> None:
        self.stub = pb_grpc.UploadServiceStub(self.channel)

    @classmethod
    def connect(cls, args: argparse.Namespace, command: Command) -> Gateway:
        connect_timeout = args.cli_connect_timeout or None
        channel, endpoint = open_channel(args, connect_timeout)
        url = f"{endpoint.url}/{_SERVICE_NAME}/{command.operation}"
        log.debug("Connecting to %s (%s)", endpoint.target, "TLS" if endpoint.tls else "plaintext")
        gateway = cls(command, channel, url, args.cli_read_timeout or None)
        gateway.wait_until_connected(connect_timeout)
        return gateway

    def __enter__(self) -> Gateway:
        return self

    def __exit__(self, *exc: object) -> None:
        self.channel.close()

    def wait_until_connected(self, timeout: float | None) -> None:
        """Wait for the connection to succeed or fail. A failure is left to the call to report,
        with gRPC's reason; only a connection that neither succeeds nor fails in time ends here."""
        settled = threading.Event()
        states: list[grpc.ChannelConnectivity] = []

        def watch(state: grpc.ChannelConnectivity) -> None:
            if state in (
                grpc.ChannelConnectivity.READY,
                grpc.ChannelConnectivity.TRANSIENT_FAILURE,
            ):
                states.append(state)
                settled.set()

        self.channel.subscribe(watch, try_to_connect=True)
        try:
            settled.wait(timeout)
        finally:
            self.channel.unsubscribe(watch)
        if not states:
            self.channel.close()
            raise ConnectionFailure(f'Connect timeout on endpoint URL: "{self.url}"')
        log.debug("Channel state: %s", states[0].name)

    def call(self, params: Mapping[str, Any]) -> dict[str, Any]:
        """One call of the command's RPC with S3 parameters; returns the output dict."""
        if self.command.operation == "UploadPart":
            response = self._upload_part(dict(params))
        else:
            request = build_request(self.command, params)
            log.debug("Calling %s with %s", self.url, _loggable(request))
            method = getattr(self.stub, self.command.operation)
            response = method(request, timeout=self.timeout)
        log.debug("Response: %s", _loggable(response))
        return convert.to_response(response, self.command.operation, format_timestamp)

    def _upload_part(self, params: dict[str, Any]) -> Message:
        body = params.pop("Body", None)
        with open_body(body) as stream:
            resolve_part_checksum(params, stream)
            header = cast(pb.UploadPartHeader, build_request(self.command, params))
            if not header.HasField("content_length"):
                header.content_length = remaining_size(stream)
            log.debug("Calling %s with header %s", self.url, _loggable(header))
            response: pb.UploadPartResponse = self.stub.UploadPart(
                part_messages(header, stream), timeout=self.timeout
            )
        return response


def _loggable(message: Message) -> str:
    """The message on one line, SSE-C keys replaced."""
    shown = type(message)()
    shown.CopyFrom(message)
    for fd in shown.DESCRIPTOR.fields:
        if fd.name in _REDACTED_FIELDS and getattr(shown, fd.name):
            setattr(shown, fd.name, "*** redacted ***")
    return text_format.MessageToString(shown, as_one_line=True)
