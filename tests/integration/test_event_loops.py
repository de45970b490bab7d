"""The relay on either event loop: uvloop (serve's default) and asyncio's (`server.event_loop`).

uvloop's transports do not derive from asyncio's transport classes and its TLS protocol is
its own, so what the relay does with a transport is shown on both: a message over both TLS
legs, the HTTPS listener's handshake, the idle timeout's 421 on a plaintext connection, and
which loop `serve` picks. tests/integration/test_session_teardown.py and
tests/adversarial/test_stop_promptly.py also run on both (`both_loops`); every other
in-process test runs on asyncio's, every `serve` subprocess on uvloop, and
`PHI_RELAY_TEST_LOOP=uvloop pytest` runs the in-process ones on uvloop too.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import aiosmtplib
import pytest
from faker import Faker

from relay import eventloop
from tests.adversarial.service import start_service
from tests.support.pki import Pki
from tests.support.rawsmtp import RawSmtp
from tests.support.relay import start_relay
from tests.support.upstream import Sink

pytestmark = pytest.mark.both_loops
fake = Faker()
Faker.seed(6120)
SENDER = "app@clinic.example"
TIMED_OUT = b"421 4.4.2 Timed out waiting for the client; closing\r\n"


def loop_of(request: pytest.FixtureRequest) -> str:
    """The loop pytest-asyncio made for this test (its parameter id), checked against the
    one actually running, so a test cannot pass on the other loop by mistake."""
    name = request.node.callspec.id.split("-")[0]  # the loop's id comes first
    assert eventloop.name(asyncio.get_running_loop()) == name
    return name


def message(rcpt: str, subject: str) -> bytes:
    return (
        f"From: {SENDER}\r\nTo: {rcpt}\r\nSubject: {subject}\r\n"
        f"Message-ID: <{fake.uuid4()}@clinic.example>\r\n\r\nNothing to see here.\r\n"
    ).encode()


async def test_a_message_crosses_both_tls_legs(
    request: pytest.FixtureRequest, tmp_path: Path, pki: Pki, sink: Sink
) -> None:
    loop_of(request)
    r = await start_relay(tmp_path, pki, sink)
    try:
        rcpts = [fake.email() for _ in range(3)]
        for n, rcpt in enumerate(rcpts):  # the second and third reuse the pooled connection
            client = await r.client()
            errors, _ = await client.sendmail(SENDER, [rcpt], message(rcpt, f"Clinic news {n}"))
            assert errors == {}
            await client.quit()
    finally:
        await r.stop()
    assert [m.rcpt_tos for m in sink.received] == [[rcpt] for rcpt in rcpts]
    assert [m.message["Subject"] for m in sink.received] == [f"Clinic news {n}" for n in range(3)]
    assert [d["reply_code"] for d in r.decisions()] == [250, 250, 250]
    assert all(d["tls_version"].startswith("TLSv1.") for d in r.decisions())
    assert [d["outcome"] for d in r.deliveries()] == ["delivered"] * 3
    assert sink.connections == 1  # verified TLS once, then the pool's connection


async def test_the_https_listener_answers_after_its_handshake(
    request: pytest.FixtureRequest, tmp_path: Path, pki: Pki, sink: Sink
) -> None:
    loop_of(request)
    r = await start_relay(
        tmp_path,
        pki,
        sink,
        sections={"http": {"listen": "127.0.0.1:0", "tls": True, "max_connections": 2}},
    )
    try:
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", r.relay.http_port, ssl=pki.client_context(), server_hostname="localhost"
        )
        writer.write(b"GET /healthz HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
        reply = await asyncio.wait_for(reader.read(), 10)
        writer.close()
    finally:
        await r.stop()
    assert reply.startswith(b"HTTP/1.0 200 OK\r\n"), reply[:80]
    assert reply.endswith(b"\r\n\r\nok\n")


async def test_an_idle_plaintext_client_gets_the_timeout_reply(
    request: pytest.FixtureRequest, tmp_path: Path, pki: Pki, sink: Sink
) -> None:
    loop_of(request)
    r = await start_relay(
        tmp_path,
        pki,
        sink,
        server={"client_timeout": 1, "plaintext_networks": ["127.0.0.1/32"]},
    )
    try:
        conn = await RawSmtp.connect(r.port)
        assert await conn.cmd("EHLO client.test") == "250 HELP"
        assert await conn.closed_by_server(timeout=8) == TIMED_OUT
        await conn.close()
    finally:
        await r.stop()


@pytest.mark.parametrize("choice", ["default", "asyncio"])
async def test_serve_runs_on_the_loop_it_is_told(
    request: pytest.FixtureRequest, tmp_path: Path, pki: Pki, sink: Sink, choice: str
) -> None:
    loop_of(request)
    env = {} if choice == "default" else {"PHI_RELAY_SERVER_EVENT_LOOP": choice}
    svc = await start_service(tmp_path, pki, sink, "--log-json", env=env)
    try:
        client = aiosmtplib.SMTP(
            hostname="localhost", port=svc.smtp_port, tls_context=pki.client_context()
        )
        await client.connect(start_tls=True)
        rcpt = fake.email()
        await client.sendmail(SENDER, [rcpt], message(rcpt, "Clinic news"))
        await client.quit()
        assert await svc.http_get("/healthz") == "ok\n"  # the HTTPS listener (httpguard)
    finally:
        assert await svc.stop() == 0
    lines = [json.loads(ln) for ln in svc.log_text().splitlines() if ln.startswith("{")]
    started = [ln for ln in lines if ln.get("event") == "phi-relay listening"]
    assert [ln["event_loop"] for ln in started] == ["uvloop" if choice == "default" else choice]
    assert [m.rcpt_tos for m in sink.received] == [[rcpt]]
