"""Obfuscations and RFC 2047 encodings of a subject that a reader still reads as the same text.

Each transform takes a plain subject and a seeded `random.Random` and returns
`(reference, raw)`: `raw` is what arrives in the Subject header, `reference` the plain
text a reader sees in it (the subject itself, or the subject behind a "Fwd: " the
transform added), or None when the transform cannot apply (nothing to change, a
charset that cannot encode the text). The table follows the labelling guide's
"Obfuscations that matter" and "RFC 2047 encodings" (shared phi-labelling.md, B12):
the label of `raw` is the label of `reference`, so a detector's tier must agree.

Used by tests/unit/phi/test_phi_obfuscation_invariance.py (a sample) and
bench/phi_obfuscation.py (the disagreement rate per transform on a larger one).
"""

from __future__ import annotations

import base64
import random
import re
import unicodedata
from collections.abc import Callable
from functools import cache
from pathlib import Path

Result = tuple[str, str] | None
Transform = Callable[[str, random.Random], Result]

_LETTER = re.compile(r"[^\W\d_]")

# --- invisible and space characters -------------------------------------------------

_ZERO_WIDTH = ("\u200b", "\u200c", "\u200d", "\u2060", "\ufeff")


def _inside_words(text: str, rng: random.Random, chars: tuple[str, ...], rate: float) -> str:
    """`chars` inserted between letters of words, at about `rate` of the gaps."""
    out: list[str] = []
    for i, ch in enumerate(text):
        out.append(ch)
        nxt = text[i + 1] if i + 1 < len(text) else ""
        if ch.isalpha() and nxt.isalpha() and rng.random() < rate:
            out.append(rng.choice(chars))
    return "".join(out)


def zero_width(text: str, rng: random.Random) -> Result:
    out = _inside_words(text, rng, _ZERO_WIDTH, 0.3)
    return (text, out) if out != text else None


def bom_start(text: str, rng: random.Random) -> Result:
    return text, "\ufeff" + text


def soft_hyphen(text: str, rng: random.Random) -> Result:
    out = _inside_words(text, rng, ("\u00ad",), 0.3)
    return (text, out) if out != text else None


_SPACES = ("\u00a0", "\u202f", "\u2007", "\u2009", "\u3000", "\u2002")


def nbsp(text: str, rng: random.Random) -> Result:
    if " " not in text:
        return None
    return text, text.replace(" ", "\u00a0")


def unicode_spaces(text: str, rng: random.Random) -> Result:
    if " " not in text:
        return None
    return text, "".join(rng.choice(_SPACES) if c == " " else c for c in text)


def nfd(text: str, rng: random.Random) -> Result:
    out = unicodedata.normalize("NFD", text)
    return (text, out) if out != text else None


# --- look-alike letters ---------------------------------------------------------------

_CYRILLIC = dict(
    zip(
        "aceopxyiABCEHKMOPTXjsSI",
        "\u0430\u0441\u0435\u043e\u0440\u0445\u0443\u0456\u0410\u0412\u0421\u0415\u041d\u041a\u041c\u041e\u0420\u0422\u0425\u0458\u0455\u0405\u0406",
        strict=True,
    )
)
_GREEK = dict(
    zip(
        "oABEHIKMNOPTXYZv",
        "\u03bf\u0391\u0392\u0395\u0397\u0399\u039a\u039c\u039d\u039f\u03a1\u03a4\u03a7\u03a5\u0396\u03bd",
        strict=True,
    )
)


def _swap_letters(text: str, rng: random.Random, table: dict[str, str], rate: float) -> str:
    # Only inside Latin words: a reader takes a Cyrillic o in "Your" for an o.
    return "".join(
        table[c] if c in table and rng.random() < rate and _latin_word_at(text, i) else c
        for i, c in enumerate(text)
    )


def _latin_word_at(text: str, i: int) -> bool:
    j, k = i, i
    while j > 0 and text[j - 1].isalpha():
        j -= 1
    while k < len(text) and text[k].isalpha():
        k += 1
    return text[j:k].isascii() and k - j >= 2


