"""Spool entries on disk: an AES-GCM payload and a small plain metadata file, each fsynced.

`<id>.msg` holds nonce + AES-GCM(envelope JSON + "\\n" + message), with the id as
associated data so a payload cannot be swapped to another entry. `<id>.json` holds what
scheduling needs and no PHI (times, attempts, counts, the last status code). Every write
is tmp file (named for its writer) -> fsync -> rename -> fsync of the directory, metadata
before payload, so a scanner never lists an entry that is still being written and after a
crash an entry is either complete or absent (a lone metadata file is ignored; a payload
without metadata, from an older release, is picked up with fresh metadata).

Whoever sends, changes or deletes an entry holds an exclusive `flock` on its payload
(`lock`): worker processes sharing a spool, and the queue CLI, never act on one entry at
once, and a process killed with the lock loses it with its file descriptors.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import time
import uuid
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

NONCE = 12


class SpoolError(Exception):
    """The spool cannot be written or read; the text names a path, never message data."""


@dataclass(frozen=True, slots=True)
class Meta:
    id: str
    decision_id: str
    created: float
    next_at: float
    attempts: int = 0
    recipients: int = 0
    size: int = 0
    last_status: str = ""
    dsn: bool = False  # a delivery status notification the relay made (relay/spool/dsn.py)


@dataclass(frozen=True, slots=True)
class Entry:
    sender: str
    recipients: tuple[str, ...]
    mail_options: tuple[str, ...]
    rcpt_options: dict[str, tuple[str, ...]] = field(default_factory=dict)
    data: bytes = b""


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write(path: Path, data: bytes) -> None:
    # A name of this writer's own: processes sharing the folder may write the same
    # entry's metadata at once, and a shared name lets one rename the other's file.
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        tmp.rename(path)
    except OSError:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


class Spool:
    def __init__(self, folder: Path, key: bytes) -> None:
        self.folder = folder
        self._aead = AESGCM(key)
        try:
            folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        except OSError as exc:
            raise SpoolError(f"spool directory {folder}: {exc.strerror or exc}") from exc

    # --- writing ---------------------------------------------------------------------

    def put(
        self,
        entry: Entry,
        decision_id: str,
        next_at: float,
        previous: Meta | None = None,
        *,
        dsn: bool = False,
    ) -> Meta:
        """Durably store `entry`; returns once payload, metadata and directory are fsynced.

        `previous`: the entry this one continues (its age and attempts carry over);
        `dsn`: the entry is a bounce the relay made for the message of `decision_id`."""
        entry_id = uuid.uuid4().hex
        head = {
            "sender": entry.sender,
            "recipients": list(entry.recipients),
            "mail_options": list(entry.mail_options),
            "rcpt_options": {k: list(v) for k, v in entry.rcpt_options.items()},
        }
        plain = json.dumps(head).encode("utf-8", "surrogateescape") + b"\n" + entry.data
        nonce = os.urandom(NONCE)
        sealed = nonce + self._aead.encrypt(nonce, plain, entry_id.encode())
        created = previous.created if previous else time.time()
        attempts = previous.attempts + 1 if previous else 0
        meta = Meta(
            entry_id,
            decision_id,
            created,
            next_at,
            attempts,
            len(entry.recipients),
            len(entry.data),
            dsn=dsn or (previous.dsn if previous else False),
        )
        try:
            # Metadata first: scanners list payloads, so an entry becomes visible only
            # once it is complete (a lone metadata file after a crash is ignored).
            _write(self.folder / f"{entry_id}.json", json.dumps(asdict(meta)).encode())
            _write(self.folder / f"{entry_id}.msg", sealed)
            _fsync_dir(self.folder)
        except OSError as exc:
            self._remove(entry_id)
            raise SpoolError(f"spool directory {self.folder}: {exc.strerror or exc}") from exc
        return meta

    def update(self, meta: Meta) -> None:
        try:
            _write(self.folder / f"{meta.id}.json", json.dumps(asdict(meta)).encode())
            _fsync_dir(self.folder)
        except OSError as exc:
            raise SpoolError(f"spool directory {self.folder}: {exc.strerror or exc}") from exc

    def delete(self, entry_id: str) -> bool:
        """Remove an entry (payload first: lone metadata is ignored). True if it was there."""
        if not _valid_id(entry_id):
            return False
        found = (self.folder / f"{entry_id}.msg").exists()
        self._remove(entry_id)
        try:
            _fsync_dir(self.folder)
        except OSError as exc:
            raise SpoolError(f"spool directory {self.folder}: {exc.strerror or exc}") from exc
        return found

    def _remove(self, entry_id: str) -> None:
        for suffix in (".msg", ".json"):
            with contextlib.suppress(FileNotFoundError):
                (self.folder / f"{entry_id}{suffix}").unlink()

    # --- locking ---------------------------------------------------------------------

    def lock(self, entry_id: str) -> EntryLock | None:
        """The entry's lock, or None when another process holds it or the entry is gone."""
        if not _valid_id(entry_id):
            return None
        path = self.folder / f"{entry_id}.msg"
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError:
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            # Deleted (or replaced) between our open and our lock: not the entry any more.
            if os.fstat(fd).st_ino != os.stat(path).st_ino:
                raise FileNotFoundError(path)
        except OSError:
            os.close(fd)
            return None
        return EntryLock(fd)

    # --- reading ---------------------------------------------------------------------

    def metas(self) -> list[Meta]:
        """Every complete entry, oldest first (a payload without metadata gets fresh metadata)."""
        out: list[Meta] = []
        for payload in self.folder.glob("*.msg"):
            entry_id = payload.stem
            if not _valid_id(entry_id):
                continue
            out.append(self.meta(entry_id) or self._recovered(payload))
        return sorted(out, key=lambda m: m.created)

    def meta_of(self, entry_id: str) -> Meta | None:
        """The entry's metadata (fresh for a payload without any); None if it is gone."""
        payload = self.folder / f"{entry_id}.msg"
        if not payload.exists():
            return None
        return self.meta(entry_id) or self._recovered(payload)

    def meta(self, entry_id: str) -> Meta | None:
        try:
            data = json.loads((self.folder / f"{entry_id}.json").read_bytes())
            return Meta(**data)
        except (OSError, ValueError, TypeError):
            return None

    def _recovered(self, payload: Path) -> Meta:
        try:
            created = payload.stat().st_mtime
        except OSError:
            created = time.time()
        return Meta(payload.stem, "", created, 0.0)

    def load(self, entry_id: str) -> Entry:
        try:
            sealed = (self.folder / f"{entry_id}.msg").read_bytes()
        except OSError as exc:
            raise SpoolError(f"spool entry {entry_id}: {exc.strerror or exc}") from exc
        try:
            plain = self._aead.decrypt(sealed[:NONCE], sealed[NONCE:], entry_id.encode())
        except (InvalidTag, ValueError) as exc:
            raise SpoolError(
                f"spool entry {entry_id}: cannot be decrypted with keys/spool.key "
                "(another key, or the file was changed)"
            ) from exc
        head_text, _, data = plain.partition(b"\n")
        head = json.loads(head_text.decode("utf-8", "surrogateescape"))
        return Entry(
            head["sender"],
            tuple(head["recipients"]),
            tuple(head["mail_options"]),
            {k: tuple(v) for k, v in head.get("rcpt_options", {}).items()},
            data,
        )

    def stats(self, now: float | None = None) -> tuple[int, float]:
        """(entries, age in seconds of the oldest)."""
        metas = self.metas()
        if not metas:
            return 0, 0.0
        return len(metas), max(0.0, (now or time.time()) - metas[0].created)


class EntryLock:
    """An entry's flock, held until `close` (or the process ends)."""

    def __init__(self, fd: int) -> None:
        self._fd: int | None = fd

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor releases the flock
            self._fd = None


def _valid_id(entry_id: str) -> bool:
    return len(entry_id) == 32 and all(c in "0123456789abcdef" for c in entry_id)


def retried(meta: Meta, next_at: float, status: str) -> Meta:
    return replace(meta, attempts=meta.attempts + 1, next_at=next_at, last_status=status)
