"""The byte scans on every message's path (bare line endings, dot-stuffing, the inline
decision's boundary count) give what their regular expressions give, on seeded random
messages built from the characters that matter to them."""

from __future__ import annotations

import random
import re

from relay.decide import ORDINARY_BOUNDARIES, ORDINARY_HEADER_BYTES, ordinary
from relay.delivery import dot_stuffed
from relay.message import has_bare_line_endings

_BARE_LF = re.compile(rb"(?<!\r)\n")
_BARE_CR = re.compile(rb"\r(?!\n)")
_LINE_ENDINGS = re.compile(rb"\r\n|\n|\r(?!\n)")
_LEADING_DOT = re.compile(rb"(?m)^\.")
_BOUNDARY = re.compile(rb"boundary[ \t]*=", re.IGNORECASE)

PIECES = [b"a", b"Lorem ipsum ", b".", b"..", b"\r\n", b"\n", b"\r", b"\r\r\n", b"\n.", b" "]
PIECES += [b"boundary=", b"BOUNDARY \t=", b"Boundary", b"boundar", b"=", b"\r\n\r\n"]


def messages(seed: int, count: int = 3000) -> list[bytes]:
    rng = random.Random(seed)
    return [b"".join(rng.choice(PIECES) for _ in range(rng.randint(0, 60))) for _ in range(count)]


def test_bare_line_endings_as_the_look_around_searches_find_them() -> None:
    for raw in messages(1):
        expected = bool(_BARE_LF.search(raw) or _BARE_CR.search(raw))
        assert has_bare_line_endings(raw) is expected, raw


def test_dot_stuffing_as_the_two_substitutions_make_it() -> None:
    for raw in messages(2):
        for chunk in (1, 7, 65536):
            got = b"".join(dot_stuffed(raw, chunk))
            whole = _LEADING_DOT.sub(b"..", _LINE_ENDINGS.sub(b"\r\n", raw))
            expected = whole if whole.endswith(b"\r\n") else whole + b"\r\n"
            assert got == expected, (raw, chunk)


def test_ordinary_counts_boundaries_as_the_search_does() -> None:
    for raw in messages(3):
        end = raw.find(b"\r\n\r\n")
        head = len(raw) if end < 0 else end
        expected = (
            head <= ORDINARY_HEADER_BYTES and len(_BOUNDARY.findall(raw)) <= ORDINARY_BOUNDARIES
        )
        assert ordinary(raw, 1 << 20) is expected, raw
