"""The shared consent store for several replicas: PostgreSQL through an asyncpg pool."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Any, TypeVar

import asyncpg

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
# The same tables and columns as the SQLite store, in PostgreSQL's own types.
_MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
        """CREATE TABLE authorizations (
            id         BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            recipient  TEXT NOT NULL,
            scope      TEXT NOT NULL,
            conditions TEXT[] NOT NULL DEFAULT '{}',
            granted    TIMESTAMPTZ NOT NULL,
            expires    TIMESTAMPTZ,
            revoked    TIMESTAMPTZ,
            form_ref   TEXT NOT NULL
        )""",
        "CREATE INDEX authorizations_lookup ON authorizations (recipient, scope, granted)",
        """CREATE TABLE optouts (
            id        BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            recipient TEXT NOT NULL,
            category  TEXT NOT NULL,
            created   TIMESTAMPTZ NOT NULL,
            source    TEXT NOT NULL,
            removed   TIMESTAMPTZ
        )""",
        "CREATE UNIQUE INDEX optouts_active ON optouts (recipient, category) WHERE removed IS NULL",
    ),
)
assert len(_MIGRATIONS) == SCHEMA_VERSION

# Any constant will do; it only has to be the same in every replica running migrations.
_MIGRATION_LOCK = 0x5048_4952_454C_4159 & 0x7FFF_FFFF_FFFF_FFFF

CONNECT_TIMEOUT = 10.0
COMMAND_TIMEOUT = 10.0
ACQUIRE_TIMEOUT = 10.0

_INSERT_AUTH = """
    INSERT INTO authorizations (recipient, scope, conditions, granted, expires, revoked, form_ref)
    VALUES ($1, $2, $3, $4, $5, $6, $7)
"""
_INSERT_OPTOUT = """
    INSERT INTO optouts (recipient, category, created, source, removed)
    VALUES ($1, $2, $3, $4, $5)
    ON CONFLICT (recipient, category) WHERE removed IS NULL DO NOTHING
