"""The consent store interface: authorizations and opt-outs, whatever the backend."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Protocol


@dataclass(frozen=True, slots=True)
class Authorization:
    recipient: str
    scope: str
    conditions: frozenset[str]
    granted: datetime
    expires: datetime | None
    revoked: datetime | None
    form_ref: str


@dataclass(frozen=True, slots=True)
class OptOut:
    recipient: str
    category: str
    when: datetime
    source: str


class ConsentStore(Protocol):
    async def authorization(
        self, recipient: str, scope: str, at: datetime
    ) -> Authorization | None:
        """The current (granted, unexpired, unrevoked) authorization for `scope`, if any."""
        ...

    async def opted_out(self, recipient: str, category: str) -> bool:
        """True when the recipient opted out of this category or of all."""
        ...

    async def add_optout(self, recipient: str, category: str, source: str) -> None: ...

    async def ping(self) -> None:
        """Raise if the store cannot be reached (used by /readyz)."""
        ...

    async def close(self) -> None: ...
