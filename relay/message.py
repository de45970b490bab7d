"""Parse a received message once into the context every policy reads, and check its shape.

Shape checks (line endings, header size and encoding, duplicate Subject/From, MIME
depth and boundaries) protect the parser and the upstream; they are enforced in
every mode because a malformed message cannot be judged safely.
"""

from __future__ import annotations

import email.policy
import re
from dataclasses import dataclass
from email.errors import (
    CloseBoundaryNotFoundDefect,
    MessageDefect,
    MultipartInvariantViolationDefect,
    StartBoundaryNotFoundDefect,
)
from email.message import EmailMessage
from email.parser import BytesParser

from relay.category import HEADER, CategoryTable
from relay.model import Envelope, MessageContext, Peer, TlsInfo
from relay.phi.normalize import subject_text

_PARSER = BytesParser(policy=email.policy.default)
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

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def has_bare_line_endings(raw: bytes) -> bool:
    return bool(_BARE_LF.search(raw) or _BARE_CR.search(raw))


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
    if not envelope.smtputf8 and any(b >= 0x80 for b in headers):
        raise ShapeError("message.header-8bit")
    if b"\x00" in raw:
        raise ShapeError("message.nul")
    return raw


def _depth(part: EmailMessage, limit: int, level: int = 1) -> None:
    if level > limit:
        raise ShapeError("message.mime-too-deep")
    defects: list[MessageDefect] = list(part.defects)
    if any(isinstance(d, _BROKEN_MIME) for d in defects):
        raise ShapeError("message.mime-broken")
    if part.is_multipart():
        payload = part.get_payload()
        assert isinstance(payload, list)
        for sub in payload:
            if isinstance(sub, EmailMessage):
                _depth(sub, limit, level + 1)


def parse(raw: bytes, limits: ShapeLimits) -> EmailMessage:
    msg = _PARSER.parsebytes(raw)
    assert isinstance(msg, EmailMessage)
    if len(msg.get_all("From") or []) > 1:
        raise ShapeError("message.from.multiple")
    _depth(msg, limits.max_mime_depth)
    return msg


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
    name, source = categories.resolve(raw_headers(msg, HEADER), envelope.mail_from, facts.auth_user)
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
        category=categories.get(name),
        category_name=name,
        category_source=source,
        plaintext_network=facts.plaintext_network,
    )
