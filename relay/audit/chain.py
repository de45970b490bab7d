"""The audit chain's canonical encoding and keyed record hash, shared by writer and verifier."""

from __future__ import annotations

import hashlib
import hmac
import json
from json.encoder import c_make_encoder, encode_basestring_ascii  # type: ignore[attr-defined]
from typing import Any

GENESIS = "0" * 64
"""`prev` of the first record of a chain: no record hashes to this value."""

_CHAIN_LABEL = b"phi-relay/audit/chain/v1"

Record = dict[str, Any]


def chain_key(key: bytes) -> bytes:
    """The chain's own key, derived from the audit key.

    The audit key also hashes recipient addresses, and a raw (uncanonicalisable)
    recipient string is hashed as given. Without a separate key, a client could send
    `RCPT TO:` text equal to a forged record and find that record's valid hash in
    the log. Deriving a sub-key for the chain keeps the two uses apart.
    """
    return hmac.new(key, _CHAIN_LABEL, hashlib.sha256).digest()


_SETTINGS: dict[str, Any] = {
    "sort_keys": True,
    "separators": (",", ":"),
    "ensure_ascii": True,
    "allow_nan": False,
}
# json.dumps builds an encoder (and its C half) on every call, ~5 µs: the C encoder for
# these settings is made once (json.encoder's own c_make_encoder call, for them).
_BASE = json.JSONEncoder(check_circular=False, **_SETTINGS)
_C_ENCODE = (
    None
    if c_make_encoder is None
    else c_make_encoder(
        None, _BASE.default, encode_basestring_ascii, None, ":", ",", True, False, False
    )
)


def canonical(record: Record) -> bytes:
    """One deterministic encoding: sorted keys, no spaces, ASCII only, no NaN.

    Both the writer and `verify` use this, so the hash of a parsed record can be
    recomputed byte for byte without depending on a logging library's rendering.
    Records hold no cycles (the writer builds them from values), so no cycle check.
    """
    if _C_ENCODE is None:
        return json.dumps(record, **_SETTINGS).encode("ascii")
    return "".join(_C_ENCODE(record, 0)).encode("ascii")


def sealed(ckey: bytes | None, record: Record) -> tuple[bytes, str]:
    """`canonical` of the record with its `hash` added, and that hash, from one encoding.

    Sorted keys put `hash` between the names below it and those above it, so the two
    halves are encoded once each, the hash is taken over them joined (exactly the bytes
    `record_hash` hashes) and spliced in: byte for byte `canonical(record | {"hash": h})`
    without encoding the record twice (~20 µs a record). `record` holds no `hash`.
    """
    low = canonical({k: v for k, v in record.items() if k < "hash"})[1:-1]
    high = canonical({k: v for k, v in record.items() if k > "hash"})[1:-1]
    body = b"{" + b",".join(part for part in (low, high) if part) + b"}"
    if ckey is None:
        digest = hashlib.sha256(body).hexdigest()
    else:
        digest = hmac.digest(ckey, body, "sha256").hex()
    field = b'"hash":"' + digest.encode("ascii") + b'"'
    return b"{" + b",".join(part for part in (low, field, high) if part) + b"}", digest


def record_hash(ckey: bytes | None, record: Record) -> str:
    """HMAC-SHA256 (or plain SHA-256 without a key) of the record without its `hash`."""
    body = canonical({k: v for k, v in record.items() if k != "hash"})
    if ckey is None:
        return hashlib.sha256(body).hexdigest()
    return hmac.new(ckey, body, hashlib.sha256).hexdigest()


def _no_duplicates(pairs: list[tuple[str, Any]]) -> Record:
    out: Record = {}
    for name, value in pairs:
        if name in out:
            # json.loads would keep the last value silently; an editor could hide a
            # change behind a duplicate key, so such a line is not a record.
            raise ValueError("duplicate key in record")
        out[name] = value
    return out


def _no_constant(name: str) -> Any:
    raise ValueError("NaN or Infinity in record")


def parse(line: bytes) -> Record:
    """A record from one log line; ValueError if the line is not a chain record."""
    try:
        value = json.loads(
            line.decode("utf-8"), object_pairs_hook=_no_duplicates, parse_constant=_no_constant
        )
    except UnicodeDecodeError as exc:
        raise ValueError("line is not UTF-8") from exc
    except json.JSONDecodeError as exc:
        raise ValueError("line is not JSON") from exc
    if not isinstance(value, dict):
        raise ValueError("line is not a JSON object")
    seq, prev, digest = value.get("seq"), value.get("prev"), value.get("hash")
    if not isinstance(seq, int) or isinstance(seq, bool) or seq < 0:
        raise ValueError("record has no valid seq")
    if not _is_hex64(prev) or not _is_hex64(digest):
        raise ValueError("record has no valid prev/hash")
    return value


def _is_hex64(value: object) -> bool:
    return (
        isinstance(value, str) and len(value) == 64 and all(c in "0123456789abcdef" for c in value)
    )
