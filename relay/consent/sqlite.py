"""The embedded consent store: one SQLite file in WAL mode, shared by processes on one host."""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TypeVar

from relay.address import canonical
from relay.consent.api import (
    ALL,
    Authorization,
    OptOut,
    StoreError,
    check_authorization,
    check_category,
    check_optout,
    check_source,
    check_time,
    now,
)

T = TypeVar("T")

SCHEMA_VERSION = 1
# Each entry moves the schema from version N to N+1; never edit one that has shipped.
_MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE authorizations (
        id         INTEGER PRIMARY KEY AUTOINCREMENT,
        recipient  TEXT NOT NULL,
        scope      TEXT NOT NULL,
        conditions TEXT NOT NULL DEFAULT '[]',
        granted    TEXT NOT NULL,
        expires    TEXT,
        revoked    TEXT,
        form_ref   TEXT NOT NULL
    );
    CREATE INDEX authorizations_lookup ON authorizations (recipient, scope, granted);
    CREATE TABLE optouts (
        id        INTEGER PRIMARY KEY AUTOINCREMENT,
        recipient TEXT NOT NULL,
        category  TEXT NOT NULL,
        created   TEXT NOT NULL,
        source    TEXT NOT NULL,
        removed   TEXT
    );
    CREATE UNIQUE INDEX optouts_active ON optouts (recipient, category) WHERE removed IS NULL;
    """,
)
assert len(_MIGRATIONS) == SCHEMA_VERSION

BUSY_TIMEOUT_MS = 5000

# Fixed-width UTC text sorts in time order, so SQL can compare times as strings.
_TIME_FORMAT = "%Y-%m-%dT%H:%M:%S.%fZ"


def _t(value: datetime) -> str:
    return value.astimezone(UTC).strftime(_TIME_FORMAT)


def _dt(text: str | None) -> datetime | None:
    if text is None:
        return None
    return datetime.strptime(text, _TIME_FORMAT).replace(tzinfo=UTC)


def _auth(row: sqlite3.Row) -> Authorization:
    granted = _dt(row["granted"])
    assert granted is not None
    return Authorization(
        recipient=row["recipient"],
        scope=row["scope"],
        conditions=frozenset(json.loads(row["conditions"])),
        granted=granted,
        expires=_dt(row["expires"]),
        revoked=_dt(row["revoked"]),
        form_ref=row["form_ref"],
    )


def _optout(row: sqlite3.Row) -> OptOut:
    when = _dt(row["created"])
    assert when is not None
    return OptOut(
        recipient=row["recipient"],
        category=row["category"],
        when=when,
        source=row["source"],
        removed=_dt(row["removed"]),
    )


_INSERT_AUTH = """
    INSERT INTO authorizations (recipient, scope, conditions, granted, expires, revoked, form_ref)
    VALUES (?, ?, ?, ?, ?, ?, ?)
"""
_INSERT_OPTOUT = """
    INSERT INTO optouts (recipient, category, created, source, removed) VALUES (?, ?, ?, ?, ?)
    ON CONFLICT (recipient, category) WHERE removed IS NULL DO NOTHING
