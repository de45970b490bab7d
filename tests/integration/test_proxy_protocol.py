"""HAProxy (Debian's) in front of the relay with send-proxy and send-proxy-v2: the real client
address, not the balancer's, decides trusted and plaintext networks, session limits, AUTH
limits and what the audit log records, on the STARTTLS and the implicit-TLS listener."""

from __future__ import annotations

import asyncio
import base64
from email.message import EmailMessage
from pathlib import Path

import pytest
from faker import Faker

from relay.users import add_user
from tests.support.haproxy import Haproxy, Route
from tests.support.pki import Pki
from tests.support.rawsmtp import TIMEOUT, RawSmtp
from tests.support.relay import RunningRelay, start_relay
from tests.support.upstream import Sink

fake = Faker()
Faker.seed(1212)
BALANCER = "127.0.0.2"  # HAProxy connects to the relay from here (`source`)
TRUSTED = "127.0.0.5"
STRANGER = "127.0.0.6"
PLAINTEXT = "127.0.0.7"


def message() -> bytes:
    msg = EmailMessage()
    msg["From"] = "app@clinic.example"
    msg["To"] = "patient@example.org"
    msg["Subject"] = "Our new Saturday hours"
    msg["Message-ID"] = f"<{fake.uuid4()}@clinic.example>"
    msg.set_content("We are now open on Saturdays.\n")
    return msg.as_bytes(policy=msg.policy.clone(linesep="\r\n"))


@pytest.fixture
def haproxy_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "haproxy"
    folder.mkdir()
    return folder


async def proxied_relay(tmp_path: Path, pki: Pki, sink: Sink, **server: object) -> RunningRelay:
    settings: dict[str, object] = {
        "proxy_protocol_from": [f"{BALANCER}/32"],
        # The balancer itself is trusted here: only the real client's address may count.
        "trusted_networks": [f"{TRUSTED}/32", f"{BALANCER}/32"],
        "plaintext_networks": [f"{PLAINTEXT}/32"],
        "proxy_protocol_timeout": 2,
        **server,
    }
    return await start_relay(tmp_path, pki, sink, server=settings)


@pytest.mark.parametrize("proxy", ["send-proxy", "send-proxy-v2"])
async def test_the_real_client_address_decides_trust_plaintext_and_the_audit(
    tmp_path: Path, pki: Pki, sink: Sink, haproxy_dir: Path, proxy: str
) -> None:
    r = await proxied_relay(tmp_path, pki, sink)
    lb = Haproxy(haproxy_dir, [Route("smtp", (r.port,), proxy)]).start()
    port = lb.ports["smtp"]
    try:
        trusted = await RawSmtp.ready(port, pki.client_context(), local=TRUSTED)
        assert trusted.banner.startswith("220 relay.test"), trusted.banner
        answer = await trusted.mail("app@clinic.example", ["patient@example.org"], message())
        assert answer.startswith("250 2.0.0 Delivered to upstream"), answer
        await trusted.close()

        stranger = await RawSmtp.ready(port, pki.client_context(), local=STRANGER)
        assert await stranger.cmd("MAIL FROM:<app@clinic.example>") == (
            "530 5.7.0 Authentication required"
        )
        await stranger.close()

        # Plaintext is allowed for that client's network only, never for the balancer's.
        clear = await RawSmtp.connect(port, local=PLAINTEXT)
        await clear.ehlo()
        assert await clear.cmd("MAIL FROM:<app@clinic.example>") == "250 2.1.0 Sender OK"
        await clear.close()
        other = await RawSmtp.connect(port, local=TRUSTED)
        await other.ehlo()
        assert await other.cmd("MAIL FROM:<app@clinic.example>") == (
            "530 5.7.0 Must issue a STARTTLS command first"
        )
        await other.close()
    finally:
        lb.stop()
        await r.stop()
    assert [d["peer"] for d in r.decisions()] == [TRUSTED]
    assert len(sink.received) == 1


