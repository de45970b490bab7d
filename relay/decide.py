"""The one decision function: a message's bytes and envelope in, the policies' outcome out.

`serve` runs it inline for small messages and in a worker process (relay.worker) for
the rest; both get the same answer because both call this. It reads only its
arguments and the rule set, so it can run wherever the rules are loaded.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from dataclasses import dataclass

from relay import pipeline
from relay.message import SessionFacts, ShapeError, ShapeLimits, build_context, check_raw, parse
from relay.model import Action, Envelope, Verdict
from relay.pipeline import Guard
from relay.rules import RuleSet


@dataclass(frozen=True, slots=True)
class Request:
    raw: bytes
    envelope: Envelope
    facts: SessionFacts
    decision_id: str


@dataclass(frozen=True, slots=True)
class Decided:
    outcome: pipeline.Outcome
    category: str  # "unknown" when the message never got one
    raw: bytes | None  # the message as it goes on, when it differs from the bytes received
    judged: bool  # False when the shape checks refused it before any policy ran
    category_source: str = ""  # header | sender | sender-domain | user | default


async def decide(
    request: Request,
    rules: RuleSet,
    limits: ShapeLimits,
    *,
    policy_timeout: float,
    mode: str,
    guard: Guard | None = None,
) -> Decided:
    envelope = request.envelope
    try:
        parsed = parse(check_raw(request.raw, envelope, limits), limits)
    except ShapeError as err:
        shape = Verdict(rule="message", action=Action.REJECT, reason=err.reason, kinds=err.kinds)
        outcome = pipeline.combine([shape], envelope.rcpt_tos, mode)
        return Decided(outcome, "unknown", None, False)
    ctx = build_context(
        raw=parsed.raw,
        msg=parsed.message,
        envelope=envelope,
        facts=request.facts,
        decision_id=request.decision_id,
        categories=rules.categories,
    )
    outcome = await pipeline.run(
        rules.policies,
        ctx,
        timeout=policy_timeout,
        mode=mode,
        pre=pipeline.builtin_verdicts(ctx),
        guard=guard,
    )
    category = ctx.category_name if ctx.category else "unknown"
    changed = parsed.raw if parsed.raw != request.raw else None
    return Decided(outcome, category, changed, True, ctx.category_source)


# Beyond these a message is not "small and ordinary" whatever its size: the PHI scan of
# a long subject and the stdlib's MIME parser (linear per nesting level) cost more per
# byte there (bench/decide.py, docs/flow.md).
ORDINARY_HEADER_BYTES = 8 * 1024
ORDINARY_BOUNDARIES = 10
_BOUNDARY = re.compile(rb"boundary[ \t]*=", re.IGNORECASE)


def ordinary(raw: bytes, inline_max_bytes: int) -> bool:
    """True for a message small and plain enough to decide inline in well under 100 ms."""
    if len(raw) > inline_max_bytes:
        return False
    end = raw.find(b"\r\n\r\n")
    if (len(raw) if end < 0 else end) > ORDINARY_HEADER_BYTES:
        return False
    # Every match holds the word, so a count of the word (bytes methods, ~10x faster than
    # the case-blind search) at or under the bound settles it; only more need the search.
    if raw.lower().count(b"boundary") <= ORDINARY_BOUNDARIES:
        return True
    return len(_BOUNDARY.findall(raw)) <= ORDINARY_BOUNDARIES


class Strikes:
    """Fingerprints of messages whose decision already timed out once (bounded, in memory).

    A message that times out is deferred (4xx) so that a transient load spike loses
    nothing; the same bytes timing out again are refused for good (554 5.6.0), or a
    client would retry a message built to be slow forever.
    """

    def __init__(self, capacity: int = 10_000) -> None:
        self.capacity = capacity
        self._seen: OrderedDict[bytes, None] = OrderedDict()

    def strike(self, fingerprint: bytes) -> bool:
        """Record a timeout; True when this message had timed out before."""
        if fingerprint in self._seen:
            self._seen.move_to_end(fingerprint)
            return True
        self._seen[fingerprint] = None
        while len(self._seen) > self.capacity:
            self._seen.popitem(last=False)
        return False
