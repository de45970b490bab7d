"""Exact-match patient roster: keyed hashes of names and MRNs, never the clear values.

`phi-relay roster import` writes state_dir/roster.db; the detector matches every
adjacent word pair and every number-like word of a subject against it. Hashes
are HMAC-SHA256 under the state directory's "roster" key, so the file alone does
not reveal who is a patient, and a dictionary attack needs that key.
"""

from __future__ import annotations

import csv
import hmac
import os
import re
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from relay import keys
from relay.phi import kinds
from relay.phi.api import Finding
from relay.phi.normalize import fold, normalize

DB_NAME = "roster.db"
_NAME_PART = re.compile(r"[^\W\d_]+(?:['\-][^\W\d_]+)*")
_MRN = re.compile(r"[A-Za-z0-9][A-Za-z0-9-]{3,39}")


class RosterError(Exception):
    """A roster file that cannot be imported; the message names the line and the reason."""


def _digest(key: bytes, kind: str, value: str) -> bytes:
    return hmac.digest(key, f"{kind}:{value}".encode(), "sha256")


def name_tokens(value: str) -> list[str]:
    return _NAME_PART.findall(fold(normalize(value)))


@dataclass(frozen=True, slots=True)
class Roster:
    key: bytes
    names: frozenset[bytes]
    mrns: frozenset[bytes]

    @classmethod
    def load(cls, state_dir: Path) -> Roster | None:
        """The imported roster, or None when none was imported."""
        path = state_dir / DB_NAME
        if not path.exists():
            return None
        con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            rows = con.execute("SELECT kind, digest FROM hashes").fetchall()
        finally:
            con.close()
        # An imported roster without its key is broken state, never a reason for a new key.
        key = keys.load(state_dir, "roster")
        names = frozenset(bytes(d) for k, d in rows if k == "name")
        mrns = frozenset(bytes(d) for k, d in rows if k == "mrn")
        return cls(key, names, mrns)

    def __len__(self) -> int:
        return len(self.names) + len(self.mrns)

    def match(
        self, words: Sequence[str], starts: Sequence[int], ends: Sequence[int]
    ) -> list[Finding]:
        """Findings for word pairs that are a rostered name and words that are a rostered MRN."""
        found: list[Finding] = []
        key = self.key
        for i, word in enumerate(words):
            numeric = len(word) >= 4 and any(ch.isdigit() for ch in word)
            if numeric and self.mrns and _digest(key, "mrn", word) in self.mrns:
                found.append(Finding(kinds.MRN, starts[i], ends[i], 1.0, "roster.mrn"))
            pair = f"{word} {words[i + 1]}" if i + 1 < len(words) else ""
            if pair and self.names and _digest(key, "name", pair) in self.names:
                found.append(Finding(kinds.NAME, starts[i], ends[i + 1], 1.0, "roster.name"))
        return found


def _row_hashes(key: bytes, row: dict[str, str], line: int) -> list[tuple[str, bytes]]:
    first = name_tokens(row.get("first_name", "") or "")
    last = name_tokens(row.get("last_name", "") or "")
    mrn = (row.get("mrn", "") or "").strip()
    if (row.get("first_name") or "").strip() and not first:
        raise RosterError(f"line {line}: first_name holds no letters")
    if (row.get("last_name") or "").strip() and not last:
        raise RosterError(f"line {line}: last_name holds no letters")
    if bool(first) != bool(last):
        raise RosterError(f"line {line}: first_name and last_name must both be given")
    if mrn and not _MRN.fullmatch(mrn):
        raise RosterError(f"line {line}: mrn must be 4-40 letters, digits or hyphens")
    if not first and not mrn:
        raise RosterError(f"line {line}: empty row (need a name or an mrn)")
    out: list[tuple[str, bytes]] = []
    # Every first-name word with every surname word, in both orders: subjects say
    # "Jane Okafor", "Okafor Jane", and "Mary Cruz" for "Mary Ann De la Cruz".
    for f in first:
        for s in last:
            out.append(("name", _digest(key, "name", f"{f} {s}")))
            out.append(("name", _digest(key, "name", f"{s} {f}")))
    if mrn:
        out.append(("mrn", _digest(key, "mrn", fold(normalize(mrn)))))
    return out


def import_csv(csv_path: Path, state_dir: Path) -> int:
    """Replace the roster with the rows of `csv_path`; all rows or none. Returns the row count."""
    try:
        with csv_path.open(newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            fields = [f.strip().lower() for f in (reader.fieldnames or [])]
            if not {"first_name", "last_name", "mrn"} & set(fields):
                raise RosterError("line 1: header must name first_name, last_name and/or mrn")
            reader.fieldnames = fields
            key = keys.load_or_create(state_dir, "roster")
            hashes: list[tuple[str, bytes]] = []
            rows = 0
            for row in reader:
                line = reader.line_num
                if None in row:
                    raise RosterError(f"line {line}: more fields than the header")
                hashes.extend(_row_hashes(key, row, line))
                rows += 1
    except UnicodeDecodeError as exc:
        raise RosterError(f"not UTF-8 text ({exc.reason})") from exc
    except csv.Error as exc:
        raise RosterError(f"not a valid CSV file ({exc})") from exc
    if rows == 0:
        raise RosterError("no rows to import")
    state_dir.mkdir(parents=True, exist_ok=True)
    final = state_dir / DB_NAME
    tmp = state_dir / f".{DB_NAME}.{os.getpid()}.tmp"
    tmp.unlink(missing_ok=True)
    con = sqlite3.connect(tmp)
    try:
        con.execute(
            "CREATE TABLE hashes (kind TEXT NOT NULL, digest BLOB NOT NULL,"
            " PRIMARY KEY (kind, digest))"
        )
        con.executemany("INSERT OR IGNORE INTO hashes VALUES (?, ?)", hashes)
        con.commit()
    finally:
        con.close()
    os.chmod(tmp, 0o600)
    # Rename: a relay reading the roster sees the old file or the new one, never half.
    os.replace(tmp, final)
    return rows
