"""Care words in the nine languages beyond English and Spanish (data/care_words.tsv).

Each language has subjects of both labels written for this test (synthetic, from the
labelling guide's rules, not rows of any writer's corpus): a care word with a
second-person, patient or relative word is found by `health.care-word`; the same care
words in an announcement to all, and everyday mail, are not. Arabic attaches "your"
to the noun and Korean attaches particles, so those rows use attached forms.
"""

from __future__ import annotations

import re

import pytest

from relay.phi import rules
from relay.phi.normalize import fold, normalize
from relay.phi.rules import Subject

# lang -> (phi subjects, clean subjects)
TABLE: dict[str, tuple[list[str], list[str]]] = {
    "pt": (
        [
            "Seu encaminhamento para a cardiologia foi aprovado",
            "O resultado do seu exame de sangue chegou",
            "Sua receita de insulina está pronta na farmácia",
            "Lembrete: sua consulta de retorno com a ortopedia",
        ],
        ["Nova unidade aberta no bairro Jardim Europa", "Feriado: horário especial da recepção"],
    ),
    "fr": (
        [
            "Votre compte rendu d'échographie est disponible",
            "Le résultat de votre prise de sang est arrivé",
            "Votre ordonnance de renouvellement est prête",
            "Mon fils a besoin d'un certificat médical pour le sport",
        ],
        ["Fermeture du parking visiteurs lundi", "Nouveau menu à la cafétéria du personnel"],
    ),
    "vi": (
        [
            "Kết quả xét nghiệm máu của bạn đã có",
            "Lịch tái khám của anh vào tuần sau",
            "Đơn thuốc của chị đã được gửi đến nhà thuốc",
            "Giấy chuyển viện của bác đã được duyệt",
        ],
        ["Bãi đỗ xe mới mở cửa từ thứ Hai", "Chúc mừng năm mới từ phòng khám"],
    ),
    "zh": (
        [
            "您的体检报告已经出来了",
            "你的复诊预约改到下周",
            "您的处方已转到药房",
            "我妈的出院手续还需要什么",
        ],
        ["本周六停车场维修", "员工食堂新菜单上线"],
    ),
    "tl": (
        [
            "Lumabas na ang resulta ng lab test mo",
            "Handa na ang reseta mo sa botika",
            "Ang follow-up mo sa dentista ay naka-schedule na",
            "Kailangan ng anak ko ng bakuna bago pumasok",
        ],
        ["Sarado ang opisina sa Araw ng Kalayaan", "Bagong paradahan para sa mga bisita"],
    ),
    "ht": (
        [
            "Rezilta tès san ou yo pare",
            "Randevou swivi ou a chanje",
            "Preskripsyon ou a pare nan famasi a",
            "Pitit mwen bezwen vaksen pou lekòl la",
        ],
        ["Biwo a ap fèmen lendi pou fèt la", "Nouvo pakin pou vizitè yo"],
    ),
    "ru": (
        [
            "Результаты вашего анализа крови готовы",
            "Ваша запись к врачу перенесена",
            "Направление для вас оформлено",
            "Выписка пациента задерживается",
        ],
        ["Парковка закрыта на ремонт в субботу", "Новое меню в столовой для сотрудников"],
    ),
    "ar": (
        [
            "نتائج تحاليلك جاهزة الآن",
            "تم تأكيد موعدك في عيادة العظام",
            "وصفتك الطبية جاهزة في الصيدلية",
            "تقريرك الطبي متاح للتحميل",
        ],
        ["موقف السيارات مغلق يوم السبت للصيانة", "قائمة طعام جديدة في مقهى الموظفين"],
    ),
    "ko": (
        [
            "고객님의 혈액검사 결과가 나왔습니다",
            "환자분의 재진 예약이 변경되었습니다",
            "귀하의 처방전이 약국으로 전송되었습니다",
            "보호자님, 퇴원 안내 드립니다",
        ],
        ["주차장 공사 안내 (토요일)", "직원 식당 새 메뉴 안내"],
    ),
}


def subject(text: str) -> Subject:
    text = normalize(text)
    folded = fold(text)
    words = frozenset(re.findall(r"[^\W_]+(?:['\-][^\W_]+)*", folded))
    return Subject(text, folded, words, any(ch.isdigit() for ch in text))


def test_every_language_has_both_labels() -> None:
    assert set(TABLE) == {"pt", "fr", "vi", "zh", "tl", "ht", "ru", "ar", "ko"}
    assert all(len(phi) >= 4 and len(clean) >= 2 for phi, clean in TABLE.values())


@pytest.mark.parametrize(
    ("lang", "text"), [(lang, t) for lang, (phi, _) in TABLE.items() for t in phi]
)
def test_care_word_with_a_person_fires(lang: str, text: str) -> None:
    found = rules.care_word(subject(text))
    assert [f.rule for f in found] == ["health.care-word"], lang


@pytest.mark.parametrize(
    ("lang", "text"), [(lang, t) for lang, (_, clean) in TABLE.items() for t in clean]
)
def test_everyday_mail_stays_quiet(lang: str, text: str) -> None:
    assert rules.care_word(subject(text)) == [], lang
