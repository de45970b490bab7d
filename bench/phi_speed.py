"""Measure the subject PHI detector's speed on one core, beside a baseline checkout.

    .venv/bin/python bench/phi_speed.py                          # this checkout only
    .venv/bin/python bench/phi_speed.py --old /tmp/phi-base      # and a baseline, as ratios
    .venv/bin/python bench/phi_speed.py --old /tmp/phi-base --compare   # decisions identical?
    .venv/bin/python bench/phi_speed.py --old /tmp/phi-base --long      # a 64 KiB subject
    .venv/bin/python bench/phi_speed.py --old /tmp/phi-base --shapes    # 64 KiB, each shape
    .venv/bin/python bench/phi_speed.py --old /tmp/phi-base --compare --all-writers

A baseline is a checkout of the package alone, e.g.
`mkdir /tmp/phi-base && git archive <sha> relay | tar -x -C /tmp/phi-base`.

Every checkout runs in its own interpreter (PYTHONPATH=checkout), pinned to one CPU,
on the same rows: the training corpora (tests/data/*.tsv and the writers w01-w11
marked `train` in tests/data/corpus/split.tsv), each row decoded with `subject_texts` and
judged with `judge`, as the subject-phi policy does. The rounds alternate between
checkouts and the best round counts (the machine is shared). Printed: subjects per
second of the process's CPU time;
the time per subject of each stage (decode and normalise, tokenise, identifiers,
names and health rules, scorer) from instrumented passes, which alternate between
checkouts as the rounds do (the least time of each stage counts); start-up (import,
vocabularies, weights, first judgement) and memory in a fresh process.

`--long` times one subject of about 64 KiB that never repeats a window and holds no
strong one (clean subjects of the training corpora joined), so every window is judged:
the issue's bound is 50 ms.

`--shapes` times one 64 KiB folded subject of each shape an attacker might send (one
repeated name, random words, digits, one huge word, mixed scripts, encoded-words,
invisible characters, leetspeak; seeded, and but for the repeated name never repeating a
window, a line kept only where the window it closes is judged clean) beside the same
shape at 1.6 KiB, measured in the same run (a ratio of about 40 is linear), prints the
64 KiB text's tier and checks that PHI written over its last characters is found.

`--compare --all-writers` compares on every row of the older corpora and of every writer
marked `train` or `validation` (never `heldout` or `spent`).

`--compare` judges every row of the older corpora and of writers w01-w11 (never the
held-out writers, split `heldout`, nor later ones) with both
checkouts and compares, per row and per reading, the tier, kinds, rule ids and
score of `judge`, the findings of `scan` (kind, span, confidence, rule) and the
condition tags of `conditions`. It prints the number of rows that differ, how many of
them differ in a decision (tier, kinds or rule ids) and in which fields, and for each
only file and line, never a subject; exit status 1 when any differs.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "tests" / "data"
WRITERS = DATA / "corpus"

# Stages, each the functions whose time it sums (missing ones are skipped, so an older
# or newer checkout with other internals still reports what it has).
STAGES: dict[str, tuple[str, ...]] = {
    "tokenise": ("detector._Text", "detector.expand", "detector._may_expand"),
    "identifiers": (
        "detector.PhiDetector._identifiers",
        "detector.PhiDetector._emails",
        "detector.PhiDetector._dates",
        "rules.care_time",
        "rules.billing_amount",
        "rules.ending_digits",
        "rules.record_cue",
    ),
    "health": (
        "detector.PhiDetector._names",
        "detector.PhiDetector._provider",
        "detector.PhiDetector._health",
        "rules.dx_cue",
        "rules.care_word",
        "detector.segment",
    ),
    "scorer": ("detector.PhiDetector._classes", "scorer.Scorer.probability"),
}


def _tsv(path: Path) -> list[dict[str, str]]:
    lines = path.read_text(encoding="utf-8").split("\n")
    head = lines[0].split("\t")
    out = []
    for n, line in enumerate(lines[1:], start=2):
        if line:
            row = dict(zip(head, line.split("\t"), strict=False))
            raw = (
                row.get("raw", "").replace("\\r\\n", "\r\n") if row.get("form") == "rfc2047" else ""
            )
            out.append(
                {
                    "where": f"{path.relative_to(ROOT)}:{n}",
                    "input": raw or row["subject"],
                    "label": row.get("label", ""),
                }
            )
    return out


def _split() -> dict[str, str]:
    out = {}
    for line in (WRITERS / "split.tsv").read_text(encoding="utf-8").splitlines():
        if line and not line.startswith("#"):
            writer, part = line.split("\t")
            out[writer] = part
    return out


# The writers this benchmark may read: w01-w11 (the speed work was measured and checked
# on these). The held-out writers (split `heldout`, w12-w15) are kept for others to
# score the detector on and are never read here, not even to compare two detectors'
# decisions; later writers are left out too, so every run reads the same rows.
LAST_WRITER = 11
HELD_OUT = frozenset({"heldout"})


def readable(writer: str, part: str) -> bool:
    return part not in HELD_OUT and int(writer.lstrip("w")) <= LAST_WRITER


def corpus_rows(every_writer: bool) -> list[dict[str, str]]:
    """The older corpora and the training writers w01-w11 (or, for --compare, all of
    w01-w11)."""
    if os.environ.get(_ALL_WRITERS):
        return train_validation_rows()
    rows = [r for path in sorted(DATA.glob("*.tsv")) for r in _tsv(path)]
    for writer, part in sorted(_split().items()):
        path = WRITERS / f"{writer}.tsv"
        if not readable(writer, part) or not path.exists():
            continue
        if every_writer or part == "train":
            rows.extend(_tsv(path))
    return rows


# `--compare --all-writers`: every row the detector may be tuned or checked on, the
# older corpora and every writer marked `train` or `validation`. Writers marked
# `heldout` or `spent` (or not listed) are never read.
_ALL_WRITERS = "PHI_SPEED_ALL_WRITERS"
READABLE_PARTS = frozenset({"train", "validation"})


def train_validation_rows() -> list[dict[str, str]]:
    """The older corpora and every train and validation writer's rows."""
    rows = [r for path in sorted(DATA.glob("*.tsv")) for r in _tsv(path)]
    for writer, part in sorted(_split().items()):
        path = WRITERS / f"{writer}.tsv"
        if part in READABLE_PARTS and path.exists():
            rows.extend(_tsv(path))
    return rows


