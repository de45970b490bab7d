"""The service log's mail lines: one per message and one per failure, holding no PHI.

Operators read, grep and alert on these (as on chasquid's maillog): a `message` line has
the decision id, category, enforced decision, reply code and duration; a `failure` line
says what failed, where (the peer) and with which codes. Values are ids, codes, counts and
durations the relay made itself; a string that does not look like a code is written as
`(invalid)`, so an address, subject or header value that reached a call by mistake never
reaches the log. The audit log stays the record; these lines are for running the service.
"""

from __future__ import annotations

import re

import structlog

from relay.model import Decision, Reply

log = structlog.get_logger("relay.mail")

INVALID = "(invalid)"
# Codes, ids, `host:port` names and exception class names; nothing with spaces or `@`.
_CODE = re.compile(r"^[A-Za-z0-9\[][A-Za-z0-9._:/\[\]-]{0,99}$")
POLICY_FAILURES = frozenset({"policy.error", "policy.timeout"})

Field = str | int | float | bool | None


def _clean(value: Field) -> Field:
    if isinstance(value, str):
        return value if _CODE.fullmatch(value) else INVALID
    return value


def message(
    *,
    session_id: str,
    decision_id: str,
    category: str,
    decision: str,
    reply: Reply,
    seconds: float,
    recipients: int,
    accepted: int,
) -> None:
    """One line per message the client finished sending (its DATA reply)."""
    log.info(
        "message",
        session_id=_clean(session_id),
        decision_id=_clean(decision_id),
        category=_clean(category),
        decision=_clean(decision),
        reply_code=reply.code,
        reply_status=_clean(reply.status),
        duration_ms=round(max(seconds, 0.0) * 1000, 1),
        recipients=recipients,
        accepted=accepted,
    )


def failure(
    what: str,
    *,
    peer: str,
    session_id: str,
    error: bool = False,
    detail: str | None = None,
    **fields: Field,
) -> None:
    """One line per failure: `what` is a code (`upstream-unavailable`, `audit-write`, ...).

    `error` marks failures of the relay itself (audit, state, internal) rather than of a
    peer or policy, so they can be told apart by level. `detail` is a sentence the relay
    wrote itself (a store's error naming its file), never text from a client or upstream.
    """
    clean = {name: _clean(value) for name, value in fields.items()}
    if detail is not None:
        clean["detail"] = detail
    (log.error if error else log.warning)(
        "failure",
        failure=_clean(what),
        peer=_clean(peer),
        session_id=_clean(session_id),
        **clean,
    )


def policy_failures(decision: Decision, peer: str) -> None:
    """A failure line for each policy that raised or timed out (the message was tempfailed)."""
    for v in decision.verdicts:
        if v.reason in POLICY_FAILURES:
            failure(
                "policy-" + v.reason.removeprefix("policy."),
                peer=peer,
                session_id=decision.session_id,
                decision_id=decision.decision_id,
                rule=v.rule,
            )
