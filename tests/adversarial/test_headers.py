"""Header blocks read the way receiving clients read them, hop limit and MIME nesting limit.

A field the relay does not see as a field is a field it does not judge; receivers read
`Subject : x` and fields after a stray line, so the relay must too, or refuse.
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
Faker.seed(5061)
SENDER = "app@clinic.example"
PHI_SUBJECT = b"Results for MRN 4451234"
# The detector names the kinds it found; the medical record number is one of them.
REFUSED_PHI = "550 5.7.1 Subject line contains protected health information ("
AMBIGUOUS = (
    "550 5.6.0 Message header section cannot be read unambiguously (a line that is not a "
    "header field, or a fold with nothing to continue, among the header fields); fix the header"
)


def head(*lines: bytes) -> bytes:
    return b"".join(line + b"\r\n" for line in lines)


def base(extra: bytes = b"", subject: bytes = b"Subject: Parking update") -> bytes:
    return (
        head(
            f"From: {SENDER}".encode(),
            b"To: someone@example.org",
            f"Message-ID: <{fake.uuid4()}@clinic.example>".encode(),
            subject,
        )
        + extra
    )


async def send(relay: RunningRelay, data: bytes) -> str:
    conn = await RawSmtp.ready(relay.port, relay.pki.client_context())
    try:
        return await conn.mail(SENDER, [fake.email()], data)
    finally:
        await conn.close()


def last_decision(relay: RunningRelay) -> dict[str, object]:
    decisions = relay.decisions()
    assert decisions, "no decision record"
    return decisions[-1]


@pytest.mark.parametrize(
    "subject_line",
    [b"Subject : ", b"Subject\t: ", b"SUBJECT  :\t", b"subject :"],
    ids=["space", "tab", "upper-many", "lower-no-space"],
)
async def test_whitespace_before_colon_is_still_the_subject(
    relay: RunningRelay, sink: Sink, subject_line: bytes
) -> None:
    data = head(f"From: {SENDER}".encode(), b"To: someone@example.org", subject_line + PHI_SUBJECT)
    answer = await send(relay, data + b"\r\nSee you soon.\r\n")
    assert answer.startswith(REFUSED_PHI) and "medical record number" in answer, answer
    assert sink.received == []
    verdicts = last_decision(relay)["verdicts"]
    assert isinstance(verdicts, list)
    found = [v for v in verdicts if v["rule"] == "subject-phi"]
    assert found[0]["reason"] == "phi.subject" and "mrn" in found[0]["kinds"], found


async def test_clean_subject_with_whitespace_before_colon_goes_out_canonical(
    relay: RunningRelay, sink: Sink
) -> None:
    data = base(subject=b"Subject  : Our new Saturday hours") + b"\r\nSee you soon.\r\n"
    answer = await send(relay, data)
    assert answer.startswith("250 2.0.0 Delivered to upstream as "), answer
    got = sink.received[0].data
    # What the relay judged is what every reader now sees.
    assert b"\r\nSubject: Our new Saturday hours\r\n" in got
    assert b"Subject  :" not in got
    assert sink.received[0].message["Subject"] == "Our new Saturday hours"
    assert got.endswith(b"\r\n\r\nSee you soon.\r\n")


@pytest.mark.parametrize(
    "block",
    [
        # Fields after a line that is not a field: lenient readers keep reading them.
        head(b"this line is not a header", b"Subject: " + PHI_SUBJECT),
        head(b"X-Note this is junk", b"subject :" + PHI_SUBJECT),
        head(b": empty field name", b"X-Other: 1"),
        # A message that starts with a fold, or folds with nothing on the line.
        head(b" Subject: " + PHI_SUBJECT),
        head(b"X-Folded: a", b"   ", b"Subject: " + PHI_SUBJECT),
    ],
    ids=["junk-then-field", "junk-then-spaced-field", "empty-name", "first-fold", "blank-fold"],
)
async def test_ambiguous_header_blocks_refused(
    relay: RunningRelay, sink: Sink, block: bytes
) -> None:
    data = base() + block + b"\r\nSee you soon.\r\n"
    if block.startswith(b" "):
        data = block + base() + b"\r\nSee you soon.\r\n"
    assert await send(relay, data) == AMBIGUOUS
    assert sink.received == []
    verdicts = last_decision(relay)["verdicts"]
    assert verdicts == [
        {"rule": "message", "action": "reject", "reason": "message.header-ambiguous", "kinds": []}
    ]


@pytest.mark.parametrize(
    ("second", "answer"),
    [
        (b"SUBJECT : " + PHI_SUBJECT, "550 5.6.0 Message has more than one Subject header; "
         "send exactly one"),
        (b"from\t: other@clinic.example", "550 5.6.0 Message has more than one From header; "
         "send exactly one"),
        (b"Content-Type : text/html", "550 5.6.0 Message repeats a header field that may appear "
         "only once (Content-Type, Content-Transfer-Encoding, Content-Disposition or "
         "MIME-Version); send it once"),
    ],
    ids=["subject", "from", "content-type"],
)  # fmt: skip
async def test_second_single_field_in_any_spelling_refused(
    relay: RunningRelay, sink: Sink, second: bytes, answer: str
) -> None:
    data = base(head(b"Content-Type: text/plain", second)) + b"\r\nSee you soon.\r\n"
    assert await send(relay, data) == answer
    assert sink.received == []


async def test_body_line_without_separator_is_still_a_body(relay: RunningRelay, sink: Sink) -> None:
    # No empty line, and nothing after the stray line looks like a field: every reader
    # agrees that the body starts there.
    data = base(head(b"This line is not a header and there was no empty line."))
    answer = await send(relay, data)
    assert answer.startswith("250 2.0.0 Delivered"), answer
    assert sink.received[0].data.endswith(b"there was no empty line.\r\n")


def received_lines(count: int) -> bytes:
    return b"".join(
        f"Received: from hop{i}.example (hop{i}.example [192.0.2.{i % 250}])\r\n"
        f"\tby mx.example with ESMTP; Mon, 23 Nov 2026 09:00:00 +0000\r\n".encode()
        for i in range(count)
    )


async def test_hop_limit(tmp_path: Path, pki: Pki, sink: Sink) -> None:
    r = await start_relay(tmp_path, pki, sink)
    try:
        at_limit = received_lines(50) + base() + b"\r\nbody\r\n"
        answer = await send(r, at_limit)
        assert answer.startswith("250 2.0.0 Delivered"), answer
        over = received_lines(60) + base() + b"\r\nbody\r\n"
        assert await send(r, over) == (
            "554 5.4.6 Too many Received headers (mail loop?); the hop limit is 50"
        )
        assert len(sink.received) == 1
        assert last_decision(r)["verdicts"] == [
            {"rule": "message", "action": "reject", "reason": "message.hop-limit", "kinds": ["50"]}
        ]
    finally:
        await r.stop()
    # Configurable: the same 50 hops are too many under a limit of 10.
    r = await start_relay(tmp_path / "b", pki, sink, server={"max_received": 10})
    try:
        answer = await send(r, received_lines(11) + base() + b"\r\nbody\r\n")
        assert answer == "554 5.4.6 Too many Received headers (mail loop?); the hop limit is 10"
        assert len(sink.received) == 1
    finally:
        await r.stop()


def nested(depth: int) -> bytes:
    inner = b"Content-Type: text/plain\r\n\r\nSee you soon.\r\n"
    for i in range(depth - 1):
        inner = (
            f'Content-Type: multipart/mixed; boundary="b{i}"\r\n\r\n--b{i}\r\n'.encode()
            + inner
            + f"\r\n--b{i}--\r\n".encode()
        )
    return base(b"MIME-Version: 1.0\r\n" + inner)


@pytest.mark.parametrize("depth", [101, 400, 3000])
async def test_deep_mime_nesting_refused_definitively(
    relay: RunningRelay, sink: Sink, depth: int
) -> None:
    answer = await send(relay, nested(depth))
    assert answer == "550 5.6.0 MIME structure is nested too deeply; the limit is 100 levels"
    assert sink.received == []
    assert last_decision(relay)["verdicts"] == [
        {"rule": "message", "action": "reject", "reason": "message.mime-too-deep", "kinds": ["100"]}
    ]


async def test_mime_nesting_at_the_limit_delivered(relay: RunningRelay, sink: Sink) -> None:
    answer = await send(relay, nested(100))
    assert answer.startswith("250 2.0.0 Delivered"), answer
    assert len(sink.received) == 1


async def test_mime_nesting_limit_configurable(tmp_path: Path, pki: Pki, sink: Sink) -> None:
    r = await start_relay(tmp_path, pki, sink, server={"max_mime_depth": 5})
    try:
        assert await send(r, nested(6)) == (
            "550 5.6.0 MIME structure is nested too deeply; the limit is 5 levels"
        )
        assert (await send(r, nested(5))).startswith("250 2.0.0 Delivered")
    finally:
        await r.stop()


@pytest.mark.parametrize(
    "part_head",
    [
        b"Content-Type : text/html; charset=us-ascii\r\n",
        b"X-Junk line without colon\r\nContent-Disposition: attachment\r\n",
    ],
    ids=["spaced-content-type", "junk-then-disposition"],
)
async def test_ambiguous_mime_part_header_refused(
    relay: RunningRelay, sink: Sink, part_head: bytes
) -> None:
    body = (
        b'MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary="b"\r\n\r\n'
        b"--b\r\nContent-Type: text/plain\r\n\r\nHello.\r\n"
        b"--b\r\n" + part_head + b"\r\n<p>Results for MRN 4451234</p>\r\n--b--\r\n"
    )
    assert await send(relay, base(body)) == AMBIGUOUS
    assert sink.received == []


async def test_part_without_headers_is_still_fine(relay: RunningRelay, sink: Sink) -> None:
    # A part that starts with its text (no blank line) is sloppy but unambiguous.
    body = (
        b'MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary="b"\r\n\r\n'
        b"--b\r\nHello, see you on Saturday.\r\n--b--\r\n"
    )
    answer = await send(relay, base(body))
    assert answer.startswith("250 2.0.0 Delivered"), answer