# --- the worker: runs inside the checkout's interpreter --------------------------------


def _pin() -> None:
    if hasattr(os, "sched_setaffinity"):
        cpus = sorted(os.sched_getaffinity(0))
        os.sched_setaffinity(0, {cpus[-1]})


def timed_rounds(
    one_round: Callable[[], object], per_round: int, seconds: float
) -> tuple[int, float, float]:
    """Run `one_round` (`per_round` items each) again and again for `seconds` of wall time
    with the garbage collector off; return the items done, wall and CPU seconds taken.
    bench/phi_eval.py times its loops with this too. A whole round per call keeps the
    call's own cost out of the per-item figure."""
    done, start, cpu = 0, time.perf_counter(), time.process_time()
    gc.disable()
    try:
        while time.perf_counter() - start < seconds:
            one_round()
            done += per_round
    finally:
        gc.enable()
    return done, time.perf_counter() - start, time.process_time() - cpu


def _rate(inputs: list[str], seconds: float) -> float:
    from relay.phi import default_detector
    from relay.phi.normalize import subject_texts

    detector = default_detector()

    def one_round() -> None:
        for text in inputs:
            detector.judge(subject_texts(text))

    one_round()  # warm: caches, first-call costs
    # Subjects per second of this process's CPU time: time the machine gives to other
    # work does not count against the detector.
    done, _, cpu = timed_rounds(one_round, len(inputs), seconds)
    return done / cpu


