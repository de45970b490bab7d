"""The upstream connection pool, seen from the upstream: reuse, RSET, NOOP, expiry, and the
retry on a stale connection that is allowed only before any of the message was sent."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable
from pathlib import Path

import pytest
from aiosmtplib.protocol import PERIOD_REGEX, normalize_message_line_endings
from faker import Faker

from relay import config as config_mod
from relay.delivery import dot_stuffed, stuffed_parts
from relay.policy.base import ConfigError
from relay.pool import Pool
from tests.support.pki import Pki
from tests.support.rawsmtp import RawSmtp
from tests.support.relay import RunningRelay, start_relay
from tests.support.upstream import Faults, Sink, hold_accepts

fake = Faker()
Faker.seed(1111)
SENDER = "app@clinic.example"
DELIVERED = re.compile(r"^250 2\.0\.0 Delivered to upstream as [0-9a-f]{32}$")
LOST = "451 4.4.2 Connection to the upstream was lost; try again later"


def message(body: str = "The lot on Elm Street closes on Friday.\r\n") -> bytes:
    return (
        f"From: {SENDER}\r\nTo: someone@example.org\r\nSubject: Parking update\r\n"
        f"Message-ID: <{fake.uuid4()}@clinic.example>\r\n\r\n{body}"
    ).encode()


async def send_one(r: RunningRelay, rcpt: str, data: bytes) -> list[str]:
    """One inbound session, one transaction: every answer from MAIL to the end of DATA."""
    conn = await RawSmtp.ready(r.port, r.pki.client_context())
    try:
        answers = [await conn.cmd(f"MAIL FROM:<{SENDER}>")]
        if not answers[-1].startswith("250"):
            return answers
        answers.append(await conn.cmd(f"RCPT TO:<{rcpt}>"))
        if not answers[-1].startswith("250"):
            return answers
        answers.append(await conn.cmd("DATA"))
        await conn.send(data + b".\r\n")
        answers.append(await conn.reply())
        await conn.cmd("QUIT")
    finally:
        await conn.close()
    return answers


def pool_of(r: RunningRelay) -> Pool:
    return r.relay.runtime.upstream


async def until(check: Callable[[], bool], seconds: float = 5.0) -> None:
    async with asyncio.timeout(seconds):
        while not check():  # noqa: ASYNC110 - polling state the relay owns
            await asyncio.sleep(0.01)


async def deliver_first(r: RunningRelay) -> None:
    """One message to a@example.org delivered, and its connection back in the pool, idle."""
    assert DELIVERED.match((await send_one(r, "a@example.org", message()))[-1])
    await until(lambda: pool_of(r).idle == 1)


async def hold_a_connection(r: RunningRelay, sink: Sink) -> asyncio.Task[list[str]]:
    """Send a first message the upstream holds (hold_accepts): one connection is now busy."""
    first = asyncio.create_task(send_one(r, "first@example.org", message()))
    await until(lambda: len(sink.received) == 1)
    return first


async def test_sessions_share_one_upstream_connection_with_rset_between(
    tmp_path: Path, pki: Pki, sink: Sink
) -> None:
    r = await start_relay(tmp_path, pki, sink)
    try:
        for i in range(4):
            answers = await send_one(r, f"patient{i}@example.org", message())
            assert DELIVERED.match(answers[-1]), answers
            # The connection goes back after its RSET; the next session then finds it idle.
            await until(lambda: pool_of(r).idle == 1)
    finally:
        await r.stop()
    assert [m.rcpt_tos for m in sink.received] == [[f"patient{i}@example.org"] for i in range(4)]
    assert sink.connections == 1
    assert sink.session_commands(1) == ["MAIL", "DATA", "RSET"] * 4 + ["QUIT"]
    assert [d["outcome"] for d in r.deliveries()] == ["delivered"] * 4


async def test_pool_size_zero_opens_a_connection_per_transaction(
    tmp_path: Path, pki: Pki, sink: Sink
) -> None:
    r = await start_relay(tmp_path, pki, sink, upstream_cfg={"pool_size": 0})
    try:
        for i in range(3):
            answers = await send_one(r, f"p{i}@example.org", message())
            assert DELIVERED.match(answers[-1]), answers
        await until(lambda: len([c for c in sink.commands if c[1] == "QUIT"]) == 3)
    finally:
        await r.stop()
    assert sink.connections == 3
    assert [sink.session_commands(n) for n in (1, 2, 3)] == [["MAIL", "DATA", "QUIT"]] * 3


@pytest.mark.parametrize("stage", ["MAIL", "RCPT"])
async def test_stale_pooled_connection_is_retried_once_before_data(
    tmp_path: Path, pki: Pki, sink: Sink, stage: str
) -> None:
    # The first upstream session dies at the next MAIL/RCPT after its first message, as an
    # upstream that closed an idle connection we had not yet noticed.
    first = Faults()

    async def arm() -> None:
        first.reset_at = stage

    first.on_accept = arm
    sink.session_faults = lambda: first if sink.connections == 1 else None
    r = await start_relay(tmp_path, pki, sink)
    try:
        await deliver_first(r)
        answers = await send_one(r, "b@example.org", message())
    finally:
        await r.stop()
    assert answers[:2] == ["250 2.1.0 Sender OK", "250 2.1.5 Recipient OK"]
    assert DELIVERED.match(answers[-1]), answers
    assert [m.rcpt_tos for m in sink.received] == [["a@example.org"], ["b@example.org"]]
    assert sink.connections == 2
    assert pool_of(r).stats.retried == 1
    assert sink.session_commands(2)[:2] == ["MAIL", "DATA"]
    assert [d["outcome"] for d in r.deliveries()] == ["delivered", "delivered"]


async def test_second_stale_connection_is_not_retried_again(
    tmp_path: Path, pki: Pki, sink: Sink
) -> None:
    # Retry once: when the new connection fails too, the client hears it (4xx) and retries.
    first = Faults()

    async def arm() -> None:
        first.reset_at = "MAIL"

    first.on_accept = arm
    sink.session_faults = lambda: first if sink.connections == 1 else Faults(reset_at="MAIL")
    r = await start_relay(tmp_path, pki, sink)
    try:
        await deliver_first(r)
        answers = await send_one(r, "b@example.org", message())
    finally:
        await r.stop()
    assert answers == [LOST]
    assert sink.connections == 2
    assert len(sink.received) == 1


async def test_connection_lost_after_data_is_never_retried(
    tmp_path: Path, pki: Pki, sink: Sink
) -> None:
    # The upstream keeps the second message, then drops the connection before its reply:
    # the outcome is unknown, so the relay must not send it again on another connection.
    first = Faults()

    async def second_loses_reply() -> None:
        if len(sink.received) == 2:
            first.lose_reply_after_accept = True

    first.on_accept = second_loses_reply
    sink.session_faults = lambda: first if sink.connections == 1 else None
    r = await start_relay(tmp_path, pki, sink)
    try:
        await deliver_first(r)
        answers = await send_one(r, "b@example.org", message())
    finally:
        await r.stop()
    assert answers[-1] == LOST
    assert [m.rcpt_tos for m in sink.received] == [["a@example.org"], ["b@example.org"]]
    assert sink.connections == 1
    assert pool_of(r).stats.retried == 0
    assert [d["outcome"] for d in r.deliveries()] == ["delivered", "ambiguous"]


async def test_idle_connection_expires_and_is_closed(tmp_path: Path, pki: Pki, sink: Sink) -> None:
    r = await start_relay(tmp_path, pki, sink, upstream_cfg={"pool_idle_timeout": 0.3})
    try:
        await deliver_first(r)
        # Nothing else happens: the pool closes the idle connection on its own (QUIT).
        await until(lambda: sink.session_commands(1)[-1:] == ["QUIT"], seconds=3)
        assert pool_of(r).idle == 0
        assert pool_of(r).stats.expired == 1
        assert DELIVERED.match((await send_one(r, "b@example.org", message()))[-1])
    finally:
        await r.stop()
    assert sink.connections == 2


async def test_connection_idle_a_while_is_checked_with_noop(
    tmp_path: Path, pki: Pki, sink: Sink
) -> None:
    r = await start_relay(tmp_path, pki, sink, upstream_cfg={"pool_check_after": 0.2})
    try:
        await deliver_first(r)
        await asyncio.sleep(0.3)
        assert DELIVERED.match((await send_one(r, "b@example.org", message()))[-1])
    finally:
        await r.stop()
    assert sink.connections == 1
    assert sink.session_commands(1)[:5] == ["MAIL", "DATA", "RSET", "NOOP", "MAIL"]


async def test_connection_closed_while_idle_is_replaced_without_a_failure(
    tmp_path: Path, pki: Pki, sink: Sink
) -> None:
    r = await start_relay(tmp_path, pki, sink)
    try:
        await deliver_first(r)
        await sink.stop()  # the upstream restarts: every connection it had is gone
        await sink.start(sink.port)
        answers = await send_one(r, "b@example.org", message())
    finally:
        await r.stop()
    assert DELIVERED.match(answers[-1]), answers
    assert [m.rcpt_tos for m in sink.received] == [["a@example.org"], ["b@example.org"]]


async def _dotted_message_arrives_intact(
    tmp_path: Path, pki: Pki, sink: Sink, lines: list[str]
) -> None:
    body = "\r\n".join(lines) + "\r\n"
    data = message(body)
    r = await start_relay(tmp_path, pki, sink)
    try:
        # The client side stuffs dots as SMTP requires; the relay sees the original text.
        stuffed = re.sub(rb"(?m)^\.", b"..", data)
        answers = await send_one(r, "a@example.org", stuffed)
    finally:
        await r.stop()
    assert DELIVERED.match(answers[-1]), answers
    received = sink.received[0].data
    assert received.endswith(body.encode())
    assert received.count(b"\r\n.") == sum(1 for line in lines if line.startswith("."))


async def test_large_message_with_leading_dots_arrives_intact(
    tmp_path: Path, pki: Pki, sink: Sink
) -> None:
    # The body goes upstream in pieces; dot-stuffing must hold across every piece boundary.
    lines = [("." if i % 7 == 0 else "") + fake.sentence() for i in range(12000)]
    await _dotted_message_arrives_intact(tmp_path, pki, sink, lines)


@pytest.mark.parametrize("lines", [3, 40, 600, 700])  # ~0.1, 2, 60 and 70 kB: both sides of
# the 64 KiB line below which a message goes upstream in one write with its final dot
async def test_messages_either_side_of_the_one_write_size_arrive_intact(
    tmp_path: Path, pki: Pki, sink: Sink, lines: int
) -> None:
    text = [("." if i % 3 == 0 else "") + f"line {i} " + "x" * 90 for i in range(lines)]
    await _dotted_message_arrives_intact(tmp_path, pki, sink, text)


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"no line end",
        b".leading\r\n..two\r\nmid.dle\r\n.",
        b"bare\nlf\rcr\r\n.x\n.y\r.z",
        b"ends in a bare cr\r",
        (b".a\r\n" + b"x" * 70 + b"\r\n") * 5000,
    ],
    ids=["empty", "no-eol", "dots", "bare-endings", "bare-cr-end", "many-pieces"],
)
def test_dot_stuffed_pieces_equal_what_aiosmtplib_sends(raw: bytes) -> None:
    expected = PERIOD_REGEX.sub(b"..", normalize_message_line_endings(raw))
    assert b"".join(dot_stuffed(raw, chunk=100)) == expected


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        ("pool_size", "-1", "expected a whole number >= 0"),
        ("pool_idle_timeout", "0", "expected a number of seconds > 0"),
        ("pool_check_after", "-2", "expected a number of seconds > 0"),
        ("pool_max_connections", "0", "expected a whole number >= 1"),
        ("pool_wait_timeout", "0", "expected a number of seconds > 0"),
    ],
)
def test_pool_limits_are_validated(key: str, value: str, expected: str) -> None:
    env = {f"PHI_RELAY_UPSTREAM_{key.upper()}": value}
    with pytest.raises(ConfigError) as err:
        config_mod.load(None, environ=env)
    assert f"upstream.{key}" in str(err.value)
    assert expected in str(err.value)


async def test_concurrent_sessions_share_at_most_max_connections(
    tmp_path: Path, pki: Pki, sink: Sink
) -> None:
    # 12 inbound sessions at once, each holding its upstream connection a while (the
    # upstream is slow to accept): never more than 3 upstream connections, none reopened.
    async def slow_accept() -> None:
        await asyncio.sleep(0.05)

    sink.faults.on_accept = slow_accept
    r = await start_relay(tmp_path, pki, sink, upstream_cfg={"pool_max_connections": 3})
    try:

        async def client(i: int) -> list[list[str]]:
            return [await send_one(r, f"p{i}-{n}@example.org", message()) for n in range(2)]

        results = await asyncio.gather(*(client(i) for i in range(12)))
        stats = pool_of(r).stats
    finally:
        await r.stop()
    answers = [one for per_client in results for one in per_client]
    assert all(DELIVERED.match(a[-1]) for a in answers), answers
    assert sorted(sink.all_rcpts()) == sorted(
        f"p{i}-{n}@example.org" for i in range(12) for n in range(2)
    )
    assert sink.peak_open <= 3
    assert sink.connections <= 3  # waiting leases took connections over; none was reopened
    assert stats.peak == 3 and stats.waited > 0 and stats.busy == 0


async def test_lease_that_waits_too_long_gets_451_and_nothing_is_lost(
    tmp_path: Path, pki: Pki, sink: Sink
) -> None:
    release = hold_accepts(sink)
    r = await start_relay(
        tmp_path,
        pki,
        sink,
        upstream_cfg={"pool_max_connections": 1, "pool_wait_timeout": 0.3},
    )
    try:
        first = await hold_a_connection(r, sink)
        second = await send_one(r, "second@example.org", message())
        release.set()
        assert DELIVERED.match((await first)[-1])
        await until(lambda: pool_of(r).idle == 1)
        third = await send_one(r, "third@example.org", message())
    finally:
        await r.stop()
    assert second == [
        "451 4.4.5 Every upstream connection is busy (upstream.pool_max_connections); "
        "try again later"
    ]
    assert DELIVERED.match(third[-1]), third
    assert sink.all_rcpts() == ["first@example.org", "third@example.org"]
    assert sink.peak_open == 1 and sink.connections == 1
    busy = [e for e in r.audit() if e.get("outcome") == "busy"]
    assert len(busy) == 1 and busy[0]["stage"] == "mail" and busy[0]["reply_code"] == 451


@pytest.mark.parametrize(
    "prefix",
    [b"", b"Received: from a\r\n\tby b; x\r\n", b"X-A: 1\n", b"no line end: joined"],
    ids=["none", "received", "bare-lf", "not-whole-lines"],
)
@pytest.mark.parametrize(
    "raw",
    [b"", b".leading\r\n..two\r\n", b"no line end", (b".a\r\n" + b"x" * 70 + b"\r\n") * 500],
    ids=["empty", "dots", "no-eol", "many-pieces"],
)
def test_prefix_and_message_go_out_as_their_concatenation(prefix: bytes, raw: bytes) -> None:
    # The Received header goes out before the message without the two being joined.
    assert b"".join(stuffed_parts(prefix, raw)) == b"".join(dot_stuffed(prefix + raw))


async def test_client_gone_while_waiting_for_a_connection_leaks_no_slot(
    tmp_path: Path, pki: Pki, sink: Sink
) -> None:
    # With one connection held, a second client waits at MAIL and hangs up: its place in
    # the queue must go, and the held connection must serve the next client.
    release = hold_accepts(sink)
    r = await start_relay(tmp_path, pki, sink, upstream_cfg={"pool_max_connections": 1})
    try:
        first = await hold_a_connection(r, sink)
        gone = await RawSmtp.ready(r.port, pki.client_context())
        await gone.send(f"MAIL FROM:<{SENDER}>\r\n".encode())
        await until(lambda: pool_of(r).stats.waited == 1)
        gone.writer.transport.abort()  # no QUIT: the connection is simply cut
        await asyncio.sleep(0.1)
        release.set()
        assert DELIVERED.match((await first)[-1])
        sink.faults.on_accept = None
        answers = await send_one(r, "third@example.org", message())
        open_now = pool_of(r).open_connections
    finally:
        await r.stop()
    assert DELIVERED.match(answers[-1]), answers
    assert sink.all_rcpts() == ["first@example.org", "third@example.org"]
    assert sink.connections == 1 and open_now == 1


async def test_readiness_probe_does_not_queue_behind_busy_connections(
    tmp_path: Path, pki: Pki, sink: Sink
) -> None:
    # Every connection is held by mail: /readyz's upstream check must still answer now
    # (a probe that waits its turn would time out and take the relay out of service).
    release = hold_accepts(sink)
    r = await start_relay(tmp_path, pki, sink, upstream_cfg={"pool_max_connections": 1})
    try:
        first = await hold_a_connection(r, sink)
        async with asyncio.timeout(3):
            await pool_of(r).ping()
        await until(lambda: sink.open_now == 1)  # the probe's connection is closed again
        release.set()
        assert DELIVERED.match((await first)[-1])
        opened = pool_of(r).open_connections
    finally:
        await r.stop()
    assert sink.connections == 2 and sink.peak_open == 2
    assert opened == 1
