"""Curated cue words and lay health vocabulary, loaded from data/lex_*.{txt,tsv}.

The word classes live in data files (each with a header saying what it is); this
module only loads them under the names the detector reads. Terms are lower case
without accents: the detector folds text the same way before looking them up. The
generated lists in data/ (ICD-10-CM terms, drug names, person names) extend these;
the curated files hold what a vocabulary package cannot know: lay phrasing,
Spanish, canonical condition tags and the sensitive groups.
"""

from __future__ import annotations

from pathlib import Path

DATA = Path(__file__).with_name("data")


def _rows(name: str) -> list[str]:
    text = (DATA / name).read_text(encoding="utf-8")
    return [ln for ln in text.splitlines() if ln and not ln.startswith("# ") and ln != "#"]


def words(name: str) -> frozenset[str]:
    """A one-entry-per-line word class (data/lex_NAME.txt)."""
    return frozenset(_rows(f"lex_{name}.txt"))


def alternatives(name: str) -> str:
    """A regular-expression alternation, one alternative a line in file order
    (data/lex_NAME.txt): "results?|reports?|findings"."""
    return "|".join(_rows(f"lex_{name}.txt"))


def suffixes(name: str) -> tuple[str, ...]:
    """Word endings, one a line (data/lex_NAME.txt), for str.endswith."""
    return tuple(_rows(f"lex_{name}.txt"))


def _tagged(name: str) -> dict[str, tuple[str, tuple[str, ...]]]:
    grouped: dict[str, tuple[str, list[str]]] = {}
    for row in _rows(f"lex_{name}.tsv"):
        tag, kind, term = row.split("\t")
        grouped.setdefault(tag, (kind, []))[1].append(term)
    return {tag: (kind, tuple(terms)) for tag, (kind, terms) in grouped.items()}


# tag -> (finding kind, terms). A term's tag is what `conditions()` reports, for
# condition-based segmentation of marketing. Sensitive tags carry their own kind.
CONDITION_TAGS = _tagged("condition_tags")
MORE_CONDITIONS = _tagged("more_conditions")
# cue word -> kind of the identifier that follows it ("MRN 00482913").
ID_CUES: dict[str, str] = {
    cue: kind for cue, kind in (row.split("\t") for row in _rows("lex_id_cues.tsv"))
}
# exact-case term -> (category, kind, tag): "PrEP" and "PT" only in capitals.
CASED_TERMS: dict[str, tuple[str, str, str]] = {
    term: (category, kind, tag)
    for term, category, kind, tag in (row.split("\t") for row in _rows("lex_cased_terms.tsv"))
}

PROCEDURES = words("procedures")
PREVENTIVE = words("preventive")
POSSESSIVE = words("possessive")
BREAKERS = words("breakers")
RESULT_WORDS = words("result_words")
STRONG_RESULT = words("strong_result")
READY_WORDS = words("ready_words")
PRESCRIPTION_WORDS = words("prescription_words")
CARE_EVENT = words("care_event")
GENERIC = words("generic")
BIRTH_WORDS = words("birth_words")
DATE_CARE_WORDS = words("date_care_words")
ORG_WORDS = words("org_words")
TITLES = words("titles")
PATIENT_WORDS = words("patient_words")
DOCTOR_TITLES = words("doctor_titles")
PROVIDER_LINK = words("provider_link")
SALUTATIONS = words("salutations")
NOT_NAMES = words("not_names")
MEDICATIONS = words("medications")
SPANISH_WORD_NAMES = words("spanish_word_names")
MORE_PROCEDURES = words("more_procedures")
STAFF_NEWS = words("staff_news")
FAMILY = words("family")
RECORD_WORDS = words("record_words")
NOT_TEST_REPORT = words("not_test_report")

# The detector's word classes (relay/phi/detector.py): what each is for is in its file.
BUSINESS_CUES = words("business_cues")
# Before the cue "ID": the ID is the business's own (lex_business_id_words.txt).
BUSINESS_ID_WORDS = words("business_id_words") | BUSINESS_CUES
# Before a serial-number cue: the organisation's own asset (lex_equipment.txt).
EQUIPMENT = words("equipment")
# Before a claim, account, case or permit cue: the business's own number
# (lex_business_owners.txt).
BUSINESS_OWNERS = words("business_owners")
# After "prueba de": a document, not a test (lex_proof_of.txt).
PROOF_OF = words("proof_of")
ORG_MOVES = words("org_moves")
POSSESSED_GENERIC = words("possessed_generic")
ROLE_MAILBOXES = words("role_mailboxes")
TOLL_FREE = words("toll_free")
PERSONAL_PLACE = words("personal_place")
PHONE_PERSONAL = words("phone_personal")
PHONE_ORG = words("phone_org")
MED_MARKETING = words("med_marketing")
CTA = words("cta")
STAFF_TITLES = words("staff_titles")
NOT_AFTER_DR = words("not_after_dr")
PROVIDER_INTRO = words("provider_intro")
ORG_NEWS = words("org_news")
NOT_SPECIALTY = words("not_specialty")
NOT_CONDITION = words("not_condition")
NAME_PARTICLES = words("name_particles")
NEVER_SURNAME = words("never_surname")
PLACE_PREFIXES = words("place_prefixes")
RX_NOUNS = words("rx_nouns")
GREETINGS = words("greetings")
ICD_CUES = words("icd_cues")
CPT_CUES = words("cpt_cues")
NAME_VERBS = words("name_verbs")
SSN_CUES = words("ssn_cues")
PHONE_CUES = words("phone_cues")
PHYSICIAN_TITLES = words("physician_titles")
SPECIALTY_SUFFIXES = suffixes("specialty_suffixes")
CONDITION_SUFFIXES = suffixes("condition_suffixes")
# Alternations inside the detector's patterns (order matters: leftmost alternative wins).
RESULT_NOUNS = alternatives("result_nouns")
RX_POSSESSED_NOUNS = alternatives("rx_possessed_nouns")
ANALYTES = alternatives("analytes")
