"""DKIM: sign outgoing mail per From domain after every change, and handle stale signatures.

The relay changes messages (footer, List-Unsubscribe, neutral subject), which breaks any
signature made before it, and RFC 8058 wants List-Unsubscribe and List-Unsubscribe-Post
covered by a DKIM signature. So the relay signs last, with dkimpy (a well-kept
implementation of RFC 6376), relaxed/simple canonicalisation, rsa-sha256. A signature
that came with the message and no longer matches it is kept, removed or refused as
`dkim.stale_signature` says.
"""

from __future__ import annotations

import base64
import email.utils
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

STALE_POLICIES = ("remove", "keep", "refuse")
# Signed when present (RFC 6376 5.4.1 and RFC 8058 3); those in FROZEN are signed once more
# than they occur, so nobody can add a second one after the relay.
SIGNED = (
    b"from",
    b"to",
    b"cc",
    b"subject",
    b"date",
    b"message-id",
    b"reply-to",
    b"in-reply-to",
    b"references",
    b"mime-version",
    b"content-type",
    b"content-transfer-encoding",
    b"list-unsubscribe",
    b"list-unsubscribe-post",
)
FROZEN = (b"from", b"subject", b"list-unsubscribe", b"list-unsubscribe-post")
_FIELD = re.compile(rb"^([!-9;-~]+)[ \t]*:")


def _dkimpy() -> ModuleType:
    """dkimpy (and the dnspython it imports, ~5 MB a process), loaded when first needed:
    a relay that signs nothing and meets no signed message never does."""
    import dkim
    import dkim.canonicalization
    import dkim.util

    module: ModuleType = dkim
    return module


class DkimError(Exception):
    """A key cannot be loaded or a message cannot be signed; the text names no message data."""


@dataclass(frozen=True, slots=True)
class DkimKey:
    domain: str
    selector: str
    path: Path
    private_key: bytes


def parse_spec(spec: str) -> tuple[str, str, Path]:
    """`DOMAIN:SELECTOR:KEYFILE` -> its parts; ValueError says what is expected."""
    parts = spec.split(":", 2)
    if len(parts) != 3 or not all(p.strip() for p in parts):
        raise ValueError("expected DOMAIN:SELECTOR:KEYFILE, e.g. clinic.example:s2026:dkim.pem")
    domain, selector, path = (p.strip() for p in parts)
    if not re.fullmatch(r"[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?(\.[A-Za-z0-9-]+)+", domain):
        raise ValueError(f"expected a domain name before the first ':', got {domain!r}")
    if not re.fullmatch(r"[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*", selector):
        raise ValueError(f"expected a DKIM selector (letters, digits, - _ .), got {selector!r}")
    return domain.lower(), selector, Path(path)


