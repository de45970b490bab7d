"""Password guessing against AUTH: limits per (address, account), per account and per address,
counted atomically; a success clears nobody else's count; overlong lines (issue 9, item 20)."""

from __future__ import annotations

import asyncio
import base64
from pathlib import Path

from faker import Faker

from relay.users import add_user
from tests.support.pki import Pki
from tests.support.rawsmtp import RawSmtp
from tests.support.relay import RunningRelay, start_relay
from tests.support.upstream import Sink

fake = Faker()
Faker.seed(5092)
OK = "235 2.7.0 Authentication successful"
WRONG = "535 5.7.8 Authentication credentials invalid"
PAIR_LOCKED = "454 4.7.0 Too many failed logins from your address; try again later"
ACCOUNT_LOCKED = "454 4.7.0 Too many failed logins for this account; try again later"


def plain(user: str, password: str) -> str:
    return "AUTH PLAIN " + base64.b64encode(f"\0{user}\0{password}".encode()).decode()


async def attempt(r: RunningRelay, user: str, password: str, *, local: str = "") -> str:
    conn = await RawSmtp.ready(r.port, r.pki.client_context(), local=local)
    try:
        return await conn.cmd(plain(user, password))
    finally:
        await conn.close()


async def relay_with_users(
    tmp_path: Path, pki: Pki, sink: Sink, **limits: int
) -> tuple[RunningRelay, dict[str, str]]:
    users = tmp_path / "users"
    secrets = {name: fake.password(length=20) for name in ("victim", "own-app", "postfix")}
    for name, secret in secrets.items():
        add_user(users, name, secret)
    server: dict[str, object] = {
        "users_file": str(users),
        "trusted_networks": [],
        "auth_failure_delay": 0.05,
        "auth_lockout": 300,
        **limits,
    }
    return await start_relay(tmp_path, pki, sink, server=server), secrets


async def test_a_success_on_another_account_does_not_clear_the_failures(
    tmp_path: Path, pki: Pki, sink: Sink
) -> None:
    r, secrets = await relay_with_users(tmp_path, pki, sink, auth_max_failures=3)
    try:
        # Guess, log in to an account of one's own to "reset", guess again: still counted.
        for round_ in range(2):
            assert await attempt(r, "victim", fake.password(length=20)) == WRONG
            assert await attempt(r, "own-app", secrets["own-app"]) == OK, round_
        assert await attempt(r, "victim", fake.password(length=20)) == WRONG
        assert await attempt(r, "victim", secrets["victim"]) == PAIR_LOCKED
    finally:
        await r.stop()


async def test_parallel_attempts_are_counted_before_the_password_is_checked(
    tmp_path: Path, pki: Pki, sink: Sink
) -> None:
    r, _ = await relay_with_users(tmp_path, pki, sink, auth_max_failures=3)
    try:
        conns = [await RawSmtp.ready(r.port, pki.client_context()) for _ in range(10)]
        line = plain("victim", fake.password(length=20)).encode() + b"\r\n"
        for conn in conns:  # all ten on the wire before the first answer
            conn.writer.write(line)
        answers = await asyncio.gather(*(c.reply() for c in conns))
        assert sorted(answers) == sorted([WRONG] * 3 + [PAIR_LOCKED] * 7)
        failures = [x for x in r.audit() if x.get("event") == "auth-failure"]
        assert len(failures) == 3
        for conn in conns:
            await conn.close()
    finally:
        await r.stop()


async def test_parallel_logins_with_the_right_password_all_succeed(
    tmp_path: Path, pki: Pki, sink: Sink
) -> None:
    # Postfix's smtp processes (20 per destination by default) log in with one account
    # from one address at once: attempts counted before the check must not turn the
    # right password away; only failures lock.
    r, secrets = await relay_with_users(tmp_path, pki, sink, auth_max_failures=3)
    try:
        conns = [await RawSmtp.ready(r.port, pki.client_context()) for _ in range(10)]
        line = plain("postfix", secrets["postfix"]).encode() + b"\r\n"
        for conn in conns:  # all ten on the wire before the first answer
            conn.writer.write(line)
        answers = await asyncio.gather(*(c.reply() for c in conns))
        assert answers == [OK] * 10
        assert not [x for x in r.audit() if x.get("event") == "auth-failure"]
        for conn in conns:
            await conn.close()
        # A guesser beside them is still held to three tries.
        guesses = [await attempt(r, "postfix", fake.password(length=20)) for _ in range(4)]
        assert guesses == [WRONG] * 3 + [PAIR_LOCKED]
    finally:
        await r.stop()


