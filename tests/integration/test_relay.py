"""The relay end to end: real sockets, real TLS, a real upstream; exact replies and audit."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime
from email.message import EmailMessage
from pathlib import Path

import aiosmtplib
import pytest
from faker import Faker

from relay.audit.report import Report
from relay.users import add_user
from tests.support.pki import Pki
from tests.support.relay import RunningRelay, start_relay
from tests.support.upstream import Sink

fake = Faker()
Faker.seed(20261123)


def plain(subject: str, to: list[str], body: str = "See you soon.\n") -> bytes:
    msg = EmailMessage()
    msg["From"] = "app@clinic.example"
    msg["To"] = ", ".join(to)
    msg["Subject"] = subject
    msg["Message-ID"] = f"<{fake.uuid4()}@clinic.example>"
    msg.set_content(body)
    return msg.as_bytes(policy=msg.policy.clone(linesep="\r\n"))


async def send(client: aiosmtplib.SMTP, rcpts: list[str], data: bytes) -> tuple[dict, str]:
    errors, text = await client.sendmail("app@clinic.example", rcpts, data)
    return errors, text


async def test_ehlo_before_tls_offers_starttls_not_auth(relay: RunningRelay) -> None:
    client = await relay.client(starttls=False)
    assert client.supports_extension("starttls")
    assert not client.supports_extension("auth")
    for ext in ("size", "8bitmime", "smtputf8", "pipelining", "enhancedstatuscodes"):
        assert client.supports_extension(ext), ext
    assert client.esmtp_extensions["size"] == str(25 * 1024 * 1024)
    await client.quit()


@pytest.mark.parametrize(
    "command",
    ["MAIL FROM:<a@clinic.example>", "RCPT TO:<b@example.org>", "DATA", "AUTH PLAIN AGFhAGI="],
)
async def test_starttls_required(relay: RunningRelay, command: str) -> None:
    client = await relay.client(starttls=False)
    resp = await client.execute_command(*command.encode().split(b" ", 1))
    assert (resp.code, resp.message) == (530, "5.7.0 Must issue a STARTTLS command first")
    await client.quit()
    assert relay.decisions() == []


async def test_second_starttls_refused(relay: RunningRelay) -> None:
    client = await relay.client()
    resp = await client.execute_command(b"STARTTLS")
    assert (resp.code, resp.message) == (503, "5.5.1 TLS already active")
    await client.quit()


async def test_clean_message_reaches_tls_upstream_unchanged_but_added_headers(
    relay: RunningRelay, sink: Sink
) -> None:
    rcpt = fake.email()
    data = plain("Your appointment is confirmed", [rcpt])
    client = await relay.client()
    errors, text = await send(client, [rcpt], data)
    await client.quit()
    assert errors == {}
    assert text.startswith("2.0.0 Delivered to upstream as ")
    assert len(sink.received) == 1
    got = sink.received[0]
    assert got.rcpt_tos == [rcpt]
    assert got.mail_from == "app@clinic.example"
    # Only a Received header was added in front; every original byte follows unchanged.
    assert got.data.startswith(b"Received: from ")
    assert got.data.endswith(data)
    assert b"by relay.test (phi-relay) with ESMTPS (TLSv1." in got.data
    [decision] = relay.decisions()
    assert decision["reply_code"] == 250
    assert decision["category"] == "treatment"
    assert decision["tls_version"].startswith("TLSv1.")
    [delivery] = relay.deliveries()
    assert delivery["decision_id"] == decision["decision_id"]
    assert delivery["outcome"] == "delivered"
    assert delivery["reply_code"] == 250


async def test_phi_subject_refused_nothing_upstream(relay: RunningRelay, sink: Sink) -> None:
    rcpt = fake.email()
    mrn = str(fake.random_number(digits=7, fix_len=True))
    subject = f"MRN {mrn} follow-up"
    client = await relay.client()
    with pytest.raises(aiosmtplib.SMTPDataError) as info:
        await send(client, [rcpt], plain(subject, [rcpt]))
    await client.quit()
    assert info.value.code == 550
    assert info.value.message == (
        "5.7.1 Subject line contains protected health information (medical record number); "
        "put details in the message body"
    )
    assert sink.received == []
    [decision] = relay.decisions()
    assert decision["reply_code"] == 550
    verdict = next(v for v in decision["verdicts"] if v["rule"] == "subject-phi")
    assert verdict == {
        "rule": "subject-phi",
        "action": "reject",
        "reason": "phi.subject",
        "kinds": ["mrn"],
        "rules": ["id.cued"],  # the rule that decided, never the text
    }
    log = relay.audit_path.read_text()
    assert mrn not in log and "follow-up" not in log and rcpt not in log
    assert relay.deliveries() == []


async def test_open_relay_refused_without_auth_or_trust(
    tmp_path: Path, pki: Pki, sink: Sink
) -> None:
    users = tmp_path / "users"
    add_user(users, "clinic-app", "correct horse battery staple")
    r = await start_relay(
        tmp_path, pki, sink, server={"users_file": str(users), "trusted_networks": []}
    )
    try:
        client = await r.client()
        assert client.supports_extension("auth")
        resp = await client.execute_command(b"MAIL", b"FROM:<a@clinic.example>")
        assert (resp.code, resp.message) == (530, "5.7.0 Authentication required")
        with pytest.raises(aiosmtplib.SMTPAuthenticationError) as info:
            await client.auth_plain("clinic-app", "wrong password here")
        assert info.value.code == 535
        await client.auth_login("clinic-app", "correct horse battery staple")
        rcpt = fake.email()
        errors, _ = await send(client, [rcpt], plain("Our new Saturday hours", [rcpt]))
        await client.quit()
        assert errors == {}
        assert sink.all_rcpts() == [rcpt]
        [decision] = r.decisions()
        assert decision["auth_user"] == "clinic-app"
        failures = [x for x in r.audit() if x.get("event") == "auth-failure"]
        assert len(failures) == 1 and "wrong password here" not in r.audit_path.read_text()
    finally:
        await r.stop()


async def test_footer_in_both_parts_and_message_parses(relay: RunningRelay, sink: Sink) -> None:
    rcpt = fake.email()
    msg = EmailMessage()
    msg["From"] = "news@clinic.example"
    msg["To"] = rcpt
    msg["Subject"] = "Flu shots now available"
    msg["X-PHI-Category"] = "education"
    msg.set_content("Walk in any weekday.\n")
    msg.add_alternative("<html><body><p>Walk in any weekday.</p></body></html>\n", subtype="html")
    client = await relay.client()
    errors, _ = await send(client, [rcpt], msg.as_bytes(policy=msg.policy.clone(linesep="\r\n")))
    await client.quit()
    assert errors == {}
    [got] = sink.received
    out = got.message
    assert out.defects == []
    assert "X-PHI-Category" not in out
    assert out["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert out["List-Unsubscribe"].startswith("<https://127.0.0.1:8025/u/")
    text = out.get_body(("plain",))
    html = out.get_body(("html",))
    assert text is not None and html is not None
    assert "Example Health Clinic" in text.get_content()
    assert "Example Health Clinic" in html.get_content()
    assert html.get_content().index("Example Health Clinic") < html.get_content().lower().index(
        "</body>"
    )


@pytest.mark.parametrize(
    ("sink_kind", "code", "status"),
    [("no-starttls", 451, "4.7.4"), ("rogue-cert", 451, "4.7.5"), ("down", 451, "4.4.1")],
)
async def test_bad_upstream_tempfails_and_delivers_nothing(
    tmp_path: Path, pki: Pki, sink_kind: str, code: int, status: str
) -> None:
    if sink_kind == "no-starttls":
        bad = await Sink(pki.server_context(), starttls=False).start()
    elif sink_kind == "rogue-cert":
        bad = await Sink(pki.server_context(rogue=True)).start()
    else:
        bad = await Sink(pki.server_context()).start()
        await bad.stop()  # nothing listens on that port any more
    r = await start_relay(tmp_path, pki, bad)
    try:
        client = await r.client()
        resp = await client.execute_command(b"MAIL", b"FROM:<app@clinic.example>")
        assert resp.code == code
        assert resp.message.startswith(status + " ")
        await client.quit()
        assert bad.received == []
        events = [x for x in r.audit() if x.get("event") == "upstream-unavailable"]
        assert len(events) == 1
        assert events[0]["reply_code"] == code and events[0]["reply_status"] == status
    finally:
        await r.stop()
        await bad.stop()


async def test_upstream_refusing_one_of_two_recipients(relay: RunningRelay, sink: Sink) -> None:
    good, bad = fake.email(), fake.email()
    sink.faults.refuse_rcpt[bad] = "550 5.1.1 mailbox unavailable"
    client = await relay.client()
    errors, _ = await send(client, [good, bad], plain("Our new Saturday hours", [good, bad]))
    await client.quit()
    assert errors == {bad: aiosmtplib.SMTPResponse(550, "5.1.1 Upstream: mailbox unavailable")}
    assert sink.all_rcpts() == [good]
    [decision] = relay.decisions()
    assert len(decision["recipients"]) == 1


async def test_a_recipient_the_upstream_refuses_at_rcpt_is_audited(
    relay: RunningRelay, sink: Sink
) -> None:
    # Neither the decision nor the delivery record names a recipient the upstream refused
    # at RCPT: the refusal is its own record, the recipient hashed, never the address.
    good, bad, later = fake.email(), fake.email(), fake.email()
    sink.faults.refuse_rcpt[bad] = "550 5.1.1 mailbox unavailable"
    sink.faults.refuse_rcpt[later] = "452 4.2.2 mailbox full"
    client = await relay.client()
    errors, _ = await send(client, [good, bad, later], plain("Our new Saturday hours", [good]))
    await client.quit()
    assert errors == {
        bad: aiosmtplib.SMTPResponse(550, "5.1.1 Upstream: mailbox unavailable"),
        later: aiosmtplib.SMTPResponse(452, "4.2.2 Upstream: mailbox full"),
    }
    assert sink.all_rcpts() == [good]
    audit = relay.relay.services.audit if relay.relay.services else None
    assert audit is not None
    refused = [r for r in relay.audit() if r.get("event") == "recipient-refused"]
    assert [
        (r["recipient"], r["reply_code"], r["reply_status"], r["outcome"]) for r in refused
    ] == [
        (audit.hash_recipient(bad), 550, "5.1.1", "refused"),
        (audit.hash_recipient(later), 452, "4.2.2", "deferred"),
    ]
    assert all(r["stage"] == "rcpt" and r["session_id"] for r in refused)
    [decision] = relay.decisions()
    assert refused[0]["session_id"] == decision["session_id"]
    text = relay.audit_path.read_text()
    assert bad not in text and later not in text and bad.split("@")[0] not in text
    summary = Report(since=None, until=None, generated=datetime.now(UTC))
    for record in relay.audit():
        summary.add(record)
    assert summary.upstream_failures == {
        ("at rcpt", "refused", "550"): 1,
        ("at rcpt", "deferred", "452"): 1,
    }


async def test_each_decision_one_audit_record_written_before_upstream(
    relay: RunningRelay, sink: Sink
) -> None:
    seen_before: list[int] = []

    async def watch() -> None:
        await sink.event.wait()
        seen_before.append(len(relay.decisions()))

    watcher = asyncio.create_task(watch())
    subjects = ["Our new Saturday hours", "Your SSN 123-45-6789 on file", "Parking update"]
    client = await relay.client()
    for subject in subjects:
        rcpt = fake.email()
        if "SSN" in subject:
            with pytest.raises(aiosmtplib.SMTPDataError) as info:
                await send(client, [rcpt], plain(subject, [rcpt]))
            assert info.value.code == 550
        else:
            await send(client, [rcpt], plain(subject, [rcpt]))
    await client.quit()
    await asyncio.wait_for(watcher, 5)
    decisions = relay.decisions()
    assert len(decisions) == 3
    assert len({d["decision_id"] for d in decisions}) == 3
    # The first delivery happened with its decision already on disk.
    assert seen_before == [1]
    # Records come in order: each delivery after its decision.
    records = relay.audit()
    first_delivery = next(i for i, x in enumerate(records) if x.get("type") == "delivery")
    first_decision = next(i for i, x in enumerate(records) if x.get("type") == "decision")
    assert first_decision < first_delivery
    text = relay.audit_path.read_text()
    for subject in subjects:
        assert subject not in text
    assert "123-45-6789" not in text
    for line in text.splitlines():
        json.loads(line)


async def test_too_many_recipients_and_too_big(tmp_path: Path, pki: Pki, sink: Sink) -> None:
    r = await start_relay(
        tmp_path, pki, sink, server={"max_recipients": 2, "max_message_size": 2048}
    )
    try:
        client = await r.client()
        assert client.esmtp_extensions["size"] == "2048"
        await client.mail("app@clinic.example")
        for _ in range(2):
            await client.rcpt(fake.email())
        with pytest.raises(aiosmtplib.SMTPRecipientRefused) as info:
            await client.rcpt(fake.email())
        assert (info.value.code, info.value.message) == (
            452,
            "4.5.3 Too many recipients; send the rest in another message",
        )
        with pytest.raises(aiosmtplib.SMTPDataError) as big:
            await client.data(plain("Parking update", ["x@example.org"], "x" * 4000))
        assert (big.value.code, big.value.message) == (
            552,
            "5.3.4 Message too big; the limit is 2048 bytes",
        )
        await client.quit()
        assert sink.received == []
    finally:
        await r.stop()