def cyrillic(text: str, rng: random.Random) -> Result:
    out = _swap_letters(text, rng, _CYRILLIC, 0.6)
    return (text, out) if out != text else None


def greek(text: str, rng: random.Random) -> Result:
    out = _swap_letters(text, rng, _GREEK, 0.7)
    return (text, out) if out != text else None


def fullwidth(text: str, rng: random.Random) -> Result:
    out = "".join(
        chr(ord(c) + 0xFEE0) if "!" <= c <= "~" else "\u3000" if c == " " else c for c in text
    )
    return (text, out) if out != text else None


@cache
def _math_alphabets() -> dict[str, dict[str, str]]:
    """style ("BOLD", "ITALIC", "SANS-SERIF", ...) -> ASCII letter or digit -> its form."""
    styles: dict[str, dict[str, str]] = {}
    for code in range(0x1D400, 0x1D800):
        ch = chr(code)
        name = unicodedata.name(ch, "")
        m = re.fullmatch(r"MATHEMATICAL (.+) (?:CAPITAL|SMALL|DIGIT) (\w+)", name)
        base = unicodedata.normalize("NFKC", ch)
        if m and base.isascii() and base.isalnum():
            styles.setdefault(m.group(1), {})[base] = ch
    # Letters Unicode encodes elsewhere (the "holes": italic h is U+210E, ...).
    for code in range(0x2100, 0x2150):
        ch = chr(code)
        name = unicodedata.name(ch, "")
        base = unicodedata.normalize("NFKC", ch)
        for style in ("ITALIC", "SCRIPT", "FRAKTUR", "DOUBLE-STRUCK"):
            if style in name and len(base) == 1 and base.isascii() and base.isalpha():
                styles.setdefault(style, {}).setdefault(base, ch)
        if name == "PLANCK CONSTANT":
            styles.setdefault("ITALIC", {}).setdefault("h", ch)
    return styles


def _math(style: str) -> Transform:
    def transform(text: str, rng: random.Random) -> Result:
        table = _math_alphabets()[style]
        out = "".join(table.get(c, c) for c in text)
        return (text, out) if out != text else None

    transform.__name__ = "math_" + style.lower().replace("-", "_").replace(" ", "_")
    return transform


def _circled(text: str, rng: random.Random) -> Result:
    def one(c: str) -> str:
        if "a" <= c <= "z":
            return chr(0x24D0 + ord(c) - ord("a"))
        if "A" <= c <= "Z":
            return chr(0x24B6 + ord(c) - ord("A"))
        return c

    out = "".join(one(c) for c in text)
    return (text, out) if out != text else None


# --- spaced out, leetspeak, case -------------------------------------------------------


def _spaced(text: str, m: re.Match[str]) -> str:
    before, after = text[: m.start()].rstrip(" "), text[m.end() :].lstrip(" ")
    spaced = " ".join(m.group(0))
    return before + ("  " if before else "") + spaced + ("  " if after else "") + after


# A word or a number standing between spaces (or the ends), so spacing it out keeps
# it apart from its neighbours.
_LONE_WORD = re.compile(r"(?<!\S)[^\W\d_]{3,}(?!\S)")
_LONE_NUMBER = re.compile(r"(?<!\S)\d[\d\-./]*\d(?!\S)")


def spaced_word(text: str, rng: random.Random) -> Result:
    """One word of three or more letters written spaced out, two spaces around it."""
    words = list(_LONE_WORD.finditer(text))
    return (text, _spaced(text, rng.choice(words))) if words else None


def spaced_all(text: str, rng: random.Random) -> Result:
    """Every word spaced out letter by letter, words apart by two spaces."""
    if not _LETTER.search(text):
        return None
    out = "  ".join(" ".join(word) for word in text.split())
    return (text, out) if out != text else None


def spaced_digits(text: str, rng: random.Random) -> Result:
    """A number of three or more characters written one character apart ("4 4 1 9 - 0 0")."""
    found = [m for m in _LONE_NUMBER.finditer(text) if len(m.group(0)) >= 3]
    return (text, _spaced(text, rng.choice(found))) if found else None


