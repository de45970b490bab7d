"""Upstream connections kept open and reused, and the envelope a transaction leases from them.

A `Pool` belongs to one upstream and one set of credentials (`PoolKey`). Each connection
has its TLS verified once, when it is opened; between transactions it gets `RSET`, and
it waits idle at most `idle_timeout` seconds, at most `size` of them at once. One idle
longer than `check_after` is asked `NOOP` before it is used again.

An `UpstreamEnvelope` is one upstream transaction (MAIL, RCPT..., DATA or abort), and
the only thing a transaction sees of the upstream. A reused connection can have been
closed by the upstream while it sat idle; the envelope then retries once on a new
connection, replaying MAIL and the recipients already accepted, but only while nothing
of the message has been sent: after DATA has begun, a lost connection is reported (the
outcome is unknown) and never retried, so nothing is delivered twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TypeVar

import structlog

from relay.delivery import Connection, Connector, UpstreamError
from relay.model import Reply, TlsInfo

log = structlog.get_logger("relay.pool")
T = TypeVar("T")
_LOST = Reply(451, "4.4.2", "Connection to the upstream was lost; try again later")


@dataclass(frozen=True, slots=True)
class PoolLimits:
    size: int = 20  # idle connections kept; 0: a new connection for every transaction
    idle_timeout: float = 30.0
    check_after: float = 5.0


@dataclass(frozen=True, slots=True)
class PoolKey:
    """What a connection was opened with: reused only for exactly the same upstream and login."""

    host: str
    port: int
    tls: str
    ca_file: str
    local_hostname: str
    username: str
    password_source: str  # where the password comes from (a rotated file is re-read on connect)


@dataclass
class _Idle:
    conn: Connection
    since: float
    expiry: asyncio.TimerHandle | None = None


@dataclass
class PoolStats:
    opened: int = 0
    reused: int = 0
    retried: int = 0
    expired: int = 0


class Pool:
    """Idle connections to one upstream, most recently used first."""

    def __init__(self, connector: Connector, limits: PoolLimits) -> None:
        self.connector = connector
        self.name = connector.name
        self.limits = limits
        self.stats = PoolStats()
        self._idle: deque[_Idle] = deque()
        self._tasks: set[asyncio.Task[None]] = set()
        self.closed = False

    @property
    def idle(self) -> int:
        return len(self._idle)

    def begin(self) -> UpstreamEnvelope:
        return UpstreamEnvelope(self)

    async def open(self) -> Connection:
        """A new connection (TLS verified, EHLO and AUTH done); raises UpstreamError."""
        conn = await self.connector.connect()
        self.stats.opened += 1
        return conn

    async def acquire(self) -> tuple[Connection, bool]:
        """An idle connection that still answers, else a new one; True if it was reused."""
        while self._idle:
            entry = self._idle.pop()
            if entry.expiry is not None:
                entry.expiry.cancel()
            conn = entry.conn
            if not conn.is_open:  # the upstream closed it while idle; we saw the FIN
                await conn.close()
                continue
            if time.monotonic() - entry.since >= self.limits.check_after:
                try:
                    await conn.noop()
                except UpstreamError:
                    await conn.close()
                    continue
            self.stats.reused += 1
            return conn, True
        return await self.open(), False

    def release(self, conn: Connection, *, clean: bool) -> None:
        """Give a connection back after a transaction. `clean`: the upstream answered every
        command (the last DATA or RCPT reply came back), so after RSET it can be reused."""
        if not clean or self.closed or self.limits.size == 0 or not conn.is_open:
            self._spawn(conn.close())
            return
        # RSET runs after the client has its reply, not before.
        self._spawn(self._reset_and_keep(conn))

    async def _reset_and_keep(self, conn: Connection) -> None:
        try:
            await conn.rset()
        except UpstreamError:
            await conn.close()
            return
        if self.closed or not conn.is_open:
            await conn.close()
            return
        while len(self._idle) >= self.limits.size:
            oldest = self._idle.popleft()
            if oldest.expiry is not None:
                oldest.expiry.cancel()
            self._spawn(oldest.conn.close())
        entry = _Idle(conn, time.monotonic())
        entry.expiry = asyncio.get_running_loop().call_later(
            self.limits.idle_timeout, self._expire, entry
        )
        self._idle.append(entry)

    def _expire(self, entry: _Idle) -> None:
        with contextlib.suppress(ValueError):
            self._idle.remove(entry)
            self.stats.expired += 1
            self._spawn(entry.conn.close())

    def _spawn(self, work: Awaitable[None]) -> None:
        async def run() -> None:
            try:
                await work
            except Exception as exc:  # closing is best effort; the type says enough
                log.warning("upstream connection close failed", error=type(exc).__name__)

        task = asyncio.get_running_loop().create_task(run())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def ping(self) -> None:
        """Readiness: a new connection can be opened now (connect, TLS verified, AUTH) and
        answers NOOP; raises UpstreamError otherwise. A pooled one would prove less: an
        expired certificate or a revoked login shows only on a new connection."""
        conn = await self.open()
        try:
            await conn.noop()
        except UpstreamError:
            await conn.close()
            raise
        self.release(conn, clean=True)

    async def close(self) -> None:
        """Close every idle connection and those being returned; later releases close."""
        self.closed = True
        while self._idle:
            entry = self._idle.pop()
            if entry.expiry is not None:
                entry.expiry.cancel()
            self._spawn(entry.conn.close())
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=10)


@dataclass
class UpstreamEnvelope:
    """One upstream transaction. `open` while MAIL is accepted and DATA not yet answered."""

    pool: Pool
    conn: Connection | None = None
    reused: bool = False
    retried: bool = False
    sender: str = ""
    options: list[str] = field(default_factory=list)
    accepted: list[str] = field(default_factory=list)
    tls: TlsInfo = field(default_factory=TlsInfo)

    @property
    def open(self) -> bool:
        return self.conn is not None

    @property
    def name(self) -> str:
        return self.pool.name

    async def mail(self, sender: str, options: list[str]) -> None:
        """MAIL FROM on a leased connection; raises UpstreamError (then not open)."""
        if self.conn is not None:
            await self.abort()
        self.sender, self.options, self.accepted, self.retried = sender, list(options), [], False
        conn, self.reused = await self.pool.acquire()
        self._use(conn)
        await self._step(lambda c: c.mail(sender, self.options), replay=False)

    async def rcpt(self, recipient: str) -> Reply:
        """The upstream's answer for one recipient; raises UpstreamError if the connection
        failed (the envelope is then closed)."""
        reply = await self._step(lambda c: c.rcpt(recipient))
        if reply.success:
            self.accepted.append(recipient)
        return reply

    async def data(self, message: bytes) -> Reply:
        """Send the message; the envelope is finished afterwards, whatever happened."""
        reply = await self._step(lambda c: c.data(message))
        conn, self.conn = self.conn, None
        if conn is not None:
            self.pool.release(conn, clean=True)
        return reply

    async def abort(self) -> None:
        """End the transaction without a message (RSET, and the connection goes back)."""
        conn, self.conn = self.conn, None
        if conn is not None:
            self.pool.release(conn, clean=True)

    def _use(self, conn: Connection) -> None:
        self.conn = conn
        self.tls = conn.tls

    def _drop(self) -> Connection | None:
        conn, self.conn = self.conn, None
        if conn is not None:
            self.pool.release(conn, clean=False)
        return conn

    def _stale(self, conn: Connection, failure: UpstreamError | Reply) -> bool:
        """A reused connection the upstream had closed, found before any of the body left."""
        if not self.reused or self.retried or conn.body_started:
            return False
        if isinstance(failure, UpstreamError):
            return failure.outcome == "disconnected" or (
                failure.reply.code == 421 and not conn.is_open
            )
        return failure.code == 421 and not conn.is_open

    async def _step(
        self, command: Callable[[Connection], Awaitable[T]], *, replay: bool = True
    ) -> T:
        """Run one command; on a stale connection, once more on a new one (after replaying
        MAIL and the accepted recipients when `replay`: the command comes after them)."""
        conn = self.conn
        if conn is None:
            raise UpstreamError(_LOST, "disconnected")
        try:
            result = await command(conn)
        except UpstreamError as err:
            self._drop()
            if not self._stale(conn, err):
                raise
        else:
            if not (isinstance(result, Reply) and self._stale(conn, result)):
                return result
            self._drop()
        return await self._retry(command, replay)

    async def _retry(self, command: Callable[[Connection], Awaitable[T]], replay: bool) -> T:
        self.retried = True
        self.pool.stats.retried += 1
        log.info("pooled upstream connection was closed; retrying on a new one")
        conn = await self.pool.open()
        self._use(conn)
        try:
            if replay:
                await conn.mail(self.sender, self.options)
            for rcpt in self.accepted if replay else ():
                answer = await conn.rcpt(rcpt)
                if not answer.success:
                    # The recipient already has our 250; without it the client must retry.
                    raise UpstreamError(_LOST, "disconnected")
            return await command(conn)
        except UpstreamError:
            self._drop()
            raise
