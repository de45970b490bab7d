"""The footer rewrite over every sample in tests/corpus/mime: MIME, charsets, CTEs, attachments."""

from __future__ import annotations

import binascii

import pytest
from rewrite_support import (
    MAILTO,
    RECIPIENT,
    URL,
    Links,
    body_texts,
    defects,
    load,
    other_leaves,
    parse,
    split,
    text_of,
)

from relay.model import AppendFooter, ListUnsubscribe, Modification, RemoveHeader
from relay.rewrite import RewriteError, render

TEXT = "--\nSent by Example Clinic.\nUnsubscribe: {unsubscribe_url}\nBy email: {unsubscribe_mailto}"
HTML = '<p class="optout">Sent by Example Clinic. <a href="{unsubscribe_url}">Unsubscribe</a></p>'
TEXT_RENDERED = f"--\nSent by Example Clinic.\nUnsubscribe: {URL}\nBy email: {MAILTO}"
HTML_RENDERED = f'<p class="optout">Sent by Example Clinic. <a href="{URL}">Unsubscribe</a></p>'

# sample -> (content type, charset, transfer encoding) of each body text part after the
# rewrite, in document order; a string instead is the RewriteError reason expected.
EXPECTED: dict[str, list[tuple[str, str, str]] | str] = {
    "plain_no_mime.eml": [("text/plain", "us-ascii", "7bit")],
    "plain_latin1_qp.eml": [("text/plain", "iso-8859-1", "quoted-printable")],
    "plain_latin1_8bit.eml": [("text/plain", "iso-8859-1", "8bit")],
    "plain_shift_jis_base64.eml": [("text/plain", "shift_jis", "base64")],
    "plain_iso2022jp_7bit.eml": [("text/plain", "iso-2022-jp", "7bit")],
    "plain_flowed.eml": [("text/plain", "us-ascii", "7bit")],
    "alternative_utf8_qp.eml": [
        ("text/plain", "utf-8", "quoted-printable"),
        ("text/html", "utf-8", "quoted-printable"),
    ],
    "html_without_body_base64.eml": [("text/html", "utf-8", "base64")],
    "mixed_attachments.eml": [
        ("text/plain", "us-ascii", "7bit"),
        ("text/html", "us-ascii", "7bit"),
        ("text/plain", "us-ascii", "7bit"),
    ],
    "related_nested.eml": [
        ("text/plain", "windows-1252", "quoted-printable"),
        ("text/html", "windows-1252", "quoted-printable"),
    ],
    "empty_parts.eml": [("text/plain", "us-ascii", "7bit"), ("text/html", "us-ascii", "7bit")],
    "forwarded_rfc822.eml": [("text/plain", "us-ascii", "7bit")],
    "invalid_utf8_8bit.eml": [("text/plain", "utf-8", "8bit")],
    "malformed_no_separator.eml": [("text/plain", "us-ascii", "7bit")],
    "folded_headers.eml": [("text/plain", "us-ascii", "7bit")],
    # Unknown to Python: an ASCII footer is appended to the bytes as they are.
    "unknown_charset.eml": [("text/plain", "x-no-such-charset", "7bit")],
    # No body text: a text/plain footer part is added (wrapping unless already mixed).
    "attachment_only.eml": [("text/plain", "us-ascii", "7bit")],
    "calendar_only.eml": [("text/plain", "us-ascii", "7bit")],
    "mixed_attachment_only.eml": [("text/plain", "us-ascii", "7bit")],
    "signed_multipart.eml": "footer.protected-message",
    "pkcs7_mime.eml": "footer.protected-message",
    "encrypted_pgp_in_mixed.eml": "footer.protected-message",
    "malformed_no_close_boundary.eml": "mime.malformed",
}
WRAPPED = {"attachment_only.eml", "calendar_only.eml"}
MODS: tuple[Modification, ...] = (
    RemoveHeader("X-PHI-Category"),
    AppendFooter(TEXT, HTML),
    ListUnsubscribe("marketing"),
)


def test_every_corpus_sample_has_an_expectation() -> None:
    from rewrite_support import CORPUS

    assert sorted(p.name for p in CORPUS.glob("*.eml")) == sorted(EXPECTED)


def _render(name: str, mods: tuple[Modification, ...] = MODS) -> tuple[bytes, bytes]:
    raw, msg = load(name)
    return raw, render(raw, msg, mods, recipient=RECIPIENT, category="marketing", links=Links())


@pytest.mark.parametrize("name", sorted(k for k, v in EXPECTED.items() if isinstance(v, str)))
def test_refused_samples_raise_with_reason(name: str) -> None:
    with pytest.raises(RewriteError) as caught:
        _render(name)
    assert caught.value.reason == EXPECTED[name]


OK = sorted(k for k, v in EXPECTED.items() if not isinstance(v, str))


@pytest.mark.parametrize("name", OK)
def test_output_is_crlf_and_parses_without_new_defects(name: str) -> None:
    raw, out = _render(name)
    assert b"\n" not in out.replace(b"\r\n", b"")
    assert b"\r" not in out.replace(b"\r\n", b"")
    before = set(defects(parse(raw)))
    # A missing header/body separator is repaired, never introduced.
    assert set(defects(parse(out))) <= before


