"""Address canonicalisation: one form for consent look-ups, opt-outs and audit hashes.

Rules (docs/addresses.md): surrounding angle brackets and whitespace are removed;
the domain is IDNA-encoded and lower-cased; the local part is lower-cased too.
RFC 5321 lets a server treat local parts as case-sensitive, but no large provider
does, and for suppression a recipient who typed "Jane@" must match "jane@".
Sub-addresses ("jane+news@") are kept: they are distinct mailboxes to a sender.
"""

from __future__ import annotations

_ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]"
# `dot-atom@host.name` (RFC 5321 Dot-string and a plain domain): what nearly every sender
# and recipient is; the fast paths of the session's MAIL/RCPT parsing and of the upstream
# client take it as it is and leave anything else to the full parsers.
DOT_ATOM_MAILBOX = rf"{_ATEXT}+(?:\.{_ATEXT}+)*@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*"


class AddressError(ValueError):
    """The text is not a mailbox address. The message never repeats the address."""


def canonical(address: str) -> str:
    text = address.strip()
    if text.startswith("<") and text.endswith(">"):
        text = text[1:-1].strip()
    local, sep, domain = text.rpartition("@")
    if not sep or not local or not domain:
        raise AddressError("expected local-part@domain")
    if any(c.isspace() or c in "\x00<>" for c in text):
        raise AddressError("address holds whitespace, NUL or angle brackets")
    try:
        ascii_domain = domain.rstrip(".").encode("idna").decode("ascii").lower()
    except UnicodeError as exc:
        raise AddressError("domain is not a valid internationalised domain name") from exc
    return f"{local.lower()}@{ascii_domain}"


def domain_of(address: str) -> str:
    """The domain part, lower-cased; empty for the null sender `<>`."""
    _, sep, domain = address.strip().strip("<>").rpartition("@")
    return domain.lower() if sep else ""
