"""Nothing lost, nothing doubled, when the dedup store fails or two copies race.

The store is the real SQLite file; its failures are real: another process holding the
database lock, or a file that cannot grow (a full state disk). The upstream is the real
sink, so every assertion counts the copies it actually received.
"""

from __future__ import annotations

import asyncio
import os
import resource
import shutil
import signal
import sqlite3
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.adversarial.service import PHI_RELAY
from tests.support.pki import Pki
from tests.support.rawsmtp import RawSmtp
from tests.support.relay import ROOT, RunningRelay, start_relay
from tests.support.upstream import Sink

SENDER = "app@clinic.example"
DELIVERED = "250 2.0.0 Delivered to upstream as "
ALREADY = "250 2.0.0 Already delivered to every recipient; not sent again"
STATE_FAILED = (
    "451 4.3.0 Cannot record delivery state (state store full or locked); nothing sent, "
    "try again later"
)
IN_FLIGHT = "451 4.4.5 The same message is being delivered in another session; try again shortly"
BUSY_TIMEOUT = 1.5


def message(n: int) -> bytes:
    return (
        f"From: {SENDER}\r\nTo: someone@example.org\r\nSubject: Parking update {n}\r\n"
        f"Message-ID: <dedup-{n}@clinic.example>\r\n\r\n"
        "The lot on Elm Street closes on Friday.\r\n"
    ).encode()


async def send(conn: RawSmtp, rcpts: list[str], data: bytes) -> str:
    """One transaction on an open session, never RSET: the final answer."""
    answer = await conn.cmd(f"MAIL FROM:<{SENDER}>")
    if not answer.startswith("250"):
        return answer
    for rcpt in rcpts:
        answer = await conn.cmd(f"RCPT TO:<{rcpt}>")
        assert answer.startswith("250"), answer
    assert (await conn.cmd("DATA")).startswith("354")
    await conn.send(data + b".\r\n")
    return await conn.reply()


def events(r: RunningRelay, name: str) -> list[tuple[str, int]]:
    return [(e["stage"], e["recipients"]) for e in r.audit() if e.get("event") == name]


class Locker:
    """Another process's view of dedup.db: holds its write lock while a test needs it."""

    def __init__(self, path: Path) -> None:
        self.db = sqlite3.connect(path, isolation_level=None)

    def hold(self) -> None:
        self.db.execute("BEGIN EXCLUSIVE")

    def free(self) -> None:
        if self.db.in_transaction:
            self.db.execute("ROLLBACK")

    def close(self) -> None:
        self.free()
        self.db.close()


@pytest.fixture
async def relay(tmp_path: Path, pki: Pki, sink: Sink) -> AsyncIterator[RunningRelay]:
    r = await start_relay(tmp_path, pki, sink, sections={"dedup": {"busy_timeout": BUSY_TIMEOUT}})
    yield r
    await r.stop()


async def test_locked_store_after_the_upstream_accepted_is_250_and_no_second_copy(
    relay: RunningRelay, sink: Sink
) -> None:
    locker = Locker(relay.state / "dedup.db")
    greeted: list[float] = []

    async def probe() -> None:
        started = time.monotonic()
        other = await RawSmtp.connect(relay.port)
        greeted.append(time.monotonic() - started)
        await other.close()

    probes: list[asyncio.Task[None]] = []

    async def lock_at_accept() -> None:
        locker.hold()
        # While the relay's confirmation waits for the lock, other clients are served.
        probes.append(asyncio.get_running_loop().create_task(probe()))

    sink.faults.on_accept = lock_at_accept
    rcpts = ["pat@example.org", "lee@example.org"]
    try:
        conn = await RawSmtp.ready(relay.port, relay.pki.client_context())
        assert (await send(conn, rcpts, message(1))).startswith(DELIVERED)
        sink.faults.on_accept = None
        await asyncio.gather(*probes)
        assert greeted and greeted[0] < BUSY_TIMEOUT / 2, greeted
        # The client is told the truth (accepted), and its retries, while the store is
        # still locked and after, never send another copy.
        assert await send(conn, rcpts, message(1)) == ALREADY
        locker.free()
        for _ in range(3):
            assert await send(conn, rcpts, message(1)) == ALREADY
        assert sink.all_rcpts() == rcpts
        await conn.close()
    finally:
        locker.close()
    assert events(relay, "dedup-write-failed") == [("confirm", 2)]
    outcomes = [d["outcome"] for d in relay.deliveries()]
    assert outcomes == ["delivered", *["duplicate-suppressed"] * 4]


