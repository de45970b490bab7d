# ruff: noqa: B023 - the template lambdas are called at once, inside their loop iteration
"""Measure the subject-line PHI detector: precision, recall, FPR, throughput, start-up, memory.

    .venv/bin/python bench/phi_eval.py                 # evaluate tests/data/subjects.tsv
    .venv/bin/python bench/phi_eval.py --errors        # also list misclassified subjects
    .venv/bin/python bench/phi_eval.py --corpus tests/data/holdout_2.tsv --errors  # one set
    .venv/bin/python bench/phi_eval.py --presidio /tmp/presidio-venv/bin/python
    .venv/bin/python bench/phi_eval.py --generate      # rebuild the corpus (needs faker)
    .venv/bin/python bench/phi_eval.py --split heldout --old /tmp/phi-old   # writers' corpora

`--split train|validation|heldout` scores the writers' corpora in tests/data/corpus
(split.tsv says which writer is where) and prints only aggregate figures: per
writer, language, guide rule and form, obfuscated and RFC 2047 recall, tiers,
throughput, start-up and memory; never a subject. `--old DIR` scores the detector
of another checkout (e.g. `git archive ad1b70a | tar -x -C DIR`) on the same rows
in a separate interpreter, for the before/after comparison.

The corpus is synthetic: faker names, dates, numbers and addresses in several
locales, put into English and Spanish subject templates, plus hand-written tricky
negatives and positives. `--presidio` compares Microsoft Presidio's pattern
recognizers, run in a separate interpreter so presidio never enters this project.
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CORPUS = ROOT / "tests" / "data" / "subjects.tsv"
sys.path.insert(0, str(ROOT))

from phi_speed import timed_rounds  # noqa: E402  (bench/ is on sys.path when run as a script)

# --- corpus generation ------------------------------------------------------------------


def on_the_wire(raw: str) -> str:
    """A corpus raw value as the header arrives: `\\r\\n` and a space or `\\t` are a fold
    (tools/corpus/BRIEF.md)."""
    return raw.replace("\\r\\n\\t", "\r\n\t").replace("\\r\\n", "\r\n")


def _ssn(rng: random.Random) -> str:
    area = rng.choice([rng.randint(1, 665), rng.randint(667, 899)])
    return f"{area:03d}-{rng.randint(1, 99):02d}-{rng.randint(1, 9999):04d}"


def _npi(rng: random.Random) -> str:
    from relay.phi.detector import npi_ok

    while True:
        n = f"{rng.choice('12')}{rng.randint(0, 10**9 - 1):09d}"
        if npi_ok(n):
            return n


def _dea(rng: random.Random, last: str) -> str:
    d = [rng.randint(0, 9) for _ in range(6)]
    check = ((d[0] + d[2] + d[4]) + 2 * (d[1] + d[3] + d[5])) % 10
    return rng.choice("ABFM") + last[0].upper() + "".join(map(str, d)) + str(check)


HANDWRITTEN_PHI = (
    "Sus resultados de VIH están disponibles",
    "Recordatorio de cita: Dr. Hernández, 15 de marzo",
    "María, tu prueba de embarazo salió positiva",
    "Receta de Lisinopril lista para recoger",
    "Su hijo necesita seguimiento por asma",
    "Resultados de mamografía de la Sra. Castillo",
    "Paciente Juan Pérez - alta hospitalaria",
    "Número de expediente 4471823",
    "Su cita de quimioterapia del martes",
    "Luis, tus niveles de azúcar están altos",
    "Tratamiento para su depresión",
    "Fecha de nacimiento: 12 de mayo de 1980",
    "Póliza 88120034 - reclamación denegada",
    "Confirmación: cirugía de rodilla el 4/5",
    "Sus análisis de orina",
    "Hola Carmen, tu terapia de hoy",
    "Resultados de la biopsia de Pedro Gómez",
    "Su dosis de insulina cambió",
    "Seguimiento de su diabetes gestacional",
    "Sra. Flores: resultados del laboratorio",
    "Your sugar is running high - call us",
    "Reminder for Gloria: insulin pen training",
    "Re: Bob's knee MRI",
    "Re: appt for Ms. Whitaker 10/12",
    "Your cholesterol was 245",
    "Emergency contact for patient 4481920",
    "Your baby's 6-month checkup results",
    "Your insurance denied the claim for your MRI",
    "Diane Russo, please call about your mammogram",
    "Estimado Sr. Vargas: resultados de su biopsia",
    "Sus niveles de glucosa",
    "Recordatorio: cita para su hija el 12 de abril",
    "Your antidepressant refill",
    "Follow-up after your miscarriage",
    "Your positive TB test",
    "HbA1c 8.1 - needs follow up",
    "Your EpiPen prescription renewal",
    "Treatment plan for your son's autism",
    "Still taking Eliquis? Please confirm",
    "We received your stool sample",
    "Your COVID test was positive",
    "Your detox program intake",
    "Reschedule your chemo infusion",
    "Your physical therapy for your shoulder",
    "Your pap smear results are abnormal",
    "Patient ID 77812 - lab order",
    "Your blood pressure reading today was 160/100",
    "Your wife's admission to 4 West",
    "Your dental x-rays",
    "Your eye exam shows early glaucoma",
    "Lab results for Kevin Whitfield",
    "Priya - your thyroid panel came back",
    "RE: Tomás Herrera cholesterol follow up",
    "Your colonoscopy is booked for 11/03",
    "Reminder: Ms. Delgado's physical therapy at 3pm",
    "Insurance ID W4471902231 - coverage question",
    "Pharmacy: your Zoloft is ready",
    "Chemo schedule for Dan",
    "Your biopsy came back benign",
    "Pathology shows malignant cells - call office",
    "Updated med list: warfarin 5mg",
    "Patient Robert Chen - missed dialysis",
    "Sick note for Emily Carter",
    "Your MRI on Jan 5th",
    "Appointment confirmation: Dr. Nakamura, 2/14 9:00 AM",
    "Positive COVID-19 test result",
    "Your child's strep culture results",
    "Birth date 1978-06-22 needed for records",
    "Your blood sugar readings look high",
    "Aftercare instructions following your knee replacement",
    "Rx #7731209 ready",
    "Sus análisis de sangre están listos",
    "Cita con la Dra. Ramírez el 3 de mayo",
    "Resultados de su prueba de embarazo",
    "Don Alberto Fuentes - control de presión",
    "Your mental health intake form",
    "Your STD panel",
    "Your methadone dose for this week",
    "Olivia, your prenatal vitamins prescription",
    "Claim 88412739 for your ER visit",
    "Questions about Mark Benson's insulin",
    "Discharge instructions - Samuel Ortiz",
    "Your depression screening score",
    "Hi Marcus, about your PSA levels",
    "Your dermatology referral to Dr. Kim",
    "Call me back at 312-555-0187 re: my results",
    "Your hearing aid serial SN 4471-22981 registered",
    "Ultrasound at 20 weeks - your images",
    "Your allergy shots schedule",
    "Linda Park: lipid panel",
    "Follow up on Annie's ear infection",
    "Your husband's cardiac rehab schedule",
    "Nguyen Van An - vaccination record",
    "Your EKG from yesterday looked normal",
    "Kidney transplant evaluation - next steps for you",
    "Your cast removal appointment",
    "Sarah, your glucose log",
    "Your recent ER visit",
    "Re: Caleb's seizure medication",
    "Pre-op instructions for your hysterectomy",
    "Your Medicaid ID 99231874A",
    "Member #XZT4412098 - benefits summary",
    "Your weight loss surgery consult",
    "Diagnosis: type 2 diabetes - education packet",
    "Your vasectomy follow-up",
    "Your sleep study results",
    "Hospice referral for Mrs. Patterson",
    "Your counseling appointment moved to Thursday",
    "Your rehab intake at Serenity Recovery",
    "Your Plan B prescription",
    "Dr. Osei wants to see you about your scan",
    "Bill for services on 07/19/2024",
    "Immunization record for Lucas Moreno, DOB 5/5/2019",
    "Your wound care supplies",
    "Jorge, tu cita de seguimiento para la diabetes",
    "Su hijo tiene una infección de oído",
    "Confirmación de cita: Sr. Gutiérrez, 14/02 a las 10",
    "Tu receta de insulina fue enviada a la farmacia",
    "Andrea Morales - resultados de mamografía",
    "Your biopsy - please call Dr. Reyes",
)
HANDWRITTEN_CLEAN = (
    "Cinco consejos para dormir mejor",
    "La clínica estará cerrada el lunes",
    "Vacunas gratis para niños este sábado",
    "Aprenda sobre la diabetes en nuestro taller",
    "Nuevo horario de atención",
    "Semana nacional de la salud",
    "¿Qué es la presión arterial alta?",
    "Bienvenido a nuestro portal de pacientes",
    "Feria de salud en San Antonio",
    "Prevención del cáncer de piel este verano",
    "Campaña de vacunación contra la influenza",
    "Gracias por confiar en nosotros",
    "Conozca a la Dra. López, nuestra nueva pediatra",
    "Consejos para cuidar su corazón",
    "Boletín mensual de salud - abril",
    "You asked, we answered: asthma FAQ",
    "Did you know? 1 in 3 adults has prediabetes",
    "Could you have sleep apnea? Take the quiz",
    "We miss you! It's time for a checkup",
    "Thank you for visiting our urgent care",
    "You're invited: cancer survivors picnic",
    "Stronger together: our cancer center turns 10",
    "Answers to your questions about the new COVID vaccine",
    "Everything you need to know about cholesterol",
    "Your pharmacy, now open 24/7",
    "Help us improve: rate your experience",
    "Introducing Dr. Chen, gastroenterology",
    "From Dr. Patel: staying healthy this winter",
    "Bring the kids: free sports physicals Saturday",
    "New study links sleep and heart disease",
    "Ozempic and weight loss: what the research says",
    "Community blood pressure screening at Main St. Library",
    "Update: 2025 holiday schedule",
    "Carmen's Kitchen: diabetes-friendly recipes",
    "A note from our Chief Nursing Officer",
    "Hablemos de salud mental",
    "¿Sabía que la hipertensión no tiene síntomas?",
    "Cuidamos de ti y tu familia",
    "Nuevas vacunas para adultos mayores",
    "Register for CPR class - 3/15 at 6pm",
    "Breast cancer walk on October 5, 2025",
    "Clinic phone lines down this morning",
    "Notice: data privacy update",
    "Lower your risk of stroke in 3 steps",
    "Keeping your kids safe from RSV",
    "Travel vaccines: plan ahead",
    "Ask a nurse: managing diabetes at work",
    "Medicare Advantage seminar Oct 14",
    "Diabetes Alert Day is March 25",
    "Low-cost mammograms for uninsured women",
    "Dr. Smith's tips for healthy skin",
    "HIV: know your status, get tested",
    "Depression screening is free this week",
    "Your health matters to us",
    "Flu or COVID? How to tell the difference",
    "Ten healthy snacks for busy weeks",
    "We are hiring nurses",
    "Free parking for patients starting Monday",
    "Diabetes and the holidays: eating tips",
    "Meet our new orthopedic surgeon",
    "COVID-19 visitor policy update",
    "Get screened for colon cancer at 45",
    "Celebrating 50 years of care in Fresno",
    "Alzheimer's caregiver workshop",
    "Our pharmacy now offers free delivery",
    "Walk-in flu vaccines every weekday",
    "Skin cancer screening day June 12",
    "What is prediabetes?",
    "Dr. Alvarez named top doctor of 2025",
    "New hours at the Oak Street clinic",
    "Mammograms: now booking evening appointments",
    "Celebrate National Nurses Week",
    "Recipe: low-sodium lentil soup",
    "Your feedback helps us improve",
    "Important changes to our billing system",
    "How to prepare for a telehealth visit",
    "Children's dental health month",
    "Blood donors needed this weekend",
    "Understanding your insurance benefits",
    "The latest on RSV vaccines",
    "Stop the Bleed training on March 8",
    "Heat safety: stay cool this summer",
    "Thank you for your donation",
    "Prevención de la diabetes: charla gratuita",
    "Horario de verano de la clínica",
    "Vacúnese contra la influenza",
    "Mes de concientización sobre el cáncer de mama",
    "Volunteers needed for Saturday health fair",
    "Our annual report is here",
    "Quiz: how much do you know about sleep?",
    "Announcing our new urgent care in Riverside",
    "A message from our CEO",
    "Staying active with arthritis",
    "Join the 2025 Heart Walk",
    "New: book appointments by text",
    "Your health, our priority",
    "Take charge of your heart health",
    "5 signs you need a new mattress",
    "Tips for a better night's sleep",
    "Why we love our nurses",
    "Get a free A1C check at the health fair",
    "Flu season is here: protect yourself",
    "New patient? Here's what to expect",
    "Our cardiology team grows",
    "Learn CPR in one afternoon",
    "Summer hours start June 1",
    "Thank you, healthcare heroes",
    "A healthier you in 2026",
    "Wellness webinar: managing chronic pain",
    "Are you due for a checkup?",
    "Women's heart health luncheon",
    "Pharmacy closed Memorial Day",
    "Free diabetes screening at the library",
    "Coping with seasonal depression",
    "Shingles vaccine now available for adults 50+",
    "Celebrate Men's Health Month",
    "Tips para una alimentación saludable",
    "Clínica cerrada el 1 de enero",
    "Nuevo servicio de telemedicina",
    "Cuide su corazón este invierno",
    "Survey: how was your last visit?",
    "Update: visitor guidelines",
    "Lunch and learn: Medicare basics",
    "Parking lot repaving this weekend",
    "Your wellness newsletter for April",
)


SEASONS = ("summer", "winter", "spring", "fall", "holiday season")
ICD_SAMPLES = ("E11.9", "J45.909", "F32.A", "I10", "M54.5", "Z79.4")


def generate(seed: int = 7) -> list[tuple[str, str, str]]:
    from faker import Faker

    rng = random.Random(seed)
    fakes = {loc: Faker(loc) for loc in ("en_US", "en_GB", "es_MX", "es_ES", "en_NG", "vi_VN")}
    for i, f in enumerate(fakes.values()):
        f.seed_instance(seed + i)
    en = [fakes["en_US"], fakes["en_GB"], fakes["en_NG"]]
    es = [fakes["es_MX"], fakes["es_ES"]]
    rows: list[tuple[str, str, str]] = []

    def add(label: str, category: str, subject: str) -> None:
        rows.append((label, category, " ".join(subject.split())))

    def person(pool: list[Faker]) -> tuple[str, str]:
        f = rng.choice(pool)
        return f.first_name(), f.last_name()

    def date(f: Faker, style: int) -> str:
        d = f.date_of_birth(minimum_age=1, maximum_age=90)
        return [
            d.strftime("%m/%d/%Y"),
            d.isoformat(),
            d.strftime("%B %d, %Y"),
            d.strftime("%b %d"),
            d.strftime("%d.%m.%Y"),
            f"{d.day}th of {d.strftime('%B')}",
        ][style % 6]

    conditions = [
        "diabetes",
        "asthma",
        "COPD",
        "high blood pressure",
        "heart failure",
        "breast cancer",
        "hypothyroidism",
        "atrial fibrillation",
        "migraines",
        "kidney disease",
        "rheumatoid arthritis",
        "sleep apnea",
        "epilepsy",
        "hepatitis C",
        "gout",
        "psoriasis",
        "celiac disease",
        "anemia",
        "glaucoma",
    ]
    sensitive = [
        "HIV",
        "depression",
        "anxiety",
        "bipolar disorder",
        "opioid use disorder",
        "pregnancy",
        "chlamydia",
        "PTSD",
        "alcohol use disorder",
        "IVF cycle",
    ]
    meds = [
        "Lisinopril",
        "metformin",
        "Atorvastatin",
        "Ozempic",
        "levothyroxine",
        "Sertraline",
        "Eliquis",
        "amoxicillin",
        "Humira",
        "albuterol",
        "Jardiance",
        "gabapentin",
        "Prednisone",
        "Xarelto",
        "losartan",
        "Suboxone",
        "Truvada",
    ]
    tests = [
        "A1C",
        "MRI",
        "biopsy",
        "CT scan",
        "blood work",
        "lipid panel",
        "mammogram",
        "colonoscopy",
        "ultrasound",
        "PSA test",
        "pathology report",
        "echocardiogram",
    ]
    conds_es = [
        "diabetes",
        "asma",
        "hipertensión",
        "depresión",
        "cáncer de mama",
        "VIH",
        "embarazo",
        "artritis",
        "ansiedad",
        "colesterol alto",
    ]

    # --- PHI: identifiers -------------------------------------------------------------
    for _ in range(36):
        f = rng.choice(en)
        first, last = f.first_name(), f.last_name()
        n = rng.randint(0, 13)
        s = [
            lambda: f"SSN {_ssn(rng)} needed for enrollment",
            lambda: f"Verify social security number {_ssn(rng)}",
            lambda: f"MRN {rng.randint(100000, 99999999)} - updated intake form",
            lambda: f"Chart #{rng.randint(100000, 9999999)} follow-up note",
            lambda: f"Member ID {f.bothify('???#########').upper()} eligibility",
            lambda: f"Claim {f.bothify('CLM-#######')} denied, please resubmit",
            lambda: f"Account {rng.randint(1000000, 99999999)} balance due",
            lambda: f"Callback number {f.numerify('(###) ###-####')}",
            lambda: f"Please reach me at {f.free_email()}",
            lambda: f"Home visit at {f.street_address()}",
            lambda: f"Dx code {rng.choice(ICD_SAMPLES)} on claim",
            lambda: f"Prescriber DEA {_dea(rng, last)} verification",
            lambda: f"Referring NPI {_npi(rng)} missing on order",
            lambda: f"Driver's license {f.bothify('?#######').upper()} on file for {first}",
        ][n]()
        add("phi", "identifier", s)

    # --- PHI: dates tied to a person --------------------------------------------------
    for i in range(24):
        f = rng.choice(en)
        first, last = f.first_name(), f.last_name()
        d = date(f, i)
        s = rng.choice(
            [
                f"DOB {d} - please confirm",
                f"Date of birth: {d}",
                f"Your appointment on {d} at 10:30",
                f"Surgery scheduled {d}",
                f"Discharge summary from {d}",
                f"Born {d}: newborn screening",
                f"Follow-up visit {d} confirmed",
                f"{first} {last} DOB {d}",
            ]
        )
        add("phi", "date", s)

    # --- PHI: conditions, medications, tests and results about a person ---------------
    for _ in range(26):
        first, last = person(en)
        c = rng.choice(conditions)
        s = rng.choice(
            [
                f"{first}, your {c} care plan",
                f"Managing your {c}, {first}",
                f"Update on your {c}",
                f"Your {c} follow-up",
                f"Re: {c} treatment for {first} {last}",
                f"Mr. {last} - {c} consult",
                f"Diagnosed with {c}: next steps",
                f"Patient {first} {last}: {c}",
            ]
        )
        add("phi", "condition", s)
    for _ in range(20):
        first, last = person(en)
        m = rng.choice(meds)
        s = rng.choice(
            [
                f"{m} 20 mg refill ready for pickup",
                f"Your {m} prescription is ready",
                f"Refill request: {m}",
                f"{first}, time to refill your {m}",
                f"Prior authorization for {m} approved",
                f"{m} dose change for {first} {last}",
                f"Your {m} dosage was updated",
            ]
        )
        add("phi", "medication", s)
    for _ in range(22):
        first, last = person(en)
        t = rng.choice(tests)
        s = rng.choice(
            [
                f"Your {t} results are ready",
                f"{first}, your {t} results",
                f"{t} results for {first} {last}",
                "Your lab results are in",
                "Your test results are available in the portal",
                f"Abnormal {t}: please call us",
                "Positive strep test - antibiotics sent",
                "Your prescription is ready",
                f"{first}'s {t} report",
            ]
        )
        add("phi", "result", s)

    # --- PHI: provider relationships ---------------------------------------------------
    for _ in range(16):
        f = rng.choice(en)
        doc = f.last_name()
        s = rng.choice(
            [
                f"Your appointment with Dr. {doc}",
                f"Message from Dr. {doc} about your visit",
                f"Dr. {doc} has reviewed your results",
                f"Referral to Dr. {doc} (cardiology)",
                f"Your follow-up with Dr. {doc} on Tuesday",
                f"Dr. {doc} ordered new labs for you",
            ]
        )
        add("phi", "provider", s)

    # --- PHI: names ---------------------------------------------------------------------
    for _ in range(22):
        first, last = person([*en, fakes["vi_VN"]])
        s = rng.choice(
            [
                f"Re: {first} {last}",
                f"Hi {first}, a note from your care team",
                f"Dear Ms. {last}",
                f"{first} {last} - intake paperwork",
                f"Fwd: {last}, {first}",
                f"Attn: {first} {last}",
                f"Welcome to the practice, {first}!",
                f"Mrs. {last} rescheduled",
            ]
        )
        add("phi", "name", s)

    # --- PHI: extra-sensitive topics ------------------------------------------------------
    for _ in range(18):
        first, last = person(en)
        c = rng.choice(sensitive)
        s = rng.choice(
            [
                f"Your {c} results",
                f"{first}, about your {c} treatment",
                f"Your {c} counseling session tomorrow",
                f"Re: {c} follow-up for {first}",
                f"{c} medication refill ready",
            ]
        )
        add("phi", "sensitive", s)

    # --- PHI: Spanish -----------------------------------------------------------------------
    for _ in range(26):
        f = rng.choice(es)
        first, last = f.first_name(), f.last_name()
        c = rng.choice(conds_es)
        d = f.date_of_birth(minimum_age=1, maximum_age=90).strftime("%d/%m/%Y")
        s = rng.choice(
            [
                f"Sra. {last}, sus resultados están listos",
                f"{first}, su cita con el Dr. {f.last_name()}",
                f"Resultados de laboratorio de {first} {last}",
                "Su receta de metformina está lista",
                f"Control de su {c}",
                f"Paciente {first} {last}: seguimiento",
                f"Fecha de nacimiento {d}",
                f"Hola {first}, tus resultados de la biopsia",
                f"Expediente {rng.randint(100000, 9999999)} actualizado",
                f"Su tratamiento para la {c}",
            ]
        )
        add("phi", "spanish", s)

    # --- PHI: encodings that must not hide anything ----------------------------------------
    enc = [
        "=?UTF-8?B?WW91ciBISVYgdGVzdCByZXN1bHRz?=",  # Your HIV test results
        "=?UTF-8?Q?Your_diabetes_care_plan?=",
        "=?ISO-8859-1?Q?Sra._L=F3pez,_sus_resultados?=",
        "=?UTF-8?B?U1NOIDEyMy00?= =?UTF-8?B?NS02Nzg5?=",  # SSN 123-45-6789 split
        "Your A\u200b1C results",
        "Your \u0410\u0031C results",  # Cyrillic A
        "\uff2d\uff32\uff2e 00482913",  # fullwidth MRN
        "Your d\u200ciabetes c\u200bare plan",
        "=?utf-8?q?Re=3A_Jane_Okafor?=",
        "Your H\u0399V results",  # Greek capital iota
        "=?UTF-8?B?RE9CIDAzLzE0LzE5ODU=?=",  # DOB 03/14/1985
        "Your =?UTF-8?Q?depresi=C3=B3n?= treatment plan",
    ]
    for s in enc:
        add("phi", "encoded", s)

    # --- clean: education, marketing, operations -------------------------------------------
    edu = [
        "5 tips to manage diabetes",
        "Flu shots now available",
        "Our new Saturday hours",
        "Understanding high blood pressure",
        "Heart health month: free screenings",
        "Living well with asthma: a free class",
        "What you should know about COVID boosters",
        "10 foods that lower cholesterol",
        "Mental health awareness week events",
        "New research on Alzheimer's prevention",
        "Is it a cold or the flu?",
        "Get your flu shot today",
        "Schedule your annual mammogram",
        "Join our diabetes support group",
        "Protect your family from measles",
        "Caring for someone with dementia: resources",
        "Signs of stroke everyone should know",
        "Breast cancer awareness month",
        "Free blood pressure checks this Friday",
        "Quit smoking program starts soon",
        "Your guide to healthy sleep",
        "Sun safety tips for summer",
        "How to talk to your doctor about anxiety",
        "Seasonal allergy survival guide",
        "Managing stress during the holidays",
        "Why vaccines matter for seniors",
        "Nutrition class: eating well with kidney disease",
        "Webinar: new treatments for migraine",
        "Healthy heart recipes for the whole family",
        "Back to school physicals available",
        "HIV testing is free and confidential",
        "Know your numbers: cholesterol basics",
        "Childhood asthma: what parents should know",
        "Prenatal yoga classes now open",
        "Take control of your health this year",
        "COVID-19 vaccines for kids 5 and up",
        "Safe medication disposal day",
        "Ask the pharmacist: managing side effects",
        "Hepatitis C: get tested, get cured",
        "Depression is treatable: learn the signs",
        "Tips to prevent the flu",
        "Osteoporosis: keep your bones strong",
        "Diabetes prevention program enrolling now",
        "Colon cancer screening saves lives",
        "The truth about sugar and diabetes",
        "Exercise and arthritis: myths and facts",
    ]
    ops = [
        "Our new Saturday hours",
        "Clinic closed for Thanksgiving",
        "We've moved!",
        "Patient portal maintenance tonight",
        "New parking garage now open",
        "Your monthly newsletter",
        "Update your communication preferences",
        "Holiday hours for our pharmacy",
        "Welcome our new pediatric wing",
        "Tell us about your visit: 2-minute survey",
        "Price transparency: our new estimator",
        "Changes to our cancellation policy",
        "Telehealth visits now available",
        "Online bill pay is here",
        "New location opening in Springfield",
        "Important update about our phone system",
        "Meet our new nurse practitioners",
        "Annual notice of privacy practices",
        "We now accept more insurance plans",
        "Save time with online check-in",
        "Your appointment reminder settings",
        "Refill your prescriptions online with our app",
        "Pharmacy drive-thru reopened",
        "Volunteer opportunities at the hospital",
        "Community health fair this weekend",
    ]
    for s in edu:
        add("clean", "education", s)
    for s in ops:
        add("clean", "operations", s)
    # Dates, numbers, phones and addresses that belong to the organisation or an event.
    for _ in range(40):
        f = rng.choice(en)
        month = f.month_name()
        day = rng.randint(1, 28)
        doc = f.last_name()
        s = rng.choice(
            [
                f"{month} {f.year()} newsletter",
                f"Clinic closed {month} {day}",
                f"Flu shot clinic on {month} {day}",
                f"Free screening event {rng.randint(1, 12)}/{day}",
                f"Blood drive {month} {day}: donors needed",
                f"Webinar {month} {day}: healthy aging",
                f"Call us at {f.numerify('(800) ###-####')} for appointments",
                f"Our new address: {f.street_address()}",
                f"Meet Dr. {doc}, our new cardiologist",
                f"Welcome Dr. {doc} to our family medicine team",
                f"Open house at our {f.city()} clinic",
                f"Top 10 questions about Medicare for {f.year()}",
                f"Questions? Call our nurse line {f.numerify('(###) ###-####')}",
                f"Q{rng.randint(1, 4)} {f.year()} quality report",
                f"Save 20% on vitamins through {month} {day}",
                f"Dr. {doc} featured in Health Magazine",
            ]
        )
        add("clean", "negative", s)
    es_clean = [
        "Consejos para controlar la diabetes",
        "Vacunas contra la gripe disponibles",
        "Nuevo horario los sábados",
        "Mes de la salud del corazón",
        "Aprenda a prevenir la hipertensión",
        "Taller gratuito de nutrición",
        "Cerrado el 25 de diciembre",
        "Conozca a nuestro nuevo médico",
        "Boletín de marzo 2025",
        "Cómo cuidar su salud en invierno",
        "Síntomas del cáncer de mama que debe conocer",
        "Grupo de apoyo para la ansiedad",
        "Programe su chequeo anual",
        "Nuevas citas en línea disponibles",
        "Feria de salud comunitaria este sábado",
        "Prevenga el dengue en su hogar",
        "Lo que debe saber sobre el VIH",
        "Semana de la salud mental",
        "Recetas saludables para toda la familia",
        "Nuestra farmacia abre los domingos",
    ]
    for s in es_clean:
        add("clean", "spanish", s)
    tricky_clean = [
        "Grace Hospital earns top safety award",
        "Hope Center now offers evening hours",
        "Mercy Clinic holiday schedule",
        "May is Mental Health Awareness Month",
        "Will you join us for the 5K?",
        "Summer camp physicals: book now",
        "Jordan Valley Medical Center news",
        "Faith and health: community talk",
        "Rose Garden fundraiser for children's health",
        "June newsletter: healthy grilling",
        "Our 2025 annual report",
        "New MRI machine arrives at St. Mary's",
        "Patient safety week",
        "Patient stories: life after heart surgery",
        "Ask Dr. Lee: your questions about allergies",
        "Pharmacy hours 9-5 Monday to Friday",
        "Room 204 renovation complete",
        "Over 10000 vaccines given this season",
        "Insurance open enrollment ends December 15",
        "Medicare Part D changes for 2026",
        "Support for caregivers of cancer patients",
        "Register for the 2025 diabetes walk",
        "Spring allergy season is here",
        "Your voice matters: patient advisory council",
        "Baby Steps: free prenatal class series",
        "Dr. Patel's healthy kitchen podcast",
        "Employee of the month: Maria from billing",
        "RSV season: protect your little ones",
        "Lab closed Monday for Labor Day",
        "Results of our patient satisfaction survey",
    ]
    for s in tricky_clean:
        add("clean", "tricky", s)
    # More organisation news, built from faker places and dates so no two read alike.
    topics = [
        "heart health",
        "healthy eating",
        "sleep",
        "stress",
        "diabetes prevention",
        "bone health",
        "men's health",
        "women's health",
        "healthy aging",
        "allergies",
        "skin cancer prevention",
        "vaccines",
        "nutrition",
        "fitness",
        "caregiving",
    ]
    specialties = [
        "cardiology",
        "dermatology",
        "pediatrics",
        "orthopedics",
        "urgent care",
        "physical therapy",
        "women's health",
        "behavioral health",
        "imaging",
        "sports medicine",
        "lab services",
        "pharmacy",
    ]
    for i in range(75):
        f = rng.choice(en + es)
        topic, spec = rng.choice(topics), rng.choice(specialties)
        city, day = f.city(), f.day_of_week()
        month = fakes["en_US"].month_name()
        s = rng.choice(
            [
                f"Free {topic} class this {day}",
                f"New {spec} services at our {city} location",
                f"{spec.title()} now open {day}s until 8 pm",
                f"{month} wellness newsletter: {topic}",
                f"Our {city} clinic is moving on {month} {rng.randint(1, 28)}",
                f"{topic.capitalize()}: 5 things to know",
                f"Register now: {topic} workshop in {city}",
                f"Thank you for choosing {city} Family Medicine",
                f"{rng.randint(3, 12)} ways to boost your {topic}",
                f"Community walk for {topic} - {month} {rng.randint(1, 28)}",
                f"Extended {spec} hours starting {month} {rng.randint(1, 28)}",
                f"Holiday schedule for the {city} pharmacy",
                f"Patient portal: new features for {month}",
                f"Seasonal tips: {topic} in {month}",
                f"Save the date: {city} health fair {month} {rng.randint(1, 28)}",
            ]
        )
        add("clean", "operations" if i % 3 else "education", s)
    tricky_phi = [
        "Grace, your biopsy results",
        "Will Turner - MRI tomorrow",
        "Re: Hope Martinez",
        "Your HIV viral load is undetectable",
        "Pregnancy test result",
        "Lab: A1C 9.2%",
        "Pt. Johnson - post-op check",
        "Your Suboxone appointment",
        "Jane's asthma action plan",
        "Results: hemoglobin low",
        "Metformin 500mg twice daily",
        "Your colonoscopy prep",
        "SSN ending 6789",
        "Your chlamydia test came back",
        "Therapy session notes for K. Nguyen",
        "Re: your mother's dementia care",
        "Hep C treatment start date 4/2/2025",
        "Your son's ADHD evaluation",
        "About your mammogram: follow-up needed",
        "ICD-10 F33.1 on your claim",
    ]
    for s in tricky_phi:
        add("phi", "tricky", s)
    # Written by hand after the rules, to check they generalise; kept as regression cases.
    for s in HANDWRITTEN_PHI:
        add("phi", "handwritten", s)
    for s in HANDWRITTEN_CLEAN:
        add("clean", "handwritten", s)
    rows.extend(generate_templated())
    rng.shuffle(rows)
    return rows


def generate_templated(seed: int = 99) -> list[tuple[str, str, str]]:
    """A second, differently worded template set (written as an outside check, then kept)."""
    from faker import Faker

    rng = random.Random(seed)
    fakers = [Faker(loc) for loc in ("en_US", "es_MX", "en_GB", "es_CO", "en_AU", "en_CA")]
    for i, fk in enumerate(fakers):
        fk.seed_instance(100 + i)

    def f() -> Faker:
        return rng.choice(fakers)

    drugs = [
        "Amlodipine",
        "Omeprazole",
        "Wegovy",
        "Synthroid",
        "Zyrtec",
        "Lipitor",
        "Plavix",
        "Keppra",
        "Lexapro",
        "Wellbutrin",
        "Advair",
        "Januvia",
        "Trulicity",
        "Seroquel",
        "Abilify",
        "Adderall",
        "Norco",
        "Valtrex",
    ]
    tests = [
        "CBC",
        "urinalysis",
        "thyroid panel",
        "MRI",
        "CT",
        "x-ray",
        "Pap test",
        "stress test",
        "biopsy",
        "bone density scan",
        "allergy test",
        "HbA1c",
        "lipid panel",
        "sleep study",
    ]
    conds = [
        "diabetes",
        "hypertension",
        "asthma",
        "GERD",
        "migraine",
        "arthritis",
        "depression",
        "anxiety",
        "COPD",
        "eczema",
        "gout",
        "osteoporosis",
        "sciatica",
        "IBS",
        "kidney stones",
        "shingles",
        "pneumonia",
        "bronchitis",
    ]
    specs = [
        "cardiology",
        "dermatology",
        "oncology",
        "neurology",
        "orthopedics",
        "pediatrics",
        "OB/GYN",
        "psychiatry",
        "urology",
        "gastroenterology",
    ]
    phi = [
        lambda g: f"Appointment confirmation for {g.name()} on {g.date(pattern='%m/%d/%Y')}",
        lambda g: f"{g.first_name()}, your {rng.choice(tests)} results are ready",
        lambda g: f"Refill reminder: {rng.choice(drugs)} {rng.choice([5, 10, 20, 25, 50, 100])}mg",
        lambda g: f"Your visit with Dr. {g.last_name()} on {g.date(pattern='%B %d')}",
        lambda g: f"Claim #{g.numerify('#########')} for {g.name()}",
        lambda g: f"MRN: {g.numerify('########')}",
        lambda g: f"Re: {g.first_name()}'s {rng.choice(conds)}",
        lambda g: f"Diagnosis update: {rng.choice(conds)}",
        lambda g: f"Account {g.numerify('#######')} statement",
        lambda g: f"{g.name()} ({g.date_of_birth().strftime('%m/%d/%Y')})",
        lambda g: f"Member ID {g.bothify('???########').upper()}",
        lambda g: f"Patient {g.name()} admitted",
        lambda g: f"{g.name()} - {g.phone_number()}",
        lambda g: f"Lab order for {g.name()}",
        lambda g: f"Cita de {g.name()} el {g.date(pattern='%d/%m/%Y')}",
        lambda g: f"Resultados de {g.name()}",
        lambda g: f"{g.first_name()}, su receta está lista",
        lambda g: f"Your {rng.choice(specs)} referral is approved",
        lambda g: f"{rng.choice(drugs)} prescription for {g.first_name()}",
        lambda g: f"Test results: {rng.choice(conds)} confirmed",
        lambda g: f"Your {rng.choice(conds)} treatment plan",
        lambda g: f"Follow-up for your {rng.choice(tests)}",
        lambda g: f"{g.name()}: missed appointment",
        lambda g: f"Email from {g.name()} re: {rng.choice(tests)}",
    ]
    clean = [
        lambda g: f"Our {g.city()} clinic will be closed on {g.date(pattern='%B %d')}",
        lambda g: f"{rng.randint(3, 12)} tips for a healthy {rng.choice(SEASONS)}",
        lambda g: "Flu vaccines available at all locations",
        lambda g: "New patient portal features",
        lambda g: f"Join our {rng.choice(conds)} webinar on {g.date(pattern='%B %d')}",
        lambda g: f"Monthly newsletter - {g.month_name()} {g.year()}",
        lambda g: f"Health tips: {rng.choice(conds)} awareness month",
        lambda g: f"We're hiring: {g.job()}",
        lambda g: f"Thank you for choosing {g.company()}",
        lambda g: f"Consejos de salud para el {rng.choice(['verano', 'invierno'])}",
        lambda g: f"Understanding {rng.choice(conds)}: causes and treatments",
        lambda g: f"New {rng.choice(specs)} clinic opens in {g.city()}",
        lambda g: f"Ask our pharmacist about {rng.choice(drugs)}",
        lambda g: f"What is a {rng.choice(tests)}?",
        lambda g: f"Meet Dr. {g.last_name()}, {rng.choice(specs)}",
        lambda g: f"{g.company()} sponsors {g.city()} health fair",
        lambda g: f"Free {rng.choice(tests)} screenings in {g.month_name()}",
        lambda g: f"Living with {rng.choice(conds)}: support group",
        lambda g: f"Updated hours for {g.day_of_week()}",
        lambda g: f"Call {g.numerify('1-800-###-####')} to schedule",
        lambda g: f"Managing {rng.choice(conds)} at home",
        lambda g: f"The {g.last_name()} Wellness Center is now open",
        lambda g: f"Donate to the {g.last_name()} Cancer Fund",
        lambda g: f"{rng.choice(drugs)} recall notice",
    ]
    rows: list[tuple[str, str, str]] = []
    for _ in range(120):
        rows.append(("phi", "templated", rng.choice(phi)(f())))
    for _ in range(120):
        rows.append(("clean", "templated", rng.choice(clean)(f())))
    return rows


def write_corpus(rows: list[tuple[str, str, str]]) -> None:
    CORPUS.parent.mkdir(parents=True, exist_ok=True)
    with CORPUS.open("w", encoding="utf-8") as fh:
        fh.write("label\tcategory\tsubject\n")
        for label, category, subject in rows:
            fh.write(f"{label}\t{category}\t{subject}\n")


def load_corpus(path: Path = CORPUS) -> list[tuple[str, str, str]]:
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines()[1:]:
        label, category, subject = line.split("\t", 2)
        rows.append((label, category, subject))
    return rows


# --- metrics --------------------------------------------------------------------------------


def score(rows: list[tuple[str, str, str]], predicted: list[bool]) -> dict[str, dict[str, float]]:
    """Precision, recall and FPR overall and per category."""
    counts: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0, 0])  # tp fp tn fn
    for (label, category, _), flagged in zip(rows, predicted, strict=True):
        actual = label == "phi"
        slot = (0 if flagged else 3) if actual else (1 if flagged else 2)
        for key in ("overall", category):
            counts[key][slot] += 1
    out = {}
    for key, (tp, fp, tn, fn) in counts.items():
        out[key] = {
            "n": tp + fp + tn + fn,
            "precision": tp / (tp + fp) if tp + fp else float("nan"),
            "recall": tp / (tp + fn) if tp + fn else float("nan"),
            "fpr": fp / (fp + tn) if fp + tn else float("nan"),
        }
    return out


def print_scores(title: str, scores: dict[str, dict[str, float]]) -> None:
    print(f"\n{title}")
    print(f"  {'category':<12} {'n':>5} {'precision':>10} {'recall':>8} {'fpr':>8}")
    for key in ["overall", *sorted(k for k in scores if k != "overall")]:
        s = scores[key]
        print(
            f"  {key:<12} {int(s['n']):>5} {s['precision']:>10.3f}"
            f" {s['recall']:>8.3f} {s['fpr']:>8.3f}"
        )


def run_detector(rows: list[tuple[str, str, str]]) -> tuple[list[bool], list[list[str]]]:
    from relay.phi import default_detector
    from relay.phi.normalize import subject_text

    detector = default_detector()
    kinds = [sorted({f.kind for f in detector.scan(subject_text(s))}) for _, _, s in rows]
    return [bool(k) for k in kinds], kinds


def measure_startup() -> tuple[float, float, float]:
    """Start-up seconds and vocabulary memory (tracemalloc MiB, RSS growth MiB), fresh process."""
    code = (
        "import json, os, time, tracemalloc\n"
        "def rss():\n"
        "    pages = int(open('/proc/self/statm').read().split()[1])\n"
        "    return pages * os.sysconf('SC_PAGE_SIZE')\n"
        "r0 = rss()\n"
        "tracemalloc.start(); t = time.perf_counter()\n"
        "from relay.phi import default_detector\n"
        "d = default_detector(); d.judge(['warm up']); d.conditions('warm up')\n"
        "dt = time.perf_counter() - t\n"
        "cur, peak = tracemalloc.get_traced_memory()\n"
        "r1 = rss()\n"
        "print(json.dumps([dt, cur / 2**20, (r1 - r0) / 2**20]))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    dt, traced, rss = json.loads(out.stdout)
    return dt, traced, rss


def measure_startup_untraced() -> float:
    code = (
        "import time; t = time.perf_counter()\n"
        "from relay.phi import default_detector\n"
        "d = default_detector(); d.judge(['warm up'])\n"
        "print(time.perf_counter() - t)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    return float(out.stdout)


def throughput(rows: list[tuple[str, str, str]], seconds: float = 2.0) -> float:
    from relay.phi import default_detector
    from relay.phi.normalize import subject_text

    detector = default_detector()
    subjects = [s for _, _, s in rows]

    def one_round() -> None:
        for s in subjects:
            detector.scan(subject_text(s))

    done, wall, _ = timed_rounds(one_round, len(subjects), seconds)
    return done / wall


PRESIDIO_SCRIPT = r"""
import json, sys
from presidio_analyzer.predefined_recognizers import (
    CreditCardRecognizer, DateRecognizer, EmailRecognizer, IpRecognizer, MedicalLicenseRecognizer,
    PhoneRecognizer, UrlRecognizer, UsBankRecognizer, UsItinRecognizer, UsLicenseRecognizer,
    UsPassportRecognizer, UsSsnRecognizer,
)
recognizers = [cls() for cls in (
    CreditCardRecognizer, DateRecognizer, EmailRecognizer, IpRecognizer, MedicalLicenseRecognizer,
    PhoneRecognizer, UrlRecognizer, UsBankRecognizer, UsItinRecognizer, UsLicenseRecognizer,
    UsPassportRecognizer, UsSsnRecognizer,
)]
threshold = float(sys.argv[1])
out = []
for line in sys.stdin:
    text = line.rstrip("\n")
    hits = []
    for r in recognizers:
        hits += [x for x in r.analyze(text, r.supported_entities, None) if x.score >= threshold]
    out.append(sorted({h.entity_type for h in hits}))