_LEET = {"a": "4", "e": "3", "i": "1", "o": "0", "s": "5", "t": "7", "l": "1", "b": "8"}


def leetspeak(text: str, rng: random.Random) -> Result:
    """Some letters of some lower-case words written as digits ("r3su1t")."""
    out, changed = [], False
    pos = 0
    for m in re.finditer(r"[a-z]{4,}", text):
        out.append(text[pos : m.start()])
        word = m.group(0)
        if rng.random() < 0.6:
            letters = list(word)
            for i, c in enumerate(letters):
                if c in _LEET and rng.random() < 0.5:
                    letters[i] = _LEET[c]
            if letters != list(word):
                changed = True
            word = "".join(letters)
        out.append(word)
        pos = m.end()
    out.append(text[pos:])
    return (text, "".join(out)) if changed else None


def leetspeak_heavy(text: str, rng: random.Random) -> Result:
    """Nearly every letter that has a digit form written as one, in words of every length
    ("c0nf1rm3 5u c1t4 3n l4 c11n1c4"): how writers leet a whole subject, short words
    included."""

    def word(m: re.Match[str]) -> str:
        return "".join(_LEET[c] if c in _LEET and rng.random() < 0.8 else c for c in m.group(0))

    # Words of letters only (a code such as "I-693" or "B12" already holds digits), and
    # their lower-case letters (a capital starts a name a reader still sees).
    raw = re.sub(r"(?<![\w-])[^\W\d_]+(?![\w-])", word, text)
    return (text, raw) if raw != text else None


def _letters_apart(sep: str, shortest: int) -> Transform:
    def transform(text: str, rng: random.Random) -> Result:
        """One word of `shortest` or more letters with `sep` between its letters
        ("Low h e p a t i t i s B antibodies", "H.I.V", "s-t-e-r-i-l-e"): only its letters
        tell where it starts and ends."""
        words = [m for m in _LONE_WORD.finditer(text) if len(m.group(0)) >= shortest]
        if not words:
            return None
        m = rng.choice(words)
        return text, text[: m.start()] + sep.join(m.group(0)) + text[m.end() :]

    return transform


spaced_tight = _letters_apart(" ", 4)


def mixed_case(text: str, rng: random.Random) -> Result:
    """Letters in random case ("yOuR hIv TeSt")."""
    out = "".join(c.upper() if rng.random() < 0.5 else c.lower() for c in text)
    return (text, out) if out != text else None


def upper_case(text: str, rng: random.Random) -> Result:
    out = text.upper()
    return (text, out) if out != text and len(out) == len(text) else None


def lower_case(text: str, rng: random.Random) -> Result:
    out = text.lower()
    return (text, out) if out != text and len(out) == len(text) else None


# Look-alikes of the punctuation inside dates, times and numbers.
_PUNCT = {
    "/": ("\u2215", "\u2044", "\uff0f", "\u29f8"),
    "-": ("\u2010", "\u2011", "\u2012", "\u2013", "\u2212", "\ufe63", "\uff0d"),
    ":": ("\u2236", "\ua789", "\uff1a", "\u02d0"),
    ".": ("\u2024", "\uff0e", "\u00b7"),
    "#": ("\uff03",),
    "(": ("\uff08",),
    ")": ("\uff09",),
}
_NUM_PUNCT = re.compile(r"(?<=\d)[/\-:.]|[/\-:.](?=\d)|#(?=\s*\d)|\((?=\d)|(?<=\d)\)")


def number_punct(text: str, rng: random.Random) -> Result:
    def swap(m: re.Match[str]) -> str:
        return rng.choice(_PUNCT[m.group(0)])

    out = _NUM_PUNCT.sub(swap, text)
    return (text, out) if out != text else None


# --- RFC 2047 ---------------------------------------------------------------------


def _b_word(charset: str, data: bytes) -> str:
    return f"=?{charset}?B?{base64.b64encode(data).decode('ascii')}?="


