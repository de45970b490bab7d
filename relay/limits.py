"""Bookkeeping for the SMTP listener's limits: session slots, AUTH failures, DATA pace; no I/O.

Kept apart from the protocol so each rule can be read, and tested, on its own.
"""

from __future__ import annotations

from collections import Counter, deque
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


PAIR_LOCKED = "454 4.7.0 Too many failed logins from your address; try again later"
ADDRESS_LOCKED = PAIR_LOCKED
AUTH_WAIT_POLL = 0.02
"""Seconds between looks at a pair's attempts in flight (a password check takes longer)."""
ACCOUNT_LOCKED = "454 4.7.0 Too many failed logins for this account; try again later"
AUTH_BUSY = "454 4.7.0 Too many logins in progress; try again later"
"""`begin`: at a limit only through attempts still being checked; wait and begin again."""
_MAX_NAME = 128  # longer names cannot exist (users file rule); keys stay small


@dataclass(eq=False)
class _Attempt:
    at: float
    host: str
    account: str
    live: bool = True
    settled: bool = False  # the password was checked and was wrong (in flight until then)
    ident: int = 0  # its row in the shared counters (`relay.sharedlimits`)


class AuthThrottle:
    """Failed AUTH attempts in a sliding window of `window` seconds, counted three ways.

    Per (address, account) (`per_pair`): one guesser, one account. Per account
    (`per_account`): guesses spread over many addresses. Per address (`per_address`,
    higher): one address trying many accounts, without one broken app locking out every
    other account on its host. An attempt is counted when it starts (`begin`), before
    the password is checked, so parallel attempts cannot all pass the check. A limit
    reached only through attempts still in flight answers `AUTH_BUSY` (the caller waits
    and begins again): parallel right logins, as Postfix's smtp processes make, are not
    refused, and no more than the limit's unchecked guesses are ever under way. The
    decision is one step (one transaction in `relay.sharedlimits`), so nothing can
    settle between "at the limit" and "still in flight". A success takes back only its
    pair's settled failures and itself. A pair that logged in recently is not held to
    the per-account limit, so a guesser elsewhere cannot lock out the real client.
    """

    def __init__(
        self,
        *,
        per_pair: int,
        per_account: int,
        per_address: int,
        window: float,
        max_tracked: int = 100_000,
    ) -> None:
        self.per_pair, self.per_account, self.per_address = per_pair, per_account, per_address
        self.window, self.max_tracked = window, max_tracked
        self._order: deque[_Attempt] = deque()
        self._pairs: dict[tuple[str, str], list[_Attempt]] = {}
        # Live attempts (in flight or failed), and of those the failed ones.
        self._hosts: Counter[str] = Counter()
        self._accounts: Counter[str] = Counter()
        self._hosts_failed: Counter[str] = Counter()
        self._accounts_failed: Counter[str] = Counter()
        self._proven: dict[tuple[str, str], float] = {}

    def _prune(self, now: float) -> None:
        while self._order and (
            now - self._order[0].at >= self.window or len(self._order) > self.max_tracked
        ):
            self._forget(self._order.popleft())
        # Oldest first (succeed re-inserts), so the stale and the surplus are at the front.
        while self._proven:
            pair, at = next(iter(self._proven.items()))
            if now - at < self.window and len(self._proven) <= self.max_tracked:
                break
            del self._proven[pair]

    def _forget(self, attempt: _Attempt) -> None:
        if not attempt.live:
            return
        attempt.live = False
        pair = (attempt.host, attempt.account)
        left = [a for a in self._pairs.get(pair, []) if a.live]
        if left:
            self._pairs[pair] = left
        else:
            self._pairs.pop(pair, None)
        counters = [(self._hosts, attempt.host), (self._accounts, attempt.account)]
        if attempt.settled:
            counters += [
                (self._hosts_failed, attempt.host),
                (self._accounts_failed, attempt.account),
            ]
        for counter, key in counters:
            counter[key] -= 1
            if counter[key] <= 0:
                del counter[key]

    def address_locked(self, host: str, now: float) -> str | None:
        """Checked before the exchange: an address over its ceiling of failures is refused
        at once (attempts in flight wait in `begin`)."""
        self._prune(now)
        return ADDRESS_LOCKED if self._hosts_failed[host] >= self.per_address else None

    def begin(self, host: str, account: str, now: float) -> _Attempt | str:
        """Count an attempt before the password is checked, or say why it is refused
        (`AUTH_BUSY`: only attempts in flight stand in the way; begin again shortly)."""
        account = account[:_MAX_NAME]
        self._prune(now)
        pair = (host, account)
        attempts = self._pairs.get(pair, ())
        counts = [
            (self._hosts_failed[host], self._hosts[host], self.per_address, ADDRESS_LOCKED),
            (sum(a.settled for a in attempts), len(attempts), self.per_pair, PAIR_LOCKED),
        ]
        if pair not in self._proven:
            counts.append(
                (
                    self._accounts_failed[account],
                    self._accounts[account],
                    self.per_account,
                    ACCOUNT_LOCKED,
                )
            )
        refused = refusal(counts)
        if refused is not None:
            return refused
        attempt = _Attempt(now, host, account)
        self._order.append(attempt)
        self._pairs.setdefault(pair, []).append(attempt)
        self._hosts[host] += 1
        self._accounts[account] += 1
        return attempt

    def fail(self, attempt: _Attempt) -> None:
        """The password was wrong: the attempt is a failure now, no longer in flight."""
        if attempt.live and not attempt.settled:
            self._hosts_failed[attempt.host] += 1
            self._accounts_failed[attempt.account] += 1
        attempt.settled = True

    def in_flight(self, host: str, account: str) -> bool:
        """True while an attempt of this pair is still being checked."""
        pair = (host, account[:_MAX_NAME])
        return any(a.live and not a.settled for a in self._pairs.get(pair, ()))

    def succeed(self, attempt: _Attempt, now: float) -> None:
        """The password was right: this pair's earlier failures were its own typos.

        Attempts of the pair still in flight are left alone: if one of them is a wrong
        password it must still count when it fails.
        """
        pair = (attempt.host, attempt.account)
        for earlier in list(self._pairs.get(pair, [])):
            if earlier.settled or earlier is attempt:
                self._forget(earlier)
        self._proven.pop(pair, None)
        self._proven[pair] = now


def refusal(counts: list[tuple[int, int, int, str]]) -> str | None:
    """The reply for the first limit reached by (failed, failed + in flight, limit, reply),
    `AUTH_BUSY` if no limit is reached by failures alone but one is with those in flight."""
    for failed, _, limit, reply in counts:
        if failed >= limit:
            return reply
    if any(live >= limit for _, live, limit, _ in counts):
        return AUTH_BUSY
    return None
