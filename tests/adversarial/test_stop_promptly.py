"""SIGTERM as an operator sends it to the real `phi-relay serve`, with clients connected in
every state a client leaves a session in, with one worker and with the supervisor's two.

What must hold: a session that is not in flight gets `421 4.3.2` (in the middle of a
STARTTLS handshake, over TLS once the handshake finishes within
`server.shutdown_handshake_grace`, else a plain close: a 421 there would reach the client as
plaintext inside its TLS stream) and does not hold the stop for `server.shutdown_timeout`,
even when the client does not read (an idle pooled connection never answers TLS's
close_notify); and a client that connects while a transaction in flight keeps the relay
draining is refused at once, not left waiting in a listen queue nobody will accept from.

The clients are blocking sockets that stop reading once their session is idle, as an app's
connection pool does; what each one was sent is read after the relay has exited.
"""

from __future__ import annotations

import asyncio
import re
import signal
import socket
import ssl
import time
from pathlib import Path

import pytest

from tests.adversarial.service import Service, start_service
from tests.support.pki import Pki
from tests.support.rawsmtp import RawSmtp
from tests.support.relay import start_relay
from tests.support.upstream import Sink

# uvloop (serve's default) and asyncio's loop hold and close transports differently.
pytestmark = pytest.mark.both_loops
# Far below the default server.shutdown_timeout (30 s) the drain would otherwise wait.
PROMPT = 10.0
KINDS = ("greeted", "after-ehlo", "after-starttls-220", "tls-idle")


def _line(sock: socket.socket) -> bytes:
    out = b""
    while not out.endswith(b"\r\n"):
        got = sock.recv(1)
        if not got:
            break
        out += got
    return out


def _reply(sock: socket.socket) -> bytes:
    out = b""
    while not re.search(rb"(^|\n)\d{3} [^\n]*\r\n$", out):
        got = sock.recv(4096)
        assert got, out
        out += got
    return out