def _stages(inputs: list[str], passes: int) -> dict[str, float]:
    """Microseconds per subject in each stage, from one instrumented pass."""
    import importlib

    from relay.phi import default_detector

    spent: dict[str, float] = dict.fromkeys(["decode", *STAGES, "judge"], 0.0)
    clock = time.perf_counter

    def timed(fn: Callable[..., Any], stage: str) -> Callable[..., Any]:
        def run(*args: Any, **kwargs: Any) -> Any:
            t = clock()
            try:
                return fn(*args, **kwargs)
            finally:
                spent[stage] += clock() - t

        return run

    wrapped: dict[int, Callable[..., Any]] = {}
    for stage, names in STAGES.items():
        for name in names:
            module_name, *path = name.split(".")
            try:
                owner: Any = importlib.import_module(f"relay.phi.{module_name}")
                for part in path[:-1]:
                    owner = getattr(owner, part)
                fn = getattr(owner, path[-1])
            except (ImportError, AttributeError):
                continue
            new = timed(fn, stage)
            wrapped[id(fn)] = new
            setattr(owner, path[-1], new)
    detector_module = importlib.import_module("relay.phi.detector")
    rules = getattr(detector_module, "RULES", None)
    if isinstance(rules, tuple):  # the detector holds its own references to the rules
        detector_module.RULES = tuple(wrapped.get(id(r), r) for r in rules)
    normalize = importlib.import_module("relay.phi.normalize")
    subject_texts = normalize.subject_texts
    detector = default_detector()
    for text in inputs:
        detector.judge(subject_texts(text))
    best: dict[str, float] = {}
    for _ in range(passes):  # the least of each stage over the passes (the machine is shared)
        for stage in spent:
            spent[stage] = 0.0
        gc.disable()
        try:
            for text in inputs:
                t = clock()
                readings = subject_texts(text)
                spent["decode"] += clock() - t
                t = clock()
                detector.judge(readings)
                spent["judge"] += clock() - t
        finally:
            gc.enable()
        out = {k: v / len(inputs) * 1e6 for k, v in spent.items()}
        out["other"] = out.pop("judge") - sum(out[s] for s in STAGES)
        best = {k: min(v, best.get(k, v)) for k, v in out.items()}
    return best


def _startup() -> dict[str, float]:
    code = (
        "import json, os, time, tracemalloc\n"
        "def rss():\n"
        "    return int(open('/proc/self/statm').read().split()[1]) * os.sysconf('SC_PAGE_SIZE')\n"
        "r0 = rss(); t = time.perf_counter()\n"
        "from relay.phi import default_detector\n"
        "from relay.phi.normalize import subject_texts\n"
        "d = default_detector(); d.judge(subject_texts('Your results, Jane')); d.conditions('x')\n"
        "dt = time.perf_counter() - t; r1 = rss()\n"
        "print(json.dumps([dt, (r1 - r0) / 2**20]))\n"
    )
    traced = code.replace("r0 = rss(); t", "tracemalloc.start(); r0 = rss(); t").replace(
        "r1 = rss()", "r1 = tracemalloc.get_traced_memory()[0] + r0"
    )
    env = dict(os.environ)
    # `python -c` puts the working directory first on sys.path: run in the checkout, so
    # its own relay is the one imported.
    src = env.get("PYTHONPATH", str(ROOT))
    times, rss, mib = [], 0.0, 0.0
    for _ in range(3):
        out = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=src
        )
        dt, rss = json.loads(out.stdout)
        times.append(dt)
    out = subprocess.run(
        [sys.executable, "-c", traced], capture_output=True, text=True, env=env, cwd=src
    )
    mib = json.loads(out.stdout)[1]
    return {"startup_ms": min(times) * 1000, "rss_mib": rss, "traced_mib": mib}


def _decisions(inputs: list[str]) -> list[Any]:
    from relay.phi import default_detector
    from relay.phi.normalize import subject_texts

    detector = default_detector()
    out = []
    for text in inputs:
        readings = subject_texts(text)
        j = detector.judge(readings)
        per_reading = []
        for r in readings:
            one = detector.judge([r])
            found = [(f.kind, f.start, f.end, f.confidence, f.rule) for f in detector.scan(r)]
            per_reading.append(
                [
                    one.tier,
                    one.kinds,
                    one.rules,
                    round(one.score, 12),
                    found,
                    sorted(detector.conditions(r)),
                ]
            )
        out.append([readings, j.tier, j.kinds, j.rules, round(j.score, 12), per_reading])
    return out


LONG_CHARS = 65536
_LONG_TEXT = "PHI_SPEED_LONG_TEXT"