async def test_implicit_tls_behind_haproxy_v2_and_direct(
    tmp_path: Path, pki: Pki, sink: Sink, haproxy_dir: Path
) -> None:
    r = await proxied_relay(tmp_path, pki, sink, implicit_tls_listen="127.0.0.1:0")
    lb = Haproxy(haproxy_dir, [Route("smtps", (r.relay.implicit_port,), "send-proxy-v2")]).start()
    try:
        for port, local in ((lb.ports["smtps"], TRUSTED), (r.relay.implicit_port, TRUSTED)):
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(
                    "127.0.0.1",
                    port,
                    ssl=pki.client_context(),
                    server_hostname="localhost",
                    local_addr=(local, 0),
                ),
                TIMEOUT,
            )
            conn = RawSmtp(reader, writer)
            conn.banner = await conn.reply()
            assert conn.banner.startswith("220 relay.test"), conn.banner
            await conn.ehlo()
            answer = await conn.mail("app@clinic.example", ["patient@example.org"], message())
            assert answer.startswith("250 2.0.0 Delivered to upstream"), answer
            await conn.close()
    finally:
        lb.stop()
        await r.stop()
    decisions = r.decisions()
    assert [d["peer"] for d in decisions] == [TRUSTED, TRUSTED]
    assert all(d["tls_version"].startswith("TLSv1.") for d in decisions), decisions


async def test_session_limits_count_each_client_behind_the_balancer(
    tmp_path: Path, pki: Pki, sink: Sink, haproxy_dir: Path
) -> None:
    r = await proxied_relay(tmp_path, pki, sink, max_sessions_per_client=1)
    lb = Haproxy(haproxy_dir, [Route("smtp", (r.port,), "send-proxy-v2")]).start()
    port = lb.ports["smtp"]
    try:
        held = await RawSmtp.connect(port, local=TRUSTED)
        second = await RawSmtp.connect(port, local=TRUSTED)
        assert second.banner == (
            "421 4.7.0 Too many connections from your address; try again later"
        ), second.banner
        other = await RawSmtp.connect(port, local=STRANGER)
        assert other.banner.startswith("220 "), other.banner
        for conn in (held, second, other):
            await conn.close()
    finally:
        lb.stop()
        await r.stop()


async def test_auth_failures_are_counted_per_real_client(
    tmp_path: Path, pki: Pki, sink: Sink, haproxy_dir: Path
) -> None:
    users = tmp_path / "users"
    secret = fake.password(length=20)
    add_user(users, "clinic-app", secret)
    r = await proxied_relay(tmp_path, pki, sink, users_file=str(users), auth_max_failures=2)
    lb = Haproxy(haproxy_dir, [Route("smtp", (r.port,), "send-proxy")]).start()
    port = lb.ports["smtp"]

    async def login(password: str, local: str) -> str:
        conn = await RawSmtp.ready(port, pki.client_context(), local=local)
        try:
            token = base64.b64encode(f"\0clinic-app\0{password}".encode()).decode()
            return await conn.cmd(f"AUTH PLAIN {token}")
        finally:
            await conn.close()

    try:
        wrong = fake.password(length=20)
        assert await login(wrong, STRANGER) == "535 5.7.8 Authentication credentials invalid"
        assert await login(wrong, STRANGER) == "535 5.7.8 Authentication credentials invalid"
        assert await login(secret, STRANGER) == (
            "454 4.7.0 Too many failed logins from your address; try again later"
        )
        # The balancer's address is shared by everyone; the lockout is the stranger's alone.
        assert await login(secret, TRUSTED) == ("235 2.7.0 Authentication successful")
    finally:
        lb.stop()
        await r.stop()
    failures = [e for e in r.audit() if e.get("event") == "auth-failure"]
    assert [e["peer"] for e in failures] == [STRANGER, STRANGER]


def test_haproxy_is_installed() -> None:
    # CI installs haproxy; a missing binary is a failure there, never a skip.
    import shutil

    assert shutil.which("haproxy") or Path("/usr/sbin/haproxy").exists()
