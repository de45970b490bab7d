"""The detector's fast paths give exactly what the general code gives, for any text.

Each fast path (plain ASCII subjects skip decoding, whitespace collapsing and
accent folding; a pattern is searched only when the text holds what every match of
it needs) is checked against the general code or the pattern it shortcuts, on the
subjects of the older corpora and of writers w01-w11 in tests/data (never the
held-out writers) and on seeded random texts built from the characters the
shortcuts test for (spaces, tabs, line breaks, encoded-word marks, spaced-out
letters, digits and separators, control and non-ASCII characters).
"""

from __future__ import annotations

import random
import re
import zlib
from collections.abc import Callable
from functools import cache
from pathlib import Path

import pytest

from relay.phi import detector, features, rules
from relay.phi import normalize as normalize_module
from relay.phi.detector import _DIGITS_NEEDED, vocabulary
from relay.phi.normalize import _decoded_texts, _fold, _normalize, fold, normalize, subject_texts
from relay.phi.rules import first_words, runs

DATA = Path(__file__).resolve().parents[2] / "data"
_ALPHABET = [*"ab CDe1 2  3\t\r\n=?QBq_:#([x", "\x0b", "\x1c", "\xa0", "é", "İ", "\u200b", " "]


def _writers() -> list[Path]:
    """Writers w01-w11, never the held-out ones (split `heldout`)."""
    split = (DATA / "corpus" / "split.tsv").read_text(encoding="utf-8").splitlines()
    parts = dict(line.split("\t") for line in split if line and not line.startswith("#"))
    return [
        DATA / "corpus" / f"{w}.tsv"
        for w, part in sorted(parts.items())
        if part != "heldout"
        and int(w.lstrip("w")) <= 11
        and (DATA / "corpus" / f"{w}.tsv").exists()
    ]


def _corpus() -> list[str]:
    out = []
    for path in [*sorted(DATA.glob("*.tsv")), *_writers()]:
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


@cache
def _folded() -> dict[str, str]:
    return {t: fold(normalize(t)) for t in TEXTS}


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


# --- patterns skipped when the text lacks what every match holds --------------------

_TOKEN = re.compile(r"[^\W_]+(?:['\-][^\W_]+)*")


def test_runs_are_the_maximal_letter_and_digit_runs() -> None:
    for text in TEXTS:
        folded = fold(text)
        assert runs(folded, frozenset(_TOKEN.findall(folded))) == set(
            re.findall(r"[^\W_]+", folded)
        )


def test_first_words_reads_plain_alternations_only() -> None:
    assert first_words("a1c|blood sugar|platelets?") == {"a1c", "blood", "platelet", "platelets"}
    with pytest.raises(ValueError, match="not a plain word"):
        first_words("a1c|(?:x)")


_DIGIT_EXAMPLES = [
    "SSN 123-45-6789 and 123 45 6789",
    "ssn ending 6789",
    "call (312) 555-0187 or 312.555.0187 x12, +1-312-555-0187",
    "+44 20 7946 0958, +34 612 34 56 78, +33 (0) 1 23 45 67 89",
    "(0121) 496 0218 and 020 7946 0958",
    "NI AB 12 34 56 C and AB123456C",
    "cell 2125550100 or +12125550100",
    "DEA AB1234563 and BX9876543",
    "NPI 1234567893, 2234567891",
    "Dx E11.9, F32.A, Z30.01",
    "acct 12345678901 and 99887766",
    "ref XJH882311901 and AB-123456",
    "Springfield, IL 62704 and CA 90210-1234",
    "zip 90210, codigo postal 28001",
    "London SW1A 1AA, M1 1AE",
]


def _digit_samples() -> list[str]:
    rng = random.Random(9)
    chars = "0123456789" * 4 + " -./()+\tABCDEFGHJKLMNPRSTWXZ" + "abc"
    out = _DIGIT_EXAMPLES + TEXTS
    out += ["".join(rng.choice(chars) for _ in range(rng.randrange(4, 30))) for _ in range(6000)]
    return out


def test_identifier_patterns_need_the_digits_they_are_skipped_without() -> None:
    samples = _digit_samples()
    for pattern, (total, run, literal) in _DIGITS_NEEDED.items():
        matches = [m.group(0) for text in samples for m in pattern.finditer(text)]
        assert matches, pattern.pattern  # the examples exercise every pattern
        for match in matches:
            digits = re.findall(r"\d+", match)
            assert sum(map(len, digits)) >= total, (pattern.pattern, match)
            assert max(map(len, digits)) >= run, (pattern.pattern, match)
            assert literal in match, (pattern.pattern, match)


