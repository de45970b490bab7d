"""List-Unsubscribe is https (RFC 8058; Gmail and Yahoo ignore anything else): the HTTP
listener is TLS with the relay's certificate by default, and a plain listener needs an
https public base URL (issue 9, item 22)."""

from __future__ import annotations

import asyncio
import re
import socket
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from faker import Faker

from relay import config as config_mod
from relay.policy.base import ConfigError
from tests.adversarial.service import PHI_RELAY, start_service
from tests.support.pki import Pki
from tests.support.rawsmtp import RawSmtp
from tests.support.upstream import Sink

fake = Faker()
Faker.seed(5093)
SENDER = "news@clinic.example"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def education(rcpt: str) -> bytes:
    return (
        f"From: {SENDER}\r\nTo: {rcpt}\r\nSubject: Five tips for a healthy spring\r\n"
        f"X-PHI-Category: education\r\nMessage-ID: <{fake.uuid4()}@clinic.example>\r\n\r\n"
        "Walk every day.\r\n"
    ).encode()


async def https_post(url: str, pki: Pki) -> str:
    parts = urlsplit(url)
    assert parts.hostname is not None and parts.port is not None
    # Verified against the test CA: the listener presents the relay's own certificate.
    reader, writer = await asyncio.wait_for(
        asyncio.open_connection(
            parts.hostname, parts.port, ssl=pki.client_context(), server_hostname=parts.hostname
        ),
        10,
    )
    body = b"List-Unsubscribe=One-Click"
    writer.write(
        f"POST {parts.path} HTTP/1.0\r\nHost: {parts.netloc}\r\n"
        "Content-Type: application/x-www-form-urlencoded\r\n"
        f"Content-Length: {len(body)}\r\n\r\n".encode()
        + body
    )
    answer = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    return answer.decode()


async def test_default_listener_is_https_and_one_click_works(
    tmp_path: Path, pki: Pki, sink: Sink
) -> None:
    port = free_port()
    svc = await start_service(tmp_path, pki, sink, "--http-listen", f"127.0.0.1:{port}")
    try:
        rcpt = fake.email()
        conn = await RawSmtp.ready(svc.smtp_port, pki.client_context())
        answer = await conn.mail(SENDER, [rcpt], education(rcpt))
        assert answer.startswith("250 2.0.0 Delivered to upstream as "), answer
        got = sink.received[0].message
        assert got["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
        found = re.search(r"<(https://[^>]+)>", got["List-Unsubscribe"])
        assert found, got["List-Unsubscribe"]
        url = found.group(1)
        assert url.startswith(f"https://127.0.0.1:{port}/u/")

        page = await https_post(url, pki)
        assert page.startswith("HTTP/1.0 200 "), page[:80]
        assert "You are unsubscribed" in page
        # The opt-out holds at once: the next message to that recipient is not sent.
        answer = await conn.mail(SENDER, [rcpt], education(rcpt))
        assert answer.startswith("550 5.7.1 "), answer
        assert len(sink.received) == 1
        await conn.close()

        # Plain HTTP gets no page from the TLS listener.
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /healthz HTTP/1.0\r\n\r\n")
        try:
            plain = await asyncio.wait_for(reader.read(), 10)
        except ConnectionResetError:
            plain = b""
        assert not plain.startswith(b"HTTP/1.1 200"), plain
        writer.close()
    finally:
        assert await svc.stop() == 0
    assert "Traceback" not in svc.log_text()


def _load(http: dict[str, object]) -> config_mod.Config:
    return config_mod.load(None, environ={}, overrides={"http": http})


@pytest.mark.parametrize(
    "http",
    [
        {"tls": False},
        {"tls": False, "base_url": "http://127.0.0.1:8025"},
        {"tls": True, "base_url": "http://relay.clinic.example"},
    ],
    ids=["plain-no-base-url", "plain-http-base-url", "http-base-url"],
)
def test_a_listener_that_would_give_http_links_refuses_to_start(http: dict[str, object]) -> None:
    with pytest.raises(ConfigError, match=r"http\.base_url.*https"):
        _load(http)


def test_tls_terminated_in_front_with_an_https_base_url_is_accepted() -> None:
    cfg = _load({"tls": False, "base_url": "https://unsubscribe.clinic.example/"})
    assert cfg.unsubscribe_base_url == "https://unsubscribe.clinic.example"
    assert _load({}).unsubscribe_base_url == "https://127.0.0.1:8025"


def test_serve_says_what_to_do_in_one_line(tmp_path: Path) -> None:
    proc = subprocess.run(
        [str(PHI_RELAY), "serve", "--state-dir", str(tmp_path / "state")],
        env={"PATH": str(Path(sys.executable).parent), "PHI_RELAY_HTTP_TLS": "false"},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    [line] = proc.stderr.strip().splitlines()
    assert "http.base_url" in line and "https" in line
