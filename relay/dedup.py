"""Which recipients already got a message: claimed before sending, confirmed or released after.

A message is identified by a keyed fingerprint of its envelope sender and exact bytes
as received (a client's retry resends the same bytes). Each recipient of it moves
through claim -> send -> confirm (delivered) or release (not sent, may be retried):

- `claim` atomically takes the recipients nobody has: two identical messages arriving
  at once cannot both send, and a full or locked state store is found before anything
  goes upstream.
- `confirm` after the upstream accepted. If that write fails, the claim already on disk
  keeps the recipient taken, and the confirmation stays in memory and is retried, so a
  retry of the same message is never sent again.
- `release` after a refusal or deferral, so the client's retry can send it.

A claim nobody confirmed or released within `lease` seconds was left by a crash in the
middle of a send; it is taken over (the outcome was unknown, so it is reported stale).
So is one whose owner process is proven dead (`relay.claimowner`: a worker killed and
replaced), at once rather than after the lease.

`DedupStore` is the interface the flow uses; `SqliteDedup` keeps the records in one
SQLite file (WAL, shared by the processes of one host). Each statement first runs where
it is called (the event loop), on a connection that never waits for a lock and never
checkpoints: a WAL commit with synchronous=NORMAL is a write to the page cache, far
cheaper than a trip to a thread. When another connection (another worker) holds the
write lock, the work goes to one dedicated thread that waits for it (`busy_timeout`);
that thread also runs the checkpoints, whose fsyncs would hold the loop. So a busy or
slow disk still never holds the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, TypeVar

from relay.address import AddressError, canonical
from relay.claimowner import abandoned

T = TypeVar("T")

DEFAULT_TTL = 7 * 86400.0
DEFAULT_LEASE = 900.0
DEFAULT_BUSY_TIMEOUT = 2.0
# Commits on the event loop's connection between checkpoints run on the thread. Each
# commit adds a few WAL pages; SQLite's own default is a checkpoint per 1000 pages.
CHECKPOINT_EVERY = 200

SENDING = "sending"
DELIVERED = "delivered"


class DedupError(Exception):
    """The store could not be read or written (locked, disk full, closed). Transient.

    The message names the store and the SQLite error class, never an address.
    """


@dataclass(frozen=True, slots=True)
class Claim:
    """What `claim` found for each recipient of one message (addresses as given)."""

    fingerprint: str
    owner: str
    mine: tuple[str, ...] = ()  # taken by this transaction: send these
    done: tuple[str, ...] = ()  # already delivered: do not send again
    busy: tuple[str, ...] = ()  # another transaction is sending them right now
    stale: tuple[str, ...] = ()  # part of `mine`: a crashed send left them claimed


def message_fingerprint(key: bytes, mail_from: str, raw: bytes) -> str:
    """Keyed fingerprint of sender and exact bytes; every store (and replica) uses this one."""
    digest = hashlib.sha256(mail_from.encode("utf-8", "surrogateescape") + b"\0" + raw)
    return hmac.new(key, digest.digest(), hashlib.sha256).hexdigest()


def recipient_hash(key: bytes, recipient: str) -> str:
    """Keyed hash of the canonical recipient, so no store holds an address in clear."""
    try:
        value = canonical(recipient)
    except AddressError:
        value = recipient
    return hmac.new(key, value.encode("utf-8", "surrogateescape"), hashlib.sha256).hexdigest()


class DedupStore(Protocol):
    """The retry store as the flow sees it (SQLite here; PostgreSQL for several replicas)."""

    def fingerprint(self, mail_from: str, raw: bytes) -> str: ...

    async def claim(self, fingerprint: str, recipients: Sequence[str], owner: str) -> Claim: ...

    async def confirm(self, claim: Claim, recipients: Sequence[str]) -> None: ...

    async def release(self, claim: Claim, recipients: Sequence[str]) -> None: ...

    def close(self) -> None: ...


_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS recipients ("
    " fingerprint TEXT NOT NULL, recipient TEXT NOT NULL,"
    " state TEXT NOT NULL CHECK (state IN ('sending', 'delivered')),"
    " owner TEXT NOT NULL, at REAL NOT NULL,"
    " PRIMARY KEY (fingerprint, recipient))"
)


class SqliteDedup:
    def __init__(
        self,
        path: Path,
        key: bytes,
        ttl: float = DEFAULT_TTL,
        *,
        lease: float = DEFAULT_LEASE,
        busy_timeout: float = DEFAULT_BUSY_TIMEOUT,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """Open (creating) the store. sqlite3.DatabaseError or OSError if it is unusable."""
        self.path, self.key, self.ttl, self.lease = path, key, ttl, lease
        self.busy_timeout = busy_timeout
        self._clock = clock
        # Confirmations the database refused: (fingerprint, recipient hash) -> time.
        # Consulted by every claim, so this process never sends them again.
        self._unwritten: dict[tuple[str, str], float] = {}
        self._unwritten_lock = threading.Lock()
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="dedup")
        self._closed = False
        self._commits = 0  # on the loop's connection since the last checkpoint
        self._checkpointing = False
        try:
            self._db = self._pool.submit(self._open).result()
            self._fast = self._connect_fast()
        except BaseException:
            self._pool.shutdown(wait=False)
            raise

    def _open(self) -> sqlite3.Connection:
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        # Owner-only before SQLite creates it (the -wal and -shm files copy its mode).
        os.close(os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600))
        db = sqlite3.connect(self.path, isolation_level=None, timeout=self.busy_timeout)
        try:
            db.execute(f"PRAGMA busy_timeout={int(self.busy_timeout * 1000)}")
            db.execute("PRAGMA journal_mode=WAL")
            # WAL + NORMAL survives a process crash; a power loss may forget the last few
            # records, which at worst allows one duplicate copy on a client's retry.
            db.execute("PRAGMA synchronous=NORMAL")
            db.execute(_SCHEMA)
            legacy = db.execute(
                "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'delivered'"
            ).fetchone()
            if legacy:
                # The store before claims existed held delivered recipients only.
                db.execute("BEGIN IMMEDIATE")
                db.execute(
                    "INSERT OR IGNORE INTO recipients SELECT fingerprint, recipient,"
                    " 'delivered', '', at FROM delivered"
                )
                db.execute("DROP TABLE delivered")
                db.execute("COMMIT")
            db.execute("DELETE FROM recipients WHERE at < ?", (self._clock() - self.ttl,))
        except BaseException:
            db.close()
            raise
        return db

    def _connect_fast(self) -> sqlite3.Connection:
        """The connection used where a call is made: no lock wait, no checkpoints."""
        # check_same_thread: closed by the thread in close(); used by one thread before.
        db = sqlite3.connect(self.path, isolation_level=None, timeout=0, check_same_thread=False)
        try:
            db.execute("PRAGMA busy_timeout=0")
            db.execute("PRAGMA synchronous=NORMAL")
            db.execute("PRAGMA wal_autocheckpoint=0")
        except BaseException:
            db.close()
            raise
        return db

    # --- keys --------------------------------------------------------------------------

    def fingerprint(self, mail_from: str, raw: bytes) -> str:
        return message_fingerprint(self.key, mail_from, raw)

    def _rcpt(self, recipient: str) -> str:
        return recipient_hash(self.key, recipient)

    # --- claim -> confirm | release ------------------------------------------------------

    async def claim(self, fingerprint: str, recipients: Sequence[str], owner: str) -> Claim:
        hashes = {self._rcpt(r): r for r in recipients}
        with self._unwritten_lock:
            known = {h for h in hashes if (fingerprint, h) in self._unwritten}

        def run(db: sqlite3.Connection) -> Claim:
            self._flush_unwritten(db)
            now = self._clock()
            mine: list[str] = []
            done: list[str] = []
            busy: list[str] = []
            stale: list[str] = []
            db.execute("BEGIN IMMEDIATE")
            try:
                for digest, rcpt in hashes.items():
                    if digest in known:
                        done.append(rcpt)
                        continue
                    row = db.execute(
                        "SELECT state, owner, at FROM recipients"
                        " WHERE fingerprint = ? AND recipient = ?",
                        (fingerprint, digest),
                    ).fetchone()
                    if row is not None and row[2] >= now - self.ttl:
                        state, holder, at = row
                        if state == DELIVERED:
                            done.append(rcpt)
                            continue
                        if holder != owner and at >= now - self.lease and not abandoned(holder):
                            busy.append(rcpt)
                            continue
                        stale.append(rcpt)
                    db.execute(
                        "INSERT OR REPLACE INTO recipients VALUES (?, ?, ?, ?, ?)",
                        (fingerprint, digest, SENDING, owner, now),
                    )
                    mine.append(rcpt)
                db.execute("COMMIT")
            except BaseException:
                _rollback(db)
                raise
            return Claim(fingerprint, owner, tuple(mine), tuple(done), tuple(busy), tuple(stale))

        if not hashes:
            return Claim(fingerprint, owner)
        if len(known) == len(hashes):
            # Delivered, and this process knows it even if the database does not yet.
            return Claim(fingerprint, owner, done=tuple(hashes.values()))
        return await self._call(run)

    async def confirm(self, claim: Claim, recipients: Sequence[str]) -> None:
        """Mark delivered. On DedupError the confirmation is kept and retried later."""
        digests = [self._rcpt(r) for r in recipients]
        if not digests:
            return
        now = self._clock()
        with self._unwritten_lock:
            for d in digests:
                self._unwritten[(claim.fingerprint, d)] = now

        def run(db: sqlite3.Connection) -> None:
            self._flush_unwritten(db)

        await self._call(run)

    async def release(self, claim: Claim, recipients: Sequence[str]) -> None:
        """Give back claims that were not delivered, so a retry may send them."""
        rows = [(claim.fingerprint, self._rcpt(r), claim.owner) for r in recipients]
        if not rows:
            return

        def run(db: sqlite3.Connection) -> None:
            db.execute("BEGIN IMMEDIATE")
            try:
                db.executemany(
                    "DELETE FROM recipients WHERE fingerprint = ? AND recipient = ?"
                    " AND owner = ? AND state = 'sending'",
                    rows,
                )
                db.execute("COMMIT")
            except BaseException:
                _rollback(db)
                raise

        await self._call(run)

    def unwritten(self) -> int:
        """Confirmations held in memory because the database refused them."""
        with self._unwritten_lock:
            return len(self._unwritten)

    def _flush_unwritten(self, db: sqlite3.Connection) -> None:
        with self._unwritten_lock:
            pending = list(self._unwritten.items())
        if not pending:
            return
        db.execute("BEGIN IMMEDIATE")
        try:
            db.executemany(
                "INSERT OR REPLACE INTO recipients VALUES (?, ?, 'delivered', '', ?)",
                [(fp, digest, at) for (fp, digest), at in pending],
            )
            db.execute("COMMIT")
        except BaseException:
            _rollback(db)
            raise
        with self._unwritten_lock:
            for item, at in pending:
                if self._unwritten.get(item) == at:
                    del self._unwritten[item]

    # --- the one thread ------------------------------------------------------------------

    async def _call(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        if self._closed:
            raise DedupError(f"dedup store {self.path} is closed")
        if self._checkpointing:
            # Queued behind the checkpoint: it catches up with the whole WAL (so SQLite can
            # start the file over) only if this process writes nothing while it runs.
            return await self._on_thread(fn)
        try:
            result = fn(self._fast)
        except sqlite3.Error as exc:
            if not _busy(exc):
                raise DedupError(f"dedup store {self.path}: {_describe(exc)}") from exc
            # Another connection holds the write lock: wait for it on the thread, not here.
        else:
            self._commits += 1
            if self._commits >= CHECKPOINT_EVERY:
                self._commits = 0
                self._checkpointing = True
                self._pool.submit(self._checkpoint)
            return result
        return await self._on_thread(fn)

    def _checkpoint(self) -> None:
        # PASSIVE: copies what no reader still needs and never waits; the WAL file is
        # reused from its start once a checkpoint has caught up with it.
        try:
            with contextlib.suppress(sqlite3.Error):
                self._db.execute("PRAGMA wal_checkpoint(PASSIVE)")
        finally:
            self._checkpointing = False

    async def _on_thread(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        def locked() -> T:
            try:
                return fn(self._db)
            except sqlite3.Error as exc:
                raise DedupError(f"dedup store {self.path}: {_describe(exc)}") from exc

        loop = asyncio.get_running_loop()
        future = loop.run_in_executor(self._pool, locked)
        # The lock wait is bounded by busy_timeout inside SQLite; this bounds a disk that
        # stops answering altogether. The thread may still finish the work later.
        try:
            async with asyncio.timeout(self.busy_timeout + 5.0):
                return await future
        except TimeoutError as exc:
            raise DedupError(f"dedup store {self.path}: no answer from the disk") from exc

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True

        def shut() -> None:
            self._fast.close()
            with contextlib.suppress(sqlite3.Error):
                self._flush_unwritten(self._db)
                self._db.execute("PRAGMA wal_checkpoint(PASSIVE)")
            self._db.close()

        self._pool.submit(shut)
        self._pool.shutdown(wait=True)


def _busy(exc: sqlite3.Error) -> bool:
    """SQLITE_BUSY or SQLITE_LOCKED (any extended code): a lock another connection holds."""
    code = getattr(exc, "sqlite_errorcode", None)
    if isinstance(code, int):
        return code & 0xFF in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)
    return isinstance(exc, sqlite3.OperationalError) and "locked" in str(exc)


def _rollback(db: sqlite3.Connection) -> None:
    with contextlib.suppress(sqlite3.Error):
        db.execute("ROLLBACK")


def _describe(exc: sqlite3.Error) -> str:
    # SQLite's messages ("database is locked", "database or disk is full") name no data.
    return str(exc) or type(exc).__name__


Dedup = SqliteDedup
"""The default store."""
