"""relay.datareader reads DATA as aiosmtpd 1.4 does (dots, limits, their order), into one
buffer. Each case feeds the bytes a client sends after the 354 to a real StreamReader."""

from __future__ import annotations

import asyncio
import random

import pytest

from relay.datareader import Data, _read_lines, read_data


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


def _wire(rng: random.Random) -> bytes:
    """A random DATA transfer: dots, bare CR and LF, lines near the limit, sizes near the
    limit, sometimes no end marker, sometimes the next command after it."""
    parts = [b"..", b".", b"\r", b"\n", b"\r\n", b"\r\n.", b"x", b"y" * 40, b"z" * 97]
    body = b"".join(rng.choice(parts) for _ in range(rng.randrange(0, 40)))
    if rng.random() < 0.2:
        body += b"w" * rng.randrange(90, 400)
    end = rng.choice([b"\r\n.\r\n", b"\r\n.\r\n", b".\r\n", b"\r\n.\r\nQUIT\r\n", b""])
    return body + end


async def _feed(reader: asyncio.StreamReader, wire: bytes, cuts: list[int]) -> None:
    """`wire` in pieces cut at `cuts`, each after the reader had a chance to run."""
    last = 0
    for cut in [*cuts, len(wire)]:
        reader.feed_data(wire[last:cut])
        last = cut
        await asyncio.sleep(0)
    reader.feed_eof()


@pytest.mark.parametrize("seed", range(8))
async def test_read_whole_equals_line_by_line(seed: int) -> None:
    """The bulk path gives what the line-by-line one gives (content, refusal, longest line,
    what stays in the reader), whatever the bytes and however they arrive."""
    rng = random.Random(seed)
    for _ in range(300):
        wire = _wire(rng)
        cuts = sorted(rng.sample(range(len(wire) + 1), min(len(wire) + 1, rng.randrange(1, 5))))
        size_limit = rng.choice([150, 10_000])
        results = []
        for fn in (read_data, _read_lines):
            reader = asyncio.StreamReader(limit=100)
            feeder = asyncio.create_task(_feed(reader, wire, cuts))
            got = await fn(reader, size_limit=size_limit, line_limit=100)
            await feeder
            results.append((got, await reader.read()))
        assert results[0] == results[1], wire
