"""The detector interface the subject and body policies depend on."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True, slots=True)
class Finding:
    """One thing found in a text. Only `kind` may leave the process (audit, metrics, replies)."""

    kind: str
    start: int
    end: int
    confidence: float


class Detector(Protocol):
    def scan(self, text: str) -> list[Finding]:
        """Findings in an already-normalised text (see relay.phi.normalize)."""
        ...

    def conditions(self, text: str) -> frozenset[str]:
        """Health-condition tags named in the text (e.g. "diabetes", "hiv"), for segmentation."""
        ...
