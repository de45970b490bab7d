"""The subject-line PHI detector: identifiers with validation, health facts tied to a person.

A subject carries PHI when it holds a HIPAA identifier (validated, and for
dates, phones and addresses tied to a person), or a health fact (condition,
medication, test, result) together with something that makes it about one
person: a name, a second-person possessive, a patient cue, a result statement
or a prescription. Health words alone ("5 tips to manage diabetes") are
education. See docs/phi-detection.md for every rule.
"""

from __future__ import annotations

import re
from bisect import bisect_left
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from itertools import compress
from operator import itemgetter
from pathlib import Path
from typing import TYPE_CHECKING, Any, Generic, TypeVar, overload

from relay.phi import kinds, lexicon, system
from relay.phi.api import STRONG, UNCERTAIN, Finding, Judgement
from relay.phi.normalize import expand, fold, shorthand_words
from relay.phi.rules import RULES, Subject, audience, first_words, runs, segment, word_class
from relay.phi.scorer import Scorer, default_scorer

if TYPE_CHECKING:
    from relay.phi.org import Organisation
    from relay.phi.roster import Roster

_MAX_NAME_PARTS = 6
# A finding this strong decides alone; weaker ones are evidence for the scorer.
DECISIVE = 0.9
MODEL_RULE = "model.health"


WINDOW = 400
_OVERLAP = 80


def _case_context(t: _Text) -> bool:
    """A patient, member, claim, you-word, dx or intake in the text, or a reply (guide R1.12)."""
    return not t.wordset.isdisjoint(_CASE) or t.words[:1] == ["re"]


