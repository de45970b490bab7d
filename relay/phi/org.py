"""The organisation's own details from the policy file: never PHI in its own mail.

Phone and fax numbers, street addresses and role mailboxes listed in the policy
are masked out of a subject before any rule or the scorer reads it; a subject that
matches an approved template (exact text, or with `{placeholders}`) is judged by
its identifiers only.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field

from relay.phi.normalize import fold, normalize

_PHONE_LIKE = re.compile(r"(?<!\w)\+?[\d(][\d()\s.-]{5,}\d(?!\w)")
_PLACEHOLDER = re.compile(r"\\\{[^{}]*\\\}")
_MASK = "the clinic"


def _digits(value: str) -> str:
    digits = "".join(ch for ch in value if ch.isdigit())
    # "+1 (800) 555-0100" and "800.555.0100" are one number.
    return digits[1:] if len(digits) == 11 and digits.startswith("1") else digits


@dataclass(frozen=True)
class Organisation:
    phones: frozenset[str] = frozenset()
    addresses: tuple[str, ...] = ()
    mailboxes: frozenset[str] = frozenset()
    templates: tuple[re.Pattern[str], ...] = field(default=())

    @staticmethod
    def build(
        phones: Iterable[str] = (),
        addresses: Iterable[str] = (),
        mailboxes: Iterable[str] = (),
        templates: Iterable[str] = (),
    ) -> Organisation:
        """From policy-file values; raises ValueError naming the bad value's position."""
        nums = []
        for i, p in enumerate(phones):
            d = _digits(p)
            if len(d) < 7:
                raise ValueError(f"phones[{i}]: expected a phone number with at least 7 digits")
            nums.append(d)
        addrs = tuple(sorted({fold(normalize(a)) for a in addresses if a.strip()}, key=len))
        boxes = frozenset(fold(m.strip()) for m in mailboxes if m.strip())
        pats = []
        for t in templates:
            text = re.escape(fold(normalize(t)))
            pats.append(re.compile(_PLACEHOLDER.sub(lambda _m: r"[^\n]{1,80}?", text)))
        return Organisation(frozenset(nums), tuple(reversed(addrs)), boxes, tuple(pats))

    def mask(self, text: str) -> str:
        """`text` with the organisation's own numbers, addresses and mailboxes neutralised."""
        if self.phones and any(ch.isdigit() for ch in text):
            text = _PHONE_LIKE.sub(
                lambda m: _MASK if _digits(m.group(0)) in self.phones else m.group(0), text
            )
        if self.addresses or self.mailboxes:
            folded = fold(text)
            for item in (*self.addresses, *sorted(self.mailboxes, key=len, reverse=True)):
                at = folded.find(item)
                while at >= 0:
                    text = text[:at] + _MASK + text[at + len(item) :]
                    folded = folded[:at] + _MASK + folded[at + len(item) :]
                    at = folded.find(item, at + len(_MASK))
        return text

    def approved(self, text: str) -> bool:
        """True when the subject is one of the approved templates."""
        folded = fold(text)
        return any(p.fullmatch(folded) for p in self.templates)