def _word_gates() -> list[tuple[re.Pattern[str], frozenset[str], list[str]]]:
    v = vocabulary()
    analytes = [a for a in detector._ANALYTES.split("|") if "?" not in a]
    return [
        (
            detector._ANALYTE_VALUE,
            detector._ANALYTE_WORDS,
            [f"your {a} was high" for a in analytes] + ["platelets low", "a1c-level 9.1%"],
        ),
        (
            detector._NO_RX,
            detector._NO_RX_WORDS,
            ["without a prescription", "no receta", "over-the-counter", "otc pain relief"],
        ),
        (
            detector._RESULTS_POSS,
            detector._POSSESSED_NOUNS[0][2],
            [f"your lab {w} are in" for w in detector._POSSESSED_NOUNS[0][2]],
        ),
        (
            detector._RX_POSS,
            detector._POSSESSED_NOUNS[1][2],
            [f"your new {w} is ready" for w in detector._POSSESSED_NOUNS[1][2]],
        ),
        (
            rules._SEGMENT,
            rules._SEGMENT_WORDS,
            [f"for {w} taking insulin" for w in rules._SEGMENT_WORDS]
            + ["insulin users we care for", "pump patients of ours"],
        ),
        (
            v.address,
            v.street_suffix_words,
            [f"42 Oak {s.title()} and 7 N Elm {s}" for s in v.street_suffix_words],
        ),
        (
            v.address_es,
            v.street_prefix_words,
            [f"{p.title()} Mayor 12" for p in v.street_prefix_words],
        ),
    ]


@pytest.mark.parametrize("index", range(7))
def test_word_patterns_need_a_word_they_are_skipped_without(index: int) -> None:
    pattern, words, examples = _word_gates()[index]
    hits = 0
    folded_corpus = _folded()
    for text in examples + TEXTS:
        folded = folded_corpus.get(text) or fold(normalize(text))
        # Case-insensitive patterns are tested against lower-case runs on ASCII text only.
        if pattern.flags & re.IGNORECASE and not text.isascii():
            continue
        subject = text if pattern.flags & re.IGNORECASE else folded
        for m in pattern.finditer(subject):
            hits += 1
            found = set(re.findall(r"[^\W_]+", m.group(0).lower()))
            assert found & words, (pattern.pattern[:40], m.group(0))
    assert hits >= len(examples) // 2


def test_dx_cue_needs_dx_or_diagnos() -> None:
    for text in ["Dx: asthma", "DDX - flu", "Diagnosis: x", "diagnostico: asma", *TEXTS]:
        folded = _folded().get(text) or fold(normalize(text))
        for m in rules._DX.finditer(folded):
            assert not folded.isascii() or "dx" in m.group(0) or "diagnos" in m.group(0)


def test_whitespace_is_collapsed_unless_it_is_single_spaces_already() -> None:
    spaces = [" ", "  ", "\t", "\xa0", "\u2003", "\u3000", "\x1c", "\x85", "\u2028"]
    rng = random.Random(10)
    texts = TEXTS + [
        "".join(rng.choice(["a", "é", *spaces]) for _ in range(12)) for _ in range(3000)
    ]
    for text in texts:
        if normalize_module._UNUSUAL_SPACE.search(text) is None:
            assert normalize_module._SPACES.sub(" ", text) == text


def test_a_text_without_encoded_words_decodes_to_itself() -> None:
    for text in TEXTS:
        if "=?" not in text:
            assert normalize_module.decode_rfc2047_all(text) == [text]


def test_ending_cues_hold_a_cue_word() -> None:
    examples = ["acct ending in 0463", "ends with 1234", "last four 1234", "last 4 digits of 9876"]
    examples += ["terminada en 1234", "que termina en 5678", "ultimos 4 digitos 1111"]
    examples += ["final 2222", "terminando em 3333", "com final 4444", *TEXTS]
    hits = 0
    for text in examples:
        folded = _folded().get(text) or fold(normalize(text))
        for m in rules._ENDING.finditer(folded):
            hits += 1
            assert any(cue in m.group(0) for cue in rules._ENDING_CUES), m.group(0)
    assert hits >= 10


def test_feature_set_equals_hashing_every_4gram_of_the_digit_masked_text() -> None:
    import zlib

    from relay.phi.features import MASK, feature_set, model_text

    for text in [*TEXTS[::7], "MRN 4451234", "call 312-555-0187", "A1C 9.2%"]:
        data = (" " + model_text(text) + " ").encode("utf-8")
        grams = {zlib.crc32(data[i : i + 4]) & MASK for i in range(len(data) - 3)}
        # Every 4-gram of the digit-masked text is a feature (digits 1-9 read as 0).
        assert grams <= feature_set(text)