"""


def _auth(row: Any) -> Authorization:
    return Authorization(
        recipient=row["recipient"],
        scope=row["scope"],
        conditions=frozenset(row["conditions"]),
        granted=row["granted"],
        expires=row["expires"],
        revoked=row["revoked"],
        form_ref=row["form_ref"],
    )


def _optout(row: Any) -> OptOut:
    return OptOut(
        recipient=row["recipient"],
        category=row["category"],
        when=row["created"],
        source=row["source"],
        removed=row["removed"],
    )


def _auth_params(a: Authorization) -> tuple[object, ...]:
    return (
        a.recipient,
        a.scope,
        sorted(a.conditions),
        a.granted,
        a.expires,
        a.revoked,
        a.form_ref,
    )


def _optout_params(o: OptOut) -> tuple[object, ...]:
    return (o.recipient, o.category, o.when, o.source, o.removed)


def _rowcount(status: str) -> int:
    """asyncpg returns the command tag ("UPDATE 3", "INSERT 0 1"); the count is its last word."""
    last = status.rsplit(" ", 1)[-1]
    return int(last) if last.isdigit() else 0


class PostgresStore:
    """A `ConsentStore` on PostgreSQL, for replicas on several hosts sharing one state."""

    def __init__(self, pool: Any) -> None:
        self._pool = pool

    @classmethod
    async def open(cls, dsn: str, *, min_size: int = 1, max_size: int = 10) -> PostgresStore:
        try:
            pool = await asyncpg.create_pool(
                dsn,
                min_size=min_size,
                max_size=max_size,
                timeout=CONNECT_TIMEOUT,
                command_timeout=COMMAND_TIMEOUT,
            )
        except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError) as exc:
            # Never the DSN: it may hold a password.
            raise StoreError(f"consent store (postgresql) unreachable: {_describe(exc)}") from exc
        store = cls(pool)
        try:
            await store._guard(store._migrate)
        except BaseException:
            await pool.close()
            raise
        return store

    async def _guard(self, fn: Callable[[], Awaitable[T]]) -> T:
        try:
            return await fn()
        except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError) as exc:
            raise StoreError(f"consent store (postgresql) failed: {_describe(exc)}") from exc

    @asynccontextmanager
    async def _conn(self) -> AsyncIterator[Any]:
        async with self._pool.acquire(timeout=ACQUIRE_TIMEOUT) as conn:
            yield conn

    async def _migrate(self) -> None:
        async with self._conn() as conn, conn.transaction():
            # Replicas starting together: one migrates, the others wait on the lock.
            await conn.execute("SELECT pg_advisory_xact_lock($1)", _MIGRATION_LOCK)
            await conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)"
            )
            version = await conn.fetchval("SELECT coalesce(max(version), 0) FROM schema_version")
            if version > SCHEMA_VERSION:
                raise StoreError(
                    f"consent store schema version {version} is newer than this phi-relay"
                    f" ({SCHEMA_VERSION})"
                )
            for number in range(version, SCHEMA_VERSION):
                for statement in _MIGRATIONS[number]:
                    await conn.execute(statement)
                await conn.execute("INSERT INTO schema_version (version) VALUES ($1)", number + 1)

    # --- look-ups on the relay's hot path ------------------------------------------------

    async def authorization(self, recipient: str, scope: str, at: datetime) -> Authorization | None:
        key, when = canonical(recipient), check_time(at, "at")

        async def run() -> Any:
            return await self._pool.fetchrow(
                "SELECT recipient, scope, conditions, granted, expires, revoked, form_ref"
                " FROM authorizations"
                " WHERE recipient = $1 AND scope = $2 AND granted <= $3"
                " ORDER BY granted DESC, id DESC LIMIT 1",
                key,
                scope,
                when,
                timeout=COMMAND_TIMEOUT,
            )

        row = await self._guard(run)
        newest = None if row is None else _auth(row)
        return newest if newest is not None and newest.current(at) else None

    async def opted_out(self, recipient: str, category: str) -> bool:
        key = canonical(recipient)

        async def run() -> Any:
            return await self._pool.fetchval(
                "SELECT 1 FROM optouts WHERE recipient = $1 AND category IN ($2, $3)"
                " AND removed IS NULL LIMIT 1",
                key,
                category,
                ALL,
                timeout=COMMAND_TIMEOUT,
            )

        return await self._guard(run) is not None

    # --- opt-outs ---------------------------------------------------------------------------

    async def add_optout(self, recipient: str, category: str, source: str) -> None:
        row = OptOut(canonical(recipient), check_category(category), now(), check_source(source))

        async def run() -> None:
            await self._pool.execute(_INSERT_OPTOUT, *_optout_params(row), timeout=COMMAND_TIMEOUT)

        await self._guard(run)

    async def remove_optout(self, recipient: str, category: str | None = None) -> int:
        key, when = canonical(recipient), now()
        if category is not None:
            check_category(category)

        async def run() -> str:
            if category is None:
                status: str = await self._pool.execute(
                    "UPDATE optouts SET removed = $1 WHERE recipient = $2 AND removed IS NULL",
                    when,
                    key,
                    timeout=COMMAND_TIMEOUT,
                )
                return status
            status = await self._pool.execute(
                "UPDATE optouts SET removed = $1"
                " WHERE recipient = $2 AND category = $3 AND removed IS NULL",
                when,
                key,
                category,
                timeout=COMMAND_TIMEOUT,
            )
            return status

        return _rowcount(await self._guard(run))

    async def list_optouts(
        self, recipient: str | None = None, *, include_removed: bool = False
    ) -> list[OptOut]:
        where, params = [], []
        if recipient is not None:
            params.append(canonical(recipient))
            where.append(f"recipient = ${len(params)}")
        if not include_removed:
            where.append("removed IS NULL")
        sql = "SELECT recipient, category, created, source, removed FROM optouts"
        if where:
            sql += " WHERE " + " AND ".join(where)
        # COLLATE "C": the same byte order as SQLite, whatever the database's locale.
        sql += ' ORDER BY recipient COLLATE "C", category COLLATE "C", created, id'

        async def run() -> list[Any]:
            rows: list[Any] = await self._pool.fetch(sql, *params, timeout=COMMAND_TIMEOUT)
            return rows

        return [_optout(r) for r in await self._guard(run)]

    async def import_optouts(self, rows: Sequence[OptOut]) -> int:
        checked = [check_optout(r) for r in rows]

        async def run() -> int:
            added = 0
            async with self._conn() as conn, conn.transaction():
                for row in checked:
                    status = await conn.execute(
                        _INSERT_OPTOUT, *_optout_params(row), timeout=COMMAND_TIMEOUT
                    )
                    added += _rowcount(status)
            return added

        return await self._guard(run)

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

        async def run() -> None:
            await self._pool.execute(_INSERT_AUTH, *_auth_params(row), timeout=COMMAND_TIMEOUT)

        await self._guard(run)
        return row

    async def revoke(self, recipient: str, scope: str, *, at: datetime | None = None) -> int:
        key, when = canonical(recipient), check_time(at or now(), "at")

        async def run() -> str:
            status: str = await self._pool.execute(
                "UPDATE authorizations SET revoked = $1"
                " WHERE recipient = $2 AND scope = $3 AND revoked IS NULL AND granted <= $1",
                when,
                key,
                scope,
                timeout=COMMAND_TIMEOUT,
            )
            return status

        return _rowcount(await self._guard(run))

    async def list_authorizations(self, recipient: str | None = None) -> list[Authorization]:
        sql = (
            "SELECT recipient, scope, conditions, granted, expires, revoked, form_ref"
            " FROM authorizations"
        )
        params: list[str] = []
        if recipient is not None:
            sql += " WHERE recipient = $1"
            params.append(canonical(recipient))
        sql += ' ORDER BY recipient COLLATE "C", scope COLLATE "C", granted, id'

        async def run() -> list[Any]:
            rows: list[Any] = await self._pool.fetch(sql, *params, timeout=COMMAND_TIMEOUT)
            return rows

        return [_auth(r) for r in await self._guard(run)]

    async def import_authorizations(self, rows: Sequence[Authorization]) -> int:
        checked = [check_authorization(r) for r in rows]

        async def run() -> int:
            async with self._conn() as conn, conn.transaction():
                await conn.executemany(
                    _INSERT_AUTH, [_auth_params(r) for r in checked], timeout=COMMAND_TIMEOUT
                )
            return len(checked)

        return await self._guard(run)

    # --- lifecycle -------------------------------------------------------------------------------

    async def ping(self) -> None:
        async def run() -> None:
            await self._pool.fetchval("SELECT 1", timeout=COMMAND_TIMEOUT)

        await self._guard(run)

    async def close(self) -> None:
        await self._pool.close()


def _describe(exc: BaseException) -> str:
    """The error class and PostgreSQL's message; never `detail`, which may quote row values."""
    if isinstance(exc, asyncpg.PostgresError):
        sqlstate = getattr(exc, "sqlstate", "") or ""
        message = getattr(exc, "message", "") or type(exc).__name__
        return f"{message} (SQLSTATE {sqlstate})"
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
