"""Soak the relay: many messages, a faulty upstream, retrying clients; count lost or doubled copies.

The relay runs in-process on loopback with a test PKI, in front of the test upstream sink.
A share of upstream sessions (--fault-rate) misbehaves: a connection reset, a 421 or a
stall longer than the relay's upstream timeout, at MAIL, RCPT or DATA, or the message is
kept and the reply lost (the ambiguous window). The relay keeps one upstream session per
client session, so clients reconnect every --per-connection messages, as MTAs do, and
faults spread over many upstream sessions. Clients behave like an MTA: a 4xx is
retried (bounded, with backoff; after a 421 or a dropped connection on a new one), a 5xx
is final. Every message goes to one or two recipients; a share use a footer category, so
the relay sends one upstream transaction per recipient and partial failures happen.

Printed: sent, acknowledged, refused, gave up, delivered, duplicated; acknowledged must
equal delivered (per recipient copy) and duplicates must be zero except those explained by
an "ambiguous" delivery record (reply lost after the upstream accepted), printed apart.
Exit code 0 when nothing acknowledged was lost and no duplicate is unexplained.

    .venv/bin/python bench/soak.py --messages 2000 --concurrency 50 --fault-rate 0.1
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import re
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from relay.logs import configure  # noqa: E402
from tests.support.pki import Pki, make_pki  # noqa: E402
from tests.support.rawsmtp import Closed, RawSmtp  # noqa: E402
from tests.support.relay import RunningRelay, start_relay  # noqa: E402
from tests.support.upstream import Faults, Sink  # noqa: E402

UPSTREAM_TIMEOUT = 1.0
MESSAGE_ID = re.compile(rb"^Message-ID: <([^>]+)>", re.MULTILINE | re.IGNORECASE)
STAGES = ("MAIL", "RCPT", "DATA")


@dataclass
class Tally:
    sent: int = 0
    acknowledged: set[tuple[str, str]] = field(default_factory=set)  # (message id, rcpt)
    refused: int = 0  # recipient copies refused with a 5xx
    gave_up: int = 0  # recipient copies still deferred after the last retry
    attempts: int = 0
    reconnects: int = 0
    replies: Counter[str] = field(default_factory=Counter)
    gave_up_traces: list[list[str]] = field(default_factory=list)  # replies, a few examples


def fault_chooser(rate: float, rng: random.Random) -> Faults | None:
    if rng.random() >= rate:
        return None
    kind = rng.choice(("reset", "421", "stall", "lost-reply"))
    stage = rng.choice(STAGES)
    if kind == "reset":
        return Faults(reset_at=stage)
    if kind == "421":
        return Faults(reply_421_at=stage)
    if kind == "stall":
        return Faults(stall_at=stage, stall_seconds=UPSTREAM_TIMEOUT + 0.5)
    return Faults(lose_reply_after_accept=True)


def build(index: int, rng: random.Random) -> tuple[str, list[str], bytes]:
    mid = f"soak-{index}-{rng.getrandbits(48):012x}@clinic.example"
    rcpts = [f"patient{index}-{n}@example.org" for n in range(rng.choice((1, 1, 2)))]
    # A footer category makes the relay send one upstream transaction per recipient.
    category = "X-PHI-Category: education\r\n" if rng.random() < 0.3 else ""
    data = (
        f"From: app@clinic.example\r\nTo: {', '.join(rcpts)}\r\nSubject: Parking update\r\n"
        f"Message-ID: <{mid}>\r\n{category}\r\nThe lot on Elm Street closes on Friday.\r\n"
    ).encode()
    return mid, rcpts, data


class Client:
    """One MTA-like connection to the relay, reopened after a 421 or a dropped connection."""

    def __init__(self, port: int, pki: Pki, tally: Tally) -> None:
        self.port, self.pki, self.tally = port, pki, tally
        self.conn: RawSmtp | None = None

    async def _conn(self) -> RawSmtp:
        if self.conn is None:
            self.conn = await RawSmtp.ready(self.port, self.pki.client_context())
            self.tally.reconnects += 1
        return self.conn

    async def drop(self) -> None:
        if self.conn is not None:
            await self.conn.close()
            self.conn = None

    async def attempt(self, rcpts: list[str], data: bytes) -> tuple[str, dict[str, str]]:
        """One transaction. Returns the final reply and each recipient's RCPT reply."""
        conn = await self._conn()
        answers: dict[str, str] = {}
        reply = await conn.cmd("MAIL FROM:<app@clinic.example>")
        if not reply.startswith("250"):
            return reply, answers
        for rcpt in rcpts:
            answers[rcpt] = await conn.cmd(f"RCPT TO:<{rcpt}>")
        accepted = [r for r, a in answers.items() if a.startswith("250")]
        if not accepted:
            await conn.cmd("RSET")
            worst = sorted(answers.values(), key=lambda a: a[0])[0]  # a 4xx before a 5xx
            return worst, answers
        reply = await conn.cmd("DATA")
        if not reply.startswith("354"):
            return reply, answers
        await conn.send(data + b".\r\n")
        return await conn.reply(timeout=60), answers

    async def deliver(self, mid: str, rcpts: list[str], data: bytes, retries: int) -> None:
        pending = list(rcpts)
        trace: list[str] = []
        for attempt in range(retries + 1):
            if attempt:
                await asyncio.sleep(min(0.05 * 2**attempt, 1.0))
            self.tally.attempts += 1
            try:
                reply, answers = await self.attempt(pending, data)
            except (Closed, ConnectionError, OSError, TimeoutError, AssertionError):
                await self.drop()
                self.tally.replies["connection lost"] += 1
                trace.append("connection lost")
                continue
            self.tally.replies[reply[:5]] += 1
            trace.append(" | ".join([*answers.values(), reply]))
            if reply.startswith("421"):
                await self.drop()
            # Recipients refused for good at RCPT are final; deferred ones stay pending.
            for rcpt, answer in answers.items():
                if answer.startswith("5"):
                    self.tally.refused += 1
                    pending.remove(rcpt)
            accepted = [r for r in pending if answers.get(r, "").startswith("250")]
            if reply.startswith("250"):
                self.tally.acknowledged.update((mid, r) for r in accepted)
                pending = [r for r in pending if r not in accepted]
            elif reply.startswith("5"):
                self.tally.refused += len(accepted)
                pending = [r for r in pending if r not in accepted]
            if not pending:
                return
        self.tally.gave_up += len(pending)
        if len(self.tally.gave_up_traces) < 5:
            self.tally.gave_up_traces.append(trace)


