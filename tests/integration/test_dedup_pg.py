"""The PostgreSQL retry store: claims are atomic across replicas (INSERT ... ON CONFLICT),
a released claim can be taken again, a delivered one never, a crashed one after the lease."""

from __future__ import annotations

import asyncio
import os

from relay import claimowner
from relay.dedup_pg import PostgresDedup
from tests.support.owners import UNJUDGED, dead_owner, live_owner
from tests.support.postgres import PostgresServer, fresh_database

KEY = os.urandom(32)


async def open_two(url: str, lease: float = 900.0) -> tuple[PostgresDedup, PostgresDedup]:
    a = await PostgresDedup.open(url, KEY, 86400.0, lease=lease, timeout=10.0)
    b = await PostgresDedup.open(url, KEY, 86400.0, lease=lease, timeout=10.0)
    return a, b


async def test_two_replicas_racing_for_the_same_recipients_split_them(
    postgres_server: PostgresServer,
) -> None:
    url = await fresh_database(postgres_server)
    a, b = await open_two(url)
    try:
        rcpts = [f"patient{i}@example.org" for i in range(20)]
        fp = a.fingerprint("app@clinic.example", b"same bytes")
        assert fp == b.fingerprint("app@clinic.example", b"same bytes")
        ca, cb = await asyncio.gather(a.claim(fp, rcpts, "owner-a"), b.claim(fp, rcpts, "owner-b"))
        assert sorted(ca.mine + cb.mine) == sorted(rcpts)  # each exactly once
        assert set(ca.mine).isdisjoint(cb.mine)
        assert sorted(ca.busy + cb.busy) == sorted(rcpts)
        await a.confirm(ca, ca.mine)
        await b.release(cb, cb.mine)
        again = await b.claim(fp, rcpts, "owner-c")
        assert sorted(again.done) == sorted(ca.mine)
        assert sorted(again.mine) == sorted(cb.mine)
    finally:
        a.close()
        b.close()


async def test_a_claim_left_by_a_crash_is_taken_over_after_the_lease(
    postgres_server: PostgresServer,
) -> None:
    url = await fresh_database(postgres_server)
    a, b = await open_two(url, lease=0.2)
    try:
        fp = a.fingerprint("app@clinic.example", b"bytes")
        first = await a.claim(fp, ["p@example.org"], "crashed")
        assert first.mine == ("p@example.org",)
        assert (await b.claim(fp, ["p@example.org"], "other")).busy == ("p@example.org",)
        await asyncio.sleep(0.3)
        taken = await b.claim(fp, ["p@example.org"], "other")
        assert taken.mine == taken.stale == ("p@example.org",)
    finally:
        a.close()
        b.close()


async def test_a_claim_whose_owner_process_died_is_taken_over_at_once(
    postgres_server: PostgresServer,
) -> None:
    url = await fresh_database(postgres_server)
    a, b = await open_two(url)
    try:
        fp = a.fingerprint("app@clinic.example", b"bytes")
        await a.claim(fp, ["p@example.org"], dead_owner())
        with live_owner() as live:
            await a.claim(fp, ["q@example.org"], live)
            for holder in UNJUDGED:
                await a.claim(fp, [f"{len(holder)}@example.org"], holder)
            got = await b.claim(
                fp,
                ["p@example.org", "q@example.org", *(f"{len(h)}@example.org" for h in UNJUDGED)],
                claimowner.owner("retry"),
            )
        assert got.mine == got.stale == ("p@example.org",)
        assert set(got.busy) == {"q@example.org", *(f"{len(h)}@example.org" for h in UNJUDGED)}
    finally:
        a.close()
        b.close()
