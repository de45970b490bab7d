"""Read a header block the way receiving mail clients do, in time linear in its size.

Receivers are lenient where Python's `email` parser is strict: Thunderbird, Outlook
and webmail read `Subject : x` (RFC 5322 4.5 obsolete syntax, whitespace before the
colon) as a Subject, and keep reading fields after a line that is not one. The
stdlib parser ends the header block at either, so a policy reading its result would
judge a different message than the one the recipient sees. Here the block runs to
the first empty line, as for every receiver; a field name with whitespace before its
colon is canonicalised (`Subject: x`, which DKIM relaxed canonicalisation also
yields), and anything two readers could read differently is refused.
"""

from __future__ import annotations

import email.policy
import re
from dataclasses import dataclass
from email.message import EmailMessage
from typing import TYPE_CHECKING, Any

CRLF = b"\r\n"
# A field name (printable ASCII but the colon), optional whitespace, then the colon.
_FIELD = re.compile(rb"([!-9;-~]+)([ \t]*):")
# Any later line that a lenient reader would take for a field.
_LATER_FIELD = re.compile(rb"^[!-9;-~]+[ \t]*:", re.MULTILINE)


class HeaderError(Exception):
    """The block cannot be read one way only; `reason` is a PHI-free code for the replies."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Field:
    name: str  # lower case
    raw: bytes  # the whole field, continuation lines included, ending in CRLF


@dataclass(frozen=True, slots=True)
class HeaderBlock:
    fields: tuple[Field, ...]
    body_start: int  # offset of the body in the bytes read (after the empty line, if any)
    canonical: bytes  # the message with every field name canonicalised (the input if none was)

    def count(self, name: str) -> int:
        key = name.lower()
        return sum(1 for f in self.fields if f.name == key)

    def values(self, name: str) -> list[str]:
        """Unfolded values of every field with this name, undecoded (RFC 2047 stays)."""
        key = name.lower()
        out = []
        for f in self.fields:
            if f.name == key:
                value = f.raw.split(b":", 1)[1].decode("ascii", "surrogateescape")
                out.append("".join(value.splitlines()).strip())
        return out


def read(raw: bytes) -> HeaderBlock:
    """Split `raw` (CRLF line endings) into its header fields and body. Raises HeaderError."""
    if raw.startswith(CRLF):
        return HeaderBlock((), 2, raw)
    empty = raw.find(CRLF + CRLF)
    block_end = len(raw) if empty < 0 else empty + 2
    fields: list[Field] = []
    current: list[bytes] = []
    changed = False
    body_start = len(raw) if empty < 0 else empty + 4
    pos = 0
    while pos < block_end:
        nl = raw.find(CRLF, pos, block_end)
        line_end = block_end if nl < 0 else nl + 2
        line = raw[pos:line_end]
        if line[:1] in (b" ", b"\t"):
            if not current:
                # Some readers drop it, some join it to nothing, some start a field with it.
                raise HeaderError("message.header-ambiguous")
            if not line.strip(b" \t\r\n"):
                # A whitespace-only line ends the block for some readers, folds for others.
                raise HeaderError("message.header-ambiguous")
            current.append(line)
        elif (match := _FIELD.match(line)) is not None:
            _close(fields, current)
            if match.group(2):
                changed = True
                line = match.group(1) + b":" + line[match.end() :]
            current = [line]
        else:
            # Not a field: Python's parser starts the body here, lenient readers skip the
            # line and go on reading fields. Only unambiguous when no field follows.
            if line.startswith(b":") or _LATER_FIELD.search(raw, line_end, block_end):
                raise HeaderError("message.header-ambiguous")
            body_start = pos
            break
        pos = line_end
    _close(fields, current)
    canonical = raw
    if changed:
        head_end = block_end if body_start >= block_end else body_start
        canonical = b"".join(f.raw for f in fields) + raw[head_end:]
        body_start = len(canonical) - (len(raw) - body_start)
    return HeaderBlock(tuple(fields), body_start, canonical)


def starts_with_fields(text: str) -> bool:
    """True when lines a lenient reader takes for header fields open this text.

    For a MIME part whose header block Python's parser cut short (a field with
    whitespace before the colon, or a stray line before more fields): what it then
    reads as body text, a mail client reads as that part's headers.
    """
    end = text.find("\r\n\r\n")
    head = text[: len(text) if end < 0 else end + 2].encode("ascii", "surrogateescape")
    return _LATER_FIELD.search(head) is not None


def _close(fields: list[Field], current: list[bytes]) -> None:
    if not current:
        return
    whole = b"".join(current)
    if not whole.endswith(CRLF):
        whole += CRLF
    name = whole.split(b":", 1)[0].decode("ascii").lower()
    fields.append(Field(name, whole))
    current.clear()


if TYPE_CHECKING:
    _Base = email.policy.EmailPolicy[EmailMessage]
else:
    _Base = email.policy.EmailPolicy


class _LinearPolicy(_Base):
    """`email.policy.default`, except that a header value reads back as the string received.

    The default policy parses a value into a structured header on every access, and its
    parser is quadratic (or recursive past Python's limit) on some folded or nested
    values, which lets a 60 KiB header block hold the event loop for seconds. Every
    `Message` method we use (content type, parameters, boundary, disposition, payload
    decoding) works on the plain string in linear time.
    """

    def header_fetch_parse(self, name: str, value: str) -> Any:
        if hasattr(value, "name"):
            return value
        return "".join(value.splitlines())


LINEAR_POLICY = _LinearPolicy()
