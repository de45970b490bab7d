"""Keyed hashes of recipient addresses, so the audit log can be searched without holding them."""

from __future__ import annotations

import hashlib
import hmac

from relay.address import AddressError, canonical


def recipient_hash(key: bytes, address: str) -> str:
    """HMAC-SHA256 hex of the canonical address; the raw text if it does not canonicalise.

    Canonical form first so that `Jane@Example.ORG` and `<jane@example.org>` give one
    hash: an auditor holding the key can then find every record for one recipient.
    """
    try:
        text = canonical(address)
    except AddressError:
        text = address
    return hmac.digest(key, text.encode("utf-8", "surrogatepass"), hashlib.sha256).hex()
