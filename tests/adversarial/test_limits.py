"""Clients that hold sessions without sending: idle inside DATA, trickling, idle before AUTH,
and unauthenticated clients filling every slot (issue 9, item 12)."""

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
Faker.seed(5091)
SENDER = "app@clinic.example"
TIMED_OUT = b"421 4.4.2 Timed out waiting for the client; closing\r\n"
TRUSTED_SOURCE = "127.0.0.2"  # the relay listens on 127.0.0.1; Linux routes all of 127/8


async def in_data(r: RunningRelay) -> RawSmtp:
    conn = await RawSmtp.ready(r.port, r.pki.client_context())
    assert await conn.cmd(f"MAIL FROM:<{SENDER}>") == "250 2.1.0 Sender OK"
    assert await conn.cmd(f"RCPT TO:<{fake.email()}>") == "250 2.1.5 Recipient OK"
    assert (await conn.cmd("DATA")).startswith("354 ")
    await conn.send(b"From: app@clinic.example\r\nSubject: Parking update\r\n\r\n")
    return conn


async def drip(conn: RawSmtp, chunk: bytes, every: float, limit: int) -> tuple[bytes, int]:
    """Send `chunk` every `every` seconds until the relay hangs up; what it said, chunks sent."""
    closed = asyncio.create_task(conn.closed_by_server(timeout=30))
    sent = 0
    while not closed.done() and sent < limit:
        try:
            await conn.send(chunk)
        except (ConnectionError, OSError):
            break  # the relay hung up between two chunks
        sent += 1
        await asyncio.wait({closed}, timeout=every)
    if not closed.done():
        closed.cancel()
        return b"", sent
    return await closed, sent


async def test_idle_timeout_applies_inside_data(tmp_path: Path, pki: Pki, sink: Sink) -> None:
    r = await start_relay(tmp_path, pki, sink, server={"client_timeout": 1, "data_timeout": 60})
    try:
        conn = await in_data(r)
        started = time.monotonic()
        # Nothing more is sent: cut after the idle timeout, not the 60 s DATA deadline.
        assert await conn.closed_by_server(timeout=8) == TIMED_OUT
        assert 0.8 < time.monotonic() - started < 6
        await conn.close()
        assert sink.received == []
        assert r.decisions() == []
    finally:
        await r.stop()


async def test_trickle_below_min_data_rate_is_cut(tmp_path: Path, pki: Pki, sink: Sink) -> None:
    server = {"client_timeout": 2, "data_timeout": 60, "min_data_rate": 1000}
    r = await start_relay(tmp_path, pki, sink, server=server)
    try:
        conn = await in_data(r)
        started = time.monotonic()
        # 20 bytes every 0.3 s (~67 bytes/s): each line well inside the idle timeout.
        said, sent = await drip(conn, b"trickle-trickle-xx\r\n", 0.3, 100)
        elapsed = time.monotonic() - started
        assert said == TIMED_OUT, (said, sent)
        assert 1.8 < elapsed < 6, elapsed
        await conn.close()
        assert sink.received == []
    finally:
        await r.stop()


async def test_steady_sender_above_min_rate_outlives_the_idle_timeout(
    tmp_path: Path, pki: Pki, sink: Sink
) -> None:
    server = {"client_timeout": 1, "data_timeout": 60, "min_data_rate": 1000}
    r = await start_relay(tmp_path, pki, sink, server=server)
    try:
        conn = await in_data(r)
        started = time.monotonic()
        for _ in range(12):  # 3 s at ~2400 bytes/s: three idle timeouts long
            await conn.send(b"x" * 598 + b"\r\n")
            await asyncio.sleep(0.25)
        await conn.send(b".\r\n")
        answer = await conn.reply()
        assert answer.startswith("250 2.0.0 Delivered to upstream as "), answer
        assert time.monotonic() - started > 2.5
        assert len(sink.received) == 1
        await conn.close()
    finally:
        await r.stop()


def plain_auth(user: str, password: str) -> str:
    return "AUTH PLAIN " + base64.b64encode(f"\0{user}\0{password}".encode()).decode()


async def test_shorter_idle_timeout_before_auth(tmp_path: Path, pki: Pki, sink: Sink) -> None:
    secret = fake.password(length=20)
    add_user(tmp_path / "users", "clinic-app", secret)
    server = {
        "users_file": str(tmp_path / "users"),
        "trusted_networks": [f"{TRUSTED_SOURCE}/32"],
        "client_timeout": 30,
        "pre_auth_timeout": 1,
    }
    r = await start_relay(tmp_path, pki, sink, server=server)
    try:
        tls = pki.client_context()
        stranger = await RawSmtp.ready(r.port, tls)
        started = time.monotonic()
        member = await RawSmtp.ready(r.port, tls)
        assert (await member.cmd(plain_auth("clinic-app", secret))).startswith("235 ")
        trusted = await RawSmtp.ready(r.port, tls, local=TRUSTED_SOURCE)
        assert await stranger.closed_by_server(timeout=8) == TIMED_OUT
        assert 0.5 < time.monotonic() - started < 6
        await asyncio.sleep(1.5)
        # Authenticated and trusted sessions keep the ordinary idle timeout.
        assert await member.cmd("NOOP") == "250 2.0.0 OK"
        assert await trusted.cmd("NOOP") == "250 2.0.0 OK"
        for conn in (stranger, member, trusted):
            await conn.close()
    finally:
        await r.stop()


async def test_unauthenticated_clients_cannot_take_the_reserved_sessions(
    tmp_path: Path, pki: Pki, sink: Sink
) -> None:
    secret = fake.password(length=20)
    add_user(tmp_path / "users", "clinic-app", secret)
    server = {
        "users_file": str(tmp_path / "users"),
        "trusted_networks": [f"{TRUSTED_SOURCE}/32"],
        "max_sessions": 5,
        "max_sessions_per_client": 10,
        "reserved_sessions_percent": 40,  # 2 of 5 for trusted or authenticated clients
    }
    r = await start_relay(tmp_path, pki, sink, server=server)
    conns: list[RawSmtp] = []
    try:
        for _ in range(3):
            conns.append(await RawSmtp.connect(r.port))
            assert conns[-1].banner.startswith("220 ")
        extra = await RawSmtp.connect(r.port)
        assert extra.banner == (
            "421 4.7.0 Too many unauthenticated connections; try again later "
            "or connect from a trusted network"
        )
        await extra.close()
        conns.append(await RawSmtp.ready(r.port, pki.client_context(), local=TRUSTED_SOURCE))
        # One of the three authenticates: its slot leaves the unauthenticated share.
        first = conns[0]
        await first.ehlo()
        await first.starttls(pki.client_context())
        await first.ehlo()
        assert (await first.cmd(plain_auth("clinic-app", secret))).startswith("235 ")
        conns.append(await RawSmtp.connect(r.port))
        assert conns[-1].banner.startswith("220 ")
        # Now every slot is taken, the reserve included.
        full = await RawSmtp.connect(r.port, local=TRUSTED_SOURCE)
        assert full.banner == "421 4.7.0 Too many connections; try again later"
        await full.close()
        body = b"From: app@clinic.example\r\nSubject: Parking update\r\n\r\nok\r\n"
        answer = await first.mail(SENDER, [fake.email()], body)
        assert answer.startswith("250 2.0.0 Delivered to upstream as "), answer
    finally:
        for conn in conns:
            await conn.close()
        await r.stop()
