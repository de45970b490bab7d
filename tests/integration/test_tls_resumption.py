"""Inbound TLS session resumption: a client that keeps its session (Postfix's
smtp_tls_session_cache, Python's `session=`) skips the full handshake on its next
connection, on the STARTTLS and the implicit-TLS listener, with TLS 1.2 and 1.3, across
a reload; a session the relay cannot resume (another relay's) still gets a full one."""

from __future__ import annotations

import asyncio
import socket
import ssl
from pathlib import Path

import pytest

from tests.support.pki import Pki
from tests.support.relay import start_relay
from tests.support.upstream import Sink

SENDER = "app@clinic.example"
MESSAGE = (
    f"From: {SENDER}\r\nTo: a@example.org\r\nSubject: Parking update\r\n"
    "Message-ID: <resume-{n}@clinic.example>\r\n\r\nThe lot closes on Friday.\r\n"
)


def _reply(f: object) -> bytes:
    while True:
        line = f.readline()  # type: ignore[attr-defined]
        if line[3:4] != b"-":
            return bytes(line)


def send(
    port: int,
    ctx: ssl.SSLContext,
    *,
    implicit: bool,
    session: ssl.SSLSession | None = None,
    n: int = 0,
) -> tuple[ssl.SSLSession | None, bool, str, bytes]:
    """One message over a fresh connection: (session, reused, TLS version, DATA reply)."""
    raw = socket.create_connection(("127.0.0.1", port), timeout=10)
    if not implicit:
        plain = raw.makefile("rb")
        assert _reply(plain).startswith(b"220")
        raw.sendall(b"EHLO client.test\r\n")
        _reply(plain)
        raw.sendall(b"STARTTLS\r\n")
        assert _reply(plain).startswith(b"220")
    tls = ctx.wrap_socket(raw, server_hostname="localhost", session=session)
    try:
        f = tls.makefile("rb")
        if implicit:
            assert _reply(f).startswith(b"220")
        for line in (
            b"EHLO client.test",
            f"MAIL FROM:<{SENDER}>".encode(),
            b"RCPT TO:<a@example.org>",
        ):
            tls.sendall(line + b"\r\n")
            assert _reply(f)[:1] == b"2"
        tls.sendall(b"DATA\r\n")
        assert _reply(f).startswith(b"354")
        tls.sendall(MESSAGE.format(n=n).encode() + b".\r\n")
        done = _reply(f)
        tls.sendall(b"QUIT\r\n")
        _reply(f)  # the 221, after which a TLS 1.3 session ticket has surely arrived
        return tls.session, tls.session_reused, str(tls.version()), done
    finally:
        tls.close()


def client(pki: Pki, version: ssl.TLSVersion) -> ssl.SSLContext:
    ctx = pki.client_context()
    ctx.minimum_version = ctx.maximum_version = version
    return ctx


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_3, ssl.TLSVersion.TLSv1_2])
@pytest.mark.parametrize("implicit", [False, True], ids=["starttls", "implicit"])
async def test_client_with_a_cached_session_resumes(
    tmp_path: Path, pki: Pki, sink: Sink, version: ssl.TLSVersion, implicit: bool
) -> None:
    r = await start_relay(tmp_path, pki, sink, server={"implicit_tls_listen": "127.0.0.1:0"})
    port = r.relay.implicit_port if implicit else r.port
    ctx = client(pki, version)
    try:
        first = await asyncio.to_thread(send, port, ctx, implicit=implicit, n=1)
        second = await asyncio.to_thread(send, port, ctx, implicit=implicit, session=first[0], n=2)
    finally:
        await r.stop()
    assert first[1] is False and second[1] is True
    assert first[2] == second[2] == version.name.replace("v1_", "v1.")
    assert first[3].startswith(b"250 2.0.0") and second[3].startswith(b"250 2.0.0")
    assert len(sink.received) == 2


async def test_session_survives_a_reload(tmp_path: Path, pki: Pki, sink: Sink) -> None:
    r = await start_relay(tmp_path, pki, sink)
    ctx = client(pki, ssl.TLSVersion.TLSv1_3)
    try:
        first = await asyncio.to_thread(send, r.port, ctx, implicit=False, n=1)
        assert r.relay.reload()
        second = await asyncio.to_thread(send, r.port, ctx, implicit=False, session=first[0], n=2)
    finally:
        await r.stop()
    assert second[1] is True and second[3].startswith(b"250 2.0.0")


