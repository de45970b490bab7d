"""What real deployments do every day: bounces, reloads, shutdowns, pod-local plaintext, opt-outs.

Each test drives the real relay (in-process or the `phi-relay serve` process) over real
sockets and TLS, with a real upstream, and checks exact replies, what the upstream got
and what the audit log holds.
"""

from __future__ import annotations

import asyncio
import base64
import re
import signal
import time
from pathlib import Path

import aiosmtplib
import pytest
from faker import Faker

from relay.users import add_user
from tests.adversarial.service import Service, start_service
from tests.support.pki import Pki
from tests.support.rawsmtp import RawSmtp
from tests.support.relay import RunningRelay, start_relay
from tests.support.upstream import Sink

fake = Faker()
Faker.seed(5090)
SENDER = "app@clinic.example"
DELIVERED = re.compile(r"^250 2\.0\.0 Delivered to upstream as [0-9a-f]{32}$")
SHUTTING_DOWN = "421 4.3.2 Service shutting down; try again later"


def message(
    subject: str = "Parking update", *, sender: str = SENDER, category: str | None = None
) -> bytes:
    head = f"From: {sender}\r\nTo: someone@example.org\r\nSubject: {subject}\r\n"
    if category:
        head += f"X-PHI-Category: {category}\r\n"
    head += f"Message-ID: <{fake.uuid4()}@clinic.example>\r\n\r\n"
    return (head + "See you soon.\r\n").encode()


def bounce() -> bytes:
    """A delivery status notification as Postfix sends it: null sender, MAILER-DAEMON."""
    return (
        "From: MAILER-DAEMON@clinic.example (Mail Delivery System)\r\n"
        "To: app@clinic.example\r\nSubject: Undelivered Mail Returned to Sender\r\n"
        f"Message-ID: <{fake.uuid4()}@clinic.example>\r\n"
        "Auto-Submitted: auto-replied\r\n\r\n"
        "This is the mail system. Your message could not be delivered.\r\n"
    ).encode()


# --- 1. the null sender ---------------------------------------------------------------


@pytest.mark.parametrize("category", [None, "education"], ids=["one-transaction", "per-rcpt"])
async def test_null_sender_reaches_upstream_as_null(
    relay: RunningRelay, sink: Sink, category: str | None
) -> None:
    """`MAIL FROM:<>` (bounces, DSNs) goes upstream as `MAIL FROM:<>`, also when a footer
    makes the relay open one upstream transaction per recipient."""
    rcpts = [fake.unique.email() for _ in range(2)]
    data = bounce()
    if category:
        data = data.replace(b"\r\n\r\n", f"\r\nX-PHI-Category: {category}\r\n\r\n".encode(), 1)
    conn = await RawSmtp.ready(relay.port, relay.pki.client_context())
    answer = await conn.mail("", rcpts, data)
    assert DELIVERED.match(answer), answer
    # aiosmtpd reports the reverse-path it read: `<>` is the null sender, nothing else.
    assert [m.mail_from for m in sink.received] == ["<>"] * len(sink.received)
    assert sorted(sink.all_rcpts()) == sorted(rcpts)
    assert len(sink.received) == (2 if category else 1)
    [decision] = relay.decisions()
    assert decision["sender_domain"] == ""
    assert {d["outcome"] for d in relay.deliveries()} == {"delivered"}
    # The session goes on with an ordinary sender.
    assert DELIVERED.match(await conn.mail(SENDER, [fake.email()], message()))
    assert sink.received[-1].mail_from == SENDER
    await conn.close()


# --- 2. reload reads the sources the process started with -------------------------------


def _auth(user: str, password: str) -> str:
    return "AUTH PLAIN " + base64.b64encode(f"\0{user}\0{password}".encode()).decode()


def _config_text(home: Path, sink: Sink, pki: Pki, *, upstream: bool) -> str:
    host = f'host = "localhost"\nport = {sink.port}\n' if upstream else 'host = ""\n'
    return (
        f'[server]\nusers_file = "{home / "users"}"\ntrusted_networks = ["192.0.2.0/24"]\n'
        f"[upstream]\n{host}"
    )


async def _send_authenticated(svc: Service, pki: Pki, password: str) -> str:
    conn = await RawSmtp.ready(svc.smtp_port, pki.client_context())
    try:
        answer = await conn.cmd(_auth("clinic-app", password))
        if not answer.startswith("235 "):
            return answer
        return await conn.mail(SENDER, [fake.email()], message())
    finally:
        await conn.cmd("QUIT")
        await conn.close()


