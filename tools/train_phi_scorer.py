#!/usr/bin/env python3
"""Train the subject scorer (relay/phi/data/scorer.bin) from the training writers.

    pip install -e '.[train]'
    python tools/train_phi_scorer.py              # retrain, keep the shipped thresholds
    python tools/train_phi_scorer.py --calibrate  # also set thresholds on validation
    python tools/train_phi_scorer.py --cv         # leave-one-writer-out figures (train only)
    python tools/train_phi_scorer.py --cv --folds 5   # the same, five writer-grouped folds
    python tools/train_phi_scorer.py --check      # retrain in memory, compare with the file

Training data: the older corpora in tests/data/*.tsv and the writers marked `train`
in tests/data/corpus/split.tsv. Validation writers are read only by --calibrate and
--cv (thresholds), which print aggregate figures and never rows. Every other split
(the held-out writers) is never opened here: `rows_of` refuses any part but train
and validation. The model (relay.phi.scorer) is wide and deep over the hashed
features of relay.phi.features: a linear part plus one hidden layer of HIDDEN ReLU
units (an embedding bag), trained together by Adagrad on the weighted logistic loss
with L2 and feature dropout, seeded, in numpy (single-threaded sparse products, so a retrain is
byte-identical); the weights kept are the mean of snapshots over the last AVERAGE_EPOCHS
epochs, stored as int8 (the linear part with one scale, the
hidden table with one scale a unit).

--cv is leave-one-writer-out over the training writers: for each writer, a model is
fitted on the others (and the older corpora), its low threshold set on the
validation writers as --calibrate would, and the whole decision (a decisive rule,
or the score at or above the threshold) applied to the held-out writer. It prints
recall and FPR per writer, per language and per form (plain, obfuscated, rfc2047),
pooled over the folds, and the scorer alone at a fixed FPR (for model selection).
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
from scipy import sparse  # noqa: E402

from relay.phi import scorer as scorer_mod  # noqa: E402
from relay.phi.detector import DECISIVE, PhiDetector, rule_features  # noqa: E402
from relay.phi.features import DIM, features  # noqa: E402
from relay.phi.normalize import subject_texts  # noqa: E402

DATA = ROOT / "tests" / "data"
CORPUS = DATA / "corpus"
SEED = 20261201
C = 3.0  # scales the L2 penalty (L2 / C), as liblinear's C did: larger fits closer
L2 = 3e-6  # with C = 3: 1e-6 a row, the setting leave-one-writer-out measured
HIDDEN = 16  # hidden units: 2**18 buckets x 16 int8 = 4 MiB, inside the 5 MB budget
# Writer-grouped 5-fold CV (docs/phi-detection.md, section 8), best recall at pooled FPR
# <= 0.02: 0.9553 with 6 epochs and the last weights, 0.9570 averaging the last 2 of 6,
# 0.9591 the last 4 of 10, 0.9603 the last 8 of 16.
EPOCHS = 16
# The shipped weights are the mean of snapshots taken every AVERAGE_EVERY batches over the
# last AVERAGE_EPOCHS epochs (stochastic weight averaging): the mean of a noisy descent
# generalises to new writers better than wherever the last batch left the weights.
AVERAGE_EPOCHS = 8
AVERAGE_EVERY = 50
BATCH = 64
RATE = 0.05  # Adagrad step
OLD_WEIGHT = 0.5  # the older corpora are one writer's templates: they count half
# Feature dropout: each feature of a training row is dropped with this probability at
# each step (the kept ones count 1 / (1 - DROPOUT)), so no single n-gram a writer happens
# to use can carry a decision alone. Writer-grouped 5-fold (docs/phi-detection.md): recall
# at pooled FPR 0.02 0.945 without, 0.949 at 0.3, 0.950 at 0.5.
DROPOUT = 0.5


@dataclass(frozen=True)
class Row:
    writer: str
    label: bool
    text: str  # what arrives in the header: raw value for rfc2047 rows, else the subject
    lang: str = "en"
    form: str = "plain"


def on_the_wire(raw: str) -> str:
    """A corpus raw value as the header arrives: `\\r\\n` and a space or `\\t` are a fold
    (tools/corpus/BRIEF.md)."""
    return raw.replace("\\r\\n\\t", "\r\n\t").replace("\\r\\n", "\r\n")


def split() -> dict[str, str]:
    out = {}
    for line in (CORPUS / "split.tsv").read_text(encoding="utf-8").splitlines():
        if line and not line.startswith("#"):
            writer, part = line.split("\t")
            out[writer] = part
    return out


def writer_rows(path: Path) -> list[Row]:
    lines = path.read_text(encoding="utf-8").split("\n")
    head = lines[0].split("\t")
    rows = []
    for line in lines[1:]:
        if not line:
            continue
        r = dict(zip(head, line.split("\t"), strict=False))
        text = on_the_wire(r["raw"]) if r["form"] == "rfc2047" else r["subject"]
        rows.append(Row(r["writer"], r["label"] == "phi", text, r["lang"], r["form"]))
    return rows


def old_rows() -> list[Row]:
    rows = []
    for path in sorted(DATA.glob("*.tsv")):
        for line in path.read_text(encoding="utf-8").splitlines()[1:]:
            if line:
                label, _category, subject = line.split("\t")
                rows.append(Row("old", label == "phi", subject))
    return rows


# The only splits this script (and any tuning built on it) may read.
READABLE = ("train", "validation")


def rows_of(part: str) -> list[Row]:
    if part not in READABLE:
        raise ValueError(f"split {part!r} is held out: training reads only {READABLE}")
    rows = old_rows() if part == "train" else []
    for writer, p in sorted(split().items()):
        path = CORPUS / f"{writer}.tsv"
        if p == part and path.exists():
            rows.extend(writer_rows(path))
    return rows


@dataclass(frozen=True)
class Inputs:
    """What the scorer reads of each row (first reading), and whether a rule decides alone."""

    views: list[str]
    rules: list[list[str]]
    classes: list[list[str]]
    decisive: np.ndarray


def analyse(detector: PhiDetector, rows: list[Row]) -> Inputs:
    views, rules, classes, decisive = [], [], [], []
    for row in rows:
        readings = subject_texts(row.text)
        a = detector.analyse(readings[0])
        views.append(a.view)
        rules.append(rule_features(a.found))
        classes.append(a.classes)
        # Rules that decide alone count whatever the score, in any reading (as judge()).
        decisive.append(
            any(f.confidence >= DECISIVE for f in a.found)
            or any(
                f.confidence >= DECISIVE for r in readings[1:] for f in detector.analyse(r).found
            )
        )
    return Inputs(views, rules, classes, np.array(decisive))


def matrix(inp: Inputs) -> sparse.csr_matrix:
    indices: list[int] = []
    indptr = [0]
    for view, rules, classes in zip(inp.views, inp.rules, inp.classes, strict=True):
        indices.extend(features(view, rules, classes))
        indptr.append(len(indices))
    data = np.ones(len(indices), dtype=np.float64)
    return sparse.csr_matrix(
        (data, np.array(indices), np.array(indptr)), shape=(len(indptr) - 1, DIM)
    )


def sample_weights(rows: list[Row], old: float = OLD_WEIGHT) -> np.ndarray:
    """Each row's weight: 1, the older corpora `old`. (Weighting each writer equally
    instead changed nothing: the writers each wrote about 1,000 rows.)"""
    return np.array([old if r.writer == "old" else 1.0 for r in rows])


@dataclass(frozen=True)
class Model:
    """What scorer.bin holds: the wide part (int8, one scale, bias) and the hidden layer."""

    wide: bytes
    scale: float
    bias: float
    hidden: scorer_mod.HiddenWeights | None


def fit(x: sparse.csr_matrix, rows: list[Row], c: float = C) -> Model:
    """Train the wide-and-deep model (module docstring) and quantize it as shipped."""
    y = np.array([r.label for r in rows], dtype=np.float32)
    weight = sample_weights(rows).astype(np.float32)
    weight /= weight.mean()
    x = x.tocsr().astype(np.float32)
    n, d = x.shape
    rng = np.random.default_rng(SEED)
    w1 = (rng.standard_normal((d, HIDDEN)) * 0.05).astype(np.float32)
    b1 = np.zeros(HIDDEN, np.float32)
    w2 = (rng.standard_normal(HIDDEN) * 0.1).astype(np.float32)
    b2 = np.zeros(1, np.float32)
    wide = np.zeros(d, np.float32)
    # Adagrad: each weight's step shrinks with its own gradients, so rare n-grams still learn.
    g1 = np.full((d, HIDDEN), 1e-8, np.float32)
    gw = np.full(d, 1e-8, np.float32)
    gb1 = np.full(HIDDEN, 1e-8, np.float32)
    gw2 = np.full(HIDDEN, 1e-8, np.float32)
    gb2 = np.full(1, 1e-8, np.float32)
    l2 = np.float32(L2 / c)
    params = (w1, b1, w2, b2, wide)  # updated in place below
    mean = [np.zeros_like(a) for a in params]
    snapshots = 0
    for epoch in range(EPOCHS):
        order = rng.permutation(n)
        for step, start in enumerate(range(0, n, BATCH)):
            if epoch >= EPOCHS - AVERAGE_EPOCHS and step % AVERAGE_EVERY == 0:
                for m, a in zip(mean, params, strict=True):
                    m += a
                snapshots += 1
            batch = order[start : start + BATCH]
            xb = x[batch]  # a copy: its data can be masked in place
            keep = rng.random(len(xb.data)) >= DROPOUT
            xb.data = (keep / (1 - DROPOUT)).astype(np.float32)
            cols = np.unique(xb.indices)
            xs = xb[:, cols]
            pre = xs @ w1[cols] + b1
            units = np.maximum(pre, 0)
            z = units @ w2 + b2[0] + xs @ wide[cols]
            p = 1 / (1 + np.exp(-np.clip(z, -30, 30)))
            dz = ((p - y[batch]) * weight[batch] / len(batch)).astype(np.float32)
            dw2 = units.T @ dz
            db2 = dz.sum(keepdims=True)
            dpre = np.outer(dz, w2) * (pre > 0)
            dw1 = xs.T @ dpre + l2 * w1[cols]
            db1 = dpre.sum(axis=0)
            dwide = xs.T @ dz + l2 * wide[cols]
            g1[cols] += dw1**2
            w1[cols] -= RATE * dw1 / np.sqrt(g1[cols])
            gw[cols] += dwide**2
            wide[cols] -= RATE * dwide / np.sqrt(gw[cols])
            gb1 += db1**2
            b1 -= RATE * db1 / np.sqrt(gb1)
            gw2 += dw2**2
            w2 -= RATE * dw2 / np.sqrt(gw2)
            gb2 += db2**2
            b2 -= RATE * db2 / np.sqrt(gb2)
    w1, b1, w2, b2, wide = (m / snapshots for m in mean)
    # A bucket no training row holds keeps its random start: it carries nothing.
    w1[np.diff(x.tocsc().indptr) == 0] = 0.0
    scale = float(np.abs(wide).max()) / 127.0
    q = np.clip(np.rint(wide / scale), -127, 127).astype(np.int8)
    unit_scales = np.abs(w1).max(axis=0).astype(np.float64) / 127.0
    unit_scales[unit_scales == 0] = 1.0
    q1 = np.clip(np.rint(w1 / unit_scales.astype(np.float32)), -127, 127).astype(np.int8)
    hidden = scorer_mod.HiddenWeights(
        q1.tobytes(),
        [round(float(v), 12) for v in unit_scales],
        [round(float(v), 12) for v in b1],
        [round(float(v), 12) for v in w2],
    )
    return Model(q.tobytes(), round(scale, 12), round(float(b2[0]), 12), hidden)


def probabilities(x: sparse.csr_matrix, model: Model) -> np.ndarray:
    """The shipped model's probabilities, from the quantized weights as inference reads them."""
    w = np.frombuffer(model.wide, dtype=np.int8).astype(np.float64) * model.scale
    z = x @ w + model.bias
    h = model.hidden
    if h is not None:
        table = np.frombuffer(h.table, dtype=np.int8).reshape(-1, len(h.scales))
        summed = x @ table.astype(np.float64)
        units = np.maximum(summed * np.array(h.scales) + np.array(h.biases), 0.0)
        z = z + units @ np.array(h.weights)
    return 1.0 / (1.0 + np.exp(-z))


