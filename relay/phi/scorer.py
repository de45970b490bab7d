"""The learned scorer: a hashed n-gram linear model, weights shipped in data/scorer.bin.

Inference is plain Python: the subject's hashed features (relay.phi.features) index
a table of int8 weights, their sum times the scale plus the bias is the log-odds.
The file is written by tools/train_phi_scorer.py (seeded, reproducible: a test
retrains and compares); its header also carries the tier thresholds, which are set
on the validation writers only (see docs/phi-detection.md, "Retraining").
"""

from __future__ import annotations

import array
import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import cache
from operator import itemgetter
from pathlib import Path

from relay.phi.features import DIM, feature_set

WEIGHTS = Path(__file__).with_name("data") / "scorer.bin"
_FLIP_TOP_BIT = bytes(b ^ 0x80 for b in range(256))


class ScorerError(Exception):
    """The weights file is missing or damaged (message names the file, never text)."""


@dataclass(frozen=True, slots=True)
class Thresholds:
    """Probability cut-offs: below `low` clean, from `low` replace, from `high` refuse."""

    low: float
    high: float


class Scorer:
    def __init__(self, weights: array.array[int], scale: float, bias: float, th: Thresholds):
        if len(weights) != DIM:
            raise ScorerError(f"scorer weights: expected {DIM} entries, got {len(weights)}")
        # The weights plus 128, one byte each (int8 two's complement + 128 is the byte
        # with its top bit flipped): summed through itemgetter in a third of the time
        # of indexing an array one by one.
        self._biased = weights.tobytes().translate(_FLIP_TOP_BIT)
        self.scale = scale
        self.bias = bias
        self.thresholds = th

    def log_odds(
        self,
        view: str,
        rules: Iterable[str] = (),
        classes: Sequence[str] = (),
        folded: str | None = None,
    ) -> float:
        """`folded` is `fold(view)` when the caller has it (saves folding again)."""
        found = feature_set(view, rules, classes, folded)
        if len(found) > 1:  # itemgetter of one index returns the item, not a tuple
            biased: tuple[int, ...] = itemgetter(*found)(self._biased)
        else:
            biased = tuple(self._biased[i] for i in found)
        return (sum(biased) - 128 * len(found)) * self.scale + self.bias

    @property
    def _w(self) -> array.array[int]:
        """The int8 weights as loaded (the training script compares them)."""
        weights = array.array("b")
        weights.frombytes(self._biased.translate(_FLIP_TOP_BIT))
        return weights

    def probability(
        self,
        view: str,
        rules: Iterable[str] = (),
        classes: Sequence[str] = (),
        folded: str | None = None,
    ) -> float:
        z = self.log_odds(view, rules, classes, folded)
        return 1.0 / (1.0 + math.exp(-z)) if z > -40 else 0.0

    @staticmethod
    def load(path: Path = WEIGHTS) -> Scorer:
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise ScorerError(f"{path}: cannot be read ({exc.strerror})") from exc
        head, _sep, body = data.partition(b"\n")
        try:
            meta = json.loads(head)
            weights = array.array("b")
            weights.frombytes(body)
            th = Thresholds(float(meta["low"]), float(meta["high"]))
            return Scorer(weights, float(meta["scale"]), float(meta["bias"]), th)
        except (ValueError, KeyError, TypeError) as exc:
            raise ScorerError(f"{path}: not a scorer weights file ({type(exc).__name__})") from exc


def write(path: Path, weights: bytes, scale: float, bias: float, th: Thresholds) -> None:
    """Write a weights file (used by the training script)."""
    meta = {"dim": DIM, "scale": scale, "bias": bias, "low": th.low, "high": th.high}
    path.write_bytes(json.dumps(meta, sort_keys=True).encode() + b"\n" + weights)


@cache
def default_scorer() -> Scorer | None:
    """The shipped scorer, or None before the first training (rules only)."""
    if not WEIGHTS.exists():
        return None
    return Scorer.load(WEIGHTS)
