"""A business's own IDs ("Ticket ID 4471902", "Zoom meeting ID 844 1229 0331") are not MRNs.

The cue "ID" alone reads as a patient identifier, which refused every subject with an IT
ticket, meeting, webinar or transaction ID in it (guide R3.8: "Teams meeting ID 291 004
557 613 - budget review" is clean). The word before the cue says whose ID it is. The
class is attacked as a whole: every business word of the data file, several spellings of
the cue and shapes of the number, against the rules alone and the whole detector, with
patient IDs and patient contexts as the controls. Examples are written for this test.
"""

from __future__ import annotations

import itertools

import pytest

from relay.phi import default_detector, lexicon
from relay.phi.api import STRONG
from relay.phi.detector import DECISIVE, PhiDetector
from relay.phi.normalize import subject_texts

RULES = PhiDetector(scorer=False)
OBJECTS = sorted(lexicon.BUSINESS_ID_WORDS - lexicon.BUSINESS_CUES)
CUES = ["ID", "Id", "id", "ID:", "ID -"]
NUMBERS = ["4471902", "84412290331", "291 004 557 613", "2026-0441-77", "SR220914"]
TAILS = ["closed", "for Thursday's budget review", "- please confirm by Friday"]


def _decisive(subject: str) -> list[str]:
    found = RULES.analyse(subject).found
    return [f.rule for f in found if f.confidence >= DECISIVE]


def _assert_not_refused(subject: str) -> None:
    judgement = default_detector().judge(subject_texts(subject))
    assert judgement.tier != STRONG, judgement.rules
    assert "id.cued" not in judgement.rules


def _cases() -> list[str]:
    out = []
    for i, (obj, cue) in enumerate(itertools.product(OBJECTS, CUES)):
        number, tail = NUMBERS[i % len(NUMBERS)], TAILS[i % len(TAILS)]
        out.append(f"{obj.capitalize()} {cue} {number} {tail}")
    return out


def test_the_class_is_large() -> None:
    assert len(OBJECTS) >= 30
    assert {"meeting", "zoom", "teams", "webinar", "incident", "transaction"} <= set(OBJECTS)


@pytest.mark.parametrize("subject", _cases())
def test_a_business_id_is_not_decisive(subject: str) -> None:
    assert _decisive(subject) == []


@pytest.mark.parametrize(
    "subject",
    [
        "Zoom meeting ID 844 1229 0331 for Thursday's staff huddle",
        "Ticket ID 4471902 resolved",
        "Webinar ID 99120044 - billing basics",
        "Transaction ID 77120034 for the supply order",
        "Incident ID 20260441 phishing report",
        "Teams ID 2 3 7 1 1 8 6 4 0 5 5 2 - rebate review",
        "Credit card processor statement for May - merchant ID 4455012",
        "Providers: our EDI payer ID is 61101",
        "Change ID 4471902 approved for Saturday's maintenance window",
    ],
)
def test_the_relay_does_not_refuse_it(subject: str) -> None:
    _assert_not_refused(subject)


@pytest.mark.parametrize(
    ("subject", "rule"),
    [
        ("Patient ID 4471902 needs review", "id.cued"),
        ("ID 4471902 on your chart", "id.cued"),
        ("Member ID XJH88231190 card", "id.cued"),
        ("Chart ID 4471902 for the biopsy", "id.cued"),
        # A business word with a patient context is still evidence (B8).
        ("Request ID 4471902: patient records for the MRI", "id.cued-business"),
    ],
)
def test_patient_ids_still_count(subject: str, rule: str) -> None:
    found = RULES.analyse(subject).found
    assert rule in [f.rule for f in found]
    assert default_detector().judge(subject_texts(subject)).phi


# The organisation's own equipment: its serial numbers are assets, not devices tied to a
# person (guide R1.11 and R3.8).
EQUIPMENT = sorted(lexicon.EQUIPMENT)
SERIAL_CUES = ["SN", "S/N", "serial", "Serial #", "SN:"]


def _equipment_cases() -> list[str]:
    out = []
    for i, (thing, cue) in enumerate(itertools.product(EQUIPMENT, SERIAL_CUES)):
        number = ["CNB8K41234", "7731-AX-20", "44812", "5CG2041XYZ"][i % 4]
        where = ["", " #3"][i % 2]
        out.append(f"{thing.capitalize()}{where} {cue} {number} due for service")
    return out


def test_the_equipment_class_is_large() -> None:
    assert len(EQUIPMENT) >= 15
    assert not {"pump", "monitor", "ventilator", "pacemaker", "cpap"} & set(EQUIPMENT)


@pytest.mark.parametrize("subject", _equipment_cases())
def test_an_equipment_serial_is_not_decisive(subject: str) -> None:
    assert _decisive(subject) == []


@pytest.mark.parametrize(
    "subject",
    [
        "Printer SN CNB8K41234 jammed again",
        "Centrifuge serial 7731-AX-20 due for calibration",
        "Freezer #3 serial 44812 alarm log",
    ],
)
def test_the_relay_does_not_refuse_an_asset(subject: str) -> None:
    _assert_not_refused(subject)


