"""A stop (drain) while a client's AUTH is being checked still answers that client."""

from __future__ import annotations

import asyncio
import base64
import signal
from pathlib import Path

import pytest

from relay.users import add_user
from tests.adversarial.service import start_service
from tests.support.pki import Pki
from tests.support.rawsmtp import RawSmtp
from tests.support.relay import start_relay
from tests.support.upstream import Sink

USER = "clinic-app"
PASSWORD = "correct horse battery staple"


def plain_response(user: str, password: str) -> bytes:
    return base64.b64encode(f"\0{user}\0{password}".encode())


@pytest.mark.parametrize(
    ("password", "after_check"),
    [(PASSWORD, 0.0), ("wrong password entirely", 0.0), ("wrong password entirely", 0.3)],
    ids=["right-during-check", "wrong-during-check", "wrong-during-failure-delay"],
)
async def test_auth_under_way_at_stop_gets_a_reply_not_a_bare_close(
    tmp_path: Path, pki: Pki, sink: Sink, password: str, after_check: float
) -> None:
    users = tmp_path / "users"
    add_user(users, USER, PASSWORD)
    # The stop begins while the password's scrypt runs, or (a wrong one) during the
    # failure delay that follows it.
    r = await start_relay(
        tmp_path,
        pki,
        sink,
        server={
            "users_file": str(users),
            "trusted_networks": [],
            "auth_failure_delay": 1.0,
            "shutdown_timeout": 5,
        },
    )
    stopping: asyncio.Task[None] | None = None
    try:
        client = await r.client()
        sent = asyncio.create_task(
            client.execute_command(b"AUTH PLAIN " + plain_response(USER, password))
        )
        # The throttle counts the attempt just before its check: the stop begins then.
        assert r.relay.shared is not None
        throttle = r.relay.shared.throttle
        while not throttle.in_flight("127.0.0.1", USER):  # noqa: ASYNC110 - no event to await
            await asyncio.sleep(0.001)
        await asyncio.sleep(after_check)
        stopping = asyncio.create_task(r.stop())
        # A bare close raises SMTPServerDisconnected here: the defect under test.
        resp = await asyncio.wait_for(sent, 10)
        if password == PASSWORD:
            assert resp.code in (235, 421), resp
        else:
            assert resp.code in (535, 421), resp
        if resp.code != 421:
            # The AUTH was answered; the drain's 421 follows on the same connection.
            goodbye = await asyncio.wait_for(client.execute_command(b"NOOP"), 10)
            assert (goodbye.code, goodbye.message) == (
                421,
                "4.3.2 Service shutting down; try again later",
            )
        else:
            assert resp.message == "4.3.2 Service shutting down; try again later"
        await asyncio.wait_for(stopping, 15)
    finally:
        if stopping is None:
            await r.stop()
    assert sink.received == []


@pytest.mark.parametrize(
    ("password", "after_check"),
    [(PASSWORD, 0.0), ("wrong password entirely", 0.3)],
    ids=["right-during-check", "wrong-during-failure-delay"],
)
async def test_sigterm_to_workers_answers_every_auth_under_way(
    tmp_path: Path, pki: Pki, sink: Sink, password: str, after_check: float
) -> None:
    # What a user saw: `serve --workers 2`, SIGTERM while clients' AUTH PLAIN was checked.
    users = tmp_path / "users"
    add_user(users, USER, PASSWORD)
    service = await start_service(
        tmp_path, pki, sink, "--users-file", str(users), workers=2,
        env={"PHI_RELAY_SERVER_AUTH_FAILURE_DELAY": "1.0"},
    )  # fmt: skip
    try:
        conns = [await RawSmtp.ready(service.smtp_port, pki.client_context()) for _ in range(6)]
        line = b"AUTH PLAIN " + plain_response(USER, password) + b"\r\n"
        for conn in conns:
            conn.writer.write(line)
        await asyncio.sleep(after_check)
        service.signal(signal.SIGTERM)
        answers = await asyncio.gather(*(c.reply_lines() for c in conns), return_exceptions=True)
        code = await asyncio.wait_for(service.proc.wait(), 60)
    finally:
        if service.proc.returncode is None:
            service.proc.kill()
            await service.proc.wait()
    assert code == 0, service.log_text()
    for got in answers:
        assert not isinstance(got, BaseException), answers
        assert got, answers