async def test_locked_store_before_sending_is_451_nothing_sent_and_next_mail_works(
    relay: RunningRelay, sink: Sink
) -> None:
    locker = Locker(relay.state / "dedup.db")
    locker.hold()
    try:
        conn = await RawSmtp.ready(relay.port, relay.pki.client_context())
        started = time.monotonic()
        assert await send(conn, ["pat@example.org"], message(2)) == STATE_FAILED
        assert time.monotonic() - started < BUSY_TIMEOUT + 3
        assert sink.received == []
        [decision] = relay.decisions()
        assert (decision["reply_code"], decision["reply_status"]) == (451, "4.3.0")
        assert events(relay, "dedup-write-failed") == [("claim", 1)]
        locker.free()
        # Same session, no RSET: the client's retry goes through, once.
        assert (await send(conn, ["pat@example.org"], message(2))).startswith(DELIVERED)
        assert await send(conn, ["pat@example.org"], message(2)) == ALREADY
        assert sink.all_rcpts() == ["pat@example.org"]
        await conn.close()
    finally:
        locker.close()


async def test_two_identical_messages_at_the_same_moment_give_one_copy(
    relay: RunningRelay, sink: Sink
) -> None:
    async def hold_reply() -> None:
        await asyncio.sleep(1.0)  # the first copy is still being sent when the second ends

    sink.faults.on_accept = hold_reply
    rcpts = ["pat@example.org", "lee@example.org", "kim@example.org"]
    conns = [await RawSmtp.ready(relay.port, relay.pki.client_context()) for _ in range(3)]
    answers = await asyncio.gather(*(send(c, rcpts, message(3)) for c in conns))
    sink.faults.on_accept = None
    assert sorted(a.startswith(DELIVERED) for a in answers) == [False, False, True], answers
    assert sorted(a for a in answers if not a.startswith(DELIVERED)) == [IN_FLIGHT] * 2
    assert sorted(sink.all_rcpts()) == sorted(rcpts)
    # The deferred clients retry as MTAs do: nothing left to send.
    for conn in conns:
        assert await send(conn, rcpts, message(3)) == ALREADY
        await conn.close()
    assert sorted(sink.all_rcpts()) == sorted(rcpts)


async def test_full_state_disk_is_found_before_sending(
    tmp_path: Path, pki: Pki, sink: Sink
) -> None:
    """The relay as a process whose files cannot grow past a limit, as on a full disk."""
    home = tmp_path
    shutil.copytree(ROOT / "policies", home / "policies")
    ready = home / "ready"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PHI_RELAY_")}
    env["PHI_RELAY_READY_FILE"] = str(ready)
    limit = 160 * 1024

    def small_files() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)

    args = [
        "serve", "--listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0",
        "--tls-cert", str(pki.cert), "--tls-key", str(pki.key),
        "--upstream", f"localhost:{sink.port}", "--upstream-ca", str(pki.ca),
        "--state-dir", str(home / "state"),
        "--policy-file", str(home / "policies" / "default.toml"),
    ]  # fmt: skip
    with (home / "stderr").open("wb") as err:
        proc = await asyncio.create_subprocess_exec(
            str(PHI_RELAY), *args, cwd=home, env=env, stderr=err, preexec_fn=small_files
        )
    try:
        for _ in range(1200):
            if ready.exists() and ready.read_text().endswith("\n"):
                break
            assert proc.returncode is None, (home / "stderr").read_text()
            await asyncio.sleep(0.05)
        port = int(ready.read_text().split()[0])
        conn = await RawSmtp.ready(port, pki.client_context())
        accepted: list[int] = []
        failed = None
        for n in range(60):
            answer = await send(conn, ["pat@example.org"], message(n))
            if answer.startswith(DELIVERED):
                accepted.append(n)
                continue
            assert answer == STATE_FAILED, (n, answer)
            failed = n
            break
        assert failed is not None, "the state store never filled up"
        assert accepted, "nothing was delivered before the store filled up"
        # Nothing was sent for the refused message, and its retries send nothing either.
        assert len(sink.received) == len(accepted)
        for _ in range(2):
            assert await send(conn, ["pat@example.org"], message(failed)) == STATE_FAILED
        assert len(sink.received) == len(accepted)
        # A message the upstream took is never sent again.
        assert await send(conn, ["pat@example.org"], message(accepted[-1])) in (
            ALREADY,
            STATE_FAILED,
        )
        assert len(sink.received) == len(accepted)
        assert [m.data.count(b"Parking update") for m in sink.received] == [1] * len(accepted)
        await conn.close()
    finally:
        proc.send_signal(signal.SIGTERM)
        await asyncio.wait_for(proc.wait(), 40)
    assert "Traceback" not in (home / "stderr").read_text()
