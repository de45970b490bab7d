"""Normalisation: encoding, invisible characters and look-alikes must never hide PHI."""

from __future__ import annotations

import math

import pytest

from relay.phi.normalize import (
    charset_codec,
    expand,
    html_text,
    normalize,
    recase,
    subject_text,
    subject_texts,
    uninformative_case,
    unleet,
    views,
)


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


# --- charsets as the WHATWG Encoding Standard maps labels -----------------------------


def _b(text: str, codec: str) -> str:
    import base64

    return base64.b64encode(text.encode(codec)).decode()


@pytest.mark.parametrize(
    ("label", "codec"),
    [
        ("csunicode", "utf-16-le"),
        ("ucs-2", "utf-16-le"),
        ("unicodefffe", "utf-16-be"),
        ("latin1", "cp1252"),
        ("us-ascii", "cp1252"),
        ("ks_c_5601-1987", "cp949"),
        ("gb2312", "gb18030"),
        ("UTF8", "utf-8"),
        (" Shift_JIS ", "cp932"),
        ("utf-8*es", "utf-8"),
        ("iso-2022-kr", "replacement"),
        ("x-unknown-charset", None),
        ("utf-7", None),
    ],
)
def test_charset_labels_map_as_whatwg(label: str, codec: str | None) -> None:
    assert charset_codec(label) == codec


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (f"=?csunicode?B?{_b('Your HIV test', 'utf-16-le')}?=", "Your HIV test"),
        (f"=?unicodeFFFE?B?{_b('MRN 00482913', 'utf-16-be')}?=", "MRN 00482913"),
        (f"=?ks_c_5601-1987?B?{_b('검사 결과', 'cp949')}?=", "검사 결과"),
        # windows-1252 curly quotes and en dash under an iso-8859-1 label (WHATWG: 1252)
        ("=?iso-8859-1?Q?=93HIV=94_=96_results?=", '"HIV" - results'),
    ],
)
def test_declared_charsets_decode(raw: str, expected: str) -> None:
    assert subject_text(raw) == expected


def test_unknown_and_refused_labels_are_judged_every_plausible_way() -> None:
    # An unknown label is not UTF-8: both the UTF-8 and windows-1252 readings are judged.
    texts = subject_texts("=?x-bogus?Q?Su_diagn=C3=B3stico_de_c=E1ncer?=")
    assert "Su diagnóstico de cáncer" not in texts  # mixed bytes: no single clean reading
    assert any("diagn" in t and "ncer" in t for t in texts)
    assert len(texts) == 2
    assert subject_texts("=?iso-2022-kr?Q?Your_HIV_test?=") == ["Your HIV test"]


def test_a_stray_byte_never_hides_the_rest() -> None:
    texts = subject_texts("=?utf-8?Q?Your_H=FFIV_test_caf=C3=A9?=")
    assert texts[0] == "Your HIV test café"
    assert subject_texts("=?utf-8?B?" + _b("SSN 123-45-6789", "utf-8")[:-2] + "?=")[0].startswith(
        "SSN 123-45-67"
    )


@pytest.mark.parametrize(
    ("text", "uninformative", "recased"),
    [
        (
            "rv: autorizaci\u00f3n - mariela santana",
            True,
            "rv: Autorizaci\u00f3n - Mariela Santana",
        ),
        ("WILLIAM PIERCE RECORDS", True, "William Pierce records"),
        ("jAMie wALLaCE's FoOd lOgs", True, "Jamie Wallace's food logs"),
        ("la dra. mend\u00edvil respondi\u00f3", True, "la Dra. Mend\u00edvil respondi\u00f3"),
        ("see your dr. appointment", True, "see your dr. appointment"),
        ("mail to 603 old mill road, ashland ky", True, "mail to 603 Old Mill Road, Ashland ky"),
        (
            "nueva direcci\u00f3n: 4417 calle palma, laredo",
            True,
            "nueva direcci\u00f3n: 4417 Calle Palma, Laredo",
        ),
        ("FAX - HOLLOWAY, DENNIS R", True, "fax - Holloway, Dennis R"),
        # capitals that say something are kept: sentence case, brand names, no cased letters
        ("Your MyChart PrEP refill", False, None),
        ("Jamie Wallace's food logs", False, None),
        ("\u60a8\u7684\u62a5\u544a", False, None),
    ],
)
def test_case_that_says_nothing_is_read_as_a_reader_would(
    text: str, uninformative: bool, recased: str | None
) -> None:
    assert uninformative_case(text) is uninformative
    if recased is not None:
        assert recase(text) == recased
        # Capitals keep their own reading beside; lower and random case are replaced.
        # What a reader is shown (subject_text) stays as written.
        texts = subject_texts(text)
        assert texts[-1] == recased
        assert (text in texts) is (text in (text.upper(), recased))
        assert subject_text(text) == text


