"""The HIPAA communication model: which categories exist and how a message gets one.

Resolution order (DESIGN.md): the X-PHI-Category header, else the policy's mapping of
the envelope sender, else of the authenticated user, else the policy's default.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, replace

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
_SAFE_NAME = re.compile(r"^[a-z0-9][a-z0-9-]{0,39}$")


def builtin() -> dict[str, Category]:
    return {
        name: Category(name=name, needs_authorization=auth, footer=footer, honours_optout=footer)
        for name, (auth, footer) in _MODEL.items()
    }


@dataclass(frozen=True, slots=True)
class CategoryTable:
    categories: Mapping[str, Category]
    default: str
    by_sender: Mapping[str, str]
    by_user: Mapping[str, str]

    def resolve(
        self, header_values: list[str], mail_from: str, auth_user: str | None
    ) -> tuple[str, str]:
        """(category name, where it came from). The name may be unknown; the caller refuses it."""
        if header_values:
            return header_values[-1].strip().lower(), "header"
        sender = mail_from.strip().lower()
        if sender in self.by_sender:
            return self.by_sender[sender], "sender"
        domain = sender.rpartition("@")[2]
        if domain and f"@{domain}" in self.by_sender:
            return self.by_sender[f"@{domain}"], "sender-domain"
        if auth_user is not None and auth_user in self.by_user:
            return self.by_user[auth_user], "user"
        return self.default, "default"

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


def printable_name(name: str) -> str:
    """A category name safe to echo in a reply, or a placeholder for anything odd."""
    return name if _SAFE_NAME.match(name) else "(unrecognised value)"