@pytest.mark.parametrize("how", ["PHI_RELAY_CONFIG", "--config"])
async def test_reload_reads_the_same_sources_and_refuses_switching_to_capture(
    tmp_path: Path, pki: Pki, sink: Sink, how: str
) -> None:
    password = fake.password(length=20)
    add_user(tmp_path / "users", "clinic-app", password)
    conf = tmp_path / "relay.toml"
    conf.write_text(_config_text(tmp_path, sink, pki, upstream=True))
    # Three sources at once: the file, the environment (CA) and the flags (start_service).
    env = {"PHI_RELAY_UPSTREAM_CA_FILE": str(pki.ca)}
    extra: tuple[str, ...] = ()
    if how == "--config":
        extra = ("--config", str(conf))
    else:
        env["PHI_RELAY_CONFIG"] = str(conf)
    svc = await start_service(tmp_path, pki, sink, *extra, env=env, upstream_flags=False)
    captured = tmp_path / "state" / "captured"
    try:
        assert DELIVERED.match(await _send_authenticated(svc, pki, password))
        assert len(sink.received) == 1

        svc.signal(signal.SIGHUP)
        await svc.wait_metric('phi_relay_config_reloads_total{result="ok"}', 1.0)
        # Same file, same environment, same flags: AUTH still offered, mail still upstream.
        assert DELIVERED.match(await _send_authenticated(svc, pki, password))
        assert len(sink.received) == 2

        # An edited file that would capture real mail on local disk is refused and reported.
        conf.write_text(_config_text(tmp_path, sink, pki, upstream=False))
        svc.signal(signal.SIGHUP)
        await svc.wait_metric('phi_relay_config_reloads_total{result="refused"}', 1.0)
        assert await svc.metric("phi_relay_config_last_reload_success") == 0.0
        assert DELIVERED.match(await _send_authenticated(svc, pki, password))
        assert len(sink.received) == 3
        assert not captured.exists() or not any(captured.iterdir())
        assert "reload refused: it would capture mail locally instead of" in svc.log_text()
        events = [e for e in svc.audit_records() if e.get("event") == "config-reload"]
        assert [(e["ok"], e.get("error")) for e in events] == [
            (True, None),
            (False, "upstream-to-capture"),
        ]
    finally:
        code = await svc.stop()
    assert code == 0
    assert "Traceback" not in svc.log_text()


# --- 3. SIGTERM lets transactions in flight finish ---------------------------------------


async def test_sigterm_lets_data_in_progress_and_open_transactions_finish(
    tmp_path: Path, pki: Pki, sink: Sink
) -> None:
    svc = await start_service(tmp_path, pki, sink)
    try:
        tls = pki.client_context()
        in_data = await RawSmtp.ready(svc.smtp_port, tls)
        after_rcpt = await RawSmtp.ready(svc.smtp_port, tls)
        idle = await RawSmtp.ready(svc.smtp_port, tls)
        rcpts = [fake.unique.email(), fake.unique.email()]
        assert await in_data.cmd(f"MAIL FROM:<{SENDER}>") == "250 2.1.0 Sender OK"
        assert await in_data.cmd(f"RCPT TO:<{rcpts[0]}>") == "250 2.1.5 Recipient OK"
        assert (await in_data.cmd("DATA")).startswith("354 ")
        body = message()
        await in_data.send(body[:40])
        assert await after_rcpt.cmd(f"MAIL FROM:<{SENDER}>") == "250 2.1.0 Sender OK"
        assert await after_rcpt.cmd(f"RCPT TO:<{rcpts[1]}>") == "250 2.1.5 Recipient OK"

        svc.signal(signal.SIGTERM)
        # The idle session is told at once; that is how we know the signal was handled.
        assert (await idle.closed_by_server()).decode() == SHUTTING_DOWN + "\r\n"
        with pytest.raises(ConnectionRefusedError):
            await RawSmtp.connect(svc.smtp_port)

        # The DATA in progress completes and is delivered, then the session is closed.
        await in_data.send(body[40:] + b".\r\n")
        assert DELIVERED.match(await in_data.reply()), "DATA in progress was cut"
        assert (await in_data.closed_by_server()).decode() == SHUTTING_DOWN + "\r\n"
        # The open transaction may still send its message.
        assert DELIVERED.match(await after_rcpt.data(message() + b".\r\n"))
        started = time.monotonic()
        assert await asyncio.wait_for(svc.proc.wait(), 15) == 0
        # It exits when the last transaction is done, not at the 30 s drain timeout.
        assert time.monotonic() - started < 10
        assert sorted(sink.all_rcpts()) == sorted(rcpts)
        for conn in (in_data, after_rcpt, idle):
            await conn.close()
    finally:
        await svc.stop()
    assert "Traceback" not in svc.log_text()


