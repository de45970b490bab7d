"""The learned scorer: shipped weights are what the training script reproduces, and load safely."""

from __future__ import annotations

import random
import subprocess
import sys
from pathlib import Path

import pytest

from relay.phi.features import DIM, features
from relay.phi.scorer import WEIGHTS, Scorer, ScorerError

ROOT = Path(__file__).resolve().parents[3]


# Retraining reads every training writer (~120k rows): ~40 s alone, minutes on a loaded
# machine, so it gets more than the suite's default 120 s.
@pytest.mark.timeout(420)
def test_retraining_reproduces_the_shipped_weights() -> None:
    # Seeded liblinear over the same rows and features: byte-identical int8 weights.
    done = subprocess.run(
        [sys.executable, str(ROOT / "tools" / "train_phi_scorer.py"), "--check"],
        capture_output=True,
        text=True,
        timeout=400,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "match the shipped file" in done.stdout


def test_shipped_weights_fit_the_budget() -> None:
    assert WEIGHTS.stat().st_size <= 5 * 1024 * 1024
    scorer = Scorer.load()
    assert 0 < scorer.thresholds.low <= scorer.thresholds.high < 1


def test_features_are_deterministic_and_bounded() -> None:
    one = features("Your A1C results are ready", ["r:health.result", "k:result"], ["<poss>"])
    assert one == features(
        "Your A1C results are ready", ["k:result", "r:health.result"], ["<poss>"]
    )
    assert all(0 <= i < DIM for i in one) and one == sorted(set(one))
    # Digits are shapes: the number itself does not change the features.
    assert features("MRN 00482913") == features("MRN 11593024")


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"not json\n", "not a scorer weights file"),
        (b'{"scale": 1, "bias": 0, "low": 0.5, "high": 0.8}\n' + b"\0" * 10, "expected"),
        (b'{"scale": 1}\n' + b"\0" * DIM, "not a scorer weights file"),
        # A hidden layer announced but its table cut short.
        (
            b'{"scale": 1, "bias": 0, "low": 0.5, "high": 0.8, "hidden": 2, "unit_scales": [1, 1],'
            b' "unit_biases": [0, 0], "unit_weights": [1, 1]}\n' + b"\0" * (DIM + 7),
            "not a scorer weights file",
        ),
    ],
)
def test_a_damaged_weights_file_is_a_clear_error(
    tmp_path: Path, content: bytes, message: str
) -> None:
    path = tmp_path / "scorer.bin"
    path.write_bytes(content)
    with pytest.raises(ScorerError, match=message):
        Scorer.load(path)
    with pytest.raises(ScorerError, match="cannot be read"):
        Scorer.load(tmp_path / "missing.bin")


# A number's digits are not evidence, only its shape: the n-grams write every digit as
# 0, and so must the word classes, or "Call 555-201-4999 about your visit" scored 0.41
# and "... 4123 ..." 0.58 (one clean, one replaced) with the same rules firing. Each
# template varies digits no rule validates (a phone's last four, an ID's, an amount's).
DIGIT_TEMPLATES = [
    "Call 555-201-{4} about your visit",
    "Callback 503.555.{4} re: the referral",
    "Warranty claim W-3{4} on the treadmill",
    "Invoice {4}-22 for the toner order",
    "Pago de ${1},{3}.00 recibido",
    "Ticket SR-22{4} closed",
    "Order 61{4}: lobby chairs backordered",
    "Re: ref {2}-{4}-{1}",
]


def _digits(rng: random.Random, n: int) -> str:
    return "".join(rng.choice("0123456789") for _ in range(n))


@pytest.mark.parametrize("template", DIGIT_TEMPLATES)
def test_a_numbers_digits_do_not_change_the_score(template: str) -> None:
    from relay.phi import default_detector
    from relay.phi.normalize import subject_texts

    rng = random.Random(template)
    detector = default_detector()
    seen = set()
    for _ in range(25):
        subject = template
        for k in (1, 2, 3, 4):
            subject = subject.replace(f"{{{k}}}", _digits(rng, k))
        judgement = detector.judge(subject_texts(subject))
        seen.add((judgement.tier, judgement.rules, judgement.score))
    assert len(seen) == 1, sorted(seen)
