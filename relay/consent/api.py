"""The consent store interface: authorizations and opt-outs, whatever the backend."""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Protocol

from relay.address import canonical

# Opt-out sources, in the words of the issue: who asked for the suppression.
SOURCES = ("one-click", "admin", "import")
ALL = "all"
"""The opt-out category that suppresses every footer-bearing category."""

_SCOPE = re.compile(r"^[a-z0-9][a-z0-9-]{0,39}$")
# Tags are whatever the PHI detector names (ICD-10 phrases such as "cushing's syndrome",
# "mature t/nk-cell lymphomas"), so most punctuation is allowed; ";" and "," are not
# because they separate tags in CSV files and in `consent list` output.
_TAG = re.compile(r"^[^\W_][^\x00-\x1f\x7f;,]{0,99}$")


class ConsentError(ValueError):
    """A value the store refuses (bad scope, tag, category or source); never holds an address."""


class StoreError(Exception):
    """The backend failed (unreachable, locked, corrupt). Transient to a sender; holds no PHI."""


@dataclass(frozen=True, slots=True)
class Authorization:
    recipient: str
    scope: str
    conditions: frozenset[str]
    granted: datetime
    expires: datetime | None
    revoked: datetime | None
    form_ref: str

    def current(self, at: datetime) -> bool:
        """Granted by `at`, not yet expired and not revoked at `at`."""
        if self.granted > at:
            return False
        if self.expires is not None and self.expires <= at:
            return False
        return self.revoked is None or self.revoked > at


@dataclass(frozen=True, slots=True)
class OptOut:
    recipient: str
    category: str
    when: datetime
    source: str
    removed: datetime | None = None
    """When an administrator lifted it; the row is kept for the record."""


class ConsentStore(Protocol):
    async def authorization(self, recipient: str, scope: str, at: datetime) -> Authorization | None:
        """The current (granted, unexpired, unrevoked) authorization for `scope`, if any.

        Only the newest grant counts: a re-grant replaces the conditions of the one before.
        """
        ...

    async def opted_out(self, recipient: str, category: str) -> bool:
        """True when the recipient opted out of this category or of all."""
        ...

    async def add_optout(self, recipient: str, category: str, source: str) -> None:
        """Record an opt-out now; a second one for the same address and category is a no-op."""
        ...

    async def remove_optout(self, recipient: str, category: str | None = None) -> int:
        """Lift active opt-outs (one category, or every one when None); returns how many."""
        ...

    async def list_optouts(
        self, recipient: str | None = None, *, include_removed: bool = False
    ) -> list[OptOut]:
        """Opt-outs ordered by recipient, category, time."""
        ...

    async def import_optouts(self, rows: Sequence[OptOut]) -> int:
        """Add all rows in one transaction (all or nothing); returns how many were new."""
        ...

    async def grant(
        self,
        recipient: str,
        scope: str,
        conditions: Iterable[str],
        form_ref: str,
        *,
        expires: datetime | None = None,
        at: datetime | None = None,
    ) -> Authorization:
        """Record a new grant (history is kept; the newest grant wins)."""
        ...

    async def revoke(self, recipient: str, scope: str, *, at: datetime | None = None) -> int:
        """Mark every unrevoked grant for this scope revoked; returns how many."""
        ...

    async def list_authorizations(self, recipient: str | None = None) -> list[Authorization]:
        """Every grant, revoked or not, ordered by recipient, scope, grant time."""
        ...

    async def import_authorizations(self, rows: Sequence[Authorization]) -> int:
        """Add all rows in one transaction (all or nothing); returns how many."""
        ...

    async def ping(self) -> None:
        """Raise if the store cannot be reached (used by /readyz)."""
        ...

    async def close(self) -> None: ...


# --- validation shared by every backend, so they refuse exactly the same things ----------


def now() -> datetime:
    return datetime.now(UTC)


def check_scope(scope: str) -> str:
    if not _SCOPE.match(scope):
        raise ConsentError("scope: expected lower-case letters, digits and '-', up to 40")
    return scope


def check_category(category: str) -> str:
    """A category name or "all"; which names exist is the CLI's business, not the store's."""
    if not _SCOPE.match(category):
        raise ConsentError("category: expected lower-case letters, digits and '-', or 'all'")
    return category


def check_source(source: str) -> str:
    if source not in SOURCES:
        raise ConsentError(f"source: expected one of {', '.join(SOURCES)}")
    return source


def check_conditions(conditions: Iterable[str]) -> frozenset[str]:
    """Condition tags: lower-cased, inner whitespace collapsed, each one a short plain word."""
    out = set()
    for raw in conditions:
        tag = " ".join(raw.split()).lower()
        if not _TAG.match(tag):
            raise ConsentError(
                "condition: expected a lower-case name of up to 100 characters,"
                " starting with a letter or digit, without ';' or ','"
            )
        out.add(tag)
    return frozenset(out)


def check_form_ref(form_ref: str) -> str:
    ref = form_ref.strip()
    if not ref or len(ref) > 200 or any(ord(c) < 32 for c in ref):
        raise ConsentError("form_ref: expected 1 to 200 printable characters")
    return ref


def check_time(value: datetime, what: str) -> datetime:
    if value.tzinfo is None:
        raise ConsentError(f"{what}: expected a time with a time zone")
    return value.astimezone(UTC)


def check_authorization(row: Authorization) -> Authorization:
    """The row as the store keeps it: canonical address, validated fields, UTC times."""
    granted = check_time(row.granted, "granted")
    expires = None if row.expires is None else check_time(row.expires, "expires")
    revoked = None if row.revoked is None else check_time(row.revoked, "revoked")
    if expires is not None and expires <= granted:
        raise ConsentError("expires: expected a time after the grant")
    if revoked is not None and revoked < granted:
        raise ConsentError("revoked: expected a time at or after the grant")
    return Authorization(
        recipient=canonical(row.recipient),
        scope=check_scope(row.scope),
        conditions=check_conditions(row.conditions),
        granted=granted,
        expires=expires,
        revoked=revoked,
        form_ref=check_form_ref(row.form_ref),
    )


def check_optout(row: OptOut) -> OptOut:
    return OptOut(
        recipient=canonical(row.recipient),
        category=check_category(row.category),
        when=check_time(row.when, "when"),
        source=check_source(row.source),
        removed=None if row.removed is None else check_time(row.removed, "removed"),
    )