"""


def _auth_params(a: Authorization) -> tuple[object, ...]:
    return (
        a.recipient,
        a.scope,
        json.dumps(sorted(a.conditions)),
        _t(a.granted),
        None if a.expires is None else _t(a.expires),
        None if a.revoked is None else _t(a.revoked),
        a.form_ref,
    )


def _optout_params(o: OptOut) -> tuple[object, ...]:
    removed = None if o.removed is None else _t(o.removed)
    return (o.recipient, o.category, _t(o.when), o.source, removed)


class SqliteStore:
    """A `ConsentStore` on one SQLite file.

    One connection per process, used from worker threads under a lock: SQLite
    allows one writer at a time anyway, and WAL lets other processes read while
    this one writes. Every call runs in `asyncio.to_thread` so the event loop
    never waits on the disk or on another process's lock.
    """

    def __init__(self, conn: sqlite3.Connection, path: Path) -> None:
        self._conn = conn
        self._lock = threading.Lock()
        self.path = path

    @classmethod
    async def open(cls, path: Path) -> SqliteStore:
        conn = await asyncio.to_thread(_connect, path)
        return cls(conn, path)

    async def _call(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        def locked() -> T:
            with self._lock:
                try:
                    return fn(self._conn)
                except sqlite3.IntegrityError as exc:
                    raise StoreError(f"consent store refused the write: {exc}") from exc
                except (sqlite3.OperationalError, sqlite3.DatabaseError) as exc:
                    raise StoreError(f"consent store (sqlite) failed: {exc}") from exc

        return await asyncio.to_thread(locked)

    # --- look-ups on the relay's hot path ------------------------------------------------

    async def authorization(self, recipient: str, scope: str, at: datetime) -> Authorization | None:
        key, when = canonical(recipient), _t(check_time(at, "at"))

        def run(conn: sqlite3.Connection) -> Authorization | None:
            row = conn.execute(
                "SELECT recipient, scope, conditions, granted, expires, revoked, form_ref"
                " FROM authorizations"
                " WHERE recipient = ? AND scope = ? AND granted <= ?"
                " ORDER BY granted DESC, id DESC LIMIT 1",
                (key, scope, when),
            ).fetchone()
            return None if row is None else _auth(row)

        newest = await self._call(run)
        return newest if newest is not None and newest.current(at) else None

    async def opted_out(self, recipient: str, category: str) -> bool:
        key = canonical(recipient)

        def run(conn: sqlite3.Connection) -> bool:
            row = conn.execute(
                "SELECT 1 FROM optouts WHERE recipient = ? AND category IN (?, ?)"
                " AND removed IS NULL LIMIT 1",
                (key, category, ALL),
            ).fetchone()
            return row is not None

        return await self._call(run)

    # --- opt-outs ---------------------------------------------------------------------------

    async def add_optout(self, recipient: str, category: str, source: str) -> None:
        row = OptOut(canonical(recipient), check_category(category), now(), check_source(source))

        def run(conn: sqlite3.Connection) -> None:
            conn.execute(_INSERT_OPTOUT, _optout_params(row))

        await self._call(run)

    async def remove_optout(self, recipient: str, category: str | None = None) -> int:
        key, when = canonical(recipient), _t(now())
        if category is not None:
            check_category(category)

        def run(conn: sqlite3.Connection) -> int:
            if category is None:
                cur = conn.execute(
                    "UPDATE optouts SET removed = ? WHERE recipient = ? AND removed IS NULL",
                    (when, key),
                )
            else:
                cur = conn.execute(
                    "UPDATE optouts SET removed = ?"
                    " WHERE recipient = ? AND category = ? AND removed IS NULL",
                    (when, key, category),
                )
            return cur.rowcount

        return await self._call(run)

    async def list_optouts(
        self, recipient: str | None = None, *, include_removed: bool = False
    ) -> list[OptOut]:
        where, params = [], []
        if recipient is not None:
            where.append("recipient = ?")
            params.append(canonical(recipient))
        if not include_removed:
            where.append("removed IS NULL")
        sql = "SELECT recipient, category, created, source, removed FROM optouts"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY recipient, category, created, id"

        def run(conn: sqlite3.Connection) -> list[OptOut]:
            return [_optout(r) for r in conn.execute(sql, params)]

        return await self._call(run)

    async def import_optouts(self, rows: Sequence[OptOut]) -> int:
        checked = [check_optout(r) for r in rows]

        def run(conn: sqlite3.Connection) -> int:
            with _transaction(conn):
                before = conn.total_changes
                conn.executemany(_INSERT_OPTOUT, [_optout_params(r) for r in checked])
                return conn.total_changes - before

        return await self._call(run)

    # --- authorizations -----------------------------------------------------------------------

    async def grant(
        self,
        recipient: str,
        scope: str,
        conditions: Iterable[str],
        form_ref: str,
        *,
        expires: datetime | None = None,
        at: datetime | None = None,
    ) -> Authorization:
        row = check_authorization(
            Authorization(
                recipient, scope, frozenset(conditions), at or now(), expires, None, form_ref
            )
        )

        def run(conn: sqlite3.Connection) -> None:
            conn.execute(_INSERT_AUTH, _auth_params(row))

        await self._call(run)
        return row

    async def revoke(self, recipient: str, scope: str, *, at: datetime | None = None) -> int:
        key, when = canonical(recipient), _t(check_time(at or now(), "at"))

        def run(conn: sqlite3.Connection) -> int:
            cur = conn.execute(
                "UPDATE authorizations SET revoked = ?"
                " WHERE recipient = ? AND scope = ? AND revoked IS NULL AND granted <= ?",
                (when, key, scope, when),
            )
            return cur.rowcount

        return await self._call(run)

    async def list_authorizations(self, recipient: str | None = None) -> list[Authorization]:
        sql = (
            "SELECT recipient, scope, conditions, granted, expires, revoked, form_ref"
            " FROM authorizations"
        )
        params: tuple[str, ...] = ()
        if recipient is not None:
            sql += " WHERE recipient = ?"
            params = (canonical(recipient),)
        sql += " ORDER BY recipient, scope, granted, id"

        def run(conn: sqlite3.Connection) -> list[Authorization]:
            return [_auth(r) for r in conn.execute(sql, params)]

        return await self._call(run)

    async def import_authorizations(self, rows: Sequence[Authorization]) -> int:
        checked = [check_authorization(r) for r in rows]

        def run(conn: sqlite3.Connection) -> int:
            with _transaction(conn):
                conn.executemany(_INSERT_AUTH, [_auth_params(r) for r in checked])
            return len(checked)

        return await self._call(run)

    # --- lifecycle -------------------------------------------------------------------------------

    async def ping(self) -> None:
        def run(conn: sqlite3.Connection) -> None:
            conn.execute("SELECT count(*) FROM schema_version").fetchone()

        await self._call(run)

    async def close(self) -> None:
        def run() -> None:
            with self._lock:
                self._conn.close()

        await asyncio.to_thread(run)


class _transaction:
    """BEGIN IMMEDIATE ... COMMIT, or ROLLBACK on any error: imports are all or nothing.

    IMMEDIATE takes the write lock up front (waiting up to busy_timeout) instead of
    failing half-way when another process is writing.
    """

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def __enter__(self) -> None:
        self.conn.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        self.conn.execute("COMMIT" if exc_type is None else "ROLLBACK")


def _connect(path: Path) -> sqlite3.Connection:
    try:
        return _connect_unchecked(path)
    except sqlite3.Error as exc:
        # The path is the operator's own configuration, not PHI; name it so they can fix it.
        raise StoreError(f"consent store {path}: {exc}") from exc
    except OSError as exc:
        raise StoreError(f"consent store {path}: {exc.strerror or type(exc).__name__}") from exc


def _wal(conn: sqlite3.Connection) -> str:
    """Switch to WAL. Several processes opening a new store at once (a relay's workers at
    first start) race for this switch, and SQLite answers "database is locked" at once
    rather than through the busy handler: retry, within the same busy timeout."""
    deadline = time.monotonic() + BUSY_TIMEOUT_MS / 1000
    while True:
        try:
            return str(conn.execute("PRAGMA journal_mode = WAL").fetchone()[0])
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() >= deadline:
                raise
            time.sleep(0.01)


def _connect_unchecked(path: Path) -> sqlite3.Connection:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    # The file holds recipient addresses: create it owner-only before SQLite does
    # (SQLite gives the -wal and -shm files the same mode as the database).
    os.close(os.open(path, os.O_RDWR | os.O_CREAT, 0o600))
    # isolation_level=None: no implicit transactions; we issue BEGIN/COMMIT ourselves.
    conn = sqlite3.connect(
        path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None, check_same_thread=False
    )
    try:
        conn.row_factory = sqlite3.Row
        conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        mode = _wal(conn)
        if str(mode).lower() != "wal":
            raise sqlite3.OperationalError(f"cannot switch to WAL journal mode (got {mode})")
        # FULL: an opt-out answered with 200 must survive a power cut, not only a crash.
        conn.execute("PRAGMA synchronous = FULL")
        _migrate(conn)
    except BaseException:
        conn.close()
        raise
    return conn


def _migrate(conn: sqlite3.Connection) -> None:
    # One IMMEDIATE transaction: of several processes opening a new file at once,
    # one creates the schema and the others wait, then see the version it wrote.
    with _transaction(conn):
        conn.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
        row = conn.execute("SELECT max(version) FROM schema_version").fetchone()
        version = row[0] or 0
        if version > SCHEMA_VERSION:
            raise sqlite3.DatabaseError(
                f"schema version {version} is newer than this phi-relay ({SCHEMA_VERSION})"
            )
        for number in range(version, SCHEMA_VERSION):
            for statement in _MIGRATIONS[number].split(";"):
                if statement.strip():
                    conn.execute(statement)
            conn.execute("INSERT INTO schema_version (version) VALUES (?)", (number + 1,))
