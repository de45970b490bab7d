"""Unsubscribe tokens: AES-GCM sealed (recipient, category, issue time), with key rotation.

Wire format, before unpadded URL-safe base64 (docs/unsubscribe.md):

    version (1 byte) | key id (2 bytes) | nonce (12 bytes) | AES-256-GCM(plaintext) + tag (16)

    plaintext = issued (uint32 seconds, big-endian) | len(category) (1) | category | recipient

The version and key id are authenticated as associated data. The AES key is derived
from each configured secret with HKDF so a secret shared with another purpose never
serves as a raw cipher key, and the key id is an HMAC of the secret, which names it
without revealing it.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import re
import struct
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from relay.address import canonical
from relay.keys import load_list

KEY_NAME = "unsubscribe"
DEFAULT_MAX_AGE = 400 * 86400.0
VERSION = 1
MIN_KEY_BYTES = 32
_NONCE = 12
_TAG = 16
_HEADER = struct.Struct(">BH")
_ISSUED = struct.Struct(">I")
_OVERHEAD = _HEADER.size + _NONCE + _TAG
# Longest SMTP path (RFC 5321: 256) plus category and header, encoded: anything longer
# is garbage and is refused before any decoding work.
_MAX_TOKEN_CHARS = 512
_TOKEN_CHARS = re.compile(r"^[A-Za-z0-9_-]+$")
_CATEGORY = re.compile(r"^[a-z0-9][a-z0-9-]{0,39}$")
# Replicas' clocks differ a little; a token "issued" further ahead than this was not
# made by a relay with a sane clock.
_FUTURE_SKEW = 86400.0


class InvalidToken(Exception):
    """The token was not made by one of our current keys, or is damaged. No detail leaks."""


class ExpiredToken(InvalidToken):
    """Authentic, but older than the codec's maximum age."""


@dataclass(frozen=True, slots=True)
class Claims:
    recipient: str
    category: str
    issued: float


@dataclass(frozen=True, slots=True)
class _Key:
    key_id: int
    aead: AESGCM


def _derive(secret: bytes) -> _Key:
    if len(secret) < MIN_KEY_BYTES:
        raise ValueError(f"unsubscribe key too short: need at least {MIN_KEY_BYTES} bytes")
    aes_key = HKDF(
        algorithm=hashes.SHA256(), length=32, salt=None, info=b"phi-relay unsubscribe token v1"
    ).derive(secret)
    key_id = int.from_bytes(
        hmac.new(secret, b"phi-relay unsubscribe key id", hashlib.sha256).digest()[:2], "big"
    )
    return _Key(key_id=key_id, aead=AESGCM(aes_key))


def _b64encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _b64decode(text: str) -> bytes:
    if not _TOKEN_CHARS.fullmatch(text) or len(text) % 4 == 1:
        raise InvalidToken("malformed")
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError) as exc:
        raise InvalidToken("malformed") from exc


class TokenCodec:
    """Issues and opens tokens. `keys` is newest first: the first encrypts, all decrypt."""

    def __init__(self, keys: Sequence[bytes], max_age: float = DEFAULT_MAX_AGE) -> None:
        if not keys:
            raise ValueError("at least one unsubscribe key is needed")
        if max_age <= 0:
            raise ValueError("max_age must be positive")
        self._keys = tuple(_derive(k) for k in keys)
        self.max_age = max_age

    @classmethod
    def from_state_dir(cls, state_dir: Path, max_age: float = DEFAULT_MAX_AGE) -> TokenCodec:
        """Keys from PHI_RELAY_UNSUBSCRIBE_KEY (comma-separated) or keys/unsubscribe.key."""
        return cls(load_list(state_dir, KEY_NAME), max_age)

    def issue(self, recipient: str, category: str, now: float | None = None) -> str:
        """A token for this recipient (canonicalised) and category, sealed with the newest key."""
        if not _CATEGORY.fullmatch(category):
            raise ValueError("category must be a lower-case name of letters, digits and '-'")
        issued = int(time.time() if now is None else now)
        if not 0 <= issued < 2**32:
            raise ValueError("issue time out of range")
        cat = category.encode("ascii")
        plaintext = (
            _ISSUED.pack(issued) + bytes([len(cat)]) + cat + canonical(recipient).encode("utf-8")
        )
        key = self._keys[0]
        header = _HEADER.pack(VERSION, key.key_id)
        nonce = os.urandom(_NONCE)
        return _b64encode(header + nonce + key.aead.encrypt(nonce, plaintext, header))

    def open(self, token: str, now: float | None = None) -> Claims:
        """The claims inside `token`; InvalidToken if not ours or damaged, ExpiredToken if old."""
        if len(token) > _MAX_TOKEN_CHARS:
            raise InvalidToken("too long")
        raw = _b64decode(token)
        if len(raw) <= _OVERHEAD + _ISSUED.size + 1:
            raise InvalidToken("truncated")
        version, key_id = _HEADER.unpack_from(raw)
        if version != VERSION:
            raise InvalidToken("unknown version")
        header = raw[: _HEADER.size]
        nonce = raw[_HEADER.size : _HEADER.size + _NONCE]
        sealed = raw[_HEADER.size + _NONCE :]
        plaintext = self._decrypt(key_id, nonce, sealed, header)
        claims = self._parse(plaintext)
        current = time.time() if now is None else now
        if claims.issued > current + _FUTURE_SKEW:
            raise InvalidToken("issued in the future")
        if current - claims.issued > self.max_age:
            raise ExpiredToken("expired")
        return claims

    def _decrypt(self, key_id: int, nonce: bytes, sealed: bytes, header: bytes) -> bytes:
        # Key ids are 16 bits, so two keys may share one; try each that matches.
        for key in self._keys:
            if key.key_id != key_id:
                continue
            try:
                return key.aead.decrypt(nonce, sealed, header)
            except InvalidTag:
                continue
        raise InvalidToken("not authentic under any current key")

    @staticmethod
    def _parse(plaintext: bytes) -> Claims:
        # Authentic plaintext was written by issue(); a parse failure means a bug or a
        # leaked key, and is still only ever reported as an invalid token.
        try:
            (issued,) = _ISSUED.unpack_from(plaintext)
            cat_len = plaintext[_ISSUED.size]
            start = _ISSUED.size + 1
            category = plaintext[start : start + cat_len].decode("ascii")
            recipient = plaintext[start + cat_len :].decode("utf-8")
        except (struct.error, IndexError, UnicodeDecodeError) as exc:
            raise InvalidToken("malformed claims") from exc
        if not _CATEGORY.fullmatch(category) or "@" not in recipient:
            raise InvalidToken("malformed claims")
        return Claims(recipient=recipient, category=category, issued=float(issued))
