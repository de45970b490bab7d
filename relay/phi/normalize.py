# ruff: noqa: RUF001 - the look-alike table below must hold look-alike characters
"""Turn a raw Subject header (or decoded body text) into the one text detection runs on.

Encoding must never hide PHI: RFC 2047 encoded-words are decoded in any charset
(also when a character is split across words, and when a word is malformed),
then Unicode is folded (NFKC), invisible characters are dropped, look-alike
letters from other scripts are mapped to Latin and whitespace is collapsed.
Case is kept: the detector uses capitalisation as a cue for names.
"""

from __future__ import annotations

import base64
import binascii
import codecs
import re
import unicodedata

# An encoded-word (RFC 2047 section 2), lenient: RFC 2231 language suffixes, and
# spaces inside the text that broken mailers leave in Q-encoded words.
_ENCODED_WORD = re.compile(r"=\?([^?\s]+)\?([bBqQ])\?([^?]*?)\?=")
_FOLD = re.compile(r"\r?\n(?=[ \t])")
_BARE_NEWLINE = re.compile(r"[\r\n]+")
_SPACES = re.compile(r"\s+")
_SURROGATE = re.compile("[\udc80-\udcff]")

# Zero-width, joiners, direction marks, soft hyphen, BOM, variation selectors and tag
# characters: invisible, so they can split "HIV" into letters no pattern matches.
_INVISIBLE = dict.fromkeys(
    [
        *range(0x200B, 0x2010),
        *range(0x202A, 0x202F),
        *range(0x2060, 0x2070),
        *range(0xFE00, 0xFE10),
        *range(0xE0000, 0xE0080),
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
    ]
)

# Letters from Cyrillic, Greek and other scripts that render like Latin ones (a subset
# of Unicode's confusables.txt covering letters that survive NFKC), plus dashes, quotes
# and digit look-alikes.
_CONFUSABLES = str.maketrans(
    {
        # Cyrillic lower case
        "а": "a",
        "в": "b",
        "е": "e",
        "ё": "e",
        "к": "k",
        "м": "m",
        "н": "h",
        "о": "o",
        "р": "p",
        "с": "c",
        "т": "t",
        "у": "y",
        "х": "x",
        "ѕ": "s",
        "і": "i",
        "ї": "i",
        "ј": "j",
        "ԁ": "d",
        "ԛ": "q",
        "ԝ": "w",
        "һ": "h",
        "ү": "y",
        "ɡ": "g",
        "ӏ": "l",
        # Cyrillic upper case
        "А": "A",
        "В": "B",
        "Е": "E",
        "Ё": "E",
        "К": "K",
        "М": "M",
        "Н": "H",
        "О": "O",
        "Р": "P",
        "С": "C",
        "Т": "T",
        "У": "Y",
        "Х": "X",
        "Ѕ": "S",
        "І": "I",
        "Ї": "I",
        "Ј": "J",
        "Ԁ": "D",
        "Ԛ": "Q",
        "Ԝ": "W",
        "Һ": "H",
        "Ү": "Y",
        "Ӏ": "I",
        # Greek
        "α": "a",
        "β": "b",
        "ε": "e",
        "ι": "i",
        "κ": "k",
        "ν": "v",
        "ο": "o",
        "ρ": "p",
        "τ": "t",
        "υ": "u",
        "χ": "x",
        "γ": "y",
        "ω": "w",
        "Α": "A",
        "Β": "B",
        "Ε": "E",
        "Ζ": "Z",
        "Η": "H",
        "Ι": "I",
        "Κ": "K",
        "Μ": "M",
        "Ν": "N",
        "Ο": "O",
        "Ρ": "P",
        "Τ": "T",
        "Υ": "Y",
        "Χ": "X",
        # Latin variants NFKC leaves alone
        "ı": "i",
        "ȷ": "j",
        "ł": "l",
        "ø": "o",
        "Ø": "O",
        "đ": "d",
        "Đ": "D",
        "ß": "ss",
        # Dashes, minus signs and quotes
        "‐": "-",
        "‑": "-",
        "‒": "-",
        "–": "-",
        "—": "-",
        "―": "-",
        "−": "-",
        "﹘": "-",
        "‘": "'",
        "’": "'",
        "ʼ": "'",
        "′": "'",
        "“": '"',
        "”": '"',
        "„": '"',
    }
)


