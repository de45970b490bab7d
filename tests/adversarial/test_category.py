"""Category spoofing: X-PHI-Category cannot shed the obligations of the operator's mapping.

A sender the operator mapped to marketing must not escape consent, footer and
List-Unsubscribe by writing `X-PHI-Category: treatment`; the header may only pick a
category the policy lets that sender use, or add obligations to a category with none.
"""

from __future__ import annotations

import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from faker import Faker

from tests.support.pki import Pki
from tests.support.rawsmtp import RawSmtp
from tests.support.relay import ROOT, RunningRelay, start_relay
from tests.support.upstream import Sink

fake = Faker()
Faker.seed(5062)
NEWS = "news@clinic.example"  # mapped to marketing
EDU = "classes@edu.clinic.example"  # mapped to education, may choose fundraising
APP = "app@clinic.example"  # not mapped: the default, treatment
BY_SENDER = '"news@clinic.example" = "marketing"\n"@edu.clinic.example" = "education"\n'
MAY_CHOOSE = '"@edu.clinic.example" = ["fundraising"]\n'
NOT_ALLOWED = (
    "550 5.7.1 X-PHI-Category may not change this sender's category ({}); remove the header, "
    "or ask the operator to allow that category for this sender (categories.may_choose_*)"
)


def policy_file(tmp: Path, *, choose: bool = True) -> Path:
    policies = tmp / "policies"
    policies.mkdir(parents=True)
    for f in (ROOT / "policies").iterdir():
        (policies / f.name).write_bytes(f.read_bytes())
    path = policies / "default.toml"
    text = path.read_text()
    assert "[categories.by_sender]\n" in text
    text = text.replace("[categories.by_sender]\n", "[categories.by_sender]\n" + BY_SENDER)
    if choose:
        grants = "[categories.may_choose_by_sender]\n"
        assert grants in text
        text = text.replace(grants, grants + MAY_CHOOSE)
    path.write_text(text)
    return path


@pytest.fixture
async def mapped(tmp_path: Path, pki: Pki, sink: Sink) -> AsyncIterator[RunningRelay]:
    """The mapping alone, in a policy file today's format already has."""
    r = await start_relay(tmp_path, pki, sink, policy_file=policy_file(tmp_path, choose=False))
    yield r
    await r.stop()


@pytest.fixture
async def granted(tmp_path: Path, pki: Pki, sink: Sink) -> AsyncIterator[RunningRelay]:
    r = await start_relay(tmp_path, pki, sink, policy_file=policy_file(tmp_path))
    yield r
    await r.stop()


def message(sender: str, *categories: bytes) -> bytes:
    head = b"".join(b"X-PHI-Category" + c + b"\r\n" for c in categories)
    return (
        (
            f"From: {sender}\r\nTo: someone@example.org\r\nSubject: Our new Saturday hours\r\n"
            f"Message-ID: <{fake.uuid4()}@clinic.example>\r\n"
        ).encode()
        + head
        + b"\r\nSee you on Saturday.\r\n"
    )


async def send(relay: RunningRelay, sender: str, data: bytes) -> str:
    conn = await RawSmtp.ready(relay.port, relay.pki.client_context())
    try:
        return await conn.mail(sender, [fake.email()], data)
    finally:
        await conn.close()


@pytest.mark.parametrize("claimed", [b": treatment", b": Treatment ", b" : operations"])
async def test_mapped_marketing_sender_cannot_claim_treatment(
    mapped: RunningRelay, sink: Sink, claimed: bytes
) -> None:
    assert await send(mapped, NEWS, message(NEWS, claimed)) == NOT_ALLOWED.format("marketing")
    assert sink.received == []
    decision = mapped.decisions()[-1]
    assert decision["category"] == "marketing"
    assert decision["verdicts"][0] == {
        "rule": "category",
        "action": "reject",
        "reason": "category.not-allowed",
        "kinds": ["marketing"],
    }


async def test_granted_choice_is_honoured_with_its_obligations(
    granted: RunningRelay, sink: Sink
) -> None:
    mapped = granted
    answer = await send(mapped, EDU, message(EDU, b": fundraising"))
    assert answer.startswith("250 2.0.0 Delivered"), answer
    got = sink.received[0].message
    assert got["List-Unsubscribe"] is not None  # fundraising carries the footer
    assert got["X-PHI-Category"] is None  # removed before forwarding
    assert mapped.decisions()[-1]["category"] == "fundraising"
    # Not granted: education may not become treatment.
    assert await send(mapped, EDU, message(EDU, b": treatment")) == NOT_ALLOWED.format("education")
    assert len(sink.received) == 1


async def test_header_may_add_obligations_to_an_unmapped_sender(
    mapped: RunningRelay, sink: Sink
) -> None:
    # The default (treatment) has none, so claiming marketing only adds consent rules.
    answer = await send(mapped, APP, message(APP, b": marketing"))
    assert answer.startswith("550 5.7.1 No recipient has a current marketing authorization"), answer
    assert sink.received == []
    assert mapped.decisions()[-1]["category"] == "marketing"


async def test_two_category_headers_refused(mapped: RunningRelay, sink: Sink) -> None:
    answer = await send(mapped, APP, message(APP, b": treatment", b" : marketing"))
    assert answer == "550 5.6.0 Message has more than one X-PHI-Category header; send at most one"
    assert sink.received == []


@pytest.mark.parametrize("shape", ["{}", "Jane-{}", "{}@example.org"])
async def test_unknown_value_never_echoed(mapped: RunningRelay, sink: Sink, shape: str) -> None:
    canary = shape.format(f"qz{uuid.uuid4().hex[:14]}")
    answer = await send(mapped, APP, message(APP, b": " + canary.encode()))
    assert answer.startswith("550 5.7.1 X-PHI-Category names no known message category; "), answer
    assert "treatment" in answer and "marketing" in answer
    assert canary.split("@")[0].lower() not in answer.lower()
    assert sink.received == []
    log = mapped.audit_path.read_text()
    assert canary.split("@")[0].lower() not in log.lower()
    decision = mapped.decisions()[-1]
    assert decision["category"] == "treatment"
    assert decision["verdicts"][0]["reason"] == "category.unknown"


def test_policy_check_validates_the_choices(tmp_path: Path) -> None:
    path = policy_file(tmp_path)
    path.write_text(path.read_text().replace('["fundraising"]', '["newsletter"]'))
    done = subprocess.run(
        [sys.executable, "-m", "relay", "policy", "check", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode != 0
    out = done.stdout + done.stderr
    assert "categories.may_choose_by_sender.@edu.clinic.example: expected one of" in out, out
    assert "Traceback" not in out
