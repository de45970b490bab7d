"""Read one SMTP DATA transfer into one buffer: transparency dots removed, limits kept.

aiosmtpd keeps every line as its own bytearray and joins them at the end: about twice
the message while it arrives (an object per line) and three times at the join, for
every message being received at once. Here the lines go into one bytearray, so a
message being received costs about its size. The limits and their order are aiosmtpd's
(1.4, `SMTP.smtp_DATA`): a line over the reader's limit or over `line_limit` octets, or
more than `size_limit` octets in all, is read to the end and then refused.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Data:
    content: bytes | None  # None: refused (too_long or too_much) or the client went away
    too_long: bool = False
    too_much: bool = False
    longest: int = 0  # octets of the longest line, CRLF included, dot removed


_END = b"\r\n.\r\n"
WHOLE_MAX = 64 * 1024  # octets of a message read whole; a larger one is read line by line


async def read_data(reader: asyncio.StreamReader, *, size_limit: int, line_limit: int) -> Data:
    whole = await _read_whole(reader, size_limit=size_limit, line_limit=line_limit)
    if whole is not None:
        return whole
    return await _read_lines(reader, size_limit=size_limit, line_limit=line_limit)


async def _read_whole(
    reader: asyncio.StreamReader, *, size_limit: int, line_limit: int
) -> Data | None:
    """The usual message, whole: wait until its end marker is in the reader's buffer, check
    its lines in bulk and take it out with one search, split and replace, not a read per
    line (~1 µs of CPU each). None, with nothing consumed, as soon as the buffer holds a
    line over the limits, more than `size_limit` octets, more than WHOLE_MAX (a large
    message is read line by line, so the buffer never holds it all), or the client goes
    away: `_read_lines` then reads the same bytes one line at a time and says which.
    Works on the reader's buffer in place (asyncio's StreamReader keeps it in `_buffer`
    and waits in `_wait_for_data`, as its own readuntil does)."""
    buf: bytearray = reader._buffer  # type: ignore[attr-defined]
    # A line the reader itself would refuse (readuntil's LimitOverrunError) counts too.
    limit = min(line_limit, reader._limit + 2)  # type: ignore[attr-defined]
    checked = 0  # octets at the front already seen to be whole lines within the limits
    while True:
        if buf.startswith(b".\r\n"):
            end = 0
        else:
            found = buf.find(_END, max(checked - 2, 0))
            end = -1 if found == -1 else found + 2
        # The whole lines so far: up to the end marker, else to the last CRLF (if any).
        whole = end
        if end < 0:
            crlf = buf.rfind(b"\r\n", checked)
            whole = checked if crlf < 0 else crlf + 2
        if whole > checked:
            if max(map(len, buf[checked:whole].split(b"\r\n"))) + 2 > limit:
                return None
            checked = whole
        if (
            (size_limit and checked > size_limit)
            or checked > WHOLE_MAX
            or len(buf) - checked > limit  # a line already too long, its end not here yet
        ):
            return None
        if end >= 0:
            break
        if reader.exception() is not None or reader._eof:  # type: ignore[attr-defined]
            return None
        await reader._wait_for_data("read_data")  # type: ignore[attr-defined]
    with memoryview(buf) as view:
        raw = bytes(view[:end])
    del buf[: end + 3]
    reader._maybe_resume_transport()  # type: ignore[attr-defined]
    content = (raw[1:] if raw.startswith(b".") else raw).replace(b"\r\n.", b"\r\n")
    longest = max(map(len, content.split(b"\r\n"))) + 2 if content else 0
    return Data(content, longest=longest)


async def _read_lines(reader: asyncio.StreamReader, *, size_limit: int, line_limit: int) -> Data:
    buf = bytearray()
    size = longest = 0
    too_long = too_much = False
    fragments: list[bytes] = []  # a line longer than the reader's limit comes in pieces
    while True:
        try:
            line = await reader.readuntil(b"\r\n")
        except asyncio.LimitOverrunError as e:
            if not too_much:
                too_long = True
            buf = bytearray()  # nothing more is kept: the message will be refused
            line = await reader.read(e.consumed)
        except asyncio.IncompleteReadError:
            return Data(None)
        if not fragments and line == b".\r\n":
            break
        size += len(line)
        if not too_long and size_limit and size > size_limit:
            too_much = True
            buf = bytearray()
        if not line.endswith(b"\r\n"):
            fragments.append(line)
            continue
        if fragments:
            fragments.append(line)
            line = b"".join(fragments)
            fragments = []
        if too_long or too_much:
            continue
        if len(line) > line_limit:
            too_long = True
            buf = bytearray()
            continue
        if line[:1] == b".":
            line = line[1:]
        if len(line) > longest:
            longest = len(line)
        buf += line
    if too_long or too_much:
        return Data(None, too_long, too_much and not too_long, longest)
    return Data(bytes(buf), longest=longest)