print(json.dumps(out))
"""


def run_presidio(
    python: str, rows: list[tuple[str, str, str]], threshold: float
) -> list[bool] | None:
    from relay.phi.normalize import subject_text

    text = "\n".join(subject_text(s) for _, _, s in rows) + "\n"
    try:
        out = subprocess.run(
            [python, "-c", PRESIDIO_SCRIPT, str(threshold)],
            input=text,
            capture_output=True,
            text=True,
            check=True,
            timeout=600,
        )
    except (OSError, subprocess.SubprocessError) as exc:
        print(f"\npresidio: could not run ({exc})")
        return None
    return [bool(k) for k in json.loads(out.stdout)]


def print_holdouts() -> None:
    """The hold-out sets, each written before the rules it then helped fix (see the doc)."""
    paths = sorted(
        CORPUS.parent.glob("holdout_*.tsv"),
        key=lambda p: (len(p.stem), p.stem),  # holdout_2 … holdout_10
    )
    if not paths:
        return
    print("\nhold-out sets (figures after the fixes they prompted; see docs/phi-detection.md)")
    print(f"  {'set':<14} {'n':>5} {'precision':>10} {'recall':>8} {'fpr':>8}")
    for path in paths:
        rows = load_corpus(path)
        predicted, _ = run_detector(rows)
        o = score(rows, predicted)["overall"]
        print(
            f"  {path.stem:<14} {len(rows):>5} {o['precision']:>10.3f} {o['recall']:>8.3f}"
            f" {o['fpr']:>8.3f}"
        )


# --- the writers' corpora (aggregates only) ---------------------------------------------

WRITERS = ROOT / "tests" / "data" / "corpus"


def writer_split() -> dict[str, str]:
    out = {}
    for line in (WRITERS / "split.tsv").read_text(encoding="utf-8").splitlines():
        if line and not line.startswith("#"):
            writer, part = line.split("\t")
            out[writer] = part
    return out


def writer_rows(part: str) -> list[dict[str, str]]:
    rows: list[dict[str, str]] = []
    for writer, p in sorted(writer_split().items()):
        path = WRITERS / f"{writer}.tsv"
        if p != part or not path.exists():
            continue
        lines = path.read_text(encoding="utf-8").split("\n")
        head = lines[0].split("\t")
        for line in lines[1:]:
            if line:
                r = dict(zip(head, line.split("\t"), strict=False))
                raw = on_the_wire(r["raw"]) if r["form"] == "rfc2047" else ""
                r["input"] = raw or r["subject"]
                rows.append(r)
    return rows


OLD_SCRIPT = r"""
import json, sys
from relay.phi import default_detector
from relay.phi.normalize import subject_text
d = default_detector()
inputs = json.load(sys.stdin)
print(json.dumps([bool(d.scan(subject_text(t))) for t in inputs]))
"""


def run_old(src: Path, inputs: list[str]) -> list[bool]:
    """The detector of another checkout, in its own interpreter (its relay package first)."""
    import os

    env = {**os.environ, "PYTHONPATH": str(src)}
    out = subprocess.run(
        [sys.executable, "-c", OLD_SCRIPT],
        input=json.dumps(inputs),
        capture_output=True,
        text=True,
        env=env,
        cwd=src,
        check=True,
    )
    return [bool(x) for x in json.loads(out.stdout)]


def _rates(pairs: list[tuple[bool, bool]]) -> tuple[int, int, float, float, float]:
    tp = sum(1 for y, p in pairs if y and p)
    fp = sum(1 for y, p in pairs if p and not y)
    pos = sum(1 for y, _ in pairs if y)
    neg = len(pairs) - pos
    precision = tp / (tp + fp) if tp + fp else float("nan")
    recall = tp / pos if pos else float("nan")
    fpr = fp / neg if neg else float("nan")
    return pos, neg, precision, recall, fpr


def _table(
    title: str,
    groups: dict[str, list[tuple[bool, bool]]],
    old: dict[str, list[tuple[bool, bool]]] | None,
) -> None:
    print(f"\n{title}")
    head = f"  {'':<16} {'phi':>5} {'clean':>6} {'precision':>9} {'recall':>7} {'fpr':>6}"
    print(head + ("   old: precision recall    fpr" if old else ""))
    for key in sorted(groups):
        pos, neg, pr, rc, fpr = _rates(groups[key])
        line = f"  {key:<16} {pos:>5} {neg:>6} {pr:>9.3f} {rc:>7.3f} {fpr:>6.3f}"
        if old:
            _, _, opr, orc, ofpr = _rates(old[key])
            line += f"   {opr:>14.3f} {orc:>6.3f} {ofpr:>6.3f}"
        print(line)


def _judge_throughput(inputs: list[str], seconds: float) -> float:
    from relay.phi import default_detector
    from relay.phi.normalize import subject_texts

    detector = default_detector()

    def one_round() -> None:
        for text in inputs:
            detector.judge(subject_texts(text))

    done, wall, _ = timed_rounds(one_round, len(inputs), seconds)
    return done / wall


def training_subjects() -> list[str]:
    """Every subject training reads: the train writers' and the older corpora's."""
    subjects = [r["subject"] for r in writer_rows("train")]
    for path in sorted((ROOT / "tests" / "data").glob("*.tsv")):
        subjects.extend(subject for _, _, subject in load_corpus(path))
    return subjects


def evaluate_writers(
    part: str, old_src: Path | None, seconds: float, near_dup: tuple[float, ...] = (0.6, 0.8)
) -> int:
    from relay.phi import default_detector
    from relay.phi.api import STRONG
    from relay.phi.normalize import subject_texts

    rows = writer_rows(part)
    if not rows:
        print(f"no writers in split {part!r} have delivered")
        return 1
    detector = default_detector()
    started = time.perf_counter()
    judged = [detector.judge(subject_texts(r["input"])) for r in rows]
    elapsed = time.perf_counter() - started
    labels = [r["label"] == "phi" for r in rows]
    pred = [j.phi for j in judged]
    old_pred = run_old(old_src, [r["input"] for r in rows]) if old_src else None

    def groups(
        key: object, flags: list[bool], only: list[int] | None = None
    ) -> dict[str, list[tuple[bool, bool]]]:
        out: dict[str, list[tuple[bool, bool]]] = defaultdict(list)
        for i in range(len(rows)) if only is None else only:
            for k in key(rows[i]):  # type: ignore[operator]
                out[k].append((labels[i], flags[i]))
        return out

    def table(title: str, key: object) -> None:
        _table(title, groups(key, pred), groups(key, old_pred) if old_pred else None)

    writers = sorted({r["writer"] for r in rows})
    print(
        f"split {part}: writers {', '.join(writers)}; {len(rows)} subjects "
        f"({sum(labels)} phi); new detector vs {'old ' + str(old_src) if old_src else 'nothing'}"
    )
    table("overall", lambda r: ["all"])
    table("per writer", lambda r: [r["writer"]])
    table("per language", lambda r: [r["lang"]])
    table("per form", lambda r: [r["form"]])
    table("obfuscated + rfc2047", lambda r: ["encoded"] if r["form"] != "plain" else [])
    table("per guide rule (label column 'rule')", lambda r: [r["rule"].split()[0]])
    table("per guide section", lambda r: [r["rule"][:2] if r["rule"][:1] == "R" else "B"])
    if near_dup and part != "train":
        from near_dups import best_ratios

        best = best_ratios([r["subject"] for r in rows], training_subjects())
        print(
            "\nnear-duplicates of training subjects (the guide's difflib ratio, on folded "
            "text: bench/near_dups.py); the figures without the subjects at or above each cut:"
        )
        for cut in near_dup:
            novel = [i for i, b in enumerate(best) if b < cut]

            def novel_table(title: str, key: object, novel: list[int] = novel) -> None:
                old = groups(key, old_pred, novel) if old_pred else None
                _table(title, groups(key, pred, novel), old)

            print(f"\nratio >= {cut}: {len(rows) - len(novel)} of {len(rows)} left out")
            novel_table(f"overall, ratio < {cut}", lambda r: ["all"])
            novel_table(f"per writer, ratio < {cut}", lambda r: [r["writer"]])
            novel_table(
                f"obfuscated + rfc2047, ratio < {cut}",
                lambda r: ["encoded"] if r["form"] != "plain" else [],
            )
    strong = sum(1 for j in judged if j.tier == STRONG)
    uncertain = sum(1 for j in judged if j.phi and j.tier != STRONG)
    print(f"\ntiers: {strong} strong (refuse/replace per kind), {uncertain} uncertain (replace)")
    # What a sender of clean mail sees: a strong judgement is refused under the default
    # actions (550), an uncertain one only has its subject replaced.
    clean = [j for j, y in zip(judged, labels, strict=True) if not y]
    refused = sum(1 for j in clean if j.tier == STRONG)
    replaced = sum(1 for j in clean if j.phi and j.tier != STRONG)
    print(
        f"  of {len(clean)} clean subjects: {refused} strong ({refused / max(1, len(clean)):.3f}"
        f", refused by the default actions), {replaced} uncertain "
        f"({replaced / max(1, len(clean)):.3f}, subject replaced)"
    )
    fired: dict[str, list[tuple[bool, bool]]] = defaultdict(list)
    for j, y in zip(judged, labels, strict=True):
        for rule in j.rules:
            fired[rule].append((y, True))
    print("\nrules that decided (hits on phi / on clean subjects)")
    for rule in sorted(fired):
        hits = fired[rule]
        print(
            f"  {rule:<22} {sum(1 for y, _ in hits if y):>5} {sum(1 for y, _ in hits if not y):>5}"
        )
    rate = _judge_throughput([r["input"] for r in rows], seconds)
    startup = measure_startup_untraced()
    _, traced, rss = measure_startup()
    print(f"\nthroughput: {rate:,.0f} subjects/s (one core: subject_texts + judge, all tiers)")
    print(f"first pass: {len(rows) / elapsed:,.0f} subjects/s (cold caches)")
    print(f"start-up: {startup * 1000:.0f} ms (import, vocabularies, scorer weights, first scan)")
    print(f"memory: {traced:.1f} MiB allocated (tracemalloc), {rss:.1f} MiB RSS growth")
    _, _, _, recall, fpr = _rates(list(zip(labels, pred, strict=True)))
    enc = [(y, p) for r, y, p in zip(rows, labels, pred, strict=True) if r["form"] != "plain"]
    enc_recall = _rates(enc)[3]
    ok = recall >= 0.97 and fpr <= 0.02 and enc_recall >= 0.99 and rate >= 20_000
    print(
        f"\ntargets (recall >= 0.97, FPR <= 0.02, encoded recall >= 0.99, >= 20,000/s): "
        f"{'met' if ok else 'NOT met'} (recall {recall:.3f}, FPR {fpr:.3f}, "
        f"encoded recall {enc_recall:.3f}, {rate:,.0f}/s)"
    )
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--corpus", type=Path, default=CORPUS)
    ap.add_argument("--generate", action="store_true", help="rebuild the corpus with faker")
    ap.add_argument("--errors", action="store_true", help="list misclassified subjects")
    ap.add_argument("--presidio", metavar="PYTHON", help="python of a venv with presidio-analyzer")
    ap.add_argument("--presidio-threshold", type=float, default=0.3)
    ap.add_argument("--seconds", type=float, default=2.0, help="throughput measuring time")
    ap.add_argument(
        "--split",
        choices=("train", "validation", "heldout"),
        help="score the writers' corpora",
    )
    ap.add_argument("--old", type=Path, help="checkout of an older detector to compare")
    ap.add_argument(
        "--near-dup",
        default="0.6,0.8",
        help="with --split validation|heldout, also the figures without the subjects whose "
        "difflib ratio to a training subject is at least each of these ('': skip)",
    )
    args = ap.parse_args()
    if args.split:
        cuts = tuple(float(c) for c in args.near_dup.split(",") if c)
        return evaluate_writers(args.split, args.old, args.seconds, cuts)
    if args.generate:
        rows = generate()
        write_corpus(rows)
        print(f"wrote {len(rows)} subjects ({sum(r[0] == 'phi' for r in rows)} phi) to {CORPUS}")
    rows = load_corpus(args.corpus)
    startup = measure_startup_untraced()
    _, traced, rss = measure_startup()
    predicted, found = run_detector(rows)
    scores = score(rows, predicted)
    print_scores("phi-relay detector", scores)
    if args.errors:
        print("\nmisclassified:")
        for (label, category, subject), flagged, kinds in zip(rows, predicted, found, strict=True):
            if flagged != (label == "phi"):
                print(f"  {label:<5} {category:<11} {','.join(kinds) or '-':<24} {subject}")
    rate = throughput(rows, args.seconds)
    print(f"\nsubjects: {len(rows)} ({sum(r[0] == 'phi' for r in rows)} phi)")
    print(f"throughput: {rate:,.0f} subjects/s (one core, subject_text + scan)")
    print(f"start-up: {startup * 1000:.0f} ms (import + vocabularies + first scan)")
    print(f"vocabulary memory: {traced:.1f} MiB allocated (tracemalloc), {rss:.1f} MiB RSS growth")
    overall = scores["overall"]
    if args.corpus == CORPUS:
        print_holdouts()
    if args.presidio:
        flags = run_presidio(args.presidio, rows, args.presidio_threshold)
        if flags is not None:
            print_scores(
                f"presidio-analyzer pattern recognizers (score >= {args.presidio_threshold})",
                score(rows, flags),
            )
    ok = overall["recall"] >= 0.97 and overall["fpr"] <= 0.03
    print(f"\ntargets (recall >= 0.97, FPR <= 0.03): {'met' if ok else 'NOT met'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
