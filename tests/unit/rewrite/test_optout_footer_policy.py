"""The optout-footer policy: settings, template checks, and its verdict per category and shape."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from rewrite_support import CORPUS, load

from relay.category import builtin
from relay.model import (
    Action,
    AppendFooter,
    Category,
    Envelope,
    ListUnsubscribe,
    MessageContext,
    Peer,
    TlsInfo,
    Verdict,
)
from relay.policy import REGISTRY
from relay.policy.base import ConfigError, Organisation, PolicyDeps, Section
from relay.policy.optout_footer import build, is_protected

SHIPPED = Path(__file__).resolve().parents[3] / "policies"
FILE = "/etc/phi-relay/policy.toml"
PREFIX = "policy.optout-footer"
ORG = Organisation(
    name="Sun & Sea Clinic <West>", postal_address="1 Harbour Road, Portsmouth, ST 00001"
)


def _deps(policy_dir: Path) -> PolicyDeps:
    return PolicyDeps(policy_dir=policy_dir, state_dir=policy_dir, organisation=ORG)


@pytest.fixture
def policy_dir(tmp_path: Path) -> Path:
    (tmp_path / "footer.txt").write_text(
        "From {organisation}, {postal_address}.\nUnsubscribe: {unsubscribe_url}\n", "utf-8"
    )
    (tmp_path / "footer.html").write_text(
        "<p>From {organisation}, {postal_address}. "
        '<a href="{unsubscribe_url}">Unsubscribe</a></p>\n',
        "utf-8",
    )
    return tmp_path


def _section(**data: object) -> Section:
    return Section(FILE, PREFIX, data)


def _ctx(name: str, category: Category | None) -> MessageContext:
    raw, msg = load(name)
    return MessageContext(
        session_id="s1",
        decision_id="d1",
        peer=Peer("127.0.0.1", 40000),
        tls=TlsInfo("TLSv1.3", "TLS_AES_256_GCM_SHA384"),
        auth_user="app",
        trusted_network=False,
        envelope=Envelope("news@clinic.example", ("patient@example.net",)),
        raw=raw,
        message=msg,
        subject="Our new Saturday hours",
        subject_count=1,
        category=category,
        category_name=category.name if category else "",
        category_source="header",
    )


def test_registered_under_its_rule_id() -> None:
    assert REGISTRY["optout-footer"] is build


def test_build_fills_organisation_and_escapes_it_in_html(policy_dir: Path) -> None:
    policy = build(_section(), _deps(policy_dir))
    assert policy.name == "optout-footer"
    assert policy.text == (
        "From Sun & Sea Clinic <West>, 1 Harbour Road, Portsmouth, ST 00001.\n"
        "Unsubscribe: {unsubscribe_url}\n"
    )
    assert policy.html == (
        "<p>From Sun &amp; Sea Clinic &lt;West&gt;, 1 Harbour Road, Portsmouth, ST 00001. "
        '<a href="{unsubscribe_url}">Unsubscribe</a></p>\n'
    )
    assert policy.mailto is None
    assert policy.protected == "refuse"


def test_template_paths_and_settings_are_read(policy_dir: Path) -> None:
    (policy_dir / "sub").mkdir()
    shutil.copy(policy_dir / "footer.txt", policy_dir / "sub" / "t.txt")
    policy = build(
        _section(
            text_template="sub/t.txt",
            mailto="optout@clinic.example",
            protected="headers-only",
        ),
        _deps(policy_dir),
    )
    assert policy.text.startswith("From Sun & Sea Clinic")
    assert policy.mailto == "optout@clinic.example"
    assert policy.protected == "headers-only"


def test_shipped_templates_build_and_say_who_where_and_how() -> None:
    policy = build(_section(), _deps(SHIPPED))
    for template in (policy.text, policy.html):
        assert ORG.postal_address in template
        assert "{unsubscribe_url}" in template
        assert "<script" not in template.lower()
        assert "javascript:" not in template.lower()
    assert "Sun & Sea Clinic <West>" in policy.text
    assert "Sun &amp; Sea Clinic &lt;West&gt;" in policy.html


@pytest.mark.parametrize(
    ("data", "key", "expected"),
    [
        ({"text_template": "nope.txt"}, "text_template", "template file not found: "),
        ({"html_template": "nope.html"}, "html_template", "template file not found: "),
        ({"protected": "drop"}, "protected", "expected one of refuse, headers-only"),
        ({"mailto": "not an address"}, "mailto", "expected an unsubscribe mailbox"),
        ({"mailto": 5}, "mailto", "expected a string"),
        ({"colour": "red"}, "colour", "unknown setting"),
    ],
)
def test_bad_settings_name_file_and_key(
    policy_dir: Path, data: dict[str, object], key: str, expected: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        build(_section(**data), _deps(policy_dir))
    assert caught.value.file == FILE
    assert caught.value.key == f"{PREFIX}.{key}"
    assert caught.value.expected.startswith(expected)


def test_missing_template_error_names_the_path(policy_dir: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        build(_section(text_template="nope.txt"), _deps(policy_dir))
    assert caught.value.expected == f"template file not found: {policy_dir / 'nope.txt'}"


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ("Unsubscribe: {unsubscribe_link}\n", "unknown placeholder {unsubscribe_link}"),
        ("From {organisation}\n", "must contain {unsubscribe_url}"),
    ],
)
def test_template_content_is_checked(policy_dir: Path, content: str, expected: str) -> None:
    (policy_dir / "footer.txt").write_text(content, "utf-8")
    with pytest.raises(ConfigError) as caught:
        build(_section(), _deps(policy_dir))
    assert caught.value.key == f"{PREFIX}.text_template"
    assert expected in caught.value.expected


def test_template_must_be_utf8(policy_dir: Path) -> None:
    (policy_dir / "footer.html").write_bytes(b"<p>\xff {unsubscribe_url}</p>")
    with pytest.raises(ConfigError) as caught:
        build(_section(), _deps(policy_dir))
    assert caught.value.key == f"{PREFIX}.html_template"
    assert caught.value.expected.startswith("expected UTF-8 text in ")


CATEGORIES = builtin()


@pytest.mark.parametrize("name", sorted(CATEGORIES))
async def test_verdict_follows_the_category_footer_flag(policy_dir: Path, name: str) -> None:
    policy = build(_section(mailto="optout@clinic.example"), _deps(policy_dir))
    category = CATEGORIES[name]
    verdict = await policy.evaluate(_ctx("alternative_utf8_qp.eml", category))
    if category.footer:
        assert verdict == Verdict(
            rule="optout-footer",
            action=Action.MODIFY,
            reason="footer.added",
            modifications=(
                AppendFooter(policy.text, policy.html),
                ListUnsubscribe(name, "optout@clinic.example"),
            ),
        )
    else:
        assert verdict == Verdict.ok("optout-footer")


def test_footer_flags_of_the_model_are_what_this_test_expects() -> None:
    # Guards the parametrised test above from passing vacuously.
    assert sorted(n for n, c in CATEGORIES.items() if c.footer) == [
        "education",
        "fundraising",
        "marketing",
        "provider-products",
        "provider-recommended",
        "re-engagement",
    ]


async def test_switched_off_category_and_unknown_category_pass(policy_dir: Path) -> None:
    policy = build(_section(), _deps(policy_dir))
    off = Category("education", needs_authorization=False, footer=False, honours_optout=False)
    assert await policy.evaluate(_ctx("plain_no_mime.eml", off)) == Verdict.ok("optout-footer")
    assert await policy.evaluate(_ctx("plain_no_mime.eml", None)) == Verdict.ok("optout-footer")


PROTECTED = ["signed_multipart.eml", "pkcs7_mime.eml", "encrypted_pgp_in_mixed.eml"]


@pytest.mark.parametrize("name", PROTECTED)
async def test_protected_message_refused_by_default(policy_dir: Path, name: str) -> None:
    policy = build(_section(), _deps(policy_dir))
    verdict = await policy.evaluate(_ctx(name, CATEGORIES["marketing"]))
    assert verdict == Verdict(
        rule="optout-footer", action=Action.REJECT, reason="footer.protected-message"
    )


@pytest.mark.parametrize("name", PROTECTED)
async def test_protected_message_headers_only(policy_dir: Path, name: str) -> None:
    policy = build(_section(protected="headers-only"), _deps(policy_dir))
    verdict = await policy.evaluate(_ctx(name, CATEGORIES["fundraising"]))
    assert verdict == Verdict(
        rule="optout-footer",
        action=Action.MODIFY,
        reason="footer.headers-only",
        modifications=(ListUnsubscribe("fundraising", None),),
    )


@pytest.mark.parametrize("name", PROTECTED)
async def test_protected_message_in_a_category_without_footer_passes(
    policy_dir: Path, name: str
) -> None:
    policy = build(_section(), _deps(policy_dir))
    verdict = await policy.evaluate(_ctx(name, CATEGORIES["treatment"]))
    assert verdict == Verdict.ok("optout-footer")


@pytest.mark.parametrize("path", sorted(CORPUS.glob("*.eml")), ids=lambda p: p.name)
def test_is_protected_matches_the_corpus(path: Path) -> None:
    _, msg = load(path.name)
    assert is_protected(msg) is (path.name in PROTECTED)


def test_signed_message_attached_as_rfc822_is_not_protected() -> None:
    raw, _ = load("signed_multipart.eml")
    outer = (
        b"From: a@clinic.example\r\nMIME-Version: 1.0\r\n"
        b'Content-Type: multipart/mixed; boundary="o"\r\n\r\n'
        b"--o\r\nContent-Type: text/plain\r\n\r\nSee attached.\r\n"
        b"--o\r\nContent-Type: message/rfc822\r\n\r\n" + raw + b"\r\n--o--\r\n"
    )
    from rewrite_support import parse

    assert is_protected(parse(outer)) is False