async def test_session_from_another_relay_gets_a_full_handshake(
    tmp_path: Path, pki: Pki, sink: Sink
) -> None:
    other = await start_relay(tmp_path / "other", pki, sink)
    r = await start_relay(tmp_path / "this", pki, sink)
    ctx = client(pki, ssl.TLSVersion.TLSv1_3)
    try:
        foreign = await asyncio.to_thread(send, other.port, ctx, implicit=False, n=1)
        here = await asyncio.to_thread(send, r.port, ctx, implicit=False, session=foreign[0], n=2)
    finally:
        await r.stop()
        await other.stop()
    assert here[1] is False  # its ticket key is not ours: a full handshake, no failure
    assert here[3].startswith(b"250 2.0.0")
    assert len(sink.received) == 2


@pytest.mark.parametrize("reuse_port", [False, True], ids=["shared-socket", "reuse-port"])
async def test_a_session_resumes_on_whichever_worker_a_connection_reaches(
    tmp_path: Path, pki: Pki, sink: Sink, reuse_port: bool
) -> None:
    """`serve --workers 2`: the server TLS context is made before the fork, so both
    workers hold the same ticket keys and a session one issued resumes on the other,
    also after a SIGHUP reload (each worker reloads the certificate into that context)."""
    import signal

    from tests.adversarial.service import start_service

    toml = tmp_path / "workers.toml"
    # reuse_port: the kernel spreads connections by their addresses, so both get some.
    toml.write_text(f"[server]\nreuse_port = {'true' if reuse_port else 'false'}\n")
    svc = await start_service(tmp_path, pki, sink, "--config", str(toml), workers=2)
    ctx = client(pki, ssl.TLSVersion.TLSv1_3)
    results: list[tuple[bool, bytes]] = []
    try:
        first = await asyncio.to_thread(send, svc.smtp_port, ctx, implicit=False, n=0)
        session = first[0]
        for n in range(1, 41):
            if n == 20:
                svc.signal(signal.SIGHUP)
                await asyncio.sleep(1.0)
            got = await asyncio.to_thread(
                send, svc.smtp_port, ctx, implicit=False, session=session, n=n
            )
            results.append((got[1], got[3]))
    finally:
        assert await svc.stop() == 0
    assert first[1] is False
    ids = {done.split()[-1].decode(): reused for reused, done in results}
    workers = {
        rec["decision_id"]: rec["worker"]
        for rec in svc.audit_records()
        if rec["type"] == "decision"
    }
    seen = {workers[i] for i in ids}
    assert seen == {1, 2}, seen  # both workers served some of the resumed connections
    assert all(ids.values()), [workers[i] for i, reused in ids.items() if not reused]


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_3, ssl.TLSVersion.TLSv1_2])
async def test_a_session_resumes_on_workers_restarted_after_the_handover(
    tmp_path: Path, pki: Pki, sink: Sink, version: ssl.TLSVersion
) -> None:
    """A worker the lean supervisor restarts is a fresh interpreter with a TLS context of
    its own (relay/overseer.py); it is handed the first workers' ticket keys, so a session
    they issued resumes there, and one it issues resumes on the others. Both workers are
    killed, so every connection after it reaches a restarted one."""
    import os
    import signal

    from tests.adversarial.service import start_service
    from tests.integration.test_workers import chains, wait_for, workers_of

    svc = await start_service(tmp_path, pki, sink, workers=2)
    ctx = client(pki, version)
    results: list[tuple[bool, bytes]] = []
    state = tmp_path / "state"

    def restarts() -> int:
        return sum(r.get("event") == "worker-restart" for rs in chains(state).values() for r in rs)

    try:
        first = await asyncio.to_thread(send, svc.smtp_port, ctx, implicit=False, n=0)
        for pid in workers_of(svc):
            os.kill(pid, signal.SIGKILL)
        await wait_for("both workers restarted", lambda: restarts() == 2, timeout=60)
        session = first[0]
        for n in range(1, 9):
            got = await asyncio.to_thread(
                send, svc.smtp_port, ctx, implicit=False, session=session, n=n
            )
            results.append((got[1], got[3]))
        # A ticket a restarted worker issued, on a fresh connection.
        fresh = await asyncio.to_thread(send, svc.smtp_port, ctx, implicit=False, n=9)
        again = await asyncio.to_thread(
            send, svc.smtp_port, ctx, implicit=False, session=fresh[0], n=10
        )
    finally:
        assert await svc.stop() == 0
    assert first[1] is False and fresh[1] is False
    assert all(done.startswith(b"250 2.0.0") for _, done in results), results
    assert [reused for reused, _ in results] == [True] * 8
    assert again[1] is True and again[3].startswith(b"250 2.0.0")
    assert len(sink.received) == 11
