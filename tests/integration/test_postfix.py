"""Postfix as a client, for real: Debian's Postfix relays through phi-relay.

A private Postfix instance (tests/support/postfix.py) has relayhost = the relay,
smtp_tls_security_level = secure against the relay's development CA (the name
`localhost` must be a DNS SAN) and SASL AUTH with a password map. What happened is read
from Postfix's own log and queue, the upstream sink and the relay's audit log.
"""

from __future__ import annotations

import asyncio
import smtplib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from email.message import EmailMessage
from pathlib import Path

import pytest

from relay.certs import init_dev_certs
from relay.users import add_user
from tests.support.pki import Pki
from tests.support.postfix import RELAYHOST_LINES, Postfix
from tests.support.relay import RunningRelay, start_relay
from tests.support.upstream import Sink

USER = "postfix-client"
PASSWORD = "a synthetic postfix passphrase"
SENDER = "app@clinic.example"
ROOT = Path(__file__).resolve().parents[2]


@dataclass
class Site:
    relay: RunningRelay
    postfix: Postfix
    sink: Sink

    async def submit(
        self, subject: str, rcpts: list[str], sender: str = SENDER, category: str = ""
    ) -> None:
        """Hand a message to Postfix's smtpd (plain SMTP on loopback, as an app would)."""
        msg = EmailMessage()
        msg["From"] = sender or "MAILER-DAEMON@clinic.example"
        msg["To"] = ", ".join(rcpts)
        msg["Subject"] = subject
        if category:
            msg["X-PHI-Category"] = category
        msg.set_content("Synthetic test body.\n")

        def send() -> None:
            with smtplib.SMTP("127.0.0.1", self.postfix.smtpd_port, timeout=15) as client:
                client.send_message(msg, from_addr=sender, to_addrs=rcpts)

        await asyncio.to_thread(send)


@pytest.fixture
async def site(tmp_path: Path, pki: Pki, sink: Sink) -> AsyncIterator[Site]:
    # The relay presents its own development certificate, as `phi-relay serve` makes it.
    dev, _ = init_dev_certs(tmp_path / "certs", "relay.test")
    relay_pki = Pki(dev.ca, dev.cert, dev.key, dev.cert, dev.key)
    users = tmp_path / "users"
    add_user(users, USER, PASSWORD)
    relay = await start_relay(
        tmp_path,
        relay_pki,
        sink,
        server={"users_file": str(users), "trusted_networks": []},  # AUTH required
        upstream_cfg={"ca_file": str(pki.ca)},
    )
    postfix = Postfix(relay.port, dev.ca, USER, PASSWORD)
    try:
        await asyncio.to_thread(postfix.start)
        yield Site(relay, postfix, sink)
    finally:
        await asyncio.to_thread(postfix.stop)
        await relay.stop()


async def test_clean_message_delivered_once_over_verified_tls_and_auth(site: Site) -> None:
    await site.submit("Our new Saturday hours", ["patient@example.org"])
    (status,) = await site.postfix.wait_status(1)
    assert status.status == "sent", status
    assert "250 2.0.0" in status.detail
    log = site.postfix.log_text()
    assert "Verified TLS connection established to localhost[127.0.0.1]" in log
    assert [m.rcpt_tos for m in site.sink.received] == [["patient@example.org"]]
    (decision,) = site.relay.decisions()
    assert decision["auth_user"] == USER  # Postfix authenticated with SASL
    assert "Mail queue is empty" in await site.postfix.queue()
    await asyncio.sleep(0.5)
    assert len(site.sink.received) == 1


async def test_phi_subject_bounced_with_the_reason_in_the_dsn(site: Site) -> None:
    await site.submit("MRN 4451234 lab results", ["patient@example.org"])
    statuses = await site.postfix.wait_status(2)  # the bounce, then the DSN to the sender
    bounced, dsn = statuses
    assert bounced.status == "bounced" and bounced.rcpt == "patient@example.org"
    assert "550 5.7.1 Subject line contains protected health information" in bounced.detail
    assert dsn.status == "sent" and dsn.rcpt == SENDER
    # The DSN itself went out through the relay with the null sender, carrying the reason.
    (notice,) = site.sink.received
    assert notice.mail_from == "<>" and notice.rcpt_tos == [SENDER]  # aiosmtpd: null sender
    text = " ".join(notice.message.as_string().split())  # Postfix folds long DSN lines
    assert "said: 550 5.7.1 Subject line contains protected health information" in text
    first = site.relay.decisions()[0]
    assert (first["reply_code"], first["reply_status"]) == (550, "5.7.1")


async def test_null_sender_bounce_is_relayed(site: Site) -> None:
    await site.submit("Delivery Status Notification (Failure)", ["app@partner.example"], sender="")
    (status,) = await site.postfix.wait_status(1)
    assert status.status == "sent", status
    (got,) = site.sink.received
    assert got.mail_from == "<>" and got.rcpt_tos == ["app@partner.example"]


async def test_upstream_outage_deferred_then_delivered_exactly_once(site: Site) -> None:
    port = site.sink.port
    await site.sink.stop()
    await site.submit("Our new Saturday hours", ["patient@example.org"])
    (deferred,) = await site.postfix.wait_status(1)
    assert deferred.status == "deferred", deferred
    assert "451 4." in deferred.detail
    assert deferred.queue_id in await site.postfix.queue()
    assert site.sink.received == []

    await site.sink.start(port)  # the outage ends
    await site.postfix.flush()  # postqueue -f, as an operator would
    statuses = await site.postfix.wait_status(2)
    assert statuses[1].status == "sent" and statuses[1].queue_id == deferred.queue_id
    assert "Mail queue is empty" in await site.postfix.queue()
    await site.postfix.flush()
    await asyncio.sleep(1)
    assert [m.rcpt_tos for m in site.sink.received] == [["patient@example.org"]]


async def test_marketing_reaches_only_the_consented_recipient(site: Site) -> None:
    store = site.relay.relay.services.store
    await store.grant("yes@example.org", "marketing", (), "FORM-42")
    await site.submit(
        "Spring wellness offers", ["yes@example.org", "no@example.org"], category="marketing"
    )
    statuses = await site.postfix.wait_status(2)
    # One DATA reply covers both recipients; it says one was suppressed by policy.
    assert {s.status for s in statuses} == {"sent"}
    assert "1 suppressed by policy" in statuses[0].detail
    (got,) = site.sink.received
    assert got.rcpt_tos == ["yes@example.org"]
    assert got.message["List-Unsubscribe"] is not None
    assert "X-PHI-Category" not in got.message


def test_readme_shows_the_main_cf_lines_this_test_uses() -> None:
    readme = (ROOT / "README.md").read_text()
    lines = RELAYHOST_LINES.format(
        relay_host="localhost",
        relay_port=2525,
        ca_file="/etc/postfix/phi-relay-ca.crt",
        sasl_file="/etc/postfix/sasl_passwd",
    )
    assert lines in readme, "README 'Postfix relayhost' must show RELAYHOST_LINES"
