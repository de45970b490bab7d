"""The plain-address fast path of MAIL/RCPT parsing gives exactly what aiosmtpd's parser
(the stdlib `email` header parser) gives, or steps aside for it."""

from __future__ import annotations

import random

import pytest
from aiosmtpd.smtp import SMTP

from relay.session import plain_address


class _Parser(SMTP):
    """aiosmtpd's `_getaddr` alone: no server, no limit on the local part."""

    def __init__(self) -> None:
        self.local_part_limit = 0


def stdlib(arg: str) -> tuple[str | None, str | None] | str:
    try:
        return SMTP._getaddr(_Parser(), arg)
    except Exception as exc:  # the parser has bugs of its own on garbage
        return type(exc).__name__


@pytest.mark.parametrize(
    ("arg", "expected"),
    [
        ("<pat@example.org>", ("pat@example.org", "")),
        (
            "<pat@example.org> SIZE=5000 BODY=8BITMIME",
            ("pat@example.org", "SIZE=5000 BODY=8BITMIME"),
        ),
        (
            "<pat.o'neil+x@clinic-1.example.org>\t SIZE=1",
            ("pat.o'neil+x@clinic-1.example.org", "SIZE=1"),
        ),
        ("<a@b>SIZE=1", ("a@b", "SIZE=1")),
        ("<A@B.C>  ", ("A@B.C", "")),
    ],
)
def test_plain_addresses_take_the_fast_path(arg: str, expected: tuple[str, str]) -> None:
    assert plain_address(arg) == expected == stdlib(arg)


@pytest.mark.parametrize(
    "arg",
    [
        "<>",  # the null reverse-path
        '<"pat smith"@example.org>',  # quoted local part
        "<a..b@example.org>",  # obsolete local part the parser accepts
        "<a@[192.0.2.1]>",  # address literal
        "<a@b> (comment) SIZE=1",
        "<a@b> SIZE=1 \x85",  # non-ASCII in the parameters
        "<pät@example.org>",
        " <a@b>",  # leading space
        "a@b",  # no angle brackets
        "<@relay.example:a@b>",  # source route
        "<a@b.>",
    ],
)
def test_anything_else_goes_to_the_parser(arg: str) -> None:
    assert plain_address(arg) is None


def test_random_arguments_agree_with_the_parser() -> None:
    rng = random.Random(20261201)
    chars = "aZ09.@<>-_+ '\"=!\\[]()\t,;:\r\n\x0c\x85ä"
    tails = ["", " SIZE=1", "  X", "\tY", " ", " (c) X", " X ", "\r\n", " \x0cY", "(", " X(c)"]
    fast = 0
    for _ in range(20000):
        pool = chars if rng.random() < 0.5 else "aZ09.-_+'="  # half of them mostly plain
        local = "".join(rng.choice(pool) for _ in range(rng.randint(1, 12)))
        domain = "".join(rng.choice("ab.-9[]") for _ in range(rng.randint(1, 6)))
        arg = f"<{local}@{domain}>{rng.choice(tails)}"
        got = plain_address(arg)
        if got is not None:
            fast += 1
            assert got == stdlib(arg), arg
    assert fast > 1000  # the comparison covered the fast path, not only its refusals
