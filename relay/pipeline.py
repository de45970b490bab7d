"""Run the policies in order over one context and combine their verdicts into one outcome.

Every policy runs (so the audit shows what each would do); the most severe action
wins and the first verdict with that action gives the reply. A policy that raises
or times out yields a tempfail: we fail closed, never open (Haraka's trap).
In monitor mode only the TLS and message-shape rules are enforced.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass

import structlog

from relay.model import Action, MessageContext, Modification, Verdict
from relay.policy.base import Policy

log = structlog.get_logger("relay.pipeline")

# Rules whose verdicts are enforced even in monitor mode.
ALWAYS_ENFORCED = frozenset({"require-tls", "message"})


@dataclass(frozen=True, slots=True)
class Outcome:
    verdicts: tuple[Verdict, ...]
    action: Action
    enforced: Action
    deciding: Verdict | None
    accepted: tuple[str, ...]
    dropped: dict[str, str]
    modifications: tuple[Modification, ...]


def builtin_verdicts(ctx: MessageContext) -> list[Verdict]:
    """Checks that run before every pipeline: the message gets a category it may use.

    The header's value never goes into a verdict (it reaches the reply and the audit
    log); a refusal names the mapped category, which comes from the operator.
    """
    if ctx.category_refusal:
        return [
            Verdict(
                rule="category",
                action=Action.REJECT,
                reason=ctx.category_refusal,
                kinds=(ctx.category_name,),
            )
        ]
    if ctx.category is None:
        return [Verdict(rule="category", action=Action.REJECT, reason="category.unknown")]
    return []


Guard = Callable[[float], AbstractContextManager[None]]
"""A deadline that can interrupt synchronous work (relay.worker's alarm); asyncio's
timeout only ends a policy at its next await."""


async def _evaluate(
    policy: Policy, ctx: MessageContext, timeout: float, guard: Guard | None = None
) -> Verdict:
    try:
        async with asyncio.timeout(timeout):
            if guard is None:
                verdict = await policy.evaluate(ctx)
            else:
                with guard(timeout):
                    verdict = await policy.evaluate(ctx)
    except TimeoutError:
        log.error("policy timed out", rule=policy.name, decision_id=ctx.decision_id)
        return Verdict(rule=policy.name, action=Action.TEMPFAIL, reason="policy.timeout")
    except Exception as exc:
        # The type only: exception text could quote message content.
        log.error(
            "policy failed", rule=policy.name, error=type(exc).__name__, decision_id=ctx.decision_id
        )
        return Verdict(rule=policy.name, action=Action.TEMPFAIL, reason="policy.error")
    if not isinstance(verdict, Verdict):
        log.error("policy returned no verdict", rule=policy.name)
        return Verdict(rule=policy.name, action=Action.TEMPFAIL, reason="policy.error")
    return verdict


async def run(
    policies: Sequence[Policy],
    ctx: MessageContext,
    *,
    timeout: float,
    mode: str,
    pre: Sequence[Verdict] = (),
    guard: Guard | None = None,
) -> Outcome:
    verdicts = list(pre)
    for policy in policies:
        verdicts.append(await _evaluate(policy, ctx, timeout, guard))
    return combine(verdicts, ctx.envelope.rcpt_tos, mode)


def combine(verdicts: list[Verdict], recipients: Sequence[str], mode: str) -> Outcome:
    def enforced(v: Verdict) -> bool:
        return mode == "enforce" or v.rule in ALWAYS_ENFORCED

    action = max((v.action for v in verdicts), default=Action.PASS)
    active = [v for v in verdicts if enforced(v)]
    dropped: dict[str, str] = {}
    for v in active:
        for rcpt, reason in v.drop.items():
            dropped.setdefault(rcpt, reason)
    accepted = tuple(r for r in recipients if r not in dropped)
    enforced_action = max((v.action for v in active), default=Action.PASS)
    if not accepted and enforced_action < Action.TEMPFAIL:
        none_left = Verdict(rule="recipients", action=Action.REJECT, reason="recipients.none-left")
        verdicts.append(none_left)
        active.append(none_left)
        action = max(action, Action.REJECT)
        enforced_action = Action.REJECT
    deciding = next((v for v in active if v.action == enforced_action), None)
    mods: tuple[Modification, ...] = ()
    if enforced_action <= Action.MODIFY:
        mods = tuple(m for v in active for m in v.modifications)
    return Outcome(
        verdicts=tuple(verdicts),
        action=action,
        enforced=enforced_action,
        deciding=deciding if enforced_action >= Action.TEMPFAIL else None,
        accepted=accepted,
        dropped=dropped,
        modifications=mods,
    )
