"""Normalisation: encoding, invisible characters and look-alikes must never hide PHI."""

from __future__ import annotations

import pytest

from relay.phi.normalize import normalize, subject_text


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("Plain subject", "Plain subject"),
        # folded header: CRLF + WSP is unfolded, whitespace collapsed
        ("Your lab\r\n results", "Your lab results"),
        ("Your lab\r\n\tresults\r\n  are in", "Your lab results are in"),
        # RFC 2047, B and Q
        ("=?UTF-8?B?WW91ciBISVYgdGVzdCByZXN1bHRz?=", "Your HIV test results"),
        ("=?utf-8?q?Re=3A_Jane_Okafor?=", "Re: Jane Okafor"),
        ("=?ISO-8859-1?Q?Sra._L=F3pez?=", "Sra. López"),
        ("=?windows-1252?Q?caf=E9?=", "café"),
        # whitespace between adjacent encoded-words is dropped (RFC 2047 6.2)
        ("=?UTF-8?B?U1NOIDEyMy00?= =?UTF-8?B?NS02Nzg5?=", "SSN 123-45-6789"),
        ("=?UTF-8?Q?MRN_004?=\r\n =?UTF-8?Q?82913?=", "MRN 00482913"),
        # a UTF-8 character split across two encoded-words ("ó" = C3 B3)
        ("=?UTF-8?Q?depresi=C3?= =?UTF-8?Q?=B3n?=", "depresión"),
        # encoded-word between plain text keeps the surrounding spaces
        ("Your =?UTF-8?Q?depresi=C3=B3n?= plan", "Your depresión plan"),
        # language suffix (RFC 2231) and unknown charset
        ("=?UTF-8*en?Q?Hello?=", "Hello"),
        ("=?x-unknown?Q?Hello?=", "Hello"),
        # malformed: bad base64 padding, stray '=' in Q, missing end
        ("=?UTF-8?B?SElW?=", "HIV"),
        ("=?UTF-8?B?SElWIHJlc3VsdHM?=", "HIV results"),
        ("=?UTF-8?Q?a=ZZb?=", "a=ZZb"),
        ("=?UTF-8?B?SElW", "=?UTF-8?B?SElW"),
        # double encoding
        ("=?UTF-8?Q?=3D=3FUTF-8=3FQ=3FHIV=3F=3D?=", "HIV"),
        # zero-width and invisible characters
        ("Your A\u200b1C results", "Your A1C results"),
        ("H\u200dI\u2060V\ufeff", "HIV"),
        ("d\u00adiabetes", "diabetes"),
        # confusables: Cyrillic, Greek, fullwidth, mathematical letters
        ("Your \u0410\u0031C results", "Your A1C results"),
        ("H\u0399V", "HIV"),
        ("\uff2d\uff32\uff2e 00482913", "MRN 00482913"),
        (
            "\U0001d403\U0001d422\U0001d41a\U0001d41b\U0001d41e\U0001d42d\U0001d41e\U0001d42c",
            "Diabetes",
        ),
        ("SSN 123\u201345\u20146789", "SSN 123-45-6789"),
        # combining marks stacked to break words
        ("d\u0338iabetes", "diabetes"),
        # undecodable octets from a bytes parser
        ("caf\udce9", "café"),
    ],
)
def test_subject_text(raw: str, expected: str) -> None:
    assert subject_text(raw) == expected


@pytest.mark.parametrize(
    "raw",
    ["", "=?", "=??=", "=?UTF-8?X?abc?=", "=?UTF-8?B??=", "\x00\x01", "=?" * 1000, "\udcff" * 5],
)
def test_subject_text_never_raises(raw: str) -> None:
    assert isinstance(subject_text(raw), str)


def test_case_is_kept() -> None:
    assert subject_text("Re: Jane OKAFOR") == "Re: Jane OKAFOR"


def test_normalize_body_text() -> None:
    assert normalize("  SSN\u00a0123-45-6789 \n\n ok ") == "SSN 123-45-6789 ok"