def rates(pred: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    return float((pred & y).sum() / max(1, y.sum())), float((pred & ~y).sum() / max(1, (~y).sum()))


GRID = [round(float(t), 2) for t in np.arange(0.05, 0.99, 0.01)]


def thresholds(
    p: np.ndarray, y: np.ndarray, decisive: np.ndarray, max_fpr: float
) -> scorer_mod.Thresholds:
    """low: the most recall with FPR within the bound; high: where the false positives
    left are a quarter of the bound (strong evidence, refused)."""

    def fpr(t: float) -> float:
        return rates(decisive | (p >= t), y)[1]

    within = [t for t in GRID if fpr(t) <= max_fpr] or [GRID[-1]]
    low = within[0]
    strict = [t for t in GRID if t >= low and fpr(t) <= max_fpr / 4]
    return scorer_mod.Thresholds(low, strict[0] if strict else GRID[-1])


def recall_at_fpr(p: np.ndarray, y: np.ndarray, max_fpr: float) -> float:
    """The scorer alone: recall at the score cut-off that keeps FPR within the bound."""
    neg = np.sort(p[~y])[::-1]
    k = int(np.floor(max_fpr * len(neg)))
    cut = neg[k] if k < len(neg) else -1.0
    return float((p[y] > cut).sum() / max(1, y.sum()))


def report(title: str, rows: list[Row], pred: np.ndarray) -> None:
    """Recall and FPR per writer, language and form; counts only, never a subject."""
    y = np.array([r.label for r in rows])
    print(f"\n{title}")
    for name, key in (("writer", "writer"), ("language", "lang"), ("form", "form")):
        groups = sorted({getattr(r, key) for r in rows})
        for g in groups:
            m = np.array([getattr(r, key) == g for r in rows])
            rec, fpr = rates(pred[m], y[m])
            print(
                f"  {name:<8} {g:<10} phi {int(y[m].sum()):>5} clean {int((~y[m]).sum()):>5}"
                f"  recall {rec:.3f}  FPR {fpr:.3f}"
            )
    obf = np.array([r.form in ("obfuscated", "rfc2047") for r in rows])
    rec, fpr = rates(pred[obf], y[obf])
    print(
        f"  obfuscated+rfc2047     phi {int(y[obf].sum()):>5} clean {int((~y[obf]).sum()):>5}"
        f"  recall {rec:.3f}  FPR {fpr:.3f}"
    )
    rec, fpr = rates(pred, y)
    print(
        f"  all                    phi {int(y.sum()):>5} clean {int((~y).sum()):>5}"
        f"  recall {rec:.3f}  FPR {fpr:.3f}"
    )


def cross_validate(
    train: list[Row],
    x: sparse.csr_matrix,
    inp: Inputs,
    val: list[Row],
    xv: sparse.csr_matrix,
    vinp: Inputs,
    c: float,
    max_fpr: float,
    also: tuple[float, ...] = (),
    folds: int = 0,
) -> None:
    y = np.array([r.label for r in train])
    yv = np.array([r.label for r in val])
    pred = np.zeros(len(train), dtype=bool)
    held_rows = np.zeros(len(train), dtype=bool)
    others = {bound: np.zeros(len(train), dtype=bool) for bound in also}
    writers = sorted({r.writer for r in train} - {"old"})
    # Leave one writer out, or with `folds` writer-grouped folds (writer i in fold i % folds).
    groups = [[w] for w in writers] if not folds else [writers[f::folds] for f in range(folds)]
    scores = np.zeros(len(train))
    for group in groups:
        held = ",".join(group) if len(group) < 4 else f"{group[0]}..({len(group)} writers)"
        mask = np.array([r.writer not in group for r in train])
        sub = [r for r, m in zip(train, mask, strict=True) if m]
        model = fit(x[mask], sub, c)
        pv = probabilities(xv, model)
        th = thresholds(pv, yv, vinp.decisive, max_fpr)
        p = probabilities(x[~mask], model)
        scores[~mask] = p
        pred[~mask] = inp.decisive[~mask] | (p >= th.low)
        for bound, other in others.items():
            low = thresholds(pv, yv, vinp.decisive, bound).low
            other[~mask] = inp.decisive[~mask] | (p >= low)
        held_rows |= ~mask
        rec, fpr = rates(pred[~mask], y[~mask])
        alone = recall_at_fpr(p, y[~mask], max_fpr)
        print(
            f"held out {held} ({(~mask).sum()} rows): low {th.low:.2f} recall {rec:.3f} "
            f"FPR {fpr:.3f}; scorer alone recall at FPR {max_fpr}: {alone:.3f}"
        )
    rows = [r for r, m in zip(train, held_rows, strict=True) if m]
    report("held-out writers, pooled over folds", rows, pred[held_rows])
    # Model selection without the validation writers' thresholds: the most recall of the
    # whole decision at a pooled FPR within the target, the cut-off read off the pool.
    d, sc, yh = inp.decisive[held_rows], scores[held_rows], y[held_rows]
    at = [(*rates(d | (sc >= t), yh), t) for t in GRID]
    best = max(
        ((rec, t) for rec, fpr, t in at if fpr <= 0.02),
        default=(float("nan"), float("nan")),  # the rules alone already exceed the FPR
    )
    print(f"  best recall at pooled FPR <= 0.02: {best[0]:.4f} (cut-off {best[1]})")
    obf = np.array([r.form in ("obfuscated", "rfc2047") for r in train]) & held_rows
    for bound, other in others.items():
        rec, fpr = rates(other[held_rows], y[held_rows])
        orec, ofpr = rates(other[obf], y[obf])
        print(
            f"  at validation bound {bound}: recall {rec:.3f} FPR {fpr:.3f}; "
            f"obfuscated+rfc2047 recall {orec:.3f} FPR {ofpr:.3f}"
        )


def _hidden_of(scorer: scorer_mod.Scorer) -> scorer_mod.HiddenWeights | None:
    h = scorer.hidden
    if h is None:
        return None
    return scorer_mod.HiddenWeights(h.table, list(h.scales), list(h.biases), list(h.weights))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--calibrate", action="store_true", help="set thresholds on validation")
    ap.add_argument("--cv", action="store_true", help="leave-one-writer-out on train writers")
    ap.add_argument("--check", action="store_true", help="compare a retrain with the file")
    ap.add_argument(
        "--folds", type=int, default=0, help="with --cv: writer-grouped folds (0: one a writer)"
    )
    ap.add_argument("--c", type=float, default=C)
    # Validation FPR under-states the FPR on writers never seen: leave-one-writer-out
    # over 43 writers gave 0.018 at a validation bound of 0.0125. On the spent held-out
    # sets the FPR at that bound was 1.2x (fifth), 1.8x (sixth) and 2.3x (seventh) the
    # validation FPR, and 1.4x on the eighth (scored at 0.008, where its recall fell to
    # 0.966 with FPR to spare: 0.011). The bound is the target (FPR <= 0.02 on unseen
    # writers) over a ratio of 2.0, which covers three of those four sets: 0.010.
    # By the seventeenth set that ratio was 2.6 (validation 0.010, held out 0.026): the
    # old validation writers had grown easy. Validation is now the spent seventeenth set,
    # six writers as hard as new ones (never trained on), so the bound is the target
    # with a tenth to spare for writer-to-writer spread: 0.018.
    ap.add_argument("--max-fpr", type=float, default=0.018, help="FPR bound for thresholds")
    ap.add_argument(
        "--cv-bounds",
        default="",
        help="with --cv, also the pooled figures at these bounds (e.g. 0.01,0.0125)",
    )
    args = ap.parse_args()
    detector = PhiDetector(scorer=False)
    train = rows_of("train")
    inp = analyse(detector, train)
    x = matrix(inp)
    if args.cv:
        val = rows_of("validation")
        vinp = analyse(detector, val)
        also = tuple(float(b) for b in args.cv_bounds.split(",") if b)
        cross_validate(
            train, x, inp, val, matrix(vinp), vinp, args.c, args.max_fpr, also, args.folds
        )
        return 0
    model = fit(x, train, args.c)
    path = scorer_mod.WEIGHTS
    if args.check:
        shipped = scorer_mod.Scorer.load(path)
        same = (
            shipped._w.tobytes() == model.wide
            and shipped.scale == model.scale
            and shipped.bias == model.bias
            and _hidden_of(shipped) == model.hidden
        )
        print("retrained weights match the shipped file" if same else "weights DIFFER")
        return 0 if same else 1
    th = scorer_mod.Thresholds(0.5, 0.8)
    with contextlib.suppress(scorer_mod.ScorerError):  # none yet, or another model's file
        th = scorer_mod.Scorer.load(path).thresholds
    if args.calibrate:
        val = rows_of("validation")
        if not val:
            print("no validation writers yet: thresholds kept", file=sys.stderr)
        else:
            vinp = analyse(detector, val)
            yv = np.array([r.label for r in val])
            pv = probabilities(matrix(vinp), model)
            th = thresholds(pv, yv, vinp.decisive, args.max_fpr)
            for name, t in (("low", th.low), ("high", th.high)):
                rec, fpr = rates(vinp.decisive | (pv >= t), yv)
                print(f"validation ({len(val)} rows) {name} {t}: recall {rec:.3f} FPR {fpr:.3f}")
            report(f"validation at low {th.low}", val, vinp.decisive | (pv >= th.low))
    scorer_mod.write(path, model.wide, model.scale, model.bias, th, model.hidden)
    nonzero = sum(1 for b in model.wide if b)
    print(f"wrote {path.relative_to(ROOT)}: {len(train)} rows, {nonzero} non-zero weights")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
