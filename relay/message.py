"""Parse a received message once into the context every policy reads, and check its shape.

Shape checks (line endings, header size and encoding, a header block readers could
read two ways, duplicate Subject/From and other single fields, hop count, MIME depth
and boundaries) protect the parser and the upstream; they are enforced in every mode
because a malformed message cannot be judged safely.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from email.errors import (
    CloseBoundaryNotFoundDefect,
    MessageDefect,
    MissingHeaderBodySeparatorDefect,
    MultipartInvariantViolationDefect,
    StartBoundaryNotFoundDefect,
)
from email.message import EmailMessage
from email.parser import BytesParser
from typing import Any

from relay import headers
from relay.category import HEADER, CategoryTable
from relay.headers import LINEAR_POLICY
from relay.model import Envelope, MessageContext, Peer, TlsInfo
from relay.phi.normalize import subject_text

_PARSER = BytesParser(policy=LINEAR_POLICY)
# Fields a message carries at most once (RFC 5322 3.6, RFC 2045): readers that take the
# first and readers that take the last would show different messages.
_SINGLE = {
    "subject": "message.subject.multiple",
    "from": "message.from.multiple",
    HEADER.lower(): "category.multiple",
    "content-type": "message.header-duplicate",
    "content-transfer-encoding": "message.header-duplicate",
    "content-disposition": "message.header-duplicate",
    "mime-version": "message.header-duplicate",
}
_BARE_LF = re.compile(rb"(?<!\r)\n")
_BARE_CR = re.compile(rb"\r(?!\n)")
_BROKEN_MIME = (
    StartBoundaryNotFoundDefect,
    CloseBoundaryNotFoundDefect,
    MultipartInvariantViolationDefect,
)


@dataclass(frozen=True, slots=True)
class ShapeLimits:
    max_header_bytes: int
    max_mime_depth: int
    bare_line_endings: str  # "refuse" | "normalise"
    max_received: int = 50


@dataclass(frozen=True, slots=True)
class SessionFacts:
    session_id: str
    peer: Peer
    tls: TlsInfo
    auth_user: str | None
    trusted_network: bool
    plaintext_network: bool


class ShapeError(Exception):
    """The message cannot be accepted as sent; `reason` is a code for the replies table."""

    def __init__(self, reason: str, limit: int | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        # The limit that was exceeded, for the reply; never anything from the message.
        self.kinds: tuple[str, ...] = () if limit is None else (str(limit),)


def has_bare_line_endings(raw: bytes) -> bool:
    # Every CR and LF is in a CRLF pair exactly when the three counts agree: three passes
    # of bytes.count (~20 µs for 5 kB), no copy, against ~100 µs for the two look-around
    # searches (_BARE_LF, _BARE_CR) that say the same.
    pairs = raw.count(b"\r\n")
    return raw.count(b"\n") != pairs or raw.count(b"\r") != pairs


def normalise_line_endings(raw: bytes) -> bytes:
    return _BARE_LF.sub(b"\r\n", _BARE_CR.sub(b"\r\n", raw))


def header_section(raw: bytes) -> bytes:
    end = raw.find(b"\r\n\r\n")
    return raw if end < 0 else raw[: end + 2]


def check_raw(raw: bytes, envelope: Envelope, limits: ShapeLimits) -> bytes:
    """Checks on the bytes before parsing. Returns the (possibly normalised) message."""
    if has_bare_line_endings(raw):
        # A lone CR or LF is how SMTP smuggling hides a second message (CVE-2023-51764).
        if limits.bare_line_endings == "refuse":
            raise ShapeError("message.bare-line-ending")
        raw = normalise_line_endings(raw)
    headers = header_section(raw)
    if len(headers) > limits.max_header_bytes:
        raise ShapeError("message.header-too-large")
    if not envelope.smtputf8 and not headers.isascii():
        raise ShapeError("message.header-8bit")
    if b"\x00" in raw:
        raise ShapeError("message.nul")
    return raw


def read_headers(raw: bytes, limits: ShapeLimits) -> headers.HeaderBlock:
    """The top-level header block as receivers read it, judged field by field."""
    try:
        block = headers.read(raw)
    except headers.HeaderError as err:
        raise ShapeError(err.reason) from None
    for name, reason in _SINGLE.items():
        if block.count(name) > 1:
            raise ShapeError(reason)
    if block.count("received") > limits.max_received:
        # A mail loop, or a message built to look like one (Postfix hopcount_limit).
        raise ShapeError("message.hop-limit", limits.max_received)
    return block


def _depth(part: EmailMessage, limit: int, level: int = 1) -> None:
    if level > limit:
        raise ShapeError("message.mime-too-deep", limit)
    defects: list[MessageDefect] = list(part.defects)
    if any(isinstance(d, _BROKEN_MIME) for d in defects):
        raise ShapeError("message.mime-broken")
    if any(isinstance(d, MissingHeaderBodySeparatorDefect) for d in defects):
        payload = part.get_payload()
        if isinstance(payload, str) and headers.starts_with_fields(payload):
            # Clients read these lines as the part's fields (its type, its disposition).
            raise ShapeError("message.header-ambiguous")
    if part.is_multipart():
        payload = part.get_payload()
        assert isinstance(payload, list)
        for sub in payload:
            if isinstance(sub, EmailMessage):
                _depth(sub, limit, level + 1)


@dataclass(frozen=True, slots=True)
class Parsed:
    raw: bytes  # the message as it goes on: field names canonicalised
    message: EmailMessage
    block: headers.HeaderBlock


def parse(raw: bytes, limits: ShapeLimits) -> Parsed:
    """Read the header block, then the MIME tree. Raises ShapeError."""
    block = read_headers(raw, limits)
    raw = block.canonical
    try:
        msg: Any = _PARSER.parsebytes(raw)
    except RecursionError:
        # The stdlib parser recurses per nesting level; it gives up long before memory does.
        raise ShapeError("message.mime-too-deep", limits.max_mime_depth) from None
    assert isinstance(msg, EmailMessage)
    if len(msg.keys()) != len(block.fields):
        # Defence in depth: the policies read the stdlib's view; it must be the receivers'.
        raise ShapeError("message.header-ambiguous")
    _depth(msg, limits.max_mime_depth)
    return Parsed(raw, msg, block)


def raw_headers(msg: EmailMessage, name: str) -> list[str]:
    """Header values as stored (undecoded, possibly folded), for our own decoding."""
    lname = name.lower()
    return [str(v) for k, v in msg.raw_items() if k.lower() == lname]


def build_context(
    *,
    raw: bytes,
    msg: EmailMessage,
    envelope: Envelope,
    facts: SessionFacts,
    decision_id: str,
    categories: CategoryTable,
) -> MessageContext:
    subjects = raw_headers(msg, "Subject")
    resolved = categories.resolve(raw_headers(msg, HEADER), envelope.mail_from, facts.auth_user)
    return MessageContext(
        session_id=facts.session_id,
        decision_id=decision_id,
        peer=facts.peer,
        tls=facts.tls,
        auth_user=facts.auth_user,
        trusted_network=facts.trusted_network,
        envelope=envelope,
        raw=raw,
        message=msg,
        subject=subject_text(subjects[0]) if subjects else "",
        subject_count=len(subjects),
        category=categories.get(resolved.name),
        category_name=resolved.name,
        category_source=resolved.source,
        plaintext_network=facts.plaintext_network,
        category_refusal=resolved.refusal,
    )
