"""Header-only rewrites work on the raw bytes: the body stays byte-identical."""

from __future__ import annotations

import email.header

import pytest
from rewrite_support import CORPUS, MAILTO, RECIPIENT, URL, Links, load, parse, split

from relay.model import (
    AppendFooter,
    ListUnsubscribe,
    Modification,
    RemoveHeader,
    ReplaceSubject,
    SetHeader,
)
from relay.rewrite import RewriteError, per_recipient, render

ALL = sorted(p.name for p in CORPUS.glob("*.eml"))


def _render(
    raw: bytes, mods: tuple[Modification, ...], links: Links | None = None, category: str = "x"
) -> bytes:
    return render(
        raw,
        parse(raw),
        mods,
        recipient=RECIPIENT,
        category=category,
        links=links if links is not None else Links(),
    )


@pytest.mark.parametrize("name", ALL)
def test_no_modifications_return_raw_itself(name: str) -> None:
    raw, msg = load(name)
    assert render(raw, msg, (), recipient=None, category="treatment", links=None) is raw


@pytest.mark.parametrize("name", ALL)
def test_removing_an_absent_header_changes_nothing(name: str) -> None:
    raw, _ = load(name)
    assert _render(raw, (RemoveHeader("X-Not-There"),)) == raw


@pytest.mark.parametrize("name", ALL)
def test_header_changes_leave_the_body_byte_identical(name: str) -> None:
    raw, _ = load(name)
    mods: tuple[Modification, ...] = (
        RemoveHeader("X-PHI-Category"),
        SetHeader("X-Relay", "checked"),
        ReplaceSubject("A message from your care team"),
        ListUnsubscribe("marketing"),
    )
    out = _render(raw, mods)
    if name == "malformed_no_separator.eml":
        # No empty line: the body starts at the first line that is not a header.
        tail = b"This line is not a header and there was no empty line.\r\n"
        assert raw.endswith(tail)
        assert out.endswith(b"charset=us-ascii\r\n" + tail)
    else:
        assert split(out)[1] == split(raw)[1]
    msg = parse(out)
    assert msg["Subject"] == "A message from your care team"
    assert msg["X-Relay"] == "checked"
    assert msg.get_all("X-PHI-Category") is None


def test_remove_header_drops_every_instance_with_its_continuation_lines() -> None:
    raw, _ = load("folded_headers.eml")
    out = _render(raw, (RemoveHeader("x-phi-category"),))
    head, body = split(out)
    assert b"phi-category" not in head.lower()
    assert b"still the same field" not in head
    assert body == split(raw)[1]
    assert b"X-PHI-Category: this is body text, not a header" in body
    assert head == split(raw)[0].replace(b"X-PHI-Category: marketing\r\n", b"").replace(
        b"x-phi-category: education,\r\n\tstill the same field\r\n", b""
    )


def test_set_header_replaces_all_same_name_fields_with_one_at_the_top() -> None:
    raw = b"A: 1\r\nX-Tag: one\r\nB: 2\r\nx-tag: two\r\n\r\nbody\r\n"
    out = _render(raw, (SetHeader("X-Tag", "three"),))
    assert out == b"X-Tag: three\r\nA: 1\r\nB: 2\r\n\r\nbody\r\n"


def test_replace_subject_keeps_the_position_and_encodes_non_ascii() -> None:
    raw = b"From: a@clinic.example\r\nSubject: old\r\nTo: b@example.net\r\n\r\nbody\r\n"
    out = _render(raw, (ReplaceSubject("Nachricht von Ihrem Behandlungsteam \u2013 bitte lesen"),))
    lines = split(out)[0].split(b"\r\n")
    assert lines[0] == b"From: a@clinic.example"
    assert lines[1].startswith(b"Subject: ")
    assert out.isascii()
    assert b"=?utf-8?" in out
    subject = parse(out)["Subject"]
    assert subject == "Nachricht von Ihrem Behandlungsteam \u2013 bitte lesen"
    field = [lines[1][len(b"Subject: ") :]]
    field += [line for line in lines[2:] if line.startswith(b" ")]
    assert lines[2 + len(field) - 1] == b"To: b@example.net"
    words = email.header.decode_header(b"\r\n".join(field).decode("ascii"))
    assert str(email.header.make_header(words)) == subject
    assert out.endswith(b"\r\n\r\nbody\r\n")