def test_valid_utf8_of_unknown_charset_is_read_as_utf8_only() -> None:
    # Its windows-1252 reading is mojibake whose fractions and digits ("\u00d03/4") look
    # like numbers: a clean Russian notice must not turn PHI through it.
    text = "\u041f\u043b\u0430\u043d 2:00"
    assert subject_texts("=?x-unknown?B?" + _b(text, "utf-8") + "?=") == [text]
    raw = text.encode("utf-8").decode("ascii", "surrogateescape")
    assert subject_texts(raw) == [text]


def test_raw_8bit_header_is_read_both_ways() -> None:
    assert subject_texts("diab\udcc3\udca8tes")[0] == "diabètes"
    assert subject_texts("caf\udce9")[0] == "café"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Your h e p a t i t i s  C  viral load", "Your hepatitis C viral load"),
        ("Claim no.  4 4 1 9 0 0 8 2 7 7 5  - appeal", "Claim no. 44190082775 - appeal"),
        ("Call 4 4 5 1 2 3 4", "Call 4451234"),
        ("D I A B E T E S", "DIABETES"),
        ("H I V", "HIV"),
        ("Hepatitis A y B", "Hepatitis A y B"),
        ("Vitamina D o E", "Vitamina D o E"),
        # a word spaced out with single spaces, then a capital of its own
        ("Low h e p a t i t i s B antibodies", "Low hepatitis B antibodies"),
        ("v i t a m i n D level", "vitamin D level"),
        # letters apart by one repeated dot, hyphen, underscore or asterisk
        ("Surgical tray s.t.e.r.i.l.i.z.a.t.i.o.n delay", "Surgical tray sterilization delay"),
        ("Your H-I-V test.", "Your HIV test."),
        ("c_a_n_c_e_r screening", "cancer screening"),
        ("p*r*e*g*n*a*n*c*y", "pregnancy"),
        ("Resultados de E.T.S: ya", "Resultados de ETS: ya"),
        ("Trip to the U.S.A. soon", "Trip to the USA soon"),
        # two letters, codes and versions keep their separators
        ("at 9 a.m. today, e.g. now", "at 9 a.m. today, e.g. now"),
        ("ICD-10 code A-1-B, v4.2.1", "ICD-10 code A-1-B, v4.2.1"),
        ("up-to-date X-ray", "up-to-date X-ray"),
        ("Proxy form: patient born 10\u221506\u22151951", "Proxy form: patient born 10/06/1951"),
        ("DOB 10\u204406\u20441951", "DOB 10/06/1951"),
        ("Visit at 10\u223630", "Visit at 10:30"),
        ("\uff2d\uff25\uff2d\uff22\uff25\uff32 \uff29\uff24 \uff2b\uff17\uff17", "MEMBER ID K77"),
        ("Y\u043eur \u0440\u0430th\u043el\u043egy r\u0435\u0440\u043ert", "Your pathology report"),
        ("Su ecografi\u0301a", "Su ecografía"),
        ("\u0633\u0627\u0639\u0629 \u0661\u0660", "\u0633\u0627\u0639\u0629 10"),
        ("MRN\u00a060448172", "MRN 60448172"),
        ("\ufeffTamoxifen refill", "Tamoxifen refill"),
        # spaced apart between two spaces: short words, punctuation and dates join too
        ("Reply  t o  us", "Reply to us"),
        ("Heads  u p :  your labs", "Heads up: your labs"),
        ("born  1 0 / 0 6 / 1 9 5 1  - proxy", "born 10/06/1951 - proxy"),
        ("5 0 3 - 7 7 1 - 2 0 4 8", "503-771-2048"),
        # invisibles dropped before NFKC, so a decomposed accent or syllable composes
        ("Su ecografi\u200b\u0301a", "Su ecografía"),
        ("\u1100\u200b\u1161", "\uac00"),
        # look-alike-only words read as their neighbours: Latin among Latin, else kept
        ("SIGN IN \u0422\u041e SEE", "SIGN IN TO SEE"),
        ("no \u0435\u0455 solo", "no es solo"),
        (
            "\u043e\u0442 \u0440\u0430\u043a\u0430 \u0434\u043e",
            "\u043e\u0442 \u0440\u0430\u043a\u0430 \u0434\u043e",
        ),
        (
            "\u0432\u0430\u0448 \u043d\u043e\u043c\u0435\u0440 Medicare",
            "\u0432\u0430\u0448 \u043d\u043e\u043c\u0435\u0440 Medicare",
        ),
    ],
)
def test_folding(text: str, expected: str) -> None:
    assert normalize(text) == expected


