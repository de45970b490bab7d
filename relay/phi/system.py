"""Mail-system wording in subjects: bounce and report templates and wrapper prefixes.

A relay in front of a clinic's mail also carries what mail servers and clients write
themselves: delivery reports ("Undelivered Mail Returned to Sender"), automatic
replies, read receipts, calendar answers. Their fixed words are not evidence about a
patient, and a model trained on people's subjects reads "returned" and "failed" as
results; so the wrapper words are taken off before the subject is judged, and a
subject that is only a report template is judged by its identifiers alone. The
wording lives in data/lex_system_prefixes.txt and data/lex_system_subjects.txt.
"""

from __future__ import annotations

import re

from relay.phi.lexicon import DATA, alternatives
from relay.phi.normalize import fold, normalize

_PREFIXES = re.compile(
    r"(?:\s*(?:(?:re|fw|fwd|aw|wg|rv|tr|enc)\s*:|(?:"
    + alternatives("system_prefixes")
    + r")\s*:))+\s*",
    re.IGNORECASE,
)
# Only a run that holds a mail-system word counts; "RE: FW:" alone is people's mail.
_REPLY_ONLY = re.compile(r"(?:\s*(?:re|fw|fwd|aw|wg|rv|tr|enc)\s*:)+\s*", re.IGNORECASE)


def _templates() -> re.Pattern[str]:
    text = (DATA / "lex_system_subjects.txt").read_text(encoding="utf-8")
    rows = [ln for ln in text.splitlines() if ln and not ln.startswith("# ") and ln != "#"]
    parts = [re.escape(r).replace(re.escape("{…}"), r"[^\n]{1,40}?") for r in rows]
    return re.compile("(?:" + "|".join(parts) + r")[\s.!]*")


_TEMPLATES = _templates()


def unwrap(text: str) -> tuple[str, bool]:
    """The subject without leading mail-system wrapper words, and whether what is left
    (or the whole subject) is only a mail system's own report wording."""
    core = text
    m = _PREFIXES.match(text)
    if m and m.end() and not _REPLY_ONLY.fullmatch(m.group(0)):
        core = text[m.end() :]
    folded = " ".join(fold(normalize(text)).split())
    report = _TEMPLATES.fullmatch(folded) is not None
    if not report and core is not text:
        rest = " ".join(fold(normalize(core)).split())
        report = not rest or _TEMPLATES.fullmatch(rest) is not None
    return core, report
