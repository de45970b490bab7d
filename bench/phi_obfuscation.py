"""How often an obfuscation or encoding changes the subject detector's verdict.

    .venv/bin/python bench/phi_obfuscation.py                 # 400 subjects per transform
    .venv/bin/python bench/phi_obfuscation.py --per 2000 --seed 7
    .venv/bin/python bench/phi_obfuscation.py --only leetspeak --examples 5

Each transform of tests/support/obfuscate.py (the labelling guide's obfuscations,
RFC 2047 encodings and pairs of them) is applied to a seeded sample of the plain
subjects of the train and validation writers (never the held-out or spent ones), and
the tier (phi or not) of `judge(subject_texts(raw))` is compared with that of the
plain text a reader sees. Printed per transform: subjects tried, disagreements (PHI
lost, PHI gained) and how many canonical texts differ from the plain one's (a cause
of disagreement). `--examples` prints a few disagreeing pairs (synthetic corpus text)
for debugging.
"""

from __future__ import annotations

import argparse
import random
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from relay.phi import default_detector  # noqa: E402
from relay.phi.normalize import subject_texts  # noqa: E402
from tests.support.obfuscate import ALL, corpus_subjects  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--per", type=int, default=400, help="subjects per transform")
    parser.add_argument("--seed", type=int, default=20261201)
    parser.add_argument("--only", action="append", help="transforms to run (default all)")
    parser.add_argument("--examples", type=int, default=0, help="disagreeing pairs to print")
    args = parser.parse_args()
    detector = default_detector()
    subjects = [s for _w, s in corpus_subjects()]
    tier: dict[str, bool] = {}

    def phi(raw: str) -> bool:
        if raw not in tier:
            tier[raw] = detector.judge(subject_texts(raw)).phi
        return tier[raw]

    total = [0, 0, 0]
    head = ("transform", "n", "differ", "lost", "gained", "rate", "canon≠")
    print("{:42} {:>5} {:>6} {:>5} {:>6} {:>7} {:>7}".format(*head))
    for name, transform in ALL.items():
        if args.only and name not in args.only:
            continue
        rng = random.Random(f"{args.seed}:{name}")
        order = rng.sample(range(len(subjects)), len(subjects))
        n = lost = gained = canon = 0
        shown = 0
        for i in order:
            if n >= args.per:
                break
            got = transform(subjects[i], rng)
            if got is None:
                continue
            reference, raw = got
            n += 1
            want, have = phi(reference), phi(raw)
            if subject_texts(raw)[0] != subject_texts(reference)[0]:
                canon += 1
            if want != have:
                lost += want
                gained += have
                if shown < args.examples:
                    shown += 1
                    print(f"    {'lost' if want else 'gained'}: {reference!r}\n      raw {raw!r}")
                    print(f"      canon {subject_texts(raw)!r}")
        total = [total[0] + n, total[1] + lost, total[2] + gained]
        rate = (lost + gained) / n if n else 0.0
        print(f"{name:42} {n:5} {lost + gained:6} {lost:5} {gained:6} {rate:7.2%} {canon:7}")
    n, lost, gained = total
    print(
        f"{'all':42} {n:5} {lost + gained:6} {lost:5} {gained:6} {(lost + gained) / max(n, 1):7.2%}"
    )


if __name__ == "__main__":
    main()
