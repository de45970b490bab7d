"""A restart in the middle of traffic, as an operator does it: SIGTERM (or SIGKILL) the real
`phi-relay serve` while MTA-like clients send, start a new one on the same port and state.

Clients retry a message on any 4xx or dropped connection with the same bytes (same
Message-ID), as a real MTA does. At the end: nothing acknowledged is lost, no 5xx, every
message delivered once per recipient except duplicates the audit log counts as
ambiguous (docs/hostile-input.md "The one ambiguous window", counted as bench/soak.py
does), and `phi-relay audit verify` proves one chain across both processes.

The SIGKILL window: a process killed after the upstream accepted a copy but before it
answered the client (or confirmed the dedup claim) leaves the client retrying a message
that was delivered. Until the claim lapses (`dedup.claim_lease`, 900 s by default, 2 s
here) the retry is deferred (4xx), never doubled; after it, the retry sends and a
`dedup-stale-claim` event counts the copy as possibly doubled. What must hold is that nothing a
client got 250 for is missing upstream.
"""

from __future__ import annotations

import asyncio
import json
import re
import signal
import socket
import time
from collections import Counter
from pathlib import Path

import pytest

from tests.adversarial.service import PHI_RELAY, Service, start_service
from tests.support.pki import Pki
from tests.support.rawsmtp import Closed, RawSmtp
from tests.support.upstream import Sink

SENDER = "app@clinic.example"
CLIENTS = 8
MESSAGES = 150
RETRIES = 40  # the restart takes a second or two; an MTA retries for days
MESSAGE_ID = re.compile(rb"^Message-ID: <([^>]+)>", re.MULTILINE | re.IGNORECASE)


def build(n: int) -> tuple[str, list[str], bytes]:
    mid = f"restart-{n}@clinic.example"
    rcpts = [f"member{n}-{k}@example.org" for k in range(2 if n % 3 == 0 else 1)]
    data = (
        f"From: {SENDER}\r\nTo: {', '.join(rcpts)}\r\nSubject: Parking update\r\n"
        f"Message-ID: <{mid}>\r\n\r\nThe lot closes on Friday.\r\n"
    ).encode()
    return mid, rcpts, data


class Tally:
    def __init__(self) -> None:
        self.acknowledged: set[tuple[str, str]] = set()
        self.replies: Counter[str] = Counter()
        self.five: list[str] = []
        self.gave_up: list[tuple[str, str]] = []


async def attempt(conn: RawSmtp, rcpts: list[str], data: bytes) -> tuple[str, dict[str, str]]:
    answers: dict[str, str] = {}
    reply = await conn.cmd(f"MAIL FROM:<{SENDER}>")
    if not reply.startswith("250"):
        return reply, answers
    for rcpt in rcpts:
        answers[rcpt] = await conn.cmd(f"RCPT TO:<{rcpt}>")
    if not any(a.startswith("250") for a in answers.values()):
        await conn.cmd("RSET")
        return sorted(answers.values())[0], answers
    reply = await conn.cmd("DATA")
    if not reply.startswith("354"):
        return reply, answers
    await conn.send(data + b".\r\n")
    return await conn.reply(), answers


async def client(port: int, pki: Pki, queue: asyncio.Queue[int], tally: Tally) -> None:
    conn: RawSmtp | None = None
    while not queue.empty():
        mid, rcpts, data = build(queue.get_nowait())
        pending = list(rcpts)
        for n in range(RETRIES + 1):
            if n:
                await asyncio.sleep(min(0.05 * 2**n, 0.5))
            try:
                if conn is None:
                    conn = await RawSmtp.ready(port, pki.client_context())
                reply, answers = await attempt(conn, pending, data)
            except (Closed, OSError, TimeoutError, AssertionError):
                if conn is not None:
                    await conn.close()
                conn = None
                tally.replies["connection lost"] += 1
                continue
            tally.replies[reply[:3]] += 1
            for line in [*answers.values(), reply]:
                if line.startswith("5"):
                    tally.five.append(line)
            if reply.startswith("421"):
                await conn.close()
                conn = None
            if reply.startswith("250"):
                done = [r for r in pending if answers.get(r, "").startswith("250")]
                tally.acknowledged.update((mid, r) for r in done)
                pending = [r for r in pending if r not in done]
            if not pending or reply.startswith("5"):
                break
        tally.gave_up += [(mid, r) for r in pending]
    if conn is not None:
        await conn.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def serve(tmp: Path, name: str, port: int, pki: Pki, sink: Sink) -> Service:
    # A short claim lease, so a claim the killed process left behind lapses within the test.
    home = tmp / name
    home.mkdir()
    state = tmp / "state"
    return await start_service(
        home, pki, sink,
        "--listen", f"127.0.0.1:{port}",
        "--state-dir", str(state),
        "--audit-log", str(state / "audit.log"),
        env={
            "PHI_RELAY_SERVER_MAX_SESSIONS_PER_CLIENT": "50",
            "PHI_RELAY_DEDUP_CLAIM_LEASE": "2",
        },
    )  # fmt: skip