def open_session(port: int, tls: ssl.SSLContext, kind: str) -> socket.socket:
    """A client left idle in state `kind`; it reads nothing more until told to."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    assert _line(sock).startswith(b"220 ")
    if kind == "greeted":
        return sock
    sock.sendall(b"EHLO client.test\r\n")
    _reply(sock)
    if kind == "after-ehlo":
        return sock
    sock.sendall(b"STARTTLS\r\n")
    assert _line(sock).startswith(b"220 ")
    if kind == "after-starttls-220":
        return sock  # its ClientHello not sent yet
    wrapped = tls.wrap_socket(sock, server_hostname="localhost")
    wrapped.sendall(b"EHLO client.test\r\n")
    _reply(wrapped)
    return wrapped


def read_to_end(sock: socket.socket) -> bytes:
    out = b""
    try:
        while got := sock.recv(4096):
            out += got
    except (OSError, ssl.SSLError):
        pass  # the relay's process is gone; what arrived before is what counts
    finally:
        sock.close()
    return out


async def wait_for_log(service: Service, text: str, count: int, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while service.log_text().count(text) < count:
        assert time.monotonic() < deadline, service.log_text()[-2000:]
        await asyncio.sleep(0.05)


@pytest.mark.parametrize("workers", [1, 2], ids=["one-process", "two-workers"])
async def test_sigterm_is_not_held_by_idle_sessions_in_any_state(
    tmp_path: Path, pki: Pki, sink: Sink, workers: int
) -> None:
    service = await start_service(tmp_path, pki, sink, workers=workers)
    tls = pki.client_context()
    held = []
    try:
        for kind in KINDS:
            held.append((kind, await asyncio.to_thread(open_session, service.smtp_port, tls, kind)))
        started = time.monotonic()
        service.signal(signal.SIGTERM)
        code = await asyncio.wait_for(service.proc.wait(), 45)
        took = time.monotonic() - started
    finally:
        if service.proc.returncode is None:
            service.proc.kill()
            await service.proc.wait()
    seen = {kind: await asyncio.to_thread(read_to_end, sock) for kind, sock in held}
    assert code == 0, service.log_text()[-2000:]
    assert took < PROMPT, f"stop took {took:.1f} s with idle sessions: {service.log_text()[-2000:]}"
    for kind in ("greeted", "after-ehlo", "tls-idle"):
        assert seen[kind] == b"421 4.3.2 Service shutting down; try again later\r\n", (kind, seen)
    # The client is about to start TLS: no plaintext reply may arrive in its handshake.
    assert seen["after-starttls-220"] == b"", seen


@pytest.mark.parametrize("workers", [1, 2], ids=["one-process", "two-workers"])
async def test_a_client_connecting_during_a_drain_is_refused_at_once(
    tmp_path: Path, pki: Pki, sink: Sink, workers: int
) -> None:
    service = await start_service(tmp_path, pki, sink, workers=workers)
    try:
        busy = await RawSmtp.ready(service.smtp_port, pki.client_context())
        assert (await busy.cmd("MAIL FROM:<app@clinic.example>")) == "250 2.1.0 Sender OK"
        service.signal(signal.SIGTERM)
        await wait_for_log(service, '"event": "shutting down"', workers)
        started = time.monotonic()
        try:
            opening = asyncio.open_connection("127.0.0.1", service.smtp_port)
            late = await asyncio.wait_for(opening, 5)
        except ConnectionRefusedError:
            answer = "refused"
        else:
            reader, writer = late
            try:
                answer = (await asyncio.wait_for(reader.readline(), 5)).decode()
            except TimeoutError:
                answer = "no answer"
            except ConnectionResetError:
                # Accepted into the backlog just before the listener closed: the
                # kernel resets it, which the client sees at once, like a refusal.
                answer = "refused"
            writer.close()
        took = time.monotonic() - started
        assert answer in {"refused", "421 4.3.2 Service shutting down; try again later\r\n"}, (
            f"{answer!r} after {took:.1f} s"
        )
        # The transaction that kept the relay draining still completes.
        assert (await busy.cmd("RCPT TO:<member@example.org>")) == "250 2.1.5 Recipient OK"
        body = b"From: app@clinic.example\r\nSubject: Parking\r\n\r\nLot B.\r\n.\r\n"
        reply = await busy.data(body)
        assert reply.startswith("250 2.0.0 "), reply
        await busy.close()
        code = await asyncio.wait_for(service.proc.wait(), 45)
    finally:
        if service.proc.returncode is None:
            service.proc.kill()
            await service.proc.wait()
    assert code == 0, service.log_text()[-2000:]
    assert [m.rcpt_tos for m in sink.received] == [["member@example.org"]]


async def test_a_handshake_under_way_at_sigterm_finishes_and_gets_421(
    tmp_path: Path, pki: Pki, sink: Sink
) -> None:
    # A client whose TLS handshake is on the wire when the stop begins (with TLS 1.3 it
    # sends EHLO before the relay has read its Finished) must get 421 over TLS, not a
    # dropped connection; a client that never starts its handshake still holds nothing.
    r = await start_relay(tmp_path, pki, sink)
    stopping: asyncio.Task[None] | None = None
    try:
        conn = await RawSmtp.connect(r.port)
        await conn.ehlo()
        await conn.send(b"STARTTLS\r\n")
        assert await conn.reply() == "220 2.0.0 Ready to start TLS"
        stopping = asyncio.create_task(r.stop())
        await asyncio.sleep(0.2)  # the stop has looked at every session by now
        await asyncio.wait_for(
            conn.writer.start_tls(pki.client_context(), server_hostname="localhost"), 5
        )
        gone = "421 4.3.2 Service shutting down; try again later"
        answer = await conn.cmd("EHLO client.test")
        if answer != gone:  # answered before the stop's next look; then told to go
            assert answer == "250 HELP", answer
            assert await conn.cmd("MAIL FROM:<app@clinic.example>") == gone
        await asyncio.wait_for(stopping, PROMPT)
    finally:
        if stopping is None:
            await r.stop()
        elif not stopping.done():
            await stopping
