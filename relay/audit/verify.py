"""Checks audit log files against their hash chain and says where any edit happened."""

from __future__ import annotations

import gzip
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from relay.audit.chain import GENESIS, Record, chain_key, parse, record_hash
from relay.audit.head import rotated_files

# A gap wider than this is reported by its size alone; looking each seq up adds nothing.
_GAP_LOOKUP_LIMIT = 1000


@dataclass(slots=True)
class Problem:
    """One finding: where it is (file, line, seq when known) and what is wrong."""

    file: Path
    line: int
    seq: int | None
    message: str

    def __str__(self) -> str:
        seq = f" seq {self.seq}:" if self.seq is not None else ""
        return f"{self.file}:{self.line}:{seq} {self.message}"


@dataclass(slots=True)
class VerifyReport:
    records: int = 0
    problems: list[Problem] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    first_seq: int | None = None
    last_seq: int | None = None
    keyed: bool = True

    @property
    def ok(self) -> bool:
        return not self.problems


@dataclass(frozen=True, slots=True)
class _Seen:
    seq: int
    hash: str
    file: Path
    line: int


@dataclass(slots=True)
class _Bad:
    """A line that is not a valid record, kept until the next good one explains it."""

    problem: Problem
    unparsable: bool


@dataclass(slots=True)
class _Gap:
    problem: Problem
    low: int
    high: int
    file_start: bool


