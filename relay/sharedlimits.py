"""Session and AUTH-failure limits counted across every worker of a supervised relay.

`relay.limits` counts what one process sees. With `serve --workers N` each worker would
then allow `max_sessions` sessions and `auth_max_failures` guesses of its own, N times
the limit in all. Here the same rules count in one SQLite file in the supervisor's
per-run directory: every check-and-count is one `BEGIN IMMEDIATE` transaction, so two
workers cannot both take the last slot, and the supervisor drops the sessions of a
worker that died (its AUTH failures keep counting).
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import structlog

from relay.config import ServerConfig
from relay.limits import (
    _MAX_NAME,
    ACCOUNT_LOCKED,
    ADDRESS_LOCKED,
    CLIENT_FULL,
    PAIR_LOCKED,
    SESSIONS_FULL,
    UNAUTH_FULL,
    AuthThrottle,
    SessionLimiter,
    _Attempt,
    refusal,
)

log = structlog.get_logger("relay.sharedlimits")


def shared_limits(
    path: Path, worker: int, s: ServerConfig
) -> tuple[SharedCounters, SharedSessionLimiter, SharedAuthThrottle]:
    """The limits of `s` for `worker`, counted with every other worker in `path`."""
    counters = SharedCounters(path)
    limiter = SharedSessionLimiter(
        counters, worker, s.max_sessions, s.max_sessions_per_client, s.reserved_sessions
    )
    throttle = SharedAuthThrottle(
        counters,
        per_pair=s.auth_max_failures,
        per_account=s.auth_max_failures_per_account,
        per_address=s.auth_max_failures_per_address,
        window=s.auth_lockout,
    )
    return counters, limiter, throttle


SHARED_BUSY_MS = 2000
"""How long one worker waits for another's counter update (each takes microseconds)."""

_SCHEMA = """
CREATE TABLE IF NOT EXISTS slots (
    worker INTEGER PRIMARY KEY, active INTEGER NOT NULL, unauth INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS clients (
    worker INTEGER NOT NULL, host TEXT NOT NULL, n INTEGER NOT NULL,
    PRIMARY KEY (worker, host));
CREATE TABLE IF NOT EXISTS attempts (
    id INTEGER PRIMARY KEY AUTOINCREMENT, at REAL NOT NULL, host TEXT NOT NULL,
    account TEXT NOT NULL, settled INTEGER NOT NULL DEFAULT 0);
CREATE INDEX IF NOT EXISTS attempts_at ON attempts (at);
CREATE INDEX IF NOT EXISTS attempts_pair ON attempts (host, account);
CREATE INDEX IF NOT EXISTS attempts_account ON attempts (account);
CREATE TABLE IF NOT EXISTS proven (
    host TEXT NOT NULL, account TEXT NOT NULL, at REAL NOT NULL, PRIMARY KEY (host, account));
"""