def _long_text() -> dict[str, Any]:
    """About 64 KiB of the clean ASCII subjects of the training corpora, drawn in a seeded
    order, joined by spaces and kept only where the window they close is judged clean, so
    no window is strong (the loop would stop there) and none repeats (it would be skipped):
    the window loop's worst case, every window judged. Chosen with this checkout's
    detector; every checkout then times the same text."""
    import random

    from relay.phi import default_detector
    from relay.phi.api import CLEAN
    from relay.phi.detector import WINDOW, windows

    detector = default_detector()
    clean = sorted(
        {r["input"] for r in corpus_rows(every_writer=False) if r["label"] == "clean"} - {""}
    )
    clean = [s for s in clean if s.isascii() and "=?" not in s]
    rnd = random.Random(5)
    parts: list[str] = []
    size = 0
    while size < LONG_CHARS + WINDOW:
        one = rnd.choice(clean)
        tail = " ".join([*parts[-12:], one])[-WINDOW:]
        if detector.judge([tail]).tier == CLEAN:
            parts.append(one)
            size += len(one) + 1
    text = " ".join(parts)[:LONG_CHARS].rsplit(" ", 1)[0]
    cut = windows(text)
    tiers = [detector.judge([w]).tier for w in cut]
    return {
        "text": text,
        "windows": len(cut),
        "distinct": len(set(cut)),
        "clean": tiers.count(CLEAN),
    }


def _long(seconds: float) -> dict[str, Any]:
    """CPU milliseconds to judge the long text (best of three, and of `seconds`)."""
    from relay.phi import default_detector
    from relay.phi.normalize import subject_texts

    detector = default_detector()
    text = Path(os.environ[_LONG_TEXT]).read_text(encoding="utf-8")
    detector.judge(subject_texts(text))  # warm
    best, started = math.inf, time.perf_counter()
    for n in range(1000):
        cpu = time.process_time()
        tier = detector.judge(subject_texts(text)).tier
        best = min(best, time.process_time() - cpu)
        if n >= 2 and time.perf_counter() - started > seconds:
            break
    return {"ms": best * 1000, "tier": tier}


def long_subject(targets: list[tuple[str, Path]], rounds: int, seconds: float) -> int:
    """Time the long text (`_long_text`) with each checkout, rounds alternating."""
    made = run(ROOT, "long-text", 0)
    with tempfile.NamedTemporaryFile("w", suffix=".txt", encoding="utf-8", delete=False) as f:
        f.write(made["text"])
    os.environ[_LONG_TEXT] = f.name
    try:
        times: dict[str, list[float]] = {label: [] for label, _ in targets}
        tiers = {}
        for _ in range(rounds):
            for label, src in targets:
                got = run(src, "long", seconds)
                times[label].append(got["ms"])
                tiers[label] = got["tier"]
    finally:
        os.unlink(f.name)
    print(
        f"{len(made['text'])} characters of clean subjects, {made['windows']} windows "
        f"({made['distinct']} distinct, {made['clean']} judged clean), subject_texts + judge"
    )
    best = {label: min(t) for label, t in times.items()}
    for label, _ in targets:
        ratio = f"    {best['new'] / best['old']:.2f}x" if "old" in best and label == "new" else ""
        print(f"  {label}: {best[label]:.0f} ms CPU (best of {rounds}), {tiers[label]}{ratio}")
    print(f"target < 50 ms: {'met' if best['new'] < 50 else 'NOT met'}")
    return 0


# --- `--shapes`: 64 KiB subjects of the shapes an attacker might send ----------------

SHAPES = (
    "repeated name",
    "random words",
    "digits",
    "one huge word",
    "mixed scripts",
    "encoded words",
    "invisible characters",
    "leetspeak",
)
SMALL_CHARS = 1638  # 1.6 KiB: the same shape at this length is the baseline of its row
_PHI_TAIL = " Jane Okafor DOB 03/14/1962 your HIV test came back positive"


def _common_words() -> list[str]:
    from relay.phi.normalize import DATA as NORMALIZE_DATA

    lines = (NORMALIZE_DATA / "words_common.txt").read_text(encoding="utf-8").splitlines()
    return [w for w in lines if w and not w.startswith("#")]


