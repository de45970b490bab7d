"""Idle TLS sessions cost little memory: every TLS connection of the relay (inbound STARTTLS,
implicit TLS, upstream) reads into one shared buffer, not 256 KiB of its own."""

from __future__ import annotations

import asyncio
import gc
import tracemalloc
from pathlib import Path

from relay import tlsbuffers
from tests.support.pki import Pki
from tests.support.rawsmtp import RawSmtp
from tests.support.relay import start_relay
from tests.support.upstream import Sink

SESSIONS = 30
SENDER = "app@clinic.example"
MESSAGE = (
    b"From: app@clinic.example\r\nTo: someone@example.org\r\nSubject: Rota for next week\r\n"
    b"Message-ID: <tls-buffers@clinic.example>\r\n\r\nThe rota is on the board.\r\n"
)


def _tls_protocols() -> list[object]:
    return [o for o in gc.get_objects() if isinstance(o, tlsbuffers._ASYNCIO)]


async def test_idle_tls_sessions_share_one_read_buffer(
    tmp_path: Path, pki: Pki, sink: Sink
) -> None:
    server = {"implicit_tls_listen": "127.0.0.1:0", "max_sessions_per_client": SESSIONS + 10}
    r = await start_relay(tmp_path, pki, sink, server=server)
    conns: list[RawSmtp] = []
    try:
        # One message first: the pool then keeps its upstream TLS connection open.
        first = await RawSmtp.ready(r.port, pki.client_context())
        conns.append(first)
        assert (await first.cmd(f"MAIL FROM:<{SENDER}>")).startswith("250")
        assert (await first.cmd("RCPT TO:<someone@example.org>")).startswith("250")
        assert (await first.cmd("DATA")).startswith("354")
        await first.send(MESSAGE + b".\r\n")
        assert (await first.reply()).startswith("250 2.0.0 Delivered to upstream")
        assert sink.received[0].data.endswith(b"The rota is on the board.\r\n")

        tracemalloc.start()
        try:
            before = tracemalloc.get_traced_memory()[0]
            for _ in range(SESSIONS):
                conns.append(await RawSmtp.ready(r.port, pki.client_context()))
            reader, writer = await asyncio.open_connection(
                "127.0.0.1",
                r.relay.implicit_port,
                ssl=pki.client_context(),
                server_hostname="localhost",
            )
            assert (await reader.readline()).startswith(b"220 ")
            grown = tracemalloc.get_traced_memory()[0] - before
        finally:
            tracemalloc.stop()
        # Each session is two TLS ends in this process (the test's client and the relay):
        # with a 256 KiB buffer each that was over 512 KiB per session.
        print(f"traced growth per session {grown / (SESSIONS + 1) / 1024:.1f} KiB")
        assert grown / (SESSIONS + 1) < 96 * 1024, f"{grown / (SESSIONS + 1) / 1024:.0f} KiB"

        assert r.relay.shared is not None
        inbound = [s._tls_protocol for s in r.relay.shared.sessions]  # type: ignore[attr-defined]
        assert len(inbound) == SESSIONS + 2  # the first, the idle ones, the implicit one
        everyone = _tls_protocols()  # also the upstream client's, the sink's, the test's
        assert len(everyone) >= 2 * len(inbound) + 2
        buffers = {id(p._ssl_buffer) for p in everyone}  # type: ignore[attr-defined]
        assert all(isinstance(p, tlsbuffers.SharedBufferSSLProtocol) for p in everyone)
        assert len(buffers) == 1
        assert len(everyone[0]._ssl_buffer) == tlsbuffers.READ_SIZE  # type: ignore[attr-defined]

        # They still carry mail: one more message on the last idle session.
        last = conns[-1]
        assert (await last.cmd(f"MAIL FROM:<{SENDER}>")).startswith("250")
        assert (await last.cmd("RCPT TO:<other@example.org>")).startswith("250")
        assert (await last.cmd("DATA")).startswith("354")
        await last.send(MESSAGE.replace(b"tls-buffers@", b"tls-buffers-2@") + b".\r\n")
        assert (await last.reply()).startswith("250 2.0.0 Delivered to upstream")
        writer.close()
    finally:
        for c in conns:
            c.writer.close()
        await r.stop()
