"""The retry store in PostgreSQL, shared by every replica: claim, confirm, release (see dedup).

Used when the consent store is PostgreSQL, so a client's retry that lands on another
replica finds which recipients already got the message. A claim is one
`INSERT ... ON CONFLICT DO UPDATE ... WHERE` per recipient: PostgreSQL takes the row
lock, so of two replicas claiming the same recipient at once exactly one gets it.
Records hold keyed hashes only (the shared dedup key), never an address.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import asyncpg

from relay.claimowner import abandoned
from relay.dedup import (
    DELIVERED,
    SENDING,
    Claim,
    DedupError,
    message_fingerprint,
    recipient_hash,
)

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS dedup_recipients ("
    " fingerprint TEXT NOT NULL, recipient TEXT NOT NULL,"
    " state TEXT NOT NULL CHECK (state IN ('sending', 'delivered')),"
    " owner TEXT NOT NULL, at DOUBLE PRECISION NOT NULL,"
    " PRIMARY KEY (fingerprint, recipient))"
)
_CLAIM = (
    "WITH prev AS (SELECT state, at FROM dedup_recipients"
    "  WHERE fingerprint = $1 AND recipient = $2)"
    " INSERT INTO dedup_recipients AS r VALUES ($1, $2, 'sending', $3, $4)"
    " ON CONFLICT (fingerprint, recipient) DO UPDATE"
    "  SET state = 'sending', owner = EXCLUDED.owner, at = EXCLUDED.at"
    "  WHERE r.at < $5 OR (r.state = 'sending' AND (r.owner = EXCLUDED.owner OR r.at < $6))"
    " RETURNING (SELECT state FROM prev) AS prev_state, (SELECT at FROM prev) AS prev_at"
)
# A claim whose owner process is dead (relay.claimowner), only if it still holds it.
_TAKE_OVER = (
    "UPDATE dedup_recipients SET owner = $3, at = $4"
    " WHERE fingerprint = $1 AND recipient = $2 AND state = 'sending' AND owner = $5"
    " RETURNING true"
)
_CONFIRM = (
    "INSERT INTO dedup_recipients VALUES ($1, $2, 'delivered', '', $3)"
    " ON CONFLICT (fingerprint, recipient) DO UPDATE SET state = 'delivered', owner = '',"
    " at = EXCLUDED.at"
)


class PostgresDedup:
    def __init__(
        self,
        pool: Any,
        key: bytes,
        ttl: float,
        *,
        lease: float,
        timeout: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._pool, self.key, self.ttl, self.lease = pool, key, ttl, lease
        self.timeout = timeout
        self._clock = clock
        # Confirmations PostgreSQL refused; consulted by every claim of this replica.
        self._unwritten: dict[tuple[str, str], float] = {}

    @classmethod
    async def open(
        cls, dsn: str, key: bytes, ttl: float, *, lease: float, timeout: float
    ) -> PostgresDedup:
        try:
            pool = await asyncpg.create_pool(
                dsn, min_size=1, max_size=4, command_timeout=timeout, timeout=timeout
            )
            async with pool.acquire() as conn:
                await conn.execute(_SCHEMA)
                await conn.execute("DELETE FROM dedup_recipients WHERE at < $1", time.time() - ttl)
        except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError) as exc:
            raise DedupError(f"dedup store (PostgreSQL): {type(exc).__name__}") from exc
        return cls(pool, key, ttl, lease=lease, timeout=timeout)

    def fingerprint(self, mail_from: str, raw: bytes) -> str:
        # The same function as SqliteDedup's: replicas and a host's workers agree on it.
        return message_fingerprint(self.key, mail_from, raw)

    def _rcpt(self, recipient: str) -> str:
        return recipient_hash(self.key, recipient)

    async def claim(self, fingerprint: str, recipients: Sequence[str], owner: str) -> Claim:
        hashes = {self._rcpt(r): r for r in recipients}
        if not hashes:
            return Claim(fingerprint, owner)
        mine: list[str] = []
        done: list[str] = []
        busy: list[str] = []
        stale: list[str] = []
        try:
            async with self._pool.acquire(timeout=self.timeout) as conn:
                await self._flush(conn)
                now = self._clock()
                for digest, rcpt in hashes.items():
                    if (fingerprint, digest) in self._unwritten:
                        done.append(rcpt)
                        continue
                    row = await conn.fetchrow(
                        _CLAIM,
                        fingerprint,
                        digest,
                        owner,
                        now,
                        now - self.ttl,
                        now - self.lease,
                    )
                    if row is not None:
                        mine.append(rcpt)
                        if row["prev_state"] == SENDING and row["prev_at"] >= now - self.ttl:
                            stale.append(rcpt)
                        continue
                    held = await conn.fetchrow(
                        "SELECT state, owner FROM dedup_recipients"
                        " WHERE fingerprint = $1 AND recipient = $2",
                        fingerprint,
                        digest,
                    )
                    if held is not None and held["state"] == DELIVERED:
                        done.append(rcpt)
                    elif (
                        held is not None
                        and abandoned(held["owner"])
                        and await conn.fetchval(
                            _TAKE_OVER, fingerprint, digest, owner, now, held["owner"]
                        )
                    ):
                        mine.append(rcpt)  # its owner died mid-send: the outcome is unknown
                        stale.append(rcpt)
                    else:
                        busy.append(rcpt)
        except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError) as exc:
            # What was claimed before the failure lapses after the lease: a retry sends it.
            raise DedupError(f"dedup store (PostgreSQL): {type(exc).__name__}") from exc
        return Claim(fingerprint, owner, tuple(mine), tuple(done), tuple(busy), tuple(stale))

    async def confirm(self, claim: Claim, recipients: Sequence[str]) -> None:
        now = self._clock()
        for r in recipients:
            self._unwritten[(claim.fingerprint, self._rcpt(r))] = now
        try:
            async with self._pool.acquire(timeout=self.timeout) as conn:
                await self._flush(conn)
        except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError) as exc:
            raise DedupError(f"dedup store (PostgreSQL): {type(exc).__name__}") from exc

    async def release(self, claim: Claim, recipients: Sequence[str]) -> None:
        digests = [self._rcpt(r) for r in recipients]
        if not digests:
            return
        try:
            async with self._pool.acquire(timeout=self.timeout) as conn:
                await conn.execute(
                    "DELETE FROM dedup_recipients WHERE fingerprint = $1"
                    " AND recipient = ANY($2::text[]) AND owner = $3 AND state = 'sending'",
                    claim.fingerprint,
                    digests,
                    claim.owner,
                )
        except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError) as exc:
            raise DedupError(f"dedup store (PostgreSQL): {type(exc).__name__}") from exc

    async def _flush(self, conn: Any) -> None:
        pending = list(self._unwritten.items())
        if not pending:
            return
        async with conn.transaction():
            await conn.executemany(_CONFIRM, [(fp, d, at) for (fp, d), at in pending])
        for item, at in pending:
            if self._unwritten.get(item) == at:
                del self._unwritten[item]

    def unwritten(self) -> int:
        return len(self._unwritten)

    def close(self) -> None:
        # Synchronous by the DedupStore interface; confirmations not yet written are lost
        # from memory, but their claims stay on the server until the lease lapses.
        self._pool.terminate()
