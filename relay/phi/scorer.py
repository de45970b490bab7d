"""The learned scorer: hashed n-grams, a linear part and a small hidden layer (data/scorer.bin).

The subject's hashed features (relay.phi.features) index two int8 tables. The linear
("wide") part is a sum of one weight per feature, times its scale, plus the bias. The
hidden part sums a row of int8 weights per feature (an embedding bag), scales each
unit, adds its bias, applies ReLU and takes a weighted sum: it learns which words go
together ("on" + a medicine + an audience word), which a linear model cannot. Their
sum is the log-odds. Inference is plain Python: each row of the hidden table is one
integer with a 32-bit lane per unit (the weight plus 128), so summing a subject's rows
is one `sum` of integers, and the lanes are read back with one `struct.unpack`. The
file is written by
tools/train_phi_scorer.py (seeded, reproducible: a test retrains and compares); its
header also carries the tier thresholds, which are set on the validation writers only
(see docs/phi-detection.md, "Retraining").
"""

from __future__ import annotations

import array
import json
import math
import struct
from collections.abc import Iterable, Iterator, Sequence
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


class _Rows(list[int | None]):
    """Each bucket's weights as one integer, built on first use (start-up stays quick).

    Lane 0 (32 bits) of row i holds the wide weight plus 128, lane 1 + j hidden unit j's
    weight plus 128, so one `sum` over a subject's rows sums every lane at once, each in
    its own lane while fewer than 2**32 / 255 rows are summed (16 million features; a
    subject is judged in windows of 400 characters). A list, not a dict: the rows a
    corpus touches do not fit in the processor's caches, and a list index is one memory
    read fewer than a dict probe.
    """

    __slots__ = ("_table", "_units", "_wide")

    def __init__(self, wide: bytes, table: bytes, units: int) -> None:
        super().__init__([None] * DIM)
        self._wide = wide
        self._table = table
        self._units = units

    def build(self, found: Iterable[int]) -> None:
        """Build the rows of `found` that are not built yet."""
        u = self._units
        for i in found:
            if self[i] is None:
                lanes = bytearray(4 * (u + 1))
                lanes[0] = self._wide[i]
                if u:
                    lanes[4::4] = self._table[i * u : (i + 1) * u].translate(_FLIP_TOP_BIT)
                self[i] = int.from_bytes(lanes, "little")


class Hidden:
    """The hidden layer: `table` (DIM rows of `units` int8 weights, row after row), each
    unit's `scales` and `biases`, and the output `weights`."""

    def __init__(
        self,
        table: bytes,
        scales: Sequence[float],
        biases: Sequence[float],
        weights: Sequence[float],
    ) -> None:
        units = len(scales)
        if not units or len(table) != DIM * units or not len(biases) == len(weights) == units:
            raise ValueError("hidden layer: table or unit counts do not match")
        self.table = table
        self.scales = tuple(scales)
        self.biases = tuple(biases)
        self.weights = tuple(weights)


class Scorer:
    def __init__(
        self,
        weights: array.array[int],
        scale: float,
        bias: float,
        th: Thresholds,
        hidden: Hidden | None = None,
    ):
        if len(weights) != DIM:
            raise ScorerError(f"scorer weights: expected {DIM} entries, got {len(weights)}")
        # The weights plus 128, one byte each (int8 two's complement + 128 is the byte
        # with its top bit flipped).
        self._biased = weights.tobytes().translate(_FLIP_TOP_BIT)
        self.scale = scale
        self.bias = bias
        self.thresholds = th
        self.hidden = hidden
        units = len(hidden.scales) if hidden is not None else 0
        self._rows = _Rows(self._biased, hidden.table if hidden is not None else b"", units)
        self._unpack = struct.Struct(f"<{units + 1}I").unpack
        self._size = 4 * (units + 1)
        self._units = (
            tuple(zip(hidden.scales, hidden.biases, hidden.weights, strict=True))
            if hidden is not None
            else ()
        )

    def log_odds(
        self,
        view: str,
        rules: Iterable[str] = (),
        classes: Sequence[str] = (),
        folded: str | None = None,
    ) -> float:
        """`folded` is `fold(view)` when the caller has it (saves folding again)."""
        found = feature_set(view, rules, classes, folded)
        n = len(found)
        if not n:
            return self.bias
        rows = self._rows
        # itemgetter of one index returns the item, not a tuple; a row not built yet is
        # None, which `sum` refuses: build the missing ones and sum again.
        get = itemgetter(*found) if n > 1 else lambda r: (r[next(iter(found))],)
        try:
            total: int = sum(get(rows))
        except TypeError:
            rows.build(found)
            total = sum(get(rows))
        lanes: Iterator[int] = iter(self._unpack(total.to_bytes(self._size, "little")))
        offset = 128 * n
        z = (next(lanes) - offset) * self.scale + self.bias
        if self._units:
            hidden = 0.0
            for lane, (scale, bias, weight) in zip(lanes, self._units, strict=True):
                unit = (lane - offset) * scale + bias
                if unit > 0.0:
                    hidden += unit * weight
            z += hidden
        return z

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
            units = int(meta.get("hidden", 0))
            weights = array.array("b")
            weights.frombytes(body[:DIM] if units else body)
            hidden = None
            if units:
                floats = [
                    [float(v) for v in meta[key]]
                    for key in ("unit_scales", "unit_biases", "unit_weights")
                ]
                if len(floats[0]) != units:
                    raise ValueError("hidden unit count")
                hidden = Hidden(body[DIM:], *floats)
            th = Thresholds(float(meta["low"]), float(meta["high"]))
            return Scorer(weights, float(meta["scale"]), float(meta["bias"]), th, hidden)
        except (ValueError, KeyError, TypeError) as exc:
            raise ScorerError(f"{path}: not a scorer weights file ({type(exc).__name__})") from exc


@dataclass(frozen=True)
class HiddenWeights:
    """The hidden layer as the training script writes it: int8 table and unit floats."""

    table: bytes
    scales: list[float]
    biases: list[float]
    weights: list[float]


def write(
    path: Path,
    weights: bytes,
    scale: float,
    bias: float,
    th: Thresholds,
    hidden: HiddenWeights | None = None,
) -> None:
    """Write a weights file (used by the training script)."""
    meta: dict[str, object] = {
        "dim": DIM,
        "scale": scale,
        "bias": bias,
        "low": th.low,
        "high": th.high,
    }
    body = weights
    if hidden is not None:
        meta["hidden"] = len(hidden.scales)
        meta["unit_scales"] = hidden.scales
        meta["unit_biases"] = hidden.biases
        meta["unit_weights"] = hidden.weights
        body += hidden.table
    path.write_bytes(json.dumps(meta, sort_keys=True).encode() + b"\n" + body)


@cache
def default_scorer() -> Scorer | None:
    """The shipped scorer, or None before the first training (rules only)."""
    if not WEIGHTS.exists():
        return None
    return Scorer.load(WEIGHTS)
