"""subject-phi and body-phi: verdicts, per-kind actions and settings validation."""

from __future__ import annotations

from dataclasses import replace
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest

from relay.model import Action, Envelope, MessageContext, Peer, ReplaceSubject, TlsInfo, Verdict
from relay.phi.normalize import subject_text
from relay.policy import REGISTRY
from relay.policy.base import ConfigError, PolicyDeps, Section


def ctx(subject: str, count: int = 1, body: str = "", html: str = "") -> MessageContext:
    msg = EmailMessage()
    msg["Subject"] = subject
    msg.set_content(body or "Hello")
    if html:
        msg.add_alternative(html, subtype="html")
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
        subject_count=count,
        category=None,
        category_name="treatment",
        category_source="default",
    )


def build(name: str, data: dict[str, Any]) -> Any:
    deps = PolicyDeps(policy_dir=Path("."), state_dir=Path("."))
    return REGISTRY[name](Section("policy.toml", f"policy.{name}", data), deps)


async def test_clean_subject_passes() -> None:
    policy = build("subject-phi", {})
    assert await policy.evaluate(ctx("Our new Saturday hours")) == Verdict.ok("subject-phi")


async def test_phi_subject_is_refused_with_sorted_kinds() -> None:
    verdict = await build("subject-phi", {}).evaluate(ctx("MRN 00482913, DOB 03/14/1985"))
    assert verdict == Verdict(
        rule="subject-phi",
        action=Action.REJECT,
        reason="phi.subject",
        kinds=("date", "mrn"),
        rules=("id.cued", "id.date"),
    )


async def test_encoded_subject_is_refused() -> None:
    verdict = await build("subject-phi", {}).evaluate(
        ctx("=?UTF-8?B?WW91ciBISVYgdGVzdCByZXN1bHRz?=")
    )
    assert verdict.action is Action.REJECT
    assert verdict.kinds == ("hiv", "procedure", "result")


async def test_replace_when_every_kind_is_replace() -> None:
    policy = build(
        "subject-phi",
        {
            "replacement": "A note from your clinic",
            "actions": {"default": "refuse", "name": "replace"},
        },
    )
    verdict = await policy.evaluate(ctx("Patient: Jane Okafor"))
    assert verdict == Verdict(
        rule="subject-phi",
        action=Action.MODIFY,
        reason="phi.subject.replaced",
        kinds=("name",),
        modifications=(ReplaceSubject("A note from your clinic"),),
        rules=("name.patient-cue",),
    )
    # one kind still set to refuse refuses the message
    mixed = await policy.evaluate(ctx("Patient: Jane Okafor MRN 00482913"))
    assert (mixed.action, mixed.reason, mixed.kinds) == (
        Action.REJECT,
        "phi.subject",
        ("mrn", "name"),
    )


async def test_default_replace_with_one_kind_refused() -> None:
    policy = build("subject-phi", {"actions": {"default": "replace", "ssn": "refuse"}})
    replaced = await policy.evaluate(ctx("Your lab results are ready"))
    assert replaced.modifications == (ReplaceSubject("A message from your care team"),)
    refused = await policy.evaluate(ctx("SSN 123-45-6789"))
    assert (refused.action, refused.kinds) == (Action.REJECT, ("ssn",))


async def test_multiple_subject_headers_are_refused() -> None:
    verdict = await build("subject-phi", {}).evaluate(ctx("Hello", count=2))
    assert verdict == Verdict(
        rule="subject-phi", action=Action.REJECT, reason="message.subject.multiple"
    )


@pytest.mark.parametrize(
    ("data", "key"),
    [
        ({"actions": {"default": "allow"}}, "policy.subject-phi.actions.default"),
        ({"actions": {"mrm": "replace"}}, "policy.subject-phi.actions.mrm"),
        ({"actions": {"mrn": "drop"}}, "policy.subject-phi.actions.mrn"),
        ({"replacement": 5}, "policy.subject-phi.replacement"),
        ({"replacement": "a\nb"}, "policy.subject-phi.replacement"),
        ({"replace": "x"}, "policy.subject-phi.replace"),
        ({"actions": "refuse"}, "policy.subject-phi.actions"),
    ],
)
def test_subject_settings_errors_name_the_key(data: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError) as err:
        build("subject-phi", data)
    assert err.value.key == key
    assert err.value.file == "policy.toml"


async def test_body_phi_finds_ssn_in_text_and_html() -> None:
    policy = build("body-phi", {})
    assert await policy.evaluate(ctx("Hi", body="Your SSN is 123-45-6789.")) == Verdict(
        rule="body-phi", action=Action.REJECT, reason="phi.body", kinds=("ssn",)
    )
    html_only = ctx("Hi", body="See the HTML part", html="<p>SSN&nbsp;<b>123-45-6789</b></p>")
    assert (await policy.evaluate(html_only)).kinds == ("ssn",)


async def test_body_phi_ignores_kinds_not_chosen() -> None:
    policy = build("body-phi", {})
    clean = ctx("Hi", body="Your appointment with Dr. Smith, MRN 00482913.")
    assert await policy.evaluate(clean) == Verdict.ok("body-phi")
    wider = build("body-phi", {"kinds": ["ssn", "mrn"]})
    assert (await wider.evaluate(clean)).kinds == ("mrn",)


async def test_body_phi_finds_ssn_past_a_chunk_boundary() -> None:
    body = "x " * 4090 + "SSN 123-45-6789 " + "y " * 10
    assert (await build("body-phi", {}).evaluate(ctx("Hi", body=body))).kinds == ("ssn",)


@pytest.mark.parametrize(
    ("data", "key"),
    [
        ({"kinds": ["social"]}, "policy.body-phi.kinds"),
        ({"kinds": []}, "policy.body-phi.kinds"),
        ({"kinds": "ssn"}, "policy.body-phi.kinds"),
        ({"kind": ["ssn"]}, "policy.body-phi.kind"),
    ],
)
def test_body_settings_errors_name_the_key(data: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError) as err:
        build("body-phi", data)
    assert err.value.key == key


async def test_body_phi_reads_html_as_a_reader_sees_it() -> None:
    # Inline elements add no space, entities and comments do not split the number.
    html = "<p>S<b>S</b>N 123-<i>45</i>-67<!-- x -->89</p><script>x='000'</script>"
    verdict = await build("body-phi", {}).evaluate(ctx("Hi", body="See HTML", html=html))
    assert verdict.kinds == ("ssn",)


async def test_body_phi_reads_a_mislabelled_charset_every_plausible_way() -> None:
    msg = EmailMessage()
    msg["Subject"] = "Hi"
    # UTF-16 under the WHATWG label "csunicode"; an unknown label is not read as UTF-8 only.
    msg.set_content("SSN 123-45-6789".encode("utf-16-le"), "text", "plain", cte="base64")
    msg.replace_header("Content-Type", 'text/plain; charset="csunicode"')
    verdict = await build("body-phi", {}).evaluate(replace(ctx("Hi"), message=msg))
    assert verdict.kinds == ("ssn",)
    msg.replace_header("Content-Type", 'text/plain; charset="x-nonsense"')
    msg.set_payload("U1NOIDEyMy00NS02Nzg5\n")
    assert (await build("body-phi", {}).evaluate(replace(ctx("Hi"), message=msg))).kinds == ("ssn",)
