"""Synthetic test messages: a plain clinic notice with a chosen subject, recipients, category."""

from __future__ import annotations

from email.message import EmailMessage

SENDER = "app@clinic.example"


def message(subject: str, to: list[str], category: str | None = None) -> bytes:
    msg = EmailMessage()
    msg["From"] = SENDER
    msg["To"] = ", ".join(to)
    msg["Subject"] = subject
    if category:
        msg["X-PHI-Category"] = category
    msg.set_content("The clinic on Elm Street opens at nine.\n")
    return msg.as_bytes(policy=msg.policy.clone(linesep="\r\n"))
