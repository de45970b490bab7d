"""`subject-phi`: refuse or replace a subject line (and what clients show as one) that carries PHI.

Judged: every Subject field and Thread-Topic (Outlook shows it as the subject), each
in every plausible decoding (relay.phi.normalize.subject_texts). Display names in
From/To/Cc and attachment file names go through the identifier layer. Settings:

    [policy.subject-phi]
    replacement = "A message from your care team"
    names-and-files = "refuse"          # or "off": display names, attachment names
    max-chars = 2048                    # longer subjects are refused, not read
    [policy.subject-phi.actions]
    default = "refuse"      # or "replace"
    name = "replace"        # any finding kind from relay.phi.kinds
    [policy.subject-phi.organisation]   # the sender's own details: never PHI (with
                                        # the [organisation] postal_address)
    phones = ["+1 800 555 0100"]
    addresses = ["100 Main St, Springfield"]
    mailboxes = ["billing@clinic.example"]
    templates = ["Your statement from {clinic} is ready"]

Tiers (docs/phi-detection.md): strong evidence is refused, or replaced when every
kind found is set to "replace"; uncertain evidence (the scorer's middle band) is
always replaced, and the original subject is put at the top of the body.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from email.message import EmailMessage
from email.utils import getaddresses

from relay.model import (
    Action,
    MessageContext,
    PrependText,
    ReplaceSubject,
    SetHeader,
    Verdict,
)
from relay.phi.api import STRONG, UNCERTAIN, Detector, Judgement
from relay.phi.kinds import ALL as ALL_KINDS
from relay.phi.kinds import IDENTIFIERS, NAME
from relay.phi.normalize import normalize, readings_to_judge, subject_texts
from relay.phi.org import Organisation
from relay.policy import register
from relay.policy.base import ConfigError, PolicyDeps, Section

REFUSE = "refuse"
REPLACE = "replace"
OFF = "off"
ACTIONS = (REFUSE, REPLACE)
DEFAULT_REPLACEMENT = "A message from your care team"
# No client shows more; a longer subject is refused so none can cost more than ~10 ms.
DEFAULT_MAX_CHARS = 2048
SUBJECT_FIELDS = ("subject", "thread-topic")
ADDRESS_FIELDS = ("from", "to", "cc", "reply-to", "sender")
# Display names are names: only the other identifiers count there.
_NOT_IN_NAMES = frozenset({NAME})
_FILE_SEPARATORS = re.compile(r"[_.+]+")


def subject_readings(ctx: MessageContext) -> list[str]:
    """Every plausible reading of every field a client may show as the subject."""
    readings = readings_to_judge([ctx.subject]) if ctx.subject else []
    message = ctx.message
    if isinstance(message, EmailMessage):
        for name, value in message.raw_items():
            if name.lower() in SUBJECT_FIELDS:
                for text in subject_texts(str(value)):
                    if text not in readings:
                        readings.append(text)
    return readings


def _other_texts(message: EmailMessage) -> list[str]:
    """Display names of the address fields and the file names of attachments, decoded."""
    texts: list[str] = []
    for name, value in message.raw_items():
        if name.lower() in ADDRESS_FIELDS:
            decoded = subject_texts(str(value))[0]
            texts.extend(display for display, _addr in getaddresses([decoded]) if display)
    for part in message.walk():
        filename = part.get_filename()
        if filename:
            texts.append(normalize(_FILE_SEPARATORS.sub(" ", filename)))
    return texts


# Not frozen: the Policy protocol declares `name` as a plain attribute.
@dataclass(slots=True)
class SubjectPhi:
    detector: Detector
    default_action: str = REFUSE
    actions: dict[str, str] = field(default_factory=dict)
    replacement: str = DEFAULT_REPLACEMENT
    org: Organisation | None = None
    names_and_files: str = REFUSE
    max_chars: int = DEFAULT_MAX_CHARS
    name: str = "subject-phi"

    async def evaluate(self, ctx: MessageContext) -> Verdict:
        if ctx.subject_count > 1:
            return Verdict(rule=self.name, action=Action.REJECT, reason="message.subject.multiple")
        readings = subject_readings(ctx)
        if any(len(text) > self.max_chars for text in readings):
            return Verdict(
                rule=self.name,
                action=Action.REJECT,
                reason="phi.subject.too-long",
                kinds=(str(self.max_chars),),
            )
        judged = self.detector.judge(readings, self.org)
        if judged.tier == STRONG:
            return self._strong(ctx, judged)
        if judged.tier == UNCERTAIN:
            original = ctx.subject or subject_readings(ctx)[0]
            return Verdict(
                rule=self.name,
                action=Action.MODIFY,
                reason="phi.subject.uncertain",
                kinds=judged.kinds,
                rules=judged.rules,
                modifications=(*self._replace(ctx), PrependText(f"Subject: {original}")),
            )
        if self.names_and_files != OFF and isinstance(ctx.message, EmailMessage):
            found = self._names_and_files(ctx.message)
            if found.phi:
                return Verdict(
                    rule=self.name,
                    action=Action.REJECT,
                    reason="phi.header",
                    kinds=found.kinds,
                    rules=found.rules,
                )
        return Verdict.ok(self.name)

    def _strong(self, ctx: MessageContext, judged: Judgement) -> Verdict:
        if all(self.actions.get(k, self.default_action) == REPLACE for k in judged.kinds):
            return Verdict(
                rule=self.name,
                action=Action.MODIFY,
                reason="phi.subject.replaced",
                kinds=judged.kinds,
                rules=judged.rules,
                modifications=self._replace(ctx),
            )
        return Verdict(
            rule=self.name,
            action=Action.REJECT,
            reason="phi.subject",
            kinds=judged.kinds,
            rules=judged.rules,
        )

    def _replace(self, ctx: MessageContext) -> tuple[ReplaceSubject | SetHeader, ...]:
        mods: list[ReplaceSubject | SetHeader] = [ReplaceSubject(self.replacement)]
        message = ctx.message
        if isinstance(message, EmailMessage) and "thread-topic" in message:
            mods.append(SetHeader("Thread-Topic", self.replacement))
        return tuple(mods)

    def _names_and_files(self, message: EmailMessage) -> Judgement:
        kinds: set[str] = set()
        rules: set[str] = set()
        for text in _other_texts(message):
            for f in self.detector.scan(text):
                strong = f.confidence >= 0.9 or f.rule in ("id.ssn", "id.date")
                if f.kind in IDENTIFIERS and f.kind not in _NOT_IN_NAMES and strong:
                    kinds.add(f.kind)
                    rules.add(f.rule)
        if not kinds:
            return Judgement()
        return Judgement(STRONG, tuple(sorted(kinds)), tuple(sorted(rules)))


def _organisation(section: Section, deps: PolicyDeps) -> Organisation:
    table = section.table("organisation")
    keys = ("phones", "addresses", "mailboxes", "templates")
    table.reject_unknown(keys)
    values = {k: table.strings(k, ()) for k in keys}
    # The [organisation] postal address of the policy file is the sender's own too,
    # whole and as its street line ("100 Main Street").
    postal = deps.organisation.postal_address.strip()
    if postal:
        values["addresses"] = (*values["addresses"], postal, postal.split(",")[0])
    try:
        return Organisation.build(**values)
    except ValueError as exc:
        raise ConfigError(section.file, section._key("organisation"), str(exc)) from exc


def build(section: Section, deps: PolicyDeps) -> SubjectPhi:
    section.reject_unknown(
        ("replacement", "actions", "organisation", "names-and-files", "max-chars")
    )
    replacement = section.str("replacement", DEFAULT_REPLACEMENT).strip()
    if not replacement or any(ch in replacement for ch in "\r\n"):
        raise ConfigError(section.file, section._key("replacement"), "expected a one-line subject")
    table = section.table("actions")
    table.reject_unknown(("default", *sorted(ALL_KINDS)))
    default = table.choice("default", ACTIONS, REFUSE)
    actions = {k: table.choice(k, ACTIONS, default) for k in table.data if k != "default"}
    others = section.choice("names-and-files", (REFUSE, OFF), REFUSE)
    max_chars = section.number("max-chars", DEFAULT_MAX_CHARS, minimum=64)
    if max_chars != int(max_chars) or max_chars > 1_048_576:
        raise ConfigError(
            section.file, section._key("max-chars"), "expected a whole number from 64 to 1048576"
        )
    detector = deps.detector
    if detector is None:
        from relay.phi import default_detector

        detector = default_detector()
    return SubjectPhi(
        detector,
        default,
        actions,
        replacement,
        _organisation(section, deps),
        others,
        int(max_chars),
    )


register("subject-phi", build)
