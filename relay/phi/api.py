"""The detector interface the subject and body policies depend on."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from relay.phi.org import Organisation

# Tiers of evidence, weakest first (see docs/phi-detection.md, "Tiers").
CLEAN = "clean"
UNCERTAIN = "uncertain"  # the scorer's middle band: replace, original moved to the body
STRONG = "strong"  # an identifier or a strong health fact: refuse or replace per kind
TIERS = (CLEAN, UNCERTAIN, STRONG)


@dataclass(frozen=True, slots=True)
class Finding:
    """One thing found in a text. Only `kind` and `rule` may leave the process.

    `rule` names the rule that fired (e.g. "id.ssn", "health.term", "model.health"):
    audit records and `scan-subjects` carry it, never the text. `confidence` is the
    strength of the evidence, which decides the tier (relay.phi.tiers).
    """

    kind: str
    start: int
    end: int
    confidence: float
    rule: str = ""


@dataclass(frozen=True, slots=True)
class Judgement:
    """The verdict on one text (all its readings). Holds kinds and rule ids, never text."""

    tier: str = CLEAN
    kinds: tuple[str, ...] = ()
    rules: tuple[str, ...] = ()
    score: float = 0.0  # the scorer's probability (0 when it did not run)

    @property
    def phi(self) -> bool:
        """True when the relay would refuse or replace."""
        return self.tier != CLEAN

    def worse(self, other: Judgement) -> Judgement:
        """The graver of two judgements; of two clean ones, the higher score (for tools)."""
        if TIERS.index(other.tier) > TIERS.index(self.tier):
            return other
        if other.tier == self.tier == CLEAN and other.score > self.score:
            return other
        return self


class Detector(Protocol):
    def scan(self, text: str) -> list[Finding]:
        """Findings in an already-normalised text (see relay.phi.normalize)."""
        ...

    def judge(self, readings: Sequence[str], org: Organisation | None = None) -> Judgement:
        """The tier of a subject given every plausible reading of it (the worst wins)."""
        ...

    def conditions(self, text: str) -> frozenset[str]:
        """Health-condition tags named in the text (e.g. "diabetes", "hiv"), for segmentation."""
        ...
