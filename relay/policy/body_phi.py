"""`body-phi` (off unless listed in the pipeline): refuse bodies holding never-email identifiers.

Runs the chosen recognizers (`kinds = ["ssn"]` by default) over every text/plain
and text/html part (HTML reduced to its text). Meant for identifiers that must
never travel by email, whatever the subject says.
"""

from __future__ import annotations

from dataclasses import dataclass
from email.message import EmailMessage, Message

from relay.model import Action, MessageContext, Verdict
from relay.phi.api import Detector
from relay.phi.kinds import ALL as ALL_KINDS
from relay.phi.normalize import decodings, html_text, normalize
from relay.policy import register
from relay.policy.base import ConfigError, PolicyDeps, Section

# Scan body text in slices so one huge part cannot stall the relay: the detector's
# patterns are linear, but tokenising megabytes at once is needless memory.
_CHUNK = 8192
_OVERLAP = 64
_MAX_CHARS = 2_000_000


def body_texts(message: Message) -> list[str]:
    """The text of every inline text/plain and text/html part, in every plausible charset."""
    texts: list[str] = []
    for part in message.walk():
        if part.is_multipart() or part.get_content_maintype() != "text":
            continue
        if part.get_content_disposition() == "attachment":
            continue
        subtype = part.get_content_subtype()
        if subtype not in ("plain", "html"):
            continue
        payload = part.get_payload(decode=True)
        if not isinstance(payload, bytes):
            continue
        # Declared charset as mail readers map it; a doubtful one is read every way.
        for text in decodings(payload, part.get_content_charset() or "utf-8"):
            texts.append(html_text(text) if subtype == "html" else text)
    return texts


# Not frozen: the Policy protocol declares `name` as a plain attribute.
@dataclass(slots=True)
class BodyPhi:
    detector: Detector
    kinds: frozenset[str]
    name: str = "body-phi"

    def _scan(self, text: str) -> set[str]:
        found: set[str] = set()
        text = text[:_MAX_CHARS]
        for start in range(0, max(len(text), 1), _CHUNK):
            piece = normalize(text[max(0, start - _OVERLAP) : start + _CHUNK])
            found.update(f.kind for f in self.detector.scan(piece) if f.kind in self.kinds)
        return found

    async def evaluate(self, ctx: MessageContext) -> Verdict:
        message: EmailMessage = ctx.message
        found: set[str] = set()
        for text in body_texts(message):
            found |= self._scan(text)
        if not found:
            return Verdict.ok(self.name)
        return Verdict(
            rule=self.name, action=Action.REJECT, reason="phi.body", kinds=tuple(sorted(found))
        )


def build(section: Section, deps: PolicyDeps) -> BodyPhi:
    section.reject_unknown(("kinds",))
    chosen = section.strings("kinds", ("ssn",))
    for kind in chosen:
        if kind not in ALL_KINDS:
            raise ConfigError(
                section.file,
                section._key("kinds"),
                f"unknown kind {kind!r}; see docs/phi-detection.md",
            )
    if not chosen:
        raise ConfigError(section.file, section._key("kinds"), "expected at least one kind")
    detector = deps.detector
    if detector is None:
        from relay.phi import default_detector

        detector = default_detector()
    return BodyPhi(detector, frozenset(chosen))


register("body-phi", build)
