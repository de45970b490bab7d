"""The opt-out footer must be where a mail client renders it, in every displayed body part.

Each message is sent over a real socket in a footer-bearing category; what the upstream
received is rendered with a real HTML parser (lexbor) and the footer must be in the
visible text: not in a comment, a script, a hidden element or an unclosed tag.
"""

from __future__ import annotations

import re
from email.message import EmailMessage

import pytest
from faker import Faker
from selectolax.lexbor import LexborHTMLParser

from tests.support.rawsmtp import RawSmtp
from tests.support.relay import RunningRelay
from tests.support.upstream import Sink

fake = Faker()
Faker.seed(5063)
SENDER = "app@clinic.example"
VISIBLE = "To stop receiving messages like this one"
_HIDDEN = re.compile(r"display\s*:\s*none|visibility\s*:\s*hidden", re.I)


def visible_text(markup: str) -> str:
    tree = LexborHTMLParser(markup)
    for node in tree.css("script, style, template, noscript, title, textarea"):
        node.decompose()
    for node in tree.css("[style], [hidden]"):
        if "hidden" in node.attributes or _HIDDEN.search(node.attributes.get("style") or ""):
            node.decompose()
    body = tree.body
    return " ".join((body.text() if body is not None else "").split())


def message(body_head: bytes, body: bytes) -> bytes:
    return (
        (
            f"From: {SENDER}\r\nTo: someone@example.org\r\nSubject: Our new Saturday hours\r\n"
            f"Message-ID: <{fake.uuid4()}@clinic.example>\r\nX-PHI-Category: education\r\n"
            "MIME-Version: 1.0\r\n"
        ).encode()
        + body_head
        + b"\r\n"
        + body
    )


async def send(relay: RunningRelay, sink: Sink, data: bytes) -> EmailMessage:
    conn = await RawSmtp.ready(relay.port, relay.pki.client_context())
    try:
        answer = await conn.mail(SENDER, [fake.email()], data)
    finally:
        await conn.close()
    assert answer.startswith("250 2.0.0 Delivered"), answer
    assert len(sink.received) == 1
    return sink.received[0].message


def html_parts(msg: EmailMessage) -> list[str]:
    return [str(p.get_content()) for p in msg.walk() if p.get_content_type() == "text/html"]


HTML = b"Content-Type: text/html; charset=utf-8\r\n"


@pytest.mark.parametrize(
    "markup",
    [
        b"<html><body><p>Hello and welcome.</p><!-- tracking pixel below",
        b"<html><body><p>Hello.</p><!-- old layout </body> --><p>More news.</p>",
        b"<html><body><p>Hello.</p><script>var end = '</body>';</script><p>More.</p>",
        b"<html><body><p>Hello.</p><script>var end = '</body>';",
        b'<html><body><p>Hello.</p><div style="display:none"><p>preheader',
        b'<html><body><p>Hello.</p><img alt="logo',
        b"<html><body><p>Hello.</p><style>p { color: red } </body>",
        b"<html><body><p>Hello.</p><template><p>draft</p></body></html>",
    ],
    ids=[
        "unclosed-comment",
        "body-end-in-comment",
        "body-end-in-script",
        "unclosed-script",
        "unclosed-hidden-div",
        "unclosed-attribute",
        "unclosed-style",
        "unclosed-template",
    ],
)
async def test_html_footer_is_rendered(relay: RunningRelay, sink: Sink, markup: bytes) -> None:
    got = await send(relay, sink, message(HTML, markup + b"\r\n"))
    (html,) = html_parts(got)
    text = visible_text(html)
    assert VISIBLE in text, text
    assert "Hello" in text  # the sender's own content is still there


async def test_named_html_alternative_gets_the_footer(relay: RunningRelay, sink: Sink) -> None:
    body = (
        b"--alt\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\nHello.\r\n"
        b'--alt\r\nContent-Type: text/html; charset=us-ascii; name="newsletter.html"\r\n'
        b'Content-Disposition: inline; filename="newsletter.html"\r\n\r\n'
        b"<html><body><p>Hello.</p></body></html>\r\n--alt--\r\n"
    )
    got = await send(
        relay, sink, message(b'Content-Type: multipart/alternative; boundary="alt"\r\n', body)
    )
    (html,) = html_parts(got)
    assert VISIBLE in visible_text(html)
    plain = next(p for p in got.walk() if p.get_content_type() == "text/plain")
    assert VISIBLE in str(plain.get_content())


async def test_text_enriched_gets_the_footer(relay: RunningRelay, sink: Sink) -> None:
    body = b"<bold>Hello.</bold>\r\n\r\nSee you <italic>soon</italic>.\r\n<param>x-y</param>\r\n"
    got = await send(
        relay, sink, message(b"Content-Type: text/enriched; charset=us-ascii\r\n", body)
    )
    assert got.get_content_type() == "text/enriched"  # not wrapped, the part itself carries it
    text = str(got.get_content())
    assert text.startswith(body.decode())
    assert VISIBLE in text
    # RFC 1896: footer lines are paragraphs (two line ends) and '<' is doubled.
    footer = text[len(body) :]
    assert "\r\n\r\n" in footer and "<" not in footer.replace("<<", "")


async def test_text_enriched_inside_unclosed_param(relay: RunningRelay, sink: Sink) -> None:
    body = b"Hello.\r\n<param>colour"
    got = await send(
        relay, sink, message(b"Content-Type: text/enriched; charset=us-ascii\r\n", body + b"\r\n")
    )
    text = str(got.get_content())
    param_end = text.lower().rfind("</param>")
    assert param_end > 0 and VISIBLE in text[param_end:]


async def test_attached_html_file_untouched(relay: RunningRelay, sink: Sink) -> None:
    attachment = (
        b'Content-Type: text/html; charset=us-ascii; name="report.html"\r\n'
        b'Content-Disposition: attachment; filename="report.html"\r\n\r\n'
        b"<html><body><p>Quarterly figures.</p></body></html>"
    )
    body = (
        b"--mix\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\nHello.\r\n"
        b"--mix\r\n" + attachment + b"\r\n--mix--\r\n"
    )
    got = await send(
        relay, sink, message(b'Content-Type: multipart/mixed; boundary="mix"\r\n', body)
    )
    assert attachment in sink.received[0].data  # byte-identical
    plain = next(p for p in got.walk() if p.get_content_type() == "text/plain")
    assert VISIBLE in str(plain.get_content())
