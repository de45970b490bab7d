"""Unsubscribe links: https URL shape, mailto with the token in the subject, base URL rules."""

from __future__ import annotations

import pytest

from relay.links import check_base_url, make_link_maker, token_from_subject
from relay.tokens import TokenCodec


def test_https_and_mailto_links_carry_an_opening_token(codec: TokenCodec) -> None:
    make = make_link_maker(codec, "https://mail.example.org/", "Unsubscribe@Example.org")
    links = make("Jane@Example.com", "marketing")
    prefix = "https://mail.example.org/u/"
    assert links.https.startswith(prefix)
    token = links.https[len(prefix) :]
    assert codec.open(token).recipient == "jane@example.com"
    assert links.mailto == f"mailto:unsubscribe@example.org?subject=unsubscribe-{token}"


def test_no_mailto_when_none_given(codec: TokenCodec) -> None:
    links = make_link_maker(codec, "https://mail.example.org/prefix", None)(
        "a@b.example", "education"
    )
    assert links.mailto is None
    assert links.https.startswith("https://mail.example.org/prefix/u/")


@pytest.mark.parametrize(
    "url",
    ["http://127.0.0.1:8025", "http://[::1]:8025", "http://localhost", "http://127.3.4.5/x"],
)
def test_plain_http_refused_even_for_loopback(url: str) -> None:
    # RFC 8058: mail providers ignore a List-Unsubscribe that is not https (issue 9, item 22).
    with pytest.raises(ValueError, match="must use https"):
        check_base_url(url + "/")


def test_https_base_url_loses_its_trailing_slash() -> None:
    assert check_base_url("https://127.0.0.1:8025/") == "https://127.0.0.1:8025"


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("http://mail.example.org", "must use https"),
        ("http://10.0.0.5:8025", "must use https"),
        ("ftp://mail.example.org", "must start with https://"),
        ("mail.example.org", "absolute URL"),
        ("https://mail.example.org/?a=1", "query, fragment or credentials"),
        ("https://user:pw@mail.example.org", "query, fragment or credentials"),
    ],
)
def test_bad_base_urls_say_why(codec: TokenCodec, url: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        make_link_maker(codec, url, None)


def test_bad_mailto_is_refused(codec: TokenCodec) -> None:
    with pytest.raises(ValueError, match="unsubscribe mailto is not an address"):
        make_link_maker(codec, "https://mail.example.org", "nobody")


def test_token_from_a_replied_subject(codec: TokenCodec) -> None:
    links = make_link_maker(codec, "https://m.example", "u@m.example")(
        "jane@example.com", "marketing"
    )
    assert links.mailto is not None
    subject = "Re: " + links.mailto.split("subject=", 1)[1]
    token = token_from_subject(subject)
    assert token is not None
    assert codec.open(token).category == "marketing"
    assert token_from_subject("Re: hello") is None
