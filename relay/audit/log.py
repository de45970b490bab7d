"""The audit log writer: one hash-chained JSON line per decision, delivery or event."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import TypeVar

from relay.audit.chain import GENESIS, Record, chain_key, parse, record_hash, sealed
from relay.audit.hashing import recipient_hash
from relay.audit.head import HeadFile, find_head
from relay.audit.redact import redact
from relay.model import Action, Decision, DeliveryResult, Reply

FieldValue = str | int | float | bool | None
_V = TypeVar("_V")

RESERVED = frozenset({"type", "ts", "seq", "prev", "hash", "event", "replica", "worker"})
"""Names an event's fields may not take: the chain and record header own them."""

INVALID_CODE = "(invalid)"
"""Stands in for a code-like field (category, rule, reason, kind) holding anything else."""

# Codes are short identifiers. A value outside this shape may come from a client
# (a category header) and could carry PHI, so it is never written as given.
_CODE = re.compile(r"[A-Za-z0-9_.:+/-]{0,100}")

MAX_REPLY_TEXT = 512
"""Upstream reply text is cut here so that one odd server cannot bloat the log."""

# How far back from the end start-up looks for the last intact record. Records
# are a few KiB at most; a file whose last MiB holds none is not ours to continue.
_SCAN_BACK_LIMIT = 1 << 20
_CHUNK = 64 * 1024


class AuditError(Exception):
    """The record could not be written; the caller must fail closed (4xx).

    Messages name the file and the OS error only, never record content.
    """


