"""The footer rewrite over messages the email package generates in many random shapes."""

from __future__ import annotations

import random
from email.message import EmailMessage

import pytest
from faker import Faker
from rewrite_support import RECIPIENT, URL, Links, body_texts, defects, other_leaves, parse, text_of

from relay.model import AppendFooter, ListUnsubscribe
from relay.rewrite import render

CHARSETS = ["us-ascii", "utf-8", "iso-8859-1", "windows-1252", "shift_jis", "iso-2022-jp"]
CTES = ["7bit", "8bit", "quoted-printable", "base64"]
FOOTERS = [
    AppendFooter("--\nUnsubscribe: {unsubscribe_url}", '<p><a href="{unsubscribe_url}">x</a></p>'),
    AppendFooter(
        "Abmelden \u2014 {unsubscribe_url}", '<p>\u00e9 <a href="{unsubscribe_url}">x</a></p>'
    ),
]
WORDS = {
    "us-ascii": "Saturday hours",
    "utf-8": "Saturday \u2764 hours",
    "iso-8859-1": "Caf\u00e9 hours",
    "windows-1252": "Caf\u00e9 \u2013 hours",
    "shift_jis": "\u571f\u66dc\u65e5",
    "iso-2022-jp": "\u571f\u66dc\u65e5",
}


def _text_part(rng: random.Random, fake: Faker, subtype: str) -> EmailMessage:
    charset = rng.choice(CHARSETS)
    cte = rng.choice(CTES)
    if charset == "iso-2022-jp" or (cte == "7bit" and charset != "us-ascii"):
        cte = "7bit" if charset in ("us-ascii", "iso-2022-jp") else "base64"
    sentence = f"{fake.sentence()} {WORDS[charset]}\n"
    if subtype == "html":
        body = f"<html><body><p>{sentence}</p></body></html>\n"
        if rng.random() < 0.3:
            body = f"<p>{sentence}</p>\n"
    else:
        body = sentence * rng.randint(1, 4)
    part = EmailMessage()
    part.set_content(body, subtype=subtype, charset=charset, cte=cte)
    return part


def _attachment(rng: random.Random) -> EmailMessage:
    part = EmailMessage()
    data = rng.randbytes(rng.randint(0, 3000))
    part.set_content(data, maintype="application", subtype="octet-stream", filename="f.bin")
    return part


def _message(seed: int) -> bytes:
    rng = random.Random(seed)
    fake = Faker()
    fake.seed_instance(seed)
    shape = rng.choice(["plain", "html", "alternative", "mixed", "related", "deep"])
    if shape in ("plain", "html"):
        msg = _text_part(rng, fake, shape)
    else:
        alt = EmailMessage()
        alt.make_alternative()
        alt.attach(_text_part(rng, fake, "plain"))
        alt.attach(_text_part(rng, fake, "html"))
        msg = alt
        if shape in ("mixed", "deep"):
            msg = EmailMessage()
            msg.make_mixed()
            msg.attach(alt)
            for _ in range(rng.randint(1, 3)):
                msg.attach(_attachment(rng))
        if shape == "deep":
            outer = EmailMessage()
            outer.make_mixed()
            outer.attach(msg)
            outer.attach(_text_part(rng, fake, "plain"))
            msg = outer
        if shape == "related":
            msg = EmailMessage()
            msg.make_related()
            msg.attach(alt)
            msg.attach(_attachment(rng))
    msg["From"] = "news@clinic.example"
    msg["To"] = "patient@example.net"
    msg["Subject"] = "Our new Saturday hours"
    return msg.as_bytes(policy=msg.policy.clone(linesep="\r\n"))


@pytest.mark.parametrize("seed", range(150))
def test_generated_message_gets_one_footer_per_text_part(seed: int) -> None:
    raw = _message(seed)
    original = parse(raw)
    footer = FOOTERS[seed % 2]
    out = render(
        raw,
        original,
        (footer, ListUnsubscribe("marketing")),
        recipient=RECIPIENT,
        category="marketing",
        links=Links(),
    )
    result = parse(out)
    assert defects(result) == defects(original) == []
    before, after = body_texts(original), body_texts(result)
    assert len(after) == len(before) > 0
    for old, new in zip(before, after, strict=True):
        text, old_text = text_of(new), text_of(old)
        assert text.count(URL) == 1
        if new.get_content_type() == "text/html":
            # Inserted before </body>, or appended: taking it out gives the original back.
            assert text.replace(footer.html.replace("{unsubscribe_url}", URL) + "\n", "", 1) == (
                old_text
            )
        else:
            rendered = footer.text.replace("{unsubscribe_url}", URL)
            assert text == old_text.rstrip("\n") + "\n\n" + rendered + "\n"
        old_cte = str(old.get("content-transfer-encoding", "7bit")).lower()
        new_cte = str(new.get("content-transfer-encoding", "7bit")).lower()
        # Same encoding family; 7bit may become quoted-printable for a non-ASCII footer.
        assert new_cte == old_cte or (old_cte, new_cte) == ("7bit", "quoted-printable")
    for old, new in zip(other_leaves(original), other_leaves(result), strict=True):
        assert new.items() == old.items()
        assert new.get_payload() == old.get_payload()
