"""swaks, a real third-party SMTP client, sends through the relay with STARTTLS and AUTH."""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from faker import Faker

from relay.users import add_user
from tests.support.pki import Pki
from tests.support.relay import RunningRelay, start_relay
from tests.support.upstream import Sink

fake = Faker()
Faker.seed(20261124)

USER = "clinic-app"
PASSWORD = "correct horse battery staple"
SENDER = "app@clinic.example"


def swaks_path() -> str:
    path = shutil.which("swaks")
    if path is None:
        pytest.fail("swaks is not installed: apt-get install swaks (CI installs it in .ci/run)")
    return path


@pytest.fixture
async def auth_relay(tmp_path: Path, pki: Pki, sink: Sink) -> AsyncIterator[RunningRelay]:
    users = tmp_path / "users"
    add_user(users, USER, PASSWORD)
    # A users file and no trusted network: every client must authenticate.
    r = await start_relay(
        tmp_path, pki, sink, server={"users_file": str(users), "trusted_networks": []}
    )
    yield r
    await r.stop()


async def run_swaks(*args: str) -> tuple[int, str]:
    # A subprocess, not a thread blocking the loop: the in-process relay keeps serving.
    proc = await asyncio.create_subprocess_exec(
        swaks_path(),
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode is not None
    return proc.returncode, out.decode(errors="replace")


def base_args(relay: RunningRelay, rcpt: str, subject: str) -> list[str]:
    return [
        "--server",
        f"127.0.0.1:{relay.port}",
        "--ehlo",
        "swaks.test",
        "--from",
        SENDER,
        "--to",
        rcpt,
        "--header",
        f"Subject: {subject}",
        "--body",
        "See you at the front desk.",
        "--timeout",
        "15",
    ]


async def test_swaks_sends_with_starttls_and_auth(auth_relay: RunningRelay, sink: Sink) -> None:
    rcpt = fake.email()
    subject = "Your appointment is confirmed"
    code, out = await run_swaks(
        *base_args(auth_relay, rcpt, subject),
        "--tls",
        "--tls-verify",
        "--tls-ca-path",
        str(auth_relay.pki.ca),
        "--tls-sni",
        "localhost",
        "--auth",
        "PLAIN",
        "--auth-user",
        USER,
        "--auth-password",
        PASSWORD,
    )
    assert code == 0, out
    plain_part, _, tls_part = out.partition("\n -> STARTTLS\n<-  220 2.0.0 Ready to start TLS\n")
    assert tls_part, out
    assert "AUTH" not in plain_part  # AUTH is offered only inside TLS
    assert '=== TLS peer DN="/CN=localhost"' in tls_part
    assert "<~  250-AUTH PLAIN LOGIN" in tls_part
    assert "<~  235 2.7.0 Authentication successful" in tls_part
    assert "<~  250 2.0.0 Delivered to upstream as " in tls_part
    assert len(sink.received) == 1
    got = sink.received[0]
    assert (got.mail_from, got.rcpt_tos) == (SENDER, [rcpt])
    assert got.message["Subject"] == subject
    # swaks ends the body with blank lines of its own; the text itself arrives unchanged.
    assert got.data.split(b"\r\n\r\n", 1)[1].rstrip(b"\r\n") == b"See you at the front desk."
    [decision] = auth_relay.decisions()
    assert decision["auth_user"] == USER
    assert decision["reply_code"] == 250
    assert decision["tls_version"].startswith("TLSv1.")
    [delivery] = auth_relay.deliveries()
    assert (delivery["decision_id"], delivery["outcome"]) == (decision["decision_id"], "delivered")


async def test_swaks_refuses_an_untrusted_relay_certificate(
    auth_relay: RunningRelay, sink: Sink
) -> None:
    # --tls-verify really verifies: against the rogue CA the handshake fails, nothing is sent.
    code, out = await run_swaks(
        *base_args(auth_relay, fake.email(), "Your appointment is confirmed"),
        "--tls",
        "--tls-verify",
        "--tls-ca-path",
        str(auth_relay.pki.rogue_cert),
        "--auth",
        "PLAIN",
        "--auth-user",
        USER,
        "--auth-password",
        PASSWORD,
    )
    assert code == 29, out  # swaks exit codes: 29 "error in TLS transaction"
    assert sink.received == []
    assert auth_relay.decisions() == []


async def test_swaks_without_tls_gets_530(auth_relay: RunningRelay, sink: Sink) -> None:
    code, out = await run_swaks(*base_args(auth_relay, fake.email(), "Office hours"))
    assert code == 23, out  # swaks exit codes: 23 "error in MAIL transaction"
    assert "<** 530 5.7.0 Must issue a STARTTLS command first" in out
    assert sink.received == []
    assert auth_relay.decisions() == []
