"""Listener and trust modes: implicit TLS, plaintext networks, monitor mode, graceful stop."""

from __future__ import annotations

import asyncio
from email.message import EmailMessage
from pathlib import Path

import aiosmtplib
import pytest
from faker import Faker

from tests.support.pki import Pki
from tests.support.relay import start_relay
from tests.support.upstream import Sink

fake = Faker()


def plain(subject: str, to: str) -> bytes:
    msg = EmailMessage()
    msg["From"] = "app@clinic.example"
    msg["To"] = to
    msg["Subject"] = subject
    msg.set_content("Body text.\n")
    return msg.as_bytes(policy=msg.policy.clone(linesep="\r\n"))


async def test_implicit_tls_listener(tmp_path: Path, pki: Pki, sink: Sink) -> None:
    r = await start_relay(tmp_path, pki, sink, server={"implicit_tls_listen": "127.0.0.1:0"})
    try:
        client = aiosmtplib.SMTP(
            hostname="localhost",
            port=r.relay.implicit_port,
            use_tls=True,
            tls_context=pki.client_context(),
            timeout=10,
        )
        await client.connect()
        await client.ehlo()
        # Already TLS: no STARTTLS offered, and asking for it again is refused.
        assert not client.supports_extension("starttls")
        resp = await client.execute_command(b"STARTTLS")
        assert (resp.code, resp.message) == (503, "5.5.1 TLS already active")
        rcpt = fake.email()
        errors, _ = await client.sendmail(
            "app@clinic.example", [rcpt], plain("Parking update", rcpt)
        )
        await client.quit()
        assert errors == {}
        assert sink.all_rcpts() == [rcpt]
        [decision] = r.decisions()
        assert decision["tls_version"].startswith("TLSv1.")
    finally:
        await r.stop()


async def test_plaintext_network_may_skip_starttls(tmp_path: Path, pki: Pki, sink: Sink) -> None:
    r = await start_relay(tmp_path, pki, sink, server={"plaintext_networks": ["127.0.0.1/32"]})
    try:
        client = await r.client(starttls=False)
        rcpt = fake.email()
        errors, _ = await client.sendmail(
            "app@clinic.example", [rcpt], plain("Parking update", rcpt)
        )
        await client.quit()
        assert errors == {}
        assert sink.all_rcpts() == [rcpt]
        [decision] = r.decisions()
        assert decision["tls_version"] is None
        tls_verdict = next(v for v in decision["verdicts"] if v["rule"] == "require-tls")
        assert tls_verdict["reason"] == "tls.plaintext-network"
    finally:
        await r.stop()


async def test_monitor_mode_audits_but_delivers(tmp_path: Path, pki: Pki, sink: Sink) -> None:
    r = await start_relay(tmp_path, pki, sink, server={"mode": "monitor"})
    try:
        client = await r.client()
        rcpt = fake.email()
        errors, _ = await client.sendmail(
            "app@clinic.example", [rcpt], plain("Your SSN 123-45-6789 is on file", rcpt)
        )
        await client.quit()
        assert errors == {}
        assert len(sink.received) == 1
        [decision] = r.decisions()
        assert decision["mode"] == "monitor"
        assert decision["action"] == "reject"  # what enforce mode would have done
        assert decision["enforced_action"] == "pass"
        assert "123-45-6789" not in r.audit_path.read_text()
    finally:
        await r.stop()


async def test_graceful_stop_finishes_transaction_in_flight(
    tmp_path: Path, pki: Pki, sink: Sink
) -> None:
    r = await start_relay(tmp_path, pki, sink, server={"shutdown_timeout": 10})
    sink.faults.stall_at = "DATA"
    sink.faults.stall_seconds = 1.0
    client = await r.client()
    rcpt = fake.email()
    sending = asyncio.create_task(
        client.sendmail("app@clinic.example", [rcpt], plain("Parking update", rcpt))
    )
    while not r.decisions():  # noqa: ASYNC110 - the audit file offers no event to await
        await asyncio.sleep(0.02)
    stopping = asyncio.create_task(r.stop())
    await asyncio.sleep(0.1)
    # New connections are refused while the one in flight finishes.
    with pytest.raises((ConnectionError, OSError, aiosmtplib.SMTPConnectError)):
        await r.client()
    errors, _ = await asyncio.wait_for(sending, 10)
    assert errors == {}
    await asyncio.wait_for(stopping, 15)
    assert sink.all_rcpts() == [rcpt]
