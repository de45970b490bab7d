"""Long subjects: detection time linear in length for every shape an attacker might send,
and PHI at the end of a 64 KiB subject still found.

Timing compares against a baseline measured in the same test (the same shape at 4 KiB),
so a shared, noisy machine moves both; the absolute 50 ms figure is printed by
`bench/phi_speed.py --shapes`, not asserted here.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable

import pytest

from relay.phi import default_detector
from relay.phi.api import CLEAN
from relay.phi.normalize import subject_texts

_WORDS = [
    "clinic",
    "newsletter",
    "parking",
    "schedule",
    "holiday",
    "meeting",
    "agenda",
    "office",
    "hours",
    "printer",
    "coffee",
    "badge",
    "update",
    "reminder",
    "training",
    "module",
    "survey",
    "quarterly",
    "report",
    "budget",
    "team",
    "welcome",
    "lunch",
    "building",
    "elevator",
    "closed",
    "notice",
    "policy",
    "handbook",
    "calendar",
    "invite",
]


def _fold(words: list[str]) -> str:
    """Words folded as a long header is: eight to a line, CRLF and a space between."""
    return "\r\n ".join(" ".join(words[i : i + 8]) for i in range(0, len(words), 8))


def _words(size: int, make: Callable[[random.Random], str]) -> str:
    rnd = random.Random(7)
    words: list[str] = []
    total = 0
    while total < size:
        words.append(make(rnd))
        total += len(words[-1]) + 1
    return _fold(words)[:size]


# Every shape of issue 8: one repeated name, random words, digits, one huge word, mixed
# scripts, many encoded words, many invisible characters (and leetspeak). All but the
# repeated name never repeat a window, so every window is judged.
SHAPES: dict[str, Callable[[int], str]] = {
    "repeated name": lambda n: _fold(["Jane", "Okafor"] * (n // 10 + 1))[:n],
    "random words": lambda n: _words(n, lambda r: r.choice(_WORDS) + r.choice(["", "s", "ed"])),
    "digits": lambda n: _words(n, lambda r: str(r.randrange(10 ** r.randrange(1, 7)))),
    "one huge word": lambda n: "".join(random.Random(7).choices("abcdefghij", k=n)),
    "mixed scripts": lambda n: _words(
        n,
        lambda r: "".join(
            r.choice("ae\u0430\u0431\u0434\u0397\u0399\u8a3a\u65ad") for _ in range(6)
        ),
    ),
    "encoded words": lambda n: _words(
        n, lambda r: f"=?UTF-8?Q?{r.choice(_WORDS)}_=C3=A9{r.randrange(1000)}?="
    ),
    "invisible characters": lambda n: _words(
        n, lambda r: "\u200b".join(r.choice(_WORDS)) + "\u00ad"
    ),
    "leetspeak": lambda n: _words(
        n,
        lambda r: r.choice(_WORDS).translate(str.maketrans("aeio", "4310")) + str(r.randrange(10)),
    ),
}


def _cpu(raw: str) -> float:
    detector = default_detector()
    best = math.inf
    for _ in range(3):  # the least of three: a linear cost is the least one seen
        started = time.process_time()
        detector.judge(subject_texts(raw))
        best = min(best, time.process_time() - started)
    return best


@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_a_64k_subject_costs_at_most_linear_time_in_every_shape(shape: str) -> None:
    # 16 times the text: a linear cost is about 16 times the time, a quadratic one 256.
    # The bound leaves room for a noisy machine (the baseline is measured in the same
    # test, interleaved, so load moves both) and for the larger text's cache misses: the
    # scorer rows 64 KiB of random words touch do not fit in the caches, and with a test
    # suite on the other core that alone took "random words" to 27x (24x was the bound).
    small_text, big_text = SHAPES[shape](4096), SHAPES[shape](65536)
    assert len(big_text) == 65536
    default_detector().judge(subject_texts(small_text))  # warm: word lists, weights
    small, big = math.inf, math.inf
    for _ in range(2):
        small = min(small, _cpu(small_text))
        big = min(big, _cpu(big_text))
    assert big < 48 * max(small, 1e-4), (shape, small, big)


# A decisive identifier (a date of birth with its cue) and a health fact about a named
# person, written over the last characters of the subject.
_TAIL = " Jane Okafor DOB 03/14/1962 your HIV test came back positive"


@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_phi_at_the_end_of_a_64k_subject_is_found(shape: str) -> None:
    detector = default_detector()
    body = SHAPES[shape](65536)
    raw = body[: 65536 - len(_TAIL)] + _TAIL
    assert detector.judge(subject_texts(_TAIL)).tier != CLEAN
    assert detector.judge(subject_texts(raw)).tier != CLEAN


def test_phi_at_the_end_of_64k_of_clean_text_is_found() -> None:
    # A body judged clean in every window (so no earlier window decides): the tail's
    # window is judged too.
    detector = default_detector()
    rnd = random.Random(3)
    lines = [
        f"{rnd.choice(['Parking', 'Cafeteria', 'Holiday', 'Printer'])} update "
        f"{rnd.choice(['this week', 'on Friday', 'next month'])}"
        for _ in range(4000)
    ]
    body = _fold(lines)[: 65536 - len(_TAIL)]
    assert detector.judge(subject_texts(body)).tier == CLEAN
    assert detector.judge(subject_texts(body + _TAIL)).tier != CLEAN
