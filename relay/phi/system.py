"""Mail-system wording in subjects: bounce and report templates and wrapper prefixes.

A relay in front of a clinic's mail also carries what mail servers and clients write
themselves: delivery reports ("Undelivered Mail Returned to Sender"), automatic
replies, read receipts, calendar answers. Their fixed words are not evidence about a
patient, and a model trained on people's subjects reads "returned" and "failed" as
results; so the wrapper words are taken off before the subject is judged, and a
subject that is only a report template is judged by its identifiers alone. The
wording lives in data/lex_system_prefixes.txt and data/lex_system_subjects.txt.
Mail systems write it in plain ASCII, so it is matched without folding, ignoring case.
"""

from __future__ import annotations

import re

from relay.phi.lexicon import alternatives, words

_REPLY = r"(?:re|fw|fwd|aw|wg|rv|tr|enc)\s*:"
_PREFIXES = re.compile(
    rf"(?:\s*(?:{_REPLY}|(?:{alternatives('system_prefixes')})\s*:))+\s*", re.IGNORECASE
)
# Only a run that holds a mail-system word counts; "RE: FW:" alone is people's mail.
_REPLY_ONLY = re.compile(rf"(?:\s*{_REPLY})+\s*", re.IGNORECASE)
# `{…}` stands for a short variable part (a queue id, a count).
_TEMPLATES = re.compile(
    "(?:"
    + "|".join(
        re.escape(t).replace(re.escape("{…}"), r"[^\n]{1,40}?")
        for t in sorted(words("system_subjects"))
    )
    + r")[\s.!]*",
    re.IGNORECASE,
)


def _report(text: str) -> bool:
    return _TEMPLATES.fullmatch(" ".join(text.split())) is not None


def unwrap(text: str) -> tuple[str, bool]:
    """The subject without leading mail-system wrapper words, and whether what is left
    (or the whole subject) is only a mail system's own report wording."""
    m = _PREFIXES.match(text)
    if not m or not m.end() or _REPLY_ONLY.fullmatch(m.group(0)):
        return text, _report(text)
    core = text[m.end() :]
    return core, _report(text) or not core.strip() or _report(core)
