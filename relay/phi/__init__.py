"""The PHI detector package: `default_detector()` is what the relay's policies use."""

from __future__ import annotations

from typing import TYPE_CHECKING

from relay.phi.api import Detector, Finding

if TYPE_CHECKING:
    from relay.phi.roster import Roster

__all__ = ["Detector", "Finding", "default_detector"]

_CACHE: dict[int, Detector] = {}
_CACHE_SIZE = 4


def default_detector(roster: Roster | None = None) -> Detector:
    """The shared detector (vocabularies loaded once); one per roster object."""
    key = id(roster)
    detector = _CACHE.get(key)
    if detector is None:
        from relay.phi.detector import PhiDetector

        detector = PhiDetector(roster=roster)
        # The roster is kept alive by the detector, so its id is not reused while cached.
        # A few entries only: a reloaded roster replaces the old one, it does not pile up.
        while len(_CACHE) >= _CACHE_SIZE:
            del _CACHE[next(iter(_CACHE))]
        _CACHE[key] = detector
    return detector
