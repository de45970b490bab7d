"""Named rules for the identifier forms and health facts the labelling guide adds.

Each rule is a function of one subject (its normalised text and folded form) that
returns findings carrying the rule's id; `RULES` lists them for the detector. Every
rule has its own table of examples in tests/unit/phi/test_phi_rules.py. Word
classes come from data files (data/care_words.tsv) or are small closed sets of
grammar words written here.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from relay.phi import kinds, lexicon
from relay.phi.api import Finding
from relay.phi.normalize import fold, normalize

DATA = Path(__file__).with_name("data")


@dataclass(frozen=True, slots=True)
class Subject:
    """What a rule reads: the normalised text and its folded form (same offsets)."""

    text: str
    folded: str
    words: frozenset[str]
    has_digit: bool = True
    # Spans of the health terms (conditions, medicines, tests, procedures) the detector
    # found, for the rules that need a term in a given place (health.audience).
    terms: tuple[tuple[int, int], ...] = ()


Rule = Callable[[Subject], list[Finding]]

# --- cheap tests that let a rule skip its pattern ----------------------------------------
#
# A pattern is searched only when the subject holds something every match of it must
# hold, so skipping it never changes a finding: a literal word that a match has between
# word boundaries is one of the text's letter-and-digit runs (`runs`); digits a match
# needs are in the text. Literal tests on a pattern compiled with re.I are made only
# on ASCII text, where ignoring case is lower-casing (elsewhere the long s, U+017F, matches "s").

_RUN = re.compile(r"[^\W_]+")
_LITERAL_WORD = re.compile(r"[a-z0-9]+\??")


def runs(folded: str, words: frozenset[str]) -> frozenset[str]:
    """The maximal runs of letters and digits in `folded`; `words` are its tokens.

    A word of a pattern between word boundaries (`\\bword\\b`, or after a space and
    before a non-word character) can only match one of these. Tokens join runs with an
    apostrophe or hyphen, so without those in the text the tokens are the runs.
    """
    if "-" not in folded and "'" not in folded:
        return words
    return frozenset(_RUN.findall(folded))


def first_words(alternation: str) -> frozenset[str]:
    """Every word an alternative of `alternation` ("a1c|blood sugar|platelets?") starts with.

    Only plain words, spaces and an optional last letter ("platelets?") are understood;
    anything else raises, so a pattern that outgrows this test is noticed at import.
    """
    out: set[str] = set()
    for alternative in alternation.split("|"):
        word = alternative.split(" ")[0]
        if _LITERAL_WORD.fullmatch(word) is None:
            raise ValueError(f"not a plain word: {word!r}")
        if word.endswith("?"):
            out.add(word[:-2])  # without the optional letter
            word = word[:-1]
        out.add(word)
    return frozenset(out)


# --- shared word classes (data/rule_words.tsv) -------------------------------------------


@cache
def _rule_words() -> dict[str, frozenset[str]]:
    grouped: dict[str, set[str]] = {}
    for line in (DATA / "rule_words.tsv").read_text(encoding="utf-8").splitlines():
        if line and not line.startswith("#"):
            cls, word = line.split("\t")
            grouped.setdefault(cls, set()).add(word)
    return {cls: frozenset(ws) for cls, ws in grouped.items()}


def word_class(name: str) -> frozenset[str]:
    """The words of one class of rule_words.tsv."""
    return _rule_words()[name]


_YOU = word_class("you")
_CARE = word_class("care")
_EVENT = word_class("event")
_WEEKDAY = (
    r"mon(?:day)?|tue(?:s(?:day)?)?|wed(?:s|nesday)?|thu(?:r(?:s(?:day)?)?)?|fri(?:day)?|"
    r"sat(?:urday)?|sun(?:day)?|lunes|martes|miercoles|jueves|viernes|sabado|domingo|"
    r"segunda|terca|quarta|quinta|sexta|lundi|mardi|mercredi|jeudi|vendredi|samedi|dimanche|"
    r"miyerkules|huwebes|biyernes|linggo|lendi|madi|mekredi|jedi|vandredi|samdi|dimanch|"
    r"today|tonight|tomorrow|tmrw|hoy|manana|esta (?:tarde|noche|manana)|hoje|amanha|"
    r"demain|aujourd'hui|ce soir|bukas|ngayon|this (?:morning|afternoon|evening)"
)
_CLOCK = (
    r"\d{1,2}(?::\d{2})?\s?(?:a\.?m\.?|p\.?m\.?)(?![a-z])|\d{1,2}:\d{2}(?![\d/])|\d{1,2}h\d{0,2}\b|"
    r"\d{1,2} h\b|(?:a las|as|a la|at|a|alas|ng|sa) \d{1,2}(?::\d{2})?\b"
)
_CLOCK_HINT = re.compile(r"\d(?::\d\d|\s?[ap]\.?m|h| h\b)|(?:las|as|at|a|alas|ng|sa) \d")
_CARE_TIME = re.compile(
    rf"\b(?:{_WEEKDAY})\b[^.!?;]{{0,40}}?(?:{_CLOCK})|(?:{_CLOCK})[^.!?;]{{0,30}}?\b(?:{_WEEKDAY})\b"
)


def care_time(s: Subject) -> list[Finding]:
    """id.care-time: a weekday or today/tonight/tomorrow with a clock time, about care.

    "Wed 4:10 pm", "tomorrow, 7:30 a.m.", "martes a las 4 pm". Needs the reader or a
    care word; an event announced to all ("Webinar Tue 6 pm") is not about a person.
    """
    if not s.has_digit or _CLOCK_HINT.search(s.folded) is None:
        return []
    m = _CARE_TIME.search(s.folded)
    if m is None:
        return []
    you = not s.words.isdisjoint(_YOU)
    care = not s.words.isdisjoint(_CARE)
    if not (you or care) or (not s.words.isdisjoint(_EVENT) and not you):
        return []
    return [Finding(kinds.DATE, m.start(), m.end(), 0.8, "id.care-time")]


_AMOUNT = re.compile(
    r"(?:[$€£₱]|r\$|us\$|usd|eur|mxn|php)\s?\d[\d,.]*|\d[\d,.]*\s?(?:[$€£]|usd|eur|dollars|"
    r"dolares|pesos|euros|reais)"
)
_BILLING = word_class("billing")
_BUSINESS = word_class("business")
# Prices in offers are marketing, not a person's bill.
_OFFER = word_class("offer")
# A supplier's invoice ("Invoice #A-99172 - scope repair, $4,120", "Facture 88120 : 1 240 €")
# is the business's own; a patient's invoice says whose it is (your, my, Dad's), what care
# it is for, or names a health term ("Su factura de anestesia de $645.20").
_INVOICE = word_class("invoice")
_SELF = word_class("self")
_NOT_SUPPLIER = _YOU | _SELF | _CARE | lexicon.FAMILY


def billing_amount(s: Subject) -> list[Finding]:
    """id.amount: a money amount with a patient-billing word ("$40 copay", "Usted debe $318"),
    not a supplier's invoice (no you- or I-word, relative, care word or health term beside
    the invoice)."""
    if not s.has_digit or s.words.isdisjoint(_BILLING) or not s.words.isdisjoint(_BUSINESS):
        return []
    m = _AMOUNT.search(s.folded)
    if m is None:
        return []
    if not s.words.isdisjoint(_OFFER) and s.words.isdisjoint(_YOU):
        return []
    if not s.words.isdisjoint(_INVOICE) and s.words.isdisjoint(_NOT_SUPPLIER) and not s.terms:
        return []
    return [Finding(kinds.ACCOUNT, m.start(), m.end(), 0.9, "id.amount")]


_ENDING = re.compile(
    r"\b(?:ending(?: in| with)?|ends(?: in| with)|last (?:four|4)(?: digits)?(?: of)?|"
    r"terminad[ao] en|que termina en|ultimos (?:4|cuatro)(?: digitos)?|final|"
    r"terminando em|com final)\W{0,3}(?:[a-z#]+\W{1,3}){0,2}?-?(\d{4})\b"
)
# Every cue of _ENDING holds one of these.
_ENDING_CUES = ("end", "last", "termin", "ultimos", "final")
_SOCIAL = word_class("social")


def ending_digits(s: Subject) -> list[Finding]:
    """id.ending: a labelled tail of a number ("acct ending in 0463", "Social ending -5184")."""
    folded = s.folded
    if not s.has_digit or not any(cue in folded for cue in _ENDING_CUES):
        return []
    m = _ENDING.search(folded)
    if m is None:
        return []
    kind = kinds.SSN if not s.words.isdisjoint(_SOCIAL) else kinds.ACCOUNT
    return [Finding(kind, m.start(), m.end(), 0.9, "id.ending")]


_DX = re.compile(r"(?:^|[\s(\[|,;-])(?:dx|ddx|diagnosis|diagnostico|diagnostic)\s?[:#-]\s?\w", re.I)


def dx_cue(s: Subject) -> list[Finding]:
    """health.dx: a labelled diagnosis ("Dx: new onset afib", "Diagnóstico: asma")."""
    folded = s.folded
    if folded.isascii() and "dx" not in folded and "diagnos" not in folded:
        return []  # every cue holds "dx" or "diagnos"
    m = _DX.search(folded)
    if m is None:
        return []
    return [Finding(kinds.CONDITION, m.start(), m.end(), 0.9, "health.dx")]


_RECORD_CUE = re.compile(
    r"\b(?:mrn|mr|med\.? ?rec\.?(?: no\.?)?|medical record(?: no\.?| number| #)?|chart|"
    r"accession|acc|encounter|enc|patient|pt|specimen|lab(?:oratory)? id|requisition|"
    r"historia clinica|expediente|hc|numero de paciente|n(?:o|umero)\.? de expediente|"
    r"prontuario|dossier(?: medical)?|dosye(?: medikal)?|ma benh nhan|"
    r"member|subscriber|beneficiary|afiliado|medicaid|mbi|policy|poliza)"
    r"\s?(?:#|no\.?|n\.?o|nº|n°|num\.?|number|id|numero|es|is)?\s?[:#.]?\s?"
    r"([a-z]{0,4}[/-]?\d[\d/.-]{2,}[\da-z]*|[a-z]{1,3}\d{3,}[\da-z-]*)"
)
_MEMBER_CUES = word_class("member-cue")
# A year, or a round-the-clock idiom ("group 24/7", "patient 24x7", "24/365"), follows a
# cue word often and is never a record number.
_NOT_RECORD = re.compile(r"(?:19|20)\d\d|24[/x](?:7|365)")


def record_cue(s: Subject) -> list[Finding]:
    """id.record-cue: MR#, accession no., chart #, historia clínica and other record labels.

    Any alphanumeric shape with at least three digits counts ("MR# 60-448-172",
    "Accession no. HX26-03318", "Historia clínica HC/55-0921").
    """
    if not s.has_digit:
        return []
    out = []
    for m in _RECORD_CUE.finditer(s.folded):
        value = m.group(1)
        if sum(ch.isdigit() for ch in value) < 3 or _NOT_RECORD.fullmatch(value):
            continue
        cue = m.group(0).split()[0].rstrip("#:.")
        kind = kinds.MEMBER_ID if cue in _MEMBER_CUES else kinds.MRN
        out.append(Finding(kind, m.start(1), m.end(1), 0.9, "id.record-cue"))
    return out


# The audience is the organisation's own patients or members; "people", "anyone" or
# "families" describe who a public programme is for (B6), not who receives it.
_AUDIENCE = (
    "patients?|members?|clients?|everyone|those|users|"
    "participants|residents|pacientes|miembros|afiliados|todos|todas|quienes|usuarios|"
    "familias|clientes"
)
_AUDIENCE_OF_OURS = "users|patients|members|families"
_SEGMENT_WORDS = first_words(_AUDIENCE) | first_words(_AUDIENCE_OF_OURS)
_SEGMENT = re.compile(
    rf"\b(?:{_AUDIENCE})\b\s(?:[\w'-]+\s){{0,2}}?"
    r"(?:taking|on|prescribed|using|receiving|who (?:take|use|have|are|had|receive)|"
    r"with|in (?:our|the)|enrolled|living with|diagnosed|scheduled for|recovering|"
    r"que (?:toman|usan|reciben|tienen|padecen|viven)|con|en (?:el|nuestro|tratamiento)|"
    r"inscritos|diagnosticados)\b"
    rf"|\b[\w-]+ (?:{_AUDIENCE_OF_OURS}) (?:we (?:care for|serve|treat)|of ours)\b"
)


# "Your patients with COPD may qualify": the reader's own patients or members make the
# reader a clinician or a plan, not one of the segment (mail to providers, guide R3.1).
_READERS_OWN = re.compile(r"\b(?:your|sus|tus|vos|votre|seus|suas)\s$")


def segment(s: Subject) -> list[Finding]:
    """health.segment: a subject addressed to people with a condition, drug or device.

    "For members taking GLP-1 meds: …", "A todos los que toman litio: …". The
    segment cue alone is not enough: the detector adds this rule's finding only when
    the subject also names a health term (see PhiDetector._scan_view).
    """
    if runs(s.folded, s.words).isdisjoint(_SEGMENT_WORDS):
        return []
    for m in _SEGMENT.finditer(s.folded):
        if _READERS_OWN.search(s.folded, 0, m.start()) is None:
            return [Finding(kinds.CONDITION, m.start(), m.end(), 0.9, "health.segment")]
    return []


_AUDIENCE_NOUNS = word_class("audience")
_ADDRESS = word_class("address")
_EDUCATION = word_class("education")
_AUDIENCE_NOUN = re.compile(rf"\b(?:{'|'.join(sorted(_AUDIENCE_NOUNS))})\b")
# Between a term and the audience noun after it: up to two words ("heart failure clinic
# patients", "home hemo patients"); between the noun and a term after it, a linking word
# and up to two determiners ("pacientes en diálisis", "patients on the lithium protocol").
# A preposition between a term and the noun makes the term the topic, not the audience:
# "Flu shots for employees" is an offer to all.
_LINKS = _ADDRESS | word_class("link")
_BEFORE_NOUN = re.compile(r"(?:[\s/-][\w'-]+){0,2}[\s-]")
_AFTER_NOUN = re.compile(
    r"\s(?:who are |que estan |)(?:on|with|in|of|taking|using|receiving|getting|en|con|de|del|"
    r"da|do|dos|das|em|com|no|na|sous|avec|under)\s(?:(?:our|the|a|an|home|el|la|los|las|"
    r"nuestro|nuestra|programa|program|le|les|o|os|as|un|una)\s){0,2}"
)
# After the noun, what makes it a heading: a colon or dash, "we care for", the end.
_HEADING_END = re.compile(
    r"(?:\s(?:we (?:care for|serve|treat)|of ours|here))?\s?(?:[:,\u2013\u2014]|-\s|$)"
)
# A named clinician's patients (guide R2.3: "Dr. Varga is retiring - what it means for her
# patients"): the clinician's practice is a care relationship with the reader.
_DOCTOR = re.compile(r"\b(?:dr|dra|doctor|doctora|docteur|dre)\b\.?\s[a-z]")
_DOCTORS_PATIENTS = re.compile(
    r"\b(?:dr|dra|doctor|doctora)\.?\s[a-z][\w-]*'s\s(?:[\w-]+\s)?patients\b|"
    r"\b(?:patients|pacientes|patientes)\s(?:of|de|del|du)\s(?:la\s)?(?:dr|dra|doctor|doctora|docteur)\b|"
    r"\b(?:his|her|their|sus|ses|seus|suas)\s(?:[\w-]+\s)?(?:patients|pacientes|patientes)\b"
)


def _addressed(folded: str, start: int, end: int) -> bool:
    """Whether the audience phrase at [start, end) is who the subject is addressed to."""
    before = folded[max(0, start - 24) : start].split()
    return not _ADDRESS.isdisjoint(before[-3:]) or _HEADING_END.match(folded, end) is not None


def audience(s: Subject) -> list[Finding]:
    """health.audience: a health term naming who the subject is addressed to.

    "Lithium patients: new lab partner", "To our glaucoma patients", "Para pacientes en
    diálisis: …", "Dr. Szabo retiring - info for his patients" (guide R2.3: a subject
    addressed to people with a condition, a drug, a device or a clinician's care implies
    the reader is one of them). The term must stand next to the audience noun (before it,
    or after a linking word), and the phrase must open the subject, follow to/for/para…
    or end in a colon or dash. General education (tips, guide, webinar…) is left to the
    other rules: "Cancer patients: 5 tips for eating well" is no one's record.
    """
    words = runs(s.folded, s.words)
    if words.isdisjoint(_AUDIENCE_NOUNS) or not words.isdisjoint(_EDUCATION):
        return []
    folded = s.folded
    out = []
    if _DOCTOR.search(folded) is not None:
        m = _DOCTORS_PATIENTS.search(folded)
        if m is not None:
            out.append(Finding(kinds.PROVIDER, m.start(), m.end(), 0.9, "health.audience"))
    if not s.terms:
        return out
    for m in _AUDIENCE_NOUN.finditer(folded):
        a, b = m.span()
        for ts, te in s.terms:
            if (
                te <= a
                and _BEFORE_NOUN.fullmatch(folded, te, a) is not None
                and _LINKS.isdisjoint(folded[te:a].split())
            ):
                phrase = (ts, b)
            elif ts >= b:
                link = _AFTER_NOUN.match(folded, b)
                if link is None or link.end() != ts:
                    continue
                phrase = (a, te)
            else:
                continue
            if _addressed(folded, phrase[0], phrase[1]):
                out.append(Finding(kinds.CONDITION, phrase[0], phrase[1], 0.9, "health.audience"))
                return out
    return out


@dataclass(frozen=True, slots=True)
class _CareWords:
    single: frozenset[str]  # one-word care words (whole words)
    phrases: tuple[str, ...]  # care phrases, in the order they are tried
    unspaced: re.Pattern[str]  # care words of unspaced scripts, matched anywhere
    you: frozenset[str]  # you-words (whole words)
    you_anywhere: tuple[str, ...]  # the you-words with a space or in another script
    # The same for ASCII text, which holds no word of another script: fewer to try.
    ascii_phrases: tuple[str, ...]
    ascii_you_anywhere: tuple[str, ...]


@cache
def _care_words() -> _CareWords:
    """The care and you-words of data/care_words.tsv, folded.

    A you-word with a space ("mon fils", "anak ko") or in another script is looked
    for anywhere in the folded subject; the others are whole words.
    """
    care: set[str] = set()
    you: set[str] = set()
    for line in (DATA / "care_words.tsv").read_text(encoding="utf-8").splitlines():
        if not line or line.startswith("#"):
            continue
        _lang, cls, word = line.split("\t")
        (care if cls == "care" else you).add(fold(word))
    # Latin and Cyrillic words end at word boundaries; Chinese, Korean and Arabic words
    # are matched inside longer strings (no spaces, attached pronouns).
    spaced = {w for w in care if w[0] < "\u0530"}
    other = sorted(care - spaced, key=len, reverse=True)
    single = frozenset(w for w in spaced if " " not in w and "-" not in w)
    phrases = tuple(sorted(spaced - single))
    anywhere = tuple(sorted(w for w in you if " " in w or not w.isascii()))
    return _CareWords(
        single,
        phrases,
        re.compile("|".join(map(re.escape, other))),
        frozenset(you),
        anywhere,
        tuple(p for p in phrases if p.isascii()),
        tuple(w for w in anywhere if w.isascii()),
    )


def care_word(s: Subject) -> list[Finding]:
    """health.care-word: a common care word with a second-person or patient word.

    For the languages the relay knows only by their common care words (Portuguese,
    French, Vietnamese, Chinese, Tagalog, Haitian Creole, Russian, Arabic, Korean):
    "O laudo do seu ultrassom", "您的胃镜检查报告", "박서윤 님, 알레르기 검사 결과".
    Lower confidence: such a subject is at least replaced.
    """
    cw = _care_words()
    folded = s.folded
    ascii_text = folded.isascii()
    hits = s.words & cw.single
    # The first in the text, so the finding (and the scorer's input) never depends on
    # set order.
    hit = min(hits, key=lambda w: (folded.find(w), w)) if hits else None
    if hit is None:
        phrases = cw.ascii_phrases if ascii_text else cw.phrases
        hit = next((p for p in phrases if p in folded), None)
    if hit is None and not ascii_text:
        m = cw.unspaced.search(folded)
        hit = m.group(0) if m else None
    if hit is None:
        return []
    anywhere = cw.ascii_you_anywhere if ascii_text else cw.you_anywhere
    if s.words.isdisjoint(cw.you) and not any(w in folded for w in anywhere):
        return []
    at = max(0, folded.find(hit))
    return [Finding(kinds.PROCEDURE, at, at + len(hit), 0.7, "health.care-word")]


# --- identifier labels in the other languages (data/id_cues_intl.tsv) -----------------

_INTL_KINDS = {
    "birth": kinds.DATE,
    "ssn": kinds.SSN,
    "mrn": kinds.MRN,
    "member-id": kinds.MEMBER_ID,
    "account": kinds.ACCOUNT,
    "prescription": kinds.PRESCRIPTION,
    "license": kinds.LICENSE,
}
# Between a label and its value: "nº", ":", "#", a word or two ("Mã hội viên bảo hiểm
# NVX9973016"), never a digit or the end of a sentence.
_INTL_GAP = r"[^\d!?;]{0,14}?"
_INTL_VALUE = r"([a-z]{0,4}[-/]?\d[\d./-]*(?: \d[\d./-]*)*[a-z\d]*)"
# A whole date of birth: numeric, year-month-day in Chinese or Korean, a written month
# ("17 февраля 1946", "12 de março de 1950", "10-jul-1990"), Vietnamese "12 tháng 3 năm 1950",
# or eight digits; a bare month and day is no date of birth.
_INTL_DATE = (
    r"(\d{1,4}[./-]\d{1,2}[./-]\d{2,4}|\d{4} ?[年년] ?\d{1,2} ?[月월] ?\d{1,2}|"
    r"\d{1,2}[ -](?:de )?[^\W\d_]{3,12}\.?[ -](?:de )?\d{4}|"
    r"\d{1,2} thang \d{1,2}(?: nam)? \d{4}|(?:19|20)\d{6}|\d{4}(?:19|20)\d\d)(?!\d)"
)


@dataclass(frozen=True, slots=True)
class _IntlCues:
    kind_of: dict[str, str]  # folded label -> kind of _INTL_KINDS
    ascii_first: frozenset[str]  # first words of the ASCII labels (a cheap gate)
    dates: re.Pattern[str]  # a birth label and a date
    values: re.Pattern[str]  # another label and a value


@cache
def _intl_cues() -> _IntlCues:
    kind_of: dict[str, str] = {}
    for line in (DATA / "id_cues_intl.tsv").read_text(encoding="utf-8").splitlines():
        if line and not line.startswith("#"):
            _lang, kind, label = line.split("\t")
            if kind not in _INTL_KINDS:
                raise ValueError(f"id_cues_intl.tsv: unknown kind {kind!r}")
            kind_of[fold(normalize(label))] = kind

    def labels(birth: bool) -> str:
        # Latin and Cyrillic labels are whole words; the others match anywhere. Longer
        # labels first, so the leftmost alternative is the longest.
        out = []
        for label in sorted(kind_of, key=lambda w: (-len(w), w)):
            if (kind_of[label] == "birth") != birth:
                continue
            quoted = re.escape(label)
            out.append(rf"(?<![^\W_]){quoted}(?![^\W_])" if label[0] < "\u0530" else quoted)
        return "|".join(out)

    ascii_first = frozenset(w.split(" ")[0] for w in kind_of if w.isascii())
    return _IntlCues(
        kind_of,
        ascii_first,
        re.compile(rf"({labels(True)}){_INTL_GAP}{_INTL_DATE}"),
        re.compile(rf"({labels(False)}){_INTL_GAP}{_INTL_VALUE}"),
    )


def _ssn_shaped(value: str) -> bool:
    digits = re.sub(r"\D", "", value)
    if len(digits) != 9:
        return False
    area, group, serial = digits[:3], digits[3:5], digits[5:]
    return area not in ("000", "666") and area[0] != "9" and group != "00" and serial != "0000"


def intl_cued(s: Subject) -> list[Finding]:
    """id.cue-intl: an identifier labelled in another language ("생년월일 1947년 5월 9일",
    "病历号 0831-4472", "Mã hội viên DD7720931", "رقم الملف الطبي 7731-44").

    The labels (data/id_cues_intl.tsv) say the kind: a birth label needs a whole date,
    an SSN label a valid SSN, the others a value of four digits or more that is not a year.
    """
    if not s.has_digit:
        return []
    cues = _intl_cues()
    folded = s.folded
    if folded.isascii() and runs(folded, s.words).isdisjoint(cues.ascii_first):
        return []
    out = []
    for m in cues.dates.finditer(folded):
        out.append(Finding(kinds.DATE, m.start(2), m.end(2), 0.95, "id.cue-intl"))
    for m in cues.values.finditer(folded):
        kind = cues.kind_of[m.group(1)]
        value = m.group(2).rstrip("./-")
        digits = sum(ch.isdigit() for ch in value)
        if digits < 4 or _NOT_RECORD.fullmatch(value):
            continue
        if kind == "ssn" and not _ssn_shaped(value):
            continue
        end = m.start(2) + len(value)
        out.append(Finding(_INTL_KINDS[kind], m.start(2), end, 0.9, "id.cue-intl"))
    return out


RULES: tuple[Rule, ...] = (
    care_time,
    billing_amount,
    ending_digits,
    dx_cue,
    record_cue,
    intl_cued,
    care_word,
)
"""Rules whose findings stand alone. `segment` needs a health term and `audience` the
terms' spans; the detector runs them apart."""
