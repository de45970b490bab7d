"""Shared helpers for the rewrite tests: corpus loading, MIME walking, a recording link maker."""

from __future__ import annotations

import email.policy
from collections.abc import Iterator
from dataclasses import dataclass, field
from email.message import EmailMessage
from email.parser import BytesParser
from pathlib import Path

from relay.model import UnsubscribeLinks

CORPUS = Path(__file__).resolve().parents[2] / "corpus" / "mime"
URL = "https://unsubscribe.clinic.example/u/TOKEN-abc_123"
MAILTO = "mailto:unsubscribe@clinic.example?subject=unsubscribe-TOKEN-abc_123"
RECIPIENT = "patient@example.net"


def load(name: str) -> tuple[bytes, EmailMessage]:
    raw = (CORPUS / name).read_bytes()
    return raw, parse(raw)


def parse(raw: bytes) -> EmailMessage:
    msg = BytesParser(policy=email.policy.default).parsebytes(raw)
    assert isinstance(msg, EmailMessage)
    return msg


def entities(part: EmailMessage) -> Iterator[EmailMessage]:
    """Every entity, not descending into attached messages (as the rewrite does)."""
    yield part
    if part.get_content_maintype() == "multipart":
        for sub in part.iter_parts():
            assert isinstance(sub, EmailMessage)
            yield from entities(sub)


def is_body_text(part: EmailMessage) -> bool:
    return (
        part.get_content_type() in ("text/plain", "text/html")
        and part.get_content_disposition() != "attachment"
        and part.get_filename() is None
    )


def body_texts(msg: EmailMessage) -> list[EmailMessage]:
    return [p for p in entities(msg) if is_body_text(p)]


def other_leaves(msg: EmailMessage) -> list[EmailMessage]:
    return [
        p for p in entities(msg) if p.get_content_maintype() != "multipart" and not is_body_text(p)
    ]


def defects(msg: EmailMessage) -> list[str]:
    return sorted(type(d).__name__ for p in msg.walk() for d in p.defects)


def text_of(part: EmailMessage) -> str:
    try:
        content = part.get_content()
    except LookupError:  # a charset Python does not know: look at the bytes as latin-1
        payload = part.get_payload(decode=True)
        assert isinstance(payload, bytes)
        content = payload.decode("latin-1")
    assert isinstance(content, str)
    return content.replace("\r\n", "\n")


def split(raw: bytes) -> tuple[bytes, bytes]:
    head, sep, body = raw.partition(b"\r\n\r\n")
    assert sep
    return head, body


@dataclass
class Links:
    """A link maker that records its calls."""

    mailto: str | None = MAILTO
    calls: list[tuple[str, str]] = field(default_factory=list)

    def __call__(self, recipient: str, category: str) -> UnsubscribeLinks:
        self.calls.append((recipient, category))
        return UnsubscribeLinks(https=URL, mailto=self.mailto)
