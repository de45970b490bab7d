"""`subject-phi`: refuse, or replace, a subject line that carries protected health information.

Reads `ctx.subject`, which the message parser already decoded and normalised
(relay.phi.normalize.subject_text). Per-kind actions come from the policy file:

    [policy.subject-phi]
    replacement = "A message from your care team"
    [policy.subject-phi.actions]
    default = "refuse"      # or "replace"
    name = "replace"        # any finding kind from relay.phi.kinds

The subject is replaced only when every finding's kind is set to "replace";
one kind set to refuse refuses the message.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from relay.model import Action, MessageContext, ReplaceSubject, Verdict
from relay.phi.api import Detector
from relay.phi.kinds import ALL as ALL_KINDS
from relay.policy import register
from relay.policy.base import ConfigError, PolicyDeps, Section

REFUSE = "refuse"
REPLACE = "replace"
ACTIONS = (REFUSE, REPLACE)
DEFAULT_REPLACEMENT = "A message from your care team"


# Not frozen: the Policy protocol declares `name` as a plain attribute.
@dataclass(slots=True)
class SubjectPhi:
    detector: Detector
    default_action: str = REFUSE
    actions: dict[str, str] = field(default_factory=dict)
    replacement: str = DEFAULT_REPLACEMENT
    name: str = "subject-phi"

    async def evaluate(self, ctx: MessageContext) -> Verdict:
        if ctx.subject_count > 1:
            return Verdict(rule=self.name, action=Action.REJECT, reason="message.subject.multiple")
        findings = self.detector.scan(ctx.subject)
        if not findings:
            return Verdict.ok(self.name)
        found = tuple(sorted({f.kind for f in findings}))
        if all(self.actions.get(k, self.default_action) == REPLACE for k in found):
            return Verdict(
                rule=self.name,
                action=Action.MODIFY,
                reason="phi.subject.replaced",
                kinds=found,
                modifications=(ReplaceSubject(self.replacement),),
            )
        return Verdict(rule=self.name, action=Action.REJECT, reason="phi.subject", kinds=found)


def build(section: Section, deps: PolicyDeps) -> SubjectPhi:
    section.reject_unknown(("replacement", "actions"))
    replacement = section.str("replacement", DEFAULT_REPLACEMENT).strip()
    if not replacement or any(ch in replacement for ch in "\r\n"):
        raise ConfigError(section.file, section._key("replacement"), "expected a one-line subject")
    table = section.table("actions")
    table.reject_unknown(("default", *sorted(ALL_KINDS)))
    default = table.choice("default", ACTIONS, REFUSE)
    actions = {k: table.choice(k, ACTIONS, default) for k in table.data if k != "default"}
    detector = deps.detector
    if detector is None:
        from relay.phi import default_detector

        detector = default_detector()
    return SubjectPhi(detector, default, actions, replacement)


register("subject-phi", build)
