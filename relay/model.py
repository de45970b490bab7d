"""Plain data shared by every stage: envelope, context, verdicts, decisions.

Frozen dataclasses only; this module imports nothing of ours so that every other
module can depend on it without creating cycles.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from email.message import EmailMessage


class Action(enum.IntEnum):
    """What a policy wants done. Ordered by severity: the most severe verdict wins."""

    PASS = 0
    MODIFY = 1
    TEMPFAIL = 2
    REJECT = 3


@dataclass(frozen=True, slots=True)
class Peer:
    host: str
    port: int


@dataclass(frozen=True, slots=True)
class TlsInfo:
    """The TLS state of a connection; version None means the session is plaintext."""

    version: str | None = None
    cipher: str | None = None

    @property
    def active(self) -> bool:
        return self.version is not None


@dataclass(frozen=True, slots=True)
class Envelope:
    mail_from: str
    rcpt_tos: tuple[str, ...]
    mail_options: tuple[str, ...] = ()
    smtputf8: bool = False


@dataclass(frozen=True, slots=True)
class Category:
    """One row of the HIPAA communication model (see docs/categories.md)."""

    name: str
    needs_authorization: bool
    footer: bool
    honours_optout: bool


@dataclass(frozen=True, slots=True)
class MessageContext:
    """Everything a policy may read about one message; built once, never mutated.

    `message` is the parsed message. Policies must not change it: they return
    modifications in their verdict and `rewrite` applies them.
    """

    session_id: str
    decision_id: str
    peer: Peer
    tls: TlsInfo
    auth_user: str | None
    trusted_network: bool
    envelope: Envelope
    raw: bytes
    message: EmailMessage
    subject: str
    subject_count: int
    category: Category | None
    category_name: str
    category_source: str
    plaintext_network: bool = False
    # A reason code when the X-PHI-Category header was refused ("" when it was not).
    category_refusal: str = ""


# --- modifications: data describing a change; `rewrite` carries them out ----------


@dataclass(frozen=True, slots=True)
class SetHeader:
    name: str
    value: str


@dataclass(frozen=True, slots=True)
class RemoveHeader:
    name: str


@dataclass(frozen=True, slots=True)
class ReplaceSubject:
    subject: str


@dataclass(frozen=True, slots=True)
class PrependText:
    """Put text at the top of every inline text/plain and text/html body part.

    subject-phi uses it to keep an uncertain subject: the neutral one goes in the
    header, the original ("Subject: ...") at the top of the body, so nothing is lost
    and nothing shows on a lock screen.
    """

    text: str


@dataclass(frozen=True, slots=True)
class AppendFooter:
    """Append a footer to every text/plain and text/html body part.

    Templates may hold `{unsubscribe_url}`; it is rendered per recipient, so a
    message carrying a footer is delivered in one upstream transaction per recipient.
    """

    text: str
    html: str


@dataclass(frozen=True, slots=True)
class ListUnsubscribe:
    """Add List-Unsubscribe (and RFC 8058 List-Unsubscribe-Post) for this category."""

    category: str
    mailto: str | None = None


@dataclass(frozen=True, slots=True)
class UnsubscribeLinks:
    """Where a recipient unsubscribes: an https one-click URL and optionally a mailto."""

    https: str
    mailto: str | None = None


LinkMaker = Callable[[str, str], UnsubscribeLinks]
"""(recipient, category) -> links carrying that recipient's encrypted token."""


Modification = (
    SetHeader | RemoveHeader | ReplaceSubject | PrependText | AppendFooter | ListUnsubscribe
)


@dataclass(frozen=True, slots=True)
class Verdict:
    """One policy's answer. `reason` is a PHI-free code such as `phi.subject`."""

    rule: str
    action: Action = Action.PASS
    reason: str = ""
    kinds: tuple[str, ...] = ()
    drop: Mapping[str, str] = field(default_factory=dict)
    modifications: tuple[Modification, ...] = ()
    # Ids of the detection rules that decided (e.g. "id.ssn", "model.health"): no text.
    rules: tuple[str, ...] = ()

    @staticmethod
    def ok(rule: str) -> Verdict:
        return Verdict(rule=rule)


@dataclass(frozen=True, slots=True)
class Reply:
    """An SMTP reply: code, enhanced status and text (never holding PHI)."""

    code: int
    status: str
    text: str

    def __str__(self) -> str:
        return f"{self.code} {self.status} {self.text}"

    @property
    def transient(self) -> bool:
        return 400 <= self.code < 500

    @property
    def success(self) -> bool:
        return 200 <= self.code < 300


@dataclass(frozen=True, slots=True)
class Decision:
    """The outcome of the policy pipeline for one message, before delivery."""

    decision_id: str
    session_id: str
    time: float
    peer: Peer
    tls: TlsInfo
    auth_user: str | None
    sender_domain: str
    recipients: tuple[str, ...]
    category: str
    mode: str
    verdicts: tuple[Verdict, ...]
    action: Action
    enforced_action: Action
    reply: Reply
    accepted: tuple[str, ...]
    dropped: Mapping[str, str]
    size: int


@dataclass(frozen=True, slots=True)
class DeliveryResult:
    """What the upstream said about one transaction of a decided message."""

    decision_id: str
    upstream: str
    recipients: tuple[str, ...]
    reply: Reply
    refused: Mapping[str, Reply]
    duration_ms: float
    tls: TlsInfo
    outcome: str
    attempt: int = 1