def _q_word(charset: str, data: bytes, underscore: bool = True) -> str:
    out = []
    for b in data:
        c = chr(b)
        if b == 0x20 and underscore:
            out.append("_")
        elif 0x21 <= b <= 0x7E and c not in "=?_\t":
            out.append(c)
        else:
            out.append(f"={b:02X}")
    return f"=?{charset}?Q?{''.join(out)}?="


def _encode(text: str, codec: str) -> bytes | None:
    try:
        return text.encode(codec)
    except UnicodeEncodeError:
        return None


# Charsets made for one script: text of another script encodes in some of them (Big5
# holds Cyrillic) but no mailer would send it so, and readers' decoders differ there.
_SCRIPT_OF = {
    "GB2312": "CJK",
    "GBK": "CJK",
    "Big5": "CJK",
    "Shift_JIS": "CJK",
    "ISO-2022-JP": "CJK",
    "EUC-KR": "HANGUL",
    "ks_c_5601-1987": "HANGUL",
}


def _of_script(text: str, script: str) -> bool:
    return all(c.isascii() or script in unicodedata.name(c, "") for c in text if c.isalpha())


def _word_of(kind: str, charset: str, codec: str) -> Transform:
    def transform(text: str, rng: random.Random) -> Result:
        script = _SCRIPT_OF.get(charset)
        if script and not _of_script(text, script):
            return None
        data = _encode(text, codec)
        if data is None or not text:
            return None
        if kind == "B":
            return text, _b_word(charset, data)
        return text, _q_word(charset, data, underscore=kind == "Q")

    transform.__name__ = f"rfc2047_{kind.lower()}_{charset.lower().replace('-', '_')}"
    return transform


def _chunks(data: bytes, rng: random.Random, parts: int) -> list[bytes]:
    cuts = sorted(rng.sample(range(1, len(data)), min(parts - 1, len(data) - 1)))
    return [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True)]


def split_words(text: str, rng: random.Random) -> Result:
    """UTF-8 bytes cut at random places (inside a character, a word or a number) into
    several encoded-words, B or Q each, apart by a space, a fold or nothing."""
    data = text.encode("utf-8")
    if len(data) < 4:
        return None
    words = [
        (_b_word if rng.random() < 0.5 else _q_word)("utf-8", part)
        for part in _chunks(data, rng, rng.randint(2, 5))
    ]
    raw = words[0]
    for w in words[1:]:
        raw += rng.choice((" ", "\r\n ", "\r\n\t", "", "  ")) + w
    return text, raw


_ID = re.compile(r"\d[\d\-./]{3,}\d")


def split_in_identifier(text: str, rng: random.Random) -> Result:
    """Two encoded-words whose boundary falls inside a number ("SSN 286-4" + "1-7395")."""
    found = list(_ID.finditer(text))
    if not found:
        return None
    m = rng.choice(found)
    cut = rng.randint(m.start() + 1, m.end() - 1)
    left, right = text[:cut].encode("utf-8"), text[cut:].encode("utf-8")
    enc = rng.choice((_b_word, _q_word))
    gap = rng.choice((" ", "\r\n ", ""))
    return text, enc("UTF-8", left) + gap + enc("UTF-8", right)


def mixed_plain_encoded(text: str, rng: random.Random) -> Result:
    """Plain words with some words encoded among them. Two encoded-words side by side
    lose the space between them, so the second one carries it."""
    words = text.split(" ")
    if len(words) < 2 or "" in words:
        return None
    raw, prev_encoded = "", False
    for i, word in enumerate(words):
        encoded = not word.isascii() or rng.random() < 0.4
        if encoded and prev_encoded:
            piece = _q_word("utf-8", (" " + word).encode("utf-8"))
        else:
            piece = _q_word("utf-8", word.encode("utf-8")) if encoded else word
        raw += (" " if i else "") + piece
        prev_encoded = encoded
    return text, raw


def folded(text: str, rng: random.Random) -> Result:
    """A plain subject folded over lines (CRLF before a space or a tab)."""
    spaces = [i for i, c in enumerate(text) if c == " "]
    if not spaces:
        return None
    out = list(text)
    for i in rng.sample(spaces, min(len(spaces), rng.randint(1, 3))):
        out[i] = "\r\n" + rng.choice((" ", "\t"))
    return text, "".join(out)