async def test_sigterm_drain_timeout_bounds_a_stalled_transaction(
    tmp_path: Path, pki: Pki, sink: Sink
) -> None:
    env = {"PHI_RELAY_SERVER_SHUTDOWN_TIMEOUT": "1"}
    svc = await start_service(tmp_path, pki, sink, env=env)
    try:
        conn = await RawSmtp.ready(svc.smtp_port, pki.client_context())
        assert await conn.cmd(f"MAIL FROM:<{SENDER}>") == "250 2.1.0 Sender OK"
        assert await conn.cmd(f"RCPT TO:<{fake.email()}>") == "250 2.1.5 Recipient OK"
        assert (await conn.cmd("DATA")).startswith("354 ")
        await conn.send(message()[:30])
        started = time.monotonic()
        svc.signal(signal.SIGTERM)
        # The client never finishes: at the drain timeout (not before) it is told to retry.
        assert (await conn.closed_by_server()).decode() == SHUTTING_DOWN + "\r\n"
        assert time.monotonic() - started >= 0.9
        assert await asyncio.wait_for(svc.proc.wait(), 15) == 0
        assert time.monotonic() - started < 8
        assert sink.received == []
        await conn.close()
    finally:
        await svc.stop()


# --- 4. a plaintext network is a trusted network -----------------------------------------


async def test_plaintext_network_is_trusted_and_warned_at_start(
    tmp_path: Path, pki: Pki, sink: Sink
) -> None:
    svc = await start_service(
        tmp_path,
        pki,
        sink,
        "--plaintext-network",
        "127.0.0.0/8",
        "--trusted-network",
        "192.0.2.0/24",
    )
    try:
        client = aiosmtplib.SMTP(
            hostname="127.0.0.1", port=svc.smtp_port, start_tls=False, timeout=10
        )
        await client.connect()
        await client.ehlo()
        rcpt = fake.email()
        errors, reply = await client.sendmail(SENDER, [rcpt], message())
        await client.quit()
        assert errors == {}
        assert DELIVERED.match(f"250 {reply}"), reply
        assert sink.all_rcpts() == [rcpt]
        [decision] = [r for r in svc.audit_records() if r.get("type") == "decision"]
        assert decision["tls_version"] is None
        log = svc.log_text()
        assert "plaintext SMTP allowed from this network (no STARTTLS); it is trusted" in log
        assert "127.0.0.0/8" in log
    finally:
        assert await svc.stop() == 0


async def test_plaintext_network_elsewhere_still_needs_tls_and_auth(
    tmp_path: Path, pki: Pki, sink: Sink
) -> None:
    """Only the listed network is exempt: loopback outside it still gets both 530s."""
    r = await start_relay(
        tmp_path,
        pki,
        sink,
        server={"plaintext_networks": ["192.0.2.0/24"], "trusted_networks": ["198.51.100.0/24"]},
    )
    try:
        conn = await RawSmtp.connect(r.port)
        await conn.ehlo()
        assert await conn.cmd(f"MAIL FROM:<{SENDER}>") == (
            "530 5.7.0 Must issue a STARTTLS command first"
        )
        await conn.starttls(pki.client_context())
        await conn.ehlo()
        assert await conn.cmd(f"MAIL FROM:<{SENDER}>") == "530 5.7.0 Authentication required"
        await conn.close()
        assert sink.received == []
    finally:
        await r.stop()


# --- 5. the reply says how many recipients were suppressed, and by which policy -----------


