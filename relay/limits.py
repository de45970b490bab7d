"""Bookkeeping for the SMTP listener's limits: session slots, AUTH failures, DATA pace; no I/O.

Kept apart from the protocol so each rule can be read, and tested, on its own.
"""

from __future__ import annotations

from dataclasses import dataclass

SESSIONS_FULL = "421 4.7.0 Too many connections; try again later"
CLIENT_FULL = "421 4.7.0 Too many connections from your address; try again later"
UNAUTH_FULL = (
    "421 4.7.0 Too many unauthenticated connections; try again later "
    "or connect from a trusted network"
)


class SessionLimiter:
    """Concurrent sessions, in total and per client address, with a share held back.

    `reserved` slots are only for clients from trusted networks and sessions that have
    authenticated, so clients that have not authenticated cannot fill every slot. A
    session that authenticates leaves the unauthenticated count (`promote`).
    """

    def __init__(self, total: int, per_client: int, reserved: int = 0) -> None:
        self.total, self.per_client = total, per_client
        self.reserved = min(reserved, max(total - 1, 0))
        self.active = 0
        self.unauthenticated = 0
        self.by_client: dict[str, int] = {}

    def acquire(self, host: str, *, trusted: bool = True) -> str | None:
        if self.active >= self.total:
            return SESSIONS_FULL
        if self.by_client.get(host, 0) >= self.per_client:
            return CLIENT_FULL
        if not trusted and self.unauthenticated >= self.total - self.reserved:
            return UNAUTH_FULL
        self.active += 1
        if not trusted:
            self.unauthenticated += 1
        self.by_client[host] = self.by_client.get(host, 0) + 1
        return None

    def promote(self) -> None:
        """An unauthenticated session authenticated: it may now use the reserve."""
        self.unauthenticated = max(self.unauthenticated - 1, 0)

    def release(self, host: str, *, unauthenticated: bool = False) -> None:
        self.active -= 1
        if unauthenticated:
            self.unauthenticated = max(self.unauthenticated - 1, 0)
        left = self.by_client.get(host, 1) - 1
        if left:
            self.by_client[host] = left
        else:
            self.by_client.pop(host, None)


@dataclass
class DataPace:
    """The deadline for the next byte of one DATA transfer.

    As Postfix does with `smtpd_min_data_rate`: the client starts with `idle` seconds;
    every chunk it sends buys `len / min_rate` more seconds, never more than `idle`
    ahead of now, and never past the `total` deadline of the whole transfer. A client
    that stops is cut after `idle`; one that trickles below the rate is cut soon after;
    none can hold a session for longer than `total`.
    """

    idle: float
    min_rate: int
    hard: float
    deadline: float

    @classmethod
    def start(cls, now: float, *, idle: float, min_rate: int, total: float) -> DataPace:
        hard = now + total
        return cls(idle, min_rate, hard, min(now + idle, hard))

    def received(self, size: int, now: float) -> float:
        """Seconds from `now` until the client must have sent more."""
        credit = self.deadline + size / self.min_rate if self.min_rate else now + self.idle
        self.deadline = min(now + self.idle, credit, self.hard)
        return self.deadline - now
