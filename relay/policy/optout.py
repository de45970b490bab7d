"""`optout`: recipients who opted out (of this category or of all) are removed from the envelope."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from relay.address import AddressError
from relay.consent.api import ConsentStore
from relay.model import Action, MessageContext, Verdict
from relay.policy import register
from relay.policy.base import PolicyDeps, Section
from relay.policy.consent import require_store


# Not frozen: the Policy protocol declares `name` as a plain (writable) attribute.
@dataclass(slots=True)
class OptOutPolicy:
    store: ConsentStore
    name: str = "optout"

    async def evaluate(self, ctx: MessageContext) -> Verdict:
        category = ctx.category
        # Treatment and appointment mail carries no footer and is not suppressible.
        if category is None or not category.honours_optout:
            return Verdict.ok(self.name)
        recipients = ctx.envelope.rcpt_tos

        async def reason(rcpt: str) -> str | None:
            try:
                out = await self.store.opted_out(rcpt, category.name)
            except AddressError:
                # Not an address we could ever match against an opt-out: do not send blind.
                return "optout.invalid-address"
            return "optout.recipient" if out else None

        reasons = await asyncio.gather(*(reason(r) for r in recipients))
        drop = {r: why for r, why in zip(recipients, reasons, strict=True) if why is not None}
        if not drop:
            return Verdict.ok(self.name)
        if len(drop) == len(set(recipients)):
            return Verdict(
                rule=self.name, action=Action.REJECT, reason="optout.all-recipients", drop=drop
            )
        return Verdict(rule=self.name, action=Action.MODIFY, reason="optout.recipient", drop=drop)


def build(section: Section, deps: PolicyDeps) -> OptOutPolicy:
    section.reject_unknown(())
    return OptOutPolicy(store=require_store(section, deps))


register("optout", build)
