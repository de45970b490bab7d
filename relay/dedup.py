"""Remember which recipients already received a message, so a client's retry sends no second copy.

A message is identified by a fingerprint of its envelope sender and exact bytes as
received (a retry resends the same bytes). Recipients are stored as keyed hashes;
entries expire after `ttl` seconds (longer than any client's retry schedule).
SQLite in WAL mode so several processes on one host share it.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import sqlite3
import time
from collections.abc import Iterable
from pathlib import Path

from relay.address import AddressError, canonical


class Dedup:
    def __init__(self, path: Path, key: bytes, ttl: float = 7 * 86400) -> None:
        self.path, self.key, self.ttl = path, key, ttl
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        # Owner-only before SQLite creates it (the -wal and -shm files copy its mode).
        os.close(os.open(path, os.O_RDWR | os.O_CREAT, 0o600))
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA busy_timeout=5000")
        # WAL + NORMAL survives a process crash; a power loss may forget the last few
        # records, which at worst allows one duplicate copy on a client's retry.
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS delivered ("
            " fingerprint TEXT NOT NULL, recipient TEXT NOT NULL, at REAL NOT NULL,"
            " PRIMARY KEY (fingerprint, recipient))"
        )
        self._db.execute("DELETE FROM delivered WHERE at < ?", (time.time() - ttl,))

    def fingerprint(self, mail_from: str, raw: bytes) -> str:
        digest = hashlib.sha256(mail_from.encode("utf-8", "surrogateescape") + b"\0" + raw)
        return hmac.new(self.key, digest.digest(), hashlib.sha256).hexdigest()

    def _rcpt(self, recipient: str) -> str:
        try:
            value = canonical(recipient)
        except AddressError:
            value = recipient
        return hmac.new(
            self.key, value.encode("utf-8", "surrogateescape"), hashlib.sha256
        ).hexdigest()

    async def already(self, fingerprint: str, recipients: Iterable[str]) -> set[str]:
        rcpts = list(recipients)
        hashes = {self._rcpt(r): r for r in rcpts}

        def query() -> set[str]:
            marks = ",".join("?" * len(hashes))
            rows = self._db.execute(
                f"SELECT recipient FROM delivered WHERE fingerprint = ? AND at >= ? "  # noqa: S608
                f"AND recipient IN ({marks})",
                (fingerprint, time.time() - self.ttl, *hashes),
            ).fetchall()
            return {hashes[r[0]] for r in rows}

        if not hashes:
            return set()
        # Inline: a keyed look-up in WAL mode takes microseconds, and a thread hand-off
        # per message cost a third of the relay's throughput (bench/load.py).
        return query()

    async def record(self, fingerprint: str, recipients: Iterable[str]) -> None:
        now = time.time()
        rows = [(fingerprint, self._rcpt(r), now) for r in recipients]

        def insert() -> None:
            self._db.executemany("INSERT OR REPLACE INTO delivered VALUES (?, ?, ?)", rows)

        insert()

    def close(self) -> None:
        self._db.close()
