"""A finished session is freed by reference counting, however it ended.

A session's objects point at each other (its method tables of bound methods, the stream
writer, the handler task whose cancellation traceback holds the session's frames, the TLS
layer): left so, every connection and its TLS objects wait for the cycle collector, and
each gen-1 and gen-2 collection walks them all (about 70 objects a connection; a gen-1
collection took 2-4 ms under load). With the collector off, a session that has ended
must be gone, with its TLS layer, as soon as its last callback has run. (asyncio's own
socket transport keeps a bound method of itself, a small cycle left to the collector.)
"""

from __future__ import annotations

import asyncio
import gc
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
from faker import Faker

from relay.session import RelaySMTP
from tests.support.pki import Pki
from tests.support.rawsmtp import RawSmtp
from tests.support.relay import RunningRelay, start_relay
from tests.support.upstream import Sink

# uvloop (serve's default) and asyncio's loop hold and close transports differently.
pytestmark = pytest.mark.both_loops
fake = Faker()
Faker.seed(2611)
SENDER = "app@clinic.example"


def message() -> bytes:
    return (
        f"From: {SENDER}\r\nTo: someone@example.org\r\nSubject: Canteen menu\r\n"
        f"Message-ID: <{fake.uuid4()}@clinic.example>\r\n\r\nSoup on Friday.\r\n"
    ).encode()


@pytest.fixture
async def quick(tmp_path: Path, pki: Pki, sink: Sink) -> AsyncIterator[RunningRelay]:
    """A relay whose idle timeout is short, so that ending is testable too."""
    r = await start_relay(
        tmp_path, pki, sink, server={"client_timeout": 1.0, "implicit_tls_listen": "127.0.0.1:0"}
    )
    yield r
    await r.stop()


Note = Callable[[], None]


async def _quit_after_message(r: RunningRelay, note: Note) -> None:
    conn = await RawSmtp.ready(r.port, r.pki.client_context())
    reply = await conn.mail(SENDER, [fake.email()], message())
    assert reply.startswith("250 2.0.0 Delivered to upstream as "), reply
    note()
    assert await conn.cmd("QUIT") == "221 2.0.0 Bye"
    await conn.close()


async def _quit_plaintext(r: RunningRelay, note: Note) -> None:
    conn = await RawSmtp.connect(r.port)
    await conn.ehlo()
    note()
    assert await conn.cmd("QUIT") == "221 2.0.0 Bye"
    assert await conn.closed_by_server() == b""
    await conn.close()


async def _hang_up_mid_transaction(r: RunningRelay, note: Note) -> None:
    conn = await RawSmtp.ready(r.port, r.pki.client_context())
    assert await conn.cmd(f"MAIL FROM:<{SENDER}>") == "250 2.1.0 Sender OK"
    assert await conn.cmd(f"RCPT TO:<{fake.email()}>") == "250 2.1.5 Recipient OK"
    note()
    conn.writer.transport.abort()


async def _idle_timeout(r: RunningRelay, note: Note) -> None:
    conn = await RawSmtp.ready(r.port, r.pki.client_context())
    note()
    assert await conn.reply(timeout=10) == "421 4.4.2 Timed out waiting for the client; closing"
    await conn.close()


async def _implicit_tls(r: RunningRelay, note: Note) -> None:
    reader, writer = await asyncio.open_connection(
        "127.0.0.1",
        r.relay.implicit_port,
        ssl=r.pki.client_context(),
        server_hostname="localhost",
    )
    conn = RawSmtp(reader, writer)
    conn.banner = await conn.reply()
    await conn.ehlo()
    note()
    assert await conn.cmd("QUIT") == "221 2.0.0 Bye"
    await conn.close()


ENDINGS: dict[str, Callable[[RunningRelay, Note], Awaitable[None]]] = {
    "quit-after-message": _quit_after_message,
    "quit-plaintext": _quit_plaintext,
    "hang-up-mid-transaction": _hang_up_mid_transaction,
    "idle-timeout": _idle_timeout,
    "implicit-tls": _implicit_tls,
}


class _Seen(set[RelaySMTP]):
    """The relay's set of live sessions, noting a weak reference to each one added."""

    def __init__(self, items: set[RelaySMTP]) -> None:
        super().__init__(items)
        self.added: list[weakref.ref[RelaySMTP]] = []

    def add(self, item: RelaySMTP) -> None:
        self.added.append(weakref.ref(item))
        super().add(item)


@pytest.mark.parametrize("ending", list(ENDINGS))
async def test_an_ended_session_is_freed_without_the_cycle_collector(
    quick: RunningRelay, ending: str
) -> None:
    shared = quick.relay.shared
    assert shared is not None
    # A first session warms the upstream pool (its connection outlives the session).
    await _quit_after_message(quick, lambda: None)
    seen = _Seen(shared.sessions)
    shared.sessions = seen
    layers: dict[str, weakref.ref[object]] = {}

    def note() -> None:
        """While the session is up: it and its TLS layer."""
        [ref] = seen.added
        session = ref()
        assert session is not None
        layers["session"] = ref
        if session._tls_protocol is not None:
            layers["TLS layer"] = weakref.ref(session._tls_protocol)

    gc.collect()
    gc.disable()
    try:
        await ENDINGS[ending](quick, note)
        assert "session" in layers
        for _ in range(400):  # the TLS goodbye and the last callbacks; bounded
            if not shared.sessions and all(ref() is None for ref in layers.values()):
                break
            await asyncio.sleep(0.01)
        assert not shared.sessions
        alive = [name for name, ref in layers.items() if ref() is not None]
        assert not alive, f"{ending}: waiting for the cycle collector: {alive}"
    finally:
        gc.enable()
