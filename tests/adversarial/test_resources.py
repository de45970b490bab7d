"""Resource abuse: idle and slow clients time out, session limits hold, AUTH guessing locks out."""

from __future__ import annotations

import asyncio
import base64
import time
from pathlib import Path

from faker import Faker

from relay.users import add_user
from tests.support.pki import Pki
from tests.support.rawsmtp import RawSmtp
from tests.support.relay import RunningRelay, start_relay
from tests.support.upstream import Sink

fake = Faker()
Faker.seed(5052)
SENDER = "app@clinic.example"
TIMED_OUT = b"421 4.4.2 Timed out waiting for the client; closing\r\n"


async def test_idle_session_closed_with_421(tmp_path: Path, pki: Pki, sink: Sink) -> None:
    r = await start_relay(tmp_path, pki, sink, server={"client_timeout": 1})
    try:
        conn = await RawSmtp.ready(r.port, pki.client_context())
        started = time.monotonic()
        assert await conn.closed_by_server(timeout=15) == TIMED_OUT
        assert 0.5 < time.monotonic() - started < 10
        await conn.close()
        assert sink.received == []
    finally:
        await r.stop()


async def test_slow_data_cut_at_data_timeout(tmp_path: Path, pki: Pki, sink: Sink) -> None:
    # Each line comes well inside the idle timeout, but the whole DATA phase is bounded.
    r = await start_relay(tmp_path, pki, sink, server={"client_timeout": 30, "data_timeout": 1.5})
    try:
        conn = await RawSmtp.ready(r.port, pki.client_context())
        assert await conn.cmd(f"MAIL FROM:<{SENDER}>") == "250 2.1.0 Sender OK"
        assert await conn.cmd(f"RCPT TO:<{fake.email()}>") == "250 2.1.5 Recipient OK"
        assert (await conn.cmd("DATA")).startswith("354 ")
        await conn.send(b"From: app@clinic.example\r\nSubject: Parking update\r\n\r\n")
        started = time.monotonic()
        closed = asyncio.create_task(conn.closed_by_server(timeout=20))
        lines = 0
        while not closed.done() and lines < 200:
            try:
                await conn.send(b"drip\r\n")
            except (ConnectionError, OSError):
                break  # the relay hung up between two lines
            lines += 1
            await asyncio.wait({closed}, timeout=0.2)
        assert await closed == TIMED_OUT
        await conn.close()
        assert 1.0 < time.monotonic() - started < 15
        assert 4 < lines < 200
        assert sink.received == []
        # The upstream transaction opened at MAIL was released, not left half-done.
        assert r.decisions() == []
    finally:
        await r.stop()


async def connect_all(port: int, count: int) -> list[RawSmtp]:
    return [await RawSmtp.connect(port) for _ in range(count)]


async def test_max_sessions_in_total(tmp_path: Path, pki: Pki, sink: Sink) -> None:
    r = await start_relay(
        tmp_path, pki, sink, server={"max_sessions": 2, "max_sessions_per_client": 2}
    )
    try:
        held = await connect_all(r.port, 2)
        assert [c.banner[:4] for c in held] == ["220 ", "220 "]
        extra = await RawSmtp.connect(r.port)
        assert extra.banner == "421 4.7.0 Too many connections; try again later"
        assert await extra.closed_by_server() == b""
        await extra.close()
        # The held sessions are unaffected.
        assert await held[0].cmd("NOOP") == "250 2.0.0 OK"
        await held[1].cmd("QUIT")
        await held[1].closed_by_server()
        await wait_for_banner(r.port)
        for c in held:
            await c.close()
    finally:
        await r.stop()


async def wait_for_banner(port: int) -> None:
    """A freed slot is reused: the server releases it when it sees the close, so poll briefly."""
    deadline = time.monotonic() + 10
    while True:
        conn = await RawSmtp.connect(port)
        ok = conn.banner.startswith("220 ")
        if ok:
            await conn.cmd("QUIT")
        await conn.close()
        if ok:
            return
        assert time.monotonic() < deadline, conn.banner
        await asyncio.sleep(0.05)


