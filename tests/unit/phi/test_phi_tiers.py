"""Actions by strength of evidence, and every field a client shows as the subject.

A scorer with fixed output (zero weights, a chosen bias) pins the model's tier, so
these tests check the policy's handling of each tier, not the trained weights.
"""

from __future__ import annotations

import math
import time
from array import array
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest

from relay.model import (
    Action,
    Envelope,
    MessageContext,
    Peer,
    PrependText,
    ReplaceSubject,
    SetHeader,
    TlsInfo,
)
from relay.phi.detector import PhiDetector
from relay.phi.features import DIM
from relay.phi.normalize import subject_text
from relay.phi.scorer import Scorer, Thresholds
from relay.policy import REGISTRY
from relay.policy.base import ConfigError, PolicyDeps, Section


def fixed(p: float) -> PhiDetector:
    """A detector whose scorer says `p` for every text (thresholds 0.5 / 0.8)."""
    scorer = Scorer(array("b", bytes(DIM)), 1.0, math.log(p / (1 - p)), Thresholds(0.5, 0.8))
    return PhiDetector(scorer=scorer)


def ctx(subject: str, **headers: str) -> MessageContext:
    msg = EmailMessage()
    msg["Subject"] = subject
    for name, value in headers.items():
        msg[name.replace("_", "-")] = value
    msg.set_content("Hello")
    return MessageContext(
        session_id="s1",
        decision_id="d1",
        peer=Peer("127.0.0.1", 2525),
        tls=TlsInfo("TLSv1.3", "TLS_AES_128_GCM_SHA256"),
        auth_user=None,
        trusted_network=True,
        envelope=Envelope("clinic@example.org", ("patient@example.net",)),
        raw=b"",
        message=msg,
        subject=subject_text(subject),
        subject_count=1,
        category=None,
        category_name="treatment",
        category_source="default",
    )


def build(data: dict[str, Any], detector: PhiDetector) -> Any:
    deps = PolicyDeps(policy_dir=Path("."), state_dir=Path("."), detector=detector)
    return REGISTRY["subject-phi"](Section("policy.toml", "policy.subject-phi", data), deps)


async def test_uncertain_subject_is_replaced_and_kept_in_the_body() -> None:
    verdict = await build({}, fixed(0.6)).evaluate(ctx("Quick question about Tuesday"))
    assert verdict.action is Action.MODIFY
    assert verdict.reason == "phi.subject.uncertain"
    assert verdict.kinds == ("health",) and verdict.rules == ("model.health",)
    assert verdict.modifications == (
        ReplaceSubject("A message from your care team"),
        PrependText("Subject: Quick question about Tuesday"),
    )


async def test_strong_score_is_refused_and_low_score_passes() -> None:
    refused = await build({}, fixed(0.9)).evaluate(ctx("Quick question about Tuesday"))
    assert (refused.action, refused.reason, refused.kinds) == (
        Action.REJECT,
        "phi.subject",
        ("health",),
    )
    # A greeting name is weak evidence: a low score lets it through (guide B5).
    passed = await build({}, fixed(0.1)).evaluate(ctx("Hi Jane, try these winter soups"))
    assert passed.action is Action.PASS


async def test_a_decisive_identifier_refuses_whatever_the_score() -> None:
    verdict = await build({}, fixed(0.01)).evaluate(ctx("SSN 286-41-7395 on file"))
    assert (verdict.action, verdict.kinds, verdict.rules) == (Action.REJECT, ("ssn",), ("id.ssn",))


class _Counting(Scorer):
    """A fixed scorer that counts how often it is asked."""

    calls = 0

    def probability(self, *args: Any, **kwargs: Any) -> float:
        self.calls += 1
        return super().probability(*args, **kwargs)


@pytest.mark.parametrize(
    ("subject", "tier", "runs"),
    [
        # decisive findings settle the subject: the scorer could not change the judgement
        ("SSN 286-41-7395 on file", "strong", 0),
        ("Patient: Jane Okafor, MRN 00482913", "strong", 0),
        # weak findings or none: the score decides
        ("Hi Jane, try these winter soups", "uncertain", 1),
        ("Clinic closed Monday", "uncertain", 1),
    ],
)
def test_the_scorer_runs_only_when_it_can_change_the_judgement(
    subject: str, tier: str, runs: int
) -> None:
    scorer = _Counting(array("b", bytes(DIM)), 1.0, math.log(0.6 / 0.4), Thresholds(0.5, 0.8))
    judged = PhiDetector(scorer=scorer).judge([subject])
    assert (judged.tier, scorer.calls) == (tier, runs)
    # The judgement says so: no model rule among its rules, and score 0 ("did not run").
    assert ("model.health" in judged.rules, judged.score == 0.0) == (bool(runs), not runs)


