"""`require-tls`: records the session's TLS in every decision and refuses plaintext.

The SMTP session already refuses MAIL before STARTTLS; this rule makes the TLS
state part of each audited decision and catches plaintext from any path that
is not an operator-listed plaintext network.
"""

from __future__ import annotations

from dataclasses import dataclass

from relay.model import Action, MessageContext, Verdict
from relay.policy import register
from relay.policy.base import PolicyDeps, Section


@dataclass(frozen=True, slots=True)
class RequireTls:
    name: str = "require-tls"

    async def evaluate(self, ctx: MessageContext) -> Verdict:
        if ctx.tls.active:
            return Verdict(rule=self.name, reason="tls.ok", kinds=(ctx.tls.version or "",))
        if ctx.plaintext_network:
            return Verdict(rule=self.name, reason="tls.plaintext-network")
        return Verdict(rule=self.name, action=Action.REJECT, reason="tls.required")


def build(section: Section, deps: PolicyDeps) -> RequireTls:
    section.reject_unknown(())
    return RequireTls()


register("require-tls", build)
