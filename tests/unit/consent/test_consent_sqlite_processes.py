"""Several processes opening and writing one new SQLite store at once: nothing lost, no errors."""

from __future__ import annotations

import asyncio
import multiprocessing
from datetime import UTC, datetime
from pathlib import Path

from relay.consent import open_store

PROCESSES = 4
WRITES = 50
T0 = datetime(2026, 3, 1, tzinfo=UTC)


def _writer(url: str, worker: int, start: multiprocessing.synchronize.Event) -> None:
    async def main() -> None:
        # Every worker opens the (not yet existing) file at the same moment, racing the
        # schema creation as replicas starting together would.
        start.wait(timeout=30)
        store = await open_store(url)
        try:
            for i in range(WRITES):
                rcpt = f"w{worker}-{i}@example.org"
                await store.grant(rcpt, "marketing", [], f"form-{worker}-{i}", at=T0)
                await store.add_optout(rcpt, "fundraising", "one-click")
                # Every worker also hits the same rows: the unique active opt-out must hold.
                await store.add_optout("shared@example.org", "all", "one-click")
                assert await store.opted_out(rcpt, "fundraising")
        finally:
            await store.close()

    asyncio.run(main())


async def test_processes_share_one_sqlite_store(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'shared' / 'consent.db'}"
    ctx = multiprocessing.get_context("spawn")
    start = ctx.Event()
    procs = [ctx.Process(target=_writer, args=(url, n, start)) for n in range(PROCESSES)]
    for proc in procs:
        proc.start()
    start.set()
    for proc in procs:
        proc.join(timeout=90)
    codes = [proc.exitcode for proc in procs]
    for proc in procs:
        if proc.is_alive():
            proc.kill()
            proc.join(timeout=10)
    assert codes == [0] * PROCESSES

    store = await open_store(url)
    try:
        auths = await store.list_authorizations()
        optouts = await store.list_optouts()
    finally:
        await store.close()
    assert len(auths) == PROCESSES * WRITES
    assert len({a.form_ref for a in auths}) == PROCESSES * WRITES
    assert len(optouts) == PROCESSES * WRITES + 1
    assert [o.recipient for o in optouts if o.category == "all"] == ["shared@example.org"]
