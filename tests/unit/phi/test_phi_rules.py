# ruff: noqa: RUF001 - subjects in other scripts, fullwidth digits and dashes are the point
"""Each named rule with its own table of examples: what fires it and what must not."""

from __future__ import annotations

import pytest

from relay.phi import rules
from relay.phi.detector import PhiDetector
from relay.phi.normalize import fold, normalize
from relay.phi.rules import Rule, Subject


def subject(text: str) -> Subject:
    text = normalize(text)
    folded = fold(text)
    import re

    words = frozenset(re.findall(r"[^\W_]+(?:['\-][^\W_]+)*", folded))
    return Subject(text, folded, words, any(ch.isdigit() for ch in text))


def read(rule: Rule, text: str) -> Subject:
    """The subject as `rule` reads it: health.audience needs the detector's health terms."""
    if rule is rules.audience:
        return PhiDetector(scorer=False).rule_subject(normalize(text))
    return subject(text)


TABLE: list[tuple[Rule, str, list[str], list[str]]] = [
    (
        rules.care_time,
        "id.care-time",
        [
            "We'll expect you Wed 8:40 AM for your video follow-up",
            "Reminder: Tues 6:30 pm session w/ Kayla",
            "We'll expect you tomorrow, 7:30 a.m.",
            "Tu cita es el martes a las 4 pm",
            "Lembrete: consulta por vídeo quinta, 15h30",
            "Your visit window opens Thu 2:45 PM",
            "See you tonight at 7:30 pm for your sleep study",
            "Tomorrow 9:15 AM: your fasting labs",
        ],
        [
            "Webinar Tue 6 pm: sleep hygiene for everyone",
            "Clinic closes at 5 pm on Friday",
            "Staff meeting moved to Monday 3:00",
            "Your next visit is coming up soon",
        ],
    ),
    (
        rules.billing_amount,
        "id.amount",
        [
            "Your copay for today's video visit: $40.00",
            "Usted debe $318.40 después del seguro",
            "Refund issued: $65.00 (canceled weight-loss visit)",
            "PAST DUE: $340.00 FOR YOUR INTENSIVE OUTPATIENT PROGRAM",
        ],
        [
            "Save $20 on flu shots this week",
            "Invoice of $4,200 from our vendor is due",
            "Taller de cocina económica: 5 € por familia",
            "Your statement is ready",
        ],
    ),
    (
        rules.ending_digits,
        "id.ending",
        [
            "Autopay failed on acct ending in 0463",
            "Social ending -5184: is that still right?",
            "Enrollment hold - SSN last four 6027 doesn't match",
            "Tarjeta terminada en 4821 rechazada",
        ],
        ["Ending soon: open enrollment", "Last four weeks of the walking challenge"],
    ),
    (
        rules.dx_cue,
        "health.dx",
        ["Dx: new onset afib, cardiology consult", "RE: dx - L40.0", "Diagnóstico: asma leve"],
        ["Dx codes webinar", "Diagnosis coding clinic recap"],
    ),
    (
        rules.record_cue,
        "id.record-cue",
        [
            "Wristband reprint needed for MR# 60-448-172",
            "Med. Rec. No. Q-3021: interpreter booked?",
            "Accession no. HX26-03318 - recut requested",
            "Historia clínica HC/55-0921: falta el consentimiento",
            "Encounter #88-20714 needs a signature",
            "Accession # 26-118830 needs a recut",
            "MR#4471902 wristband reprint",
        ],
        [
            "Chart review training in 2026",
            "Patient portal update",
            "MR. Smith joins the board",
            # Round-the-clock idioms after a cue word are not record numbers.
            "Clinic news: Cross-group 24/7 architecture",
            "Our patient 24/7 line is open",
            "Group 24x7 support desk moves floors",
            "Member 24/365 service commitment",
        ],
    ),
    (
        rules.segment,
        "health.segment",
        [
            "For members taking GLP-1 meds: shipping delays this week",
            "A todos los que toman litio: nuevo horario de análisis",
            "Omnipod users we care for: please read this pod recall",
            "Notice to patients receiving home dialysis: holiday changes",
        ],
        [
            "Open to all: the Kidney Smart class series",
            "Members: new portal login page",
            "New program for people living with diabetes",
            # The reader's own patients: mail to a clinician, not a segment.
            "Your patients with COPD may qualify for triple therapy",
            "Are your patients on two statins? Duplicate therapy alert logic",
            "¿Sus pacientes con EPOC siguen exacerbando? Conozca la terapia",
        ],
    ),
    (
        rules.intl_cued,
        "id.cue-intl",
        [
            "Data de nascimento 04/11/1962 diverge do cadastro",
            "Date de naissance : 3 juin 1971 – à corriger",
            "Ngày sinh 21/02/1958 không khớp với thẻ",
            "出生日期：1971年6月3日，请核对",
            "생년월일 1983.02.27 재확인 부탁드립니다",
            "Дата рождения 03.06.1971 указана с ошибкой",
            "تاريخ الميلاد ٢٧/٠٢/١٩٨٣ غير صحيح",
            "Dat nesans 27/02/1983 pa kòrèk",
            "Petsa ng kapanganakan: 02/27/1983",
            "住院号 ５５２０－１９７ 的同意书未签",
            "환자번호 7710-442 검사 동의서 확인",
            "Номер медкарты 31-88204: нет согласия",
            "رقم الملف الطبي 4402-77 – نقص التوقيع",
            "Número do prontuário 66-0193-2 sem assinatura",
            "Nimewo pasyan 6620-13 – fòm nan pa siyen",
            "Mã thành viên bảo hiểm HXR5520871 đã hết hạn",
            "회원번호 QPL40217755 보험 확인",
            "Numéro d'adhérent 7730-221-904 : prise en charge",
            "사회보장번호 412-83-7720 확인 필요",
            "Número do CPF: 412.839.770-21",
            "Рецепт № 5520871 готов к выдаче",
        ],
        [
            "Data de nascimento: campo novo no cadastro",
            "생일 축하 이벤트 12월 5일",
            "회원번호 안내 2027년 변경",
            "住院须知 2027 版",
            "Номер медкарты теперь в приложении",
            "رقم الملف الطبي متاح في البوابة",
            "Sécurité sociale : les remboursements changent en 2027",
            "사회보장번호 123-45-678 형식 안내",
        ],
    ),
    (
        rules.audience,
        "health.audience",
        [
            "Warfarin patients: the INR clinic moves to Building D",
            "To our peritoneal dialysis patients: new supply courier",
            "Attention CPAP users: filter shipments are late",
            "For our hemophilia families: factor pickup hours change",
            "Para pacientes en diálisis: horario de feriado",
            "A nuestros pacientes con marcapasos: actualización del monitor",
            "Aux patients sous Eliquis : nouvelle pharmacie partenaire",
            "Dr. Okonkwo is moving away - what happens to his patients",
            "To all patients of Dr. Lindqvist: she is leaving in June",
            "Dr. Varga's asthma patients: spacer recall",
        ],
        [
            "Cancer patients: 5 tips for eating well",
            "Diabetes patients often skip breakfast",
            "To all patients: the parking garage is closed",
            "New patients: 5 tips to manage diabetes",
            "Flu shots for employees this week",
            "Oncology patients rate our infusion center 4.9",
            "Dr. Pelletier is on sabbatical through March",
            "Now accepting new dermatology patients: Dr. Tamsin Achebe",
        ],
    ),
    (
        rules.care_word,
        "health.care-word",
        [
            "O laudo do seu ultrassom de tireoide está disponível",
            "您的胃镜检查报告已上传",
            "박서윤 님, 알레르기 검사 결과가 나왔습니다",
            "Ваш анализ на витамин B12 готов",
            "Vaksen tetanòs ou a an reta",
            "موعدك مع الدكتورة سلمى يوم الأحد",
            "Na-aprubahan ang referral mo sa cardiologist",
            "Kết quả xét nghiệm của bạn đã có",
            "Votre ordonnance a été envoyée à votre pharmacie",
        ],
        [
            "Nova unidade aberta no bairro Boa Vista",
            "春节期间门诊时间调整",
            "금연 클리닉 무료 상담 - 누구나 신청 가능",
            "Приглашаем на День донора 12 апреля",
            "العيادة مغلقة أيام عيد الفطر",
            "Journée portes ouvertes au centre de santé samedi",
        ],
    ),
]