def fwd_prefix(text: str, rng: random.Random) -> Result:
    """ "Fwd: " in plain text, the subject in folded encoded-words after it."""
    data = text.encode("utf-8")
    if len(data) < 2:
        return None
    parts = _chunks(data, rng, 2)
    words = [_b_word("utf-8", p) for p in parts]
    return "Fwd: " + text, "Fwd: " + "\r\n ".join(words)


def missing_padding(text: str, rng: random.Random) -> Result:
    data = text.encode("utf-8")
    word = _b_word("utf-8", data).replace("=?=", "?=").replace("=?=", "?=")
    if "=" not in base64.b64encode(data).decode("ascii"):
        return None
    return text, word


def no_space_before(text: str, rng: random.Random) -> Result:
    """ "Re:" glued to an encoded-word that starts with the space."""
    return "Re: " + text, "Re:" + _q_word("utf-8", (" " + text).encode("utf-8"))


def lower_labels(text: str, rng: random.Random) -> Result:
    data = text.encode("utf-8")
    kind = rng.choice(("b", "q"))
    word = _b_word("utf-8", data) if kind == "b" else _q_word("utf-8", data)
    return text, word.replace("?B?", "?b?").replace("?Q?", "?q?")


def language_tag(text: str, rng: random.Random) -> Result:
    return text, _q_word(rng.choice(("UTF-8*en", "utf-8*es", "UTF-8*en-US")), text.encode())


def unknown_charset(text: str, rng: random.Random) -> Result:
    """UTF-8 bytes under a label no registry knows: every plausible reading is judged."""
    if text.isascii():
        return None
    return text, _b_word("x-unknown", text.encode("utf-8"))


def raw_8bit(text: str, rng: random.Random) -> Result:
    """Undeclared 8-bit bytes (UTF-8 or windows-1252), as the email parser leaves them."""
    if text.isascii():
        return None
    data = _encode(text, rng.choice(("utf-8", "cp1252")))
    if data is None:
        return None
    return text, data.decode("ascii", "surrogateescape")


def double_encoded(text: str, rng: random.Random) -> Result:
    inner = _b_word("utf-8", text.encode("utf-8"))
    return text, _q_word("us-ascii", inner.encode("ascii"))


# Charsets a subject may arrive in: (label on the wire, Python codec). A transform
# applies when the codec can encode the subject.
CHARSETS = (
    ("UTF-8", "utf-8"),
    ("ISO-8859-1", "latin-1"),
    ("ISO-8859-15", "iso8859-15"),
    ("windows-1252", "cp1252"),
    ("UTF-16", "utf-16"),
    ("utf-16be", "utf-16-be"),
    ("ucs-2", "utf-16-le"),
    ("KOI8-R", "koi8-r"),
    ("windows-1251", "cp1251"),
    ("GB2312", "gb2312"),
    ("GBK", "gbk"),
    ("Big5", "big5"),
    ("EUC-KR", "euc-kr"),
    ("ks_c_5601-1987", "euc-kr"),
    ("windows-1256", "cp1256"),
    ("windows-1258", "cp1258"),
    ("ISO-8859-2", "iso8859-2"),
    ("Shift_JIS", "shift_jis"),
    ("ISO-2022-JP", "iso2022_jp"),
)


def combine(first: Transform, second: Transform) -> Transform:
    """`second` applied to what `first` gives (the reference stays the first's)."""

    def transform(text: str, rng: random.Random) -> Result:
        one = first(text, rng)
        if one is None:
            return None
        two = second(one[1], rng)
        if two is None:
            return None
        return one[0], two[1]

    transform.__name__ = f"{first.__name__}+{second.__name__}"
    return transform


