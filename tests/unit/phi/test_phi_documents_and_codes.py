"""Two look-alikes that were refused: a proof document read as a test, a code as an account.

"Suba su prueba de ingresos" is proof of income, not a test result (guide R3.5:
paperwork); "billing J3590 correctly (webinar)" is a procedure code in coding education
(guide B7), not an account number after the cue "billing". Each class is attacked as a
whole (every word of the data file, every code shape), with real tests and codes in a
case context as the controls. Examples are written for this test.
"""

from __future__ import annotations

import itertools

import pytest

from relay.phi import default_detector, lexicon
from relay.phi.api import STRONG
from relay.phi.detector import DECISIVE, PhiDetector
from relay.phi.normalize import subject_texts

RULES = PhiDetector(scorer=False)
FRAMES = [
    "Suba su {noun} de {what} para terminar la solicitud",
    "Falta su {noun} de {what}",
    "Recibimos sus {noun}s de {what}, gracias",
]


def _proof_cases() -> list[str]:
    return [
        frame.format(noun="prueba", what=what)
        for frame, what in itertools.product(FRAMES, sorted(lexicon.PROOF_OF))
    ]


def _findings(subject: str) -> list[str]:
    return [f.rule for f in RULES.analyse(subject).found]


def _decisive(subject: str) -> list[str]:
    """The rules that decide alone (a refusal whatever the score)."""
    return [f.rule for f in RULES.analyse(subject).found if f.confidence >= DECISIVE]


@pytest.mark.parametrize("subject", _proof_cases())
def test_proof_of_something_is_not_a_test(subject: str) -> None:
    found = _findings(subject)
    assert "health.possessive" not in found and "health.term" not in found, found


@pytest.mark.parametrize(
    "subject",
    [
        "Su prueba de embarazo salió positiva",
        "Su prueba de COVID salió negativa",
        "Sus pruebas de laboratorio están listas",
        "Tu prueba de VIH: resultado disponible",
    ],
)
def test_a_real_test_still_counts(subject: str) -> None:
    assert "health.possessive" in _findings(subject)
    assert default_detector().judge(subject_texts(subject)).phi


CODES = ["99213", "99214", "J3590", "P9016", "G0439", "0591T", "3044F"]
CODE_FRAMES = [
    "Billing {code} correctly: a 30-minute webinar",
    "Coding primer: billing {code} vs the alternatives",
    "Webinar: billing {code} for blood products in 2027",
]


@pytest.mark.parametrize(
    "subject", [f.format(code=c) for f, c in itertools.product(CODE_FRAMES, CODES)]
)
def test_a_code_after_billing_is_not_an_account(subject: str) -> None:
    assert _decisive(subject) == []
    assert default_detector().judge(subject_texts(subject)).tier != STRONG


@pytest.mark.parametrize(
    ("subject", "rule"),
    [
        ("Your claim: billing code 99214 for your visit", "id.cpt-cued"),
        ("Billing 4471902 past due", "id.cued"),
        ("Billing account 55120934 statement ready", "id.cued"),
    ],
)
def test_codes_in_a_case_and_accounts_still_count(subject: str, rule: str) -> None:
    assert rule in _findings(subject)
    assert default_detector().judge(subject_texts(subject)).phi


@pytest.mark.parametrize(
    "subject",
    [
        "Webinar: billing 99401-99404 for prevention counseling",
        "Coding corner: when to bill 95885 vs 95886",
        "Billed J3590 twice? How to correct the line (webinar)",
    ],
)
def test_bill_and_code_ranges_are_codes(subject: str) -> None:
    assert _decisive(subject) == []


@pytest.mark.parametrize(
    "subject",
    [
        "Student Health Insurance Plan 2026-27 benefits summary is posted",
        "Plan 2026\u20132027 open enrolment starts Monday",
        "Plan 2027-28 rates are posted",
    ],
)
def test_a_span_of_years_is_no_identifier(subject: str) -> None:
    assert _decisive(subject) == []


@pytest.mark.parametrize(
    ("subject", "rule"),
    [("Member ID 4471902 card", "id.cued"), ("Your bill 4471902 is past due", "id.cued")],
)
def test_numbers_after_the_same_cues_still_count(subject: str, rule: str) -> None:
    assert rule in _findings(subject)


# Capitals in a subject that has lower case are an abbreviation, not a courtesy title:
# "MS Walk" is the multiple sclerosis walk (guide R3.4), "MR safety" magnetic resonance.
@pytest.mark.parametrize(
    "subject",
    [
        "MS Walk team sign-ups are open",
        "Save the date: MS Walk on 4/26",
        "MR Safety week: screening forms updated",
        "Join the MS Society Walk this Saturday",
    ],
)
def test_an_all_caps_abbreviation_is_no_title(subject: str) -> None:
    assert "name.title" not in _findings(subject)


@pytest.mark.parametrize(
    "subject",
    ["Ms. Okafor, your biopsy results", "Mr Jones called about his MRI", "Mrs Patel: lab results"],
)
def test_a_courtesy_title_still_names(subject: str) -> None:
    assert "name.title" in _findings(subject)


# Guide R1.12 and B7: an ICD-10 or CPT code "with a patient, member, claim, your, Re:, dx:
# or intake" is a case and decides alone; the same code in coding education stays weak,
# for the scorer to judge. Every code shape against every context word and every tip.
CASE_CODES = ["CPT 99214", "CPT code 20610", "HCPCS J3590", "E11.9", "ICD code E119", "J45.909"]
CASE_FRAMES = [
    "Your claim: billing {code} for your visit",
    "Patient denied for {code}: appeal by Friday",
    "Member appeal on {code} needs the notes",
    "Claim rejected: {code} not covered",
    "Re: {code} documentation",
    "Intake form lists {code}, please confirm",
    "Su reclamo por {code} fue negado",
    "Paciente con {code}: autorizacion pendiente",
    "pt w/ {code} needs prior auth",
]
TIP_FRAMES = [
    "Coding clinic recap: sequencing {code} in 2027",
    "Webinar: documenting {code} correctly",
    "Top 10 denials this quarter include {code}",
]


@pytest.mark.parametrize(
    "subject", [f.format(code=c) for f, c in itertools.product(CASE_FRAMES, CASE_CODES)]
)
def test_a_code_in_a_case_decides_alone(subject: str) -> None:
    assert {"id.cpt-cued", "id.icd10", "id.icd10-cued"} & set(_decisive(subject)), _findings(
        subject
    )
    assert default_detector().judge(subject_texts(subject)).phi


@pytest.mark.parametrize(
    "subject", [f.format(code=c) for f, c in itertools.product(TIP_FRAMES, CASE_CODES)]
)
def test_a_code_in_coding_education_stays_weak(subject: str) -> None:
    assert _decisive(subject) == []
