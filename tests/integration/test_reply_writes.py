"""Replies the client can read together leave in one write (one TLS record, one send()).

Every write on a TLS connection is a record to seal and a send() that wakes the peer:
aiosmtpd wrote each line of a multi-line reply, and each reply of a pipelined group
(RFC 2920), on its own. Counted on the wire, from the client's side of the TLS session.
"""

from __future__ import annotations

from faker import Faker

from tests.support.relay import RunningRelay
from tests.support.tlsrecords import CountingTls
from tests.support.upstream import Sink

fake = Faker()
Faker.seed(4711)
SENDER = "app@clinic.example"


def message() -> bytes:
    return (
        f"From: {SENDER}\r\nTo: someone@example.org\r\nSubject: Parking update\r\n"
        f"Message-ID: <{fake.uuid4()}@clinic.example>\r\n\r\nSee you soon.\r\n.\r\n"
    ).encode()


async def test_ehlo_reply_is_one_record(relay: RunningRelay, sink: Sink) -> None:
    conn = await CountingTls.ready(relay.port, relay.pki.client_context())
    await conn.send(b"EHLO client.test\r\n")
    lines = await conn.reply_lines()
    assert lines[0].startswith("250-")
    assert lines[-1] == "250 HELP"
    assert "250-PIPELINING" in lines and len(lines) >= 8
    assert conn.records == 1
    await conn.close()


async def test_pipelined_group_is_answered_in_one_record(relay: RunningRelay, sink: Sink) -> None:
    conn = await CountingTls.ready(relay.port, relay.pki.client_context())
    first, second = fake.email(), fake.email()
    await conn.send(
        f"RSET\r\nMAIL FROM:<{SENDER}>\r\nRCPT TO:<{first}>\r\nRCPT TO:<{second}>\r\n"
        "DATA\r\n".encode()
    )
    replies = [(await conn.reply_lines())[-1] for _ in range(5)]
    assert replies == [
        "250 2.0.0 OK",
        "250 2.1.0 Sender OK",
        "250 2.1.5 Recipient OK",
        "250 2.1.5 Recipient OK",
        "354 End data with <CR><LF>.<CR><LF>",
    ]
    assert conn.records == 1
    await conn.send(message())
    done = (await conn.reply_lines())[-1]
    assert done.startswith("250 2.0.0 Delivered to upstream as "), done
    [got] = sink.received
    assert got.rcpt_tos == [first, second]
    [decision] = relay.decisions()
    assert decision["reply_code"] == 250
    # The last command of a group waits for the client: its reply is not held.
    await conn.send(b"NOOP\r\n")
    assert await conn.reply_lines() == ["250 2.0.0 OK"]
    assert conn.records == 3
    await conn.close()


async def test_per_recipient_replies_keep_their_place_in_a_pipelined_group(
    relay: RunningRelay, sink: Sink
) -> None:
    good, bad, other = fake.email(), fake.email(), fake.email()
    sink.faults.refuse_rcpt[bad] = "550 5.1.1 mailbox unavailable"
    conn = await CountingTls.ready(relay.port, relay.pki.client_context())
    await conn.send(
        f"MAIL FROM:<{SENDER}>\r\nRCPT TO:<{good}>\r\nRCPT TO:<{bad}>\r\n"
        f"RCPT TO:<a\x01b@example.org>\r\nRCPT TO:<{other}>\r\nDATA\r\n".encode()
    )
    replies = [(await conn.reply_lines())[-1] for _ in range(6)]
    assert replies == [
        "250 2.1.0 Sender OK",
        "250 2.1.5 Recipient OK",
        "550 5.1.1 Upstream: mailbox unavailable",
        "501 5.5.2 Control characters in RCPT command",
        "250 2.1.5 Recipient OK",
        "354 End data with <CR><LF>.<CR><LF>",
    ]
    assert conn.records == 1
    await conn.send(message())
    done = (await conn.reply_lines())[-1]
    assert done.startswith("250 2.0.0 Delivered to upstream as "), done
    assert sink.all_rcpts() == [good, other]
    [decision] = relay.decisions()
    assert len(decision["recipients"]) == 2
    await conn.close()
