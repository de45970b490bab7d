"""Where a chain goes on when its file is empty: the head file and the rotated files beside it.

After `logrotate` (create mode) moves `audit.log` away and leaves an empty one, or when
records go to stdout only, the file being opened holds no record to continue from. The
chain's true end is then the last record of the newest rotated file (`audit.log.1`,
`audit.log-20261201`, also gzip-compressed), or the head file the writer keeps in the
state directory (the seq and hash of the last record written, rewritten in place).
"""

from __future__ import annotations

import contextlib
import gzip
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from relay.audit.chain import Record, parse, record_hash

# Records are a few KiB at most; the last MiB of a file holds its last record.
TAIL_BYTES = 1 << 20
_HEAD_WIDTH = 20  # seq digits: fixed width, so an in-place rewrite never leaves a tail


@dataclass(frozen=True, slots=True)
class Head:
    seq: int  # of the last record written
    hash: str
    source: str  # "rotated-file" or "head-file"
    where: str  # the file it was read from


class HeadFile:
    """`<state_dir>/audit.head`: one fixed-width line, `SEQ HASH`, rewritten per record."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None

    def read(self) -> Head | None:
        try:
            text = self.path.read_text(encoding="ascii")
        except (OSError, UnicodeDecodeError):
            return None
        seq_text, _, digest = text.strip().partition(" ")
        if not seq_text.isdigit() or len(digest) != 64:
            return None
        if any(c not in "0123456789abcdef" for c in digest):
            return None
        return Head(int(seq_text), digest, "head-file", str(self.path))

    def write(self, seq: int, digest: str) -> None:
        """Best effort: the log file is the truth; the head only bridges an empty one."""
        try:
            if self._fd is None:
                self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            os.pwrite(self._fd, f"{seq:0{_HEAD_WIDTH}d} {digest}\n".encode("ascii"), 0)
        except OSError:
            self.close()

    def close(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            with contextlib.suppress(OSError):
                os.close(fd)


def rotated_files(path: Path) -> list[Path]:
    """Files a rotation made from `path` (`path.1`, `path-DATE`, `.gz`), newest first."""
    found: list[tuple[float, Path]] = []
    try:
        entries = list(path.parent.iterdir())
    except OSError:
        return []
    for entry in entries:
        name = entry.name
        if not (name.startswith(path.name + ".") or name.startswith(path.name + "-")):
            continue
        if name.endswith((".tmp", ".lock")):
            continue
        with contextlib.suppress(OSError):
            if entry.is_file() and entry.stat().st_size:
                found.append((entry.stat().st_mtime, entry))
    return [p for _, p in sorted(found, key=lambda item: item[0], reverse=True)]


def _tail(path: Path) -> bytes:
    if path.name.endswith(".gz"):
        # A compressed file can only be read from the start; keep the last MiB.
        tail = b""
        with gzip.open(path, "rb") as fh:
            while chunk := fh.read(TAIL_BYTES):
                tail = (tail + chunk)[-TAIL_BYTES:]
        return tail
    with path.open("rb") as fh:
        size = os.fstat(fh.fileno()).st_size
        fh.seek(max(0, size - TAIL_BYTES))
        return fh.read()


def _lines_backwards(data: bytes) -> Iterator[bytes]:
    pieces = data.split(b"\n")
    for line in reversed(pieces[1:-1] if len(data) >= TAIL_BYTES else pieces[:-1]):
        if line.strip():
            yield line


def last_record(path: Path, ckey: bytes) -> Record | None:
    """The newest intact record of `path` that verifies under `ckey`, if any."""
    try:
        data = _tail(path)
    except (OSError, EOFError, gzip.BadGzipFile):
        return None
    for line in _lines_backwards(data):
        try:
            record = parse(line)
        except ValueError:
            continue
        if record_hash(ckey, record) == record["hash"]:
            return record
    return None


def find_head(path: Path | None, head_file: HeadFile | None, ckey: bytes) -> Head | None:
    """The furthest point the chain reached outside `path`: rotated files, then the head file."""
    best: Head | None = None
    if path is not None:
        for rotated in rotated_files(path)[:3]:
            record = last_record(rotated, ckey)
            if record is not None:
                best = Head(record["seq"], record["hash"], "rotated-file", str(rotated))
                break
    if head_file is not None:
        head = head_file.read()
        # A head file ahead of the rotated files: they were compressed away or removed.
        if head is not None and (best is None or head.seq > best.seq):
            best = head
    return best