def windows(text: str) -> list[str]:
    """`text` in windows of at most WINDOW characters overlapping by _OVERLAP, cut at spaces."""
    if len(text) <= WINDOW:
        return [text]
    out = []
    start = 0
    while start < len(text):
        end = min(len(text), start + WINDOW)
        if end < len(text):
            cut = text.rfind(" ", start + WINDOW // 2, end)
            end = cut if cut > 0 else end
        out.append(text[start:end].strip())
        if end >= len(text):
            break
        back = text.find(" ", max(start + 1, end - _OVERLAP), end)
        start = back + 1 if back > 0 else end
    return out


def rule_features(found: Sequence[Finding]) -> list[str]:
    """The scorer's rule features: which rules fired and which kinds they found."""
    if not found:
        return []
    return sorted({f"r:{_feature_rule(f.rule)}" for f in found} | {f"k:{f.kind}" for f in found})


def _feature_rule(rule: str) -> str:
    # The name rules (name.title, name.greeting...) are one feature, "r:name", as the
    # scorer was trained before they were told apart.
    return "name" if rule.startswith("name.") else rule


DATA = Path(__file__).with_name("data")

_DIGIT = re.compile(r"\d")
_DIGITS = re.compile(r"\d+")
# Every digit but 0, and the table that writes them as 0 (a number's shape, _classes).
_NONZERO = re.compile(r"[1-9]")
_ZERO_DIGITS = str.maketrans("123456789", "000000000")
_TOKEN = re.compile(r"[^\W_]+(?:['\-][^\W_]+)*")
# _TOKEN on ASCII text, where a letter or digit is [A-Za-z0-9]: explicit ranges are
# found faster than Unicode categories.
_TOKEN_ASCII = re.compile(r"[A-Za-z0-9]+(?:['\-][A-Za-z0-9]+)*")
_START, _END, _GROUP = re.Match.start, re.Match.end, re.Match.group
_FIRST = itemgetter(0)

# Month names and their abbreviations: a closed calendar class, part of the date
# patterns' grammar (not a vocabulary to extend), so written here.
_MONTHS_EN = (
    r"jan(?:uary)?|feb(?:ruary)?|mar(?:ch)?|apr(?:il)?|may|june?|july?|aug(?:ust)?|"
    r"sep(?:t(?:ember)?)?|oct(?:ober)?|nov(?:ember)?|dec(?:ember)?"
)
_MONTHS_ES = (
    r"enero|febrero|marzo|abril|mayo|junio|julio|agosto|septiembre|setiembre|octubre|"
    r"noviembre|diciembre|ene|feb|abr|ago|sept?|dic"
)
_ORD = r"(?:st|nd|rd|th|º|°)?"
_DATE_PATTERNS = (
    # numeric, month or day first, 2- or 4-digit year
    re.compile(r"(?<![\w/.-])(\d{1,2})[/.-](\d{1,2})[/.-](\d{4}|\d{2})(?![\w/-])"),
    # ISO 8601
    re.compile(r"(?<![\w-])((?:19|20)\d{2})[-/.](\d{1,2})[-/.](\d{1,2})(?![\w-])"),
    # month and day without a year: "3/14" (only counted with a care or birth cue)
    re.compile(r"(?<![\w/.-])(\d{1,2})/(\d{1,2})(?![\w/.-])"),
    # written months: "March 3rd, 1985", "Mar. 3", "March 1985"
    re.compile(
        rf"\b(?:{_MONTHS_EN})\.?\s+(?:\d{{1,2}}{_ORD}\b(?:,?\s+(?:19|20)\d{{2}})?|(?:19|20)\d{{2}}\b)",
        re.I,
    ),
    # "3rd of March 1985", "3 March"
    re.compile(
        rf"\b\d{{1,2}}{_ORD}\s+(?:of\s+)?(?:{_MONTHS_EN})\b\.?(?:,?\s+(?:19|20)\d{{2}})?", re.I
    ),
    # Spanish: "3 de marzo de 1985", "marzo de 2024"
    re.compile(
        rf"\b(?:\d{{1,2}}\s+de\s+)?(?:{_MONTHS_ES})(?:\s+(?:de|del)\s+(?:19|20)\d{{2}})?\b", re.I
    ),
    # "the 3rd"
    re.compile(
        r"\bthe\s+\d{1,2}(?:st|nd|rd|th)\b(?!\s+(?:floor|level|street|st\b|avenue|ave\b|grade|"
        r"edition|annual|year|anniversary|time|place|wing|district))",
        re.I,
    ),
)
_SSN = re.compile(r"(?<![\w-])(\d{3})([- .]?)(\d{2})\2(\d{4})(?![\w-])")
_SSN_LAST4 = re.compile(
    r"\b(?:ssn|social security(?: number)?|ss#|seguro social)\W{0,3}(?:[\w#-]+:?\s+){0,3}?\d{4}\b",
    re.I,
)
_PHONE = re.compile(
    r"(?<![\w+])(?:\+?1[-. ]?)?(?:\((\d{3})\)\s?|(\d{3})([-. ]))(\d{3})[-. ](\d{4})"
    r"(?:\s?(?:x|ext\.?)\s?\d{1,5})?(?!\w)"
)
# International (+44 20 7946 0958, +34 612 34 56 78) and UK/European trunk-0 numbers.
_PHONE_INTL = re.compile(
    r"(?<![\w+])\+(?!1[-. (]?\d{3}[-. )])\d{1,3}[ -]?(?:\(0\)\s?)?\d(?:[ -]?\d){6,12}(?!\w)"
)
_PHONE_TRUNK = re.compile(r"(?<![\w+])(?:0\d{2,4}|\(0\d{2,4}\))[ -]?\d{3,4}[ -]?\d{3,4}(?!\w)")
_PHONE_BARE = re.compile(r"(?<![\w+])(?:\+?1)?([2-9]\d{9})(?!\w)")
# UK National Insurance number: the national identifier faker and UK mail use.
_NINO = re.compile(r"\b[A-CEGHJ-PR-TW-Z]{2}\s?\d{2}\s?\d{2}\s?\d{2}\s?[A-Z]\b")
_POSTCODE_UK = re.compile(r"\b([A-Z]{1,2}\d[A-Z\d]?\s\d[A-Z]{2})\b")
_EMAIL = re.compile(r"\b[\w.+-]+@[\w-]+(?:\.[\w-]+)+\b")
_DEA = re.compile(r"\b([ABCDEFGHJKLMPRSTUX][A-Z9])(\d{7})\b")
_NPI = re.compile(r"(?<![\w-])([12]\d{9})(?![\w-])")
_ICD_DOTTED = re.compile(r"\b([A-TV-Z]\d[0-9AB])\.([0-9A-Z]{1,4})\b")
_ICD_BARE = re.compile(r"\b([A-TV-Z]\d[0-9AB])([0-9A-Z]{0,4})\b")
_CPT_CODE = r"\d{4}[0-9FTU]|[A-V]\d{4}"
_CPT = re.compile(rf"\b({_CPT_CODE})\b")
# A code or a range of codes as a cued value: "billing J3590", "billing 99401-99404".
_CPT_VALUE = re.compile(rf"(?:{_CPT_CODE})(?:[-\u2013](?:{_CPT_CODE}))?")
# A year or a span of years is no identifier value: "Plan 2026-27 benefits".
_YEARS = re.compile(r"(?:19|20)\d{2}(?:[-\u2013/](?:19|20)?\d{2})?")
_LONG_NUMBER = re.compile(r"(?<![\w.,/-])\d{8,}(?![\w.,/-])")
_ALNUM_ID = re.compile(r"\b(?=[A-Z0-9-]*\d[A-Z0-9-]*\d[A-Z0-9-]*\d)[A-Z]{1,4}-?\d{5,}[A-Z]?\b")
_ID_VALUE = re.compile(
    r"[#:]?\s*(?:(?:no|num|number|id|is|ending|in|nº|n°)\.?\s*[#:]?\s*){0,2}([A-Z0-9][A-Z0-9-]{3,})",
    re.I,
)
# Cues of numbers a business uses for itself (B8): not a patient's account on their own.
_BUSINESS_CUES = lexicon.BUSINESS_CUES
_DOSE = re.compile(r"\b\d+(?:\.\d+)?\s?(?:mg|mcg|µg|ml|iu|units?|tabs?|tablets?|caps?)\b", re.I)
_ZIP_AFTER_STATE = re.compile(
    r"\b(?:A[LKZR]|C[AOT]|D[EC]|FL|GA|HI|I[DLNA]|K[SY]|LA|M[EDAINSOT]|N[EVHJMYCD]|O[HKR]|PA|RI|"
    r"S[CD]|T[NX]|UT|V[TAI]|W[AVIY]|PR|GU|AS|MP|MH|FM|PW|A[AEP])\s+(\d{5}(?:-\d{4})?)\b"
)
_ZIP_CUE = re.compile(
    r"\b(?:zip(?: code)?|codigo postal|c\.?p\.?)\W{0,3}(\d{5}(?:-\d{4})?)\b", re.I
)
_RESULT_NOUNS = lexicon.RESULT_NOUNS
_RESULTS_POSS = re.compile(
    r"\b(?:your|you're|youre|tus|sus|tu|su|my|mis|mi)\s+(?:[\w'-]+\s+){0,3}?"
    rf"(?:{_RESULT_NOUNS})\b"
)
_RESULTS_READY = re.compile(
    r"\b(?:lab|labs|test|blood|bloodwork|pathology|imaging|biopsy|scan|screening|a1c|mri|x-ray|"
    r"analisis|laboratorio|examen|prueba)\s+(?:results?|report|resultados?|informe)\b"
    r"|\b(?:resultados?|informe)\s+de\s+(?:laboratorio|analisis|examen|prueba|sangre)\b"
)
# A test or its outcome in the second person, whatever the test is called.
_POSS_TEST = re.compile(
    r"\b(?:your|you're|tus|sus|tu|su|my|mis|mi)\s+(?:[\w'-]+\s+){0,2}?"
    r"(?:panel|tests?|screen|scans?|labs?|cultures?|workup|images|imaging|scores?|levels?|"
    r"readings?|biopsy|x-rays?|ct|pruebas?|analisis|estudios?|samples?|specimens?|muestras?|"
    r"admission|discharge|hospitalization|hospital stay|surgery|ingreso|hospitalizacion|cirugia|"
    # an operation named by what it does to a body part: "your gallbladder removal"
    r"(?:knee|hip|shoulder|gallbladder|tooth|teeth|cataract|hernia|spine|spinal|disc|acl|"
    r"rotator cuff|breast|valve|appendix|tonsils?|mole|cyst|joint|ankle|wrist|elbow|thyroid|"
    r"kidney|liver|lens|bunion|meniscus|tendon|ligament|rodilla|cadera|hombro|vesicula)\s+"
    r"(?:removal|repair|replacement|reconstruction|fusion|implants?|extraction|reemplazo)|"
    r"operation|operacion|diagnosis|diagnostico|blood type|"
    r"tipo de sangre|(?:kidney|liver|lung|thyroid|heart|renal|cognitive) function|"
    r"control(?:es)?|chequeos?|symptoms|sintomas|(?:after-)?visit (?:summary|notes?)|"
    r"care summary|resumen de (?:la |su )?visita|"
    r"wound|incision|herida)\b"
)
_RX_POSS_NOUNS = lexicon.RX_POSSESSED_NOUNS
_RX_POSS = re.compile(
    r"\b(?:your|tus|sus|tu|su|my|mis|mi)\s+(?:[\w'-]+\s+){0,2}?"
    rf"(?:{_RX_POSS_NOUNS})\b"
    # a household object, not a prescription: "your medicine cabinet"
    r"(?!\s+(?:cabinet|cabinets|chest|drawer|storage|disposal|take-back|safety))"
)
_RX_READY = re.compile(
    r"\b(?:prescription|rx|refill|receta|medicamento)s?\s+(?:is\s+|are\s+|esta\s+)?"
    r"(?:ready|listo|lista|listos|available|for pick-?up|para recoger|filled|approved|denied)\b"
)
# "When to see a doctor", "what to expect": advice to anyone.
_HOW_TO = re.compile(
    r"\b(?:when|what|where|whether|who) to\b|\btake (?:control|charge)\b"
    r"|\b(?:at|for) no (?:cost|charge)\b|\bsin costo\b"
    r"|\bcuando (?:ir|acudir|llamar)\b|\bque (?:es|son|hacer)\b"
)
# Over-the-counter news, not a prescription: "Naloxone available without a prescription".
_NO_RX = re.compile(
    r"\b(?:without a|no|sin)\s+(?:prescription|receta)\b|\bover[- ]the[- ]counter\b|\botc\b"
)
# A word every match of _NO_RX holds between word boundaries (read off the pattern, so
# it stays beside it).
_NO_RX_WORDS = frozenset({"prescription", "receta", "counter", "otc"})
_CAME_BACK = re.compile(r"\b(?:came|come|comes|coming|is|are|was|were|results?)\s+back\b")
_ORG_MOVES = lexicon.ORG_MOVES
_POSSESSED_GENERIC = lexicon.POSSESSED_GENERIC
_STAY_WELL = re.compile(
    r"\bstay (?:well|healthy|safe|active|cool|warm|informed|connected|strong|hydrated)\b"
)
# A word every match of _HOW_TO holds (read off the pattern, so it stays beside it).
_HOW_TO_WORDS = frozenset({"to", "cuando", "que", "take", "no", "sin"})
_ROLE_MAILBOX = lexicon.ROLE_MAILBOXES
_TOLL_FREE = lexicon.TOLL_FREE
_PERSONAL_PLACE = lexicon.PERSONAL_PLACE
_PHONE_PERSONAL = lexicon.PHONE_PERSONAL
# The organisation's own numbers: "call us", "our office", "nurse line".
_PHONE_ORG = lexicon.PHONE_ORG
_MED_MARKETING = lexicon.MED_MARKETING
# A second-person CTA verb before a preventive service is marketing ("Get your flu shot").
_CTA = lexicon.CTA
_STAFF_TITLES = lexicon.STAFF_TITLES
_CASED_FOLDED = frozenset(k.lower() for k in lexicon.CASED_TERMS)
# The doctor titles _provider names a doctor after, and every title it reads.
_DR = lexicon.DOCTOR_TITLES & lexicon.PHYSICIAN_TITLES
_PROVIDER_TITLES = _DR | _STAFF_TITLES
_NOT_AFTER_DR = lexicon.NOT_AFTER_DR
# An introduced or featured doctor is marketing, not a patient's relationship.
_PROVIDER_INTRO = lexicon.PROVIDER_INTRO
# Organisation news: a care word here is about a service, not one person's care.
_ORG_NEWS = lexicon.ORG_NEWS
# Medical specialties and operations by their word form: "podiatry", "orthodontist",
# "cardiología", "vasectomy", "rhinoplasty". Everyday words of the same form are listed.
_SPECIALTY_SUFFIX = lexicon.SPECIALTY_SUFFIXES
_NOT_SPECIALTY = lexicon.NOT_SPECIALTY
# Conditions by their word form: "bursitis", "sarcoidosis", "neuralgia", "lymphoma".
_CONDITION_SUFFIX = lexicon.CONDITION_SUFFIXES
_NOT_CONDITION = lexicon.NOT_CONDITION
# The reader as the patient of a care verb: "You were seen in our ER last night".
_YOU_CARED = re.compile(
    r"\byou (?:were|are being|have been|was|are) (?:seen|admitted|treated|discharged|diagnosed|"
    r"tested|examined|evaluated|transferred|referred)\b"
    r"|\busted fue (?:atendid[oa]|ingresad[oa]|dad[oa] de alta|diagnosticad[oa])\b"
)
# The pronoun, not the possessive: "next steps for you" (a possessive is read in place).
# This, _POSS_WORDS and _DETERMINERS are closed classes of grammar words the rules'
# patterns spell out too, so they stay beside them.
_YOU = frozenset({"you", "you're", "youre", "usted", "ti"})
# Lower-case particles inside Spanish, Portuguese, Dutch and Arabic surnames.
_PARTICLES = lexicon.NAME_PARTICLES
# Capitalised words that end a name even though some surname list holds them.
_NEVER_SURNAME = lexicon.NEVER_SURNAME
# A name right after these is a firm, a team or a place: "the Clark team", "la Montaña".
_DETERMINERS = frozenset({"the", "el", "los", "las", "our", "nuestra", "nuestro", "at", "in", "en"})
_PLACE_PREFIX = lexicon.PLACE_PREFIXES
_COMPANY_AFTER = re.compile(
    r"\s*,?\s*(?:S\.\s?[A-Z][\w.]*|LLC|L\.L\.C\.|Inc\b|Ltd\b|PLC|LLP|PLLC|P\.C\.|Group\b|Grupo\b|"
    r"Associates\b|Asociados\b|Partners\b|Co\.|Corp\b|& Sons|and Sons|e Hijos|y Asociados|"
    r"Law\b|Foundation\b|Fundaci[oó]n\b|Hermanos\b)"
)
# "Clark, Spencer and Smith", "Rael y Hernandes": surname lists are firms.
_FIRM = re.compile(
    r"\b[A-Z][\w'-]+(?:, [A-Z][\w'-]+)+,? (?:and|y|&) [A-Z][\w'-]+\b"
    r"|\b(?:Industrias|Grupo|Familia|Corporativo|Laboratorios|Despacho)\s+[A-Z][\w'-]+(?:\s+(?:y|e|and|&)\s+[A-Z][\w'-]+)?"
    r"|\b[A-Z][\w'-]+ (?:y|&) [A-Z][\w'-]+(?=\s+(?:S\.|S\s|SA\b|SL\b|LLC|Inc|Ltd))"
)
_POSS_WORDS = frozenset({"your", "you're", "youre", "tus", "sus", "tu", "su", "my", "mis", "mi"})
_RX_NOUNS = lexicon.RX_NOUNS
_POSS_OR_YOU = _POSS_WORDS | _YOU
_POSSESSED_NOUNS = (
    (_RESULTS_POSS, kinds.RESULT, first_words(_RESULT_NOUNS)),
    (_RX_POSS, kinds.PRESCRIPTION, first_words(_RX_POSS_NOUNS)),
)
_PERSONAL_FACT = lexicon.RESULT_WORDS | lexicon.CARE_EVENT | lexicon.PRESCRIPTION_WORDS
_GREETINGS = lexicon.GREETINGS
_ANALYTES = lexicon.ANALYTES
_ANALYTE_WORDS = first_words(_ANALYTES)
_ANALYTE_VALUE = re.compile(
    rf"\b(?:{_ANALYTES})\b\W{{0,3}}"
    r"(?:(?:is|was|were|are|level|levels|reading|running|came|back|at|es|fue|nivel|esta|estaba|"
    r"estan|sigue|still|too|very|muy)\s+){0,3}"
    r"(?:high|low|elevated|abnormal|critical|alto|alta|bajo|baja|altos|altas|bajos|bajas|"
    r"\d+(?:\.\d+)?\s?%?)"
)
# The first words of the identifier cues ("mrn", "member" of "member id"): a subject
# with none of them has no cued identifier.
_CUE_FIRST_WORDS = frozenset(cue.split(" ")[0] for cue in lexicon.ID_CUES)
# pattern -> (digits every match holds, the longest run of digits in it, a character
# it holds): read off each pattern; tests/unit/phi/test_phi_fast_paths.py checks them.
_DIGITS_NEEDED: dict[re.Pattern[str], tuple[int, int, str]] = {
    _SSN: (9, 4, ""),
    _SSN_LAST4: (4, 4, ""),
    _PHONE: (10, 4, ""),
    _PHONE_INTL: (8, 1, "+"),
    _PHONE_TRUNK: (9, 3, ""),
    _NINO: (6, 2, ""),
    _PHONE_BARE: (10, 10, ""),
    _DEA: (7, 7, ""),
    _NPI: (10, 10, ""),
    _ICD_DOTTED: (1, 1, "."),
    _LONG_NUMBER: (8, 8, ""),
    _ALNUM_ID: (5, 5, ""),
    _ZIP_AFTER_STATE: (5, 5, ""),
    _ZIP_CUE: (5, 5, ""),
    _POSTCODE_UK: (2, 1, ""),
}
_DIGITS_NEEDED_BY_ID = {id(p): needs for p, needs in _DIGITS_NEEDED.items()}
_ICD_CUES = lexicon.ICD_CUES
_CPT_CUES = lexicon.CPT_CUES
# A code "with a patient, member, claim, your, Re:, dx: or intake" is about a case (guide
# R1.12): then the code alone decides; elsewhere it is weak and the scorer judges it,
# since coding tips and newsletters quote codes too (guide B7).
_CASE = word_class("case") | word_class("you")
_CASE_CODE = 0.9
# Spanish words for a test that are also proof of something (lex_proof_of.txt).
_PROOF_WORDS = ("prueba", "pruebas")
_PROOF = frozenset(_PROOF_WORDS)
# Words right before a number that say what it is: "SSN 123 45 6789", "cell 3125550187".
_SSN_CUES = lexicon.SSN_CUES
_PHONE_CUES = lexicon.PHONE_CUES
_SENSITIVE_ICD: tuple[tuple[str, str, str], ...] = (
    ("B20", "B20", kinds.HIV),
    ("Z21", "Z21", kinds.HIV),
    ("F10", "F19", kinds.SUBSTANCE_USE),
    ("F20", "F69", kinds.MENTAL_HEALTH),
    ("F90", "F99", kinds.MENTAL_HEALTH),
    ("O00", "O9A", kinds.REPRODUCTIVE_HEALTH),
    ("Z30", "Z39", kinds.REPRODUCTIVE_HEALTH),
    ("A50", "A64", kinds.SEXUAL_HEALTH),
)


def _lines(name: str) -> list[str]:
    text = (DATA / name).read_text(encoding="utf-8")
    return [ln for ln in text.splitlines() if ln and not ln.startswith("#")]


def luhn_ok(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2 == 1:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return total % 10 == 0


def npi_ok(number: str) -> bool:
    """NPI check digit: Luhn over the number prefixed with the card issuer id 80840."""
    return len(number) == 10 and number.isdigit() and luhn_ok("80840" + number)


def dea_ok(number: str) -> bool:
    """DEA registration: two letters, seven digits, the last a checksum of the first six."""
    if not re.fullmatch(r"[A-Z][A-Z9]\d{7}", number):
        return False
    d = [int(c) for c in number[2:]]
    check = (d[0] + d[2] + d[4]) + 2 * (d[1] + d[3] + d[5])
    return check % 10 == d[6]


def ssn_ok(area: str, group: str, serial: str) -> bool:
    """SSA rules: no area 000, 666 or 900-999; no group 00; no serial 0000."""
    return (
        area != "000"
        and area != "666"
        and not area.startswith("9")
        and group != "00"
        and serial != "0000"
    )


def _date_ok(a: int, b: int) -> bool:
    # Month/day in either order (US and Spanish writing), each in range.
    return (1 <= a <= 12 and 1 <= b <= 31) or (1 <= b <= 12 and 1 <= a <= 31)


@dataclass(frozen=True, slots=True)
class Analysis:
    """What the detector read in one text: findings, and the scorer's inputs."""

    found: list[Finding]
    view: str  # the expanded reading (shorthand written out, leetspeak undone)
    classes: list[str]  # its words with health terms, names and possessives as classes
    folded: str = ""  # fold(view), so the scorer need not fold it again


@dataclass(frozen=True, slots=True)
class _Mention:
    start: int
    end: int
    index: int  # first token
    category: str  # condition | medication | procedure | preventive
    kind: str
    tag: str


class Vocabulary:
    """Word lists loaded once from data/ and lexicon; shared by every detector."""

    def __init__(self) -> None:
        phrases: dict[str, tuple[str, str, str]] = {}
        for term in _lines("conditions_icd10.txt"):
            phrases[term] = ("condition", kinds.CONDITION, term)
        for term in _lines("drugs.txt"):
            phrases.setdefault(term, ("medication", kinds.MEDICATION, ""))
        for term in lexicon.MEDICATIONS:
            phrases[term] = ("medication", kinds.MEDICATION, "")
        for term in lexicon.PROCEDURES:
            phrases[term] = ("procedure", kinds.PROCEDURE, "")
        for term in lexicon.PREVENTIVE:
            phrases[term] = ("preventive", kinds.PROCEDURE, "")
        for term in lexicon.MORE_PROCEDURES:
            phrases[term] = ("procedure", kinds.PROCEDURE, "")
        for tag, (kind, terms) in lexicon.CONDITION_TAGS.items():
            for term in terms:
                phrases[term] = ("condition", kind, tag)
        for tag, (kind, terms) in lexicon.MORE_CONDITIONS.items():
            for term in terms:
                phrases.setdefault(term, ("condition", kind, term if tag == "lay" else tag))
        self.phrases = phrases
        # One pass over the phrases: their words, and for each first word the lengths in
        # words of the phrases it starts, longest first (the only lengths worth looking
        # up at a word).
        phrase_words: set[str] = set()
        sizes: dict[str, set[int]] = {}
        for p in phrases:
            split = p.split()
            phrase_words.update(split)
            sizes.setdefault(split[0], set()).add(len(split))
        self.words = frozenset(phrase_words)
        self.max_words = max(max(n) for n in sizes.values())
        self.phrase_starts = frozenset(sizes)
        self.phrase_sizes = {
            w: tuple(n) if len(n) == 1 else tuple(sorted(n, reverse=True)) for w, n in sizes.items()
        }
        # Folded like subject words, so "Serafín" in a subject meets "serafín" in the list.
        self.first_names = frozenset(fold(n) for n in _lines("names_first.txt"))
        self.last_names = frozenset(fold(n) for n in _lines("names_last.txt"))
        self.ambiguous = (
            frozenset(fold(n) for n in _lines("names_ambiguous.txt"))
            | lexicon.NOT_NAMES
            | lexicon.SPANISH_WORD_NAMES
        )
        self.icd_categories = frozenset(_lines("icd10_categories.txt"))
        suffixes = sorted(
            (re.escape(s) for s in _lines("street_suffixes.txt") if len(s) >= 2),
            key=len,
            reverse=True,
        )
        # The words the address patterns need, for skipping them (lower case, as runs).
        self.street_suffix_words = frozenset(
            s.lower() for s in _lines("street_suffixes.txt") if len(s) >= 2
        )
        self.street_prefix_words = frozenset(
            p.split()[0].lower() for p in _lines("street_prefixes_es.txt") if len(p) >= 2
        )
        self.street_suffixes = frozenset(
            s for s in _lines("street_suffixes.txt") if len(s) >= 3
        ) - {"center", "centers"}
        self.street_types = frozenset(
            fold(p) for p in _lines("street_prefixes_es.txt") if len(p) >= 2
        ) | frozenset({"calle", "avenida", "av", "paseo", "street", "avenue", "road", "via"})
        prefixes = sorted(
            (re.escape(p) for p in _lines("street_prefixes_es.txt") if len(p) >= 2),
            key=len,
            reverse=True,
        )
        self.address = re.compile(
            r"\b\d{1,6}[A-Z]?(?:\s+[NSEW]\.?)?\s+(?:[A-Z][\w'-]*\.?\s+){1,3}"
            rf"(?:{'|'.join(suffixes)})\b\.?(?:,?\s+(?:apt|unit|suite|ste|#)\.?\s*\w+)?",
            re.I,
        )
        # The name words after a street number must start upper case; re.I above makes
        # the suffix match any case, so the capital check happens in the detector.
        self.address_es = re.compile(
            rf"\b(?:{'|'.join(prefixes)})\.?\s+(?:[\w'.-]+\s+){{1,5}}?(?:#|no\.?|num\.?|nº)?\s*\d{{1,5}}\b",
            re.I,
        )

    def known(self, word: str) -> bool:
        return word in self.words


_VOCAB: Vocabulary | None = None
# A cheap test for text that `expand` may change: a shorthand word (looked up in the
# subject's word set), a slashed shorthand ("f/u", "w/"), or a letter next to a
# leetspeak character.
_SHORT_WORDS = frozenset(w for w in shorthand_words() if "/" not in w)
_SLASHED = re.compile(
    r"(?i)(?<![\w/])(?:"
    + "|".join(re.escape(w) for w in sorted(shorthand_words(), key=len, reverse=True) if "/" in w)
    + r")(?![\w/])"
)
_LEET = re.compile(r"[^\W\d_][0134578@$!|]|[0134578@$!|][^\W\d_]")


def vocabulary() -> Vocabulary:
    global _VOCAB
    if _VOCAB is None:
        _VOCAB = Vocabulary()
    return _VOCAB


def _may_expand(t: _Text) -> bool:
    return (
        not t.wordset.isdisjoint(_SHORT_WORDS)
        or ("/" in t.text and _SLASHED.search(t.text) is not None)
        or (
            # A leetspeak character is a digit or one of these.
            (t.has_digit or "@" in t.text or "$" in t.text or "!" in t.text or "|" in t.text)
            and _LEET.search(t.text) is not None
        )
    )


_T = TypeVar("_T")


class _lazy(Generic[_T]):
    """functools.cached_property without its lock, which Python 3.11 takes on every first
    read (a third of the cost of a small property). A _Text is never shared by threads."""

    def __init__(self, compute: Callable[[Any], _T]) -> None:
        self.compute = compute
        self.name = compute.__name__

    @overload
    def __get__(self, obj: None, owner: type) -> _lazy[_T]: ...

    @overload
    def __get__(self, obj: object, owner: type) -> _T: ...

    def __get__(self, obj: object, owner: type) -> _T | _lazy[_T]:
        if obj is None:
            return self
        value = obj.__dict__[self.name] = self.compute(obj)
        return value


class _Text:
    """One subject, tokenised once; the rules below read it."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.folded = folded = fold(text)
        # map() over the matches: the per-token work stays in C.
        found = list((_TOKEN_ASCII if text.isascii() else _TOKEN).finditer(folded))
        self.starts = list(map(_START, found))
        self.ends = list(map(_END, found))
        self.words = list(map(_GROUP, found))
        self.orig = list(map(text.__getitem__, map(slice, self.starts, self.ends)))
        self.wordset = frozenset(self.words)
        self.has_digit = _DIGIT.search(text) is not None
        self.mentions: list[_Mention] | None = None
        self.inside: frozenset[str] | None = None  # words inside health terms
        self.firms: list[tuple[int, int]] | None = None  # spans of firm names

    @_lazy
    def caps(self) -> list[int]:
        """Indices of the tokens that start with a capital (the only ones a name rule reads)."""
        return list(compress(range(len(self.orig)), map(str.isupper, map(_FIRST, self.orig))))

    @_lazy
    def runs(self) -> frozenset[str]:
        """Maximal letter-and-digit runs of the folded text (see relay.phi.rules.runs)."""
        return runs(self.folded, self.wordset)

    @_lazy
    def digits(self) -> tuple[int, int]:
        """(how many digits, the longest run of digits) in the text."""
        found = _DIGITS.findall(self.text)
        return sum(map(len, found)), max(map(len, found), default=0)

    def numbers(self, pattern: re.Pattern[str]) -> Iterator[re.Match[str]]:
        """The matches of an identifier pattern in the text; none searched for when the
        text has fewer digits, or a shorter run of them, than every match holds."""
        total, run, literal = _DIGITS_NEEDED_BY_ID[id(pattern)]  # hashing a Pattern is slow
        found = self.digits
        if found[0] < total or found[1] < run or literal not in self.text:
            return iter(())
        return pattern.finditer(self.text)

    def index_at(self, pos: int) -> int:
        return bisect_left(self.starts, pos)

    def before(self, pos: int, n: int) -> list[str]:
        i = self.index_at(pos)
        return self.words[max(0, i - n) : i]

    def any(self, words: frozenset[str]) -> bool:
        return not self.wordset.isdisjoint(words)

    @_lazy
    def generic(self) -> bool:
        if self.wordset.isdisjoint(lexicon.GENERIC):
            return (
                not self.wordset.isdisjoint(_HOW_TO_WORDS)
                and _HOW_TO.search(self.folded) is not None
            )
        words = self.wordset & lexicon.GENERIC
        if words and words <= _POSSESSED_GENERIC:
            # "We reviewed your symptoms": a cue word owned by the reader is no education.
            owned = {
                w
                for i, w in enumerate(self.words)
                if w in _POSSESSED_GENERIC and i and self.words[i - 1] in _POSS_WORDS
            }
            words = words - owned
        if words == {"about"}:
            # "about your labs" addresses one reader; "all about diabetes" does not.
            i = self.words.index("about")
            if i + 1 < len(self.words) and self.words[i + 1] in _POSS_WORDS:
                return False
        if words:
            return True
        return (
            not self.wordset.isdisjoint(_HOW_TO_WORDS) and _HOW_TO.search(self.folded) is not None
        )

    @_lazy
    def title_case(self) -> bool:
        alpha = [w for w in self.orig if w[0].isalpha() and len(w) > 3]
        caps = sum(1 for w in alpha if w[0].isupper())
        return len(alpha) >= 4 and caps >= 0.8 * len(alpha)


_CLEAN = Judgement()


class _NameCtx:
    """The capitalised token a name rule reads (index `i`, folded `word`, `orig` as
    written, the word before it), and what the later rules ask of it (the text between
    it and the word before, its `base` without "'s", whether that is an everyday word
    or a listed first name); `n` tokens, `health` a care, result or health word in the
    subject. One per subject, refilled for each token."""

    __slots__ = (
        "ambiguous",
        "base",
        "first",
        "gap_before",
        "health",
        "i",
        "n",
        "orig",
        "prev",
        "word",
    )

    def __init__(self) -> None:
        self.i = self.n = 0
        self.word = self.orig = self.prev = self.gap_before = self.base = ""
        self.ambiguous = self.first = self.health = False


def _name(t: _Text, i: int, j: int, confidence: float, rule: str) -> Finding:
    """A name finding over tokens i..j."""
    return Finding(kinds.NAME, t.starts[i], t.ends[j], confidence, rule)


class PhiDetector:
    """Satisfies relay.phi.api.Detector. Stateless per call; safe to share."""

    def __init__(
        self,
        vocab: Vocabulary | None = None,
        roster: Roster | None = None,
        scorer: Scorer | bool | None = True,
    ) -> None:
        self.vocab = vocab or vocabulary()
        self.roster = roster
        # True: the shipped scorer; False/None: rules only (training computes rule features).
        self.scorer: Scorer | None = (
            default_scorer() if scorer is True else scorer if isinstance(scorer, Scorer) else None
        )

    # --- public ---------------------------------------------------------------------

    def scan(self, text: str) -> list[Finding]:
        """Findings in normalised text, and in its expanded reading (shorthand, leetspeak).

        A finding only the expanded reading holds spans the whole text (its own span
        refers to the other reading).
        """
        return self._read(text)[0]

    def rule_subject(self, text: str) -> Subject:
        """`text` as the named rules of relay.phi.rules read it (with its health terms)."""
        t = _Text(text)
        terms = tuple((m.start, m.end) for m in self._mentions(t))
        return Subject(t.text, t.folded, t.wordset, t.has_digit, terms)

    def analyse(self, text: str) -> Analysis:
        """The findings, and the expanded reading and word classes the scorer reads."""
        found, t = self._read(text)
        return Analysis(found, t.text, self._classes(t), t.folded)

    def _read(self, text: str) -> tuple[list[Finding], _Text]:
        """The findings of both readings, and the last reading read (the scorer's)."""
        found, t = self._scan_view(text)
        if _may_expand(t):
            second = expand(text, self.vocab.known)
            if second != text:
                more, t = self._scan_view(second)
                whole = [replace(f, start=0, end=len(text)) for f in more]
                found = _dedupe(found + whole)
        return found, t

    def word_classes(self, text: str) -> list[str]:
        """The words of `text` with health terms, names and possessives as class tokens.

        The scorer reads this sequence beside the n-grams, so "your <medication>
        refill" generalises to medicines no training subject named.
        """
        t = _Text(text)
        return self._classes(t)

    def _classes(self, t: _Text) -> list[str]:
        v = self.vocab
        words, orig = t.words, t.orig
        possessive, first, last, ambiguous = (
            lexicon.POSSESSIVE,
            v.first_names,
            v.last_names,
            v.ambiguous,
        )
        # Each word stands for itself unless a class below takes it, tried in this
        # order: a possessive, a capitalised first or last name, a number, another
        # capitalised word. Only the words that can be one are visited.
        out = list(words)
        taken: set[int] = set()
        if not t.wordset.isdisjoint(possessive):
            for i, w in enumerate(words):
                if w in possessive:
                    out[i] = "<poss>"
                    taken.add(i)
        for i in t.caps:
            if i in taken:
                continue
            w = words[i]
            if w in first and w not in ambiguous:
                out[i] = "<first>"
            elif w in last and w not in ambiguous:
                out[i] = "<last>"
            elif w.isdigit():
                out[i] = f"<num{min(len(w), 9)}>"
            elif i and not orig[i].isupper() and not t.title_case:
                # A capitalised word inside a sentence-case subject: often a name the
                # lists do not know ("Owen Marchetti").
                out[i] = "<cap>"
            taken.add(i)
        if t.has_digit:
            # A number is its shape: "555-201-4999" is "000-000-0000", as in the n-grams
            # (features.model_text), so the score never depends on which digits it has.
            for i, w in enumerate(words):
                if out[i] is not w:  # a class took it already
                    continue
                if w.isdigit():
                    out[i] = f"<num{min(len(w), 9)}>"
                elif _NONZERO.search(w) is not None:
                    out[i] = w.translate(_ZERO_DIGITS)
        mentions = self._mentions(t)
        if not mentions:
            return out
        # A health term's words become one class token.
        at = {m.index: m for m in mentions}
        merged: list[str] = []
        i, n = 0, len(words)
        while i < n:
            m = at.get(i)
            if m is not None:
                merged.append(f"<{m.category}>")
                i = max(i + 1, t.index_at(m.end))
                continue
            merged.append(out[i])
            i += 1
        return merged

    def judge(self, readings: Sequence[str], org: Organisation | None = None) -> Judgement:
        """The tier of a subject over every plausible reading of it (the worst wins).

        A long text is judged in overlapping windows of WINDOW characters cut at
        spaces, each window once (a repeated window is not judged again), so time
        grows linearly with length whatever the text repeats.
        """
        if len(readings) == 1 and len(readings[0]) <= WINDOW:
            # One reading, one window (most subjects): what the loop below returns (a
            # clean judgement's score is never below _CLEAN's 0).
            return self._judge(readings[0], org)
        result = _CLEAN
        seen: set[str] = set()
        for text in readings:
            for window in windows(text):
                if window not in seen:
                    seen.add(window)
                    result = result.worse(self._judge(window, org))
                    if result.tier == STRONG:
                        return result  # nothing is worse
        return result

    def _judge(self, text: str, org: Organisation | None) -> Judgement:
        # A bounce's or auto-reply's own words are not evidence; what they wrap is.
        text, approved = system.unwrap(text)
        if org is not None:
            text = org.mask(text)
            approved = approved or org.approved(text)
        found, t = self._read(text)
        decisive = [f for f in found if f.confidence >= DECISIVE]
        if approved:
            # An approved template is judged by its identifiers only.
            found = [f for f in decisive if f.kind in kinds.IDENTIFIERS]
            decisive = found
        scorer = self.scorer
        if decisive:
            # A decisive finding refuses whatever the score, and the judgement then lists
            # only the decisive findings' kinds and rules: the scorer cannot change it,
            # so it is not run (score 0, "did not run").
            kinds_found = tuple(sorted({f.kind for f in decisive}))
            return Judgement(STRONG, kinds_found, tuple(sorted({f.rule for f in decisive})))
        if scorer is None or approved:
            # Rules only (no weights shipped yet): every finding is strong evidence.
            p, low, high = (1.0 if found else 0.0), 0.5, 0.5
        else:
            p = scorer.probability(t.text, rule_features(found), self._classes(t), t.folded)
            low, high = scorer.thresholds.low, scorer.thresholds.high
        if p < low:
            return Judgement(score=p)
        tier = STRONG if p >= high else UNCERTAIN
        kinds_found = tuple(sorted({f.kind for f in found})) or (kinds.HEALTH,)
        rules = {f.rule for f in found}
        if scorer is not None:
            rules.add(MODEL_RULE)
        return Judgement(tier, kinds_found, tuple(sorted(rules)), p)

    def _scan_view(self, text: str) -> tuple[list[Finding], _Text]:
        t = _Text(text)
        found: list[Finding] = []
        if t.has_digit:
            self._identifiers(t, found)
        self._emails(t, found)
        names = self._names(t)
        # "Welcome Jane Okafor, our new CFO", "Farewell lunch for Greg": a colleague named
        # in staff news is not a patient, unless the subject also carries a health fact or
        # an identifier (checked below).
        staff = bool(names) and t.any(lexicon.STAFF_NEWS)
        if staff:
            found_before = len(found)
            names_only = list(names)
        if self.roster is not None:
            names.extend(self.roster.match(t.words, t.starts, t.ends))
        found.extend(names)
        # A patient cue counts through what follows it (a name, an id), not on its own:
        # "Patient stories: life after heart surgery" is about no one.
        person = bool(names)
        if t.has_digit:
            self._dates(t, found, person)
        self._provider(t, found)
        self._health(t, found, person)
        mentions = self._mentions(t)
        terms = tuple((m.start, m.end) for m in mentions)
        subject = Subject(t.text, t.folded, t.wordset, t.has_digit, terms)
        for rule in RULES:
            found.extend(rule(subject))
        if mentions:
            found.extend(segment(subject))
        found.extend(audience(subject))
        if staff and found_before == 0 and len(found) == len(names):
            found = [f for f in found if f not in names_only]
        return _dedupe(found), t

    def conditions(self, text: str) -> frozenset[str]:
        t = _Text(text)
        tags = {m.tag for m in self._mentions(t) if m.category == "condition" and m.tag}
        for m in _ICD_DOTTED.finditer(text):
            for kind in self._icd_kinds(m.group(1)):
                tags.add(kind)
        return frozenset(tags)

    # --- identifiers: one method per rule id -----------------------------------------
    #
    # Each takes the text, the findings so far and `taken`, the spans of numbers an
    # earlier rule claimed (a phone number is not also an NPI). They run in the order
    # of _identifiers, which is part of their meaning. Each pattern is searched only when
    # the text has as many digits, and as long a run of them, as every match of it
    # holds (_DIGITS_NEEDED).

    def _identifiers(self, t: _Text, out: list[Finding]) -> None:
        taken: list[tuple[int, int]] = []
        # Every rule but the ICD-10 ones needs at least four digits (a quarter of
        # subjects with a digit have fewer): one test instead of one each.
        for rule in _ID_RULES if t.digits[0] >= 4 else _FEW_DIGIT_ID_RULES:
            rule(self, t, out, taken)
        self._addresses(t, out)

    def _ssn(self, t: _Text, out: list[Finding], taken: list[tuple[int, int]]) -> None:
        """id.ssn: 123-45-6789 or 123 45 6789 passing the SSA rules, or 9 digits after a cue."""
        for m in t.numbers(_SSN):
            area, sep, group, serial = m.groups()
            cued = not _SSN_CUES.isdisjoint(t.before(m.start(), 4))
            if ssn_ok(area, group, serial) and (sep or cued):
                out.append(Finding(kinds.SSN, m.start(), m.end(), 0.95 if cued else 0.8, "id.ssn"))
                taken.append((m.start(), m.end()))

    def _ssn_last4(self, t: _Text, out: list[Finding], taken: list[tuple[int, int]]) -> None:
        """id.ssn-last4: "SSN ending 6789", "seguro social ... 4421"."""
        for m in t.numbers(_SSN_LAST4):
            out.append(Finding(kinds.SSN, m.start(), m.end(), 0.9, "id.ssn-last4"))

    def _phone(self, t: _Text, out: list[Finding], taken: list[tuple[int, int]]) -> None:
        """id.phone: a North American number with separators, unless the organisation's."""
        for m in t.numbers(_PHONE):
            if _overlaps(taken, m.start(), m.end()):
                continue
            area = m.group(1) or m.group(2)
            before = set(t.before(m.start(), 4))
            kind = kinds.FAX if "fax" in before else kinds.PHONE
            if kind == kinds.PHONE and self._org_contact(t, area):
                continue
            out.append(Finding(kind, m.start(), m.end(), 0.8, "id.phone"))
            taken.append((m.start(), m.end()))

    def _phone_intl(self, t: _Text, out: list[Finding], taken: list[tuple[int, int]]) -> None:
        """id.phone-intl: +44 20 7946 0958, +34 612 34 56 78, trunk-0 numbers."""
        for pattern in (_PHONE_INTL, _PHONE_TRUNK):
            for m in t.numbers(pattern):
                if _overlaps(taken, m.start(), m.end()):
                    continue
                before = set(t.before(m.start(), 4))
                kind = kinds.FAX if "fax" in before else kinds.PHONE
                if kind == kinds.PHONE and self._org_contact(t, None):
                    continue
                out.append(Finding(kind, m.start(), m.end(), 0.75, "id.phone-intl"))
                taken.append((m.start(), m.end()))

    def _nino(self, t: _Text, out: list[Finding], taken: list[tuple[int, int]]) -> None:
        """id.nino: a UK National Insurance number (AB 12 34 56 C), reported as ssn."""
        for m in t.numbers(_NINO):
            if not _overlaps(taken, m.start(), m.end()):
                out.append(Finding(kinds.SSN, m.start(), m.end(), 0.8, "id.nino"))
                taken.append((m.start(), m.end()))

    def _phone_cued(self, t: _Text, out: list[Finding], taken: list[tuple[int, int]]) -> None:
        """id.phone-cued: ten bare digits after a phone cue ("cell 3125550187")."""
        for m in t.numbers(_PHONE_BARE):
            before = set(t.before(m.start(), 3))
            if not before.isdisjoint(_PHONE_CUES):
                kind = kinds.FAX if "fax" in before else kinds.PHONE
                out.append(Finding(kind, m.start(), m.end(), 0.8, "id.phone-cued"))
                taken.append((m.start(), m.end()))

    def _dea(self, t: _Text, out: list[Finding], taken: list[tuple[int, int]]) -> None:
        """id.dea: a DEA registration number whose check digit is valid."""
        for m in t.numbers(_DEA):
            if dea_ok(m.group(0)):
                out.append(Finding(kinds.DEA, m.start(), m.end(), 0.9, "id.dea"))
                taken.append((m.start(), m.end()))

    def _npi(self, t: _Text, out: list[Finding], taken: list[tuple[int, int]]) -> None:
        """id.npi: 10 digits starting 1 or 2 with a valid check digit (decisive after "NPI")."""
        for m in t.numbers(_NPI):
            if _overlaps(taken, m.start(), m.end()):
                continue
            cued = "npi" in t.before(m.start(), 4)
            if npi_ok(m.group(1)):
                out.append(Finding(kinds.NPI, m.start(), m.end(), 0.95 if cued else 0.6, "id.npi"))
                taken.append((m.start(), m.end()))

    def _icd10(self, t: _Text, out: list[Finding], taken: list[tuple[int, int]]) -> None:
        """id.icd10: a dotted ICD-10-CM code of a real category (E11.9), with its sensitive kind;
        decisive in a case context."""
        for m in t.numbers(_ICD_DOTTED):
            if m.group(1) in self.vocab.icd_categories:
                c = _CASE_CODE if _case_context(t) else 0.8
                out.append(Finding(kinds.ICD10, m.start(), m.end(), c, "id.icd10"))
                out.extend(
                    Finding(k, m.start(), m.end(), c, "id.icd10")
                    for k in self._icd_kinds(m.group(1))
                )
                taken.append((m.start(), m.end()))

    def _icd10_cued(self, t: _Text, out: list[Finding], taken: list[tuple[int, int]]) -> None:
        """id.icd10-cued: a code without its dot after an ICD/Dx cue ("Dx code E119");
        decisive in a case context."""
        if t.wordset.isdisjoint(_ICD_CUES):
            return
        for m in _ICD_BARE.finditer(t.text):
            if m.group(1) in self.vocab.icd_categories and not _overlaps(taken, m.start(), m.end()):
                c = _CASE_CODE if _case_context(t) else 0.75
                out.append(Finding(kinds.ICD10, m.start(), m.end(), c, "id.icd10-cued"))
                out.extend(
                    Finding(k, m.start(), m.end(), c, "id.icd10-cued")
                    for k in self._icd_kinds(m.group(1))
                )
                taken.append((m.start(), m.end()))

    def _cpt_cued(self, t: _Text, out: list[Finding], taken: list[tuple[int, int]]) -> None:
        """id.cpt-cued: a 5-character CPT/HCPCS code after a code cue ("CPT 99213"); decisive
        in a case context."""
        cue_words = t.wordset
        if cue_words.isdisjoint(_CPT_CUES):
            return
        for m in _CPT.finditer(t.text):
            cued = "code" in t.before(m.start(), 3) or bool(cue_words & {"cpt", "hcpcs"})
            if cued and not _overlaps(taken, m.start(), m.end()):
                c = _CASE_CODE if _case_context(t) else 0.8
                out.append(Finding(kinds.CPT, m.start(), m.end(), c, "id.cpt-cued"))
                taken.append((m.start(), m.end()))

    def _long_number(self, t: _Text, out: list[Finding], taken: list[tuple[int, int]]) -> None:
        """id.long-number: a run of 8 or more digits no other rule claimed (weak)."""
        for m in t.numbers(_LONG_NUMBER):
            if not _overlaps(taken, m.start(), m.end()):
                out.append(Finding(kinds.ACCOUNT, m.start(), m.end(), 0.5, "id.long-number"))
                taken.append((m.start(), m.end()))

    def _alnum_number(self, t: _Text, out: list[Finding], taken: list[tuple[int, int]]) -> None:
        """id.alnum-number: letters then 5 or more digits ("XJH882311901"), weak."""
        for m in t.numbers(_ALNUM_ID):
            if not _overlaps(taken, m.start(), m.end()):
                out.append(Finding(kinds.ACCOUNT, m.start(), m.end(), 0.5, "id.alnum-number"))
                taken.append((m.start(), m.end()))

    def _cued_ids(self, t: _Text, out: list[Finding], taken: list[tuple[int, int]]) -> None:
        """id.cued, id.cued-business, id.business-number: a value after an identifier cue
        (MRN, member ID, claim, Rx...); after a business cue (order, invoice) it is the
        business's own number unless the subject has a patient context."""
        if t.wordset.isdisjoint(_CUE_FIRST_WORDS):
            return
        words = t.words
        for i, word in enumerate(words):
            two = f"{word} {words[i + 1]}" if i + 1 < len(words) else ""
            kind = lexicon.ID_CUES.get(two) or lexicon.ID_CUES.get(word)
            if kind is None:
                continue
            end = t.ends[i + 1] if two in lexicon.ID_CUES else t.ends[i]
            m = _ID_VALUE.match(t.text, end)
            if m is None:
                m = _ID_VALUE.match(t.text, end + 1) if end < len(t.text) else None
            if m is None:
                continue
            value = m.group(1)
            digits = sum(ch.isdigit() for ch in value)
            if digits < 4 or len(value) < 5 or _YEARS.fullmatch(value):
                continue
            if _overlaps(taken, m.start(1), m.end(1)) or not _cued_value_ok(kind, value):
                continue
            if word in _CPT_CUES and _CPT_VALUE.fullmatch(value):
                # "Billing J3590 correctly", "billing 99213 vs 99214": a procedure code,
                # judged by id.cpt-cued and its case context (guide B7), not an account.
                continue
            business = (two or word) in _BUSINESS_CUES or word in _BUSINESS_CUES
            if not business and _owned_by_business(words, i, kind):
                business, kind = True, kinds.ACCOUNT  # a ticket's or printer's, as an order's
            if business:
                # An order, ticket or invoice number is the business's own unless the
                # subject is about a patient (B8): then it is weak evidence only.
                patient = t.any(lexicon.PATIENT_WORDS) or bool(self._mentions(t))
                conf, rule = (0.75, "id.cued-business") if patient else (0.3, "id.business-number")
                out.append(Finding(kind, m.start(1), m.end(1), conf, rule))
                taken.append((m.start(1), m.end(1)))
                continue
            out.append(Finding(kind, m.start(1), m.end(1), 0.9, "id.cued"))
            taken.append((m.start(1), m.end(1)))

    def _icd_kinds(self, category: str) -> list[str]:
        return [k for lo, hi, k in _SENSITIVE_ICD if lo <= category <= hi]

    def _org_contact(self, t: _Text, area: str | None) -> bool:
        if t.any(_PHONE_PERSONAL):
            return False
        return area in _TOLL_FREE or t.any(_PHONE_ORG)

    def _addresses(self, t: _Text, out: list[Finding]) -> None:
        """id.address, id.address-es, id.zip: a street address (house number, name, USPS
        suffix; Spanish street types) or a ZIP/postcode, unless in organisation context."""
        personal = t.any(_PERSONAL_PLACE) or t.any(lexicon.PATIENT_WORDS)
        org = t.any(lexicon.ORG_WORDS) and not personal
        if org:
            return
        v, ascii_text = self.vocab, t.text.isascii()
        # The patterns ignore case: on ASCII text their words are lower-case runs.
        street = not ascii_text or not t.runs.isdisjoint(v.street_suffix_words)
        for m in v.address.finditer(t.text) if street else ():
            words = m.group(0).split()
            # "Join the 2025 Heart Walk": a year is not a house number unless a person lives there.
            year = re.fullmatch(r"(?:19[5-9]|20[0-3])\d", words[0]) is not None
            if len(words) >= 3 and words[1][:1].isupper() and (personal or not year):
                out.append(Finding(kinds.ADDRESS, m.start(), m.end(), 0.8, "id.address"))
        street = not ascii_text or not t.runs.isdisjoint(v.street_prefix_words)
        for m in v.address_es.finditer(t.text) if street else ():
            if m.group(0)[:1].isupper():
                out.append(Finding(kinds.ADDRESS, m.start(), m.end(), 0.75, "id.address-es"))
        for pattern in (_ZIP_AFTER_STATE, _ZIP_CUE, _POSTCODE_UK):
            for m in t.numbers(pattern):
                out.append(Finding(kinds.ZIP, m.start(1), m.end(1), 0.7, "id.zip"))

    def _emails(self, t: _Text, out: list[Finding]) -> None:
        """id.email: an email address that is not a role mailbox (info@, billing@...)."""
        if "@" not in t.text:
            return
        for m in _EMAIL.finditer(t.text):
            local = m.group(0).split("@", 1)[0].lower()
            if local not in _ROLE_MAILBOX:
                out.append(Finding(kinds.EMAIL, m.start(), m.end(), 0.8, "id.email"))

    # --- dates --------------------------------------------------------------------------

    def _dates(self, t: _Text, out: list[Finding], person: bool) -> None:
        """id.date: a date tied to a person (a birth cue, a name, a care event of the
        reader), not the organisation's news ("Clinic closed 12/25")."""
        birth = t.any(lexicon.BIRTH_WORDS) or "d.o.b" in t.folded
        care = t.any(lexicon.DATE_CARE_WORDS)
        possessive = t.any(lexicon.POSSESSIVE)
        # "Lab services moving to the 3rd floor on June 2" is the organisation's news.
        org = t.generic or t.any(_ORG_MOVES)
        if not (birth or person or (care and (possessive or not org))):
            return
        conf = 0.95 if birth else 0.8
        for index, pattern in enumerate(_DATE_PATTERNS):
            for m in pattern.finditer(t.text):
                if index == 0 and not _date_ok(int(m.group(1)), int(m.group(2))):
                    continue
                if index == 1 and not (1 <= int(m.group(2)) <= 12 and 1 <= int(m.group(3)) <= 31):
                    continue
                if (index == 2 and not (birth or care)) or (
                    index == 2 and not _date_ok(int(m.group(1)), int(m.group(2)))
                ):
                    continue
                if index == 5 and not any(ch.isdigit() for ch in m.group(0)):
                    continue
                out.append(Finding(kinds.DATE, m.start(), m.end(), conf, "id.date"))

    # --- people -------------------------------------------------------------------------

    def _is_name_word(self, orig: str, word: str) -> bool:
        return (
            len(orig) >= 2
            and orig[0].isupper()
            and (orig[1:].islower() or orig[1:2] == "'" or len(orig) <= 3)
            and word not in lexicon.NOT_NAMES
            and not word.isdigit()
        )

    def _names(self, t: _Text) -> list[Finding]:
        """Person names: each capitalised token is offered to the name rules in the order
        of _NAME_RULES (the first that fires claims it), then firms, streets and places are
        dropped (_not_a_person)."""
        if not t.caps:
            return []  # every rule starts at a capitalised word
        v, words, orig, text = self.vocab, t.words, t.orig, t.text
        c = _NameCtx()
        c.n = len(words)
        c.health = (
            t.any(lexicon.CARE_EVENT) or t.any(lexicon.RESULT_WORDS) or bool(self._mentions(t))
        )
        found: list[Finding] = []
        any_word, cued, named = _NAME_RULES
        for i in t.caps:
            c.i, c.word, c.orig = i, words[i], orig[i]
            c.prev = words[i - 1] if i else ""
            hit = None
            for rule in any_word:
                hit = rule(self, t, c)
                if hit is not None:
                    break
            else:
                # The rules below read a word that can be a name.
                if not self._is_name_word(c.orig, c.word):
                    continue
                c.gap_before = text[t.ends[i - 1] : t.starts[i]] if i else ""
                c.base = base = c.word[:-2] if c.word.endswith("'s") else c.word
                c.ambiguous = base in v.ambiguous
                c.first = base in v.first_names
                for rule in cued:
                    hit = rule(self, t, c)
                    if hit is not None:
                        break
                else:
                    if c.prev in lexicon.DOCTOR_TITLES:
                        continue  # "Dr. Okafor" is the provider rules' to judge
                    for rule in named:
                        hit = rule(self, t, c)
                        if hit is not None:
                            break
            if hit is not None:
                found.append(hit)
        return [f for f in found if not self._not_a_person(t, f)]

    def _known_name(self, word: str) -> bool:
        base = word[:-2] if word.endswith("'s") else word
        return base in self.vocab.first_names or base in self.vocab.last_names

    def _extend(self, t: _Text, i: int) -> int:
        """Word i, or i + 1 when a surname follows ("Jane Okafor")."""
        if (
            i + 1 < len(t.words)
            and self._is_name_word(t.orig[i + 1], t.words[i + 1])
            and (self._known_name(t.words[i + 1]) or not t.title_case)
        ):
            gap = t.text[t.ends[i] : t.starts[i + 1]]
            if gap.strip() in ("", "."):
                return i + 1
        return i

    # --- names: one method per rule id, in the order of _NAME_RULES ------------------
    #
    # Each takes the text and the capitalised token's context (_NameCtx) and returns the
    # finding, or None to let the next rule try.

    def _name_records_caps(self, t: _Text, c: _NameCtx) -> Finding | None:
        """name.records-caps: "MILLER, GERALD - REFERRAL", an all-caps "LAST, FIRST" from a
        records system, both parts in the lists and not both everyday words."""
        v, i, o = self.vocab, c.i, c.orig
        if (
            o.isupper()
            and len(o) > 2
            and i + 1 < c.n
            and t.orig[i + 1].isupper()
            and t.text[t.ends[i] : t.starts[i + 1]] == ", "
            and c.word in v.last_names
            and t.words[i + 1] in v.first_names
            and not (c.word in v.ambiguous and t.words[i + 1] in v.ambiguous)
        ):
            return _name(t, i, i + 1, 0.75, "name.records-caps")
        return None

    def _name_greeting(self, t: _Text, c: _NameCtx) -> Finding | None:
        """name.greeting: "Hi April," / "Dear June!" / "Hi Ngozi,", a greeting names the
        reader whatever the word, unless it greets a group ("Hello Friends,")."""
        v, i, word = self.vocab, c.i, c.word
        if (
            i
            and c.prev in _GREETINGS
            and c.orig[:1].isupper()
            and (word in v.first_names or word in v.last_names or word not in lexicon.NOT_NAMES)
            and self._followed_by_name_or_end(t, i)
            and (word in v.first_names or word in v.last_names or t.text[t.ends[i] :][:1] in ",!")
        ):
            return _name(t, i, self._extend(t, i), 0.85, "name.greeting")
        return None

    def _name_salutation_surname(self, t: _Text, c: _NameCtx) -> Finding | None:
        """name.salutation-surname: "Re: April Jones", a month-like first name vouched for
        by a salutation and a surname."""
        v, i = self.vocab, c.i
        if (
            c.prev in lexicon.SALUTATIONS
            and c.orig[:1].isupper()
            and c.word in v.first_names
            and i + 1 < c.n
            and t.words[i + 1] in v.last_names
            and t.words[i + 1] not in v.ambiguous
            and t.orig[i + 1][:1].isupper()
        ):
            return _name(t, i, i + 1, 0.8, "name.salutation-surname")
        return None

    def _name_doctor_in_full(self, t: _Text, c: _NameCtx) -> Finding | None:
        """name.doctor-in-full: "Re: Dr Bradley Murphy", a doctor named in full after a
        salutation is a person named in the subject, relationship or not."""
        i = c.i
        if c.prev in lexicon.DOCTOR_TITLES and i >= 2 and t.words[i - 2] in lexicon.SALUTATIONS:
            end = self._name_run(t, i) if c.word in self.vocab.first_names else i
            if end > i:
                return _name(t, i, end, 0.75, "name.doctor-in-full")
        return None

    def _name_title(self, t: _Text, c: _NameCtx) -> Finding | None:
        """name.title: "Mr. Okafor", "Sra. López", a name after a courtesy title."""
        if c.prev in lexicon.TITLES and c.gap_before.strip() in ("", "."):
            title = t.orig[c.i - 1]
            if len(title) > 1 and title.isupper() and not t.text.isupper():
                # "MS Walk", "MR safety week": capitals in a subject that has lower case
                # are an abbreviation (multiple sclerosis, magnetic resonance), not "Ms."
                return None
            return _name(t, c.i, self._extend(t, c.i), 0.95, "name.title")
        return None

    def _name_patient_cue(self, t: _Text, c: _NameCtx) -> Finding | None:
        """name.patient-cue: "Patient: Jane", "Pt Okafor", a listed name after a patient
        cue (not "New patient? Here's what to expect")."""
        if (
            c.prev in lexicon.PATIENT_WORDS
            and c.gap_before.strip() in ("", ":", "-", ".")
            and (c.base in self.vocab.first_names or c.base in self.vocab.last_names)
        ):
            return _name(t, c.i, self._extend(t, c.i), 0.9, "name.patient-cue")
        return None

    def _name_salutation(self, t: _Text, c: _NameCtx) -> Finding | None:
        """name.salutation: "Hi Jane", "Re: Jane Okafor", "Results for Maria", a first
        name after a salutation or addressing word."""
        i = c.i
        if (
            c.prev in lexicon.SALUTATIONS
            and c.first
            and (not c.ambiguous or self._followed_by_name_or_end(t, i))
        ):
            end = max(self._extend(t, i), self._name_run(t, i))
            return _name(t, i, end, 0.85, "name.salutation")
        return None

    def _name_vocative(self, t: _Text, c: _NameCtx) -> Finding | None:
        """name.vocative: "Jane, your results", "Managing your diabetes, Jane", a first
        name at either end; an everyday-word name ("Grace") counts when the reader is
        addressed right after it, or when it closes the subject after a comma."""
        i, n = c.i, c.n
        if not c.first:
            return None
        after = t.text[t.ends[i] : t.ends[i] + 2]
        addressed = i + 1 < n and t.words[i + 1] in _POSS_OR_YOU
        if (i == 0 and after.startswith(",") and (not c.ambiguous or addressed)) or (
            i == n - 1 and c.gap_before.strip() == ","
        ):
            return _name(t, i, i, 0.85, "name.vocative")
        return None

    def _name_health_verb(self, t: _Text, c: _NameCtx) -> Finding | None:
        """name.health-verb: "Maria missed her dialysis", "Carlos has a fever", a known
        first name opening a sentence about a health event (a verb right after it)."""
        i = c.i
        if (
            i == 0
            and c.first
            and not c.ambiguous
            and i + 1 < c.n
            and c.gap_before == ""
            and t.text[t.ends[i] : t.starts[i + 1]] == " "
            and _is_verb(t.orig[i + 1])
            and (c.health or bool(self._mentions(t)))
            and not t.generic
        ):
            return _name(t, i, i, 0.75, "name.health-verb")
        return None

    def _name_relative(self, t: _Text, c: _NameCtx) -> Finding | None:
        """name.relative: "your son Jesse", "su hija Lucía", a relative named after the
        possessive."""
        i = c.i
        if (
            c.first
            and i >= 2
            and c.prev in lexicon.FAMILY
            and t.words[i - 2] in _POSS_WORDS
            and c.gap_before.strip() in ("", ",")
        ):
            return _name(t, i, self._extend(t, i), 0.85, "name.relative")
        return None

    def _name_dash_vocative(self, t: _Text, c: _NameCtx) -> Finding | None:
        """name.dash-vocative: "Thinking of you, Cristina - get well soon", a vocative
        between a comma and a dash."""
        i = c.i
        if (
            c.first
            and not c.ambiguous
            and c.gap_before.strip() == ","
            and t.text[t.ends[i] : t.ends[i] + 3] in (" - ", " : ")
        ):
            return _name(t, i, i, 0.8, "name.dash-vocative")
        return None

    def _name_possessive(self, t: _Text, c: _NameCtx) -> Finding | None:
        """name.possessive: "Jane's lab results", a first name owning a care or result
        word (an everyday-word name only after a salutation, with a health context)."""
        i = c.i
        if (
            c.word.endswith("'s")
            and c.first
            and (
                (not c.ambiguous and (t.any(_PERSONAL_FACT) or self._fact_after(t, i)))
                or (c.prev in lexicon.SALUTATIONS and c.health)
            )
        ):
            return _name(t, i, i, 0.8, "name.possessive")
        return None

    def _name_full(self, t: _Text, c: _NameCtx) -> Finding | None:
        """name.full: "Jane Okafor", "Rosa María Tapia Planas", "Julián de Bermudez", a
        known first name, then more given names, particles and at least one known
        surname; not all everyday words ("Robin Mills" only with a health context or
        leading a subject that holds numbers), nor two of a Title-Case Subject."""
        i = c.i
        if not c.first:
            return None
        end = self._name_run(t, i)
        if end <= i:
            return None
        v = self.vocab
        parts = [w for w in t.words[i : end + 1] if w not in _PARTICLES]
        all_words = all(self._base(w) in v.ambiguous for w in parts)
        some_word = any(self._base(w) in v.ambiguous for w in parts)
        context = c.health or (i == 0 and t.has_digit)
        if (not all_words or (context and not t.title_case)) and not (
            t.title_case and some_word and len(parts) < 3
        ):
            return _name(t, i, end, 0.8, "name.full")
        return None

    def _name_last_first(self, t: _Text, c: _NameCtx) -> Finding | None:
        """name.last-first: "Okafor, Jane", a listed surname, a comma and a listed first
        name (not both everyday words)."""
        i, v = c.i, self.vocab
        if i + 1 < c.n and self._is_name_word(t.orig[i + 1], t.words[i + 1]):
            nxt = self._base(t.words[i + 1])
            gap = t.text[t.ends[i] : t.starts[i + 1]].strip()
            both_words = c.ambiguous and nxt in v.ambiguous
            if gap == "," and c.base in v.last_names and nxt in v.first_names and not both_words:
                return _name(t, i, i + 1, 0.75, "name.last-first")
        return None

    def _fact_after(self, t: _Text, i: int) -> bool:
        """A health term within three words after word i: "David's chest x-ray"."""
        return any(i < m.index <= i + 3 for m in self._mentions(t))

    def _not_a_person(self, t: _Text, f: Finding) -> bool:
        """A name that is part of a firm, a street or a place ("Clark, Spencer and Smith",
        "Paseo de Osvaldo Arnau", "San Alma de la Montaña")."""
        i = t.index_at(f.start)
        before = t.words[max(0, i - 3) : i]
        if before and before[-1] in _DETERMINERS:
            return True
        if set(before) & (self.vocab.street_types | _PLACE_PREFIX):
            return True
        if _COMPANY_AFTER.match(t.text, f.end):
            return True
        j = t.index_at(f.end)
        if (
            j < len(t.words)
            and t.words[j] in self.vocab.street_suffixes
            and t.orig[j][:1].isupper()
        ):
            return True
        if t.firms is None:
            t.firms = [(m.start(), m.end()) for m in _FIRM.finditer(t.text)]
        return any(a <= f.start < b for a, b in t.firms)

    @staticmethod
    def _base(word: str) -> str:
        return word[:-2] if word.endswith("'s") else word

    def _surname(self, word: str) -> bool:
        v = self.vocab
        base = self._base(word)
        if base in v.last_names:
            return True
        parts = base.split("-")
        return len(parts) > 1 and all(p in v.last_names or p in v.first_names for p in parts)

    def _name_run(self, t: _Text, i: int) -> int:
        """Index of the last word of a full name starting at word i, or i if none follows."""
        v, words, orig = self.vocab, t.words, t.orig
        # A name has at most a few parts; the bound keeps a run of names linear.
        end, j, n = i, i + 1, min(len(words), i + _MAX_NAME_PARTS)
        while j < n and t.text[t.ends[j - 1] : t.starts[j]] in (" ", ". "):
            word = words[j]
            if word in _PARTICLES and j + 1 < n:
                j += 1
                continue
            if not orig[j][:1].isupper() or word in _NEVER_SURNAME:
                break
            if self._surname(word):
                end = j
            elif self._base(word) not in v.first_names:
                break
            if orig[j].endswith("'s"):
                break
            j += 1
        return end

    def _followed_by_name_or_end(self, t: _Text, i: int) -> bool:
        rest = t.text[t.ends[i] :].lstrip()
        if not rest or rest[0] in ",!?:;.-":
            return True
        if i + 1 >= len(t.words) or not t.orig[i + 1][:1].isupper():
            return False
        nxt = t.words[i + 1]
        return nxt in self.vocab.last_names or nxt in self.vocab.first_names

    def _provider(self, t: _Text, out: list[Finding]) -> None:
        """provider.doctor, provider.named: a doctor or nurse named with a care
        relationship ("your visit with Dr. Okafor", "Nurse Kim tried to reach you")."""
        if t.wordset.isdisjoint(_PROVIDER_TITLES):
            return  # both rules start at a title
        words, orig = t.words, t.orig
        for i in range(len(words) - 1):
            if words[i] in _DR:
                j = i + 1
                if not orig[j][:1].isupper() or words[j] in _NOT_AFTER_DR:
                    continue
                if t.any(lexicon.PROVIDER_LINK) and not t.any(_PROVIDER_INTRO):
                    end = j + 1 if j + 1 < len(words) and orig[j + 1][:1].isupper() else j
                    out.append(
                        Finding(kinds.PROVIDER, t.starts[i], t.ends[end], 0.8, "provider.doctor")
                    )
            elif words[i] in _STAFF_TITLES and orig[i + 1][:1].isupper():
                # "Nurse Kim tried to reach you": a named nurse or therapist contacting
                # the reader; the name must be a known one ("Nurse Appreciation Week").
                j = i + 1
                known = words[j] in self.vocab.first_names or words[j] in self.vocab.last_names
                if known and t.any(_POSS_OR_YOU) and not t.any(_PROVIDER_INTRO):
                    out.append(
                        Finding(kinds.PROVIDER, t.starts[i], t.ends[j], 0.75, "provider.named")
                    )

    # --- health facts -------------------------------------------------------------------

    def _mentions(self, t: _Text) -> list[_Mention]:
        if t.mentions is None:
            t.mentions = self._find_mentions(t)
        return t.mentions

    def _inside(self, t: _Text) -> frozenset[str]:
        if t.inside is None:
            t.inside = frozenset(
                w for m in self._mentions(t) for w in t.words[m.index : t.index_at(m.end)]
            )
        return t.inside

    def _find_mentions(self, t: _Text) -> list[_Mention]:
        phrases, starts, words = self.vocab.phrases, self.vocab.phrase_starts, t.words
        n, i = len(words), 0
        found: list[_Mention] = []
        cased_terms = lexicon.CASED_TERMS if not t.wordset.isdisjoint(_CASED_FOLDED) else {}
        while i < n:
            cased = cased_terms.get(t.orig[i]) if cased_terms else None
            if cased is not None:
                found.append(_Mention(t.starts[i], t.ends[i], i, *cased))
                i += 1
                continue
            if words[i] not in starts:
                # "Your surgeon's instructions": the term without its possessive ending.
                word = words[i]
                if "'" in word or "-" in word:
                    base = word[:-2] if word.endswith("'s") else ""
                    if word.startswith(("post-", "pre-")):
                        # "post-surgery", "pre-chemo": care around a term is about it too.
                        base = word.split("-", 1)[1]
                    hit = phrases.get(base) if base else None
                    if hit is not None:
                        found.append(_Mention(t.starts[i], t.ends[i], i, *hit))
                elif len(word) > 6:
                    if word.endswith(_SPECIALTY_SUFFIX) and word not in _NOT_SPECIALTY:
                        found.append(
                            _Mention(t.starts[i], t.ends[i], i, "procedure", kinds.PROCEDURE, "")
                        )
                    elif word.endswith(_CONDITION_SUFFIX) and word not in _NOT_CONDITION:
                        found.append(
                            _Mention(t.starts[i], t.ends[i], i, "condition", kinds.CONDITION, word)
                        )
                i += 1
                continue
            if words[i] in _PROOF and _proof_of(t.folded, t.ends[i]):
                i += 1  # "prueba de ingresos": proof of income, not a test
                continue
            for size in self.vocab.phrase_sizes[words[i]]:
                if size > n - i:
                    continue
                key = words[i] if size == 1 else " ".join(words[i : i + size])
                hit = phrases.get(key)
                if hit is not None:
                    found.append(_Mention(t.starts[i], t.ends[i + size - 1], i, *hit))
                    i += size
                    break
            else:
                i += 1
        return found

    def _possessed(self, t: _Text, index: int) -> bool:
        for j in range(index - 1, max(-1, index - 5), -1):
            word = t.words[j]
            if word in lexicon.POSSESSIVE:
                return True
            if word in lexicon.BREAKERS:
                return False
        return False

    def _health(self, t: _Text, out: list[Finding], person: bool) -> None:
        generic = t.generic
        mentions = self._mentions(t)
        result_words = t.wordset & lexicon.RESULT_WORDS
        if "back" in result_words and _CAME_BACK.search(t.folded) is None:
            # "came back" is news of a result; "Back to school" is not.
            result_words = result_words - {"back"}
        results = bool(result_words)
        if (results or generic) and mentions:
            # A result or education word inside a term is neither: "back pain", "echo",
            # "sleep study", "support group" stays generic only through other words.
            inside = self._inside(t)
            results = results and not result_words <= inside
            if generic and (t.wordset & lexicon.GENERIC) <= inside:
                generic = (
                    not t.wordset.isdisjoint(_HOW_TO_WORDS) and _HOW_TO.search(t.folded) is not None
                )
        if mentions:
            self._health_terms(t, out, person, mentions, generic, results)
        # The patterns below all need a possessive, a result word or a prescription
        # word; most subjects have none, so skip them cheaply.
        if t.any(_POSS_WORDS):
            self._possessive_facts(t, out, generic)
        if not generic:
            self._results(t, out, results)
        if "you" in t.wordset or "usted" in t.wordset:
            self._you_cared(t, out)
        if t.any(_RX_NOUNS):
            self._rx_ready(t, out)

    def _results(self, t: _Text, out: list[Finding], results: bool) -> None:
        """health.result: an analyte with a value ("A1C is high", "potassium 5.9") or a
        test's results being ready ("lab results", "resultados de laboratorio")."""
        # Every analyte value starts with one of _ANALYTE_WORDS.
        analyte = not t.runs.isdisjoint(_ANALYTE_WORDS)
        for rm in _ANALYTE_VALUE.finditer(t.folded) if analyte else ():
            out.append(Finding(kinds.RESULT, rm.start(), rm.end(), 0.75, "health.result"))
        if results:
            for rm in _RESULTS_READY.finditer(t.folded):
                out.append(Finding(kinds.RESULT, rm.start(), rm.end(), 0.7, "health.result"))

    def _you_cared(self, t: _Text, out: list[Finding]) -> None:
        """health.procedure: the reader as the patient of a care verb ("You were seen in
        our ER last night", "usted fue atendido")."""
        for rm in _YOU_CARED.finditer(t.folded):
            out.append(Finding(kinds.PROCEDURE, rm.start(), rm.end(), 0.7, "health.procedure"))

    def _rx_ready(self, t: _Text, out: list[Finding]) -> None:
        """health.prescription: a prescription being ready, filled, approved or denied."""
        for rm in _RX_READY.finditer(t.folded):
            out.append(
                Finding(kinds.PRESCRIPTION, rm.start(), rm.end(), 0.7, "health.prescription")
            )

    def _health_terms(
        self,
        t: _Text,
        out: list[Finding],
        person: bool,
        mentions: list[_Mention],
        generic: bool,
        results: bool,
    ) -> None:
        """health.term: a condition, medicine or test tied to a person (a name, an
        identifier, a possessive, a result or care event), not education or marketing."""
        strong_result = t.any(lexicon.STRONG_RESULT)
        # A dose has digits; every over-the-counter phrase has one of _NO_RX_WORDS.
        rx = t.any(lexicon.PRESCRIPTION_WORDS) or (t.has_digit and bool(_DOSE.search(t.text)))
        otc = not t.runs.isdisjoint(_NO_RX_WORDS) and _NO_RX.search(t.folded) is not None
        # A care word that is itself a health term inside a mention is no event:
        # "Infusion center expansion", "Preparing for surgery", "Physical therapy may
        # help"; "ER visit" and "therapy session" still are.
        care_words = t.wordset & lexicon.CARE_EVENT
        if "stay" in care_words and _STAY_WELL.search(t.folded):
            # "stay well", "stay safe": advice, not a hospital stay.
            care_words = care_words - {"stay"}
        if care_words:
            inside, phrases = self._inside(t), self.vocab.phrases
            care_words = frozenset(w for w in care_words if w not in inside or w not in phrases)
        # Against an education cue a result word needs news with it: "Understanding your lab
        # results" is a glossary, "Your lab results are ready - learn more" is not.
        ready_result = results and (t.any(lexicon.READY_WORDS) or strong_result)
        record = t.any(lexicon.RECORD_WORDS)
        has_identifier = bool(out)
        family = self._family(t)
        # "next steps for you" ties a fact to the reader; "is it right for you?" and
        # "locations near you" do not.
        pronoun_tie = not t.text.rstrip().endswith("?") and "near" not in t.wordset
        for m in mentions:
            care = bool(care_words)
            # "next steps for you" ties the fact to the reader too, if less tightly.
            poss = self._possessed(t, m.index) or (
                m.category != "preventive"
                and pronoun_tie
                and any(w in _YOU for w in t.words[m.index + 1 :])
            )
            cta = poss and m.index >= 2 and t.words[max(0, m.index - 3)] in _CTA
            keep = person or has_identifier or m.index > family
            if not keep and m.category == "preventive":
                # "wellness visit" names a service; its "visit" is no event of the reader.
                own = care and not care_words <= set(t.words[m.index : t.index_at(m.end)])
                keep = (poss and (results or own or record) and not cta) or (
                    results and not generic
                )
            elif not keep and m.category == "medication":
                keep = (
                    (rx or poss)
                    and not t.any(_MED_MARKETING)
                    and not (generic and not rx)
                    and not otc
                )
            elif not keep:
                keep = (
                    (poss and (not generic or care or ready_result) and not cta)
                    or (strong_result and not generic)
                    or (results and not generic and m.category in ("procedure", "condition"))
                    or (care and not generic and not t.any(_ORG_NEWS))
                )
            if keep:
                out.append(Finding(m.kind, m.start, m.end, 0.8 if person else 0.7, "health.term"))

    def _family(self, t: _Text) -> int:
        """Index of a relative the subject is about ("Su hija necesita la vacuna", "Your
        son's asthma plan"), or a large number: not in a question, a call to action or
        education. Terms after that index are about the relative."""
        none = len(t.words) + 1
        if t.wordset.isdisjoint(lexicon.FAMILY):
            return none
        if t.generic or t.text.rstrip().endswith("?") or (t.words and t.words[0] in _CTA):
            return none
        words = t.words
        for i in range(len(words) - 1):
            if words[i] in _POSS_WORDS and words[i + 1] in lexicon.FAMILY:
                return i + 1
        # "Mom's chemo", "Dad's MRI": a relative's own health term right after.
        for i, w in enumerate(words):
            if w.endswith("'s") and w in lexicon.FAMILY and self._fact_after(t, i):
                return i
        return none

    def _possessive_facts(self, t: _Text, out: list[Finding], generic: bool) -> None:
        """health.possessive: a test, result, procedure or prescription the reader owns
        ("your MRI results", "your knee replacement", "tus medicamentos")."""
        for rm in _POSS_TEST.finditer(t.folded):
            before = t.before(rm.start(), 2)
            if _proof_of(t.folded, rm.end()):
                continue  # "su prueba de ingresos": proof of income, not a test
            if not generic and not (set(before) & _CTA):
                out.append(Finding(kinds.PROCEDURE, rm.start(), rm.end(), 0.7, "health.possessive"))
        for pattern, kind, nouns in _POSSESSED_NOUNS:
            # Every match ends with one of the nouns.
            for rm in pattern.finditer(t.folded) if not t.runs.isdisjoint(nouns) else ():
                # "Your monthly activity report" is an app summary, not a test report.
                if (
                    kind == kinds.RESULT
                    and rm.group(0).split()[-1] in ("report", "reports")
                    and set(rm.group(0).split()) & lexicon.NOT_TEST_REPORT
                ):
                    continue
                if not generic or (kind == kinds.RESULT and t.any(lexicon.READY_WORDS)):
                    out.append(Finding(kind, rm.start(), rm.end(), 0.75, "health.possessive"))


_PROOF_AFTER = re.compile(r"\s+de\s+(\w+)")


def _proof_of(folded: str, end: int) -> bool:
    """A test word ending at `end` is proof of something ("prueba de ingresos")."""
    if not folded.endswith(_PROOF_WORDS, 0, end):
        return False
    m = _PROOF_AFTER.match(folded, end)
    return m is not None and m.group(1) in lexicon.PROOF_OF


def _owned_by_business(words: Sequence[str], i: int, kind: str) -> bool:
    """The cue at `i` names the business's own number by the word before it: "Ticket ID",
    "Zoom meeting ID" (lex_business_id_words.txt), "Printer SN", "Freezer #3 serial"
    (lex_equipment.txt), "Carrier claim", "Employer account" (lex_business_owners.txt)."""
    if not i:
        return False
    before = words[i - 1]
    if kind == kinds.DEVICE:
        if before.isdigit() and i > 1:
            before = words[i - 2]
        return before in lexicon.EQUIPMENT
    if words[i] == "id":
        return before in lexicon.BUSINESS_ID_WORDS
    return before in lexicon.BUSINESS_OWNERS


_NumberRule = Callable[[PhiDetector, _Text, list[Finding], list[tuple[int, int]]], None]
# The identifier rules in the order they claim numbers (see PhiDetector._identifiers).
_ID_RULES: tuple[_NumberRule, ...] = (
    PhiDetector._ssn,
    PhiDetector._ssn_last4,
    PhiDetector._phone,
    PhiDetector._phone_intl,
    PhiDetector._nino,
    PhiDetector._phone_cued,
    PhiDetector._dea,
    PhiDetector._npi,
    PhiDetector._icd10,
    PhiDetector._icd10_cued,
    PhiDetector._cpt_cued,
    PhiDetector._cued_ids,
    PhiDetector._long_number,
    PhiDetector._alnum_number,
)
_FEW_DIGIT_ID_RULES: tuple[_NumberRule, ...] = (PhiDetector._icd10, PhiDetector._icd10_cued)

_NameRule = Callable[[PhiDetector, _Text, _NameCtx], Finding | None]
# The name rules in the order they are offered a capitalised token (the first that fires
# claims it): those that read any capitalised word, those after a title or patient cue
# that read a word that can be a name, then (not after a doctor title) the rest.
_NAME_RULES: tuple[tuple[_NameRule, ...], tuple[_NameRule, ...], tuple[_NameRule, ...]] = (
    (
        PhiDetector._name_records_caps,
        PhiDetector._name_greeting,
        PhiDetector._name_salutation_surname,
        PhiDetector._name_doctor_in_full,
    ),
    (PhiDetector._name_title, PhiDetector._name_patient_cue),
    (
        PhiDetector._name_salutation,
        PhiDetector._name_vocative,
        PhiDetector._name_health_verb,
        PhiDetector._name_relative,
        PhiDetector._name_dash_vocative,
        PhiDetector._name_possessive,
        PhiDetector._name_full,
        PhiDetector._name_last_first,
    ),
)

_VERBS = lexicon.NAME_VERBS


def _is_verb(word: str) -> bool:
    """A lower-case verb right after a first name: "Maria missed", "Carlos tiene"."""
    return word in _VERBS or (word.islower() and word.endswith("ed") and len(word) > 4)


def _cued_value_ok(kind: str, value: str) -> bool:
    """Identifiers with a check rule must pass it even when labelled; codes have their own rules."""
    digits = re.sub(r"\D", "", value)
    if kind == kinds.SSN:
        return len(digits) == 9 and ssn_ok(digits[:3], digits[3:5], digits[5:])
    if kind == kinds.NPI:
        return npi_ok(digits)
    if kind == kinds.DEA:
        return dea_ok(value.upper())
    return kind not in (kinds.ICD10, kinds.CPT)


def _overlaps(taken: Iterable[tuple[int, int]], start: int, end: int) -> bool:
    return any(s < end and start < e for s, e in taken)


def _dedupe(found: list[Finding]) -> list[Finding]:
    """One finding per kind and span: the strongest, since its confidence sets the tier
    (a weak cue found first must not hide a decisive rule on the same words)."""
    if len(found) < 2:
        return list(found)  # nothing to sort or drop
    seen: set[tuple[str, int, int]] = set()
    out: list[Finding] = []
    for f in sorted(found, key=lambda f: (f.start, f.end, f.kind, -f.confidence)):
        key = (f.kind, f.start, f.end)
        if key not in seen:
            seen.add(key)
            out.append(f)
    return out