async def test_max_sessions_per_client(tmp_path: Path, pki: Pki, sink: Sink) -> None:
    r = await start_relay(
        tmp_path, pki, sink, server={"max_sessions": 50, "max_sessions_per_client": 3}
    )
    try:
        held = await connect_all(r.port, 3)
        extra = await RawSmtp.connect(r.port)
        assert extra.banner == "421 4.7.0 Too many connections from your address; try again later"
        assert await extra.closed_by_server() == b""
        await extra.close()
        assert await held[0].cmd("NOOP") == "250 2.0.0 OK"
        for c in held:
            await c.close()
        await wait_for_banner(r.port)
    finally:
        await r.stop()


def plain_auth(user: str, password: str) -> str:
    return base64.b64encode(f"\0{user}\0{password}".encode()).decode()


async def test_auth_failures_delayed_locked_out_and_audited_without_password(
    tmp_path: Path, pki: Pki, sink: Sink
) -> None:
    users = tmp_path / "users"
    secret = "correct horse battery staple"
    add_user(users, "clinic-app", secret)
    guesses = [fake.password(length=20) for _ in range(3)]
    r = await start_relay(
        tmp_path,
        pki,
        sink,
        server={
            "users_file": str(users),
            "trusted_networks": [],
            "auth_max_failures": 3,
            "auth_failure_delay": 0.4,
            "auth_lockout": 300,
        },
    )
    try:
        conn = await RawSmtp.ready(r.port, pki.client_context())
        for guess in guesses:
            started = time.monotonic()
            answer = await conn.cmd(f"AUTH PLAIN {plain_auth('clinic-app', guess)}")
            assert answer == "535 5.7.8 Authentication credentials invalid"
            assert time.monotonic() - started >= 0.4
        locked = "454 4.7.0 Too many failed logins from your address; try again later"
        # Locked out even with the right password, and on a new connection too.
        assert await conn.cmd(f"AUTH PLAIN {plain_auth('clinic-app', secret)}") == locked
        second = await RawSmtp.ready(r.port, pki.client_context())
        assert await second.cmd(f"AUTH PLAIN {plain_auth('clinic-app', secret)}") == locked
        assert await second.cmd(f"MAIL FROM:<{SENDER}>") == "530 5.7.0 Authentication required"
        await conn.close()
        await second.close()
        failures = [x for x in r.audit() if x.get("event") == "auth-failure"]
        assert len(failures) == 3
        assert {f["user"] for f in failures} == {"clinic-app"}
        assert {f["mechanism"] for f in failures} == {"PLAIN"}
        text = r.audit_path.read_text()
        for guess in [*guesses, secret]:
            assert guess not in text
            assert plain_auth("clinic-app", guess) not in text
    finally:
        await r.stop()


async def test_command_dripped_byte_by_byte_is_cut_at_client_timeout(
    tmp_path: Path, pki: Pki, sink: Sink
) -> None:
    # The idle timer restarts only on a whole command, so a slow drip cannot hold a slot.
    r = await start_relay(tmp_path, pki, sink, server={"client_timeout": 1})
    try:
        conn = await RawSmtp.ready(r.port, pki.client_context())
        started = time.monotonic()
        closed = asyncio.create_task(conn.closed_by_server(timeout=20))
        sent = 0
        while not closed.done() and sent < 100:
            try:
                await conn.send(b"X")
            except (ConnectionError, OSError):
                break
            sent += 1
            await asyncio.wait({closed}, timeout=0.1)
        assert await closed == TIMED_OUT
        assert 0.5 < time.monotonic() - started < 15
        assert 3 < sent < 100
        await conn.close()
    finally:
        await r.stop()


async def test_unknown_command_flood_disconnected(relay: RunningRelay) -> None:
    conn = await RawSmtp.ready(relay.port, relay.pki.client_context())
    answers = [await conn.cmd(f"XBOGUS{i}") for i in range(5)]
    # The client's word is not echoed back.
    assert answers[:4] == ["500 5.5.1 Command not recognized"] * 4
    assert answers[4] == "502 5.5.1 Too many unrecognized commands, goodbye."
    assert await conn.closed_by_server() == b""
    await conn.close()
