"""Upstream connections kept open and reused, and the envelope a transaction leases from them.

A `Pool` belongs to one upstream and one set of credentials (`PoolKey`). Each connection
has its TLS verified once, when it is opened; between transactions it gets `RSET`, and
it waits idle at most `idle_timeout` seconds, at most `size` of them at once. One idle
longer than `check_after` is asked `NOOP` before it is used again. At most
`max_connections` are open at once (leased, idle or being opened): a transaction that
finds none free waits for one, in order, at most `wait_timeout` seconds, then hears 451.

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
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol, TypeVar

import structlog

from relay import esmtp
from relay.delivery import Connection, Connector, UpstreamError
from relay.model import Reply, TlsInfo

log = structlog.get_logger("relay.pool")
T = TypeVar("T")
_LOST = Reply(451, "4.4.2", "Connection to the upstream was lost; try again later")
_BUSY = Reply(
    451,
    "4.4.5",
    "Every upstream connection is busy (upstream.pool_max_connections); try again later",
)


@dataclass(frozen=True, slots=True)
class PoolLimits:
    size: int = 20  # idle connections kept; 0: a new connection for every transaction
    idle_timeout: float = 30.0
    check_after: float = 5.0
    max_connections: int = 20  # open at once: leased, idle or being opened
    wait_timeout: float = 30.0  # for a free connection when all are in use


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
class _Waiter:
    future: asyncio.Future[Connection | None]
    fresh: bool  # wants a new connection (a retry, a readiness probe): only a slot will do


@dataclass
class PoolStats:
    opened: int = 0
    reused: int = 0
    retried: int = 0
    expired: int = 0
    waited: int = 0  # leases that found every connection in use
    busy: int = 0  # of those, the ones that gave up after wait_timeout
    peak: int = 0  # most connections open at once


class PoolObserver(Protocol):
    """Where a pool reports what it does (relay.metrics.Metrics: prometheus counters)."""

    def pool_event(self, event: str) -> None:
        """`event`: a PoolStats field name (opened, reused, retried, expired, waited, busy)."""

    def pool_open(self, delta: int) -> None:
        """Connections open (leased, idle or being opened) changed by `delta`."""


class Pool:
    """Idle connections to one upstream, most recently used first."""

    def __init__(
        self, connector: Connector, limits: PoolLimits, observer: PoolObserver | None = None
    ) -> None:
        self.connector = connector
        self.name = connector.name
        self.limits = limits
        self.stats = PoolStats()
        self.observer = observer
        self._idle: deque[_Idle] = deque()
        self._tasks: set[asyncio.Task[None]] = set()
        # Connections open or being opened; a slot is held from before connect until close.
        self._slots = 0
        # Leases waiting for a slot, first come first served. A waiter's result is a
        # connection handed over after its RSET, or None: a slot is now yours, open one.
        self._waiters: deque[_Waiter] = deque()
        self.closed = False

    def count(self, event: str) -> None:
        setattr(self.stats, event, getattr(self.stats, event) + 1)
        if self.observer is not None:
            self.observer.pool_event(event)

    def _slot_taken(self) -> None:
        self._slots += 1
        self.stats.peak = max(self.stats.peak, self._slots)
        if self.observer is not None:
            self.observer.pool_open(1)

    @property
    def idle(self) -> int:
        return len(self._idle)

    @property
    def open_connections(self) -> int:
        return self._slots

    def begin(self) -> UpstreamEnvelope:
        return UpstreamEnvelope(self)

    async def open(self) -> Connection:
        """A new connection (TLS verified, EHLO and AUTH done) in a slot of its own, waiting
        for a slot if all are taken; raises UpstreamError."""
        handed = await self._slot(fresh=True)
        assert handed is None
        return await self._connect()

    async def _connect(self) -> Connection:
        """Open a connection in a slot already held; the slot is given up on failure."""
        try:
            conn = await self.connector.connect()
        except BaseException:
            self._free_slot()
            raise
        self.count("opened")
        return conn

    async def acquire(self) -> tuple[Connection, bool]:
        """An idle connection that still answers, else a new one (waiting for a slot when
        `max_connections` are open); True if it was reused."""
        while True:
            while self._idle:
                entry = self._idle.pop()
                if entry.expiry is not None:
                    entry.expiry.cancel()
                conn = entry.conn
                if not conn.is_open:  # the upstream closed it while idle; we saw the FIN
                    self._close(conn)
                    continue
                if time.monotonic() - entry.since >= self.limits.check_after:
                    try:
                        await conn.noop()
                    except UpstreamError:
                        self._close(conn)
                        continue
                self.count("reused")
                return conn, True
            handed = await self._slot(fresh=False)
            if handed is None:
                return await self._connect(), False
            if handed.is_open:
                self.count("reused")
                return handed, True
            self._close(handed)  # died between its RSET and now: its slot is free again

    async def _slot(self, *, fresh: bool) -> Connection | None:
        """Hold a slot for a new connection (None), or, unless `fresh`, take a connection
        another transaction hands over; waits at most `wait_timeout`, then 451."""
        if self._slots < self.limits.max_connections and not self._waiters:
            self._slot_taken()
            return None
        self.count("waited")
        waiter = _Waiter(asyncio.get_running_loop().create_future(), fresh)
        self._waiters.append(waiter)
        try:
            async with asyncio.timeout(self.limits.wait_timeout):
                return await waiter.future
        except BaseException as exc:
            with contextlib.suppress(ValueError):
                self._waiters.remove(waiter)
            if waiter.future.done() and not waiter.future.cancelled():
                # Handed a slot or a connection just as the wait ended: pass it on.
                self._pass_on(waiter.future.result())
            if not isinstance(exc, TimeoutError):
                raise
        self.count("busy")
        log.warning(
            "every upstream connection is busy; a transaction gave up waiting",
            max_connections=self.limits.max_connections,
            waited_seconds=self.limits.wait_timeout,
        )
        raise UpstreamError(_BUSY, "busy")

    def _hand_over(self, conn: Connection) -> bool:
        """Give a clean connection to the first waiter that may reuse one."""
        for waiter in self._waiters:
            if not waiter.fresh and not waiter.future.done():
                self._waiters.remove(waiter)
                waiter.future.set_result(conn)
                return True
        return False

    def _pass_on(self, conn: Connection | None) -> None:
        """A slot (None) or a connection nobody took: to the next waiter, else freed/idle."""
        if conn is None:
            self._free_slot()
        else:
            self._keep(conn)

    def _free_slot(self) -> None:
        """A connection closed (or never opened): its slot goes to the next waiter."""
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.future.done():
                waiter.future.set_result(None)  # the slot moves to the waiter: the count stays
                return
        self._slots -= 1
        if self.observer is not None:
            self.observer.pool_open(-1)

    def _close(self, conn: Connection) -> None:
        self._free_slot()
        self._spawn(conn.close())

    def release(self, conn: Connection, *, clean: bool) -> None:
        """Give a connection back after a transaction. `clean`: the upstream answered every
        command (the last DATA or RCPT reply came back), so after RSET it can be reused."""
        if not clean or self.closed or self.limits.size == 0 or not conn.is_open:
            self._close(conn)
            return
        # RSET runs after the client has its reply, not before.
        self._spawn(self._reset_and_keep(conn))

    async def _reset_and_keep(self, conn: Connection) -> None:
        try:
            await conn.rset()
        except UpstreamError:
            self._close(conn)
            return
        self._keep(conn)

    def _keep(self, conn: Connection) -> None:
        """A clean connection after its RSET: to a waiting lease, else idle (or closed)."""
        if self.closed or not conn.is_open:
            self._close(conn)
            return
        if self._hand_over(conn):
            return
        if self._waiters:
            # Only leases that need a new connection wait: this one's slot goes to them.
            self._close(conn)
            return
        while len(self._idle) >= self.limits.size:
            oldest = self._idle.popleft()
            if oldest.expiry is not None:
                oldest.expiry.cancel()
            self._close(oldest.conn)
        entry = _Idle(conn, time.monotonic())
        entry.expiry = asyncio.get_running_loop().call_later(
            self.limits.idle_timeout, self._expire, entry
        )
        self._idle.append(entry)

    def _expire(self, entry: _Idle) -> None:
        with contextlib.suppress(ValueError):
            self._idle.remove(entry)
            self.count("expired")
            self._close(entry.conn)

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
        expired certificate or a revoked login shows only on a new connection. With every
        slot in use it does not queue behind the mail (a probe that waits fails): it checks
        one connection beyond `max_connections` and closes it."""
        counted = self._slots < self.limits.max_connections and not self._waiters
        if counted:
            self._slot_taken()
            conn = await self._connect()
        else:
            conn = await self.connector.connect()
        try:
            await conn.noop()
        except UpstreamError:
            if counted:
                self._close(conn)
            else:
                self._spawn(conn.close())
            raise
        if counted:
            self.release(conn, clean=True)
        else:
            self._spawn(conn.close())

    async def close(self) -> None:
        """Close every idle connection and those being returned; later releases close."""
        self.closed = True
        while self._idle:
            entry = self._idle.pop()
            if entry.expiry is not None:
                entry.expiry.cancel()
            self._close(entry.conn)
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
    rcpt_options: dict[str, tuple[str, ...]] = field(default_factory=dict)
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
        self.rcpt_options = {}
        conn, self.reused = await self.pool.acquire()
        if self.reused and esmtp.requires_tls(self.options) and "requiretls" not in conn.extensions:
            # Opened before the upstream offered REQUIRETLS: only a connection whose own
            # EHLO promised it may carry this message (the connection refuses otherwise).
            self.pool.release(conn, clean=True)
            conn, self.reused = await self.pool.open(), False
        self._use(conn)
        await self._step(lambda c: c.mail(sender, self.options), replay=False)

    async def rcpt(self, recipient: str, options: Sequence[str] = ()) -> Reply:
        """The upstream's answer for one recipient (`options`: its NOTIFY, ORCPT); raises
        UpstreamError if the connection failed (the envelope is then closed)."""
        given = tuple(options)
        reply = await self._step(lambda c: c.rcpt(recipient, given))
        if reply.success:
            self.accepted.append(recipient)
            self.rcpt_options[recipient] = given
        return reply

    async def data(self, message: bytes, prefix: bytes = b"") -> Reply:
        """Send the message (after `prefix`, whole header lines such as our Received: no
        copy of the two together is made); the envelope is finished afterwards."""
        reply = await self._step(lambda c: c.data(message, prefix))
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
        self.pool.count("retried")
        log.info("pooled upstream connection was closed; retrying on a new one")
        conn = await self.pool.open()
        self._use(conn)
        try:
            if replay:
                await conn.mail(self.sender, self.options)
            for rcpt in self.accepted if replay else ():
                answer = await conn.rcpt(rcpt, self.rcpt_options.get(rcpt, ()))
                if not answer.success:
                    # The recipient already has our 250; without it the client must retry.
                    raise UpstreamError(_LOST, "disconnected")
            return await command(conn)
        except UpstreamError:
            self._drop()
            raise