@pytest.mark.parametrize(
    "headers",
    [
        {"Thread_Topic": "SSN 286-41-7395 on file"},
        {"Thread_Topic": "=?UTF-8?B?U1NOIDI4Ni00MS03Mzk1?="},
    ],
)
async def test_thread_topic_is_judged_as_the_subject(headers: dict[str, str]) -> None:
    verdict = await build({}, fixed(0.01)).evaluate(ctx("Hello", **headers))
    assert (verdict.action, verdict.kinds) == (Action.REJECT, ("ssn",))
    replaced = await build({"actions": {"default": "replace"}}, fixed(0.01)).evaluate(
        ctx("Hello", **headers)
    )
    assert replaced.modifications == (
        ReplaceSubject("A message from your care team"),
        SetHeader("Thread-Topic", "A message from your care team"),
    )


@pytest.mark.parametrize(
    ("headers", "filename", "kinds"),
    [
        ({"From": '"Jane Doe SSN 286-41-7395" <j@example.org>'}, None, ("ssn",)),
        ({"To": '"Pt MRN 00482913" <p@example.net>'}, None, ("mrn",)),
        ({"Cc": "=?UTF-8?Q?DOB_03/14/1985?= <c@example.net>"}, None, ("date",)),
        ({}, "scan_SSN_286-41-7395.pdf", ("ssn",)),
        ({}, "labs_MRN_00482913.pdf", ("mrn",)),
    ],
)
async def test_display_names_and_file_names_through_the_identifier_layer(
    headers: dict[str, str], filename: str | None, kinds: tuple[str, ...]
) -> None:
    c = ctx("Hello", **headers)
    if filename:
        c.message.add_attachment(b"%PDF", "application", "pdf", filename=filename)
    verdict = await build({}, fixed(0.01)).evaluate(c)
    assert (verdict.action, verdict.reason, verdict.kinds) == (Action.REJECT, "phi.header", kinds)
    off = await build({"names-and-files": "off"}, fixed(0.01)).evaluate(c)
    assert off.action is Action.PASS


async def test_a_plain_display_name_and_file_name_pass() -> None:
    c = ctx("Hello", From='"Jane Doe" <j@example.org>')
    c.message.add_attachment(b"%PDF", "application", "pdf", filename="newsletter-2026.pdf")
    assert (await build({}, fixed(0.01)).evaluate(c)).action is Action.PASS


ORG = {
    "phones": ["(412) 772-0195", "+1 919 608 2247"],
    "addresses": ["2904 Larkspur Way"],
    "mailboxes": ["ivy.mercado@protonmail.com"],
    "templates": ["Your statement from {clinic} is ready"],
}


@pytest.mark.parametrize(
    "subject",
    [
        "Questions? Call 412-772-0195",
        "New number: 919.608.2247",
        "Mail returned from 2904 Larkspur Way",
        "Write to ivy.mercado@protonmail.com",
    ],
)
async def test_the_organisations_own_details_are_not_phi(subject: str) -> None:
    # Rules only (no scorer): every finding counts, so the masking alone decides.
    rules_only = PhiDetector(scorer=False)
    assert (await build({}, rules_only).evaluate(ctx(subject))).action is Action.REJECT
    policy = build({"organisation": ORG}, rules_only)
    assert (await policy.evaluate(ctx(subject))).action is Action.PASS


async def test_an_approved_template_is_judged_by_its_identifiers_only() -> None:
    policy = build({"organisation": ORG}, fixed(0.95))
    assert (await policy.evaluate(ctx("Your statement from Northside is ready"))).action is (
        Action.PASS
    )
    filled = await policy.evaluate(ctx("Your statement from SSN 286-41-7395 is ready"))
    assert (filled.action, filled.kinds) == (Action.REJECT, ("ssn",))


def test_organisation_settings_errors_name_the_key() -> None:
    with pytest.raises(ConfigError, match=r"policy\.subject-phi\.organisation"):
        build({"organisation": {"phones": ["12"]}}, fixed(0.01))
    with pytest.raises(ConfigError, match=r"policy\.subject-phi\.organisation\.fax"):
        build({"organisation": {"fax": ["x"]}}, fixed(0.01))
    with pytest.raises(ConfigError, match=r"policy\.subject-phi\.max-chars"):
        build({"max-chars": 10}, fixed(0.01))
    with pytest.raises(ConfigError, match=r"policy\.subject-phi\.names-and-files"):
        build({"names-and-files": "maybe"}, fixed(0.01))