def test_the_scorer_sums_the_shipped_int8_weights() -> None:
    import array
    import json
    import math

    from relay.phi.features import DIM
    from relay.phi.scorer import WEIGHTS, Scorer

    scorer = Scorer.load()
    head, _sep, body = WEIGHTS.read_bytes().partition(b"\n")
    meta = json.loads(head)
    weights = array.array("b")
    weights.frombytes(body[:DIM])
    assert scorer._w == weights
    # The hidden layer, read from the file by hand: DIM rows of `units` int8 weights.
    units = meta.get("hidden", 0)
    table = array.array("b")
    table.frombytes(body[DIM:])
    assert len(table) == DIM * units
    rng = random.Random(11)
    for text in TEXTS[::50]:
        found = sorted(features.feature_set(text))
        expected = sum(weights[i] for i in found) * scorer.scale + scorer.bias
        for j in range(units):
            summed = sum(table[i * units + j] for i in found)
            unit = summed * meta["unit_scales"][j] + meta["unit_biases"][j]
            expected += max(unit, 0.0) * meta["unit_weights"][j]
        assert math.isclose(scorer.log_odds(text), expected, rel_tol=0, abs_tol=1e-9)
    for n in (0, 1, 2, 300):
        picked = {rng.randrange(len(weights)) for _ in range(n)}
        biased = [scorer._biased[i] - 128 for i in picked]
        assert biased == [weights[i] for i in picked]


def _ascii_texts() -> list[str]:
    """The ASCII corpus subjects and seeded random ASCII texts of every character class
    the token patterns tell apart (capitals, lower case, digits, `_`, `,` `:` `-`, other
    punctuation, whitespace and the control characters a str pattern's \\s takes)."""
    rng = random.Random(9)
    alphabet = [*"AaBbZz09_,:-.!'# \t\n", "\x0b", "\x1c", "\x1f", "\x7f"]
    texts = [t for t in TEXTS if t.isascii()]
    for _ in range(4000):
        texts.append("".join(rng.choice(alphabet) for _ in range(rng.randrange(0, 16))))
    return texts


def test_ascii_shapes_read_off_group_numbers_equal_the_shape_of_each_token() -> None:
    for text in _ascii_texts():
        tokens = features._SHAPE_TOKEN_ASCII.findall(text)
        general = "".join(map(features._shape, tokens)).encode()
        fast = bytes(map(features._LASTINDEX, features._SHAPES_ASCII.finditer(text)))
        assert fast.translate(features._SHAPE_OF_GROUP) == general, text


def test_ascii_words_found_in_bytes_equal_the_words_of_the_text() -> None:
    for text in _ascii_texts():
        general = [w.encode() for w in features._WORD_ASCII.findall(text)]
        assert features._WORD_ASCII_BYTES.findall(text.encode()) == general, text


def test_a_row_is_built_when_first_summed_and_holds_every_lane() -> None:
    from relay.phi.scorer import Scorer

    scorer = Scorer.load()
    hidden = scorer.hidden
    assert hidden is not None
    units = len(hidden.scales)
    picked = [7, 70_000, 262_143]
    assert [scorer._rows[i] for i in picked] == [None] * 3  # nothing built at start-up
    scorer._rows.build(picked)
    for i in picked:
        row = scorer._rows[i]
        assert row is not None
        lanes = [(row >> (32 * j)) & 0xFFFFFFFF for j in range(units + 1)]
        wide = scorer._w[i]
        table = hidden.table[i * units : (i + 1) * units]
        assert lanes == [wide + 128, *[(b ^ 0x80) for b in table]]


def _grams_slow(data: bytes, size: int, start: int) -> list[int]:
    return [
        zlib.crc32(data[i : i + size], start) & features.MASK for i in range(len(data) - size + 1)
    ]


@pytest.mark.parametrize(("size", "start"), [(4, 0), (2, 9), (3, 10), (1, 0), (5, 77)])
def test_ngram_hashes_in_c_calls_equal_one_crc_a_position(size: int, start: int) -> None:
    # `_grams` computes the CRC-32 of every n-gram through byte tables and big-integer
    # XOR; it must give exactly the buckets of one zlib.crc32 call a position, in order.
    rng = random.Random(size * 100 + start)
    planes = features._gram_planes(size, start)
    lengths = [*range(size, size + 70), *(rng.randrange(size, 3000) for _ in range(300))]
    for n in lengths:
        data = bytes(rng.randrange(256) for _ in range(n))
        assert list(features._grams(data, planes)) == _grams_slow(data, size, start), n
    for text in TEXTS[:3000]:
        data = (" " + text + " ").encode("utf-8")
        if len(data) >= size:
            assert list(features._grams(data, planes)) == _grams_slow(data, size, start)


def test_feature_set_is_the_same_with_and_without_the_ngram_fast_path(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Long texts (every corpus subject three times over, and windows of shapes) take the
    # fast path; the general code must give the same sets.
    rng = random.Random(4)
    texts = [" ".join(rng.sample(TEXTS[:5000], k)) for k in (6, 20) for _ in range(200)]
    texts += ["\u8a3a\u65ad " * 60, "\u0430\u0431c" * 100, "a" * 500, "é" * 300]
    fast = [features.feature_set(t, ["r:x"], t.split()) for t in texts]
    monkeypatch.setattr(features, "_GRAMS_FROM", 10**9)
    slow = [features.feature_set(t, ["r:x"], t.split()) for t in texts]
    assert fast == slow
