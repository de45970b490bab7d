"""relay.datareader reads DATA as aiosmtpd 1.4 does (dots, limits, their order), into one
buffer. Each case feeds the bytes a client sends after the 354 to a real StreamReader."""

from __future__ import annotations

import asyncio

import pytest

from relay.datareader import Data, read_data


async def read(wire: bytes, *, size_limit: int = 10_000, line_limit: int = 100) -> Data:
    reader = asyncio.StreamReader(limit=line_limit)
    reader.feed_data(wire)
    reader.feed_eof()
    return await read_data(reader, size_limit=size_limit, line_limit=line_limit)


@pytest.mark.parametrize(
    ("wire", "content"),
    [
        (b".\r\n", b""),
        (b"Subject: a\r\n\r\nbody\r\n.\r\n", b"Subject: a\r\n\r\nbody\r\n"),
        (
            b"..leading\r\n...two\r\n.x\r\nmid.dle\r\n.\r\n",
            b".leading\r\n..two\r\nx\r\nmid.dle\r\n",
        ),
        (b"bare\nlf and\rcr\r\n.\r\n", b"bare\nlf and\rcr\r\n"),
        (b"a\r\n.\r\nQUIT\r\n", b"a\r\n"),  # what follows the end is the next command
    ],
    ids=["empty", "plain", "dots", "bare-endings", "pipelined"],
)
async def test_content_is_the_unstuffed_lines(wire: bytes, content: bytes) -> None:
    got = await read(wire)
    assert got.content == content
    assert not (got.too_long or got.too_much)


async def test_longest_line_counts_crlf_without_the_dot() -> None:
    got = await read(b"abc\r\n." + b"x" * 40 + b"\r\n.\r\n")
    assert got.longest == 42


@pytest.mark.parametrize(
    ("wire", "too_long", "too_much"),
    [
        # Over the reader's limit: read on in pieces to the end, then refused.
        (b"a" * 300 + b"\r\nnext\r\n.\r\n", True, False),
        # Within the reader's buffer but over line_limit once joined (dot included).
        (b"." + b"b" * 99 + b"\r\n.\r\n", True, False),
        (b"c" * 80 + b"\r\n" + b"d" * 80 + b"\r\n.\r\n", False, True),
        # Whichever comes first wins, as in aiosmtpd.
        ((b"e" * 80 + b"\r\n") * 2 + b"f" * 300 + b"\r\n.\r\n", False, True),
        (b"g" * 300 + b"\r\n" + b"h" * 80 + b"\r\n.\r\n", True, False),
    ],
    ids=["reader-limit", "line-limit", "size", "size-first", "line-first"],
)
async def test_limits_refuse_after_reading_to_the_end(
    wire: bytes, too_long: bool, too_much: bool
) -> None:
    reader = asyncio.StreamReader(limit=100)
    reader.feed_data(wire + b"NOOP\r\n")
    reader.feed_eof()
    got = await read_data(reader, size_limit=150, line_limit=100)
    assert (got.content, got.too_long, got.too_much) == (None, too_long, too_much)
    assert await reader.readline() == b"NOOP\r\n"  # the whole message was consumed


async def test_client_gone_mid_message() -> None:
    got = await read(b"partial line\r\nand more")
    assert got == Data(None)
