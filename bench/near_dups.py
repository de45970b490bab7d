"""Near-duplicates between a held-out set and the training subjects (the labelling guide:
"check for near-duplicates across the split, for example a difflib ratio of 0.6 or more").

A held-out subject that is nearly a training subject measures memory, not
generalisation, so `bench/phi_eval.py --split heldout` also prints its figures
without them. Comparing every held-out subject with every training subject is
~5 * 10^8 difflib calls; instead a training subject is a *candidate* when it shares a
word or a word pair that at most `max_df` training subjects have (common words like
"your" or "appointment" alone pick no candidates, but their pairs usually do), and
only candidates are compared with `difflib.SequenceMatcher` (after its two quick
upper bounds). Text is compared folded: lower case, digits as 0, spaces collapsed,
so two subjects that differ only in a name's case or a number are the same text.

    .venv/bin/python bench/near_dups.py [heldout|validation]   # counts per writer, no text
"""

from __future__ import annotations

import difflib
import itertools
import re
import sys
from collections import defaultdict
from collections.abc import Sequence

_WORD = re.compile(r"[^\W_]+", re.UNICODE)
_DIGIT = re.compile(r"\d")


CUTS = (0.6, 0.8, 0.9, 1.0)


def _fold(text: str) -> str:
    return " ".join(_DIGIT.sub("0", text.casefold()).split())


def _keys(folded: str) -> set[str]:
    words = _WORD.findall(folded)
    return set(words) | {f"{a} {b}" for a, b in itertools.pairwise(words)}


def best_ratios(
    queries: Sequence[str],
    pool: Sequence[str],
    enough: float = 1.0,
    max_df: int = 500,
    max_candidates: int = 300,
) -> list[float]:
    """For each query, the highest difflib ratio to a candidate pool text (0.0 when there
    is no candidate), stopping early at `enough`."""
    folded_pool = [_fold(p) for p in pool]
    index: dict[str, list[int]] = defaultdict(list)
    for i, text in enumerate(folded_pool):
        for key in _keys(text):
            index[key].append(i)
    out = []
    for query in queries:
        q = _fold(query)
        shared: dict[int, int] = defaultdict(int)
        for key in _keys(q):
            posting = index.get(key, ())
            if len(posting) <= max_df:
                for i in posting:
                    shared[i] += 1
        ranked = sorted(shared, key=lambda i: (-shared[i], i))[:max_candidates]
        matcher = difflib.SequenceMatcher(autojunk=False)
        matcher.set_seq2(q)
        best = 0.0
        for i in ranked:
            matcher.set_seq1(folded_pool[i])
            if matcher.real_quick_ratio() > best and matcher.quick_ratio() > best:
                best = max(best, matcher.ratio())
                if best >= enough:
                    break
        out.append(best)
    return out


def near_duplicates(
    queries: Sequence[str],
    pool: Sequence[str],
    ratio: float = 0.6,
    max_df: int = 500,
    max_candidates: int = 300,
) -> list[bool]:
    """For each query, whether some pool text has a difflib ratio >= `ratio` with it."""
    best = best_ratios(queries, pool, ratio, max_df, max_candidates)
    return [b >= ratio for b in best]


def main() -> int:
    from phi_eval import training_subjects, writer_rows  # bench/ is on sys.path as a script

    part = sys.argv[1] if len(sys.argv) > 1 else "heldout"
    train = training_subjects()
    held = writer_rows(part)
    best = best_ratios([r["subject"] for r in held], train)
    print("subjects with a training subject at difflib ratio >= 0.6 / 0.8 / 0.9 / 1.0")
    for writer in [*sorted({r["writer"] for r in held}), "all"]:
        mine = [b for r, b in zip(held, best, strict=True) if writer in ("all", r["writer"])]
        counts = " / ".join(str(sum(b >= c for b in mine)) for c in CUTS)
        print(f"  {writer:<6} {len(mine):>5} subjects: {counts}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
