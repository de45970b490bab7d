"""The HIPAA communication model: which categories exist and how a message gets one.

The operator's mapping is authoritative: the envelope sender (address, then
`@domain`), else the authenticated user, else the policy's default gives the mapped
category. The X-PHI-Category header may only choose another one when the policy lets
that sender or user choose it (`may_choose_by_sender`, `may_choose_by_user`), or when
the mapped category carries no obligation at all (no footer, no authorization, no
opt-out), so that the header can only add obligations, never shed them. A client's
value is never echoed: an unknown or refused header is reported by reason code only.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace

from relay.model import Category

HEADER = "X-PHI-Category"

# name: (needs written authorization, footer + List-Unsubscribe by default)
_MODEL: dict[str, tuple[bool, bool]] = {
    "treatment": (False, False),
    "appointment-reminder": (False, False),
    "care-coordination": (False, False),
    "refill-reminder": (False, False),
    "operations": (False, False),
    "education": (False, True),
    "provider-products": (False, True),
    "provider-recommended": (False, True),
    "fundraising": (False, True),
    "marketing": (True, True),
    "re-engagement": (True, True),
}
# The footer is a legal requirement for these; the policy file cannot switch it off.
FOOTER_REQUIRED = frozenset({"fundraising", "marketing", "re-engagement"})


def builtin() -> dict[str, Category]:
    return {
        name: Category(name=name, needs_authorization=auth, footer=footer, honours_optout=footer)
        for name, (auth, footer) in _MODEL.items()
    }


@dataclass(frozen=True, slots=True)
class Resolution:
    """The category a message gets. `name` is always a known category (the mapped one
    when the header is refused); `refusal` is "" or a reason code for the replies."""

    name: str
    source: str  # header | sender | sender-domain | user | default
    refusal: str = ""
    mapped: str = ""


@dataclass(frozen=True, slots=True)
class CategoryTable:
    categories: Mapping[str, Category]
    default: str
    by_sender: Mapping[str, str]
    by_user: Mapping[str, str]
    may_choose_by_sender: Mapping[str, frozenset[str]] = field(default_factory=dict)
    may_choose_by_user: Mapping[str, frozenset[str]] = field(default_factory=dict)

    def mapped(self, mail_from: str, auth_user: str | None) -> tuple[str, str]:
        """(category, source) from the operator's mapping alone."""
        sender = mail_from.strip().lower()
        if sender in self.by_sender:
            return self.by_sender[sender], "sender"
        domain = sender.rpartition("@")[2]
        if domain and f"@{domain}" in self.by_sender:
            return self.by_sender[f"@{domain}"], "sender-domain"
        if auth_user is not None and auth_user in self.by_user:
            return self.by_user[auth_user], "user"
        return self.default, "default"

    def choices(self, mail_from: str, auth_user: str | None) -> frozenset[str]:
        """Categories the header may choose for this sender, granted by the policy file."""
        sender = mail_from.strip().lower()
        domain = sender.rpartition("@")[2]
        out = self.may_choose_by_sender.get(sender, frozenset())
        if domain:
            out |= self.may_choose_by_sender.get(f"@{domain}", frozenset())
        if auth_user is not None:
            out |= self.may_choose_by_user.get(auth_user, frozenset())
        return out

    def resolve(
        self, header_values: list[str], mail_from: str, auth_user: str | None
    ) -> Resolution:
        mapped, source = self.mapped(mail_from, auth_user)
        if not header_values:
            return Resolution(mapped, source, mapped=mapped)
        if len(header_values) > 1:
            return Resolution(mapped, source, "category.multiple", mapped)
        wanted = header_values[0].strip().lower()
        if wanted not in self.categories:
            return Resolution(mapped, source, "category.unknown", mapped)
        if (
            wanted == mapped
            or wanted in self.choices(mail_from, auth_user)
            or _obligation_free(self.categories[mapped])
        ):
            return Resolution(wanted, "header", mapped=mapped)
        return Resolution(mapped, source, "category.not-allowed", mapped)

    def get(self, name: str) -> Category | None:
        return self.categories.get(name)

    def names(self) -> list[str]:
        return sorted(self.categories)


def with_footer_switches(
    categories: dict[str, Category], switches: Mapping[str, bool]
) -> dict[str, Category]:
    out = dict(categories)
    for name, on in switches.items():
        out[name] = replace(out[name], footer=on, honours_optout=on)
    return out


def _obligation_free(category: Category) -> bool:
    return not (category.footer or category.needs_authorization or category.honours_optout)