@pytest.mark.parametrize(
    ("rule", "rule_id", "text"),
    [(r, i, t) for r, i, fires, _ in TABLE for t in fires],
)
def test_rule_fires(rule: Rule, rule_id: str, text: str) -> None:
    found = rule(read(rule, text))
    assert found and {f.rule for f in found} == {rule_id}


@pytest.mark.parametrize(
    ("text", "kind"),
    [
        ("Subscriber no. QKP20771948: COBRA letter enclosed", "member-id"),
        ("Medicaid ID 55120983 renewal", "member-id"),
        ("MR# 60-448-172 wristband", "mrn"),
        ("Social ending -5184: is that still right?", "ssn"),
        ("Autopay failed on acct ending in 0463", "account"),
        ("출생일 1983-02-27 확인", "date"),
        ("病案号 A-55201 缺页", "mrn"),
        ("Номер полиса 7740 1120 5531 истёк", "member-id"),
        ("Número da conta 5520-7781: pagamento", "account"),
        ("护照号 E55201873 已扫描", "license"),
        ("Số an sinh xã hội 412-83-7720 cần xác minh", "ssn"),
    ],
)
def test_identifier_rules_name_the_kind(text: str, kind: str) -> None:
    s = subject(text)
    found = rules.record_cue(s) + rules.ending_digits(s) + rules.intl_cued(s)
    assert [f.kind for f in found] == [kind]


@pytest.mark.parametrize(
    ("rule", "text"),
    [(r, t) for r, _, _, quiet in TABLE for t in quiet],
)
def test_rule_stays_quiet(rule: Rule, text: str) -> None:
    assert rule(read(rule, text)) == []


def test_every_rule_has_a_table() -> None:
    assert {r for r, *_ in TABLE} == {*rules.RULES, rules.segment, rules.audience}


def test_every_intl_label_passes_its_gate_and_fires() -> None:
    # The ASCII gate (first words of the ASCII labels) must never skip a label.
    for label, kind in rules._intl_cues().kind_of.items():
        value = "12/05/1961" if kind == "birth" else "412-83-7720" if kind == "ssn" else "5520871"
        found = rules.intl_cued(subject(f"{label} {value} x"))
        assert [f.rule for f in found] == ["id.cue-intl"], label
