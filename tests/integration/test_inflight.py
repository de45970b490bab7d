"""The cap on the bytes of all messages in flight: above it a new DATA gets 452 4.3.1,
messages already admitted finish, and a refused one arrives once when the client retries."""

from __future__ import annotations

import argparse
import asyncio
import re
from pathlib import Path

import pytest
from faker import Faker

from relay import config as config_mod
from relay.cli import serve
from relay.inflight import FULL
from relay.policy.base import ConfigError
from tests.support.pki import Pki
from tests.support.rawsmtp import RawSmtp
from tests.support.relay import RunningRelay, start_relay
from tests.support.upstream import Sink, hold_accepts

fake = Faker()
Faker.seed(2211)
SENDER = "app@clinic.example"
DELIVERED = re.compile(r"^250 2\.0\.0 Delivered to upstream as [0-9a-f]{32}$")


def big_message(size: int) -> bytes:
    line = (fake.sentence() + " ").ljust(76, "x")[:76] + "\r\n"
    body = line * (size // len(line))
    return (
        f"From: {SENDER}\r\nTo: someone@example.org\r\nSubject: Rota for next week\r\n"
        f"Message-ID: <{fake.uuid4()}@clinic.example>\r\n\r\n{body}"
    ).encode()


async def open_txn(r: RunningRelay, rcpt: str) -> RawSmtp:
    conn = await RawSmtp.ready(r.port, r.pki.client_context())
    assert (await conn.cmd(f"MAIL FROM:<{SENDER}>")).startswith("250")
    assert (await conn.cmd(f"RCPT TO:<{rcpt}>")).startswith("250")
    return conn


async def send_data(conn: RawSmtp, data: bytes) -> str:
    reply = await conn.cmd("DATA")
    if not reply.startswith("354"):
        return reply
    await conn.send(data + b".\r\n")
    return await conn.reply()


async def until_received(sink: Sink, count: int) -> None:
    async with asyncio.timeout(10):
        while len(sink.received) < count:  # noqa: ASYNC110 - the sink's own state
            await asyncio.sleep(0.01)


async def test_data_over_the_cap_gets_452_and_arrives_once_on_retry(
    tmp_path: Path, pki: Pki, sink: Sink
) -> None:
    release = hold_accepts(sink)  # the upstream keeps both messages unanswered: in flight
    size = 1_500_000
    r = await start_relay(tmp_path, pki, sink, server={"max_bytes_in_flight": 2_000_000})
    flight = r.relay.shared.flight if r.relay.shared else None
    assert flight is not None
    conns: list[RawSmtp] = []
    try:
        a, b, c = [await open_txn(r, f"{n}@example.org") for n in "abc"]
        conns += [a, b, c]
        first = asyncio.create_task(send_data(a, big_message(size)))
        await until_received(sink, 1)
        # 1.5 MB in flight, below the cap: the second message is still admitted.
        second = asyncio.create_task(send_data(b, big_message(size)))
        await until_received(sink, 2)
        assert flight.bytes > 2_000_000
        refused = await c.cmd("DATA")
        # The transaction is over; the client may try again at once with a new one.
        after = await c.cmd("DATA")
        release.set()
        assert DELIVERED.match(await first)
        assert DELIVERED.match(await second)
        assert flight.bytes == 0
        assert (await c.cmd(f"MAIL FROM:<{SENDER}>")).startswith("250")
        assert (await c.cmd("RCPT TO:<c@example.org>")).startswith("250")
        retried = await send_data(c, big_message(size))
    finally:
        for conn in conns:
            await conn.close()
        await r.stop()
    assert refused == FULL == "452 4.3.1 Too much mail in flight on this relay; try again later"
    assert after == "503 5.5.1 Need a RCPT command first"  # the envelope was reset
    assert DELIVERED.match(retried), retried
    assert sink.all_rcpts() == ["a@example.org", "b@example.org", "c@example.org"]
    assert len(r.decisions()) == 3
    assert flight.refused == 1 and flight.peak >= 3_000_000 and flight.bytes == 0


async def test_concurrent_data_with_declared_size_is_admitted_up_to_the_cap(
    tmp_path: Path, pki: Pki, sink: Sink
) -> None:
    # 8 clients declare SIZE at MAIL and start DATA at once while nothing is in flight yet:
    # the declared sizes are counted at DATA, so only two of 600 kB fit under 1.5 MB. The
    # other six hear 452, retry after the first two are delivered, and every message
    # arrives exactly once.
    release = hold_accepts(sink)
    r = await start_relay(tmp_path, pki, sink, server={"max_bytes_in_flight": 1_500_000})
    flight = r.relay.shared.flight if r.relay.shared else None
    assert flight is not None
    data = [big_message(600_000) for _ in range(8)]
    conns = []
    try:
        for i in range(8):
            conn = await RawSmtp.ready(r.port, pki.client_context())
            conns.append(conn)
            assert (await conn.cmd(f"MAIL FROM:<{SENDER}> SIZE={len(data[i])}")).startswith("250")
            assert (await conn.cmd(f"RCPT TO:<p{i}@example.org>")).startswith("250")
        starts = await asyncio.gather(*(conn.cmd("DATA") for conn in conns))
        admitted = [i for i, reply in enumerate(starts) if reply.startswith("354")]
        assert len(admitted) == 2, starts
        assert [reply for reply in starts if not reply.startswith("354")] == [FULL] * 6
        for i in admitted:
            await conns[i].send(data[i] + b".\r\n")
        await until_received(sink, 2)
        release.set()
        for i in admitted:
            assert DELIVERED.match(await conns[i].reply())
        for i in sorted(set(range(8)) - set(admitted)):  # the retries, one after another
            conn = conns[i]
            assert (await conn.cmd(f"MAIL FROM:<{SENDER}> SIZE={len(data[i])}")).startswith("250")
            assert (await conn.cmd(f"RCPT TO:<p{i}@example.org>")).startswith("250")
            assert DELIVERED.match(await send_data(conn, data[i]))
    finally:
        for conn in conns:
            await conn.close()
        await r.stop()
    assert sorted(sink.all_rcpts()) == sorted(f"p{i}@example.org" for i in range(8))
    assert [m.data.count(b"Rota for next week") for m in sink.received] == [1] * 8
    assert flight.bytes == 0 and flight.refused == 6
    assert flight.peak < 1_500_000 + 2 * 1000  # the declared sizes, plus the final dots


async def test_refused_too_big_message_gives_its_bytes_back(
    tmp_path: Path, pki: Pki, sink: Sink
) -> None:
    r = await start_relay(tmp_path, pki, sink, server={"max_message_size": 100_000})
    flight = r.relay.shared.flight if r.relay.shared else None
    assert flight is not None
    try:
        conn = await open_txn(r, "a@example.org")
        reply = await send_data(conn, big_message(300_000))
        await conn.close()
    finally:
        await r.stop()
    assert reply == "552 5.3.4 Message too big; the limit is 100000 bytes"
    assert flight.bytes == 0 and flight.peak > 100_000
    assert sink.received == []


def test_cap_is_set_by_file_key_variable_and_flag(tmp_path: Path) -> None:
    toml = tmp_path / "relay.toml"
    toml.write_text("[server]\nmax_bytes_in_flight = 5000000\n")
    assert config_mod.load(toml, environ={}).server.max_bytes_in_flight == 5_000_000
    env = {"PHI_RELAY_SERVER_MAX_BYTES_IN_FLIGHT": "6000000"}
    assert config_mod.load(toml, environ=env).server.max_bytes_in_flight == 6_000_000
    parser = argparse.ArgumentParser()
    serve.register(parser.add_subparsers())
    args = parser.parse_args(["serve", "--max-bytes-in-flight", "7000000"])
    cfg = config_mod.load(toml, environ=env, overrides=serve.overrides(args))
    assert cfg.server.max_bytes_in_flight == 7_000_000
    with pytest.raises(ConfigError) as err:
        config_mod.load(None, environ={"PHI_RELAY_SERVER_MAX_BYTES_IN_FLIGHT": "10"})
    assert "server.max_bytes_in_flight" in str(err.value)
    assert "expected a whole number >= 1024" in str(err.value)
