"""AUTH limits under every interleaving of parallel logins, in one worker and across two.

Postfix's smtp processes log in with one account from one address, many at once, and a
guesser can do the same. Whatever order the attempts start and settle in: a right
password is never refused (it may only wait, `AUTH_BUSY`), no more than `per_pair`
unchecked attempts of a pair are ever under way, and every wrong password is counted,
whichever success settles beside it. The shared throttle is driven through two
instances on one counter file, as two workers would.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from pathlib import Path

import pytest

from relay.limits import AUTH_BUSY, PAIR_LOCKED, AuthThrottle, _Attempt
from relay.sharedlimits import SharedAuthThrottle, SharedCounters

HOST, ACCOUNT = "127.0.4.9", "postfix"
LIMITS = {"per_pair": 3, "per_account": 5, "per_address": 8, "window": 300.0}

Workers = Callable[[Path], list[AuthThrottle]]


def one_worker(_: Path) -> list[AuthThrottle]:
    return [AuthThrottle(**LIMITS)]  # type: ignore[arg-type]


def two_workers(tmp_path: Path) -> list[AuthThrottle]:
    path = tmp_path / "limits.sqlite"
    SharedCounters.create(path)
    return [SharedAuthThrottle(SharedCounters(path), **LIMITS) for _ in range(2)]


def run(
    throttles: list[AuthThrottle], rights: int, wrongs: int, seed: int
) -> tuple[dict[str, int], int]:
    """Start and settle `rights` right and `wrongs` wrong logins in a random order; a
    busy one begins again later. Returns what each kind of attempt finally got, and how
    many failures must still stand (those settled after the last success)."""
    rng = random.Random(seed)
    waiting = [("right", n) for n in range(rights)] + [("wrong", n) for n in range(wrongs)]
    flying: list[tuple[str, AuthThrottle, _Attempt]] = []
    got: dict[str, int] = {}
    standing = 0
    now = 0.0
    while waiting or flying:
        now += 0.001
        start = waiting and (not flying or rng.random() < 0.5)
        if start:
            kind, n = waiting.pop(rng.randrange(len(waiting)))
            throttle = rng.choice(throttles)
            attempt = throttle.begin(HOST, ACCOUNT, now)
            if attempt == AUTH_BUSY:
                assert flying, "busy with nothing in flight"
                waiting.append((kind, n))
            elif isinstance(attempt, str):
                got[f"{kind} {attempt[:9]}"] = got.get(f"{kind} {attempt[:9]}", 0) + 1
            else:
                flying.append((kind, throttle, attempt))
            assert len(flying) <= LIMITS["per_pair"]
        else:
            kind, throttle, attempt = flying.pop(rng.randrange(len(flying)))
            if kind == "right":
                throttle.succeed(attempt, now)
                standing = 0
            else:
                throttle.fail(attempt)
                standing += 1
            got[f"{kind} done"] = got.get(f"{kind} done", 0) + 1
    return got, standing


@pytest.mark.parametrize("workers", [one_worker, two_workers], ids=["one", "two"])
@pytest.mark.parametrize("seed", range(40))
def test_parallel_right_logins_only_ever_wait(workers: Workers, tmp_path: Path, seed: int) -> None:
    got, _ = run(workers(tmp_path), rights=10, wrongs=0, seed=seed)
    assert got == {"right done": 10}


@pytest.mark.parametrize("workers", [one_worker, two_workers], ids=["one", "two"])
@pytest.mark.parametrize("seed", range(40))
def test_every_wrong_password_counts_beside_right_ones(
    workers: Workers, tmp_path: Path, seed: int
) -> None:
    throttles = workers(tmp_path)
    got, standing = run(throttles, rights=4, wrongs=2, seed=seed)
    assert got == {"wrong done": 2, "right done": 4}
    # Exactly the failures settled after the last success still count: that many fewer
    # further guesses reach the pair's limit.
    replies = []
    for n in range(LIMITS["per_pair"] - standing + 1):
        attempt = throttles[n % len(throttles)].begin(HOST, ACCOUNT, 1.0 + n)
        replies.append(attempt if isinstance(attempt, str) else "tried")
        if isinstance(attempt, _Attempt):
            throttles[0].fail(attempt)
    assert replies == ["tried"] * (LIMITS["per_pair"] - standing) + [PAIR_LOCKED]


@pytest.mark.parametrize("workers", [one_worker, two_workers], ids=["one", "two"])
def test_a_failure_settling_after_a_success_still_counts(workers: Workers, tmp_path: Path) -> None:
    # Worker A's right login and worker B's guess are in flight together; A settles
    # first. B's failure must not vanish with the success that cleared the pair.
    throttles = workers(tmp_path)
    a, b = throttles[0], throttles[-1]
    right, wrong = a.begin(HOST, ACCOUNT, 0.0), b.begin(HOST, ACCOUNT, 0.0)
    assert isinstance(right, _Attempt) and isinstance(wrong, _Attempt)
    a.succeed(right, 0.1)
    b.fail(wrong)
    for n in range(2):
        guess = a.begin(HOST, ACCOUNT, 1.0 + n)
        assert isinstance(guess, _Attempt)
        a.fail(guess)
    assert b.begin(HOST, ACCOUNT, 3.0) == PAIR_LOCKED  # 1 + 2 failures: the pair's limit
