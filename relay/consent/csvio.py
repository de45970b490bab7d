"""Read authorization and opt-out CSV files, checking every row before anything is imported.

A file is imported whole or not at all, so every row is validated here first and
every bad row reported as `FILE:LINE: reason`. Reasons name the column, never
repeat the value: the file is full of addresses.
"""

from __future__ import annotations

import csv
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path
from typing import TypeVar

from relay.address import AddressError
from relay.consent.api import ALL, Authorization, ConsentError, OptOut, check_authorization
from relay.consent.api import check_optout as _check_optout

T = TypeVar("T")

AUTHORIZATION_COLUMNS = (
    "recipient",
    "form_ref",
    "scope",
    "conditions",
    "granted",
    "expires",
    "revoked",
)
AUTHORIZATION_REQUIRED = ("recipient", "form_ref")
OPTOUT_COLUMNS = ("recipient", "category", "when")
OPTOUT_REQUIRED = ("recipient",)
CONDITION_SEPARATOR = ";"
MAX_REPORTED = 50


class CsvError(Exception):
    """Bad rows (or a bad header) in a CSV file; `problems` are `FILE:LINE: reason` lines."""

    def __init__(self, problems: list[str], total: int) -> None:
        self.problems = problems
        self.total = total
        super().__init__(f"{total} problem(s); first: {problems[0]}")


class _RowError(Exception):
    pass


def parse_time(text: str, column: str) -> datetime:
    """`YYYY-MM-DD` (00:00 UTC that day) or an ISO 8601 time with a zone (`Z` or `+hh:mm`)."""
    value = text.strip()
    try:
        if len(value) == 10:
            day = date.fromisoformat(value)
            return datetime(day.year, day.month, day.day, tzinfo=UTC)
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise _RowError(
            f"column {column}: expected YYYY-MM-DD or an ISO 8601 time with a zone"
        ) from None
    if parsed.tzinfo is None:
        raise _RowError(f"column {column}: expected a time zone (e.g. Z or +00:00)")
    return parsed.astimezone(UTC)


def parse_date_arg(text: str, what: str) -> datetime:
    """The same rule for command-line options; ValueError with a one-line message."""
    try:
        return parse_time(text, what)
    except _RowError as exc:
        raise ValueError(str(exc).replace("column ", "", 1)) from None


@dataclass(frozen=True, slots=True)
class _Row:
    line: int
    values: dict[str, str]

    def get(self, column: str) -> str:
        return self.values.get(column, "").strip()


def _rows(path: Path, allowed: tuple[str, ...], required: tuple[str, ...]) -> Iterator[_Row]:
    # utf-8-sig: spreadsheets often save CSV with a byte-order mark.
    with path.open(encoding="utf-8-sig", newline="") as fh:
        reader = csv.reader(fh)
        try:
            header = next(reader)
        except StopIteration:
            raise CsvError([f"{path}:1: empty file; expected a header row"], 1) from None
        names = [h.strip().lower() for h in header]
        problems = []
        for name in names:
            if name not in allowed:
                problems.append(f"{path}:1: unknown column {name!r}; expected {', '.join(allowed)}")
        for name in required:
            if name not in names:
                problems.append(f"{path}:1: missing column {name!r}")
        if len(set(names)) != len(names):
            problems.append(f"{path}:1: a column is named twice")
        if problems:
            raise CsvError(problems, len(problems))
        start = reader.line_num + 1
        for fields in reader:
            line, start = start, reader.line_num + 1
            if not any(f.strip() for f in fields):
                continue
            if len(fields) != len(names):
                yield _Row(line, {"": f"expected {len(names)} fields, found {len(fields)}"})
                continue
            yield _Row(line, dict(zip(names, fields, strict=True)))


def _read(
    path: Path,
    allowed: tuple[str, ...],
    required: tuple[str, ...],
    convert: Callable[[_Row], T],
) -> list[T]:
    out: list[T] = []
    problems: list[str] = []
    total = 0
    rows = _rows(path, allowed, required)
    while True:
        try:
            row = next(rows)
        except StopIteration:
            break
        except UnicodeDecodeError:
            raise CsvError([f"{path}: not UTF-8 text; save the file as UTF-8 CSV"], 1) from None
        except csv.Error as exc:
            raise CsvError([f"{path}: not readable as CSV ({exc})"], 1) from None
        try:
            if "" in row.values:
                raise _RowError(row.values[""])
            for column in required:
                if not row.get(column):
                    raise _RowError(f"column {column}: a value is required")
            out.append(convert(row))
        except AddressError as exc:
            problem = f"column recipient: {exc}"
        except (ConsentError, _RowError) as exc:
            problem = str(exc)
        else:
            continue
        total += 1
        if len(problems) < MAX_REPORTED:
            problems.append(f"{path}:{row.line}: {problem}")
    if problems:
        raise CsvError(problems, total)
    return out


def read_authorizations(path: Path, at: datetime) -> list[Authorization]:
    """Columns: recipient, form_ref (required); scope (default marketing), conditions
    (`;`-separated tags), granted (default `at`), expires, revoked."""

    def convert(row: _Row) -> Authorization:
        conditions = [c for c in row.get("conditions").split(CONDITION_SEPARATOR) if c.strip()]
        return check_authorization(
            Authorization(
                recipient=row.get("recipient"),
                scope=row.get("scope") or "marketing",
                conditions=frozenset(conditions),
                granted=parse_time(row.get("granted"), "granted") if row.get("granted") else at,
                expires=parse_time(row.get("expires"), "expires") if row.get("expires") else None,
                revoked=parse_time(row.get("revoked"), "revoked") if row.get("revoked") else None,
                form_ref=row.get("form_ref"),
            )
        )

    return _read(path, AUTHORIZATION_COLUMNS, AUTHORIZATION_REQUIRED, convert)


def read_optouts(
    path: Path, at: datetime, check_category: Callable[[str], None] | None = None
) -> list[OptOut]:
    """Columns: recipient (required); category (default all), when (default `at`).

    `check_category` may refuse category names the relay does not know.
    """

    def convert(row: _Row) -> OptOut:
        category = row.get("category").lower() or ALL
        if check_category is not None:
            try:
                check_category(category)
            except ValueError as exc:
                raise _RowError(f"column category: {exc}") from None
        return _check_optout(
            OptOut(
                recipient=row.get("recipient"),
                category=category,
                when=parse_time(row.get("when"), "when") if row.get("when") else at,
                source="import",
            )
        )

    return _read(path, OPTOUT_COLUMNS, OPTOUT_REQUIRED, convert)
