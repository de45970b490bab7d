"""`optout-footer`: asks for the opt-out footer and List-Unsubscribe on footer-bearing categories.

The policy only decides; `relay.rewrite` carries out the AppendFooter and
ListUnsubscribe modifications per recipient. Templates come from the operator's
policy directory; `{organisation}` and `{postal_address}` are filled once here,
`{unsubscribe_url}` and `{unsubscribe_mailto}` per recipient at rewrite time.
"""

from __future__ import annotations

import html
import re
from collections.abc import Iterator
from dataclasses import dataclass
from email.message import EmailMessage, MIMEPart
from pathlib import Path

from relay.model import Action, AppendFooter, ListUnsubscribe, MessageContext, Verdict
from relay.policy import register
from relay.policy.base import ConfigError, PolicyDeps, Section

NAME = "optout-footer"
# Content whose bytes a signature covers, or that is ciphertext: its body cannot change.
PROTECTED_TYPES = frozenset(
    {
        "multipart/signed",
        "multipart/encrypted",
        "application/pkcs7-mime",
        "application/x-pkcs7-mime",
    }
)
BUILD_PLACEHOLDERS = ("organisation", "postal_address")
RENDER_PLACEHOLDERS = ("unsubscribe_url", "unsubscribe_mailto")
_PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")
_MAILBOX = re.compile(r"^[^\s@<>\"(),;:]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}$")
_SETTINGS = ("text_template", "html_template", "mailto", "protected")


def _entities(part: MIMEPart) -> Iterator[MIMEPart]:
    """The message's MIME entities, not descending into attached messages."""
    yield part
    if part.get_content_maintype() == "multipart":
        for sub in part.iter_parts():
            yield from _entities(sub)


def is_protected(message: EmailMessage) -> bool:
    """True when any entity of the message is signed or encrypted (outside attached messages)."""
    return any(p.get_content_type() in PROTECTED_TYPES for p in _entities(message))


# Not frozen: the Policy protocol declares `name` as a plain (writable) attribute.
@dataclass(slots=True)
class OptoutFooter:
    text: str
    html: str
    mailto: str | None
    protected: str  # "refuse" | "headers-only"
    name: str = NAME

    async def evaluate(self, ctx: MessageContext) -> Verdict:
        category = ctx.category
        if category is None or not category.footer:
            return Verdict.ok(self.name)
        unsubscribe = ListUnsubscribe(category.name, self.mailto)
        if is_protected(ctx.message):
            if self.protected == "refuse":
                return Verdict(
                    rule=self.name, action=Action.REJECT, reason="footer.protected-message"
                )
            return Verdict(
                rule=self.name,
                action=Action.MODIFY,
                reason="footer.headers-only",
                modifications=(unsubscribe,),
            )
        return Verdict(
            rule=self.name,
            action=Action.MODIFY,
            reason="footer.added",
            modifications=(AppendFooter(self.text, self.html), unsubscribe),
        )


def _key(section: Section, key: str) -> str:
    return f"{section.prefix}.{key}" if section.prefix else key


def _template(section: Section, deps: PolicyDeps, key: str, default: str) -> str:
    path = deps.policy_dir / Path(section.str(key, default))
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise ConfigError(
            section.file, _key(section, key), f"template file not found: {path}"
        ) from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(
            section.file, _key(section, key), f"expected UTF-8 text in {path}"
        ) from exc
    except OSError as exc:
        raise ConfigError(
            section.file, _key(section, key), f"cannot read {path} ({exc.strerror})"
        ) from exc
    known = BUILD_PLACEHOLDERS + RENDER_PLACEHOLDERS
    for found in _PLACEHOLDER.findall(text):
        if found not in known:
            raise ConfigError(
                section.file,
                _key(section, key),
                f"unknown placeholder {{{found}}} in {path}; expected "
                + ", ".join(f"{{{k}}}" for k in known),
            )
    if "{unsubscribe_url}" not in text:
        # CAN-SPAM and the HIPAA marketing rules need a working opt-out in every copy.
        raise ConfigError(
            section.file, _key(section, key), f"{path} must contain {{unsubscribe_url}}"
        )
    if "\0" in text or not text.strip():
        raise ConfigError(section.file, _key(section, key), f"{path} is empty or binary")
    return text


def _fill(template: str, values: dict[str, str]) -> str:
    for key, value in values.items():
        template = template.replace("{" + key + "}", value)
    return template


def build(section: Section, deps: PolicyDeps) -> OptoutFooter:
    section.reject_unknown(_SETTINGS)
    text = _template(section, deps, "text_template", "footer.txt")
    html_template = _template(section, deps, "html_template", "footer.html")
    mailto = section.str("mailto", "").strip()
    if mailto and not _MAILBOX.match(mailto):
        raise ConfigError(
            section.file,
            _key(section, "mailto"),
            "expected an unsubscribe mailbox such as unsubscribe@example.org, or empty",
        )
    protected = section.choice("protected", ("refuse", "headers-only"), "refuse")
    org = deps.organisation
    plain = {"organisation": org.name, "postal_address": org.postal_address}
    escaped = {k: html.escape(v, quote=True) for k, v in plain.items()}
    return OptoutFooter(
        text=_fill(text, plain),
        html=_fill(html_template, escaped),
        mailto=mailto or None,
        protected=protected,
    )


register(NAME, build)
