"""The dedup store's claim -> confirm | release cycle on a real SQLite file, and its failures."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from relay import claimowner
from relay.dedup import DedupError, SqliteDedup
from tests.support.owners import UNJUDGED, dead_owner, live_owner

KEY = b"k" * 32
A, B = "pat@example.org", "lee@example.org"


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def store(tmp_path: Path, clock: Clock) -> Iterator[SqliteDedup]:
    s = SqliteDedup(tmp_path / "dedup.db", KEY, lease=60, busy_timeout=0.2, clock=clock)
    yield s
    s.close()


async def test_a_claim_is_exclusive_until_confirmed_or_released(store: SqliteDedup) -> None:
    fp = store.fingerprint("app@clinic.example", b"bytes")
    one = await store.claim(fp, [A, B], "t1")
    assert one.mine == (A, B)
    two = await store.claim(fp, [A, B], "t2")
    assert (two.mine, two.busy) == ((), (A, B))
    await store.confirm(one, [A])
    await store.release(one, [B])
    three = await store.claim(fp, [A, B], "t3")
    assert (three.done, three.mine, three.busy) == ((A,), (B,), ())


async def test_concurrent_claims_take_each_recipient_once(store: SqliteDedup) -> None:
    fp = store.fingerprint("app@clinic.example", b"same bytes")
    claims = await asyncio.gather(*(store.claim(fp, [A, B], f"t{i}") for i in range(8)))
    taken = [r for c in claims for r in c.mine]
    assert sorted(taken) == sorted([A, B])


async def test_a_claim_left_by_a_crash_is_taken_over_after_the_lease(
    store: SqliteDedup, clock: Clock
) -> None:
    fp = store.fingerprint("app@clinic.example", b"bytes")
    await store.claim(fp, [A], "crashed")
    clock.now += 59
    assert (await store.claim(fp, [A], "t2")).busy == (A,)
    clock.now += 2
    late = await store.claim(fp, [A], "t3")
    assert (late.mine, late.stale) == ((A,), (A,))


async def test_a_claim_whose_owner_process_died_is_taken_over_at_once(
    store: SqliteDedup,
) -> None:
    # A worker killed mid-send (the supervisor replaces it): its claim is stale now, not
    # after the lease, so the client's retry is sent instead of waiting 15 minutes.
    fp = store.fingerprint("app@clinic.example", b"bytes")
    await store.claim(fp, [A], dead_owner())
    taken = await store.claim(fp, [A], claimowner.owner("retry"))
    assert (taken.mine, taken.stale, taken.busy) == ((A,), (A,), ())


@pytest.mark.parametrize("which", ["live", "self", *UNJUDGED])
async def test_a_claim_whose_owner_may_be_alive_waits_for_the_lease(
    store: SqliteDedup, clock: Clock, which: str
) -> None:
    fp = store.fingerprint("app@clinic.example", b"bytes")
    with live_owner() as live:
        holder = {"live": live, "self": claimowner.owner("first")}.get(which, which)
        await store.claim(fp, [A], holder)
        assert not claimowner.abandoned(holder)
        assert (await store.claim(fp, [A], claimowner.owner("second"))).busy == (A,)
    clock.now += 61
    late = await store.claim(fp, [A], claimowner.owner("third"))
    assert (late.mine, late.stale) == ((A,), (A,))


async def test_locked_database_fails_the_claim_within_the_bound(
    store: SqliteDedup, tmp_path: Path
) -> None:
    other = sqlite3.connect(tmp_path / "dedup.db", isolation_level=None)
    other.execute("BEGIN EXCLUSIVE")
    started = time.monotonic()
    with pytest.raises(DedupError, match="database is locked"):
        await store.claim(store.fingerprint("a@b.c", b"x"), [A], "t1")
    assert time.monotonic() - started < 2
    other.execute("ROLLBACK")
    other.close()


async def test_a_refused_confirmation_is_kept_and_written_later(
    store: SqliteDedup, tmp_path: Path
) -> None:
    fp = store.fingerprint("app@clinic.example", b"bytes")
    claim = await store.claim(fp, [A], "t1")
    other = sqlite3.connect(tmp_path / "dedup.db", isolation_level=None)
    other.execute("BEGIN EXCLUSIVE")
    with pytest.raises(DedupError):
        await store.confirm(claim, [A])
    assert store.unwritten() == 1
    # Still locked: this process knows A got it and needs no database to say so.
    assert (await store.claim(fp, [A], "t2")).done == (A,)
    other.execute("ROLLBACK")
    other.close()
    assert (await store.claim(fp, [B], "t3")).mine == (B,)  # flushes on the way
    assert store.unwritten() == 0
    fresh = SqliteDedup(tmp_path / "dedup.db", KEY)
    assert (await fresh.claim(fp, [A], "t4")).done == (A,)
    fresh.close()


async def test_the_store_before_claims_is_carried_over(tmp_path: Path) -> None:
    path = tmp_path / "dedup.db"
    old = sqlite3.connect(path)
    old.execute(
        "CREATE TABLE delivered (fingerprint TEXT NOT NULL, recipient TEXT NOT NULL,"
        " at REAL NOT NULL, PRIMARY KEY (fingerprint, recipient))"
    )
    probe = SqliteDedup(tmp_path / "probe.db", KEY)
    fp, digest = probe.fingerprint("a@b.c", b"x"), probe._rcpt(A)
    probe.close()
    old.execute("INSERT INTO delivered VALUES (?, ?, ?)", (fp, digest, time.time()))
    old.commit()
    old.close()
    store = SqliteDedup(path, KEY)
    assert (await store.claim(fp, [A, B], "t1")).done == (A,)
    store.close()


def test_a_file_that_is_not_sqlite_is_refused(tmp_path: Path) -> None:
    (tmp_path / "dedup.db").write_bytes(b"garbage" * 512)
    with pytest.raises(sqlite3.DatabaseError, match="file is not a database"):
        SqliteDedup(tmp_path / "dedup.db", KEY)


async def test_uncontended_statements_run_where_they_are_called(store: SqliteDedup) -> None:
    """No thread hand-off per claim and confirm (each cost ~0.1 ms of CPU per message);
    the thread is only for waiting on a lock and for checkpoints."""
    import threading

    seen: set[int] = set()

    def trace(_sql: str) -> None:
        seen.add(threading.get_ident())

    store._fast.set_trace_callback(trace)
    store._pool.submit(store._db.set_trace_callback, trace).result()  # its own thread's
    fp = store.fingerprint("app@clinic.example", b"bytes")
    claim = await store.claim(fp, [A, B], "t1")
    await store.confirm(claim, [A])
    await store.release(claim, [B])
    assert seen == {threading.get_ident()}
    assert (await store.claim(fp, [A, B], "t2")).done == (A,)


async def test_a_lock_held_elsewhere_is_waited_for_off_the_event_loop(
    store: SqliteDedup, tmp_path: Path
) -> None:
    """Another worker holding the write lock: the claim waits for it (up to busy_timeout)
    on the thread, and the event loop keeps serving meanwhile."""
    other = sqlite3.connect(tmp_path / "dedup.db", isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    loop = asyncio.get_running_loop()
    loop.call_later(0.1, other.execute, "ROLLBACK")
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.005)
            ticks += 1

    task = asyncio.create_task(ticker())
    fp = store.fingerprint("app@clinic.example", b"bytes")
    started = time.monotonic()
    claim = await store.claim(fp, [A], "t1")
    waited = time.monotonic() - started
    task.cancel()
    other.close()
    assert claim.mine == (A,)
    assert 0.08 < waited < 0.2 + 0.1  # waited for the lock, within busy_timeout
    assert ticks >= 5  # the loop was not held while it waited


async def test_commits_on_the_loop_are_checkpointed_by_the_thread(
    store: SqliteDedup, tmp_path: Path
) -> None:
    from relay.dedup import CHECKPOINT_EVERY

    wal = tmp_path / "dedup.db-wal"
    sizes = []
    for i in range(6 * CHECKPOINT_EVERY):
        fp = store.fingerprint("app@clinic.example", b"%d" % i)
        await store.claim(fp, [A], "t1")
        if i % CHECKPOINT_EVERY == CHECKPOINT_EVERY // 2:
            await asyncio.sleep(0.05)  # the checkpoint ran on the thread meanwhile
            sizes.append(wal.stat().st_size)
    # Without checkpoints the WAL grows by every commit's pages (~6 per claim here);
    # with them it is reused from its start and stays at about one interval's worth.
    one_interval = 2 * CHECKPOINT_EVERY * 4096 * 4
    assert max(sizes) < one_interval, sizes
