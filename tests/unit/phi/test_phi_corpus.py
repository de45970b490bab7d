"""The labelled corpus: the detector meets its recall and false-positive targets (deterministic)."""

from __future__ import annotations

from pathlib import Path

from relay.phi import default_detector
from relay.phi.normalize import subject_text

CORPUS = Path(__file__).resolve().parents[2] / "data" / "subjects.tsv"


def test_corpus_shape() -> None:
    rows = [line.split("\t") for line in CORPUS.read_text(encoding="utf-8").splitlines()]
    assert rows[0] == ["label", "category", "subject"]
    labels = [r[0] for r in rows[1:]]
    assert len(labels) >= 400
    assert set(labels) == {"phi", "clean"}
    assert 0.4 <= labels.count("phi") / len(labels) <= 0.6
    assert {"spanish", "tricky", "encoded", "identifier", "name"} <= {r[1] for r in rows[1:]}


def test_recall_and_false_positive_rate() -> None:
    detector = default_detector()
    tp = fp = tn = fn = 0
    for line in CORPUS.read_text(encoding="utf-8").splitlines()[1:]:
        label, _, subject = line.split("\t", 2)
        flagged = bool(detector.scan(subject_text(subject)))
        if label == "phi":
            tp, fn = tp + flagged, fn + (not flagged)
        else:
            fp, tn = fp + flagged, tn + (not flagged)
    recall, fpr = tp / (tp + fn), fp / (fp + tn)
    assert recall >= 0.97, f"recall {recall:.3f}"
    assert fpr <= 0.03, f"false-positive rate {fpr:.3f}"


HOLDOUTS = sorted(CORPUS.parent.glob("holdout_*.tsv"))


def test_holdout_sets_do_not_regress() -> None:
    """The hand-written hold-out sets (docs/phi-detection.md gives their scores from
    before the fixes they prompted) stay caught once their lessons are in the rules:
    pooled recall >= 0.95 and FPR <= 0.03, and no single set far below."""
    assert len(HOLDOUTS) >= 3
    detector = default_detector()
    total = [0, 0, 0, 0]
    for path in HOLDOUTS:
        rows = [line.split("\t", 2) for line in path.read_text(encoding="utf-8").splitlines()]
        assert rows[0] == ["label", "category", "subject"], path.name
        tp = fp = tn = fn = 0
        for label, _, subject in rows[1:]:
            flagged = bool(detector.scan(subject_text(subject)))
            if label == "phi":
                tp, fn = tp + flagged, fn + (not flagged)
            else:
                fp, tn = fp + flagged, tn + (not flagged)
        assert tp / (tp + fn) >= 0.90, f"{path.name}: recall {tp / (tp + fn):.3f}"
        assert fp / (fp + tn) <= 0.05, f"{path.name}: false-positive rate {fp / (fp + tn):.3f}"
        total = [total[0] + tp, total[1] + fn, total[2] + fp, total[3] + tn]
    tp, fn, fp, tn = total
    assert tp / (tp + fn) >= 0.95, f"pooled recall {tp / (tp + fn):.3f}"
    assert fp / (fp + tn) <= 0.03, f"pooled false-positive rate {fp / (fp + tn):.3f}"