async def test_reply_counts_recipients_suppressed_by_optout_and_consent(
    relay: RunningRelay, sink: Sink
) -> None:
    assert relay.relay.services is not None
    store = relay.relay.services.store
    kept, opted_out, authorized, stranger = (fake.unique.email() for _ in range(4))
    await store.add_optout(opted_out, "education", "admin")
    await store.grant(authorized, "marketing", (), "form-2026-014")
    conn = await RawSmtp.ready(relay.port, relay.pki.client_context())

    answer = await conn.mail(SENDER, [kept, opted_out], message(category="education"))
    assert re.fullmatch(
        r"250 2\.0\.0 Delivered to upstream as [0-9a-f]{32}; 1 of 2 recipients delivered, "
        r"1 suppressed by policy \(optout\.recipient: 1\)",
        answer,
    ), answer
    answer = await conn.mail(
        SENDER, [authorized, stranger, opted_out], message("Spring offers", category="marketing")
    )
    assert re.fullmatch(
        r"250 2\.0\.0 Delivered to upstream as [0-9a-f]{32}; 1 of 3 recipients delivered, "
        r"2 suppressed by policy \(consent\.no-authorization: 2\)",
        answer,
    ), answer
    # Without suppression the reply stays the plain one.
    assert DELIVERED.match(await conn.mail(SENDER, [kept], message(category="education")))
    await conn.close()
    assert sink.all_rcpts() == [kept, authorized, kept]
    for address in (kept, opted_out, authorized, stranger):
        assert address not in answer


async def test_sigterm_drain_timeout_waits_for_a_delivery_under_way_to_be_recorded(
    tmp_path: Path, pki: Pki, sink: Sink
) -> None:
    """At the drain timeout a message already going upstream is not cut off from its audit
    record: the relay waits (bounded by the upstream timeout) before closing the log."""
    sink.faults.stall_at = "DATA"
    sink.faults.stall_seconds = 4  # longer than the relay's upstream timeout (2 s)
    env = {"PHI_RELAY_SERVER_SHUTDOWN_TIMEOUT": "0.5"}
    svc = await start_service(tmp_path, pki, sink, env=env)
    try:
        conn = await RawSmtp.ready(svc.smtp_port, pki.client_context())
        assert await conn.cmd(f"MAIL FROM:<{SENDER}>") == "250 2.1.0 Sender OK"
        assert await conn.cmd(f"RCPT TO:<{fake.email()}>") == "250 2.1.5 Recipient OK"
        assert (await conn.cmd("DATA")).startswith("354 ")
        await conn.send(message() + b".\r\n")
        deadline = time.monotonic() + 10
        while not [r for r in svc.audit_records() if r.get("type") == "decision"]:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)
        svc.signal(signal.SIGTERM)
        assert await asyncio.wait_for(svc.proc.wait(), 20) == 0
        await conn.close()
    finally:
        await svc.stop()
    records = svc.audit_records()
    [decision] = [r for r in records if r.get("type") == "decision"]
    [delivery] = [r for r in records if r.get("type") == "delivery"]
    assert delivery["decision_id"] == decision["decision_id"]
    assert delivery["outcome"] == "ambiguous"  # the upstream timed out after the data
    assert records[-1].get("event") == "relay-stop"
    log = svc.log_text()
    assert "audit delivery record failed" not in log
    assert "Traceback" not in log


async def test_client_hanging_up_after_the_final_dot_does_not_cut_the_delivery(
    relay: RunningRelay, sink: Sink
) -> None:
    """aiosmtpd cancels a session's work when its client goes; the decided message must
    still be delivered and recorded, or it would sit upstream without a delivery record."""
    sink.faults.stall_at = "DATA"
    sink.faults.stall_seconds = 0.5
    conn = await RawSmtp.ready(relay.port, relay.pki.client_context())
    assert await conn.cmd(f"MAIL FROM:<{SENDER}>") == "250 2.1.0 Sender OK"
    assert await conn.cmd(f"RCPT TO:<{fake.email()}>") == "250 2.1.5 Recipient OK"
    assert (await conn.cmd("DATA")).startswith("354 ")
    await conn.send(message() + b".\r\n")
    while not relay.decisions():  # noqa: ASYNC110 - the audit file offers no event to await
        await asyncio.sleep(0.02)
    conn.writer.transport.abort()  # gone before the upstream answered
    deadline = time.monotonic() + 10
    while not relay.deliveries():
        assert time.monotonic() < deadline, "no delivery record"
        await asyncio.sleep(0.05)
    [delivery] = relay.deliveries()
    assert delivery["outcome"] == "delivered"
    assert len(sink.received) == 1
