"""Which event loop a relay process runs on: uvloop by default, asyncio's own on request.

uvloop (libuv, compiled) does the loop's own work, the socket reads and writes and the
upstream leg's TLS transport (aiosmtplib's `loop.start_tls`) in C; asyncio's loop does
them in Python. Measured with a new STARTTLS connection per message, the relay's CPU per
message is ~5% lower with it (bench/README.md, "uvloop as the event loop"). The inbound
STARTTLS stays on asyncio's TLS protocol either way (aiosmtpd builds it itself, and
relay/tlsbuffers.py shares its read buffer). `server.event_loop = "asyncio"` turns
uvloop off; a platform without uvloop (it is not built for Windows) gets asyncio's loop
with a warning rather than no relay.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

import structlog

log = structlog.get_logger()

T = TypeVar("T")
CHOICES = ("uvloop", "asyncio")


def loop_factory(choice: str) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """The factory for `asyncio.Runner`: uvloop's loop, or None (asyncio's default)."""
    if choice != "uvloop":
        return None
    try:
        import uvloop
    except ImportError:
        log.warning("uvloop is not installed; running on asyncio's event loop")
        return None
    return uvloop.new_event_loop


def run(main: Coroutine[Any, Any, T], choice: str) -> T:
    """`asyncio.run(main)` on the loop `choice` names (`server.event_loop`)."""
    with asyncio.Runner(loop_factory=loop_factory(choice)) as runner:
        return runner.run(main)


def name(loop: asyncio.AbstractEventLoop) -> str:
    """`uvloop` or `asyncio`: which one `loop` is, for the start-up line."""
    return "uvloop" if type(loop).__module__.startswith("uvloop") else "asyncio"
