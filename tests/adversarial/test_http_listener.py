"""The HTTP listener cannot be used to starve the relay: a connection cap, a deadline for
request headers and a short idle timeout (issue 9, item 13)."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

from tests.adversarial.service import Service, start_service
from tests.support.pki import Pki
from tests.support.rawsmtp import RawSmtp
from tests.support.upstream import Sink

HALF_SENT = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: "
NOFILE = 160  # the relay's descriptor limit in this test
CAP = 50


def open_fds(svc: Service) -> int:
    return len(os.listdir(f"/proc/{svc.proc.pid}/fd"))


async def half_sent(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | None:
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 3)
        writer.write(HALF_SENT)
        await asyncio.wait_for(writer.drain(), 3)
    except (OSError, TimeoutError):
        return None  # refused or not accepted: the relay's choice, not a failure
    return reader, writer


async def test_300_half_sent_requests_do_not_exhaust_descriptors_or_stop_smtp(
    tmp_path: Path, pki: Pki, sink: Sink
) -> None:
    env = {"PHI_RELAY_HTTP_HEADER_TIMEOUT": "2", "PHI_RELAY_HTTP_MAX_CONNECTIONS": str(CAP)}
    svc = await start_service(tmp_path, pki, sink, env=env, nofile=NOFILE)
    conns: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
    try:
        baseline = open_fds(svc)
        for _ in range(6):
            batch = await asyncio.gather(*(half_sent(svc.http_port) for _ in range(50)))
            conns += [c for c in batch if c is not None]
        opened = time.monotonic()
        busiest = open_fds(svc)
        # SMTP still greets while the HTTP side is flooded.
        smtp = await asyncio.wait_for(RawSmtp.connect(svc.smtp_port), 5)
        assert smtp.banner.startswith("220 "), smtp.banner
        await smtp.close()
        assert busiest <= baseline + CAP + 20, (baseline, busiest)

        # Every half-sent request is closed by the relay: 503 over the cap, else at the
        # header deadline (2 s), with nothing of the request answered as if it were whole.
        # (Over the cap the relay hangs up on unread bytes, so the client may see a reset.)
        async def outcome(reader: asyncio.StreamReader) -> bytes:
            try:
                return await asyncio.wait_for(reader.read(), 10)
            except ConnectionResetError:
                return b"reset"

        answers = await asyncio.gather(*(outcome(r) for r, _ in conns))
        assert time.monotonic() - opened < 8
        refused = [a for a in answers if a.startswith(b"HTTP/1.1 503 ") or a == b"reset"]
        assert len(refused) >= len(conns) - CAP
        assert all(a in (b"", b"reset") or a.startswith(b"HTTP/1.1 503 ") for a in answers), {
            a[:40] for a in answers
        }
        assert await svc.http_get("/healthz") == "ok\n"
        assert open_fds(svc) <= baseline + 5
    finally:
        for _, writer in conns:
            writer.close()
        assert await svc.stop() == 0
    assert "Traceback" not in svc.log_text()
    assert "Too many open files" not in svc.log_text()


async def test_idle_keep_alive_connection_is_closed(tmp_path: Path, pki: Pki, sink: Sink) -> None:
    env = {"PHI_RELAY_HTTP_HEADER_TIMEOUT": "1"}
    svc = await start_service(tmp_path, pki, sink, env=env)
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", svc.http_port)
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        head = await asyncio.wait_for(reader.readuntil(b"ok\n"), 5)
        assert head.startswith(b"HTTP/1.1 200 "), head
        started = time.monotonic()
        # Kept alive, then closed after the idle timeout without another request.
        assert await asyncio.wait_for(reader.read(), 8) == b""
        assert 0.5 < time.monotonic() - started < 5
        writer.close()
    finally:
        assert await svc.stop() == 0