def _charset(name: str) -> str:
    # RFC 2231 allows "utf-8*en"; unknown or missing charsets fall back to UTF-8.
    name = name.split("*", 1)[0].strip().lower()
    try:
        return codecs.lookup(name).name
    except LookupError:
        return "utf-8"


def _word_bytes(encoding: str, text: str) -> bytes | None:
    if encoding in "bB":
        data = re.sub(r"[^A-Za-z0-9+/]", "", text)
        data += "=" * (-len(data) % 4)
        try:
            return base64.b64decode(data)
        except (binascii.Error, ValueError):
            return None
    raw = text.replace("_", " ").encode("ascii", "replace")
    # Hex escapes only; a stray "=" stays as itself rather than failing the word.
    return re.sub(rb"=([0-9A-Fa-f]{2})", lambda m: bytes([int(m.group(1), 16)]), raw)


def _decode_bytes(data: bytes, charset: str) -> str:
    try:
        return data.decode(charset)
    except (UnicodeDecodeError, LookupError):
        pass
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("latin-1")


def decode_rfc2047(value: str) -> str:
    """Decode encoded-words; adjacent words of one charset are joined before decoding.

    Joining bytes first matters: mailers split a UTF-8 character across two
    encoded-words, and decoding each half alone would turn it into garbage.
    """
    out: list[str] = []
    pending = bytearray()
    pending_charset = ""
    pos = 0

    def flush() -> None:
        nonlocal pending_charset
        if pending:
            out.append(_decode_bytes(bytes(pending), pending_charset))
            pending.clear()
        pending_charset = ""

    for match in _ENCODED_WORD.finditer(value):
        between = value[pos : match.start()]
        charset = _charset(match.group(1))
        data = _word_bytes(match.group(2), match.group(3))
        if data is None:
            # Malformed word: keep its text visible to detection rather than drop it.
            flush()
            out.append(between + match.group(3))
            pos = match.end()
            continue
        # Whitespace between two encoded-words is not part of the text (RFC 2047 6.2).
        if between.strip() or not pending:
            flush()
            out.append(between)
        elif charset != pending_charset:
            flush()
        pending += data
        pending_charset = charset
        pos = match.end()
    flush()
    out.append(value[pos:])
    return "".join(out)


def _unsurrogate(value: str) -> str:
    # Headers parsed from bytes keep undecodable octets as lone surrogates.
    if value.isascii() or not _SURROGATE.search(value):
        return value
    data = value.encode("utf-8", "surrogateescape")
    return _decode_bytes(data, "utf-8")


def normalize(text: str) -> str:
    """Fold already-decoded text: NFKC, invisible characters, look-alikes, whitespace."""
    if text.isascii():
        # Nothing below changes ASCII (NFKC, the tables and marks are all non-ASCII).
        return _SPACES.sub(" ", text).strip()
    text = unicodedata.normalize("NFKC", text)
    text = text.translate(_INVISIBLE).translate(_CONFUSABLES)
    # Combining marks stacked on Latin letters survive NFKC as separate characters
    # ("d̸iabetes"); drop marks that do not compose into a precomposed letter.
    if any(unicodedata.combining(ch) for ch in text if not ch.isascii()):
        text = "".join(ch for ch in text if not unicodedata.combining(ch))
    return _SPACES.sub(" ", text).strip()


def subject_text(raw_value: str) -> str:
    """The decoded, normalised text of a raw Subject value. Never raises."""
    try:
        # Unfold (CRLF before WSP goes); a stray line break elsewhere separates words.
        value = _BARE_NEWLINE.sub(" ", _FOLD.sub("", _unsurrogate(str(raw_value))))
        decoded = decode_rfc2047(value)
        # A decoded word may itself hold an encoded-word (double encoding).
        if "=?" in decoded:
            decoded = decode_rfc2047(decoded)
        return normalize(decoded)
    except Exception:
        try:
            return normalize(str(raw_value))
        except Exception:
            return " ".join(str(raw_value).split())
