"""Server reflection: grpc.reflection.v1, which grpcurl and newer clients ask for first, and
grpc.reflection.v1alpha, which older ones ask for, answer the same; both are off with reflection."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import pytest
from google.protobuf import descriptor_pb2, message_factory
from grpc_reflection.v1alpha import reflection_pb2

from gateway.server.app import REFLECTION_V1, reflection_v1_file
from tests.helpers import GatewayThread

pytestmark = pytest.mark.backends("moto")

SERVICE = "gateway.v1.UploadService"
V1ALPHA = "grpc.reflection.v1alpha.ServerReflection"
VERSIONS = (REFLECTION_V1, V1ALPHA)


def messages(service: str) -> tuple[Any, Any]:
    """The request and response classes of ``service``'s version of the protocol."""
    if service == V1ALPHA:
        return reflection_pb2.ServerReflectionRequest, reflection_pb2.ServerReflectionResponse
    file = reflection_v1_file()
    return (
        message_factory.GetMessageClass(file.message_types_by_name["ServerReflectionRequest"]),
        message_factory.GetMessageClass(file.message_types_by_name["ServerReflectionResponse"]),
    )


def ask(channel: grpc.Channel, service: str, **request: Any) -> Any:
    """One ServerReflectionInfo exchange with ``service``, through grpc's synchronous API: the call
    is a stream, and grpc.aio may report INTERNAL for a stream the server refused while the client
    was still writing (grpc/grpc#36066)."""
    request_class, response_class = messages(service)
    call = channel.stream_stream(
        f"/{service}/ServerReflectionInfo",
        request_serializer=request_class.SerializeToString,
        response_deserializer=response_class.FromString,
    )
    (response,) = list(call(iter([request_class(**request)]), timeout=5))
    return response


def listed(address: str, service: str) -> list[str]:
    with grpc.insecure_channel(address) as channel:
        response = ask(channel, service, list_services="")
    return [s.name for s in response.list_services_response.service]


def described(address: str, service: str, symbol: str) -> descriptor_pb2.FileDescriptorProto:
    """The file declaring ``symbol``, as ``service`` describes it (its dependencies follow)."""
    with grpc.insecure_channel(address) as channel:
        response = ask(channel, service, file_containing_symbol=symbol)
    assert response.WhichOneof("message_response") == "file_descriptor_response", response
    first = response.file_descriptor_response.file_descriptor_proto[0]
    return descriptor_pb2.FileDescriptorProto.FromString(first)


@pytest.mark.parametrize("service", VERSIONS)
async def test_both_versions_list_the_same_services(
    moto_gateway: GatewayThread, service: str
) -> None:
    services = await asyncio.to_thread(listed, moto_gateway.address, service)
    assert set(services) == {SERVICE, "grpc.health.v1.Health", *VERSIONS}


@pytest.mark.parametrize("service", VERSIONS)
async def test_both_versions_describe_the_upload_service(
    moto_gateway: GatewayThread, service: str
) -> None:
    file = await asyncio.to_thread(described, moto_gateway.address, service, SERVICE)
    assert file.package == "gateway.v1"
    assert "UploadService" in [s.name for s in file.service]


async def test_v1_describes_itself(moto_gateway: GatewayThread) -> None:
    """grpcurl describe grpc.reflection.v1.ServerReflection: v1's own file, its types renamed."""
    file = await asyncio.to_thread(described, moto_gateway.address, REFLECTION_V1, REFLECTION_V1)
    assert file.name == "grpc/reflection/v1/reflection.proto"
    assert file.package == "grpc.reflection.v1"
    assert not file.options.deprecated
    (method,) = file.service[0].method
    assert method.input_type == ".grpc.reflection.v1.ServerReflectionRequest"
    assert method.client_streaming and method.server_streaming
    alpha = descriptor_pb2.FileDescriptorProto()
    reflection_pb2.DESCRIPTOR.CopyToProto(alpha)
    # The same messages, field for field: one servicer answers both versions.
    for ours, theirs in zip(file.message_type, alpha.message_type, strict=True):
        assert ours.name == theirs.name
        assert [(f.name, f.number, f.type) for f in ours.field] == [
            (f.name, f.number, f.type) for f in theirs.field
        ]


def refused_code(address: str, service: str) -> grpc.StatusCode:
    try:
        listed(address, service)
    except grpc.RpcError as error:
        code: grpc.StatusCode = error.code()  # type: ignore[attr-defined]
        return code
    return grpc.StatusCode.OK


async def test_both_versions_are_off_without_reflection(make_gateway: Any) -> None:
    running: GatewayThread = make_gateway(reflection=False)
    for service in VERSIONS:
        code = await asyncio.to_thread(refused_code, running.address, service)
        assert code == grpc.StatusCode.UNIMPLEMENTED, service