def _shape_word(shape: str, rnd: Any, common: list[str]) -> str:
    if shape == "random words":
        return str(rnd.choice(common))
    if shape == "digits":
        return str(rnd.randrange(10 ** rnd.randrange(1, 7)))
    if shape == "mixed scripts":
        return "".join(rnd.choice("ae\u0430\u0431\u0434\u0397\u0399\u8a3a\u65ad") for _ in range(6))
    if shape == "encoded words":
        return f"=?UTF-8?Q?{rnd.choice(common)}_=C3=A9{rnd.randrange(1000)}?="
    if shape == "invisible characters":
        return "\u200b".join(rnd.choice(common)) + "\u00ad"
    # leetspeak
    return str(rnd.choice(common)).translate(str.maketrans("aeist", "4315+")) + str(
        rnd.randrange(10)
    )


def shape_text(shape: str, size: int) -> str:
    """`size` characters of one shape, seeded, folded ("\r\n " every eight words) as a
    long header is. Every shape but the repeated name never repeats a window, and a line
    of eight words is kept only when the window it closes is judged clean (a strong
    window ends the loop early, so clean text is the costly case), chosen with this
    checkout's detector."""
    import random

    from relay.phi import default_detector
    from relay.phi.api import CLEAN
    from relay.phi.detector import WINDOW
    from relay.phi.normalize import subject_texts

    rnd = random.Random(11)
    if shape == "repeated name":
        return "\r\n ".join(["Jane Okafor " * 4] * (size // 48 + 1))[:size]
    if shape == "one huge word":  # no space anywhere: one token, nothing to fold at
        return "".join(rnd.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(size))
    detector = default_detector()
    common = _common_words()
    lines: list[str] = []
    total, tries = 0, 0
    while total < size:
        line = " ".join(_shape_word(shape, rnd, common) for _ in range(8))
        tail = "\r\n ".join([*lines[-6:], line])[-WINDOW:]
        tries += 1
        # A bounded search: a shape that is never clean is kept as it comes.
        if tries > 4 * (size // 40 + 10) or detector.judge(subject_texts(tail)).tier == CLEAN:
            lines.append(line)
            total += len(line) + 3
    return "\r\n ".join(lines)[:size]


def _shape_texts() -> dict[str, list[str]]:
    return {s: [shape_text(s, LONG_CHARS), shape_text(s, SMALL_CHARS)] for s in SHAPES}


def _cpu_ms(fn: Callable[[], object], seconds: float) -> float:
    """Least CPU milliseconds of `fn` over at least three calls and `seconds`."""
    best, started, n = math.inf, time.perf_counter(), 0
    while n < 3 or time.perf_counter() - started < seconds:
        cpu = time.process_time()
        fn()
        best = min(best, time.process_time() - cpu)
        n += 1
    return best * 1000


def _shapes(seconds: float) -> dict[str, Any]:
    """Per shape: CPU ms at 64 KiB and at 1.6 KiB, the 64 KiB text's tier, and whether PHI
    written at its end (in place of its last characters) is found."""
    from relay.phi import default_detector
    from relay.phi.api import CLEAN
    from relay.phi.normalize import subject_texts

    detector = default_detector()
    texts = json.loads(Path(os.environ[_SHAPE_TEXTS]).read_text(encoding="utf-8"))
    detector.judge(subject_texts(texts["random words"][1]))  # warm
    out: dict[str, Any] = {}
    for shape in SHAPES:
        big, small = texts[shape]
        tail = big[: LONG_CHARS - len(_PHI_TAIL)] + _PHI_TAIL
        out[shape] = {
            "big": _cpu_ms(lambda b=big: detector.judge(subject_texts(b)), seconds),
            "small": _cpu_ms(lambda s=small: detector.judge(subject_texts(s)), seconds / 4),
            "tier": detector.judge(subject_texts(big)).tier,
            "tail_found": detector.judge(subject_texts(tail)).tier != CLEAN,
        }
    return out


_SHAPE_TEXTS = "PHI_SPEED_SHAPE_TEXTS"


def shapes(targets: list[tuple[str, Path]], rounds: int, seconds: float) -> int:
    """Print the 64 KiB time of each shape, its 1.6 KiB time (the baseline of the same
    run) and their ratio (40 is linear), per checkout, rounds alternating."""
    made = run(ROOT, "shape-texts", 0)
    with tempfile.NamedTemporaryFile("w", suffix=".json", encoding="utf-8", delete=False) as f:
        json.dump(made, f)
    os.environ[_SHAPE_TEXTS] = f.name
    got: dict[str, list[dict[str, Any]]] = {label: [] for label, _ in targets}
    try:
        for _ in range(rounds):
            for label, src in targets:
                got[label].append(run(src, "shapes", seconds))
    finally:
        os.unlink(f.name)
    print(
        f"one subject of {LONG_CHARS} characters (64 KiB, folded) and of {SMALL_CHARS} "
        "(1.6 KiB) per shape, subject_texts + judge, CPU ms (least of the rounds)"
    )
    head = f"{'shape':<22}"
    for label, _ in targets:
        head += f"{label + ' 64K ms':>13}{'1.6K ms':>9}{'ratio':>7}"
    if len(targets) == 2:
        head += "   64K new/old"
    print(head + "   64K tier, PHI at the end")
    worst = 0.0
    for shape in SHAPES:
        line = f"{shape:<22}"
        best = {}
        for label, _ in targets:
            big = min(r[shape]["big"] for r in got[label])
            small = min(r[shape]["small"] for r in got[label])
            best[label] = big
            line += f"{big:>13.1f}{small:>9.2f}{big / small:>7.1f}"
        if len(targets) == 2:
            line += f"   {best['new'] / best['old']:>11.2f}x"
        worst = max(worst, best["new"])
        found = all(r[shape]["tail_found"] for rs in got.values() for r in rs)
        tiers = "/".join(sorted({r[shape]["tier"] for rs in got.values() for r in rs}))
        print(line + f"   {tiers}, " + ("found" if found else "MISSED"))
    met = "met" if worst < 50 else "NOT met"
    print(f"target < 50 ms for every shape: {met} (worst {worst:.0f} ms)")
    return 0


def worker(mode: str, seconds: float) -> None:
    _pin()
    import relay

    where = Path(relay.__file__).resolve().parent.parent
    if where != Path(os.environ.get("PYTHONPATH", str(where))).resolve():
        sys.exit(f"relay was imported from {where}, not from PYTHONPATH")
    inputs = [r["input"] for r in corpus_rows(every_writer=mode == "decide")]
    if mode == "rate":
        result: Any = {"rate": _rate(inputs, seconds), "subjects": len(inputs)}
    elif mode == "stages":
        result = _stages(inputs, max(1, round(seconds)))
    elif mode == "startup":
        result = _startup()
    elif mode == "long-text":
        result = _long_text()
    elif mode == "long":
        result = _long(seconds)
    elif mode == "shapes":
        result = _shapes(seconds)
    elif mode == "shape-texts":
        result = _shape_texts()
    else:
        result = _decisions(inputs)
    json.dump(result, sys.stdout)


# --- the driver ---------------------------------------------------------------------


def run(src: Path, mode: str, seconds: float) -> Any:
    env = {**os.environ, "PYTHONPATH": str(src)}
    out = subprocess.run(
        [
            sys.executable,
            str(Path(__file__).resolve()),
            "--worker",
            mode,
            "--seconds",
            str(seconds),
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        check=False,
    )
    if out.returncode != 0:
        sys.exit(f"phi_speed: the worker for {src} failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout)


# What `_decisions` records of a row, by position: the judgement over all readings, then
# per reading the same and the findings and condition tags.
_FIELDS = ("tier", "kinds", "rules", "score")
_READING_FIELDS = (*_FIELDS, "findings", "conditions")


def differences(x: list[Any], y: list[Any]) -> set[str]:
    """The fields in which two rows of `_decisions` differ (empty when identical)."""
    if x[0] != y[0]:
        return {"readings"}
    out = {name for name, a, b in zip(_FIELDS, x[1:5], y[1:5], strict=True) if a != b}
    for one, other in zip(x[5], y[5], strict=True):
        out |= {
            f"reading {name}"
            for name, a, b in zip(_READING_FIELDS, one, other, strict=True)
            if a != b
        }
    return out


def compare(new: Path, old: Path) -> int:
    """Print how many rows differ and in which fields; a decision differs when the tier,
    kinds or rule ids of the judgement do (a score alone differs when, say, the scorer is
    no longer run where a decisive rule settles the subject)."""
    rows = corpus_rows(every_writer=True)
    a, b = run(new, "decide", 0), run(old, "decide", 0)
    per_row = [(r["where"], differences(x, y)) for r, x, y in zip(rows, a, b, strict=True)]
    differ = [(where, fields) for where, fields in per_row if fields]
    decisions = {"tier", "kinds", "rules", "readings"}
    decided = [where for where, fields in differ if fields & decisions]
    print(f"compared {len(rows)} rows of the corpora in tests/data: {len(differ)} differ")
    print(f"  decisions (tier, kinds or rule ids of the judgement) differ: {len(decided)}")
    names = ["readings", *_FIELDS, *(f"reading {name}" for name in _READING_FIELDS)]
    counts = dict.fromkeys(names, 0)
    for _where, fields in differ:
        for name in fields:
            counts[name] += 1
    print("  rows that differ in each field: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
    for where, fields in differ[:50]:
        print(f"  differs: {where} ({', '.join(sorted(fields))})")
    return 1 if differ else 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--old", type=Path, help="a baseline checkout (a directory holding relay/)")
    ap.add_argument("--compare", action="store_true", help="check decisions are identical to --old")
    ap.add_argument("--seconds", type=float, default=2.0, help="length of one timed round")
    ap.add_argument("--rounds", type=int, default=3, help="timed rounds per checkout")
    ap.add_argument(
        "--long",
        action="store_true",
        help="time a 64 KiB subject of clean subjects that never repeats a window",
    )
    ap.add_argument(
        "--shapes",
        action="store_true",
        help="time 64 KiB subjects of each attacker shape against 1.6 KiB of the same",
    )
    ap.add_argument(
        "--all-writers",
        action="store_true",
        help="--compare on every train and validation writer (never heldout or spent)",
    )
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        worker(args.worker, args.seconds)
        return 0
    if args.all_writers:
        os.environ[_ALL_WRITERS] = "1"
    if args.compare:
        if args.old is None:
            ap.error("--compare needs --old DIR")
        return compare(ROOT, args.old)
    targets = [("new", ROOT)] + ([("old", args.old)] if args.old else [])
    if args.long:
        return long_subject(targets, args.rounds, args.seconds)
    if args.shapes:
        return shapes(targets, args.rounds, args.seconds)
    rates: dict[str, list[float]] = {label: [] for label, _ in targets}
    subjects = 0
    for _ in range(args.rounds):
        for label, src in targets:
            got = run(src, "rate", args.seconds)
            rates[label].append(got["rate"])
            subjects = got["subjects"]
    # The instrumented passes alternate between checkouts too, and each stage keeps its
    # least time over the rounds: a burst of load on the shared machine during one
    # checkout's pass would otherwise show as that checkout's cost.
    stages: dict[str, dict[str, float]] = {}
    for _ in range(args.rounds):
        for label, src in targets:
            got = run(src, "stages", 1)
            prev = stages.get(label, got)
            stages[label] = {k: min(v, prev.get(k, v)) for k, v in got.items()}
    start = {label: run(src, "startup", 0) for label, src in targets}
    best = {label: max(r) for label, r in rates.items()}
    print(f"{subjects} subjects (training corpora), subject_texts + judge, one core")
    cols = [label for label, _ in targets]
    head = f"{'':<26}" + "".join(f"{c:>12}" for c in cols) + ("    new/old" if args.old else "")
    print(head)

    def line(name: str, values: dict[str, float], fmt: str, ratio: bool = True) -> None:
        text = f"{name:<26}" + "".join(f"{values[c]:>12{fmt}}" for c in cols)
        if args.old and ratio:
            old = values["old"]
            text += f"    {values['new'] / old:>6.2f}x" if old else "        -"
        print(text)

    line("subjects/s (best round)", best, ",.0f")
    for stage in stages["new"]:
        line(f"  {stage} µs/subject", {c: stages[c].get(stage, 0.0) for c in cols}, ".1f")
    line("start-up ms", {c: start[c]["startup_ms"] for c in cols}, ".0f")
    line("RSS growth MiB", {c: start[c]["rss_mib"] for c in cols}, ".1f")
    line("allocated MiB", {c: start[c]["traced_mib"] for c in cols}, ".1f")
    print(
        "rounds (subjects/s): "
        + "; ".join(f"{c} " + ", ".join(f"{r:,.0f}" for r in rates[c]) for c in cols)
    )
    target = 20_000
    print(f"target >= {target:,}/s on one core: {'met' if best['new'] >= target else 'NOT met'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