def load_key(domain: str, selector: str, path: Path) -> DkimKey:
    """Read and check a PEM RSA private key (PKCS#1 or PKCS#8)."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise DkimError(f"DKIM key {path}: {exc.strerror or exc}") from exc
    try:
        _dkimpy().crypto.parse_pem_private_key(data)
    except Exception as exc:
        raise DkimError(
            f"DKIM key {path}: not a PEM RSA private key (make one with "
            "`openssl genrsa -out KEYFILE 2048`)"
        ) from exc
    return DkimKey(domain, selector, path, data)


def from_domain(message: bytes) -> str | None:
    """The domain of the first address in the From header, lower-cased."""
    for name, value in header_fields(message):
        if name.lower() == b"from":
            text = value.decode("utf-8", "replace")
            addresses = email.utils.getaddresses([text])
            for _, addr in addresses:
                if "@" in addr:
                    return addr.rpartition("@")[2].strip().lower().rstrip(".") or None
            return None
    return None


def header_fields(message: bytes) -> list[tuple[bytes, bytes]]:
    """(name, unfolded value) of each header field, in order."""
    head = message.split(b"\r\n\r\n", 1)[0]
    fields: list[tuple[bytes, bytes]] = []
    for line in head.split(b"\r\n"):
        if line[:1] in (b" ", b"\t") and fields:
            name, value = fields[-1]
            fields[-1] = (name, value + b" " + line.strip())
            continue
        m = _FIELD.match(line)
        if m:
            fields.append((m.group(1), line[m.end() :].strip()))
    return fields


def has_signature(message: bytes) -> bool:
    return any(name.lower() == b"dkim-signature" for name, _ in header_fields(message))


def _values(message: bytes, name: bytes) -> list[bytes]:
    return [v for n, v in header_fields(message) if n.lower() == name]


def _body_hash(body: bytes, tags: Mapping[bytes, bytes]) -> bytes | None:
    try:
        dkimpy = _dkimpy()
        policy = dkimpy.canonicalization.CanonicalizationPolicy.from_c_value(
            tags.get(b"c", b"simple/simple")
        )
        hasher = dkimpy.HASH_ALGORITHMS[tags.get(b"a", b"rsa-sha256")]
    except Exception:
        return None
    canonical = policy.canonicalize_body(body)
    if b"l" in tags and tags[b"l"].isdigit():
        canonical = canonical[: int(tags[b"l"])]
    return base64.b64encode(hasher(canonical).digest())


def stale_signatures(original: bytes, changed: bytes) -> list[int]:
    """Which DKIM-Signature fields (by order) the relay's changes have broken.

    Decided without DNS: a signature is stale when the body it hashed (bh=) is not the
    body now, or when any header field it names (h=) is not what it was, including a
    field added after signing. One that cannot be read counts as stale.
    """
    if original == changed:
        return []
    body = changed.partition(b"\r\n\r\n")[2]
    stale: list[int] = []
    for index, value in enumerate(_values(changed, b"dkim-signature")):
        try:
            tags = _dkimpy().util.parse_tag_value(value)
        except Exception:
            stale.append(index)
            continue
        bh = tags.get(b"bh", b"").replace(b" ", b"")
        if _body_hash(body, tags) != bh:
            stale.append(index)
            continue
        names = {n.strip().lower() for n in tags.get(b"h", b"").split(b":") if n.strip()}
        if any(_values(original, n) != _values(changed, n) for n in names):
            stale.append(index)
    return stale


def remove_signatures(message: bytes, which: Sequence[int] | None = None) -> bytes:
    """The message without its DKIM-Signature fields number `which` (all when None)."""
    head, sep, body = message.partition(b"\r\n\r\n")
    kept: list[bytes] = []
    dropping = False
    seen = -1
    for line in head.split(b"\r\n"):
        if line[:1] in (b" ", b"\t"):
            if not dropping:
                kept.append(line)
            continue
        m = _FIELD.match(line)
        dropping = False
        if m and m.group(1).lower() == b"dkim-signature":
            seen += 1
            dropping = which is None or seen in which
        if not dropping:
            kept.append(line)
    return b"\r\n".join(kept) + sep + body


@dataclass(frozen=True, slots=True)
class Signer:
    keys: Mapping[str, DkimKey]
    stale: str = "remove"

    @classmethod
    def load(cls, specs: Sequence[str], stale: str = "remove") -> Signer:
        keys: dict[str, DkimKey] = {}
        for spec in specs:
            domain, selector, path = parse_spec(spec)
            keys[domain] = load_key(domain, selector, path)
        return cls(keys, stale)

    def sign(self, message: bytes) -> tuple[bytes, str]:
        """(message with a DKIM-Signature on top, the domain) or (message, "") if none applies."""
        domain = from_domain(message)
        key = self.keys.get(domain or "")
        if key is None:
            return message, ""
        dkimpy = _dkimpy()
        signer = dkimpy.DKIM(message)
        present = {name.lower() for name, _ in header_fields(message)}
        include = [h for h in SIGNED if h in present]
        include += [h for h in FROZEN if h in present]  # once more: nothing can be added
        try:
            header = signer.sign(
                key.selector.encode("ascii"),
                key.domain.encode("ascii"),
                key.private_key,
                canonicalize=(b"relaxed", b"simple"),
                include_headers=include,
            )
        except dkimpy.DKIMException as exc:
            raise DkimError(f"DKIM signing for {key.domain} failed ({type(exc).__name__})") from exc
        return header + message, key.domain
