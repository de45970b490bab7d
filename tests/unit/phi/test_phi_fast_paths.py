"""The detector's fast paths give exactly what the general code gives, for any text.

Each fast path (plain ASCII subjects skip decoding, whitespace collapsing and
accent folding) is checked against the general function it shortcuts, on every
subject of every corpus in tests/data and on seeded random texts built from the
characters the shortcuts test for (spaces, tabs, line breaks, encoded-word marks,
spaced-out letters, control and non-ASCII characters).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from pathlib import Path

import pytest

from relay.phi.normalize import _decoded_texts, _fold, _normalize, fold, normalize, subject_texts

DATA = Path(__file__).resolve().parents[2] / "data"
_ALPHABET = [*"ab CDe1 2  3\t\r\n=?QBq_:#([x", "\x0b", "\x1c", "\xa0", "é", "İ", "\u200b", " "]


def _corpus() -> list[str]:
    out = []
    for path in [*sorted(DATA.glob("*.tsv")), *sorted((DATA / "corpus").glob("w*.tsv"))]:
        lines = path.read_text(encoding="utf-8").split("\n")
        head = lines[0].split("\t")
        for line in lines[1:]:
            row = dict(zip(head, line.split("\t"), strict=False))
            out.extend(v for k, v in row.items() if k in ("subject", "raw") and v)
    return out


def _random(n: int = 4000) -> list[str]:
    rng = random.Random(8)
    texts = ["", " ", "a b c", " a b c ", "x\ty", "=?utf-8?q?a?=", "d i a b e t e s"]
    for _ in range(n):
        texts.append("".join(rng.choice(_ALPHABET) for _ in range(rng.randrange(0, 24))))
    return texts


TEXTS = _corpus() + _random()


@pytest.mark.parametrize(("fast", "general"), [(normalize, _normalize), (fold, _fold)])
def test_fast_path_equals_general_code(
    fast: Callable[[str], str], general: Callable[[str], str]
) -> None:
    differ = [t for t in TEXTS if fast(t) != general(t)]
    assert differ == []


def test_plain_subjects_skip_decoding_with_the_same_result() -> None:
    raw = [t.replace("\\r\\n", "\r\n") for t in TEXTS]
    differ = [t for t in raw if subject_texts(t) != _decoded_texts(t)]
    assert differ == []
