"""Protocol attacks over raw sockets after STARTTLS: smuggling, injection, malformed messages.

Each attack gets an exact refusal, nothing reaches the upstream that should not, and
the same connection still serves the next transaction.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from faker import Faker

from tests.support.pki import Pki
from tests.support.rawsmtp import RawSmtp
from tests.support.relay import RunningRelay, start_relay
from tests.support.upstream import Sink

fake = Faker()
Faker.seed(5051)
SENDER = "app@clinic.example"
SMUGGLED_RCPT = "victim@example.org"


def message(subject: str = "Parking update", body: bytes = b"See you soon.\r\n") -> bytes:
    head = (
        f"From: {SENDER}\r\nTo: someone@example.org\r\nSubject: {subject}\r\n"
        f"Message-ID: <{fake.uuid4()}@clinic.example>\r\n\r\n"
    ).encode()
    return head + body


def smuggled(end: bytes) -> bytes:
    """A message hiding a second transaction behind a non-standard end-of-data marker."""
    second = (
        f"MAIL FROM:<ceo@clinic.example>\r\nRCPT TO:<{SMUGGLED_RCPT}>\r\nDATA\r\n"
        "From: ceo@clinic.example\r\nSubject: wire money\r\n\r\nsmuggled\r\n"
    ).encode()
    return message(body=b"first part" + end + second)


async def still_serving(conn: RawSmtp, sink: Sink, expected_received: int) -> None:
    """The connection still works: a clean message goes through after the attack."""
    rcpt = fake.email()
    answer = await conn.mail(SENDER, [rcpt], message())
    assert answer.startswith("250 2.0.0 Delivered to upstream as "), answer
    assert len(sink.received) == expected_received
    assert sink.received[-1].rcpt_tos == [rcpt]
    assert await conn.cmd("QUIT") == "221 2.0.0 Bye"
    await conn.close()


REFUSED_BARE = "550 5.6.0 Message contains a bare CR or LF; lines must end with CRLF"


@pytest.mark.parametrize(
    "end",
    [b"\n.\n", b"\n.\r\n", b"\r.\r\n", b"\r\n.\n", b"\r\n.\r", b"\n", b"\r"],
    ids=["LF.LF", "LF.CRLF", "CR.CRLF", "CRLF.LF", "CRLF.CR", "bare-LF", "bare-CR"],
)
async def test_smuggling_refused_nothing_upstream(
    relay: RunningRelay, sink: Sink, end: bytes
) -> None:
    conn = await RawSmtp.ready(relay.port, relay.pki.client_context())
    answer = await conn.mail(SENDER, [fake.email()], smuggled(end))
    assert answer == REFUSED_BARE
    assert sink.received == []
    assert SMUGGLED_RCPT not in sink.all_rcpts()
    [decision] = relay.decisions()
    assert decision["reply_code"] == 550
    assert [v["reason"] for v in decision["verdicts"]] == ["message.bare-line-ending"]
    await still_serving(conn, sink, 1)


@pytest.mark.parametrize(
    "end", [b"\n.\n", b"\n.\r\n", b"\r.\r\n"], ids=["LF.LF", "LF.CRLF", "CR.CRLF"]
)
async def test_smuggling_normalised_is_one_message_crlf_only(
    tmp_path: Path, pki: Pki, sink: Sink, end: bytes
) -> None:
    r = await start_relay(tmp_path, pki, sink, server={"bare_line_endings": "normalise"})
    try:
        conn = await RawSmtp.ready(r.port, pki.client_context())
        rcpt = fake.email()
        answer = await conn.mail(SENDER, [rcpt], smuggled(end))
        assert answer.startswith("250 2.0.0 Delivered to upstream as "), answer
        [got] = sink.received
        assert got.rcpt_tos == [rcpt]
        assert SMUGGLED_RCPT not in sink.all_rcpts()
        body = got.data.replace(b"\r\n", b"")
        assert b"\r" not in body and b"\n" not in body
        # The would-be second message is plain text inside the one delivered message.
        assert b"MAIL FROM:<ceo@clinic.example>" in got.data
        await still_serving(conn, sink, 2)
    finally:
        await r.stop()


async def test_commands_pipelined_with_starttls_are_discarded(
    relay: RunningRelay, sink: Sink
) -> None:
    conn = await RawSmtp.connect(relay.port)
    await conn.ehlo()
    # CVE-2011-0411: plaintext bytes after STARTTLS must not be run inside the TLS session.
    await conn.starttls(
        relay.pki.client_context(),
        pipelined=f"MAIL FROM:<{SENDER}>\r\nRCPT TO:<{SMUGGLED_RCPT}>\r\nHELP\r\n".encode(),
    )
    # Inside TLS, without EHLO, the first answer we get is for our own command only.
    assert await conn.cmd("NOOP") == "250 2.0.0 OK"
    # TLS starts a new session (RFC 3207 4.2): no EHLO yet, so no pipelined MAIL either.
    assert await conn.cmd(f"RCPT TO:<{fake.email()}>") == "503 5.5.1 Send EHLO first"
    await conn.ehlo()
    await still_serving(conn, sink, 1)
    assert SMUGGLED_RCPT not in sink.all_rcpts()


@pytest.mark.parametrize(
    ("command", "expected"),
    [
        (
            b"MAIL FROM:<a@clinic.example> SMTPUTF8\x00",
            "501 5.5.0 Syntax: MAIL FROM: <address> [SP <mail-parameters>]",
        ),
        (b"MAIL FROM:<a\x00b@clinic.example>", "501 5.5.2 Control characters in MAIL command"),
        (
            b"MAIL FROM:<a@clinic.example> X=\rRCPT",
            "501 5.5.0 Syntax: MAIL FROM: <address> [SP <mail-parameters>]",
        ),
        (
            b"MAIL FROM:<a\rb@clinic.example>",
            "501 5.5.2 Control characters in MAIL command",
        ),
    ],
    ids=["nul-param", "nul-address", "cr-param", "cr-address"],
)
async def test_control_characters_in_mail_refused(
    relay: RunningRelay, sink: Sink, command: bytes, expected: str
) -> None:
    conn = await RawSmtp.ready(relay.port, relay.pki.client_context())
    assert await conn.cmd(command) == expected
    assert await conn.cmd("RCPT TO:<b@example.org>") == "503 5.5.1 Need a MAIL command first"
    await still_serving(conn, sink, 1)


@pytest.mark.parametrize(
    ("param", "expected"),
    [
        # NOTIFY is a known parameter now (RFC 3461): the NUL in its value is what is refused.
        (b"<b@example.org> NOTIFY=\x00NEVER", "501 5.5.2 Control characters in RCPT command"),
        (b"<b\x00c@example.org>", "501 5.5.2 Control characters in RCPT command"),
        (b"<b@example.org> X=\r", "501 5.5.0 Syntax: RCPT TO: <address> [SP <mail-parameters>]"),
    ],
    ids=["nul-param", "nul-address", "cr-param"],
)
async def test_control_characters_in_rcpt_refused(
    relay: RunningRelay, sink: Sink, param: bytes, expected: str
) -> None:
    conn = await RawSmtp.ready(relay.port, relay.pki.client_context())
    assert await conn.cmd(f"MAIL FROM:<{SENDER}>") == "250 2.1.0 Sender OK"
    assert await conn.cmd(b"RCPT TO:" + param) == expected
    assert await conn.cmd("RSET") == "250 2.0.0 OK"
    await still_serving(conn, sink, 1)
    assert sink.all_rcpts()[-1] != "b@example.org"


async def test_lf_inside_a_command_line_is_not_a_second_command(
    relay: RunningRelay, sink: Sink
) -> None:
    conn = await RawSmtp.ready(relay.port, relay.pki.client_context())
    answer = await conn.cmd(f"MAIL FROM:<{SENDER}>\nRCPT TO:<{SMUGGLED_RCPT}>")
    assert answer == "501 5.5.0 Syntax: MAIL FROM: <address> [SP <mail-parameters>]"
    assert await conn.cmd("NOOP") == "250 2.0.0 OK"
    await still_serving(conn, sink, 1)
    assert SMUGGLED_RCPT not in sink.all_rcpts()


def multipart(depth: int) -> bytes:
    head = (
        f"From: {SENDER}\r\nTo: someone@example.org\r\nSubject: Parking update\r\n"
        "MIME-Version: 1.0\r\n"
    )
    inner = b"Content-Type: text/plain\r\n\r\nhello\r\n"
    for level in range(depth):
        b = f"b{level}".encode()
        inner = (
            b'Content-Type: multipart/mixed; boundary="'
            + b
            + b'"\r\n\r\n--'
            + b
            + b"\r\n"
            + inner
            + b"--"
            + b
            + b"--\r\n"
        )
    return head.encode() + inner


BROKEN_BOUNDARY = (
    f"From: {SENDER}\r\nTo: someone@example.org\r\nSubject: Parking update\r\n"
    'MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary="abc"\r\n\r\n'
    "--xyz\r\nContent-Type: text/plain\r\n\r\nhello\r\n--xyz--\r\n"
).encode()


@pytest.mark.parametrize(
    ("data", "smtputf8", "expected"),
    [
        (
            message(subject="Caf\u00e9 hours"),
            False,
            "550 5.6.7 Non-ASCII header without SMTPUTF8; "
            "encode it (RFC 2047) or send with SMTPUTF8",
        ),
        (
            message().replace(b"Subject:", b"Subject: Parking\r\nSubject:"),
            False,
            "550 5.6.0 Message has more than one Subject header; send exactly one",
        ),
        (
            message().replace(b"To:", b"From: other@clinic.example\r\nTo:"),
            False,
            "550 5.6.0 Message has more than one From header; send exactly one",
        ),
        (
            message(body=b"a\x00b\r\n"),
            False,
            "550 5.6.0 Message contains a NUL byte",
        ),
        (
            multipart(105),
            False,
            "550 5.6.0 MIME structure is nested too deeply; the limit is 100 levels",
        ),
        (
            BROKEN_BOUNDARY,
            False,
            "550 5.6.0 MIME structure is broken (missing or mismatched boundary); fix the message",
        ),
    ],
    ids=["8bit-header", "two-subjects", "two-froms", "nul", "mime-deep", "mime-broken"],
)
async def test_malformed_message_refused_clearly(
    relay: RunningRelay, sink: Sink, data: bytes, smtputf8: bool, expected: str | None
) -> None:
    conn = await RawSmtp.ready(relay.port, relay.pki.client_context())
    answer = await conn.mail(SENDER, [fake.email()], data)
    if expected is None:
        assert answer.startswith("250 2.0.0 Delivered"), answer
        await still_serving(conn, sink, 2)
        return
    assert answer == expected
    assert sink.received == []
    await still_serving(conn, sink, 1)


async def test_8bit_header_with_smtputf8_accepted(relay: RunningRelay, sink: Sink) -> None:
    conn = await RawSmtp.ready(relay.port, relay.pki.client_context())
    assert await conn.cmd(f"MAIL FROM:<{SENDER}> SMTPUTF8") == "250 2.1.0 Sender OK"
    assert await conn.cmd(f"RCPT TO:<{fake.email()}>") == "250 2.1.5 Recipient OK"
    answer = await conn.data(message(subject="Caf\u00e9 hours") + b".\r\n")
    assert answer.startswith("250 2.0.0 Delivered"), answer
    assert "Caf\u00e9 hours".encode() in sink.received[0].data
    await still_serving(conn, sink, 2)


async def test_line_over_998_octets_refused(relay: RunningRelay, sink: Sink) -> None:
    conn = await RawSmtp.ready(relay.port, relay.pki.client_context())
    answer = await conn.mail(SENDER, [fake.email()], message(body=b"x" * 999 + b"\r\n"))
    assert answer == "500 5.5.2 Line too long; lines must be at most 998 octets (RFC 5322)"
    assert sink.received == []
    await still_serving(conn, sink, 1)


async def test_line_of_exactly_998_octets_accepted(relay: RunningRelay, sink: Sink) -> None:
    conn = await RawSmtp.ready(relay.port, relay.pki.client_context())
    answer = await conn.mail(SENDER, [fake.email()], message(body=b"x" * 998 + b"\r\n"))
    assert answer.startswith("250 2.0.0 Delivered"), answer
    assert b"x" * 998 + b"\r\n" in sink.received[0].data
    await still_serving(conn, sink, 2)


async def test_oversized_header_section_refused(tmp_path: Path, pki: Pki, sink: Sink) -> None:
    r = await start_relay(tmp_path, pki, sink, server={"max_header_bytes": 4096})
    try:
        conn = await RawSmtp.ready(r.port, pki.client_context())
        pad = b"".join(b"X-Pad-%d: " % i + b"p" * 70 + b"\r\n" for i in range(60))
        answer = await conn.mail(SENDER, [fake.email()], pad + message())
        assert answer == "552 5.3.4 Message header section is too large"
        assert sink.received == []
        await still_serving(conn, sink, 1)
    finally:
        await r.stop()


async def test_command_line_too_long_refused(relay: RunningRelay, sink: Sink) -> None:
    conn = await RawSmtp.ready(relay.port, relay.pki.client_context())
    answer = await conn.cmd(f"MAIL FROM:<{'a' * 2000}@clinic.example>")
    assert answer == "500 5.5.2 Command line too long"
    await still_serving(conn, sink, 1)