async def restart_under_traffic(
    tmp: Path, pki: Pki, sink: Sink, sig: signal.Signals
) -> tuple[Tally, Service, Service]:
    port = free_port()
    first = await serve(tmp, "run1", port, pki, sink)
    queue: asyncio.Queue[int] = asyncio.Queue()
    for n in range(MESSAGES):
        queue.put_nowait(n)
    tally = Tally()
    clients = asyncio.gather(*(client(port, pki, queue, tally) for _ in range(CLIENTS)))
    # Mid-traffic: a third of the messages acknowledged, the rest still to come.
    deadline = time.monotonic() + 15
    while len(sink.received) < MESSAGES // 3:
        assert time.monotonic() < deadline, len(sink.received)
        await asyncio.sleep(0.01)
    first.signal(sig)
    code = await asyncio.wait_for(first.proc.wait(), 40)
    assert code == (0 if sig == signal.SIGTERM else -signal.SIGKILL), first.log_text()
    second = await serve(tmp, "run2", port, pki, sink)
    try:
        await asyncio.wait_for(clients, 60)
    finally:
        assert await second.stop() == 0
    return tally, first, second


def copies(sink: Sink) -> Counter[tuple[str, str]]:
    out: Counter[tuple[str, str]] = Counter()
    for got in sink.received:
        found = MESSAGE_ID.search(got.data)
        assert found, got.data[:200]
        out.update((found.group(1).decode(), r) for r in got.rcpt_tos)
    return out


async def verify(state: Path) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        str(PHI_RELAY), "audit", "verify", str(state / "audit.log"), "--state-dir", str(state),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "sigkill"])
async def test_restart_under_traffic_loses_nothing_acknowledged(
    tmp_path: Path, pki: Pki, sink: Sink, sig: signal.Signals
) -> None:
    tally, _first, _second = await restart_under_traffic(tmp_path, pki, sink, sig)
    got = copies(sink)
    every = {(mid, r) for mid, rcpts, _ in map(build, range(MESSAGES)) for r in rcpts}

    assert tally.five == [], tally.five
    assert not tally.acknowledged - set(got), "acknowledged but never delivered"
    assert set(got) <= every
    log = (tmp_path / "state" / "audit.log").read_text().splitlines()
    records = [json.loads(line) for line in log if line]
    assert any(r.get("type") == "delivery" for r in records)
    ambiguous = sum(
        len(r.get("recipients", []))
        for r in records
        if r.get("type") == "delivery" and r.get("outcome") == "ambiguous"
    )
    # A lapsed claim (the killed process had claimed, maybe sent) is counted as possibly doubled.
    stale = sum(int(r["recipients"]) for r in records if r.get("event") == "dedup-stale-claim")
    duplicates = sum(n - 1 for n in got.values())
    assert duplicates <= ambiguous + stale, (duplicates, ambiguous, stale, tally.replies)
    code, out, err = await verify(tmp_path / "state")
    assert (code, out) == (0, f"OK: {len(records)} records, chain intact\n"), err

    # Every message ends acknowledged, none given up: after SIGTERM by the drain, after
    # SIGKILL once the dead process's claims lapse (dedup.claim_lease, 2 s here).
    assert tally.gave_up == [], (tally.gave_up, tally.replies)
    assert tally.acknowledged == every
    if sig == signal.SIGTERM:
        assert stale == 0
