"""The one table that turns actions and PHI-free reason codes into SMTP replies.

Policies never build SMTP text. Replies say what was wrong and what to do, and
never echo message content: only finding kinds (e.g. "medical record number").
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from relay.model import Action, Reply, Verdict

if TYPE_CHECKING:
    from relay.phi.api import Detector

_TEXT: dict[str, tuple[int, str, str]] = {
    "tls.required": (530, "5.7.0", "Must issue a STARTTLS command first"),
    "auth.required": (530, "5.7.0", "Authentication required"),
    "phi.subject": (
        550,
        "5.7.1",
        "Subject line contains protected health information ({kinds}); "
        "put details in the message body",
    ),
    "phi.subject.too-long": (
        550,
        "5.7.1",
        "Subject line is longer than {kinds} characters and cannot be checked for PHI; shorten it",
    ),
    "phi.header": (
        550,
        "5.7.1",
        "A display name or attachment file name contains identifiers ({kinds}); "
        "remove them and send again",
    ),
    "phi.body": (
        550,
        "5.7.1",
        "Message body contains identifiers that must not be sent by email ({kinds}); "
        "remove them and send again",
    ),
    "message.subject.multiple": (
        550,
        "5.6.0",
        "Message has more than one Subject header; send exactly one",
    ),
    "message.from.multiple": (
        550,
        "5.6.0",
        "Message has more than one From header; send exactly one",
    ),
    "message.bare-line-ending": (
        550,
        "5.6.0",
        "Message contains a bare CR or LF; lines must end with CRLF",
    ),
    "message.header-too-large": (552, "5.3.4", "Message header section is too large"),
    "message.header-ambiguous": (
        550,
        "5.6.0",
        "Message header section cannot be read unambiguously (a line that is not a header "
        "field, or a fold with nothing to continue, among the header fields); fix the header",
    ),
    "message.header-duplicate": (
        550,
        "5.6.0",
        "Message repeats a header field that may appear only once (Content-Type, "
        "Content-Transfer-Encoding, Content-Disposition or MIME-Version); send it once",
    ),
    "message.hop-limit": (
        554,
        "5.4.6",
        "Too many Received headers (mail loop?); the hop limit is {kinds}",
    ),
    "category.multiple": (
        550,
        "5.6.0",
        "Message has more than one X-PHI-Category header; send at most one",
    ),
    "message.header-8bit": (
        550,
        "5.6.7",
        "Non-ASCII header without SMTPUTF8; encode it (RFC 2047) or send with SMTPUTF8",
    ),
    "message.nul": (550, "5.6.0", "Message contains a NUL byte"),
    "message.mime-too-deep": (
        550,
        "5.6.0",
        "MIME structure is nested too deeply; the limit is {kinds} levels",
    ),
    "message.mime-broken": (
        550,
        "5.6.0",
        "MIME structure is broken (missing or mismatched boundary); fix the message",
    ),
    "category.unknown": (
        550,
        "5.7.1",
        "X-PHI-Category names no known message category; use one of: {allowed}",
    ),
    "category.not-allowed": (
        550,
        "5.7.1",
        "X-PHI-Category may not change this sender's category ({kinds}); remove the header, "
        "or ask the operator to allow that category for this sender (categories.may_choose_*)",
    ),
    "consent.no-authorized-recipients": (
        550,
        "5.7.1",
        "No recipient has a current marketing authorization on record; "
        "marketing requires the patient's prior written authorization",
    ),
    "optout.all-recipients": (
        550,
        "5.7.1",
        "Every recipient has opted out of this kind of message; it was not sent",
    ),
    "segmentation.no-authorized-recipients": (
        550,
        "5.7.1",
        "Message refers to a health condition and no recipient has an authorization "
        "covering it; record a condition-specific authorization first",
    ),
    "recipients.none-left": (
        550,
        "5.7.1",
        "No recipient may receive this message under the consent and opt-out rules",
    ),
    "footer.protected-message": (
        550,
        "5.7.1",
        "Signed or encrypted message cannot carry the required opt-out footer; "
        "send it unsigned or in a category without a footer",
    ),
    "message.too-complex": (
        554,
        "5.6.0",
        "Message too complex to check in time (it timed out before); "
        "send it smaller or with fewer parts",
    ),
    "decision.timeout": (
        451,
        "4.3.0",
        "Message could not be checked in time; try again later",
    ),
    "worker.busy": (451, "4.3.0", "All message checkers are busy; try again later"),
    "worker.unavailable": (451, "4.3.0", "Message checker unavailable; try again later"),
    "policy.error": (451, "4.3.0", "Policy check failed ({rule}); try again later"),
    "policy.timeout": (451, "4.3.0", "Policy check timed out ({rule}); try again later"),
    "audit.error": (451, "4.3.0", "Cannot write the audit record; try again later"),
    "dedup.error": (
        451,
        "4.3.0",
        "Cannot record delivery state (state store full or locked); nothing sent, try again later",
    ),
    "dedup.in-flight": (
        451,
        "4.4.5",
        "The same message is being delivered in another session; try again shortly",
    ),
    "rewrite.permanent": (
        554,
        "5.6.0",
        "Message structure does not allow the required footer; fix the MIME structure or charset",
    ),
    "rewrite.error": (
        451,
        "4.3.0",
        "Cannot apply the required changes to the message; try again later",
    ),
    "dkim.stale-signature": (
        550,
        "5.7.0",
        "Message is DKIM-signed and the relay must change it (footer or headers); sign after "
        "the relay, or ask the operator to set dkim.stale_signature to remove",
    ),
    "dkim.error": (451, "4.3.0", "Cannot DKIM-sign the message; try again later"),
}

_DEFAULT = {
    Action.REJECT: (550, "5.7.1", "Message refused by policy ({rule})"),
    Action.TEMPFAIL: (451, "4.7.1", "Message deferred by policy ({rule}); try again later"),
}

ACCEPTED = Reply(250, "2.0.0", "OK: delivered to upstream")


def _kind_label(kind: str) -> str:
    from relay.phi.kinds import LABELS

    return LABELS.get(kind, kind.replace("-", " ").replace("_", " "))


def for_verdict(verdict: Verdict, allowed: Sequence[str] = ()) -> Reply:
    """The reply for a refusing or deferring verdict."""
    code, status, text = _TEXT.get(verdict.reason) or _DEFAULT.get(
        verdict.action, (451, "4.3.0", "Message deferred ({rule}); try again later")
    )
    if verdict.reason.startswith("phi."):
        kinds = ", ".join(dict.fromkeys(_kind_label(k) for k in verdict.kinds))
    else:
        kinds = ", ".join(verdict.kinds)
    return Reply(
        code,
        status,
        text.format(kinds=kinds or "unspecified", rule=verdict.rule, allowed=", ".join(allowed)),
    )


def by_reason(reason: str, **fmt: str) -> Reply:
    code, status, text = _TEXT[reason]
    return Reply(code, status, text.format(**{"kinds": "", "rule": "", "allowed": "", **fmt}))


def with_suppressed(reply: Reply, total: int, dropped: Mapping[str, str]) -> Reply:
    """Say how many recipients a policy removed (consent, opt-out), by reason, never by address.

    A client that only sees "250" would believe every recipient got the message.
    """
    if not dropped:
        return reply
    counts = Counter(dropped.values())
    detail = ", ".join(f"{reason}: {n}" for reason, n in sorted(counts.items()))
    suppressed = f"{len(dropped)} suppressed by policy ({detail})"
    if reply.success:
        note = f"; {total - len(dropped)} of {total} recipients delivered, {suppressed}"
    else:
        note = f"; of {total} recipients {suppressed}"
    return Reply(reply.code, reply.status, reply.text + note)


UPSTREAM_PREFIX = "Upstream: "
# RFC 3463 subject codes: the second number of an enhanced status code.
_SUBJECTS = {
    "0": "other",
    "1": "addressing",
    "2": "mailbox",
    "3": "mail-system",
    "4": "network",
    "5": "protocol",
    "6": "content",
    "7": "security-policy",
}


def reply_class(reply: Reply) -> str:
    """A PHI-free class for a reply, e.g. `permanent-security-policy`, from its codes alone."""
    kind = "success" if reply.success else "transient" if reply.transient else "permanent"
    parts = reply.status.split(".")
    subject = _SUBJECTS.get(parts[1], "other") if len(parts) == 3 else "other"
    return f"{kind}-{subject}"


def for_audit(reply: Reply, detector: Detector) -> Reply:
    """The reply as the audit log may keep it.

    The relay's own replies hold no PHI by construction. An upstream's text is free
    text a provider wrote, often quoting the message (a DLP refusal naming a patient):
    it keeps its codes and class, and its words only when the PHI detector finds
    nothing in them.
    """
    if not reply.text.startswith(UPSTREAM_PREFIX):
        return reply
    from relay.phi.normalize import normalize

    words = reply.text[len(UPSTREAM_PREFIX) :]
    label = f"Upstream ({reply_class(reply)})"
    try:
        clean = not detector.scan(normalize(words))
    except Exception:
        clean = False  # fail closed: a detector error keeps the words out
    return Reply(reply.code, reply.status, f"{label}: {words}" if clean else label)
