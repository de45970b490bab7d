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


async def read_data(reader: asyncio.StreamReader, *, size_limit: int, line_limit: int) -> Data:
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