class SharedCounters:
    """One SQLite file in the supervisor's per-run directory that every worker updates,
    so the session and AUTH-failure limits count every worker's sessions.

    Each update is one `BEGIN IMMEDIATE` transaction: the check and the count happen
    under SQLite's write lock, so two workers cannot both take the last slot. Nothing
    here needs to survive the run (journal in memory of the OS: WAL, no fsync); the
    supervisor makes a new file at each start and drops a dead worker's sessions.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.db = sqlite3.connect(path, isolation_level=None, timeout=SHARED_BUSY_MS / 1000)
        self.db.execute(f"PRAGMA busy_timeout={SHARED_BUSY_MS}")
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=OFF")

    @classmethod
    def create(cls, path: Path) -> None:
        """The supervisor, before it forks: an empty file with the tables (then closed,
        as an SQLite connection must not cross a fork)."""
        counters = cls(path)
        try:
            counters.db.executescript(_SCHEMA)
        finally:
            counters.close()

    @classmethod
    def forget_worker(cls, path: Path, worker: int) -> None:
        """A worker ended: the sessions it held are gone (its AUTH failures still count)."""
        counters = cls(path)
        try:
            with counters.transaction() as db:
                db.execute("DELETE FROM slots WHERE worker = ?", (worker,))
                db.execute("DELETE FROM clients WHERE worker = ?", (worker,))
        finally:
            counters.close()

    @contextlib.contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield self.db
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")

    def close(self) -> None:
        self.db.close()


def _one(db: sqlite3.Connection, sql: str, *args: object) -> int:
    row = db.execute(sql, args).fetchone()
    return int(row[0] or 0)


_COUNTS = "SELECT sum(settled), count(*) FROM attempts WHERE "
_BY = {
    "host": _COUNTS + "host = ?",
    "pair": _COUNTS + "host = ? AND account = ?",
    "account": _COUNTS + "account = ?",
}


def _two(db: sqlite3.Connection, by: str, *args: object) -> tuple[int, int]:
    """(failed, failed + in flight) among the attempts of one host, pair or account."""
    row = db.execute(_BY[by], args).fetchone()
    return int(row[0] or 0), int(row[1] or 0)


class SharedSessionLimiter(SessionLimiter):
    """`SessionLimiter` whose counts are the sum over every worker (`SharedCounters`).

    This worker's own share is kept in the base class's fields too, for what reads them.
    A counter store that fails refuses the session (`421`, the client retries) rather
    than letting it past an unknown count.
    """

    def __init__(
        self, counters: SharedCounters, worker: int, total: int, per_client: int, reserved: int
    ) -> None:
        super().__init__(total, per_client, reserved)
        self.counters, self.worker = counters, worker

    def acquire(self, host: str, *, trusted: bool = True) -> str | None:
        try:
            with self.counters.transaction() as db:
                active = _one(db, "SELECT sum(active) FROM slots")
                if active >= self.total:
                    return SESSIONS_FULL
                if _one(db, "SELECT sum(n) FROM clients WHERE host = ?", host) >= self.per_client:
                    return CLIENT_FULL
                unauth = _one(db, "SELECT sum(unauth) FROM slots")
                if not trusted and unauth >= self.total - self.reserved:
                    return UNAUTH_FULL
                db.execute(
                    "INSERT INTO slots VALUES (?, 1, ?) ON CONFLICT (worker) DO UPDATE "
                    "SET active = active + 1, unauth = unauth + excluded.unauth",
                    (self.worker, 0 if trusted else 1),
                )
                db.execute(
                    "INSERT INTO clients VALUES (?, ?, 1) ON CONFLICT (worker, host) DO UPDATE "
                    "SET n = n + 1",
                    (self.worker, host),
                )
        except sqlite3.Error as exc:
            log.error("shared session counters failed; refusing the session", error=str(exc))
            return SESSIONS_FULL
        return super().acquire(host, trusted=trusted)

    def promote(self) -> None:
        super().promote()
        self._update(
            "UPDATE slots SET unauth = max(unauth - 1, 0) WHERE worker = ?", (self.worker,)
        )

    def release(self, host: str, *, unauthenticated: bool = False) -> None:
        super().release(host, unauthenticated=unauthenticated)
        try:
            with self.counters.transaction() as db:
                db.execute(
                    "UPDATE slots SET active = max(active - 1, 0), "
                    "unauth = max(unauth - ?, 0) WHERE worker = ?",
                    (1 if unauthenticated else 0, self.worker),
                )
                db.execute(
                    "UPDATE clients SET n = n - 1 WHERE worker = ? AND host = ?",
                    (self.worker, host),
                )
                db.execute("DELETE FROM clients WHERE worker = ? AND n <= 0", (self.worker,))
        except sqlite3.Error as exc:
            # The slot stays counted until this worker ends (the supervisor then drops it).
            log.error("shared session counters failed at release", error=str(exc))

    def _update(self, sql: str, args: tuple[object, ...]) -> None:
        try:
            with self.counters.transaction() as db:
                db.execute(sql, args)
        except sqlite3.Error as exc:
            log.error("shared session counters failed", error=str(exc))


class SharedAuthThrottle(AuthThrottle):
    """`AuthThrottle` counting every worker's failed attempts (`SharedCounters`).

    The same three counts in the same sliding window, on `time.monotonic()` (one clock
    for every process on the host). A counter store that fails refuses the attempt.
    """

    def __init__(self, counters: SharedCounters, **limits: Any) -> None:
        super().__init__(**limits)
        self.counters = counters

    def _prune_shared(self, db: sqlite3.Connection, now: float) -> None:
        cutoff = now - self.window
        db.execute("DELETE FROM attempts WHERE at <= ?", (cutoff,))
        db.execute(
            "DELETE FROM attempts WHERE id <= (SELECT max(id) FROM attempts) - ?",
            (self.max_tracked,),
        )
        db.execute("DELETE FROM proven WHERE at <= ?", (cutoff,))

    def address_locked(self, host: str, now: float) -> str | None:
        try:
            with self.counters.transaction() as db:
                self._prune_shared(db, now)
                failed = _one(db, "SELECT sum(settled) FROM attempts WHERE host = ?", host)
        except sqlite3.Error as exc:
            log.error("shared AUTH counters failed; refusing the attempt", error=str(exc))
            return ADDRESS_LOCKED
        return ADDRESS_LOCKED if failed >= self.per_address else None

    def begin(self, host: str, account: str, now: float) -> _Attempt | str:
        # Check and count in one transaction: no other worker's attempt can settle in
        # between, so "busy" never turns into a refusal of a right password.
        account = account[:_MAX_NAME]
        pair = (host, account)
        try:
            with self.counters.transaction() as db:
                self._prune_shared(db, now)
                counts = [
                    (*_two(db, "host", host), self.per_address, ADDRESS_LOCKED),
                    (*_two(db, "pair", *pair), self.per_pair, PAIR_LOCKED),
                ]
                if not _one(
                    db, "SELECT count(*) FROM proven WHERE host = ? AND account = ?", *pair
                ):
                    counts.append((*_two(db, "account", account), self.per_account, ACCOUNT_LOCKED))
                refused = refusal(counts)
                if refused is not None:
                    return refused
                row = db.execute(
                    "INSERT INTO attempts (at, host, account) VALUES (?, ?, ?)", (now, *pair)
                )
        except sqlite3.Error as exc:
            log.error("shared AUTH counters failed; refusing the attempt", error=str(exc))
            return ADDRESS_LOCKED
        return _Attempt(now, host, account, ident=row.lastrowid or 0)

    def fail(self, attempt: _Attempt) -> None:
        attempt.settled = True
        try:
            with self.counters.transaction() as db:
                db.execute("UPDATE attempts SET settled = 1 WHERE id = ?", (attempt.ident,))
        except sqlite3.Error as exc:  # unsettled, it still counts: nothing is let through
            log.error("shared AUTH counters failed at failure", error=str(exc))

    def in_flight(self, host: str, account: str) -> bool:
        # A worker killed mid-check leaves its attempt unsettled: it counts as in flight
        # until the window drops it.
        try:
            with self.counters.transaction() as db:
                failed, live = _two(db, "pair", host, account[:_MAX_NAME])
        except sqlite3.Error as exc:
            log.error("shared AUTH counters failed", error=str(exc))
            return False
        return live > failed

    def succeed(self, attempt: _Attempt, now: float) -> None:
        pair = (attempt.host, attempt.account)
        try:
            with self.counters.transaction() as db:
                # Its own row and the pair's failures; others still in flight stay counted.
                db.execute(
                    "DELETE FROM attempts WHERE host = ? AND account = ? AND (settled OR id = ?)",
                    (*pair, attempt.ident),
                )
                db.execute(
                    "INSERT INTO proven VALUES (?, ?, ?) ON CONFLICT (host, account) DO UPDATE "
                    "SET at = excluded.at",
                    (*pair, now),
                )
                if _one(db, "SELECT count(*) FROM proven") > self.max_tracked:
                    db.execute(
                        "DELETE FROM proven WHERE rowid IN "
                        "(SELECT rowid FROM proven ORDER BY at LIMIT ?)",
                        (_one(db, "SELECT count(*) FROM proven") - self.max_tracked,),
                    )
        except sqlite3.Error as exc:
            log.error("shared AUTH counters failed at success", error=str(exc))