class AuditLog:
    """Append-only, hash-chained audit records to a file and/or stdout.

    Every method writes one line and returns only once it is flushed to the
    kernel (and fsynced with `fsync=True`). Safe to call from several threads.
    """

    def __init__(
        self,
        path: Path | None,
        *,
        key: bytes,
        stdout: bool = False,
        fsync: bool = False,
        max_bytes: int | None = None,
        backups: int = 10,
        clock: Callable[[], float] = time.time,
        head: Path | None = None,
        write_timeout: float = 10.0,
        replica: str = "",
        worker: int = 0,
    ) -> None:
        """`head`: a file (in the state directory) that keeps the chain's last seq and hash,
        so the chain goes on after a restart with an emptied file or with stdout only."""
        if path is None and not stdout:
            raise AuditError("audit log needs a file, stdout, or both")
        if len(key) < 16:
            raise AuditError("audit key must be at least 16 bytes")
        if max_bytes is not None and max_bytes < 0:
            raise AuditError("audit max_bytes must be 0 (no rotation) or positive")
        if max_bytes and backups < 1:
            # Rotation with no backups would delete the records it rotates away.
            raise AuditError("audit backups must be at least 1 when max_bytes is set")
        self._path = path
        self._key = key
        self._ckey = chain_key(key)
        self._stdout = stdout
        self._fsync = fsync
        self._max_bytes = max_bytes or None
        self._backups = backups
        self._clock = clock
        self._lock = threading.Lock()
        self._fd: int | None = None
        self._size = 0
        self._seq = 0
        self._last = GENESIS
        self._closed = False
        self._head = HeadFile(head) if head is not None else None
        self._write_timeout = write_timeout
        # Names this replica in every record, so chains from many replicas stay apart.
        self._replica = replica
        # And the worker process of a supervised relay: each writes a chain of its own.
        self._worker = worker
        self._pool: ThreadPoolExecutor | None = None
        # What can stall goes to the writer thread: an fsync, or a stdout whose reader
        # may stop reading. A plain file write is done where it is asked for.
        self._inline = path is not None and not stdout and not fsync
        with self._lock:
            if path is not None:
                self._open(resume=True)
            else:
                self._continue_elsewhere()

    # --- public API ----------------------------------------------------------------------

    @property
    def last_hash(self) -> str:
        """Hash of the newest record written (GENESIS before the first)."""
        return self._last

    @property
    def next_seq(self) -> int:
        return self._seq

    def decision(self, d: Decision) -> None:
        """The policy outcome for one message; written before it is forwarded or refused."""
        # The accepted recipients are among the given ones: each address hashed once.
        hashes = {a: recipient_hash(self._key, a) for a in (*d.recipients, *d.accepted)}
        self._append(
            {
                "type": "decision",
                "ts": _rfc3339(d.time),
                "decision_id": d.decision_id,
                "session_id": d.session_id,
                "peer": d.peer.host,
                "tls_version": d.tls.version,
                "tls_cipher": d.tls.cipher,
                "auth_user": d.auth_user,
                "sender_domain": d.sender_domain,
                "recipients": [hashes[a] for a in d.recipients],
                "accepted": [hashes[a] for a in d.accepted],
                "dropped": self._hash_map(d.dropped, _code),
                "category": _code(d.category),
                "mode": d.mode,
                "action": _action(d.action),
                "enforced_action": _action(d.enforced_action),
                "verdicts": [
                    {
                        "rule": _code(v.rule),
                        "action": _action(v.action),
                        "reason": _code(v.reason),
                        "kinds": [_code(k) for k in v.kinds],
                        # Detection rule ids, only on verdicts that carry them.
                        **({"rules": [_code(r) for r in v.rules]} if v.rules else {}),
                    }
                    for v in d.verdicts
                ],
                **_reply_fields(d.reply),
                "size": d.size,
            }
        )

    def delivery(self, r: DeliveryResult) -> None:
        """What the upstream said about one transaction, linked by `decision_id`."""
        self._append(
            {
                "type": "delivery",
                "ts": _rfc3339(self._clock()),
                "decision_id": r.decision_id,
                "upstream": r.upstream,
                "recipients": self._hashes(r.recipients),
                "refused": self._hash_map(r.refused, lambda reply: reply.code),
                **_reply_fields(r.reply),
                "duration_ms": round(r.duration_ms, 3),
                "tls_version": r.tls.version,
                "tls_cipher": r.tls.cipher,
                "outcome": r.outcome,
                "attempt": r.attempt,
            }
        )

    def event(self, event: str, **fields: FieldValue) -> None:
        """Anything else worth an auditor's eye (start, stop, AUTH lock-out, upstream down)."""
        record: Record = {"type": "event", "ts": _rfc3339(self._clock()), "event": event}
        for name, value in fields.items():
            if name in RESERVED:
                raise AuditError(f"event field name {name!r} is reserved")
            if value is not None and not isinstance(value, str | int | float | bool):
                raise AuditError(f"event field {name!r} must be str, int, float, bool or None")
            # The caller promises no PHI; redacting addresses anyway is cheap insurance.
            record[name] = redact(value) if isinstance(value, str) else value
        self._append(record)

    # --- the same, off the event loop ----------------------------------------------------

    async def decision_async(self, d: Decision) -> None:
        """`decision` off the event loop when it could stall there: with `fsync` or `stdout`
        on the writer thread, so an fsync, a slow disk or a stalled stdout consumer holds
        only this message (451 after `write_timeout`). A file alone, without fsync, is
        written at once (a write to the page cache; no thread hand-off)."""
        await self._off_loop(self.decision, d)

    async def delivery_async(self, r: DeliveryResult) -> None:
        await self._off_loop(self.delivery, r)

    async def event_async(self, event: str, **fields: FieldValue) -> None:
        await self._off_loop(lambda: self.event(event, **fields))

    async def _off_loop(self, fn: Callable[..., None], *args: object) -> None:
        if self._inline:
            # A file only, without fsync: the record is one write() to the page cache
            # (~20 µs), cheaper than the round trip to the writer thread (~0.25 ms of CPU
            # per message, bench/README.md). Flushed to the kernel before this returns,
            # as on the thread.
            fn(*args)
            return
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="audit")
        future = asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)
        try:
            async with asyncio.timeout(self._write_timeout):
                await future
        except TimeoutError as exc:
            # The write may still land later; the caller fails closed now.
            where = self._path if self._path is not None else "stdout"
            raise AuditError(
                f"audit write to {where} did not finish within {self._write_timeout:g} s"
            ) from exc

    def reopen(self) -> None:
        """Close and reopen the file (after an external logrotate moved it), keeping the chain."""
        with self._lock:
            self._check_open()
            self._close_fd()
            if self._path is not None:
                self._open(resume=False)

    def close(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True)
        with self._lock:
            self._close_fd()
            if self._head is not None:
                self._head.close()
            self._closed = True

    def __enter__(self) -> AuditLog:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # --- record building -----------------------------------------------------------------

    def hash_recipient(self, address: str) -> str:
        """The keyed hash this log writes for `address` (for an event about one recipient)."""
        return recipient_hash(self._key, address)

    def _hashes(self, addresses: tuple[str, ...]) -> list[str]:
        return [recipient_hash(self._key, a) for a in addresses]

    def _hash_map(
        self, by_address: Mapping[str, _V], value: Callable[[_V], FieldValue]
    ) -> dict[str, FieldValue]:
        return {recipient_hash(self._key, a): value(v) for a, v in by_address.items()}

    # --- chain and file ------------------------------------------------------------------

    def _append(self, fields: Record) -> None:
        with self._lock:
            self._check_open()
            if self._path is not None and self._fd is None:
                self._open(resume=False)
            self._write(fields)

    def _check_open(self) -> None:
        if self._closed:
            raise AuditError("audit log is closed")

    def _write(self, fields: Record) -> None:
        line, digest = self._render(fields)
        if self._path is not None:
            if self._max_bytes and self._size and self._size + len(line) > self._max_bytes:
                self._rotate()
                # Opening the new file may itself have written a record; re-link to it.
                line, digest = self._render(fields)
            self._write_file(line)
        # The record is written (or goes to stdout only): its seq is spent whatever stdout
        # does next, or the next record would reuse it and fork the file's chain.
        self._seq += 1
        self._last = digest
        if self._head is not None:
            self._head.write(self._seq - 1, digest)
        if self._stdout:
            self._write_stdout(line)

    def _render(self, fields: Record) -> tuple[bytes, str]:
        record = dict(fields)
        if self._replica:
            record["replica"] = self._replica
        if self._worker:
            record["worker"] = self._worker
        record["seq"] = self._seq
        record["prev"] = self._last
        try:
            line, digest = sealed(self._ckey, record)
            return line + b"\n", digest
        except (TypeError, ValueError) as exc:
            raise AuditError(f"audit record cannot be encoded: {type(exc).__name__}") from exc

    def _write_file(self, line: bytes) -> None:
        assert self._fd is not None
        try:
            view = memoryview(line)
            while view:
                written = os.write(self._fd, view)
                view = view[written:]
            if self._fsync:
                os.fsync(self._fd)
        except OSError as exc:
            # Closing makes the next call reopen, which closes off any half-written line.
            self._close_fd()
            raise AuditError(f"cannot write audit log {self._path}: {exc.strerror}") from exc
        self._size += len(line)

    def _write_stdout(self, line: bytes) -> None:
        out = sys.stdout
        try:
            out.write(line.decode("ascii"))
            out.flush()
        except (OSError, ValueError, AttributeError) as exc:
            # AttributeError: no stdout at all (sys.stdout is None when detached).
            raise AuditError(f"cannot write audit records to stdout: {type(exc).__name__}") from exc

    def _open(self, *, resume: bool) -> None:
        """Open the file for appending; `resume` continues the chain found in it.

        Without `resume` (reopen, recovery after a failed write) the chain held in
        memory is the truth and the file only needs a half-written line closed off.
        """
        assert self._path is not None
        path = self._path
        try:
            # First start: the state directory may not exist yet; keep it private.
            if not path.parent.exists():
                path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            existed = path.exists()
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise AuditError(f"cannot open audit log {path}: {exc.strerror}") from exc
        self._fd = fd
        try:
            self._size = os.fstat(fd).st_size
            if not existed and self._fsync:
                _fsync_dir(path.parent)
            restart = self._resume_from_file() if resume else self._repair_tail()
        except OSError as exc:
            self._close_fd()
            raise AuditError(f"cannot read audit log {path}: {exc.strerror}") from exc
        if restart is not None:
            reason, bad_line = restart
            self._write(
                {
                    "type": "event",
                    "ts": _rfc3339(self._clock()),
                    "event": "chain-restart",
                    "reason": reason,
                    "bad_line": bad_line,
                }
            )

    def _repair_tail(self) -> tuple[str, int] | None:
        if self._size == 0 or self._last_byte() == b"\n":
            return None
        bad_line = self._count_lines()
        self._write_file(b"\n")
        return "truncated-write", bad_line

    def _continue_elsewhere(self) -> None:
        """An empty file (or none): go on from the rotated files or the head file."""
        head = find_head(self._path, self._head, self._ckey)
        if head is None:
            return
        self._seq, self._last = head.seq + 1, head.hash
        self._write(
            {
                "type": "event",
                "ts": _rfc3339(self._clock()),
                "event": "chain-continued",
                "source": head.source,
                "from_file": Path(head.where).name,
            }
        )

    def _resume_from_file(self) -> tuple[str, int] | None:
        """Set seq/prev from the file's last record; say why if the chain must restart."""
        if self._size == 0:
            self._continue_elsewhere()
            return None
        truncated = self._last_byte() != b"\n"
        lines = list(self._complete_lines_backwards())
        restart: tuple[str, int] | None = None
        if truncated:
            restart = ("truncated-write", self._count_lines())
            self._write_file(b"\n")
        for raw in lines:
            try:
                record = parse(raw)
            except ValueError:
                if restart is None:
                    restart = ("last-record-unreadable", self._count_lines())
                continue
            if restart is None and record_hash(self._ckey, record) != record["hash"]:
                # Edited, or written under another key: still link to it (verify
                # names the bad line) but leave a signed note that start-up saw it.
                restart = ("last-record-hash-mismatch", self._count_lines())
            self._seq = record["seq"] + 1
            self._last = record["hash"]
            return restart
        # No intact record within reach: whatever this file holds, a new chain begins.
        self._seq = 0
        self._last = GENESIS
        return restart or ("no-readable-record", self._count_lines())

    def _last_byte(self) -> bytes:
        assert self._path is not None
        with self._path.open("rb") as fh:
            fh.seek(self._size - 1)
            return fh.read(1)

    def _count_lines(self) -> int:
        """Line number of the file's last line (complete or not)."""
        assert self._path is not None
        newlines = 0
        last = b"\n"
        with self._path.open("rb") as fh:
            while chunk := fh.read(_CHUNK):
                newlines += chunk.count(b"\n")
                last = chunk[-1:]
        return newlines if last == b"\n" else newlines + 1

    def _complete_lines_backwards(self) -> Iterator[bytes]:
        """Newline-ended, non-blank lines from the end of the file, newest first.

        Only the last `_SCAN_BACK_LIMIT` bytes are read; a half-written last line is
        left out (the caller deals with it).
        """
        assert self._path is not None
        with self._path.open("rb") as fh:
            end = self._size
            start = max(0, end - _SCAN_BACK_LIMIT)
            fh.seek(start)
            data = fh.read(end - start)
        pieces = data.split(b"\n")[:-1]  # the piece after the last newline is not a line
        if start > 0 and pieces:
            pieces = pieces[1:]  # the first piece is probably the tail of a cut line
        for line in reversed(pieces):
            if line.strip():
                yield line

    def _rotate(self) -> None:
        assert self._path is not None
        self._close_fd()
        base = str(self._path)
        try:
            for i in range(self._backups - 1, 0, -1):
                src = Path(f"{base}.{i}")
                if src.exists():
                    os.replace(src, f"{base}.{i + 1}")
            os.replace(self._path, f"{base}.1")
            if self._fsync:
                _fsync_dir(self._path.parent)
        except OSError as exc:
            raise AuditError(f"cannot rotate audit log {self._path}: {exc.strerror}") from exc
        # The fresh file's first record carries `prev` = the old file's last hash.
        self._open(resume=False)

    def _close_fd(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            with contextlib.suppress(OSError):
                os.close(fd)


def _fsync_dir(directory: Path) -> None:
    """Make a create or rename durable: the directory entry needs its own fsync."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _rfc3339(t: float) -> str:
    return datetime.fromtimestamp(t, tz=UTC).isoformat(timespec="milliseconds")[:-6] + "Z"


def _code(value: str) -> str:
    return value if _CODE.fullmatch(value) else INVALID_CODE


def _action(action: Action) -> str:
    return action.name.lower()


def _reply_fields(reply: Reply) -> Record:
    return {
        "reply_code": reply.code,
        "reply_status": reply.status,
        # The relay's own replies hold no PHI by construction; upstream replies often
        # echo the recipient, so addresses are redacted in every reply alike.
        "reply_text": redact(reply.text)[:MAX_REPLY_TEXT],
    }