def _known(word: str) -> bool:
    return word in {"chlamydia", "result"}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("ch14myd1a r3su1t 4 u", "chlamydia result for you"),
        ("ur appt tmrw w/ Dr. Oyelaran", "your appointment tomorrow with Dr. Oyelaran"),
        ("F/U on labs", "follow-up on lab results"),
        ("D/C summary, abx list", "discharge summary, antibiotics list"),
        ("Rx# 4418237", "prescription# 4418237"),
        # identifiers, doses, times and codes are not leetspeak
        ("A1C 9.2 at 10am, COVID-19, HX26-03318, E11.9, 2nd dose", None),
        ("Parking garage reopens", None),
    ],
)
def test_expand(text: str, expected: str | None) -> None:
    assert expand(text, _known) == (text if expected is None else expected)
    assert views(text, _known) == ([text] if expected is None else [text, expected])


@pytest.mark.parametrize(
    ("markup", "expected"),
    [
        ("<p>H<b>IV</b> test</p>", "HIV test"),
        ("<div>Your</div><div>labs</div>", "Your labs"),
        ("a<br>b", "a b"),
        ("caf&eacute; &amp; &#72;&#x49;V", "café & HIV"),
        ("<!-- SSN 123-45-6789 -->ok<script>var ssn='123-45-6789'</script>", "ok"),
        ("<style>p{}</style><p>x</p>", "x"),
        ("no markup at all", "no markup at all"),
    ],
)
def test_html_text(markup: str, expected: str) -> None:
    assert " ".join(html_text(markup).split()) == expected


