"""The learned scorer's features: hashed character and word n-grams, plus the rules that fired.

One function serves training (tools/train_phi_scorer.py) and inference
(relay.phi.scorer), so the two can never drift. Text is the expanded reading
(shorthand written out, leetspeak undone), folded (lower case, no accents) and
with every digit written as 0, so the model learns the shape of a number, not the
number. Features are hashed with CRC-32 into 2**DIM_BITS buckets; each namespace
(character n-grams, words, word pairs, rule ids, word classes, word shapes) starts
CRC-32 from its own value.

Besides the character 4-grams and the word-class sequence, the words of the folded
text and their pairs, and the shapes of the tokens of the unfolded reading (C for a
capitalised word, U for capitals, l for lower case, d for digits, punctuation as
itself) in runs of two and three: "Fw: Okafor, Chidi" is `C : C , C`, a shape names
have whatever the lists know. Leave-one-writer-out chose these (docs/phi-detection.md).
"""

from __future__ import annotations

import re
import sys
import zlib
from array import array
from collections.abc import Iterable, Sequence
from itertools import pairwise
from operator import attrgetter

from relay.phi.normalize import fold

# 2**18 buckets: the hidden layer's table (DIM x 16 int8) is then 4 MiB, inside the
# issue's 5 MB budget; leave-one-writer-out measured the model at this size.
DIM_BITS = 18
DIM = 1 << DIM_BITS
MASK = DIM - 1
# Character 4-grams only: 3- and 5-grams added no recall in leave-one-writer-out
# figures (docs/phi-detection.md) and cost twice the time.
CHAR_NGRAMS = (4,)
_DIGITS = str.maketrans("123456789", "000000000")
_NONZERO_DIGIT = re.compile("[1-9]")
_WORD = re.compile(r"[^\W_]+|[^\w\s]")
_SHAPE_TOKEN = re.compile(r"[^\W\d_]+|\d+|[^\w\s]")
# The same two patterns for ASCII text, where a letter is [A-Za-z] and a digit [0-9]:
# explicit ranges are matched faster than Unicode categories, and find the same tokens.
_WORD_ASCII = re.compile(r"[A-Za-z0-9]+|[^A-Za-z0-9_\s]")
# _WORD_ASCII over the UTF-8 bytes (a str pattern's \s also takes \x1c-\x1f).
_WORD_ASCII_BYTES = re.compile(rb"[A-Za-z0-9]+|[^A-Za-z0-9_\s\x1c-\x1f]")
_SHAPE_TOKEN_ASCII = re.compile(r"[A-Za-z]+|[0-9]+|[^A-Za-z0-9_\s]")
# The ASCII tokens again, one group per shape, so the shapes are read off the matches'
# group numbers in C (`_shape` is a Python call a token): a run of two or more capitals
# not followed by a letter (U), a capital then letters (C), lower case then letters (l),
# digits (d), `,` `:` `-`, other punctuation (p). Tested against `_shape`.
_SHAPES_ASCII = re.compile(
    r"([A-Z]{2,}(?![A-Za-z]))|([A-Z][A-Za-z]*)|([a-z][A-Za-z]*)|([0-9]+)|(,)|(:)|(-)"
    r"|([^A-Za-z0-9_\s])"
)
_SHAPE_OF_GROUP = bytes.maketrans(bytes(range(1, 9)), b"UCld,:-p")
_LASTINDEX = attrgetter("lastindex")
# Punctuation that separates names and fields keeps its own shape; the rest is "p"
# (an en dash is "-").
_SHAPE_PUNCT = {",": ",", ":": ":", "-": "-", "\u2013": "-"}
_NS_WORD, _NS_PAIR, _NS_RULE, _NS_CLASS, _NS_CLASS_PAIR = 1, 2, 3, 4, 5
_NS_TEXT_WORD, _NS_TEXT_PAIR, _NS_SHAPE2, _NS_SHAPE3 = 7, 8, 9, 10


def _gram_planes(size: int, start: int) -> tuple[tuple[bytes, ...], ...]:
    """Byte tables for `_grams`: CRC-32 of `size` bytes from `start`, masked to MASK.

    CRC-32 is affine over GF(2) for a fixed length: the CRC of n bytes is the XOR of one
    table entry per byte position (the CRC of that byte alone at that position, other
    bytes zero, XOR the CRC of all zeros) and the CRC of all zeros. Entry k's table is
    split into three byte planes (bits 0-7, 8-15, 16-17) so `bytes.translate` can look
    them up; position 0's tables carry the all-zero CRC.
    """
    zero = zlib.crc32(bytes(size), start)
    out = []
    for k in range(size):
        entries = [
            zlib.crc32(bytes(k) + bytes([b]) + bytes(size - k - 1), start) ^ zero
            for b in range(256)
        ]
        if k == 0:
            entries = [e ^ zero for e in entries]
        out.append(tuple(bytes(((e & MASK) >> (8 * p)) & 0xFF for e in entries) for p in range(3)))
    return tuple(out)