@pytest.mark.parametrize(
    "subject",
    [
        "Your pump serial 44HX0921 replacement ships today",
        "CPAP rental SN 23A77104 - return label",
        "Cochlear processor SN CP-6620914 paired to the new app",
        "Pacemaker SN 44HX0921 check Wed 9:10 am",
    ],
)
def test_a_patient_device_serial_still_counts(subject: str) -> None:
    assert "id.cued" in [f.rule for f in RULES.analyse(subject).found]
    assert default_detector().judge(subject_texts(subject)).phi


# A claim, account, case or permit named by its business owner: a freight or warranty
# claim, a vendor or utility account, an employer's account with the clinic, a building
# permit (guide R3.8, lex_business_owners.txt).
OWNERS = sorted(lexicon.BUSINESS_OWNERS)
OWNED_CUES = ["claim", "claim #", "account", "acct", "permit", "case #"]


def _owned_cases() -> list[str]:
    out = []
    for i, (owner, cue) in enumerate(itertools.product(OWNERS, OWNED_CUES)):
        number = ["34458803", "W-30918", "4410-22", "26-1043", "FC-20441"][i % 5]
        tail = ["filed", "- photos attached", "approved, see the letter", "closed"][i % 4]
        out.append(f"{owner.capitalize()} {cue} {number} {tail}")
    return out


def test_the_owner_class_is_large_and_leaves_patients_out() -> None:
    assert len(OWNERS) >= 20
    assert not {"insurance", "medical", "dental", "patient", "member", "pharmacy"} & set(OWNERS)


@pytest.mark.parametrize("subject", _owned_cases())
def test_a_business_owned_number_is_not_decisive(subject: str) -> None:
    assert _decisive(subject) == []


@pytest.mark.parametrize(
    ("subject", "rule"),
    [
        ("Insurance claim 34458803 for your MRI", "id.cued"),
        ("Claim #W-30918 denied", "id.cued"),
        ("Account 4410-22: your balance after the ER visit", "id.cued"),
        # A business owner with a patient context is still evidence (B8).
        ("Warranty claim WC-55102 approved for your insulin pump", "id.cued-business"),
    ],
)
def test_patient_claims_and_accounts_still_count(subject: str, rule: str) -> None:
    assert rule in [f.rule for f in RULES.analyse(subject).found]
    assert default_detector().judge(subject_texts(subject)).phi


# A supplier's invoice with an amount is the business's own (guide R3.8); a patient's says
# whose it is, what care it is for, or names a health term (R2.5, B3).
INVOICE_WORDS = ["Invoice", "Invoice #", "Factura", "Facture", "Fatura", "Remittance"]
GOODS = [
    "waiting-room chairs",
    "scope repair",
    "janitorial services, March",
    "toner and paper",
    "HVAC maintenance",
    "catering for the board lunch",
]
AMOUNTS = ["$4,120", "1.240 €", "1 250 €", "US$980.00", "R$ 2.300,00", "$12,480.22"]


def _invoice_cases() -> list[str]:
    out = []
    for i, (word, goods) in enumerate(itertools.product(INVOICE_WORDS, GOODS)):
        number = ["A-99172", "88120", "2025-0883", "PT-62018"][i % 4]
        out.append(f"{word} {number} \u2013 {goods}, {AMOUNTS[i % len(AMOUNTS)]}")
    return out


@pytest.mark.parametrize("subject", _invoice_cases())
def test_a_supplier_invoice_amount_is_not_a_bill(subject: str) -> None:
    assert "id.amount" not in [f.rule for f in RULES.analyse(subject).found]


@pytest.mark.parametrize(
    "subject",
    [
        "Your invoice: $120 for the visit",
        "Su factura de anestesia de $645.20 pasó a cobranza",
        "Votre facture de 95 $ pour le certificat médical",
        "Invoice for my MRI: $1,120 - why so high?",
        "Invoice for Dad's home care: $980.00",
        "Fatura da sua consulta: R$ 250,00",
    ],
)
def test_a_patient_invoice_amount_still_counts(subject: str) -> None:
    assert "id.amount" in [f.rule for f in RULES.analyse(subject).found]


# A group number is the employer's plan, not a person's identifier (guide R1.3 lists
# member, subscriber, beneficiary, policy and Medicaid IDs, not groups; R3.8).
GROUP_CUES = ["Group", "group #", "Group No.", "GROUP", "group number", "Group ID"]
EMPLOYER_TAILS = [
    "renewal packet for Lakeshore Dairy",
    "- rates effective 1/1",
    "wants a 4-tier contribution structure",
    "claims experience summary (aggregate)",
    "census file received",
    "broker of record letter",
]


def _group_cases() -> list[str]:
    out = []
    for i, (cue, tail) in enumerate(itertools.product(GROUP_CUES, EMPLOYER_TAILS)):
        number = ["00471", "27730", "GRP-44019", "0073310", "62044-A"][i % 5]
        out.append(f"{cue} {number} {tail}")
    return out


@pytest.mark.parametrize("subject", _group_cases())
def test_an_employer_group_number_is_not_decisive(subject: str) -> None:
    assert _decisive(subject) == []


@pytest.mark.parametrize(
    "subject",
    [
        "Group 55120 / member 0448812 - eligibility failed at check-in",
        "Group #44810, subscriber no. W227164093: EAP authorization",
        "Newly diagnosed leukemia patient in group 62044 - early notice to carrier",
    ],
)
def test_a_member_with_a_group_still_counts(subject: str) -> None:
    assert default_detector().judge(subject_texts(subject)).phi
