"""REQUIRETLS (RFC 8689) and the DSN parameters (RFC 3461) end to end: advertised, accepted
(aiosmtpd alone answers 555), checked for syntax, passed on exactly as sent to an upstream
that offers them, and a REQUIRETLS message never handed to an upstream that does not."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from email.message import EmailMessage
from pathlib import Path

import pytest
from faker import Faker

from tests.support.pki import Pki
from tests.support.rawsmtp import RawSmtp
from tests.support.relay import RunningRelay, start_relay
from tests.support.upstream import Faults, Sink

fake = Faker()
Faker.seed(3461)
SENDER = "app@clinic.example"
NO_REQUIRETLS = (
    "550 5.7.30 REQUIRETLS support required: the upstream does not offer REQUIRETLS; not sent"
)


def message() -> bytes:
    msg = EmailMessage()
    msg["From"] = SENDER
    msg["To"] = "patient@example.org"
    msg["Subject"] = "Our new Saturday hours"
    msg["Message-ID"] = f"<{fake.uuid4()}@clinic.example>"
    msg.set_content("We are open on Saturdays now.\n")
    return msg.as_bytes(policy=msg.policy.clone(linesep="\r\n"))


async def relay_to(
    tmp_path: Path, pki: Pki, extensions: tuple[str, ...]
) -> AsyncIterator[tuple[RunningRelay, Sink]]:
    sink = await Sink(pki.server_context(), extensions=extensions).start()
    r = await start_relay(tmp_path, pki, sink, server={"plaintext_networks": ["127.0.0.7/32"]})
    try:
        yield r, sink
    finally:
        await r.stop()
        await sink.stop()


@pytest.fixture
async def dsn_relay(tmp_path: Path, pki: Pki) -> AsyncIterator[tuple[RunningRelay, Sink]]:
    async for pair in relay_to(tmp_path, pki, ("DSN", "REQUIRETLS")):
        yield pair


@pytest.fixture
async def plain_relay(tmp_path: Path, pki: Pki) -> AsyncIterator[tuple[RunningRelay, Sink]]:
    async for pair in relay_to(tmp_path, pki, ("DSN",)):
        yield pair


async def transaction(r: RunningRelay, mail: str, rcpt: str) -> tuple[str, str, str]:
    conn = await RawSmtp.ready(r.port, r.pki.client_context())
    try:
        answers = [await conn.cmd(mail), await conn.cmd(rcpt)]
        if answers[1].startswith("250"):
            answers.append(await conn.data(message() + b".\r\n"))
        else:
            answers.append("")
        return answers[0], answers[1], answers[2]
    finally:
        await conn.close()


async def test_dsn_and_requiretls_are_advertised_requiretls_only_under_tls(
    dsn_relay: tuple[RunningRelay, Sink],
) -> None:
    r, _ = dsn_relay
    conn = await RawSmtp.connect(r.port)
    before = await conn.ehlo()
    await conn.starttls(r.pki.client_context())
    after = await conn.ehlo()
    await conn.close()
    assert "250-DSN" in before and not any("REQUIRETLS" in line for line in before)
    assert "250-DSN" in after and "250-REQUIRETLS" in after


async def test_dsn_parameters_reach_a_dsn_upstream_exactly_as_sent(
    dsn_relay: tuple[RunningRelay, Sink],
) -> None:
    r, sink = dsn_relay
    answers = await transaction(
        r,
        f"MAIL FROM:<{SENDER}> RET=HDRS ENVID=QQ314159+2Bx.Case",
        "RCPT TO:<patient@example.org> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;Patient+2B1@Example.org",
    )
    assert answers[:2] == ("250 2.1.0 Sender OK", "250 2.1.5 Recipient OK")
    assert answers[2].startswith("250 2.0.0 Delivered to upstream"), answers
    [got] = sink.received
    assert got.mail_params.split() == ["RET=HDRS", "ENVID=QQ314159+2Bx.Case"]
    assert got.rcpt_params == ["NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;Patient+2B1@Example.org"]


async def test_an_upstream_without_dsn_gets_the_message_without_the_parameters(
    tmp_path: Path, pki: Pki
) -> None:
    # The ordinary aiosmtpd sink answers 555 to any DSN parameter: delivery shows they were dropped.
    sink = await Sink(pki.server_context()).start()
    r = await start_relay(tmp_path, pki, sink)
    try:
        answers = await transaction(
            r,
            f"MAIL FROM:<{SENDER}> RET=FULL ENVID=abc",
            "RCPT TO:<patient@example.org> NOTIFY=NEVER",
        )
    finally:
        await r.stop()
        await sink.stop()
    assert answers[2].startswith("250 2.0.0 Delivered to upstream"), answers
    assert len(sink.received) == 1


async def test_requiretls_goes_only_to_an_upstream_that_offers_it(
    dsn_relay: tuple[RunningRelay, Sink],
) -> None:
    r, sink = dsn_relay
    answers = await transaction(
        r, f"MAIL FROM:<{SENDER}> REQUIRETLS", "RCPT TO:<patient@example.org>"
    )
    assert answers[2].startswith("250 2.0.0 Delivered to upstream"), answers
    assert sink.received[0].mail_params == "REQUIRETLS"


async def test_requiretls_to_an_upstream_without_it_is_a_permanent_failure(
    plain_relay: tuple[RunningRelay, Sink],
) -> None:
    r, sink = plain_relay
    conn = await RawSmtp.ready(r.port, r.pki.client_context())
    assert await conn.cmd(f"MAIL FROM:<{SENDER}> REQUIRETLS") == NO_REQUIRETLS
    # The session stays usable: the same mail without REQUIRETLS goes through.
    assert await conn.cmd(f"MAIL FROM:<{SENDER}>") == "250 2.1.0 Sender OK"
    await conn.close()
    assert sink.received == []
    events = [e for e in r.audit() if e.get("event") == "upstream-unavailable"]
    assert [(e["stage"], e["outcome"], e["reply_status"]) for e in events] == [
        ("mail", "no-requiretls", "5.7.30")
    ]


async def test_requiretls_is_refused_on_a_plaintext_session(
    dsn_relay: tuple[RunningRelay, Sink],
) -> None:
    r, _ = dsn_relay
    conn = await RawSmtp.connect(r.port, local="127.0.0.7")  # a plaintext network
    await conn.ehlo()
    assert await conn.cmd(f"MAIL FROM:<{SENDER}> REQUIRETLS") == (
        "530 5.7.10 REQUIRETLS needs TLS; issue STARTTLS first"
    )
    assert await conn.cmd(f"MAIL FROM:<{SENDER}>") == "250 2.1.0 Sender OK"
    await conn.close()


@pytest.mark.parametrize(
    ("command", "reply"),
    [
        (f"MAIL FROM:<{SENDER}> RET=ALL", "501 5.5.4 RET must be FULL or HDRS (RFC 3461)"),
        (f"MAIL FROM:<{SENDER}> RET=FULL RET=HDRS", "501 5.5.4 RET given twice in MAIL"),
        (
            f"MAIL FROM:<{SENDER}> ENVID=a=b",
            "501 5.5.4 ENVID must be xtext of at most 100 characters (RFC 3461)",
        ),
        (
            f"MAIL FROM:<{SENDER}> ENVID=a+zz",
            "501 5.5.4 ENVID must be xtext of at most 100 characters (RFC 3461)",
        ),
        (
            f"MAIL FROM:<{SENDER}> ENVID={'x' * 101}",
            "501 5.5.4 ENVID must be xtext of at most 100 characters (RFC 3461)",
        ),
        (f"MAIL FROM:<{SENDER}> REQUIRETLS=YES", "501 5.5.4 REQUIRETLS takes no value (RFC 8689)"),
        (
            f"MAIL FROM:<{SENDER}> FOO=1",
            "555 5.5.4 MAIL parameter not recognized; this relay takes SIZE, BODY, SMTPUTF8, "
            "RET, ENVID and REQUIRETLS",
        ),
    ],
)
async def test_bad_mail_parameters_are_refused_with_what_is_expected(
    dsn_relay: tuple[RunningRelay, Sink], command: str, reply: str
) -> None:
    r, _ = dsn_relay
    conn = await RawSmtp.ready(r.port, r.pki.client_context())
    assert await conn.cmd(command) == reply
    await conn.close()


@pytest.mark.parametrize(
    ("param", "reply"),
    [
        ("NOTIFY=NEVER,SUCCESS", "501 5.5.4 NOTIFY must be NEVER, or SUCCESS, FAILURE and DELAY"),
        ("NOTIFY=SOMETIMES", "501 5.5.4 NOTIFY must be NEVER, or SUCCESS, FAILURE and DELAY"),
        ("NOTIFY=DELAY,DELAY", "501 5.5.4 NOTIFY must be NEVER, or SUCCESS, FAILURE and DELAY"),
        ("ORCPT=jane@example.org", "501 5.5.4 ORCPT must be addr-type;xtext"),
        ("ORCPT=rfc822;a=b@example.org", "501 5.5.4 ORCPT must be addr-type;xtext"),
        ("NOTIFY=NEVER NOTIFY=NEVER", "501 5.5.4 NOTIFY given twice in RCPT"),
        ("FOO=1", "555 5.5.4 RCPT parameter not recognized; this relay takes NOTIFY and ORCPT"),
    ],
)
async def test_bad_rcpt_parameters_are_refused_with_what_is_expected(
    dsn_relay: tuple[RunningRelay, Sink], param: str, reply: str
) -> None:
    r, sink = dsn_relay
    conn = await RawSmtp.ready(r.port, r.pki.client_context())
    assert await conn.cmd(f"MAIL FROM:<{SENDER}>") == "250 2.1.0 Sender OK"
    assert (await conn.cmd(f"RCPT TO:<patient@example.org> {param}")).startswith(reply)
    await conn.close()
    assert sink.received == []


# --- through the upstream connection pool ---------------------------------------------


async def send(r: RunningRelay, mail: str, rcpts: list[str], data: bytes) -> list[str]:
    """One session, one transaction: every answer from MAIL to the end of DATA."""
    conn = await RawSmtp.ready(r.port, r.pki.client_context())
    try:
        answers = [await conn.cmd(mail)]
        for rcpt in rcpts:
            answers.append(await conn.cmd(rcpt))
        answers.append(await conn.data(data + b".\r\n"))
        await conn.cmd("QUIT")
    finally:
        await conn.close()
    return answers


async def until(check: Callable[[], bool], seconds: float = 5.0) -> None:
    async with asyncio.timeout(seconds):
        while not check():  # noqa: ASYNC110 - polling state the relay owns
            await asyncio.sleep(0.01)


async def deliver_first(r: RunningRelay) -> None:
    """One message to a@example.org delivered, and its connection back in the pool, idle."""
    first = await send(r, f"MAIL FROM:<{SENDER}>", ["RCPT TO:<a@example.org>"], message())
    assert first[-1].startswith("250 2.0.0 Delivered to upstream"), first
    await until(lambda: r.relay.runtime.upstream.idle == 1)


async def test_a_pooled_connection_without_requiretls_never_carries_requiretls_mail(
    tmp_path: Path, pki: Pki
) -> None:
    # The pool keeps a connection opened while the upstream did not offer REQUIRETLS; the
    # upstream then starts offering it. The old connection's own EHLO is what counts.
    sink = await Sink(pki.server_context(), extensions=("DSN",)).start()
    r = await start_relay(tmp_path, pki, sink)
    try:
        await deliver_first(r)
        sink.extensions = ("DSN", "REQUIRETLS")
        secure = await send(
            r, f"MAIL FROM:<{SENDER}> REQUIRETLS", ["RCPT TO:<b@example.org>"], message()
        )
        # And a plain message may still use the old connection.
        plain = await send(r, f"MAIL FROM:<{SENDER}>", ["RCPT TO:<c@example.org>"], message())
    finally:
        await r.stop()
        await sink.stop()
    assert secure[-1].startswith("250 2.0.0 Delivered to upstream"), secure
    assert plain[-1].startswith("250 2.0.0 Delivered to upstream"), plain
    by_rcpt = {m.rcpt_tos[0]: m for m in sink.received}
    assert by_rcpt["b@example.org"].mail_params == "REQUIRETLS"
    assert by_rcpt["b@example.org"].session == 2
    assert "REQUIRETLS" in by_rcpt["b@example.org"].offered
    # Session 1 (no REQUIRETLS in its EHLO) never saw a REQUIRETLS MAIL.
    for m in sink.received:
        if "REQUIRETLS" in m.mail_params:
            assert "REQUIRETLS" in m.offered, m


async def test_no_connection_offers_requiretls_then_the_client_hears_550_and_nothing_goes(
    tmp_path: Path, pki: Pki
) -> None:
    sink = await Sink(pki.server_context(), extensions=("DSN",)).start()
    r = await start_relay(tmp_path, pki, sink)
    try:
        await deliver_first(r)
        conn = await RawSmtp.ready(r.port, r.pki.client_context())
        refused = await conn.cmd(f"MAIL FROM:<{SENDER}> REQUIRETLS")
        await conn.close()
    finally:
        await r.stop()
        await sink.stop()
    assert refused == NO_REQUIRETLS
    assert [m.rcpt_tos for m in sink.received] == [["a@example.org"]]


async def test_a_stale_pooled_connection_is_retried_with_every_dsn_parameter(
    tmp_path: Path, pki: Pki
) -> None:
    # The first upstream session dies at the second RCPT of the next message, as an
    # upstream that closed an idle connection: the retry replays MAIL and the accepted
    # recipient with their parameters, then the refused command with its own.
    sink = await Sink(pki.server_context(), extensions=("DSN",)).start()
    first = Faults()

    async def arm() -> None:
        first.reset_at, first.reset_skip = "RCPT", 1

    first.on_accept = arm
    sink.session_faults = lambda: first if sink.connections == 1 else None
    r = await start_relay(tmp_path, pki, sink)
    try:
        await deliver_first(r)
        answers = await send(
            r,
            f"MAIL FROM:<{SENDER}> RET=HDRS ENVID=Case+2B7",
            [
                "RCPT TO:<b@example.org> NOTIFY=FAILURE ORCPT=rfc822;B@example.org",
                "RCPT TO:<c@example.org> NOTIFY=NEVER",
            ],
            message(),
        )
    finally:
        await r.stop()
        await sink.stop()
    assert answers[:3] == [
        "250 2.1.0 Sender OK",
        "250 2.1.5 Recipient OK",
        "250 2.1.5 Recipient OK",
    ]
    assert answers[-1].startswith("250 2.0.0 Delivered to upstream"), answers
    got = sink.received[-1]
    assert got.session == 2
    assert got.rcpt_tos == ["b@example.org", "c@example.org"]
    assert got.mail_params.split() == ["RET=HDRS", "ENVID=Case+2B7"]
    assert got.rcpt_params == ["NOTIFY=FAILURE ORCPT=rfc822;B@example.org", "NOTIFY=NEVER"]


def education(rcpt: str) -> bytes:
    return (
        f"From: {SENDER}\r\nTo: {rcpt}\r\nSubject: Five tips for a healthy spring\r\n"
        f"X-PHI-Category: education\r\nMessage-ID: <{fake.uuid4()}@clinic.example>\r\n\r\n"
        "Walk every day.\r\n"
    ).encode()


async def test_per_recipient_copies_carry_each_recipients_parameters_and_their_exact_size(
    dsn_relay: tuple[RunningRelay, Sink],
) -> None:
    # A footer with a per-recipient unsubscribe link: one upstream transaction per
    # recipient, each opened after the message is known, so SIZE is re-declared exactly.
    r, sink = dsn_relay
    answers = await send(
        r,
        f"MAIL FROM:<{SENDER}> RET=FULL ENVID=news-1 SIZE=300",
        [
            "RCPT TO:<a@example.org> NOTIFY=SUCCESS",
            "RCPT TO:<b@example.org> NOTIFY=DELAY,FAILURE ORCPT=rfc822;b@example.org",
        ],
        education("a@example.org"),
    )
    assert answers[-1].startswith("250 2.0.0 Delivered to upstream"), answers
    by_rcpt = {m.rcpt_tos[0]: m for m in sink.received}
    assert sorted(by_rcpt) == ["a@example.org", "b@example.org"]
    assert by_rcpt["a@example.org"].rcpt_params == ["NOTIFY=SUCCESS"]
    assert by_rcpt["b@example.org"].rcpt_params == [
        "NOTIFY=DELAY,FAILURE ORCPT=rfc822;b@example.org"
    ]
    for got in sink.received:
        params = got.mail_params.split()
        assert params[:2] == ["RET=FULL", "ENVID=news-1"], params
        assert params[2] == f"SIZE={len(got.data)}", (params, len(got.data))


async def test_the_clients_size_estimate_goes_to_the_upstream_at_mail(
    dsn_relay: tuple[RunningRelay, Sink],
) -> None:
    r, sink = dsn_relay
    answers = await send(
        r, f"MAIL FROM:<{SENDER}> SIZE=4096", ["RCPT TO:<a@example.org>"], message()
    )
    assert answers[-1].startswith("250 2.0.0 Delivered to upstream"), answers
    assert sink.received[0].mail_params == "SIZE=4096"