OBFUSCATIONS: dict[str, Transform] = {
    "zero_width": zero_width,
    "bom_start": bom_start,
    "soft_hyphen": soft_hyphen,
    "nbsp": nbsp,
    "unicode_spaces": unicode_spaces,
    "nfd": nfd,
    "cyrillic": cyrillic,
    "greek": greek,
    "fullwidth": fullwidth,
    "math_bold": _math("BOLD"),
    "math_italic": _math("ITALIC"),
    "math_bold_italic": _math("BOLD ITALIC"),
    "math_sans": _math("SANS-SERIF"),
    "math_sans_bold": _math("SANS-SERIF BOLD"),
    "math_monospace": _math("MONOSPACE"),
    "math_script": _math("SCRIPT"),
    "math_double_struck": _math("DOUBLE-STRUCK"),
    "circled": _circled,
    "spaced_word": spaced_word,
    "spaced_all": spaced_all,
    "spaced_digits": spaced_digits,
    "leetspeak": leetspeak,
    "leetspeak_heavy": leetspeak_heavy,
    "spaced_tight": spaced_tight,
    "dotted_word": _letters_apart(".", 3),
    "hyphenated_letters": _letters_apart("-", 3),
    "mixed_case": mixed_case,
    "upper_case": upper_case,
    "lower_case": lower_case,
    "number_punct": number_punct,
}

ENCODINGS: dict[str, Transform] = {
    **{
        f"{kind}_{label.lower()}": _word_of(kind, label, codec)
        for label, codec in CHARSETS
        for kind in ("B", "Q")
    },
    "Q_utf-8_=20": _word_of("Q=20", "UTF-8", "utf-8"),
    "split_words": split_words,
    "split_in_identifier": split_in_identifier,
    "mixed_plain_encoded": mixed_plain_encoded,
    "folded": folded,
    "fwd_prefix": fwd_prefix,
    "missing_padding": missing_padding,
    "no_space_before": no_space_before,
    "lower_labels": lower_labels,
    "language_tag": language_tag,
    "unknown_charset": unknown_charset,
    "raw_8bit": raw_8bit,
    "double_encoded": double_encoded,
}

# Pairs a writer might stack: letter tricks with each other and under an encoding.
_PAIRS = (
    ("zero_width", "cyrillic"),
    ("soft_hyphen", "fullwidth"),
    ("cyrillic", "mixed_case"),
    ("leetspeak", "zero_width"),
    ("spaced_word", "cyrillic"),
    ("nbsp", "math_bold"),
    ("number_punct", "fullwidth"),
    ("spaced_digits", "nbsp"),
    ("nfd", "zero_width"),
    ("greek", "soft_hyphen"),
    ("mixed_case", "zero_width"),
    ("leetspeak", "mixed_case"),
)
_UNDER = (
    ("zero_width", "B_utf-8"),
    ("cyrillic", "split_words"),
    ("fullwidth", "Q_utf-8"),
    ("number_punct", "split_in_identifier"),
    ("nfd", "B_utf-16"),
    ("soft_hyphen", "mixed_plain_encoded"),
)

COMBINATIONS: dict[str, Transform] = {
    f"{a}+{b}": combine(OBFUSCATIONS[a], OBFUSCATIONS[b]) for a, b in _PAIRS
} | {f"{a}+{b}": combine(OBFUSCATIONS[a], ENCODINGS[b]) for a, b in _UNDER}

ALL: dict[str, Transform] = {**OBFUSCATIONS, **ENCODINGS, **COMBINATIONS}


# --- the subjects transformed ---------------------------------------------------------

CORPUS = Path(__file__).resolve().parents[1] / "data" / "corpus"
# Only these splits are read: held-out and spent writers are never opened here.
READABLE = ("train", "validation")


def corpus_subjects() -> list[tuple[str, str]]:
    """(writer, subject) of every plain row of the train and validation writers, in order."""
    out: list[tuple[str, str]] = []
    for line in (CORPUS / "split.tsv").read_text(encoding="utf-8").splitlines():
        if not line or line.startswith("#"):
            continue
        writer, part = line.split("\t")
        path = CORPUS / f"{writer}.tsv"
        if part not in READABLE or not path.exists():
            continue
        rows = path.read_text(encoding="utf-8").split("\n")
        head = rows[0].split("\t")
        for row in rows[1:]:
            if row:
                r = dict(zip(head, row.split("\t"), strict=False))
                if r["form"] == "plain":
                    out.append((writer, r["subject"]))
    return out
