"""relay.limits on its own: session reserve, AUTH failure windows and bounds, DATA pace."""

from __future__ import annotations

import pytest

from relay.limits import (
    ACCOUNT_LOCKED,
    PAIR_LOCKED,
    SESSIONS_FULL,
    UNAUTH_FULL,
    AuthThrottle,
    DataPace,
    SessionLimiter,
    _Attempt,
)


def throttle(**kw: float) -> AuthThrottle:
    args = {"per_pair": 2, "per_account": 3, "per_address": 4, "window": 10.0, **kw}
    return AuthThrottle(**args)  # type: ignore[arg-type]


def test_failures_expire_after_the_window() -> None:
    t = throttle()
    for now in (0.0, 1.0):
        attempt = t.begin("10.0.0.1", "app", now)
        assert isinstance(attempt, _Attempt)
        t.fail(attempt)
    assert t.begin("10.0.0.1", "app", 2.0) == PAIR_LOCKED
    assert t.begin("10.0.0.1", "app", 9.9) == PAIR_LOCKED
    assert not isinstance(t.begin("10.0.0.1", "app", 10.5), str)  # the first one expired


def test_a_success_takes_back_only_its_own_pair() -> None:
    t = throttle(per_pair=3)
    for host in ("10.0.0.1", "10.0.0.2", "10.0.0.3"):
        attempt = t.begin(host, "app", 0.0)
        assert isinstance(attempt, _Attempt)
        t.fail(attempt)
    mine = t.begin("10.0.0.4", "app", 0.0)
    assert mine == ACCOUNT_LOCKED  # three failures for the account from three addresses
    ok = t.begin("10.0.0.1", "other", 0.0)
    assert not isinstance(ok, str)
    t.succeed(ok, 0.0)
    assert t.begin("10.0.0.5", "app", 0.0) == ACCOUNT_LOCKED  # not cleared by "other"


def test_tracking_is_bounded() -> None:
    t = throttle(per_pair=1000, per_account=1000, per_address=10**6, max_tracked=100)
    for n in range(1000):
        assert not isinstance(t.begin("10.0.0.1", f"user{n}", 0.0), str)
    assert len(t._order) <= 101
    assert sum(t._hosts.values()) <= 101


def test_reserve_is_kept_for_trusted_and_promoted_sessions() -> None:
    lim = SessionLimiter(total=4, per_client=10, reserved=2)
    assert lim.acquire("a", trusted=False) is None
    assert lim.acquire("a", trusted=False) is None
    assert lim.acquire("a", trusted=False) == UNAUTH_FULL
    assert lim.acquire("t", trusted=True) is None
    lim.promote()
    assert lim.acquire("a", trusted=False) is None
    assert lim.acquire("t", trusted=True) == SESSIONS_FULL
    lim.release("a", unauthenticated=True)
    assert lim.acquire("t", trusted=True) is None


@pytest.mark.parametrize(
    ("chunks", "expected"),
    [
        ([], 5.0),  # nothing sent: the idle timeout
        ([(1.0, 100)], 4.1),  # 100 bytes at 1000 B/s buy 0.1 s on the first deadline
        ([(1.0, 10_000)], 5.0),  # plenty, but never more than idle ahead of now (1 + 5 - 1)
        ([(4.0, 10), (4.9, 10)], 0.12),  # a trickle: the deadline barely moves
        ([(29.0, 10**9)], 1.0),  # the whole-transfer deadline (30 s) caps it
    ],
)
def test_data_pace(chunks: list[tuple[float, int]], expected: float) -> None:
    pace = DataPace.start(0.0, idle=5.0, min_rate=1000, total=30.0)
    left = pace.deadline
    for at, size in chunks:
        left = pace.received(size, at)
    assert left == pytest.approx(expected, abs=0.01)
