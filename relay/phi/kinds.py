"""The finding kinds the detector reports, and the words the SMTP reply uses for each."""

from __future__ import annotations

# HIPAA identifiers (45 CFR 164.514(b)(2)) that fit in a subject line.
NAME = "name"
DATE = "date"
PHONE = "phone"
FAX = "fax"
EMAIL = "email"
ADDRESS = "address"
ZIP = "zip"
SSN = "ssn"
MRN = "mrn"
MEMBER_ID = "member-id"
ACCOUNT = "account"
LICENSE = "license"
DEVICE = "device"
NPI = "npi"
DEA = "dea"
ICD10 = "icd10"
CPT = "cpt"

# Health facts about a person.
CONDITION = "condition"
MEDICATION = "medication"
PROCEDURE = "procedure"
RESULT = "result"
PRESCRIPTION = "prescription"
PROVIDER = "provider"
# What the learned scorer reports when no rule names the kind of health fact.
HEALTH = "health"

# Extra-sensitive topics: their own kinds so a policy can treat them more strictly.
HIV = "hiv"
SUBSTANCE_USE = "substance-use"
MENTAL_HEALTH = "mental-health"
REPRODUCTIVE_HEALTH = "reproductive-health"
SEXUAL_HEALTH = "sexual-health"

LABELS: dict[str, str] = {
    NAME: "patient name",
    DATE: "date of birth or care date",
    PHONE: "phone number",
    FAX: "fax number",
    EMAIL: "email address",
    ADDRESS: "street address",
    ZIP: "ZIP code",
    SSN: "social security number",
    MRN: "medical record number",
    MEMBER_ID: "health plan member number",
    ACCOUNT: "account or claim number",
    LICENSE: "licence number",
    DEVICE: "device identifier",
    NPI: "provider identifier (NPI)",
    DEA: "DEA registration number",
    ICD10: "diagnosis code",
    CPT: "procedure code",
    CONDITION: "health condition",
    MEDICATION: "medication",
    PROCEDURE: "test or procedure",
    RESULT: "test result",
    PRESCRIPTION: "prescription",
    PROVIDER: "named provider",
    HEALTH: "health information",
    HIV: "HIV status",
    SUBSTANCE_USE: "substance use",
    MENTAL_HEALTH: "mental health",
    REPRODUCTIVE_HEALTH: "reproductive health",
    SEXUAL_HEALTH: "sexual health",
}

ALL: frozenset[str] = frozenset(LABELS)
IDENTIFIERS: frozenset[str] = frozenset(
    {NAME, DATE, PHONE, FAX, EMAIL, ADDRESS, ZIP, SSN, MRN, MEMBER_ID, ACCOUNT, LICENSE, DEVICE}
    | {NPI, DEA, ICD10, CPT}
)
SENSITIVE: frozenset[str] = frozenset(
    {HIV, SUBSTANCE_USE, MENTAL_HEALTH, REPRODUCTIVE_HEALTH, SEXUAL_HEALTH}
)


def label(kind: str) -> str:
    """The reply phrase for a kind; an unknown kind reads as itself (it holds no PHI)."""
    return LABELS.get(kind, kind)