async def test_a_subject_longer_than_the_limit_is_refused_at_once() -> None:
    policy = build({"max-chars": 100}, fixed(0.01))
    verdict = await policy.evaluate(ctx("news " * 30))
    assert (verdict.action, verdict.reason, verdict.kinds) == (
        Action.REJECT,
        "phi.subject.too-long",
        ("100",),
    )


@pytest.mark.parametrize(
    "unit",
    [
        "Jane Okafor ",
        "Maria Fernanda ",
        "your diabetes results MRN 00482913 ",
        "d i a b e t e s  ",
        # one name with no space to cut at: a single 64 KiB token
        "Okafor",
        # digits: one run, and numbers that look like identifiers
        "4",
        "4471881239 312-555-0187 ",
        # alternating scripts: Cyrillic and Greek look-alikes inside Latin words, CJK
        "J\u0430ne \u041ekafor \u0397\u0399V \u8a3a\u65ad ",
        "a\u0431",
        # encoded-words, spaced and adjacent, and leetspeak
        "=?UTF-8?B?SElW?= =?utf-8?q?H=C3=A9?= ",
        "=?UTF-8?Q?H=C3=A9?=",
        "d1ab3t3s ",
    ],
)
def test_a_64k_folded_subject_decides_in_linear_time(unit: str) -> None:
    from relay.phi import default_detector
    from relay.phi.normalize import subject_texts

    detector = default_detector()
    raw = "\r\n ".join([unit * 8] * 1400)[:65536]
    part = raw[: len(raw) // 40]

    def best(text: str) -> float:
        # Best of five: the machine is shared, and a linear cost is the least one seen.
        seen = []
        for _ in range(5):
            started = time.perf_counter()
            detector.judge(subject_texts(text))
            seen.append(time.perf_counter() - started)
        return min(seen)

    # Linear against a fortieth of the same text timed in the same run, and an absolute
    # ceiling far above the 50 ms target that only a stall breaks: the load of a shared
    # machine moves absolute times 3x (bench/phi_speed.py --shapes prints the 50 ms figure).
    whole = best(raw)
    assert whole < 3 * 40 * best(part)
    assert whole < 0.5


def _varied(shape: str, size: int) -> str:
    """`size` characters of one adversarial shape that never repeats a window."""
    import random

    rnd = random.Random(7)
    names = ["Jane", "Okafor", "Maria", "Fernanda", "Chidi", "López", "Nguyen", "Smith"]
    words: list[str] = []
    while sum(map(len, words)) + len(words) < size:
        if shape == "names":
            words.append(rnd.choice(names))
        elif shape == "digits":
            words.append(str(rnd.randrange(10**9)))
        elif shape == "scripts":
            words.append("".join(rnd.choice("a\u0431c\u0434e\u0397\u0399\u8a3a") for _ in range(6)))
        elif shape == "encoded":
            words.append(f"=?UTF-8?Q?{rnd.choice(names)}_{rnd.randrange(1000)}?=")
        else:
            words.append(
                rnd.choice(["d1ab3t3s", "h1v", "c4nc3r", "4ppt", "pt", "dx"])
                + str(rnd.randrange(10))
            )
    return "\r\n ".join(" ".join(words[i : i + 8]) for i in range(0, len(words), 8))[:size]


@pytest.mark.parametrize("shape", ["names", "digits", "scripts", "encoded", "leet"])
def test_detection_time_grows_linearly_on_text_that_never_repeats(shape: str) -> None:
    # Repeated windows are judged once, so the shapes above cost little; text that never
    # repeats is judged window by window. Four times the text must cost about four
    # times the time (a quadratic cost would be sixteen). CPU time, best of three.
    from relay.phi import default_detector
    from relay.phi.normalize import subject_texts

    detector = default_detector()

    def cost(size: int) -> float:
        raw = _varied(shape, size)
        best = math.inf
        for _ in range(3):
            started = time.process_time()
            detector.judge(subject_texts(raw))
            best = min(best, time.process_time() - started)
        return best

    small, large = cost(8192), cost(32768)
    assert large < 8 * small, (small, large)


def test_a_weak_finding_never_hides_a_strong_one_on_the_same_words() -> None:
    # Rules add findings in their own order; when two share a kind and a span, the one
    # kept must be the strongest, whichever came first, or the tier drops.
    from relay.phi.api import Finding
    from relay.phi.detector import _dedupe

    weak = Finding("condition", 4, 12, 0.5, "health.term")
    strong = Finding("condition", 4, 12, 0.95, "health.dx")
    other = Finding("mrn", 20, 28, 0.99, "id.cued")
    for order in ([weak, strong, other], [strong, weak, other], [other, weak, strong]):
        assert _dedupe(order) == [strong, other]
