"""PHI canaries: unique strings in subjects, bodies, addresses and headers never reach a log,
a reply, a metric or an exception text: refused, accepted or failed upstream."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

from faker import Faker

from tests.adversarial.service import PHI_RELAY, Service, start_service
from tests.support.pki import Pki
from tests.support.rawsmtp import RawSmtp
from tests.support.upstream import Sink

fake = Faker()
Faker.seed(5055)


class Canaries:
    """Unique lowercase tokens that look like nothing a detector or a log would invent."""

    def __init__(self) -> None:
        self.all: list[str] = []

    def new(self) -> str:
        token = f"qz{uuid.uuid4().hex[:14]}"
        self.all.append(token)
        return token

    def address(self, domain: str = "example.org") -> str:
        return f"{self.new()}@{domain}"


def message(c: Canaries, sender: str, rcpts: list[str], subject: str) -> bytes:
    return (
        f"From: {c.new()} <{sender}>\r\n"
        f"To: {', '.join(f'{c.new()} <{r}>' for r in rcpts)}\r\n"
        f"Subject: {subject}\r\n"
        f"Message-ID: <{c.new()}@clinic.example>\r\n"
        f"X-Patient-Note: {c.new()}\r\n"
        f"\r\nDear {c.new()}, your visit note is {c.new()}.\r\n"
    ).encode()


async def exchange(svc: Service, sink: Sink, pki: Pki, c: Canaries, replies: list[str]) -> None:
    """Refused, accepted and upstream-failed messages; every reply line is kept."""
    conn = await RawSmtp.connect(svc.smtp_port)
    replies.append(conn.banner)
    replies.extend(await conn.ehlo(c.new()))
    await conn.starttls(pki.client_context())
    replies.extend(await conn.ehlo(c.new()))

    async def attempt(sender: str, rcpts: list[str], data: bytes) -> None:
        replies.append(await conn.cmd(f"MAIL FROM:<{sender}>"))
        ok = 0
        for rcpt in rcpts:
            replies.append(await conn.cmd(f"RCPT TO:<{rcpt}>"))
            ok += replies[-1].startswith("250")
        if ok:
            replies.append(await conn.cmd("DATA"))
            await conn.send(data + b".\r\n")
            replies.append(await conn.reply())
        else:
            replies.append(await conn.cmd("RSET"))

    sender = c.address("clinic.example")
    # Refused: PHI in the subject (an MRN next to a canary).
    mrn = fake.random_number(digits=7, fix_len=True)
    rcpt = c.address()
    await attempt(sender, [rcpt], message(c, sender, [rcpt], f"MRN {mrn} {c.new()}"))
    # Refused: shape errors quoting nothing of the message.
    rcpt = c.address()
    data = message(c, sender, [rcpt], f"Parking update {c.new()}")
    second_subject = b"\r\nSubject: " + c.new().encode() + b"\r\n\r\n"
    await attempt(sender, [rcpt], data.replace(b"\r\n\r\n", second_subject, 1))
    # Accepted and delivered.
    rcpt = c.address()
    await attempt(sender, [rcpt], message(c, sender, [rcpt], f"Parking update {c.new()}"))
    # The upstream refuses a recipient, quoting it as real servers do.
    bad = c.address()
    sink.faults.refuse_rcpt[bad] = f"550 5.1.1 <{bad}>: Recipient address rejected"
    await attempt(sender, [bad], message(c, sender, [bad], f"Parking update {c.new()}"))
    # The upstream defers at DATA, quoting the recipient.
    late = c.address()
    sink.faults.data_reply_for[late] = f"451 4.2.0 <{late}> mailbox busy"
    await attempt(sender, [late], message(c, sender, [late], f"Parking update {c.new()}"))
    # The upstream drops the connection after DATA (the ambiguous window).
    sink.faults.reset_at = "DATA"
    rcpt = c.address()
    await attempt(sender, [rcpt], message(c, sender, [rcpt], f"Parking update {c.new()}"))
    sink.faults.reset_at = None
    replies.append(await conn.cmd("QUIT"))
    await conn.close()


async def test_no_canary_in_logs_replies_metrics_or_audit(
    tmp_path: Path, pki: Pki, sink: Sink
) -> None:
    c = Canaries()
    replies: list[str] = []
    svc = await start_service(tmp_path, pki, sink, "--log-json")
    try:
        await exchange(svc, sink, pki, c, replies)
        metrics = await svc.http_get("/metrics")
    finally:
        code = await svc.stop()
    assert code == 0
    # The exchange did what it was meant to: one delivery, the rest refused or failed.
    assert len(sink.received) == 1
    codes = [r[:3] for r in replies if r[:1] in "45"]
    assert codes == ["550", "550", "550", "451", "451"], replies
    audit = svc.audit_path.read_text()
    logs = svc.log_text()
    assert "Traceback" not in logs
    places = {
        "audit": audit,
        "service log": logs,
        "replies": "\n".join(replies),
        "metrics": metrics,
    }
    leaks = {(where, token) for token in c.all for where, text in places.items() if token in text}
    assert leaks == set(), [r for r in replies if any(t in r for t in c.all)]
    # The audit chain written during all this verifies.
    verify = await asyncio.create_subprocess_exec(
        str(PHI_RELAY),
        "audit",
        "verify",
        "--state-dir",
        str(svc.home / "state"),
        str(svc.audit_path),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(verify.communicate(), 30)
    records = len(audit.splitlines())
    assert verify.returncode == 0
    assert out.decode().splitlines()[-1] == f"OK: {records} records, chain intact"
