"""`consent`: marketing-type mail goes only to recipients with a current written authorization."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from relay.address import AddressError
from relay.consent.api import ConsentStore, check_scope, now
from relay.model import Action, MessageContext, Verdict
from relay.policy import register
from relay.policy.base import ConfigError, PolicyDeps, Section

NO_STORE = "a consent store must be configured (consent_store) for this policy"


def require_store(section: Section, deps: PolicyDeps) -> ConsentStore:
    """The store, or a ConfigError naming the policy: these rules cannot run without one."""
    if deps.store is None:
        raise ConfigError(section.file, section.prefix or "policy", NO_STORE)
    return deps.store


def scope_setting(section: Section) -> str:
    scope = section.str("scope", "marketing")
    try:
        return check_scope(scope)
    except ValueError as exc:
        raise ConfigError(section.file, f"{section.prefix}.scope", str(exc)) from exc


async def current_authorizations(
    store: ConsentStore, recipients: tuple[str, ...], scope: str, at: datetime
) -> dict[str, frozenset[str] | None]:
    """Per recipient: the condition tags of its current authorization, or None without one.

    An address that cannot be canonicalised cannot hold an authorization, so it gets None.
    """

    async def one(rcpt: str) -> frozenset[str] | None:
        try:
            found = await store.authorization(rcpt, scope, at)
        except AddressError:
            return None
        return None if found is None else found.conditions

    results = await asyncio.gather(*(one(r) for r in recipients))
    return dict(zip(recipients, results, strict=True))


# Not frozen: the Policy protocol declares `name` as a plain (writable) attribute.
@dataclass(slots=True)
class Consent:
    store: ConsentStore
    scope: str = "marketing"
    clock: Callable[[], datetime] = now
    name: str = "consent"

    async def evaluate(self, ctx: MessageContext) -> Verdict:
        category = ctx.category
        # Unknown categories are refused by the relay's own check before any policy runs.
        if category is None or not category.needs_authorization:
            return Verdict.ok(self.name)
        recipients = ctx.envelope.rcpt_tos
        found = await current_authorizations(self.store, recipients, self.scope, self.clock())
        drop = {rcpt: "consent.no-authorization" for rcpt, tags in found.items() if tags is None}
        if not drop:
            return Verdict(rule=self.name, reason="consent.authorized")
        if len(drop) == len(set(recipients)):
            return Verdict(
                rule=self.name,
                action=Action.REJECT,
                reason="consent.no-authorized-recipients",
                drop=drop,
            )
        return Verdict(
            rule=self.name, action=Action.MODIFY, reason="consent.unauthorized", drop=drop
        )


def build(section: Section, deps: PolicyDeps) -> Consent:
    section.reject_unknown(("scope",))
    return Consent(store=require_store(section, deps), scope=scope_setting(section))


register("consent", build)