def test_long_ascii_header_is_folded_at_spaces_not_encoded() -> None:
    value = " ".join(["word"] * 40)
    out = _render(b"A: 1\r\n\r\nb\r\n", (SetHeader("X-Long", value),))
    head = split(out)[0]
    assert b"=?" not in head
    assert all(len(line) <= 78 for line in head.split(b"\r\n"))
    assert parse(out)["X-Long"] == value


@pytest.mark.parametrize(
    ("mod", "reason"),
    [
        (SetHeader("X-Evil", "a\r\nBcc: someone@example.net"), "header.invalid-value"),
        (SetHeader("X-Evil", "a\nb"), "header.invalid-value"),
        (SetHeader("Bad Name", "v"), "header.invalid-name"),
        (SetHeader("Bad:Name", "v"), "header.invalid-name"),
        (ReplaceSubject("line\r\nX-Injected: 1"), "header.invalid-value"),
    ],
)
def test_header_injection_is_refused(mod: Modification, reason: str) -> None:
    with pytest.raises(RewriteError) as caught:
        _render(b"A: 1\r\n\r\nb\r\n", (mod,))
    assert caught.value.reason == reason


def test_list_unsubscribe_headers_with_https_and_mailto() -> None:
    raw, _ = load("folded_headers.eml")
    links = Links()
    out = _render(raw, (ListUnsubscribe("marketing"),), links, category="marketing")
    head = split(out)[0]
    assert head.startswith(
        b"List-Unsubscribe: <" + URL.encode() + b">,\r\n <" + MAILTO.encode() + b">\r\n"
        b"List-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n"
    )
    # The client's own pair is replaced, not duplicated.
    assert head.count(b"List-Unsubscribe:") == 1
    assert head.count(b"List-Unsubscribe-Post:") == 1
    assert b"old.example" not in head
    assert links.calls == [(RECIPIENT, "marketing")]
    msg = parse(out)
    assert msg["List-Unsubscribe"] == f"<{URL}>, <{MAILTO}>"
    assert msg["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"


def test_list_unsubscribe_https_only_when_there_is_no_mailto() -> None:
    out = _render(b"A: 1\r\n\r\nb\r\n", (ListUnsubscribe("education"),), Links(mailto=None))
    assert out == (
        b"List-Unsubscribe: <" + URL.encode() + b">\r\n"
        b"List-Unsubscribe-Post: List-Unsubscribe=One-Click\r\nA: 1\r\n\r\nb\r\n"
    )


def test_policy_mailbox_is_the_fallback_mailto() -> None:
    out = _render(
        b"A: 1\r\n\r\nb\r\n",
        (ListUnsubscribe("education", "optout@clinic.example"),),
        Links(mailto=None),
    )
    assert parse(out)["List-Unsubscribe"] == (
        f"<{URL}>, <mailto:optout@clinic.example?subject=unsubscribe>"
    )


def test_long_list_unsubscribe_url_stays_whole_on_its_own_line() -> None:
    class LongLinks(Links):
        def __call__(self, recipient: str, category: str):  # type: ignore[no-untyped-def]
            from relay.model import UnsubscribeLinks

            return UnsubscribeLinks(https="https://u.example/u/" + "T" * 150, mailto=MAILTO)

    out = _render(b"A: 1\r\n\r\nb\r\n", (ListUnsubscribe("marketing"),), LongLinks())
    lines = split(out)[0].split(b"\r\n")
    assert lines[0] == b"List-Unsubscribe: <https://u.example/u/" + b"T" * 150 + b">,"
    assert lines[1] == b" <" + MAILTO.encode() + b">"
    assert all(len(line) <= 998 for line in lines)


def test_list_unsubscribe_without_a_link_maker_is_an_error() -> None:
    raw = b"A: 1\r\n\r\nb\r\n"
    with pytest.raises(RewriteError) as caught:
        render(
            raw, parse(raw), (ListUnsubscribe("m"),), recipient=RECIPIENT, category="m", links=None
        )
    assert caught.value.reason == "links.unavailable"
    with pytest.raises(RewriteError) as caught:
        render(
            raw, parse(raw), (ListUnsubscribe("m"),), recipient=None, category="m", links=Links()
        )
    assert caught.value.reason == "links.unavailable"


def test_footer_placeholders_are_html_escaped_only_in_html() -> None:
    class AmpLinks(Links):
        def __call__(self, recipient: str, category: str):  # type: ignore[no-untyped-def]
            from relay.model import UnsubscribeLinks

            return UnsubscribeLinks(https='https://u.example/u/a&b"c', mailto=None)

    raw, _ = load("alternative_utf8_qp.eml")
    out = _render(
        raw,
        (AppendFooter("U: {unsubscribe_url}", '<a href="{unsubscribe_url}">x</a>'),),
        AmpLinks(),
    )
    plain, html = (p.get_content() for p in parse(out).walk() if p.get_content_maintype() == "text")
    assert 'U: https://u.example/u/a&b"c' in plain
    assert '<a href="https://u.example/u/a&amp;b&quot;c">x</a>' in html


def test_mailto_lines_are_dropped_when_there_is_no_mailto() -> None:
    raw, _ = load("plain_no_mime.eml")
    footer = AppendFooter("Unsubscribe: {unsubscribe_url}\nBy email: {unsubscribe_mailto}\nEnd", "")
    out = _render(raw, (footer,), Links(mailto=None))
    text = parse(out).get_content().replace("\r\n", "\n")
    assert text.endswith(f"Unsubscribe: {URL}\nEnd\n")
    assert "By email" not in text


def test_one_link_per_render_shared_by_header_and_footer() -> None:
    raw, _ = load("plain_no_mime.eml")
    links = Links()
    _render(raw, (AppendFooter("{unsubscribe_url}", ""), ListUnsubscribe("fundraising")), links)
    assert links.calls == [(RECIPIENT, "fundraising")]


@pytest.mark.parametrize(
    ("mods", "expected"),
    [
        ((), False),
        ((RemoveHeader("X-PHI-Category"), SetHeader("X-A", "b")), False),
        ((ReplaceSubject("s"),), False),
        ((AppendFooter("t", "h"),), True),
        ((RemoveHeader("X"), ListUnsubscribe("marketing")), True),
    ],
)
def test_per_recipient(mods: tuple[Modification, ...], expected: bool) -> None:
    assert per_recipient(mods) is expected


def test_non_ascii_footer_in_latin1_part_switches_only_when_needed() -> None:
    raw, _ = load("plain_latin1_qp.eml")
    fits = _render(raw, (AppendFooter("D\u00e9sabonnement: {unsubscribe_url}", ""),))
    part = parse(fits)
    assert part.get_content_charset() == "iso-8859-1"
    assert part["Content-Transfer-Encoding"] == "quoted-printable"
    assert part.get_content().endswith(f"D\u00e9sabonnement: {URL}\r\n")

    wide = _render(raw, (AppendFooter("Abmelden \u2014 {unsubscribe_url}", ""),))
    part = parse(wide)
    assert part.get_content_charset() == "utf-8"
    assert part["Content-Transfer-Encoding"] == "quoted-printable"
    text = part.get_content()
    assert text.startswith("Caf\u00e9 et cr\u00e8me")
    assert text.endswith(f"Abmelden \u2014 {URL}\r\n")


def test_non_ascii_footer_on_plain_7bit_message_becomes_utf8_qp_mime() -> None:
    raw, _ = load("plain_no_mime.eml")
    out = _render(raw, (AppendFooter("Abmelden \u2014 {unsubscribe_url}", ""),))
    assert out.isascii()
    msg = parse(out)
    assert msg["MIME-Version"] == "1.0"
    assert msg["Content-Type"] == 'text/plain; charset="utf-8"'
    assert msg["Content-Transfer-Encoding"] == "quoted-printable"
    assert msg.get_content().endswith(f"Abmelden \u2014 {URL}\r\n")


def test_non_ascii_footer_keeps_8bit_and_base64_families() -> None:
    footer = (AppendFooter("Abmelden \u2014 {unsubscribe_url}", ""),)
    raw, _ = load("plain_latin1_8bit.eml")
    msg = parse(_render(raw, footer))
    assert (msg.get_content_charset(), msg["Content-Transfer-Encoding"]) == ("utf-8", "8bit")
    assert msg.get_content().startswith("Sch\u00f6ne Gr\u00fc\u00dfe")
    raw, _ = load("plain_shift_jis_base64.eml")
    msg = parse(_render(raw, (AppendFooter("\u00e9 {unsubscribe_url}", ""),)))
    assert (msg.get_content_charset(), msg["Content-Transfer-Encoding"]) == ("utf-8", "base64")
    assert msg.get_content().startswith("\u571f\u66dc\u65e5")


def test_undecodable_text_cannot_switch_charset() -> None:
    raw = (
        b"MIME-Version: 1.0\r\nContent-Type: text/plain; charset=us-ascii\r\n"
        b"Content-Transfer-Encoding: 8bit\r\n\r\nbad \xff byte\r\n"
    )
    with pytest.raises(RewriteError) as caught:
        _render(raw, (AppendFooter("\u00e9 {unsubscribe_url}", ""),))
    assert caught.value.reason == "charset.undecodable"


def test_footer_without_placeholders_needs_no_link_maker() -> None:
    raw, _ = load("plain_no_mime.eml")
    out = render(
        raw,
        parse(raw),
        (AppendFooter("Static", "<p>Static</p>"),),
        recipient=None,
        category="x",
        links=None,
    )
    assert parse(out).get_content().endswith("\r\n\r\nStatic\r\n")


def test_unknown_charset_takes_an_ascii_footer_but_not_a_wider_one() -> None:
    raw, _ = load("unknown_charset.eml")
    out = _render(raw, (AppendFooter("Unsubscribe: {unsubscribe_url}", ""),))
    assert split(out) == (split(raw)[0], b"Hello.\r\n\r\nUnsubscribe: " + URL.encode() + b"\r\n")
    with pytest.raises(RewriteError) as caught:
        _render(raw, (AppendFooter("\u00e9 {unsubscribe_url}", ""),))
    assert caught.value.reason == "charset.unknown"
    assert caught.value.permanent is True


def test_only_missing_links_are_transient() -> None:
    assert RewriteError("links.unavailable").permanent is False
    assert RewriteError("footer.protected-message").permanent is True
    assert RewriteError("mime.malformed").permanent is True


def test_empty_charset_parameter_means_us_ascii() -> None:
    raw = b'MIME-Version: 1.0\r\nContent-Type: text/plain; charset=""\r\n\r\nHi\r\n'
    out = _render(raw, (AppendFooter("U {unsubscribe_url}", ""),))
    assert out == raw + b"\r\nU " + URL.encode() + b"\r\n"


def test_double_spaces_never_fold_into_a_blank_line() -> None:
    value = "word  " * 30
    out = _render(b"A: 1\r\n\r\nb\r\n", (SetHeader("X-Long", value.strip()),))
    lines = split(out)[0].split(b"\r\n")
    assert all(line.strip() for line in lines)
    assert parse(out)["X-Long"] == value.strip()


def test_non_ascii_header_name_is_refused() -> None:
    with pytest.raises(RewriteError) as caught:
        _render(b"A: 1\r\n\r\nb\r\n", (SetHeader("X-\u00e9", "v"),))
    assert caught.value.reason == "header.invalid-name"
