"""bench/near_dups.py: which held-out subjects nearly repeat a training subject."""

from __future__ import annotations

import difflib
import importlib.util
import random
from pathlib import Path

_PATH = Path(__file__).resolve().parents[2] / "bench" / "near_dups.py"
_spec = importlib.util.spec_from_file_location("near_dups", _PATH)
assert _spec and _spec.loader
near_dups = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(near_dups)

POOL = [
    "Your lab results from Dr. Okafor are ready",
    "Quarterly compliance training due Friday",
    "Invoice 88213 for October supplies",
    "Appointment reminder",
    "Welcome to the new patient portal",
]


def test_a_reworded_or_renumbered_subject_is_a_near_duplicate() -> None:
    queries = [
        "your lab results from dr. mensah are ready",  # another name, same sentence
        "Invoice 12345 for November supplies",  # other numbers and month
        "APPOINTMENT REMINDER!",  # case and punctuation
        "Quarterly compliance training is due Friday",  # one word added
    ]
    assert near_dups.near_duplicates(queries, POOL) == [True, True, True, True]


def test_a_new_subject_is_not() -> None:
    queries = [
        "Biopsy scheduled for Tuesday at 3 pm",
        "Parking garage closed this weekend",
        "Ihre Rechnung",
        "",
    ]
    assert near_dups.near_duplicates(queries, POOL) == [False, False, False, False]


def test_it_agrees_with_comparing_every_pair() -> None:
    """On random word salads, the candidate index finds what an exhaustive difflib scan
    finds (the index only skips pairs that share no word or word pair)."""
    rng = random.Random(5)
    letters = "abcdefghijklmnopqrstuvwxyz"
    words = ["".join(rng.choices(letters, k=6)) for _ in range(60)]
    pool = [" ".join(rng.choices(words, k=rng.randint(2, 8))) for _ in range(300)]
    queries = [" ".join(rng.choices(words, k=rng.randint(2, 8))) for _ in range(150)]
    queries += [p.replace(p.split()[0], "zz", 1) for p in pool[:50]]

    def exhaustive(q: str) -> bool:
        fq = near_dups._fold(q)
        return any(
            difflib.SequenceMatcher(None, near_dups._fold(p), fq, autojunk=False).ratio() >= 0.6
            for p in pool
        )

    want = [exhaustive(q) for q in queries]
    got = near_dups.near_duplicates(queries, pool, max_candidates=len(pool))
    assert got == want
    assert 10 < sum(want) < len(queries)  # both outcomes occur