def test_html_text_is_linear() -> None:
    import time

    def cost(markup: str) -> float:
        # CPU time, best of three: on a loaded machine the wall clock measures the other
        # work, and even CPU time moves 3x with the load of the other core.
        best = math.inf
        for _ in range(3):
            started = time.process_time()
            html_text(markup)
            best = min(best, time.process_time() - started)
        return best

    for unit, count in (("<a", 200_000), ("<p>", 200_000), ("&", 400_000), ("<!--", 100_000)):
        # Sixteen times the markup costs about sixteen times the time; a quadratic parser
        # (the stdlib's on some of these) 256 times, and minutes of CPU in all. Under load
        # the large input loses more to the other core's cache traffic (10x for 4x seen at
        # load average 4), hence the slack.
        small, large = cost(unit * (count // 16)), cost(unit * count)
        assert large < 80 * small + 0.05, (unit, small, large)
        assert large < 10.0, (unit, large)


def test_normalize_is_linear_on_a_64k_folded_subject() -> None:
    import time

    raw = "\r\n ".join(["d i a b e t e s Jane Okafor =?UTF-8?Q?H=C3=A9?="] * 1400)[:65536]
    part = raw[: len(raw) // 40]

    def best(text: str) -> float:
        # Best of five: the machine is shared, and a linear cost is the least one seen.
        seen = []
        for _ in range(5):
            started = time.perf_counter()
            subject_texts(text)
            seen.append(time.perf_counter() - started)
        return min(seen)

    # Linear, against a fortieth of the same text timed in the same run (an absolute
    # figure belongs in bench/phi_speed.py: the load of a shared machine moves it 3x).
    # Quadratic work would be 40x slower again; 3x slack absorbs fixed costs and noise.
    assert best(raw) < 3 * 40 * best(part)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("authorization s747u5 0nlin3", "authorization status online"),
        ("Resultados de la encue574", "Resultados de la encuesta"),
        ("wORKER Fe1l FrOm 1ADd3R", "wORKER Fell FrOm lADdeR"),
        ("R3SULT5 READY", "RESULTS READY"),
        ("ends 5oon!", "ends soon!"),
        # codes, doses, times and words no list holds stay as written
        (
            "MRN AB1234, A1C, B12, 10am, H1N1, COVID-19",
            "MRN AB1234, A1C, B12, 10am, H1N1, COVID-19",
        ),
        ("policy #YJT69213369", "policy #YJT69213369"),
        ("ch14myd1a", "ch14myd1a"),
        # a subject written in leetspeak: its short words are read too
        ("c0nf1rm3 5u c1t4 3n l4 cl1n1c4", "confirme su cita en la clinica"),
        ("c4n i g3t my c4nn4bis r3n3w3d", "can i get my cannabis renewed"),
        # one leetspeak word does not make "3B" or "5u" words
        ("R3SULT5 in room 3B, 5u", "RESULTS in room 3B, 5u"),
        # most words leetspeak, in a language no list holds: read sign by sign
        ("P0u m0un k1 n4n pw0gram dy48è7", "Pou moun ki nan pwogram dyabèt"),
        ("Ma5 m4t445 4ng g0ut s4 mg4 P1l1p1n0", "Mas mataas ang gout sa mga Pilipino"),
        # codes of capitals and digits are no leetspeak words, however many
        ("MRN 1A4837, acct 3B71045, claim 55A3107", "MRN 1A4837, acct 3B71045, claim 55A3107"),
        (
            "Ref PO-4471B, INV-3310A, SKU X1037 shipped",
            "Ref PO-4471B, INV-3310A, SKU X1037 shipped",
        ),
    ],
)
def test_unleet_reads_leetspeak_words_and_leaves_codes(text: str, expected: str) -> None:
    assert unleet(text) == expected
    assert len(unleet(text)) == len(text)


# A one-letter word before a spaced-out word is its first letter or a word of its own:
# both readings are judged, so neither the Russian preposition ("u m a m y": "u mamy", at
# mother's) nor the English article is lost, and "a s t h m a" still reads "asthma".
@pytest.mark.parametrize(
    ("raw", "reading"),
    [
        ("Откуда у м а м ы синяк на руке?", "Откуда у мамы синяк на руке?"),  # noqa: RUF001
        ("Нужна справка с р е ц е п т о м", "Нужна справка с рецептом"),  # noqa: RUF001
        ("Results for a b i o p s y", "Results for a biopsy"),
        ("Resultado y b i o p s i a", "Resultado y biopsia"),
    ],
)
def test_a_one_letter_word_before_a_spaced_word_is_also_read_apart(raw: str, reading: str) -> None:
    assert reading in subject_texts(raw)


@pytest.mark.parametrize(
    ("raw", "first"),
    [("Your a s t h m a plan", "Your asthma plan"), ("Get a quote today", "Get a quote today")],
)
def test_the_joined_reading_stays_first(raw: str, first: str) -> None:
    assert subject_texts(raw)[0] == first
    assert subject_text(raw) == first
