"""The service log has one PHI-free line per message and one per failure (issue 10, item 6).

The real `phi-relay serve --log-json` as a process, a real upstream sink that fails on
demand; every line it writes is parsed, and the lines are matched with the audit log.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import aiosmtplib

from tests.adversarial.service import Service, start_service
from tests.support.pki import Pki
from tests.support.upstream import Sink

SENDER = "app@clinic.example"


def lines(svc: Service, event: str) -> list[dict[str, Any]]:
    out = []
    for line in svc.log_text().splitlines():
        if line.startswith("{"):
            record = json.loads(line)
            if record.get("event") == event:
                out.append(record)
    return out


async def send(client: aiosmtplib.SMTP, rcpt: str, subject: str) -> int:
    data = (
        f"From: {SENDER}\r\nTo: {rcpt}\r\nSubject: {subject}\r\n\r\nSee you on Friday.\r\n"
    ).encode()
    try:
        await client.sendmail(SENDER, [rcpt], data)
    except aiosmtplib.SMTPDataError as exc:
        return exc.code
    except aiosmtplib.SMTPSenderRefused as exc:
        return exc.code
    return 250


async def test_one_line_per_message_and_per_failure_with_codes_and_no_phi(
    tmp_path: Path, pki: Pki, sink: Sink
) -> None:
    svc = await start_service(tmp_path, pki, sink, "--log-json")
    # Synthetic identifiers that must never reach the service log.
    mrn = str(4_400_000 + uuid.uuid4().int % 99_999)
    rcpts = [f"pat{uuid.uuid4().hex[:8]}@example.org" for _ in range(4)]
    try:
        client = aiosmtplib.SMTP(
            hostname="127.0.0.1", port=svc.smtp_port, tls_context=pki.client_context(), timeout=15
        )
        await client.connect(start_tls=False)
        await client.starttls(server_hostname="localhost")
        assert await send(client, rcpts[0], "Parking update") == 250
        assert await send(client, rcpts[1], f"MRN {mrn} lab results") == 550
        sink.faults.data_reply = "451 4.3.0 try again later"
        assert await send(client, rcpts[2], "New hours") == 451
        sink.faults.data_reply = None
        await client.quit()
        # The upstream refuses the session itself: a failure before any message.
        sink.faults.reply_421_at = "MAIL"
        client = aiosmtplib.SMTP(
            hostname="127.0.0.1", port=svc.smtp_port, tls_context=pki.client_context(), timeout=15
        )
        await client.connect(start_tls=False)
        await client.starttls(server_hostname="localhost")
        assert await send(client, rcpts[3], "Parking again") == 421
        client.close()  # a 421 ends the session: aiosmtplib has already disconnected
    finally:
        assert await svc.stop() == 0

    decisions = [r for r in svc.audit_records() if r["type"] == "decision"]
    messages = lines(svc, "message")
    # One line per message the client finished, linked to its audit decision by id.
    assert [m["decision_id"] for m in messages] == [d["decision_id"] for d in decisions]
    assert [(m["category"], m["decision"], m["reply_code"]) for m in messages] == [
        ("treatment", "pass", 250),
        ("treatment", "reject", 550),
        ("treatment", "pass", 451),
    ]
    for m in messages:
        assert m["level"] == "info"
        assert isinstance(m["duration_ms"], float) and m["duration_ms"] >= 0
        assert m["recipients"] == 1

    failures = lines(svc, "failure")
    assert [(f["failure"], f.get("outcome"), f.get("reply_code")) for f in failures] == [
        ("delivery", "deferred", 451),
        ("upstream-unavailable", "deferred", 421),
    ]
    for f in failures:
        assert f["peer"] == "127.0.0.1"
        assert f["upstream"] == f"localhost:{sink.port}"
    assert failures[0]["decision_id"] == decisions[2]["decision_id"]
    assert failures[1]["stage"] == "mail"

    text = svc.log_text()
    assert mrn not in text
    for rcpt in rcpts:
        assert rcpt not in text and rcpt.split("@")[0] not in text
