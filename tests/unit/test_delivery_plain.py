"""The upstream MAIL/RCPT fast path sends exactly what aiosmtplib's quote_address would."""

from __future__ import annotations

import pytest
from aiosmtplib.email import quote_address

from relay.delivery import _PLAIN

PLAIN = [
    "app@clinic.example",
    "first.last+tag@mail.example.org",
    "o'brien@x-y.example",
    "a!#$%&'*+/=?^_`{|}~-z@example.com",
    "x@localhost",
]
NOT_PLAIN = [
    '"quoted local"@example.org',
    "a..b@example.org",
    ".lead@example.org",
    "trail.@example.org",
    "jané@example.org",
    "user@[192.0.2.1]",
    "Name <user@example.org>",
    "user@example.org (comment)",
    "user@exa_mple.org",
    "user@",
    "@example.org",
    "user@example.org\r\nRCPT TO:<x@y.z>",
]


@pytest.mark.parametrize("address", PLAIN)
def test_plain_addresses_are_sent_as_aiosmtplib_sends_them(address: str) -> None:
    assert _PLAIN.fullmatch(address)
    assert quote_address(address) == f"<{address}>"


@pytest.mark.parametrize("address", NOT_PLAIN)
def test_anything_else_goes_through_aiosmtplib(address: str) -> None:
    assert _PLAIN.fullmatch(address) is None
