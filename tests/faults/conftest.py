"""Fixtures of the fault suite: a fault proxy in front of the backend, gateways behind it."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.conftest import Backend
from tests.faults.proxy import FaultProxy, fault_proxy
from tests.helpers import GatewayThread

#: Short limits, so that every fault ends within seconds. Each test's bound on the caller's wait
#: is three times the limit that should fire: generous on a loaded machine, and far below what
#: the caller would wait if nothing fired (its own deadline).
LIMITS: dict[str, Any] = {
    "s3_stall_timeout": 2.0,
    "s3_pool_timeout": 1.0,
    "s3_read_timeout": 3.0,
    "idle_timeout": 30.0,
}


@pytest.fixture
def proxy(backend: Backend) -> Iterator[FaultProxy]:
    with fault_proxy(backend.endpoint) as running:
        yield running


@pytest.fixture
def behind_proxy(backend: Backend, proxy: FaultProxy) -> Iterator[Callable[..., GatewayThread]]:
    """Start gateways that reach the backend through ``proxy``, with :data:`LIMITS` unless
    changed; all stop after the test."""
    started: list[GatewayThread] = []

    def make(**changes: Any) -> GatewayThread:
        settings = backend.settings(s3_endpoint_url=proxy.url, **{**LIMITS, **changes})
        running = GatewayThread(settings, backend.credentials)
        started.append(running.__enter__())
        return running

    yield make
    # Connections the gateway gave up on while S3 did not read them close only once their
    # buffered bytes are gone: a store that closes them lets the gateway finish closing.
    proxy.drop_connections()
    for running in started:
        running.run(asyncio.sleep(0.1))
        running.__exit__(None, None, None)


@pytest.fixture
def gateway_behind_proxy(behind_proxy: Callable[..., GatewayThread]) -> GatewayThread:
    return behind_proxy()