class _Walker:
    def __init__(self, key: bytes | None) -> None:
        self.ckey = chain_key(key) if key is not None else None
        self.report = VerifyReport(keyed=key is not None)
        self.last: _Seen | None = None
        self.bad: list[_Bad] = []
        self.seen: dict[int, _Seen] = {}
        self.gaps: list[_Gap] = []
        self.last_ts = ""
        # The record just read, and the out-of-place run it belongs to, if any: a
        # moved block is reported once at its first line, not at every line of it.
        self.previous: _Seen | None = None
        self.run: Problem | None = None
        self.run_tail: _Seen | None = None
        self.run_length = 0
        self.spliced: tuple[_Seen, Problem] | None = None

    def problem(self, file: Path, line: int, seq: int | None, message: str) -> Problem:
        found = Problem(file, line, seq, message)
        self.report.problems.append(found)
        return found

    def walk_file(self, path: Path) -> None:
        file_start = True
        # logrotate's `compress` leaves older files gzipped; they are part of the chain.
        opener = gzip.open if path.name.endswith(".gz") else open
        with opener(path, "rb") as fh:
            for lineno, raw in enumerate(fh, start=1):
                if self.line(path, lineno, raw, file_start):
                    file_start = False

    def line(self, path: Path, lineno: int, raw: bytes, file_start: bool) -> bool:
        """Check one line; True if it was a valid record."""
        if not raw.strip():
            problem = self.problem(path, lineno, None, "blank line (not written by the relay)")
            self.bad.append(_Bad(problem, unparsable=True))
            return False
        try:
            record = parse(raw.rstrip(b"\r\n"))
        except ValueError as exc:
            cut = "" if raw.endswith(b"\n") else "; truncated (no newline at end of file)"
            problem = self.problem(path, lineno, None, f"not a valid record: {exc}{cut}")
            self.bad.append(_Bad(problem, unparsable=True))
            return False
        seq: int = record["seq"]
        if self.ckey is not None and record_hash(self.ckey, record) != record["hash"]:
            problem = self.problem(
                path, lineno, seq, "record altered or forged: its hash does not match its content"
            )
            self.bad.append(_Bad(problem, unparsable=False))
            return False
        self.valid(path, lineno, record, file_start)
        return True

    def valid(self, path: Path, lineno: int, record: Record, file_start: bool) -> None:
        seq: int = record["seq"]
        here = _Seen(seq, record["hash"], path, lineno)
        self.report.records += 1
        self.acknowledge_restart(path, record)
        where = "first record of this file: " if file_start and self.last is not None else ""
        last = self.last
        if last is None:
            if seq == 0 and record["prev"] != GENESIS:
                self.problem(path, lineno, seq, "chain start does not link to the genesis value")
            elif seq > 0:
                self.report.notes.append(
                    f"chain begins at seq {seq} ({path}:{lineno}); earlier records are in "
                    "files not given"
                )
            self.report.first_seq = seq
        elif self.bad:
            self.after_bad(here, record, last, where)
        else:
            self.check_link(here, record, last, where)
        self.bad = []
        self.previous = here
        self.seen.setdefault(seq, here)
        restarted = seq == 0 and record["prev"] == GENESIS
        if last is None or seq > last.seq or restarted:
            self.last = here
            self.last_ts = str(record.get("ts", ""))

    def acknowledge_restart(self, path: Path, record: Record) -> None:
        """A signed chain-restart naming the half-written line just before it explains it."""
        if record.get("event") != "chain-restart" or record.get("reason") != "truncated-write":
            return
        if not self.bad or not self.bad[-1].unparsable:
            return
        problem = self.bad[-1].problem
        if problem.file != path or problem.line != record.get("bad_line"):
            return
        self.bad.pop()
        self.report.problems.remove(problem)
        self.report.notes.append(
            f"{path}:{problem.line}: half-written record left by a crash or failed write, "
            f"acknowledged by the chain-restart record at seq {record['seq']}"
        )

    def after_bad(self, here: _Seen, record: Record, last: _Seen, where: str) -> None:
        expected = last.seq + 1
        if here.seq == expected and record["prev"] == last.hash:
            # The chain runs straight past the bad lines: they were added, not changed.
            for bad in self.bad:
                bad.problem.message += "; inserted: the chain skips this line"
            return
        altered = sum(1 for bad in self.bad if not bad.unparsable)
        if here.seq == expected + len(self.bad) or here.seq == expected + altered:
            return  # the bad lines stand where records were; each is already reported
        self.problem(
            here.file,
            here.line,
            here.seq,
            f"{where}seq {here.seq} does not follow seq {last.seq} "
            f"({last.file}:{last.line}) across {len(self.bad)} bad line(s)",
        )

    def check_link(self, here: _Seen, record: Record, last: _Seen, where: str) -> None:
        expected = last.seq + 1
        if here.seq == 0 and record["prev"] == GENESIS:
            self.problem(
                here.file,
                here.line,
                here.seq,
                f"{where}a new chain starts here; the previous one ended at seq {last.seq} "
                f"({last.file}:{last.line}): the log was reset or files were mixed",
            )
        elif here.seq == expected:
            if record["prev"] == last.hash:
                return
            if self.spliced is not None and self.spliced[0] == last:
                # The record after a foreign one cannot link to it either; one report.
                self.spliced[1].message += "; it replaced the original record"
                return
            problem = self.problem(
                here.file,
                here.line,
                here.seq,
                f"{where}does not link to the record before it "
                f"({last.file}:{last.line}): taken from another chain",
            )
            self.spliced = (here, problem)
        elif here.seq > expected:
            problem = self.problem(here.file, here.line, here.seq, "")
            self.gaps.append(_Gap(problem, expected, here.seq - 1, bool(where)))
        else:
            self.out_of_place(here, record, last, where)

    def out_of_place(self, here: _Seen, record: Record, last: _Seen, where: str) -> None:
        before = self.previous
        if (
            self.run is not None
            and before is not None
            and self.run_tail == before
            and here.seq == before.seq + 1
            and record["prev"] == before.hash
        ):
            self.run_length += 1
            self.run_tail = here
            base = self.run.message.split("; so are the next")[0]
            self.run.message = f"{base}; so are the next {self.run_length} record(s) after it"
            return
        earlier = self.seen.get(here.seq)
        if earlier is not None and earlier.hash == here.hash:
            message = f"repeats the record at {earlier.file}:{earlier.line} (duplicated)"
        else:
            message = f"out of order: seq {here.seq} comes after seq {last.seq}"
        self.run = self.problem(here.file, here.line, here.seq, where + message)
        self.run_tail = here
        self.run_length = 0

    def describe_gaps(self) -> None:
        """Name each gap once every line has been read: were the records moved or deleted?"""
        for gap in self.gaps:
            count = gap.high - gap.low + 1
            span = f"seq {gap.low}" if count == 1 else f"seq {gap.low}-{gap.high}"
            moved = []
            if count <= _GAP_LOOKUP_LIMIT:
                moved = [self.seen[s] for s in range(gap.low, gap.high + 1) if s in self.seen]
            prefix = "first record of this file: " if gap.file_start else ""
            if not moved:
                missing = (
                    "deleted, or a file between these two is missing"
                    if gap.file_start
                    else "deleted"
                )
                gap.problem.message = (
                    f"{prefix}{count} record(s) missing before this line ({span}): {missing}"
                )
            else:
                places = ", ".join(f"seq {m.seq} at {m.file}:{m.line}" for m in moved[:5])
                more = f" and {len(moved) - 5} more" if len(moved) > 5 else ""
                lost = count - len(moved)
                tail = f"; {lost} not found anywhere (deleted)" if lost else ""
                gap.problem.message = (
                    f"{prefix}{span} should come before this line but is out of place "
                    f"({places}{more}){tail}"
                )


def with_rotated(path: Path) -> list[Path]:
    """`path` and the files rotation made from it (`.1`, `-DATE`, `.gz`), oldest first."""
    return [*reversed(rotated_files(path)), path]


def verify(paths: Sequence[Path], key: bytes | None) -> VerifyReport:
    """Check `paths` (oldest first: audit.log.2 audit.log.1 audit.log) as one chain.

    Without a key only the links between records are checked, not their content.
    Raises OSError if a file cannot be read.
    """
    walker = _Walker(key)
    for path in paths:
        walker.walk_file(path)
    walker.describe_gaps()
    report = walker.report
    order = {path: index for index, path in enumerate(paths)}
    report.problems.sort(key=lambda p: (order.get(p.file, 0), p.line))
    if walker.last is not None:
        report.last_seq = walker.last.seq
        report.notes.append(
            f"last record: seq {walker.last.seq} at {walker.last_ts or 'unknown time'} "
            f"({walker.last.file}:{walker.last.line}); records cut from the end leave no "
            "trace in the chain, compare with a copy shipped elsewhere"
        )
    if key is None:
        report.notes.append("no key given: links between records checked, their content not")
    return report