@pytest.mark.parametrize("name", OK)
def test_every_body_text_part_has_the_footer_exactly_once(name: str) -> None:
    _, out = _render(name)
    parts = body_texts(parse(out))
    assert [
        (
            p.get_content_type(),
            p.get_content_charset("us-ascii"),
            str(p.get("content-transfer-encoding", "7bit")).lower(),
        )
        for p in parts
    ] == EXPECTED[name]
    for part in parts:
        text = text_of(part)
        if part.get_content_type() == "text/html":
            assert text.count(HTML_RENDERED) == 1
            assert text.count(URL) == 1
        else:
            assert text.count(TEXT_RENDERED) == 1
            assert text.count(URL) == 1


@pytest.mark.parametrize("name", OK)
def test_original_text_survives_in_front_of_the_footer(name: str) -> None:
    raw, out = _render(name)
    before = body_texts(parse(raw))
    after = body_texts(parse(out))
    if name in WRAPPED or name == "mixed_attachment_only.eml":
        assert before == []
        assert len(after) == 1
        assert text_of(after[0]) == TEXT_RENDERED + "\n"
        return
    assert len(before) == len(after)
    for old, new in zip(before, after, strict=True):
        old_text, new_text = text_of(old), text_of(new)
        if name == "plain_flowed.eml":
            # The last soft line break is made hard so the footer does not flow into it.
            old_text = old_text.replace("see us. \n", "see us.\n")
        if new.get_content_type() == "text/html" and "</body>" in old_text.lower():
            at = old_text.lower().rindex("</body")
            assert new_text == old_text[:at] + HTML_RENDERED + "\n" + old_text[at:]
        elif new.get_content_type() == "text/html":
            assert new_text == old_text + HTML_RENDERED + "\n"
        elif old_text:
            assert new_text == old_text.rstrip("\n") + "\n\n" + TEXT_RENDERED + "\n"
        else:
            assert new_text == TEXT_RENDERED + "\n"


@pytest.mark.parametrize("name", OK)
def test_attachments_and_other_parts_are_untouched(name: str) -> None:
    raw, out = _render(name)
    before = other_leaves(parse(raw))
    after = other_leaves(parse(out))
    assert len(after) == len(before)
    for old, new in zip(before, after, strict=True):
        if name in WRAPPED:
            # The message's own fields stay outside; the entity keeps its Content-* fields.
            assert new.items() == [
                (k, v) for k, v in old.items() if k.lower().startswith("content-")
            ]
        else:
            assert new.items() == old.items()
        if old.get_content_type() == "message/rfc822":
            assert new.as_bytes() == old.as_bytes()
            continue
        assert new.get_payload(decode=True) == old.get_payload(decode=True)
        # Same transfer-encoded text too, not just the same decoded bytes.
        assert new.get_payload() == old.get_payload()


def test_attachment_bytes_appear_verbatim() -> None:
    raw, out = _render("mixed_attachments.eml")
    start = raw.index(b"Content-Type: application/pdf")
    end = raw.index(b"--mix-1\r\n", start)
    assert raw[start:end] in out
    assert raw[raw.index(b"epilogue") :] == out[out.index(b"epilogue") :]


def test_attached_message_is_not_given_a_footer() -> None:
    raw, out = _render("forwarded_rfc822.eml")
    start = raw.index(b"Content-Type: message/rfc822")
    end = raw.index(b"--fwd--")
    assert raw[start:end] in out
    assert out.count(URL.encode()) == 2  # List-Unsubscribe and the one text part


def test_wrapping_keeps_the_original_entity_and_adds_a_footer_part() -> None:
    raw, out = _render("attachment_only.eml")
    msg = parse(out)
    assert msg.get_content_type() == "multipart/mixed"
    assert msg["MIME-Version"] == "1.0"
    assert msg["Subject"] == "Our new Saturday hours"
    first, footer = list(msg.iter_parts())
    assert first.get_content_type() == "application/pdf"
    assert first.get_filename() == "brochure.pdf"
    assert footer.get_content_disposition() == "inline"
    _, body = split(raw)
    assert body in out
    assert [k for k, _ in msg.items() if k.lower().startswith("content-")] == ["Content-Type"]


def test_mixed_without_text_gets_a_part_appended_not_a_wrapper() -> None:
    _, out = _render("mixed_attachment_only.eml")
    msg = parse(out)
    assert msg.get_boundary() == "only"
    assert [p.get_content_type() for p in msg.iter_parts()] == ["application/pdf", "text/plain"]


def test_flowed_footer_does_not_join_the_last_paragraph() -> None:
    _, out = _render("plain_flowed.eml")
    body = split(out)[1]
    assert b"make \r\nit easier to see us.\r\n\r\n--\r\n" in body
    assert parse(out).get_param("format") == "flowed"


def test_undecodable_bytes_are_kept_when_the_charset_stays() -> None:
    _, out = _render("invalid_utf8_8bit.eml")
    assert b"Broken byte here: \xff\xfe and valid \xc3\xa9.\r\n" in out


def test_html_footer_goes_before_the_last_closing_body_tag_in_any_case() -> None:
    _, out = _render("alternative_utf8_qp.eml")
    html = text_of(body_texts(parse(out))[1])
    assert html.endswith(HTML_RENDERED + "\n</BODY></HTML>\n")


def test_base64_lines_stay_within_76_characters() -> None:
    _, out = _render("plain_shift_jis_base64.eml")
    body = split(out)[1]
    lines = body.split(b"\r\n")
    assert max(len(line) for line in lines) == 76 or len(lines) <= 3
    assert all(len(line) <= 76 for line in lines)
    assert binascii.a2b_base64(b"".join(lines)).decode("shift_jis").startswith("土曜日も")
