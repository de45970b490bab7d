#!/usr/bin/env python3
"""Train the subject scorer (relay/phi/data/scorer.bin) from the training writers.

    pip install -e '.[train]'
    python tools/train_phi_scorer.py              # retrain, keep the shipped thresholds
    python tools/train_phi_scorer.py --calibrate  # also set thresholds on validation
    python tools/train_phi_scorer.py --cv         # leave-one-writer-out figures (train only)
    python tools/train_phi_scorer.py --check      # retrain in memory, compare with the file

Training data: the older corpora in tests/data/*.tsv and the writers marked `train`
in tests/data/corpus/split.tsv. Validation writers are read only by --calibrate,
which prints aggregate figures and never rows; test writers are never read here.
The model is L2-regularised logistic regression (liblinear, seeded) over the
hashed features of relay.phi.features; weights are stored as int8 with one scale.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
from scipy import sparse  # noqa: E402
from sklearn.linear_model import LogisticRegression  # noqa: E402

from relay.phi import scorer as scorer_mod  # noqa: E402
from relay.phi.detector import PhiDetector, rule_features  # noqa: E402
from relay.phi.features import DIM, features  # noqa: E402
from relay.phi.normalize import subject_texts  # noqa: E402

DATA = ROOT / "tests" / "data"
CORPUS = DATA / "corpus"
SEED = 20261201
C = 1.0
OLD_WEIGHT = 0.5  # the older corpora are one writer's templates: they count half


@dataclass(frozen=True)
class Row:
    writer: str
    label: bool
    text: str  # what arrives in the header: raw value for rfc2047 rows, else the subject
    lang: str = "en"
    form: str = "plain"


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
        text = r["raw"].replace("\\r\\n", "\r\n") if r["form"] == "rfc2047" else r["subject"]
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


def rows_of(part: str) -> list[Row]:
    rows = old_rows() if part == "train" else []
    for writer, p in sorted(split().items()):
        path = CORPUS / f"{writer}.tsv"
        if p == part and path.exists():
            rows.extend(writer_rows(path))
    return rows


def featurize(detector: PhiDetector, rows: list[Row]) -> sparse.csr_matrix:
    indices: list[int] = []
    indptr = [0]
    for row in rows:
        reading = subject_texts(row.text)[0]
        a = detector.analyse(reading)
        indices.extend(features(a.view, rule_features(a.found), a.classes))
        indptr.append(len(indices))
    data = np.ones(len(indices), dtype=np.float64)
    return sparse.csr_matrix((data, np.array(indices), np.array(indptr)), shape=(len(rows), DIM))


def fit(x: sparse.csr_matrix, rows: list[Row], c: float = C) -> tuple[bytes, float, float]:
    y = np.array([r.label for r in rows])
    weight = np.array([OLD_WEIGHT if r.writer == "old" else 1.0 for r in rows])
    model = LogisticRegression(C=c, solver="liblinear", random_state=SEED, max_iter=1000)
    model.fit(x, y, sample_weight=weight)
    w = model.coef_[0]
    scale = float(np.abs(w).max()) / 127.0
    q = np.clip(np.rint(w / scale), -127, 127).astype(np.int8)
    return q.tobytes(), round(scale, 12), round(float(model.intercept_[0]), 12)


def probabilities(x: sparse.csr_matrix, q: bytes, scale: float, bias: float) -> np.ndarray:
    w = np.frombuffer(q, dtype=np.int8).astype(np.float64) * scale
    z = x @ w + bias
    return 1.0 / (1.0 + np.exp(-z))


def rates(p: np.ndarray, y: np.ndarray, t: float) -> tuple[float, float]:
    pred = p >= t
    return float((pred & y).sum() / max(1, y.sum())), float((pred & ~y).sum() / max(1, (~y).sum()))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--calibrate", action="store_true", help="set thresholds on validation")
    ap.add_argument("--cv", action="store_true", help="leave-one-writer-out on train writers")
    ap.add_argument("--check", action="store_true", help="compare a retrain with the file")
    ap.add_argument("--c", type=float, default=C)
    ap.add_argument("--max-fpr", type=float, default=0.02, help="FPR bound for --calibrate")
    args = ap.parse_args()
    detector = PhiDetector(scorer=False)
    train = rows_of("train")
    x = featurize(detector, train)
    y = np.array([r.label for r in train])
    if args.cv:
        writers = sorted({r.writer for r in train} - {"old"})
        for held in writers:
            mask = np.array([r.writer != held for r in train])
            sub = [r for r, m in zip(train, mask, strict=True) if m]
            q, scale, bias = fit(x[mask], sub, args.c)
            p = probabilities(x[~mask], q, scale, bias)
            figs = " ".join(
                "t={:.2f} R {:.3f} FPR {:.3f}".format(t, *rates(p, y[~mask], t))
                for t in (0.3, 0.5, 0.7)
            )
            print(f"held out {held} ({(~mask).sum()} rows): {figs}")
        return 0
    q, scale, bias = fit(x, train, args.c)
    path = scorer_mod.WEIGHTS
    if args.check:
        shipped = scorer_mod.Scorer.load(path)
        same = shipped._w.tobytes() == q and shipped.scale == scale and shipped.bias == bias
        print("retrained weights match the shipped file" if same else "weights DIFFER")
        return 0 if same else 1
    th = scorer_mod.Thresholds(0.5, 0.8)
    if path.exists():
        th = scorer_mod.Scorer.load(path).thresholds
    if args.calibrate:
        val = rows_of("validation")
        if not val:
            print("no validation writers yet: thresholds kept", file=sys.stderr)
        else:
            xv = featurize(detector, val)
            yv = np.array([r.label for r in val])
            pv = probabilities(xv, q, scale, bias)
            # Rules that decide alone count whatever the score.
            decisive = np.array([_decisive(detector, r) for r in val])

            def figures(t: float) -> tuple[float, float]:
                pred = decisive | (pv >= t)
                return float((pred & yv).sum() / yv.sum()), float((pred & ~yv).sum() / (~yv).sum())

            grid = [round(float(t), 2) for t in np.arange(0.05, 0.99, 0.01)]
            # low: the most recall with FPR within the bound; high: where the false
            # positives left are a quarter of the bound (strong evidence, refused).
            within = [t for t in grid if figures(t)[1] <= args.max_fpr] or [grid[-1]]
            low = within[0]
            strict = [t for t in grid if t >= low and figures(t)[1] <= args.max_fpr / 4]
            high = strict[0] if strict else grid[-1]
            th = scorer_mod.Thresholds(low, high)
            for name, t in (("low", low), ("high", high)):
                rec, fpr = figures(t)
                print(f"validation ({len(val)} rows) {name} {t}: recall {rec:.3f} FPR {fpr:.3f}")
    scorer_mod.write(path, q, scale, bias, th)
    nonzero = sum(1 for b in q if b)
    print(f"wrote {path.relative_to(ROOT)}: {len(train)} rows, {nonzero} non-zero weights")
    return 0


def _decisive(detector: PhiDetector, row: Row) -> bool:
    from relay.phi.detector import DECISIVE

    return any(
        f.confidence >= DECISIVE
        for reading in subject_texts(row.text)
        for f in detector.analyse(reading).found
    )


if __name__ == "__main__":
    raise SystemExit(main())
