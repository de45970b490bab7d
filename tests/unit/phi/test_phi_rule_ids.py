"""Each rule id of the classic detector (relay/phi/detector.py) with its own table of examples.

The named rules of relay/phi/rules.py have theirs in test_phi_rules.py. Every example
is written for this table (never a row of the validation or held-out writers): the
subjects in the first list must make the rule fire, those in the second must not.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from relay.phi import detector
from relay.phi.detector import PhiDetector
from relay.phi.normalize import normalize

RULES = PhiDetector(scorer=False)

TABLE: dict[str, tuple[list[str], list[str]]] = {
    "id.ssn": (
        ["SSN 123-45-6789 on file", "Your social 219 09 9999 was updated"],
        ["Call 123-45-678 today", "Order 000-12-3456 shipped"],
    ),
    "id.ssn-last4": (
        ["SSN ending 6789", "Seguro social terminado en 4421"],
        ["Social hour at 4 pm", "SSN workshop recap"],
    ),
    "id.nino": (["NI number AB 12 34 56 C on your form"], ["Order AB1234 shipped"]),
    "id.phone": (
        ["Call me back at (312) 555-0187", "Your cell 312.555.0187 is on file"],
        ["Call us at 1-800-555-0100", "Our office: (312) 555-0100"],
    ),
    "id.phone-intl": (
        ["Reach me on +44 20 7946 0958", "Mi celular +34 612 34 56 78"],
        ["Call our clinic on +44 20 7946 0958"],
    ),
    "id.phone-cued": (
        ["Patient cell 3125550187 please call back"],
        ["Reference 3125550187 for your order"],
    ),
    "id.email": (
        ["Send the forms to jane.okafor@example.com"],
        ["Questions? Write to billing@clinic.example"],
    ),
    "id.address": (
        ["New home address: 42 Oak Lane", "Deliver to 1234 Johnson Groves Apt. 12"],
        ["Join the 2025 Heart Walk", "Our new location opens at 42 Oak Lane"],
    ),
    "id.address-es": (
        ["Su domicilio: Calle Mayor 12", "Enviar a Av. Reforma 123"],
        ["Calle de la salud: 5 consejos"],
    ),
    "id.zip": (
        ["Springfield, IL 62704 is your home", "ZIP 62704 for your mailing address"],
        ["Top 10 tips for summer"],
    ),
    "id.date": (
        ["DOB 3/14/1985", "Jane Okafor born March 3rd, 1985"],
        ["Clinic closed 12/25", "March 2025 newsletter"],
    ),
    "id.dea": (["Prescriber DEA AB1234563"], ["Order AB1234567 shipped"]),
    "id.npi": (["Provider NPI 1234567893"], ["Order 1234567890 shipped"]),
    "id.icd10": (["Diagnosis E11.9 on your chart", "Code F32.1 added"], ["Version 2.1 released"]),
    "id.icd10-cued": (["Dx code E119 added to your record"], ["E119 is our room number"]),
    "id.cpt-cued": (
        ["CPT 99213 billed for your visit", "Procedure code 70553 authorised"],
        ["Room 99213 is closed"],
    ),
    "id.cued": (["MRN 00482913 results", "Member ID XJH88231190 card"], ["MRN questions answered"]),
    "id.cued-business": (
        ["Invoice 44718812 for patient Jane Okafor"],
        ["Invoice 44718812 from our vendor"],
    ),
    "id.business-number": (
        ["Your order 99812345 has shipped", "Zoom meeting ID 84412290331 for the huddle"],
        ["Your order has shipped"],
    ),
    "id.long-number": (["Re: 4471881239 needed"], ["Call 911 now"]),
    "id.alnum-number": (["Re: XJH882311901 status"], ["Flight BA123 delayed"]),
    "name.records-caps": (["MILLER, GERALD - REFERRAL"], ["SALES, MARKETING - Q3 REVIEW"]),
    "name.greeting": (
        ["Hi April, your visit", "Dear Ngozi, your forms are ready"],
        ["Hello Friends, spring news", "Dear Friends, spring news"],
    ),
    "name.salutation-surname": (["Re: April Jones"], ["Re: April newsletter"]),
    "name.doctor-in-full": (["Re: Dr Bradley Murphy"], ["Re: Dr Murphy"]),
    "name.title": (
        ["Mr. Okafor, your results", "Sra. López: su cita"],
        ["The Clark team welcomes you"],
    ),
    "name.patient-cue": (
        ["Patient: Jane Okafor", "Pt Okafor follow-up"],
        ["New patient? Here's what to expect"],
    ),
    "name.salutation": (["Results for Maria"], ["Results for April"]),
    "name.vocative": (
        ["Jane, your results are in", "Managing your diabetes, Jane"],
        ["Grace, a new season of care"],
    ),
    "name.health-verb": (["Carlos has a fever"], ["Carlos has joined our team"]),
    "name.relative": (["your son Jesse has a fever"], ["your son and the flu season"]),
    "name.dash-vocative": (
        ["Thinking of you, Cristina - get well soon"],
        ["Thinking of you - get well soon"],
    ),
    "name.possessive": (["Jane's lab results"], ["Jane's Bakery opens Monday"]),
    "name.full": (
        ["Jane Okafor - lab follow-up", "Maria Lopez needs a callback"],
        ["Robin Mills Garden Tour"],
    ),
    "name.last-first": (["Okafor, Jane - referral"], ["Sales, Marketing and You"]),
    "provider.doctor": (
        ["Your visit with Dr. Okafor is confirmed"],
        ["Meet Dr. Okafor, our new cardiologist"],
    ),
    "provider.named": (["Nurse Kim tried to reach you"], ["Nurse Appreciation Week"]),
    "health.term": (
        ["Your diabetes care plan", "Jane Okafor: metformin refill"],
        ["5 tips to manage diabetes", "Diabetes awareness month"],
    ),
    "health.possessive": (
        ["Your MRI results are in", "Your knee replacement follow-up"],
        ["Get your flu shot today"],
    ),
    "health.result": (["Your A1C is high", "Your lab results are ready"], ["What is an A1C test?"]),
    "health.procedure": (
        ["You were seen in our ER last night"],
        ["You are invited to our open house"],
    ),
    "health.prescription": (
        ["Your prescription is ready for pickup"],
        ["Naloxone available without a prescription"],
    ),
}


def _fired(subject: str) -> set[str]:
    return {f.rule for f in RULES.scan(normalize(subject))}


@pytest.mark.parametrize(
    ("rule", "subject", "fires"),
    [(rule, s, True) for rule, (yes, _no) in TABLE.items() for s in yes]
    + [(rule, s, False) for rule, (_yes, no) in TABLE.items() for s in no],
)
def test_rule_examples(rule: str, subject: str, fires: bool) -> None:
    assert (rule in _fired(subject)) is fires


def test_every_rule_id_of_the_detector_has_a_table() -> None:
    # The rule ids are the string constants of detector.py shaped like one.
    tree = ast.parse(Path(detector.__file__).read_text(encoding="utf-8"))
    ids = {
        node.value
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant)
        and isinstance(node.value, str)
        and re.fullmatch(r"(?:id|health|provider|name)\.[a-z0-9-]+", node.value)
    }
    assert ids == set(TABLE)
    assert all(yes and no for yes, no in TABLE.values())


def test_each_rule_id_is_emitted_by_one_named_function_that_says_so() -> None:
    # A rule is a function whose docstring starts with the ids it emits
    # ("id.ssn: ..."), so `grep 'def .*' detector.py` and the audit's rule ids meet.
    tree = ast.parse(Path(detector.__file__).read_text(encoding="utf-8"))
    functions = [
        node
        for parent in [tree, *[n for n in tree.body if isinstance(n, ast.ClassDef)]]
        for node in parent.body
        if isinstance(node, ast.FunctionDef)
    ]
    owner: dict[str, list[str]] = {}
    for fn in functions:
        ids = {
            node.value
            for node in ast.walk(fn)
            if isinstance(node, ast.Constant)
            and isinstance(node.value, str)
            and re.fullmatch(r"(?:id|health|provider|name)\.[a-z0-9-]+", node.value)
        }
        if not ids:
            continue
        doc = (ast.get_docstring(fn) or "").split(":")[0]
        named = {part.strip() for part in doc.split(",")}
        assert named == ids, f"{fn.name} emits {sorted(ids)}, its docstring names {doc!r}"
        for rule in ids:
            owner.setdefault(rule, []).append(fn.name)
    assert set(owner) == set(TABLE)
    assert {rule: fns for rule, fns in owner.items() if len(fns) > 1} == {}
