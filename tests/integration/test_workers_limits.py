"""Session and AUTH-failure limits hold across the workers of `serve --workers 2`.

Each worker would otherwise count only its own sessions and guesses: two workers would
allow twice `max_sessions` and twice `auth_max_failures`. The attacks open more sessions
and make more guesses than the limit, on new connections the supervisor's listeners
spread over both workers, in sequence and all at once.
"""

from __future__ import annotations

import asyncio
import base64
import os
import signal
from pathlib import Path

from relay.users import add_user
from tests.adversarial.service import Service, start_service
from tests.integration.test_workers import workers_of
from tests.support.pki import Pki
from tests.support.rawsmtp import Closed, RawSmtp
from tests.support.upstream import Sink

WRONG = "535 5.7.8 Authentication credentials invalid"
PAIR_LOCKED = "454 4.7.0 Too many failed logins from your address; try again later"
ACCOUNT_LOCKED = "454 4.7.0 Too many failed logins for this account; try again later"
READY = "220 "
FULL = "421 4.7.0 Too many connections; try again later"
CLIENT_FULL = "421 4.7.0 Too many connections from your address; try again later"


async def banner(port: int, local: str) -> tuple[str, RawSmtp]:
    conn = await RawSmtp.connect(port, local=local)
    return conn.banner, conn


async def test_sessions_are_counted_across_workers(tmp_path: Path, pki: Pki, sink: Sink) -> None:
    service = await start_service(
        tmp_path, pki, sink, workers=2,
        env={
            "PHI_RELAY_SERVER_MAX_SESSIONS": "4",
            "PHI_RELAY_SERVER_MAX_SESSIONS_PER_CLIENT": "2",
            "PHI_RELAY_SERVER_RESERVED_SESSIONS_PERCENT": "0",
        },
    )  # fmt: skip
    conns: list[RawSmtp] = []
    try:
        port = service.smtp_port
        got = []
        for local in ("127.0.0.2", "127.0.0.2", "127.0.0.2", "127.0.0.3", "127.0.0.3"):
            line, conn = await banner(port, local)
            got.append(line[:4] if line.startswith(READY) else line)
            conns.append(conn)
        assert got == [READY, READY, CLIENT_FULL, READY, READY]
        # Four sessions are open; every further one is refused, whichever worker takes it.
        burst = await asyncio.gather(*(banner(port, f"127.0.1.{n}") for n in range(1, 9)))
        conns += [conn for _, conn in burst]
        assert [line for line, _ in burst] == [FULL] * 8
        # Sessions that end give their slots back to every worker.
        for conn in conns[:2]:
            await conn.close()
        await asyncio.sleep(0.3)
        again = await asyncio.gather(*(banner(port, f"127.0.2.{n}") for n in range(1, 5)))
        conns += [conn for _, conn in again]
        assert sorted(line[:4] for line, _ in again) == [READY] * 2 + [FULL[:4]] * 2
        # A worker killed with its sessions open: the supervisor gives its slots back.
        held = [c for c in conns if c.banner.startswith(READY) and not c.writer.is_closing()]
        assert len(held) == 4
        os.kill(workers_of(service)[0], signal.SIGKILL)
        lost = 0
        for conn in held:
            try:
                await conn.cmd("NOOP", timeout=2)
            except (Closed, OSError, TimeoutError, AssertionError):
                lost += 1
        await wait_restarted(service)
        fresh = [await banner(port, f"127.0.3.{n}") for n in range(1, lost + 2)]
        conns += [conn for _, conn in fresh]
        assert [line[:4] for line, _ in fresh] == [READY] * lost + [FULL[:4]], lost
    finally:
        for conn in conns:
            await conn.close()
        assert await service.stop() == 0, service.log_text()


async def wait_restarted(service: Service) -> None:
    for _ in range(600):
        if any(r.get("event") == "worker-restart" for r in service.audit_records()):
            return
        await asyncio.sleep(0.1)
    raise AssertionError("no worker restarted")


def plain(user: str, password: str) -> str:
    return "AUTH PLAIN " + base64.b64encode(f"\0{user}\0{password}".encode()).decode()


async def guess(port: int, pki: Pki, local: str, user: str = "victim") -> str:
    conn = await RawSmtp.ready(port, pki.client_context(), local=local)
    try:
        return await conn.cmd(plain(user, "not-the-password"))
    finally:
        await conn.close()


async def test_auth_failures_are_counted_across_workers(
    tmp_path: Path, pki: Pki, sink: Sink
) -> None:
    users = tmp_path / "users"
    add_user(users, "victim", "a-long-synthetic-secret-1")
    service = await start_service(
        tmp_path, pki, sink, "--users-file", str(users), workers=2,
        env={
            "PHI_RELAY_SERVER_AUTH_MAX_FAILURES": "3",
            "PHI_RELAY_SERVER_AUTH_MAX_FAILURES_PER_ACCOUNT": "8",
            "PHI_RELAY_SERVER_AUTH_MAX_FAILURES_PER_ADDRESS": "50",
            "PHI_RELAY_SERVER_AUTH_FAILURE_DELAY": "0.05",
            "PHI_RELAY_SERVER_AUTH_LOCKOUT": "300",
        },
    )  # fmt: skip
    try:
        port = service.smtp_port
        # One guesser, one connection per guess, one after another.
        one = [await guess(port, pki, "127.0.4.1") for _ in range(6)]
        assert one == [WRONG] * 3 + [PAIR_LOCKED] * 3
        # Eight guesses at once from another address: counted before the check, in one
        # place, so no more than three get to try a password.
        burst = await asyncio.gather(*(guess(port, pki, "127.0.4.2") for _ in range(8)))
        assert sorted(burst) == sorted([WRONG] * 3 + [PAIR_LOCKED] * 5)
        # Spread over addresses: the account's limit (8) counts the 6 guesses above.
        spread = [await guess(port, pki, f"127.0.4.{n}") for n in (3, 4, 5)]
        assert spread == [WRONG, WRONG, ACCOUNT_LOCKED]
    finally:
        assert await service.stop() == 0, service.log_text()


async def test_parallel_right_logins_are_not_locked_across_workers(
    tmp_path: Path, pki: Pki, sink: Sink
) -> None:
    # Postfix relaying through `serve --workers 2` logs in from many smtp processes at
    # once with one account: in-flight attempts must wait, not count as failures.
    users = tmp_path / "users"
    add_user(users, "postfix", "a-long-synthetic-secret-2")
    service = await start_service(
        tmp_path, pki, sink, "--users-file", str(users), workers=2,
        env={"PHI_RELAY_SERVER_AUTH_MAX_FAILURES": "3"},
    )  # fmt: skip
    try:
        port = service.smtp_port
        conns = [
            await RawSmtp.ready(port, pki.client_context(), local="127.0.4.9") for _ in range(10)
        ]
        line = plain("postfix", "a-long-synthetic-secret-2").encode() + b"\r\n"
        for conn in conns:
            conn.writer.write(line)
        answers = await asyncio.gather(*(c.reply() for c in conns))
        assert answers == ["235 2.7.0 Authentication successful"] * 10
        for conn in conns:
            await conn.close()
    finally:
        assert await service.stop() == 0, service.log_text()
