"""The consent, optout and segmentation policies against real stores and built contexts."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from pathlib import Path

import pytest

from relay.consent.api import ConsentStore, StoreError
from relay.model import (
    Action,
    Category,
    Envelope,
    MessageContext,
    Peer,
    TlsInfo,
    Verdict,
)
from relay.phi.api import Finding
from relay.policy import REGISTRY
from relay.policy.base import ConfigError, PolicyDeps, Section
from relay.policy.consent import Consent
from relay.policy.optout import OptOutPolicy
from relay.policy.segmentation import Segmentation, message_text

NOW = datetime(2026, 6, 1, 9, 0, tzinfo=UTC)
CATEGORIES = {
    "treatment": Category("treatment", False, False, False),
    "appointment-reminder": Category("appointment-reminder", False, False, False),
    "education": Category("education", False, True, True),
    "fundraising": Category("fundraising", False, True, True),
    "marketing": Category("marketing", True, True, True),
    "re-engagement": Category("re-engagement", True, True, True),
}


class TinyDetector:
    """Knows three conditions by name; counts calls so tests can see it was not needed."""

    VOCAB = ("diabetes", "asthma", "hiv")

    def __init__(self) -> None:
        self.calls = 0

    def scan(self, text: str) -> list[Finding]:
        return []

    def conditions(self, text: str) -> frozenset[str]:
        self.calls += 1
        lowered = text.lower()
        return frozenset(c for c in self.VOCAB if c in lowered)


def context(
    category: str | None,
    rcpts: tuple[str, ...],
    *,
    subject: str = "Spring newsletter",
    body: str = "Our new Saturday hours.",
    html: str | None = None,
) -> MessageContext:
    msg = EmailMessage()
    msg["From"] = "news@clinic.example"
    msg["To"] = ", ".join(rcpts)
    msg["Subject"] = subject
    msg.set_content(body)
    if html is not None:
        msg.add_alternative(html, subtype="html")
    return MessageContext(
        session_id="s1",
        decision_id="d1",
        peer=Peer("127.0.0.1", 50000),
        tls=TlsInfo("TLSv1.3", "TLS_AES_256_GCM_SHA384"),
        auth_user="app",
        trusted_network=False,
        envelope=Envelope("news@clinic.example", rcpts),
        raw=msg.as_bytes(),
        message=msg,
        subject=subject,
        subject_count=1,
        category=None if category is None else CATEGORIES[category],
        category_name=category or "unknown",
        category_source="header",
    )


def at_now() -> datetime:
    return NOW


# --- consent -------------------------------------------------------------------------------------


async def test_consent_drops_recipients_without_authorization(store: ConsentStore) -> None:
    await store.grant("ann@example.org", "marketing", [], "form-a", at=NOW - timedelta(days=1))
    policy = Consent(store, clock=at_now)
    # Drop keys are the envelope addresses exactly as given, whatever their case.
    verdict = await policy.evaluate(context("marketing", ("Ann@Example.org", "Bo@Example.org")))
    assert verdict == Verdict(
        rule="consent",
        action=Action.MODIFY,
        reason="consent.unauthorized",
        drop={"Bo@Example.org": "consent.no-authorization"},
    )


async def test_consent_rejects_when_nobody_is_authorized(store: ConsentStore) -> None:
    await store.grant("ann@example.org", "marketing", [], "form-a", at=NOW - timedelta(days=9))
    await store.revoke("ann@example.org", "marketing", at=NOW - timedelta(days=1))
    await store.grant(
        "cy@example.org", "marketing", [], "f", expires=NOW, at=NOW - timedelta(days=9)
    )
    await store.grant("dee@example.org", "research", [], "f", at=NOW - timedelta(days=9))
    rcpts = ("ann@example.org", "cy@example.org", "dee@example.org")
    verdict = await Consent(store, clock=at_now).evaluate(context("re-engagement", rcpts))
    assert verdict == Verdict(
        rule="consent",
        action=Action.REJECT,
        reason="consent.no-authorized-recipients",
        drop=dict.fromkeys(rcpts, "consent.no-authorization"),
    )


async def test_consent_passes_authorized_marketing(store: ConsentStore) -> None:
    await store.grant("ann@example.org", "marketing", ["asthma"], "f", at=NOW - timedelta(days=1))
    verdict = await Consent(store, clock=at_now).evaluate(
        context("marketing", ("ann@example.org",))
    )
    assert verdict == Verdict(rule="consent", reason="consent.authorized")


@pytest.mark.parametrize("category", ["treatment", "education", "fundraising", None])
async def test_consent_ignores_categories_without_authorization(
    store: ConsentStore, category: str | None
) -> None:
    verdict = await Consent(store, clock=at_now).evaluate(context(category, ("ann@example.org",)))
    assert verdict == Verdict.ok("consent")


# --- optout --------------------------------------------------------------------------------------


async def test_optout_drops_opted_out_recipients(store: ConsentStore) -> None:
    await store.add_optout("ann@example.org", "all", "one-click")
    await store.add_optout("bo@example.org", "fundraising", "admin")
    rcpts = ("ANN@example.org", "bo@example.org")
    policy = OptOutPolicy(store)
    assert await policy.evaluate(context("marketing", rcpts)) == Verdict(
        rule="optout",
        action=Action.MODIFY,
        reason="optout.recipient",
        drop={"ANN@example.org": "optout.recipient"},
    )
    assert await policy.evaluate(context("fundraising", rcpts)) == Verdict(
        rule="optout",
        action=Action.REJECT,
        reason="optout.all-recipients",
        drop={"ANN@example.org": "optout.recipient", "bo@example.org": "optout.recipient"},
    )


@pytest.mark.parametrize("category", ["treatment", "appointment-reminder"])
async def test_optout_leaves_care_mail_alone(store: ConsentStore, category: str) -> None:
    await store.add_optout("ann@example.org", "all", "one-click")
    verdict = await OptOutPolicy(store).evaluate(context(category, ("ann@example.org",)))
    assert verdict == Verdict.ok("optout")


async def test_optout_passes_when_nobody_opted_out(store: ConsentStore) -> None:
    await store.add_optout("ann@example.org", "marketing", "one-click")
    verdict = await OptOutPolicy(store).evaluate(context("education", ("ann@example.org",)))
    assert verdict == Verdict.ok("optout")


# --- segmentation --------------------------------------------------------------------------------


async def test_segmentation_needs_conditions_covered(store: ConsentStore) -> None:
    week_ago = NOW - timedelta(days=7)
    await store.grant("ann@example.org", "marketing", ["diabetes", "asthma"], "f", at=week_ago)
    await store.grant("bo@example.org", "marketing", [], "f", at=week_ago)
    await store.grant("cy@example.org", "marketing", ["asthma"], "f", at=week_ago)
    rcpts = ("ann@example.org", "bo@example.org", "cy@example.org", "dee@example.org")
    ctx = context("marketing", rcpts, subject="New class", body="Join our Diabetes support group.")
    verdict = await Segmentation(store, TinyDetector(), clock=at_now).evaluate(ctx)
    assert verdict == Verdict(
        rule="segmentation",
        action=Action.MODIFY,
        reason="segmentation.condition-not-authorized",
        kinds=("condition",),
        drop=dict.fromkeys(rcpts[1:], "segmentation.condition-not-authorized"),
    )


async def test_segmentation_needs_every_condition_named(store: ConsentStore) -> None:
    await store.grant("ann@example.org", "marketing", ["diabetes"], "f", at=NOW)
    ctx = context(
        "education",
        ("ann@example.org",),
        subject="Living with asthma",
        body="Also: diabetes.",
    )
    verdict = await Segmentation(store, TinyDetector(), clock=at_now).evaluate(ctx)
    assert verdict == Verdict(
        rule="segmentation",
        action=Action.REJECT,
        reason="segmentation.no-authorized-recipients",
        kinds=("condition",),
        drop={"ann@example.org": "segmentation.condition-not-authorized"},
    )


async def test_segmentation_passes_covered_and_generic_mail(store: ConsentStore) -> None:
    await store.grant("ann@example.org", "marketing", ["hiv"], "f", at=NOW)
    policy = Segmentation(store, TinyDetector(), clock=at_now)
    covered = context("marketing", ("ann@example.org",), html="<p>HIV testing day</p>")
    assert await policy.evaluate(covered) == Verdict(
        rule="segmentation", reason="segmentation.authorized", kinds=("condition",)
    )
    generic = context("marketing", ("bo@example.org",), body="5 tips for a healthy heart")
    assert await policy.evaluate(generic) == Verdict.ok("segmentation")


async def test_segmentation_skips_other_categories(store: ConsentStore) -> None:
    detector = TinyDetector()
    policy = Segmentation(store, detector, clock=at_now)
    ctx = context("treatment", ("ann@example.org",), body="Your diabetes results")
    assert await policy.evaluate(ctx) == Verdict.ok("segmentation")
    assert detector.calls == 0


def test_message_text_reads_subject_plain_html_and_encoded_parts() -> None:
    msg = EmailMessage()
    msg["Subject"] = "S"
    msg.set_content("plain part", cte="quoted-printable")
    msg.add_alternative(
        "<style>.x{}</style><p>html&nbsp;<b>part</b></p><script>hidden()</script>",
        subtype="html",
        cte="base64",
    )
    msg.add_attachment(b"attached text", maintype="text", subtype="plain", filename="a.txt")
    ctx = context("marketing", ("a@example.org",))
    ctx = MessageContext(**{**{f: getattr(ctx, f) for f in ctx.__slots__}, "message": msg})
    assert message_text(ctx) == "Spring newsletter plain part html part"


# --- failures and building -----------------------------------------------------------------------


class BrokenStore:
    async def authorization(self, recipient: str, scope: str, at: datetime) -> None:
        raise StoreError("consent store (sqlite) failed: disk I/O error")

    async def opted_out(self, recipient: str, category: str) -> bool:
        raise StoreError("consent store (sqlite) failed: disk I/O error")


@pytest.mark.parametrize(
    "policy",
    [
        Consent(BrokenStore()),  # type: ignore[arg-type]
        OptOutPolicy(BrokenStore()),  # type: ignore[arg-type]
        Segmentation(BrokenStore(), TinyDetector()),  # type: ignore[arg-type]
    ],
)
async def test_store_errors_propagate_so_the_pipeline_fails_closed(policy: object) -> None:
    ctx = context("marketing", ("ann@example.org",), body="diabetes")
    with pytest.raises(StoreError):
        await policy.evaluate(ctx)  # type: ignore[attr-defined]


def deps(tmp_path: Path, store: object = None, detector: object = None) -> PolicyDeps:
    return PolicyDeps(
        policy_dir=tmp_path,
        state_dir=tmp_path,
        store=store,  # type: ignore[arg-type]
        detector=detector,  # type: ignore[arg-type]
        categories=CATEGORIES,
    )


def section(data: dict[str, object], name: str) -> Section:
    return Section("policies/default.toml", f"policy.{name}", data)


@pytest.mark.parametrize("name", ["consent", "optout", "segmentation"])
def test_building_without_a_store_says_one_is_needed(tmp_path: Path, name: str) -> None:
    with pytest.raises(ConfigError) as failed:
        REGISTRY[name](section({}, name), deps(tmp_path, detector=TinyDetector()))
    assert str(failed.value) == (
        f"policies/default.toml: policy.{name}: a consent store must be configured"
        " (consent_store) for this policy"
    )


def test_building_reads_settings(tmp_path: Path) -> None:
    store, detector = object(), TinyDetector()
    built = REGISTRY["segmentation"](
        section({"categories": ["marketing"], "scope": "promo"}, "segmentation"),
        deps(tmp_path, store, detector),
    )
    assert isinstance(built, Segmentation)
    assert (built.categories, built.scope, built.detector) == (
        frozenset({"marketing"}),
        "promo",
        detector,
    )
    consent = REGISTRY["consent"](section({}, "consent"), deps(tmp_path, store))
    assert isinstance(consent, Consent)
    assert consent.scope == "marketing"


@pytest.mark.parametrize(
    ("name", "data", "message"),
    [
        (
            "segmentation",
            {"categories": ["marketting"]},
            "policy.segmentation.categories: unknown category 'marketting'",
        ),
        ("segmentation", {"categories": "marketing"}, "expected a list of strings"),
        ("consent", {"scope": "Big Scope"}, "policy.consent.scope: scope: expected lower-case"),
        ("optout", {"categories": []}, "policy.optout.categories: unknown setting"),
    ],
)
def test_bad_settings_name_the_key(
    tmp_path: Path, name: str, data: dict[str, object], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        REGISTRY[name](section(data, name), deps(tmp_path, object(), TinyDetector()))


def test_segmentation_without_a_detector_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="a PHI detector is needed for this policy"):
        REGISTRY["segmentation"](section({}, "segmentation"), deps(tmp_path, object()))
