"""Unsubscribe links for a recipient and category: the https one-click URL and a mailto."""

from __future__ import annotations

from urllib.parse import quote, urlsplit

from relay.address import AddressError, canonical
from relay.model import LinkMaker, UnsubscribeLinks
from relay.tokens import TokenCodec

MAILTO_SUBJECT_PREFIX = "unsubscribe-"


def check_base_url(base_url: str) -> str:
    """The base URL without a trailing slash; ValueError saying why it cannot be used."""
    parts = urlsplit(base_url)
    host = parts.hostname or ""
    if not host:
        raise ValueError(
            "unsubscribe base_url must be an absolute URL such as https://mail.example.org"
        )
    if parts.query or parts.fragment or parts.username or parts.password:
        raise ValueError("unsubscribe base_url must not carry a query, fragment or credentials")
    if parts.scheme == "http":
        # RFC 8058 one-click needs https (Gmail and Yahoo ignore anything else), and the
        # token in the link identifies a recipient.
        raise ValueError(
            "unsubscribe base_url must use https: the token in it identifies a recipient, "
            "and mail providers ignore a List-Unsubscribe that is not https"
        )
    if parts.scheme != "https":
        raise ValueError("unsubscribe base_url must start with https://")
    return base_url.rstrip("/")


def make_link_maker(codec: TokenCodec, base_url: str, mailto: str | None) -> LinkMaker:
    """A LinkMaker issuing one fresh token per call.

    The https link is `{base_url}/u/{token}`. The mailto link, when an address is given,
    is `mailto:{address}?subject=unsubscribe-{token}`: the token goes in the subject
    because mail systems rewrite or lower-case local parts, but leave subjects alone.
    """
    base = check_base_url(base_url)
    mail_address: str | None = None
    if mailto is not None:
        try:
            mail_address = canonical(mailto)
        except AddressError as exc:
            raise ValueError(f"unsubscribe mailto is not an address: {exc}") from exc

    def make(recipient: str, category: str) -> UnsubscribeLinks:
        token = codec.issue(recipient, category)
        mail = None
        if mail_address is not None:
            mail = f"mailto:{quote(mail_address, safe='@')}?subject={MAILTO_SUBJECT_PREFIX}{token}"
        return UnsubscribeLinks(https=f"{base}/u/{token}", mailto=mail)

    return make


def token_from_subject(subject: str) -> str | None:
    """The token in a mailto unsubscribe request's subject, for whoever reads that mailbox."""
    for word in subject.split():
        if word.lower().startswith(MAILTO_SUBJECT_PREFIX):
            return word[len(MAILTO_SUBJECT_PREFIX) :]
    return None
