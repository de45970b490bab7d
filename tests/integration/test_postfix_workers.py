"""Postfix relaying through `phi-relay serve --workers 2`, with a worker killed and a reload
in the middle of the traffic.

What an operator does: Postfix (Debian's, a private instance) sends a burst through the
relay with SASL AUTH, its qmgr opening many smtp processes that log in with one account
at once, spread over both workers. Mid-burst one worker is killed (kill -9) and the
supervisor restarts it, then every worker is reloaded (SIGHUP). Nothing may be lost: every
message reaches the upstream, none is refused for "too many failed logins", and a message
reaches it twice only when the killed worker had sent it and died before it recorded the
delivery (the upstream had taken it, Postfix never heard the 250: the at-least-once edge
every relay has). Postfix runs several smtp processes at once, so the killed worker can
hold more than one such transaction.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import smtplib
import time
from collections import Counter
from email.message import EmailMessage
from pathlib import Path
from typing import Any

from relay.users import add_user
from tests.adversarial.service import start_service
from tests.integration.test_workers import workers_of
from tests.support.pki import Pki
from tests.support.postfix import Postfix
from tests.support.upstream import Sink

USER = "postfix-client"
PASSWORD = "a synthetic postfix passphrase 2"
COUNT = 60


def submit_all(port: int, count: int) -> list[str]:
    """Hand `count` clean messages to Postfix's smtpd in one session, as an app would."""
    ids = []
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
        for n in range(count):
            msg = EmailMessage()
            msg["From"] = "app@clinic.example"
            msg["To"] = f"office{n}@example.org"
            msg["Subject"] = f"Parking garage update {n}"
            msg["Message-ID"] = f"<burst-{n}@clinic.example>"
            msg.set_content("Synthetic test body.\n")
            client.send_message(msg)
            ids.append(msg["Message-ID"])
    return ids


def decision_of(copy: EmailMessage) -> str:
    """The decision id of a copy the upstream got, from the relay's Received line."""
    found = re.search(r"\bid ([0-9a-f]{32});", str(copy["Received"]))
    assert found is not None, "the relay's Received line names no decision"
    return found.group(1)


def unexplained_duplicates(sink: Sink, records: list[dict[str, Any]]) -> list[str]:
    """Messages the upstream got twice that no dead transaction accounts for: every copy
    but one must come from a decision the killed worker recorded but whose delivery it
    never did (it died between the upstream's 250 and its audit record)."""
    delivered_ids = {r["decision_id"] for r in records if r.get("type") == "delivery"}
    decided = {r["decision_id"]: r.get("worker", 1) for r in records if r.get("type") == "decision"}
    copies: dict[str, list[str]] = {}
    for r in sink.received:
        copies.setdefault(str(r.message["Message-ID"]), []).append(decision_of(r.message))
    dead_workers = set()
    out = []
    for mid, ids in copies.items():
        orphans = [i for i in ids if i in decided and i not in delivered_ids]
        dead_workers.update(decided[i] for i in orphans)
        if len(ids) - 1 > len(orphans):
            out.append(mid)
    # All the dead transactions belong to the one worker that was killed.
    return out if len(dead_workers) <= 1 else [*out, f"dead transactions in {dead_workers}"]


async def delivered(sink: Sink, count: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while len({r.message["Message-ID"] for r in sink.received}) < count:
        if time.monotonic() > deadline:
            return
        await asyncio.sleep(0.1)


async def test_postfix_burst_survives_a_killed_worker_and_a_reload(
    tmp_path: Path, pki: Pki, sink: Sink
) -> None:
    users = tmp_path / "users"
    add_user(users, USER, PASSWORD)
    service = await start_service(tmp_path, pki, sink, "--users-file", str(users), workers=2)
    postfix = Postfix(service.smtp_port, pki.ca, USER, PASSWORD)
    try:
        await asyncio.to_thread(postfix.start)
        sending = asyncio.create_task(asyncio.to_thread(submit_all, postfix.smtpd_port, COUNT))
        # Mid-burst: kill one worker once the upstream has some of the burst.
        deadline = time.monotonic() + 60
        while len(sink.received) < COUNT // 4 and time.monotonic() < deadline:  # noqa: ASYNC110 - the sink has no event for it
            await asyncio.sleep(0.02)
        victim = workers_of(service)[0]
        os.kill(victim, signal.SIGKILL)
        for _ in range(200):  # the supervisor starts a new worker in its place
            await asyncio.sleep(0.05)
            kids = workers_of(service)
            if len(kids) == 2 and victim not in kids:
                break
        assert len(workers_of(service)) == 2 and victim not in workers_of(service)
        with contextlib.suppress(ProcessLookupError):
            os.kill(service.proc.pid, signal.SIGHUP)
        ids = await sending
        # Postfix retries what the kill deferred; a flush spares the test its backoff.
        for _ in range(6):
            await delivered(sink, COUNT, 10)
            if len({r.message["Message-ID"] for r in sink.received}) == COUNT:
                break
            await postfix.flush()
        got = Counter(r.message["Message-ID"] for r in sink.received)
        assert set(got) == set(ids), postfix.log_text()[-3000:]
        assert unexplained_duplicates(sink, service.audit_records()) == []
        log = postfix.log_text()
        assert "Too many failed logins" not in log, log[-3000:]
        assert "Authentication credentials invalid" not in log, log[-3000:]
        # Every message was logged as sent by Postfix; none bounced.
        statuses = Counter(s.status for s in postfix.statuses())
        assert statuses["bounced"] == 0, log[-3000:]
        assert statuses["sent"] >= COUNT, statuses
        # Every worker's audit chain has the decisions (one a delivered message at least).
        decisions = [r for r in service.audit_records() if r.get("type") == "decision"]
        assert len(decisions) >= COUNT
    finally:
        await asyncio.to_thread(postfix.stop)
        assert await service.stop() == 0, service.log_text()[-3000:]