async def soak(args: argparse.Namespace) -> int:
    rng = random.Random(args.seed)
    tally = Tally()
    with tempfile.TemporaryDirectory(prefix="phi-relay-soak-") as tmp_name:
        tmp = Path(tmp_name)
        pki = make_pki(tmp / "pki")
        sink = await Sink(pki.server_context()).start()
        sink.session_faults = lambda: fault_chooser(args.fault_rate, rng)
        relay: RunningRelay = await start_relay(
            tmp,
            pki,
            sink,
            server={
                "max_sessions": args.concurrency * 2 + 10,
                "max_sessions_per_client": args.concurrency * 2 + 10,
                "client_timeout": 120,
            },
            upstream_cfg={"timeout": UPSTREAM_TIMEOUT},
        )
        started = time.monotonic()
        deadline = started + args.max_seconds
        queue: asyncio.Queue[int] = asyncio.Queue()
        for i in range(args.messages):
            queue.put_nowait(i)

        async def worker() -> None:
            client = Client(relay.port, pki, tally)
            try:
                while time.monotonic() < deadline:
                    try:
                        index = queue.get_nowait()
                    except asyncio.QueueEmpty:
                        return
                    mid, rcpts, data = build(index, rng)
                    tally.sent += 1
                    await client.deliver(mid, rcpts, data, args.retries)
                    if tally.sent % args.per_connection == 0:
                        await client.drop()
            finally:
                await client.drop()

        await asyncio.gather(*(worker() for _ in range(args.concurrency)))
        elapsed = time.monotonic() - started
        await relay.stop()
        await sink.stop()
        records = relay.audit()

    copies: Counter[tuple[str, str]] = Counter()
    for got in sink.received:
        found = MESSAGE_ID.search(got.data)
        mid = found.group(1).decode() if found else "?"
        for rcpt in got.rcpt_tos:
            copies[(mid, rcpt)] += 1
    delivered = set(copies)
    duplicates = sum(n - 1 for n in copies.values() if n > 1)
    outcomes = Counter(r.get("outcome") for r in records if r.get("type") == "delivery")
    # Each ambiguous record covers the copies of one upstream transaction whose reply was lost.
    ambiguous_copies = sum(
        len(r.get("recipients", []))
        for r in records
        if r.get("type") == "delivery" and r.get("outcome") == "ambiguous"
    )
    lost = tally.acknowledged - delivered
    unacknowledged = delivered - tally.acknowledged
    unexplained = max(0, duplicates - ambiguous_copies)
    result = {
        "messages_sent": tally.sent,
        "recipient_copies_acknowledged": len(tally.acknowledged),
        "recipient_copies_refused": tally.refused,
        "recipient_copies_gave_up": tally.gave_up,
        "recipient_copies_delivered_unique": len(delivered),
        "acknowledged_but_not_delivered": len(lost),
        "delivered_but_not_acknowledged": len(unacknowledged),
        "duplicates": duplicates,
        "ambiguous_window_records": outcomes.get("ambiguous", 0),
        "ambiguous_window_copies": ambiguous_copies,
        "duplicates_unexplained": unexplained,
        "client_attempts": tally.attempts,
        "client_connections": tally.reconnects,
        "upstream_sessions": sink.connections,
        "delivery_outcomes": dict(outcomes),
        "final_replies": dict(tally.replies.most_common()),
        "seconds": round(elapsed, 1),
        "messages_per_second": round(tally.sent / elapsed, 1) if elapsed else 0.0,
        "stopped_by_max_seconds": tally.sent < args.messages,
        "gave_up_examples": tally.gave_up_traces,
    }
    print(json.dumps(result, indent=2))
    ok = not lost and unexplained == 0
    print("OK" if ok else "FAILED: acknowledged copies lost or unexplained duplicates")
    return 0 if ok else 1


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--messages", type=int, default=20000)
    p.add_argument("--concurrency", type=int, default=50)
    p.add_argument(
        "--fault-rate", type=float, default=0.1, help="share of faulty upstream sessions"
    )
    p.add_argument("--retries", type=int, default=6, help="client retries per message after a 4xx")
    p.add_argument(
        "--max-seconds", type=float, default=1800, help="stop sending new messages after"
    )
    p.add_argument("--per-connection", type=int, default=5, help="messages per client session")
    p.add_argument("--seed", type=int, default=20261123)
    args = p.parse_args()
    configure(json=False, level="ERROR")  # the relay's per-message logs would drown the result
    return asyncio.run(soak(args))


if __name__ == "__main__":
    sys.exit(main())
