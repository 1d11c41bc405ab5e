"""The event loop the gateway runs on, chosen by GATEWAY_EVENT_LOOP."""

from __future__ import annotations

import asyncio
from collections.abc import Callable


def loop_factory(choice: str) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """The event loop the gateway runs on: uvloop's when chosen (or, for auto, installed)."""
    if choice == "asyncio":
        return None
    try:
        import uvloop
    except ImportError:
        if choice == "uvloop":
            raise ImportError(
                "GATEWAY_EVENT_LOOP=uvloop needs uvloop, which is not installed (none on Windows)"
            ) from None
        return None
    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory
