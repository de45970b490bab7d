"""The one canonicaliser: every text a PHI policy reads (subject, body, HTML) passes here.

Encoding must never hide PHI. Raw header values are unfolded and their RFC 2047
encoded-words decoded with the declared charset, mapped as the WHATWG Encoding
Standard maps labels (data/encodings.tsv); bytes are decoded with replacement so
one bad octet cannot hide the rest, and when the charset is doubtful (unknown
label, "replacement" label, raw 8-bit text, a decoding that needed replacements)
every plausible decoding is returned for judging (`subject_texts`).

Text is then folded (`normalize`): NFKC (fullwidth and mathematical forms),
invisible characters and soft hyphens dropped, look-alike letters, digits and
punctuation mapped (data/confusables.tsv), spaced-out letters and digits joined
("d i a b e t e s"), whitespace collapsed. Case is kept there: the detector reads
capitals as a cue for names, and `fold` lower-cases and strips accents keeping
offsets. `expand` gives a second reading with textspeak and clinical shorthand
written out (data/shorthand.tsv) and leetspeak undone (data/leet.tsv); `views`
returns both. `html_text` reduces HTML to the text a reader sees, in linear time.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import itertools
import re
import unicodedata
from array import array
from bisect import bisect_left
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import cache, lru_cache
from itertools import compress
from pathlib import Path

from selectolax.lexbor import LexborHTMLParser

from relay.phi import lexicon

DATA = Path(__file__).with_name("data")

# An encoded-word (RFC 2047 section 2), lenient: RFC 2231 language suffixes, and
# spaces inside the text that broken mailers leave in Q-encoded words.
_ENCODED_WORD = re.compile(r"=\?([^?\s]+)\?([bBqQ])\?([^?]*?)\?=")
_FOLD = re.compile(r"\r?\n(?=[ \t])")
_BARE_NEWLINE = re.compile(r"[\r\n]+")
_SPACES = re.compile(r"\s+")
_UNUSUAL_SPACE = re.compile(r"[^\S ]|  ")
_SURROGATE = re.compile("[\udc80-\udcff]")
# Three or more single letters or digits each followed by exactly one space: a word
# written spaced out ("d i a b e t e s", "4 4 5 1 2 3 4"). Two spaces end the word.
_SPACED = re.compile(r"(?<![^\s(\[:#])(?:[^\W_] (?! )){2,}[^\W_](?![^\W_])")
# Single characters one space apart, with two spaces (or an end of the text) on each
# side: a word, number or date written spaced out on purpose ("Reply  t o  us",
# "born  1 0 / 0 6 / 1 9 5 1  -", "Claim  4 4 1 9 - 0 0 8 2"). The double spaces set
# it apart, so short words, punctuation and mixed case are joined too. Each match
# starts at a text start or after two spaces and stops at the next two: linear.
_SPACED_APART = re.compile(r"(?:^\s*|(?<=  ))(?:\S (?! ))+\S(?=  |\s*$)")
# A whole text of four or more single characters one space apart ("5 0 3 - 7 7 1").
_SPACED_WHOLE = re.compile(r"\s*(?:\S (?! )){3,}\S\s*")
# Every spaced-out run holds " x " (its second letter between spaces): a cheap test
# with a literal prefix the regex engine scans for, before the costly pattern.
_SPACED_HINT = re.compile(r" [^\W_] ")
# Three or more single letters with the same dot, hyphen, underscore or asterisk between
# them ("H.I.V", "s-t-e-r-i-l-e", "c_a_n_c_e_r"): one word written apart. Letters only
# (a code such as "A-1-B" or a version "4.2.1" keeps its separators); two letters stay
# ("a.m.", "e.g."). Each match scans its run once: linear.
_SEPARATED = re.compile(r"(?<![^\W_])[^\W\d_]([.\-_*])[^\W\d_](?:\1[^\W\d_])+(?![^\W_])\.?")
_SEPARATED_HINT = re.compile(r"[.\-_*][^\W\d_][.\-_*]")
_REPLACEMENT = "\ufffd"
_NON_ASCII = re.compile(r"[^\x00-\x7f]")
_LOST_IN_WORD = re.compile(r"(?<=[^\W\d_])\ufffd+(?=[^\W\d_])")
_FOR_YOU = re.compile(r"\b4 (?=you\b|your\b)", re.I)


def _data_lines(name: str) -> list[list[str]]:
    text = (DATA / name).read_text(encoding="utf-8")
    return [ln.split("\t") for ln in text.splitlines() if ln and not ln.startswith("#")]


# Zero-width, joiners, direction marks, soft hyphen, BOM, variation selectors, tag
# characters and fillers: invisible, so they can split "HIV" into letters no rule reads.
_INVISIBLE: dict[int, None] = dict.fromkeys(
    [
        *range(0x200B, 0x2010),
        *range(0x202A, 0x202F),
        *range(0x2060, 0x2070),
        *range(0xFE00, 0xFE10),
        *range(0xE0000, 0xE0080),
        *range(0xE0100, 0xE01F0),
        0x00AD,
        0x034F,
        0x061C,
        0x115F,
        0x1160,
        0x17B4,
        0x17B5,
        0x180E,
        0x3164,
        0xFEFF,
        0xFFA0,
        0x1D173,
        0x1D174,
        0x1D175,
        0x1D176,
        0x1D177,
        0x1D178,
        0x1D179,
        0x1D17A,
    ]
)


# Letters of scripts that draw like Latin ones (Greek, Cyrillic, Armenian, Cherokee).
_SCRIPTS = "\u0370-\u03ff\u0400-\u052f\u0530-\u058f\u13a0-\u13ff"
_IN_SCRIPTS = re.compile(rf"[{_SCRIPTS}]")


def _in_scripts(code: int) -> bool:
    return _IN_SCRIPTS.match(chr(code)) is not None


@cache
def _confusables() -> dict[int, str]:
    """Look-alikes outside those scripts (dashes, slashes, digits, Latin variants)."""
    table = {int(code[2:], 16): rep for code, rep, *_ in _data_lines("confusables.tsv")}
    return {k: v for k, v in table.items() if not _in_scripts(k)}


@cache
def _look_alikes() -> tuple[dict[int, str | None], re.Pattern[str]]:
    """One table that drops the invisibles and maps the look-alikes (no key is both, and
    no replacement holds an invisible, so one pass is the two), and a pattern that finds
    any of its characters: most text holds none, and searching a character class is much
    cheaper than translating through a dict."""
    table: dict[int, str | None] = {**_confusables(), **_INVISIBLE}
    return table, re.compile(f"[{_ranges(table)}]")


def _ranges(codes: Iterable[int]) -> str:
    """A character class body for `codes`, runs of neighbours as ranges (a long list of
    single characters is searched slowly)."""
    out: list[str] = []
    for _key, run in itertools.groupby(enumerate(sorted(codes)), lambda p: p[1] - p[0]):
        found = [code for _i, code in run]
        first, last = re.escape(chr(found[0])), re.escape(chr(found[-1]))
        out.append(first if len(found) == 1 else f"{first}-{last}")
    return "".join(out)


_INVISIBLES = re.compile(f"[{_ranges(_INVISIBLE)}]")


@cache
def _script_letters() -> dict[int, str]:
    table = {int(code[2:], 16): rep for code, rep, *_ in _data_lines("confusables.tsv")}
    return {k: v for k, v in table.items() if _in_scripts(k)}


@cache
def _real_script() -> re.Pattern[str]:
    """Letters of those scripts that draw like no Latin letter ("д", "λ")."""
    spans = [(0x0370, 0x03FF), (0x0400, 0x052F), (0x0530, 0x058F), (0x13A0, 0x13FF)]
    table = _script_letters()
    real = [c for lo, hi in spans for c in range(lo, hi + 1) if c not in table and chr(c).isalpha()]
    return re.compile(f"[{_ranges(real)}]")


_SCRIPT_WORD = re.compile(rf"[^\W_]*[{_SCRIPTS}][^\W_]*")
_ASCII_LETTER = re.compile("[A-Za-z]")
_LATIN, _AMBIGUOUS, _OTHER = 1, 0, -1
_LETTERS = re.compile(r"([^\W\d_]+)")
_LATIN_WORD = re.compile("[A-Za-z\u00c0-\u024f\u1e00-\u1eff]+")


def _unmask(text: str) -> str:
    """Greek, Cyrillic, Armenian and Cherokee look-alikes read as the Latin letters they draw.

    A word that mixes them with Latin letters ("Your" with a Cyrillic o) is Latin. A word
    made only of look-alikes (Cyrillic "TO", "pa", "paka") is read as its neighbours are:
    Latin among Latin words ("SIGN IN TO SEE"), itself among Russian or Greek ones, or
    between the two (a Russian "nomer" before "Medicare"); with no neighbour to tell, as
    most of the text's words are, and an all-capitals word as an acronym in Latin. A word
    with letters that have no Latin look-alike is real Russian or Greek and stays. Linear
    in the words.
    """
    table = _script_letters()
    ambiguous = False

    def mixed(match: re.Match[str]) -> str:
        nonlocal ambiguous
        word = match.group(0)
        if _ASCII_LETTER.search(word) is not None:
            return word.translate(table)
        if _real_script().search(word) is None:
            ambiguous = True
        return word

    # Most text with such letters has none made only of look-alikes: one pass, in C but
    # for the words that hold them.
    text = _SCRIPT_WORD.sub(mixed, text)
    if not ambiguous:
        return text
    # Pieces: text between words, then a word, alternately (parts[1::2] are the words).
    parts = _LETTERS.split(text)
    real = _real_script()
    kinds: list[int] = []
    todo: list[int] = []  # the words made only of look-alikes
    for i, word in enumerate(parts[1::2]):
        if word.isascii():
            kinds.append(_LATIN)
        elif _IN_SCRIPTS.search(word) is None:
            # Latin with accents ("sonèt") is Latin; Chinese or Arabic tells nothing.
            kinds.append(_LATIN if _LATIN_WORD.fullmatch(word) else _AMBIGUOUS)
        elif real.search(word) is not None:
            kinds.append(_OTHER)
        else:
            kinds.append(_AMBIGUOUS)
            todo.append(i)
    # The nearest decided word on each side of every word (linear: two sweeps).
    left, right = [0] * len(kinds), [0] * len(kinds)
    last = 0
    for i, kind in enumerate(kinds):
        left[i], last = last, kind or last
    last = 0
    for i in range(len(kinds) - 1, -1, -1):
        right[i], last = last, kinds[i] or last
    latin, other = kinds.count(_LATIN), kinds.count(_OTHER)
    overall = (latin > other) - (other > latin)
    for i in todo:
        if left[i] and right[i] and left[i] != right[i]:
            continue  # between Latin and Russian: written in its own script
        word = parts[2 * i + 1]
        votes = left[i] + right[i]
        # Nothing on either side: as most words are, and capitals (an acronym, a
        # Cyrillic "CBC" among Arabic) as Latin.
        kind = (votes > 0) - (votes < 0) or overall or (_LATIN if word.isupper() else 0)
        if kind == _LATIN:
            parts[2 * i + 1] = word.translate(table)
    return "".join(parts)


@cache
def _encodings() -> dict[str, tuple[str, str]]:
    """label -> (WHATWG name, Python codec)."""
    table: dict[str, tuple[str, str]] = {}
    for name, codec, labels in _data_lines("encodings.tsv"):
        for label in labels.split():
            table[label] = (name, codec)
    return table


@cache
def _shorthand() -> dict[str, str]:
    return {short: full for short, full in _data_lines("shorthand.tsv")}


def shorthand_words() -> frozenset[str]:
    """The shorthand `expand` writes out (lower case)."""
    return frozenset(_shorthand())


@cache
def _leet() -> dict[str, str]:
    return {char: letter for char, letter in _data_lines("leet.tsv")}


def charset_codec(label: str) -> str | None:
    """The Python codec for a charset label as the WHATWG Encoding Standard maps it.

    RFC 2231 language suffixes ("utf-8*es") are dropped; labels are trimmed and
    case-folded. Returns None for an unknown label (which is *not* taken as UTF-8),
    "replacement" for the labels browsers refuse to decode, "x-user-defined" for
    that one. Callers judge every plausible decoding in the doubtful cases.
    """
    key = label.split("*", 1)[0].strip().strip("\"'").lower()
    found = _encodings().get(key)
    return found[1] if found else None


def _x_user_defined(data: bytes) -> str:
    return "".join(chr(b) if b < 0x80 else chr(0xF780 + b - 0x80) for b in data)


# The fallbacks judged when a charset is doubtful: what a reader's client most often
# shows for unlabelled or mislabelled bytes.
_FALLBACKS = ("utf-8", "cp1252")


def decodings(data: bytes, label: str | None) -> list[str]:
    """Every plausible decoding of `data`, the declared charset's first. Never raises.

    Decoding uses replacement characters, so a stray byte costs one character, not
    the rest of the text. The declared codec alone is trusted when it decodes
    cleanly; otherwise (unknown or refused label, or replacements needed) the
    UTF-8 and windows-1252 readings are added.
    """
    codec = charset_codec(label) if label else None
    out: list[str] = []
    doubtful = codec is None or codec == "replacement"
    if codec == "x-user-defined":
        out.append(_x_user_defined(data))
    elif codec and codec != "replacement":
        text = data.decode(codec, "replace")
        out.append(text)
        doubtful = _REPLACEMENT in text
    if doubtful or not out:
        if not data.isascii():
            try:
                # Bytes that are valid UTF-8 and not ASCII are UTF-8: a windows-1252 text
                # almost never is, and its reading of them is mojibake ("Ã©", "Ð¿") whose
                # stray digits and fractions ("Ð3/4") look like numbers to the rules.
                strict = data.decode("utf-8")
            except UnicodeDecodeError:
                pass
            else:
                return [*out, strict] if strict not in out else out
        readings = [data.decode(fallback, "replace") for fallback in _FALLBACKS]
        # The likelier reading first (fewer replacement characters and mojibake pairs);
        # the order only decides what is displayed, every reading is judged.
        readings.sort(key=_implausibility)
        out.extend(r for r in readings if r not in out)
    return out


_MOJIBAKE = re.compile(
    "[\u00c2\u00c3\u00e2][\u0080-\u00bf\u0152\u0153\u0160\u0161\u0178\u017d\u017e\u2013-\u203a\u20ac\u2122]"
)


def _implausibility(text: str) -> int:
    return text.count(_REPLACEMENT) + len(_MOJIBAKE.findall(text))


def _word_bytes(encoding: str, text: str) -> bytes | None:
    if encoding in "bB":
        data = re.sub(r"[^A-Za-z0-9+/]", "", text)
        # A lone trailing base64 character carries no whole byte; drop it.
        if len(data) % 4 == 1:
            data = data[:-1]
        data += "=" * (-len(data) % 4)
        try:
            return base64.b64decode(data)
        except (binascii.Error, ValueError):
            return None
    raw = text.replace("_", " ").encode("ascii", "replace")
    # Hex escapes only; a stray "=" stays as itself rather than failing the word.
    return re.sub(rb"=([0-9A-Fa-f]{2})", lambda m: bytes([int(m.group(1), 16)]), raw)


def decode_rfc2047_all(value: str) -> list[str]:
    """Decode encoded-words; every plausible reading, the declared charsets' first.

    Adjacent words of one charset are joined as bytes before decoding: mailers
    split a UTF-8 character across two encoded-words, and decoding each half alone
    would turn it into garbage. Whitespace between encoded-words is dropped (RFC
    2047 section 6.2). A malformed word is kept as text, never dropped.
    """
    if "=?" not in value:
        return [value]  # no encoded-word: what the loop below gives
    # Segments: plain text, or (bytes, label) runs; each run has one or more readings.
    segments: list[list[str]] = []
    pending = bytearray()
    pending_label = ""
    pos = 0

    def flush() -> None:
        nonlocal pending_label
        if pending:
            segments.append(decodings(bytes(pending), pending_label))
            pending.clear()
        pending_label = ""

    for match in _ENCODED_WORD.finditer(value):
        between = value[pos : match.start()]
        label = match.group(1).split("*", 1)[0].lower()
        data = _word_bytes(match.group(2), match.group(3))
        if data is None:
            flush()
            segments.append([between + match.group(3)])
            pos = match.end()
            continue
        if between.strip() or not pending:
            flush()
            segments.append([between])
        elif label != pending_label:
            flush()
        pending += data
        pending_label = label
        pos = match.end()
    flush()
    segments.append([value[pos:]])
    primary = "".join(s[0] for s in segments)
    out = [primary]
    # Alternatives: each doubtful run read each other way (runs are few; no product).
    for i, seg in enumerate(segments):
        for alt in seg[1:]:
            text = "".join(alt if j == i else s[0] for j, s in enumerate(segments))
            if text not in out:
                out.append(text)
    return out


def decode_rfc2047(value: str) -> str:
    """The primary reading of a header value's encoded-words."""
    return decode_rfc2047_all(value)[0]


def _raw_readings(value: str) -> list[str]:
    # Headers parsed from bytes keep undecodable octets as lone surrogates: raw 8-bit
    # text of unknown charset, so every plausible reading is judged.
    if value.isascii() or not _SURROGATE.search(value):
        return [value]
    data = value.encode("utf-8", "surrogateescape")
    return decodings(data, None)


def _join_spaced(match: re.Match[str]) -> str:
    run = match.group(0)
    letters = run.replace(" ", "")
    # "Hepatitis A y B", "vitamina D o E": single capitals joined by a one-letter word
    # are not a spaced-out word; a spaced word is one case (or capitalised).
    if any(c.islower() for c in letters[1:]) and any(c.isupper() for c in letters[1:]):
        # "h e p a t i t i s B", "v i t a m i n D": a word spaced out, then the capital
        # that follows it.
        if len(letters) >= 5 and letters[-1].isupper() and letters[:-1].islower():
            return letters[:-1] + " " + letters[-1]
        return run
    if len(letters) == 3 and any(c.islower() for c in letters):
        return run
    return letters


# Words of one letter (en, es, fr, pt, ru...). Before a spaced-out word one of them is
# either its first letter or a word of its own (Russian "u m a m y" is "u mamy", at mother's;
# "a s t h m a" is "asthma"): both readings are judged (`_spaced_readings`).
# Latin a i y e o u à é; Cyrillic v k s u o i ya a.
_ONE_LETTER_WORDS = frozenset("aiyeou\u00e0\u00e9") | frozenset(
    "\u0432\u043a\u0441\u0443\u043e\u0438\u044f\u0430"
)


def _starts_with_a_word(run: str) -> bool:
    """A spaced-out run whose first letter is a one-letter word, then 4+ letters."""
    return run[0].lower() in _ONE_LETTER_WORDS and len(run) >= 9


def _join_spaced_keeping_word(match: re.Match[str]) -> str:
    run = match.group(0)
    if _starts_with_a_word(run):
        return run[:2] + _join_spaced_rest(run[2:])
    return _join_spaced(match)


def _join_spaced_rest(run: str) -> str:
    m = _SPACED.fullmatch(run)
    return _join_spaced(m) if m is not None else run


def _spaced_readings(text: str) -> list[str]:
    """normalize(text), and when a spaced-out run starts with a one-letter word, also the
    reading with that word kept apart."""
    first = normalize(text)
    if _SPACED_HINT.search(text) is None:
        return [first]
    if not any(_starts_with_a_word(m.group(0)) for m in _SPACED.finditer(text)):
        return [first]
    other = _normalize(text, keep_word=True)
    return [first] if other == first else [first, other]


def _join_apart(match: re.Match[str]) -> str:
    return match.group(0).replace(" ", "")


def _join_separated(match: re.Match[str]) -> str:
    run, sep = match.group(0), match.group(1)
    # A full stop after "H-I-V." ends the sentence; after "U.S.A." it is the last dot.
    end = "." if run.endswith(".") and sep != "." else ""
    return run.rstrip(".").replace(sep, "") + end


def normalize(text: str) -> str:
    """Fold decoded text: NFKC, invisibles, look-alikes, spaced-out words, whitespace."""
    if (
        text.isascii()
        and text.isprintable()
        and "  " not in text
        and _SPACED_HINT.search(text) is None
        and _SEPARATED_HINT.search(text) is None
    ):
        # Printable ASCII without a double space (most subjects): its only whitespace is
        # single spaces and nothing is spaced out, so only the ends can change.
        return text.strip()
    return _normalize(text)


def _normalize(text: str, keep_word: bool = False) -> str:
    if not text.isascii():
        # Invisibles go before NFKC: between a letter and its accent, or between the
        # jamo of a decomposed Hangul syllable, they would stop it composing.
        if _INVISIBLES.search(text) is not None:
            text = text.translate(_INVISIBLE)
        text = unicodedata.normalize("NFKC", text)
        table, present = _look_alikes()
        if present.search(text) is not None:
            text = text.translate(table)
        if _IN_SCRIPTS.search(text) is not None:
            text = _unmask(text)
        # Combining marks stacked on letters survive NFKC as separate characters
        # ("d̸iabetes"); compose what a mapped look-alike left apart (dotless i + accent), then
        # drop the marks that did not compose into a precomposed letter.
        if any(map(unicodedata.combining, _NON_ASCII.findall(text))):
            text = unicodedata.normalize("NFC", text)
            text = "".join(ch for ch in text if not unicodedata.combining(ch))
        if _REPLACEMENT in text:
            # A stray byte inside a word ("H\ufffdIV") must not split it; elsewhere it
            # stands for a lost separator.
            text = _LOST_IN_WORD.sub("", text).replace(_REPLACEMENT, " ")
    if "  " in text or "\t" in text or "\n" in text:
        text = text.replace("\t", " ").replace("\n", " ").replace("\r", " ")
    if _SPACED_HINT.search(text) is not None:
        if "  " in text or _SPACED_WHOLE.fullmatch(text) is not None:
            text = _SPACED_APART.sub(_join_apart, text)
        if _SPACED.search(text) is not None:
            text = _SPACED.sub(_join_spaced_keeping_word if keep_word else _join_spaced, text)
    if _SEPARATED_HINT.search(text) is not None:
        text = _SEPARATED.sub(_join_separated, text)
    if _UNUSUAL_SPACE.search(text) is None:
        return text.strip()  # every run of whitespace is one space already
    return _SPACES.sub(" ", text).strip()


# --- case: a text whose capitals tell nothing ------------------------------------------

# A lower-case letter then a capital (Latin, Cyrillic, Greek): a cheap test before
# counting words in odd case.
_LOWER_UPPER = re.compile(
    "[a-z\u00df-\u00f6\u00f8-\u00ff\u0430-\u045f\u03b1-\u03c9]"
    "[A-Z\u00c0-\u00d6\u00d8-\u00de\u0400-\u042f\u0391-\u03a9]"
)
_ASCII_LOWER_UPPER = re.compile("[a-z][A-Z]")
_CASED_WORD = re.compile(r"[^\W\d_]+")
# Between a name and the next (or a title and a name): "jane okafor", "okafor, jane",
# "dr. ines".
_NEXT_TO = re.compile(r"\.? |, ")
_MATCH_START, _MATCH_END, _MATCH_GROUP = re.Match.start, re.Match.end, re.Match.group
_DIGIT = re.compile(r"\d")
_HOUSE_NUMBER = re.compile(r"(?<![\d.,/:-])\d{1,6}[a-z]? $")
# Reply and forward prefixes: the subject after one starts with a capital.
_PREFIXES = frozenset(("re", "fw", "fwd", "rv", "tr", "aw", "wg", "enc", "res"))


@dataclass(frozen=True)
class _RecaseWords:
    names: frozenset[str]  # person names that are no dictionary word
    every_name: frozenset[str]
    titles: frozenset[str]  # titles that stand before a name ("miss" is also a verb)
    not_after_dr: frozenset[str]  # "your dr. appointment"
    street_suffixes: frozenset[str]
    street_prefixes: frozenset[str]
    cue_words: frozenset[str]  # titles and reply prefixes: a capital may follow them


@cache
def _recase_words() -> _RecaseWords:
    """The word classes `recase` reads, folded (data/names_*.txt, street_*.txt, lex_*)."""

    def rows(name: str) -> list[str]:
        text = (DATA / name).read_text(encoding="utf-8")
        return [fold(ln) for ln in text.splitlines() if ln and not ln.startswith("#")]

    every = frozenset(n for n in [*rows("names_first.txt"), *rows("names_last.txt")] if len(n) >= 3)
    titles = (lexicon.words("titles") - {"miss"}) | {"dr", "dra", "prof"}
    return _RecaseWords(
        names=every - set(rows("names_ambiguous.txt")),
        every_name=every,
        titles=titles,
        not_after_dr=lexicon.words("not_after_dr"),
        street_suffixes=frozenset(w for w in rows("street_suffixes.txt") if len(w) >= 2),
        street_prefixes=frozenset(w for w in rows("street_prefixes_es.txt") if len(w) >= 4),
        cue_words=titles | _PREFIXES,
    )


def uninformative_case(text: str) -> bool:
    """True when capitals in `text` say nothing: all lower case, all capitals, or letters
    in random case ("jAMie wALLaCE's FoOd lOgs"): three in five of its words of three
    letters or more in none of the usual shapes (random case leaves few words in them;
    brand names such as "MyChart" and "PrEP" are a few words of a text)."""
    if text.islower() or text.isupper():
        return True  # (both False for a text without cased letters: Chinese, digits)
    if (_ASCII_LOWER_UPPER if text.isascii() else _LOWER_UPPER).search(text) is None:
        return False
    long = [w for w in _CASED_WORD.findall(text) if len(w) >= 3]
    odd = sum(1 for w in long if not (w.islower() or w.isupper() or w.istitle()))
    return odd >= 2 and odd * 5 >= len(long) * 3


def recase(text: str) -> str:
    """`text` in lower case with the capitals a reader supplies. Same length as `text`.

    Capitals go to the word after a reply prefix ("fw: okafor, jane"), person names
    (data/names_*.txt, less those that are also dictionary words), a name or an initial
    after such a name ("william pierce r"), a title before a name ("dra. ines") and the
    word after "dr." ("dr. hakimi"), and a street address: the words from a house
    number to the street type and the town after its comma ("603 old mill road,
    ashland"; "4417 calle palma"). Linear: each word looks at most four ahead.
    """
    low = text.lower()
    if len(low) != len(text):
        return text  # a letter whose lower case is two ("İ"): leave the text as it came
    v = _recase_words()
    if low.isascii() and not _DIGIT.search(low):
        # No house number, and no word any rule below capitalises (most subjects): skip
        # the word-by-word pass. ASCII words fold to themselves.
        present = set(_CASED_WORD.findall(low))
        if v.every_name.isdisjoint(present) and v.cue_words.isdisjoint(present):
            return low
    found = list(_CASED_WORD.finditer(low))
    starts = list(map(_MATCH_START, found))
    ends = list(map(_MATCH_END, found))
    if low.isascii():  # ASCII lower case folds to itself: the words as they are
        words = list(map(_MATCH_GROUP, found))
    else:
        words = list(map(fold, map(_MATCH_GROUP, found)))
    gaps = list(map(low.__getitem__, map(slice, [0, *ends[:-1]], starts)))
    caps = [False] * len(found)
    names, every_name, titles = v.names, v.every_name, v.titles
    # The first word and sentence starts stay as they are: the rules read no capital
    # there, and a lower-case reading keeps matching what was written.
    due = False
    prev = ""
    for i, word in enumerate(words):
        gap = gaps[i]
        if gap == " ":  # most gaps: close, and no house number before the word
            close = True
        else:
            close = _NEXT_TO.fullmatch(gap) is not None
            if _HOUSE_NUMBER.search(gap):
                _mark_street(words, gaps, caps, i, v)
        if len(word) >= 3:
            named = (
                word in names
                or (close and i > 0 and caps[i - 1] and prev in every_name and word in every_name)
                or (close and prev in titles and word in every_name)
                # "dra. mendivil": a name the lists lack after a doctor's title and its dot
                or (gap == ". " and prev in ("dr", "dra") and word not in v.not_after_dr)
            )
            if named and close and prev in titles:
                caps[i - 1] = True
            if named or due:
                caps[i] = True
        elif due or (i > 0 and caps[i - 1] and close and len(word) == 1 and prev in every_name):
            caps[i] = True  # after a prefix, or an initial after a name ("william pierce r")
        # "fw: ...", "re: ...": the subject after a prefix starts with a capital.
        due = word in _PREFIXES and low.startswith(":", ends[i])
        prev = word
    out: list[str] = []
    pos = 0
    for start in compress(starts, caps):
        out += (low[pos:start], low[start].upper())
        pos = start + 1
    out.append(low[pos:])
    return "".join(out)


# --- leetspeak a reader reads as words -------------------------------------------------

# A word of letters, digits and the leetspeak signs with a sign next to a letter in it.
# Matches start only where such a word starts, and each scans its word once: linear.
_LEET_TOKEN = re.compile(
    r"(?<![\w@$!|])[\w@$!|]*(?:[^\W\d_][0134578@$!|]|[0134578@$!|][^\W\d_])[\w@$!|]*"
)
# A sign next to a letter; written sign first, so the engine skips to the signs.
_LEET_IN_WORD = re.compile(r"[0134578@$!|](?:(?<=[^\W\d_].)|(?=[^\W\d_]))")
_LEET_SIGNS = frozenset("0134578@$!|")
_EITHER = {"1": "il", "!": "il", "|": "li"}  # signs that stand for i or l


def _digest(word: str) -> int:
    return int.from_bytes(hashlib.blake2b(word.encode("utf-8"), digest_size=8).digest(), "little")


class _WordSet:
    """A large word list as its words' sorted 64-bit digests, plus a set kept elsewhere:
    8 bytes a word where a frozenset of str costs ~90 (51,000 common words: 0.4 MB, not
    4.8 MB, in every worker). A word not in the list matches a digest with odds of about
    2**-48."""

    __slots__ = ("_also", "_keys")

    def __init__(self, words: Iterable[str], also: frozenset[str]) -> None:
        # Digests first into an array (8 bytes each), so the transient ints of the sort
        # are all that pymalloc holds while it runs.
        keys = array("Q", map(_digest, words))
        self._keys = array("Q", sorted(set(keys)))
        self._also = also

    def __contains__(self, word: object) -> bool:
        if not isinstance(word, str):
            return False
        if word in self._also:
            return True
        key, keys = _digest(word), self._keys
        i = bisect_left(keys, key)
        return i < len(keys) and keys[i] == key


@cache
def _common_words() -> _WordSet:
    """Common words of English, Spanish, French and Portuguese (data/words_common.txt,
    generated by tools/words_build.py), and person names: what a leetspeak word may be
    read as."""
    with (DATA / "words_common.txt").open(encoding="utf-8") as lines:
        words = (ln.rstrip("\n") for ln in lines if ln.strip() and not ln.startswith("#"))
        return _WordSet(words, _recase_words().every_name)


@cache
def _short_words() -> frozenset[str]:
    """Frequent words of two or three letters (data/words_short.txt, tools/words_build.py):
    read only in a subject already written in leetspeak, where "5u" is "su"."""
    return frozenset(row[0] for row in _data_lines("words_short.txt"))


@lru_cache(maxsize=4096)
def _unleet_word(word: str, shortest: int = 4) -> str:
    core = word.strip("!|")
    if not shortest <= len(core) <= 30 or _LEET_SIGNS.isdisjoint(core):
        return word
    table = _leet()
    either = [i for i, c in enumerate(core) if c in _EITHER]
    if len(either) > 4 or any(c.isdigit() and c not in table for c in core):
        return word  # a digit no letter looks like (2, 6, 9): a code, not a word
    letters = [c for c in core if c.isalpha()]
    upper = len(letters) > 1 and all(c.isupper() for c in letters)
    base = [table.get(c, c) if c in _LEET_SIGNS else c for c in core]
    words = _common_words() if len(core) >= 4 else _short_words()
    for combo in itertools.product(*(_EITHER[core[i]] for i in either)):
        for i, letter in zip(either, combo, strict=True):
            base[i] = letter
        candidate = "".join(base)
        if fold(candidate) in words:
            if upper:
                candidate = candidate.upper()
            return word.replace(core, candidate)
    return word


def unleet(text: str) -> str:
    """`text` with each leetspeak word that reads as a common word or a name written in
    letters ("r3su1t" is "result", "s747u5" "status"); a word that reads as none (a code
    such as "AB1234", a dose, a time) stays, unless two words read as leetspeak: then
    the subject is written so, and its other words are read too (`_unleet_any`). Same
    length as `text`: a sign stands for one letter. Linear: each word tries at most 16
    readings of at most 30 characters, in at most two passes."""
    if _LEET_IN_WORD.search(text) is None:
        return text
    read = 0

    def one(m: re.Match[str]) -> str:
        nonlocal read
        word = m.group(0)
        out = _unleet_word(word)
        read += out != word
        return out

    text = _LEET_TOKEN.sub(one, text)
    if read < 2 and not _written_in_leet(text):
        return text
    # Two words read as leetspeak, or most words mix letters and signs: the whole subject
    # is written so. Its short words are read too ("c0nf1rm3 5u c1t4 3n l4 cl1n1c4": "su",
    # "en", "la"), and a word no list holds is read sign by sign ("357r31145" is no
    # number; "P0u m0un k1 n4n pw0gram dy48è7", in a language no list holds), but for a
    # dose or a time.
    return _LEET_TOKEN.sub(lambda m: _unleet_any(m.group(0)), text)


def _written_in_leet(text: str) -> bool:
    """Whether three or more words, and a third of all, mix lower-case letters with signs
    that stand for letters: leetspeak even where no word list knows the language's words.
    Not counted: codes, which are capitals and digits ("4471B", "X1037") or hold digits no
    letter looks like ("AB1234"), and units ("10am")."""
    table = _leet()
    mixed = 0
    for m in _LEET_TOKEN.finditer(text):
        word = m.group(0)
        letters = [c for c in word if c.isalpha()]
        if (
            len(letters) >= 2
            and any(c.islower() for c in letters)
            and _WITH_UNIT.fullmatch(word) is None
            and all(c in table for c in word if c.isdigit())
        ):
            mixed += 1
    return mixed >= 3 and 3 * mixed >= len(text.split())


# A unit after a number ("10am", "5mg", "2nd"): not leetspeak even in a leetspeak subject.
_WITH_UNIT = re.compile(r"\d+(?:st|nd|rd|th|am|pm|h|hr|hrs|min|mg|mcg|ml|kg|lb|lbs|x|k|yo|s)", re.I)


def _unleet_any(word: str) -> str:
    """A word of a leetspeak subject: as a common word when it reads as one, else each
    sign as its letter (same length)."""
    out = _unleet_word(word, 2)
    if out == word and "@" in word[1:-1]:
        # No word with an "a" in it: an address ("f4c7ur4c10n@1um3n"), its "@" kept.
        local, _at, domain = word.partition("@")
        return _unleet_any(local) + "@" + _unleet_any(domain)
    if out != word or _WITH_UNIT.fullmatch(word) is not None:
        return out
    table = _leet()
    if any(c.isdigit() and c not in table for c in word) or not any(c.isalpha() for c in word):
        return word  # a code such as "AB1234" (2, 6, 9 are no letters), or a number
    return "".join(table.get(c, c) for c in word)


def warm() -> None:
    """Load the word lists the canonicaliser reads (names, titles, streets, common words),
    as the first subject would: a server loads them before it forks its workers, so they
    share the pages."""
    _recase_words()
    _common_words()
    _short_words()


def readings_to_judge(readings: list[str]) -> list[str]:
    """The readings the detector judges: leetspeak that reads as words written in
    letters (`unleet`), then the case a reader supplies (`case_readings`)."""
    if len(readings) == 1:
        text = unleet(readings[0])
        if not uninformative_case(text):
            return readings if text is readings[0] else [text]  # most subjects
        return case_readings([text])
    return case_readings(list(dict.fromkeys(unleet(r) for r in readings)))


def _mark_street(
    words: list[str], gaps: list[str], caps: list[bool], i: int, v: _RecaseWords
) -> None:
    """Capitals for a street address starting at word `i`, after a house number: up to
    the last street type of the next four words ("old mill road"), or a Spanish street
    type and the two words after it ("calle palma"); then the town after a comma."""
    end = -1
    if words[i] in v.street_prefixes:
        end = i
        while end + 1 < min(len(words), i + 3) and gaps[end + 1] == " ":
            end += 1
    else:
        for j in range(i, min(len(words), i + 4)):
            if j > i and gaps[j] != " ":
                break
            if words[j] in v.street_suffixes:
                end = j
    if end < 0:
        return
    for j in range(i, end + 1):
        caps[j] = True
    if end + 1 < len(words) and gaps[end + 1] == ", ":
        caps[end + 1] = True


def case_readings(readings: list[str]) -> list[str]:
    """Each reading, and when its case says nothing its recased form: beside it for
    capitals (the all-capitals rules still read them: "MILLER, GERALD - REFERRAL"),
    instead of it for lower case (which no rule reads apart) and random case (whose
    capitals would pass for names). Replacing a lower-case reading rather than adding to
    it measured better on validation (recall 0.984 against 0.982 at the FPR bound)."""
    if len(readings) == 1 and not uninformative_case(readings[0]):
        return readings  # most subjects: one reading, its case telling
    out: list[str] = []
    for text in readings:
        if not uninformative_case(text):
            out.append(text)
            continue
        again = recase(text)
        replace = text != text.upper()  # lower or random case: nothing its own rules read
        for reading in (again,) if replace else (text, again):
            if reading not in out:
                out.append(reading)
    return out


def subject_texts(raw_value: str) -> list[str]:
    """Every plausible decoded, normalised text of a raw Subject value, as the detector
    judges them (`readings_to_judge`): primary first. Never raises."""
    return _subject_texts(raw_value, cased=True)


def subject_text(raw_value: str) -> str:
    """The decoded, normalised text of a raw Subject value as written (primary reading,
    not recased): what a reader is shown. Never raises."""
    return _subject_texts(raw_value, cased=False)[0]


def _subject_texts(raw_value: str, cased: bool) -> list[str]:
    try:
        value = str(raw_value)
        if value.isascii() and "=?" not in value and "\n" not in value and "\r" not in value:
            # Nothing to unfold or decode (most subjects): the one reading _decoded_texts
            # would give.
            if not cased:
                return [normalize(value)]
            return readings_to_judge(_spaced_readings(value))
        return _decoded_texts(value, cased)
    except Exception:
        try:
            return [normalize(str(raw_value))]
        except Exception:
            return [" ".join(str(raw_value).split())]


def _decoded_texts(value: str, cased: bool = True) -> list[str]:
    out: list[str] = []
    for reading in _raw_readings(value):
        # Unfold (CRLF before WSP goes); a stray line break elsewhere separates words.
        unfolded = _BARE_NEWLINE.sub(" ", _FOLD.sub("", reading))
        for decoded in decode_rfc2047_all(unfolded):
            # A decoded word may itself hold an encoded-word (double encoding).
            texts = decode_rfc2047_all(decoded) if "=?" in decoded else [decoded]
            for text in texts:
                for folded in _spaced_readings(text) if cased else [normalize(text)]:
                    if folded not in out:
                        out.append(folded)
    if not out:
        return [""]
    return readings_to_judge(out) if cased else out


# --- a second reading: shorthand written out, leetspeak undone ------------------------

_ACCENTS = str.maketrans(
    "áàâäãåāéèêëēíìîïīóòôöõōúùûüūñçÁÀÂÄÃÅĀÉÈÊËĒÍÌÎÏĪÓÒÔÖÕŌÚÙÛÜŪÑÇ",
    "aaaaaaaeeeeeiiiiioooooouuuuuncAAAAAAAEEEEEIIIIIOOOOOOUUUUUNC",
)


def fold(text: str) -> str:
    """Lower case without accents, same length as `text` so spans stay valid."""
    if text.isascii():
        return text.lower()  # what _fold gives: no accents, one character each
    return _fold(text)


def _fold(text: str) -> str:
    folded = text.translate(_ACCENTS).lower()
    if len(folded) != len(text):
        # A few characters lower-case to two ("İ"); keep offsets by folding one by one.
        folded = "".join(ch.lower()[0] if ch.lower() else ch for ch in text.translate(_ACCENTS))
    return folded


_WORD = re.compile(r"[^\s,;:()\[\]\"]+")
_LEET_CHARS = frozenset("0134578@$!|")
# Numbers, ordinals, times, doses and identifier shapes are never leetspeak.
_NOT_LEET = re.compile(
    r"[\d.,:/#-]+|\d+(?:st|nd|rd|th|am|pm|a|p|h|hr|hrs|min|mg|mcg|ml|kg|lb|lbs|x|k|m|yo|s)"
    r"|[a-z]{1,3}[\d.-]+|[a-z]\d+[a-z]?|[\d.-]+[a-z]{1,2}|[a-z]+-\d+|\d+-[a-z]+",
    re.I,
)


@lru_cache(maxsize=4096)
def _deleet_word(word: str, known: Callable[[str], bool] | None) -> str:
    """`word` with leetspeak undone. Cached: a long subject repeats its words, and
    `known` (the vocabulary's lookup) is fixed for a detector."""
    core = word.strip(".!?'")
    if len(core) < 3 or _NOT_LEET.fullmatch(core) or not any(c.isalpha() for c in core):
        return word
    letters = sum(c.isalpha() for c in core)
    leet = [i for i, c in enumerate(core) if c in _LEET_CHARS]
    if not leet or letters < 2 or letters < len(leet):
        return word
    table = _leet()
    chars = list(core)
    base = "".join(table.get(c, c) for c in chars)
    # "1" is i or l: try both where a word list can tell ("ch14myd1a" is chlamydia).
    ones = [i for i in leet if chars[i] == "1"]
    if known is not None and ones and len(ones) <= 4:
        for combo in itertools.product("il", repeat=len(ones)):
            trial = list(base)
            for i, letter in zip(ones, combo, strict=True):
                trial[i] = letter
            candidate = "".join(trial)
            if known(candidate.lower()):
                base = candidate
                break
    return word.replace(core, base)


def expand(text: str, known: Callable[[str], bool] | None = None) -> str:
    """A second reading of normalised text: shorthand written out, leetspeak undone.

    `known` (optional) tells whether a lower-case word is in the detector's
    vocabulary; it settles letters leetspeak leaves ambiguous.
    """
    table = _shorthand()
    out: list[str] = []
    pos = 0
    for m in _WORD.finditer(text):
        word = m.group(0)
        low = word.lower()
        stripped = low.rstrip(".!?'")
        if stripped in table:
            repl = table[stripped] + low[len(stripped) :]
        elif (cut := stripped.rstrip("#:")) in table and cut != stripped:
            repl = table[cut] + low[len(cut) :]
        elif not _LEET_CHARS.isdisjoint(word):
            repl = _deleet_word(word, known)
        else:
            continue
        if repl != word:
            out.append(text[pos : m.start()])
            out.append(repl)
            pos = m.end()
    if out:
        out.append(text[pos:])
        text = "".join(out)
    return _FOR_YOU.sub("for ", text) if "4 " in text else text


def views(text: str, known: Callable[[str], bool] | None = None) -> list[str]:
    """The normalised text and, when it differs, its expanded reading (see `expand`)."""
    second = expand(text, known)
    return [text] if second == text else [text, second]


# --- HTML -------------------------------------------------------------------------

# Elements that start a new line on screen; every other element is inline, so
# "H<b>IV</b>" reads "HIV" and no space is added.
_BLOCK = (
    "address,article,aside,blockquote,br,caption,dd,details,dialog,div,dl,dt,fieldset,"
    "figcaption,figure,footer,form,h1,h2,h3,h4,h5,h6,header,hr,li,main,nav,ol,p,pre,"
    "section,summary,table,tbody,td,tfoot,th,thead,title,tr,ul,option,img"
)
_HIDDEN = "script,style,template,noscript,head > meta,object,iframe"


def html_text(markup: str) -> str:
    """The visible text of an HTML part: entities decoded, comments and scripts dropped.

    Parsed by lexbor (selectolax), a WHATWG HTML parser in C that runs in linear
    time; the stdlib html.parser is quadratic on some inputs in Python 3.11.
    """
    if "<" not in markup and "&" not in markup:
        return markup
    tree = LexborHTMLParser(markup)
    root = tree.root
    if root is None:
        return ""
    for node in tree.css(_HIDDEN):
        node.decompose()
    for node in tree.css(_BLOCK):
        node.insert_before(" ")
        node.insert_after(" ")
    return root.text(deep=True, separator="")


def body_text(texts: Iterable[str]) -> str:
    """Several decoded texts (subject, parts) as one normalised text."""
    return normalize(" \n ".join(texts))
