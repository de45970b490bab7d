"""Upstream reply text reaches the audit log only when the PHI detector finds nothing in it.

A provider's DLP filter refusing a message may quote it (a name, an SSN, an MRN); the
audit log keeps the codes and a PHI-free class of such a reply, never its words.
"""

from __future__ import annotations

import pytest
from faker import Faker

from tests.support.rawsmtp import RawSmtp
from tests.support.relay import RunningRelay
from tests.support.upstream import Sink

fake = Faker()
Faker.seed(5064)
SENDER = "app@clinic.example"


def message() -> bytes:
    return (
        f"From: {SENDER}\r\nTo: someone@example.org\r\nSubject: Parking update\r\n"
        f"Message-ID: <{fake.uuid4()}@clinic.example>\r\n\r\nSee you soon.\r\n"
    ).encode()


async def send(relay: RunningRelay) -> str:
    conn = await RawSmtp.ready(relay.port, relay.pki.client_context())
    try:
        return await conn.mail(SENDER, [fake.email()], message())
    finally:
        await conn.close()


@pytest.mark.parametrize(
    ("reply", "leaks"),
    [
        (
            "554 5.7.1 DLP: message for patient Jane Doe SSN 123-45-6789 blocked",
            ["123-45-6789", "Jane Doe"],
        ),
        ("550 5.7.1 Blocked: MRN 4451234 found in content", ["4451234"]),
        ("554 5.6.0 Content refused: HIV test results for DOB 03/14/1961", ["03/14/1961", "HIV"]),
    ],
    ids=["ssn", "mrn", "health-fact"],
)
async def test_phi_in_upstream_reply_never_audited(
    relay: RunningRelay, sink: Sink, reply: str, leaks: list[str]
) -> None:
    sink.faults.data_reply = reply
    answer = await send(relay)
    code, status = reply.split()[:2]
    assert answer.startswith(f"{code} {status} "), answer
    record = relay.deliveries()[-1]
    assert record["reply_code"] == int(code)
    assert record["reply_status"] == status
    assert (
        record["reply_text"]
        == f"Upstream (permanent-{'security-policy' if status == '5.7.1' else 'content'})"
    )
    log = relay.audit_path.read_text()
    for leak in leaks:
        assert leak not in log


async def test_clean_upstream_reply_text_kept(relay: RunningRelay, sink: Sink) -> None:
    sink.faults.data_reply = "452 4.2.2 Mailbox full, try again later"
    answer = await send(relay)
    assert answer.startswith("452 4.2.2 "), answer
    record = relay.deliveries()[-1]
    assert record["reply_text"] == "Upstream (transient-mailbox): Mailbox full, try again later"
