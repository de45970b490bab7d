"""The HTTP listener cannot be used to starve the relay: a connection cap (TLS handshakes
included), a deadline for the handshake and the request headers, a short idle timeout
(issue 9, item 13)."""

from __future__ import annotations

import asyncio
import os
import ssl
import time
from pathlib import Path

from tests.adversarial.service import Service, start_service
from tests.support.pki import Pki
from tests.support.rawsmtp import RawSmtp
from tests.support.upstream import Sink

HALF_SENT = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: "
NOFILE = 160  # the relay's descriptor limit in this test
CAP = 50
Conn = tuple[asyncio.StreamReader, asyncio.StreamWriter]


def open_fds(svc: Service) -> int:
    return len(os.listdir(f"/proc/{svc.proc.pid}/fd"))


async def half_sent(port: int, tls: ssl.SSLContext | None) -> Conn | None:
    try:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(
                "127.0.0.1", port, ssl=tls, server_hostname="localhost" if tls else None
            ),
            5,
        )
        writer.write(HALF_SENT)
        await asyncio.wait_for(writer.drain(), 3)
    except (OSError, TimeoutError):
        return None  # refused (over the cap) or not accepted: the relay's choice
    return reader, writer


async def closed_by_relay(reader: asyncio.StreamReader) -> bytes:
    try:
        return await asyncio.wait_for(reader.read(), 10)
    except (ConnectionResetError, ssl.SSLError):
        return b"reset"


async def test_300_half_sent_requests_do_not_exhaust_descriptors_or_stop_smtp(
    tmp_path: Path, pki: Pki, sink: Sink
) -> None:
    env = {"PHI_RELAY_HTTP_HEADER_TIMEOUT": "2", "PHI_RELAY_HTTP_MAX_CONNECTIONS": str(CAP)}
    svc = await start_service(tmp_path, pki, sink, env=env, nofile=NOFILE)
    conns: list[Conn] = []
    try:
        baseline = open_fds(svc)
        for _ in range(6):
            batch = await asyncio.gather(
                *(half_sent(svc.http_port, svc.http_tls) for _ in range(50))
            )
            conns += [c for c in batch if c is not None]
        opened = time.monotonic()
        busiest = open_fds(svc)
        # SMTP still greets while the HTTP side is flooded.
        smtp = await asyncio.wait_for(RawSmtp.connect(svc.smtp_port), 5)
        assert smtp.banner.startswith("220 "), smtp.banner
        await smtp.close()
        assert busiest <= baseline + CAP + 20, (baseline, busiest)
        # Over the cap connections are closed before their TLS handshake.
        assert 0 < len(conns) <= CAP

        # The rest are closed at the header deadline (2 s), nothing answered.
        answers = await asyncio.gather(*(closed_by_relay(r) for r, _ in conns))
        assert 1.0 < time.monotonic() - opened < 8
        assert set(answers) <= {b"", b"reset"}, {a[:40] for a in answers}
        assert await svc.http_get("/healthz") == "ok\n"
        assert open_fds(svc) <= baseline + 5
    finally:
        for _, writer in conns:
            writer.close()
        assert await svc.stop() == 0
    assert "Traceback" not in svc.log_text()
    assert "Too many open files" not in svc.log_text()


async def test_plain_http_flood_gets_503_over_the_cap(tmp_path: Path, pki: Pki, sink: Sink) -> None:
    """Behind a TLS-terminating proxy (http.tls = false) the cap answers 503."""
    env = {
        "PHI_RELAY_HTTP_TLS": "false",
        "PHI_RELAY_HTTP_BASE_URL": "https://unsubscribe.clinic.example",
        "PHI_RELAY_HTTP_HEADER_TIMEOUT": "2",
        "PHI_RELAY_HTTP_MAX_CONNECTIONS": "10",
    }
    svc = await start_service(tmp_path, pki, sink, env=env)
    conns: list[Conn] = []
    try:
        batch = await asyncio.gather(*(half_sent(svc.http_port, None) for _ in range(30)))
        conns = [c for c in batch if c is not None]
        answers = await asyncio.gather(*(closed_by_relay(r) for r, _ in conns))
        busy = [a for a in answers if a.startswith(b"HTTP/1.1 503 ") or a == b"reset"]
        assert len(busy) >= 20
        assert set(answers) - set(busy) <= {b""}
        assert await svc.http_get("/healthz") == "ok\n"
    finally:
        for _, writer in conns:
            writer.close()
        assert await svc.stop() == 0


async def test_silent_and_idle_connections_are_closed(tmp_path: Path, pki: Pki, sink: Sink) -> None:
    env = {"PHI_RELAY_HTTP_HEADER_TIMEOUT": "1"}
    svc = await start_service(tmp_path, pki, sink, env=env)
    try:
        # A TCP connection that never starts TLS: closed at the handshake deadline.
        silent_r, silent_w = await asyncio.open_connection("127.0.0.1", svc.http_port)
        started = time.monotonic()
        assert await closed_by_relay(silent_r) in (b"", b"reset")
        assert 0.5 < time.monotonic() - started < 5
        silent_w.close()
        # A kept-alive connection after a response: closed after the idle timeout.
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", svc.http_port, ssl=svc.http_tls, server_hostname="localhost"
        )
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        head = await asyncio.wait_for(reader.readuntil(b"ok\n"), 5)
        assert head.startswith(b"HTTP/1.1 200 "), head
        started = time.monotonic()
        assert await closed_by_relay(reader) == b""
        assert 0.5 < time.monotonic() - started < 5
        writer.close()
    finally:
        assert await svc.stop() == 0