async def test_one_broken_app_does_not_lock_out_other_accounts_on_its_host(
    tmp_path: Path, pki: Pki, sink: Sink
) -> None:
    r, secrets = await relay_with_users(
        tmp_path, pki, sink, auth_max_failures=3, auth_max_failures_per_address=6
    )
    try:
        for _ in range(3):
            assert await attempt(r, "own-app", "an-old-password-1") == WRONG
        assert await attempt(r, "own-app", secrets["own-app"]) == PAIR_LOCKED
        # Postfix on the same host logs in with its own account.
        assert await attempt(r, "postfix", secrets["postfix"]) == OK
        # But one address cannot try account after account: the ceiling holds.
        for name in ("victim", "nobody-1", "nobody-2"):
            assert await attempt(r, name, fake.password(length=20)) == WRONG
        assert await attempt(r, "postfix", secrets["postfix"]) == PAIR_LOCKED
    finally:
        await r.stop()


async def test_guesses_spread_over_addresses_hit_the_per_account_limit(
    tmp_path: Path, pki: Pki, sink: Sink
) -> None:
    r, secrets = await relay_with_users(
        tmp_path, pki, sink, auth_max_failures=3, auth_max_failures_per_account=4
    )
    try:
        # The real client logs in from its usual address first.
        assert await attempt(r, "victim", secrets["victim"], local="127.0.0.20") == OK
        for n in range(4):
            guess = fake.password(length=20)
            assert await attempt(r, "victim", guess, local=f"127.0.0.{30 + n}") == WRONG
        # A new address, even with the right password, is refused for that account...
        assert await attempt(r, "victim", secrets["victim"], local="127.0.0.50") == ACCOUNT_LOCKED
        # ...while the client that proved itself from its address keeps working.
        assert await attempt(r, "victim", secrets["victim"], local="127.0.0.20") == OK
        assert await attempt(r, "postfix", secrets["postfix"], local="127.0.0.50") == OK
    finally:
        await r.stop()


async def test_overlong_auth_line_is_refused_and_the_session_stays_in_step(
    tmp_path: Path, pki: Pki, sink: Sink
) -> None:
    r, secrets = await relay_with_users(tmp_path, pki, sink)
    try:
        conn = await RawSmtp.ready(r.port, pki.client_context())
        for command in ("AUTH LOGIN", "AUTH PLAIN"):
            assert (await conn.cmd(command)).startswith("334 ")
            # Five times the line limit: none of the rest may be read as a command.
            await conn.send(b"QUIT" * 1250 + b"\r\n")
            assert await conn.reply() == "500 5.5.6 Authentication exchange line is too long"
            assert await conn.cmd("NOOP") == "250 2.0.0 OK"
        # The initial response on the AUTH line itself: too long is 5.5.6 too (RFC 4954 4).
        await conn.send(b"AUTH PLAIN " + b"QUJD" * 1250 + b"\r\n")
        assert await conn.reply() == "500 5.5.6 Authentication exchange line is too long"
        assert await conn.cmd("NOOP") == "250 2.0.0 OK"
        # A long but legal initial response is read, not refused as a long command.
        long_secret = base64.b64encode(b"\0postfix\0" + b"x" * 600).decode()
        assert await conn.cmd(f"AUTH PLAIN {long_secret}") == WRONG
        assert await conn.cmd("MAIL FROM:<" + "a" * 600 + "@b.example>") == (
            "500 5.5.2 Command line too long"
        )
        assert await conn.cmd(plain("postfix", secrets["postfix"])) == OK
        assert await conn.cmd("NOOP") == "250 2.0.0 OK"
        await conn.close()
    finally:
        await r.stop()
