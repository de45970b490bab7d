"""`segmentation`: promotional mail naming a health condition needs an authorization covering it."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from email.message import EmailMessage

from relay.consent.api import ConsentStore, now
from relay.model import Action, MessageContext, Verdict
from relay.phi.api import Detector
from relay.phi.normalize import body_text, decodings, html_text
from relay.policy import register
from relay.policy.base import ConfigError, PolicyDeps, Section
from relay.policy.consent import current_authorizations, require_store, scope_setting

DEFAULT_CATEGORIES = ("marketing", "education")
# The tags themselves stay out of verdicts: only the kind of finding is recorded.
KINDS = ("condition",)


def _part_texts(part: EmailMessage) -> list[str]:
    # The declared charset as mail readers map it, every plausible reading when it is
    # doubtful: a mislabelled part must not hide a condition name.
    payload = part.get_payload(decode=True)
    if not isinstance(payload, bytes):
        return []
    return decodings(payload, part.get_content_charset() or "utf-8")


def message_text(ctx: MessageContext) -> str:
    """Subject plus every text/plain and text/html body part that is not an attachment."""
    texts = [ctx.subject]
    for part in ctx.message.walk():
        if part.is_multipart() or part.get_content_disposition() == "attachment":
            continue
        ctype = part.get_content_type()
        if ctype == "text/plain":
            texts.extend(_part_texts(part))
        elif ctype == "text/html":
            texts.extend(html_text(text) for text in _part_texts(part))
    # The one canonicaliser: full-width letters, invisibles or line breaks must not split
    # a condition name.
    return body_text(texts)


# Not frozen: the Policy protocol declares `name` as a plain (writable) attribute.
@dataclass(slots=True)
class Segmentation:
    store: ConsentStore
    detector: Detector
    categories: frozenset[str] = frozenset(DEFAULT_CATEGORIES)
    scope: str = "marketing"
    clock: Callable[[], datetime] = now
    name: str = "segmentation"

    async def evaluate(self, ctx: MessageContext) -> Verdict:
        if ctx.category is None or ctx.category.name not in self.categories:
            return Verdict.ok(self.name)
        text = message_text(ctx)
        # The detector is CPU work over the whole body: keep it off the event loop.
        found_tags = await asyncio.to_thread(self.detector.conditions, text)
        # The form the store keeps tags in, so "Diabetes" from a detector matches "diabetes".
        named = frozenset(" ".join(tag.split()).lower() for tag in found_tags)
        if not named:
            return Verdict.ok(self.name)
        recipients = ctx.envelope.rcpt_tos
        found = await current_authorizations(self.store, recipients, self.scope, self.clock())
        drop = {
            rcpt: "segmentation.condition-not-authorized"
            for rcpt, tags in found.items()
            if tags is None or not named <= tags
        }
        if not drop:
            return Verdict(rule=self.name, reason="segmentation.authorized", kinds=KINDS)
        if len(drop) == len(set(recipients)):
            return Verdict(
                rule=self.name,
                action=Action.REJECT,
                reason="segmentation.no-authorized-recipients",
                kinds=KINDS,
                drop=drop,
            )
        return Verdict(
            rule=self.name,
            action=Action.MODIFY,
            reason="segmentation.condition-not-authorized",
            kinds=KINDS,
            drop=drop,
        )


def build(section: Section, deps: PolicyDeps) -> Segmentation:
    section.reject_unknown(("categories", "scope"))
    store = require_store(section, deps)
    if deps.detector is None:
        raise ConfigError(
            section.file, section.prefix or "policy", "a PHI detector is needed for this policy"
        )
    categories = section.strings("categories", DEFAULT_CATEGORIES)
    known = deps.categories
    for name in categories:
        if known and name not in known:
            raise ConfigError(
                section.file,
                f"{section.prefix}.categories",
                f"unknown category {name!r}; expected some of {', '.join(sorted(known))}",
            )
    return Segmentation(
        store=store,
        detector=deps.detector,
        categories=frozenset(categories),
        scope=scope_setting(section),
    )


register("segmentation", build)
