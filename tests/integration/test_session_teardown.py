"""A finished session is freed by reference counting, however it ended.

A session's objects point at each other (its method tables of bound methods, the stream
writer, the handler task whose cancellation traceback holds the session's frames, the TLS
layers): left so, every connection, its TLS objects and its socket wait for the cycle
collector, and each gen-1 and gen-2 collection walks all of them (about 70 objects a
connection, several milliseconds per collection under load). With the collector off, a
session that has ended must be gone as soon as its last callback ran.
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


async def _quit_after_message(r: RunningRelay) -> RawSmtp:
    conn = await RawSmtp.ready(r.port, r.pki.client_context())
    reply = await conn.mail(SENDER, [fake.email()], message())
    assert reply.startswith("250 2.0.0 Delivered to upstream as "), reply
    assert await conn.cmd("QUIT") == "221 2.0.0 Bye"
    await conn.close()
    return conn


async def _quit_plaintext(r: RunningRelay) -> RawSmtp:
    conn = await RawSmtp.connect(r.port)
    await conn.ehlo()
    assert await conn.cmd("QUIT") == "221 2.0.0 Bye"
    assert await conn.closed_by_server() == b""
    await conn.close()
    return conn


async def _hang_up_mid_transaction(r: RunningRelay) -> RawSmtp:
    conn = await RawSmtp.ready(r.port, r.pki.client_context())
    assert await conn.cmd(f"MAIL FROM:<{SENDER}>") == "250 2.1.0 Sender OK"
    assert await conn.cmd(f"RCPT TO:<{fake.email()}>") == "250 2.1.5 Recipient OK"
    conn.writer.transport.abort()
    return conn


async def _idle_timeout(r: RunningRelay) -> RawSmtp:
    conn = await RawSmtp.ready(r.port, r.pki.client_context())
    assert await conn.reply(timeout=10) == "421 4.4.2 Timed out waiting for the client; closing"
    await conn.close()
    return conn


async def _implicit_tls(r: RunningRelay) -> RawSmtp:
    reader, writer = await asyncio.open_connection(
        "127.0.0.1",
        r.relay.implicit_port,
        ssl=r.pki.client_context(),
        server_hostname="localhost",
    )
    conn = RawSmtp(reader, writer)
    conn.banner = await conn.reply()
    await conn.ehlo()
    assert await conn.cmd("QUIT") == "221 2.0.0 Bye"
    await conn.close()
    return conn


ENDINGS: dict[str, Callable[[RunningRelay], Awaitable[RawSmtp]]] = {
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
    await _quit_after_message(quick)
    seen = _Seen(shared.sessions)
    shared.sessions = seen
    gc.collect()
    gc.disable()
    try:
        await ENDINGS[ending](quick)
        [gone] = seen.added
        session = gone()
        tls = weakref.ref(session._tls_protocol) if session and session._tls_protocol else None
        del session
        for _ in range(400):  # the TLS goodbye and the last callbacks; bounded
            if gone() is None and not shared.sessions:
                break
            await asyncio.sleep(0.01)
        assert not shared.sessions
        assert gone() is None, f"{ending}: the session waits for the cycle collector"
        assert tls is None or tls() is None, f"{ending}: its TLS layer waits for the collector"
    finally:
        gc.enable()
