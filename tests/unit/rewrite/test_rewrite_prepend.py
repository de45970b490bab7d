"""PrependText: an uncertain subject moves to the top of every inline text part."""

from __future__ import annotations

from email.message import EmailMessage

from rewrite_support import body_texts, parse, text_of

from relay.model import PrependText, ReplaceSubject
from relay.rewrite import render


def _message(html: bool, charset: str = "utf-8") -> tuple[bytes, EmailMessage]:
    msg = EmailMessage()
    msg["From"] = "clinic@example.org"
    msg["To"] = "pat@example.net"
    msg["Subject"] = "Checking in after your procedure"
    msg.set_content("Hello,\nsee you soon.\n", charset=charset)
    if html:
        msg.add_alternative("<html><body><p>Hello</p></body></html>\n", subtype="html")
    raw = msg.as_bytes(policy=msg.policy.clone(linesep="\r\n"))
    return raw, parse(raw)


def test_original_subject_goes_to_the_top_of_each_text_part() -> None:
    raw, msg = _message(html=True)
    mods = (ReplaceSubject("A message from your care team"), PrependText("Subject: Checking in"))
    out = parse(render(raw, msg, mods, recipient=None, category="treatment", links=None))
    assert out["Subject"] == "A message from your care team"
    plain, html = body_texts(out)
    assert text_of(plain) == "Subject: Checking in\n\nHello,\nsee you soon.\n"
    assert text_of(html).startswith("<html><body><p>Subject: Checking in</p>\n<p>Hello</p>")


def test_a_text_outside_the_parts_charset_moves_the_part_to_utf8() -> None:
    raw, msg = _message(html=False, charset="us-ascii")
    mods = (PrependText("Subject: Su ecografía"),)
    out = parse(render(raw, msg, mods, recipient=None, category="treatment", links=None))
    [plain] = body_texts(out)
    assert plain.get_content_charset() == "utf-8"
    assert text_of(plain).startswith("Subject: Su ecografía\n\nHello,")