_GRAMS4 = _gram_planes(4, 0)
_SHAPES2, _SHAPES3 = _gram_planes(2, _NS_SHAPE2), _gram_planes(3, _NS_SHAPE3)
# Below this many n-grams the comprehension is as quick as the fixed cost of `_grams`.
_GRAMS_FROM = 64
# `_grams` reads its buckets back as 4-byte little-endian unsigned integers.
_GRAMS_OK = array("I").itemsize == 4 and sys.byteorder == "little"


def _grams(data: bytes, planes: tuple[tuple[bytes, ...], ...]) -> array[int]:
    """`crc32(data[i : i + n], start) & MASK` for every i, `planes` from `_gram_planes(n,
    start)`, computed in a fixed number of C calls (translate, big-integer XOR) instead
    of one Python operation a position: a long window has hundreds of n-grams."""
    size = len(planes)
    m = len(data) - size + 1
    buf = bytearray(4 * m)
    parts = [data[k : k + m] for k in range(size)]
    for p in range(3):
        x = 0
        for k in range(size):
            x ^= int.from_bytes(parts[k].translate(planes[k][p]), "little")
        buf[p::4] = x.to_bytes(m, "little")
    out = array("I")
    out.frombytes(buf)
    return out


def _shape(token: str) -> str:
    c = token[0]
    if c.isdigit():
        return "d"
    if c.isalpha():
        if token.isupper() and len(token) > 1:
            return "U"
        return "C" if c.isupper() else "l"
    return _SHAPE_PUNCT.get(token, "p")


def model_text(view: str) -> str:
    """The text the n-grams are taken from (see the module docstring)."""
    return fold(view).translate(_DIGITS)


def features(view: str, rules: Iterable[str] = (), classes: Sequence[str] = ()) -> list[int]:
    """The hashed feature indices of one subject, sorted and without repeats.

    `view` is the expanded reading of the normalised subject; `rules` are the ids
    (and kinds) of the rules that fired on it, e.g. "r:id.cued", "k:mrn"; `classes`
    its words with health terms, names and possessives replaced by class tokens
    (PhiDetector.word_classes), whose pairs generalise past the training vocabulary.
    """
    return sorted(feature_set(view, rules, classes))


def feature_set(
    view: str,
    rules: Iterable[str] = (),
    classes: Sequence[str] = (),
    folded: str | None = None,
) -> set[int]:
    """`features` as a set, in no order (all a sum of weights needs).

    `folded` is `fold(view)` when the caller has it already.
    """
    text = fold(view) if folded is None else folded
    if _NONZERO_DIGIT.search(text) is not None:  # translate costs even when nothing maps
        text = text.translate(_DIGITS)
    data = (" " + text + " ").encode("utf-8")
    crc = zlib.crc32
    n = len(data)
    if n - 3 >= _GRAMS_FROM and _GRAMS_OK:
        out = set(_grams(data, _GRAMS4))
    else:
        out = {crc(data[i : i + 4]) & MASK for i in range(n - 3)}
    out.update([crc(rule.encode("utf-8"), _NS_RULE) & MASK for rule in rules])
    # Words (health terms, names and numbers as class tokens) and their pairs, with the
    # start and the end ("^ $" when there are none).
    class_tokens = [c.encode("utf-8") for c in classes]
    out.update([crc(c, _NS_WORD) & MASK for c in class_tokens])
    bounded = [b"^", *class_tokens, b"$"]
    out.update([crc(x + b" " + y, _NS_CLASS_PAIR) & MASK for x, y in pairwise(bounded)])
    # Words of the folded text and their pairs.
    if text.isascii():  # the same words, found as bytes: nothing to encode
        words: list[bytes] = _WORD_ASCII_BYTES.findall(data)
    else:
        words = [w.encode("utf-8") for w in _WORD.findall(text)]
    out.update([crc(w, _NS_TEXT_WORD) & MASK for w in words])
    ends = [b"^", *words, b"$"]
    out.update([crc(x + b" " + y, _NS_TEXT_PAIR) & MASK for x, y in pairwise(ends)])
    # Token shapes of the unfolded reading (one character each), in runs of two and three.
    if view.isascii():
        found_shapes = bytes(map(_LASTINDEX, _SHAPES_ASCII.finditer(view)))
        shapes = b"^" + found_shapes.translate(_SHAPE_OF_GROUP) + b"$"
    else:
        tokens = _SHAPE_TOKEN.findall(view)
        shapes = ("^" + "".join(map(_shape, tokens)) + "$").encode("utf-8")
    m = len(shapes)
    if m - 2 >= _GRAMS_FROM and _GRAMS_OK:
        out.update(_grams(shapes, _SHAPES2))
        out.update(_grams(shapes, _SHAPES3))
        return out
    out.update([crc(shapes[i : i + 2], _NS_SHAPE2) & MASK for i in range(m - 1)])
    out.update([crc(shapes[i : i + 3], _NS_SHAPE3) & MASK for i in range(m - 2)])
    return out
