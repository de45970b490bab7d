"""Roster: keyed hashes only, all-or-nothing import with line numbers, exact matching."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from faker import Faker

from relay.phi.detector import PhiDetector
from relay.phi.normalize import subject_text
from relay.phi.roster import DB_NAME, Roster, RosterError, import_csv


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture
def people() -> list[tuple[str, str, str]]:
    fake = Faker(["en_US", "es_MX"])
    fake.seed_instance(3)
    return [(fake.first_name(), fake.last_name(), fake.bothify("MR-######")) for _ in range(5)]


def test_import_stores_only_keyed_hashes(
    tmp_path: Path, people: list[tuple[str, str, str]]
) -> None:
    csv = write(
        tmp_path / "r.csv",
        "first_name,last_name,mrn\n" + "".join(f"{f},{s},{m}\n" for f, s, m in people),
    )
    assert import_csv(csv, tmp_path / "state") == 5
    raw = (tmp_path / "state" / DB_NAME).read_bytes()
    for first, last, mrn in people:
        for value in (first, last, mrn, first.lower(), last.lower()):
            assert value.encode() not in raw
    con = sqlite3.connect(tmp_path / "state" / DB_NAME)
    kinds = dict(con.execute("SELECT kind, count(*) FROM hashes GROUP BY kind").fetchall())
    con.close()
    assert kinds["mrn"] == 5
    assert kinds["name"] >= 10  # both word orders for every row


def test_roster_matches_bare_names_and_mrns(tmp_path: Path) -> None:
    csv = write(tmp_path / "r.csv", "first_name,last_name,mrn\nAda,Quintanilla-Roe,MR-448812\n")
    import_csv(csv, tmp_path)
    roster = Roster.load(tmp_path)
    assert roster is not None
    detector = PhiDetector(roster=roster)
    cases = {
        "Re: ada quintanilla-roe": {"name"},
        "QUINTANILLA-ROE ADA": {"name"},
        "Chart MR-448812": {"mrn"},
        "=?UTF-8?Q?Re=3A_Ad=D0=B0_Quintanilla-Roe?=": {"name"},  # Cyrillic a
        "Ada Lovelace lecture series": set(),
    }
    for subject, expected in cases.items():
        assert {f.kind for f in detector.scan(subject_text(subject))} == expected, subject


def test_no_roster_imported(tmp_path: Path) -> None:
    assert Roster.load(tmp_path) is None


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("first_name,last_name,mrn\nAda,Roe,M1\n", "line 2: mrn must be 4-40"),
        ("first_name,last_name,mrn\nAda,Roe,MR-1234\nBo,,\n", "line 3: first_name and last_name"),
        ("first_name,last_name,mrn\nAda,Roe,MR-1234\n,,\n", "line 3: empty row"),
        ("first_name,last_name\nAda,Roe,extra\n", "line 2: more fields than the header"),
        ("first_name,last_name,mrn\n123,456,\n", "line 2: first_name holds no letters"),
        ("name,dob\nAda,1990\n", "line 1: header must name"),
        ("first_name,last_name,mrn\n", "no rows to import"),
    ],
)
def test_bad_rows_import_nothing(tmp_path: Path, text: str, message: str) -> None:
    csv = write(tmp_path / "r.csv", text)
    with pytest.raises(RosterError, match=message):
        import_csv(csv, tmp_path)
    assert not (tmp_path / DB_NAME).exists()


def test_reimport_replaces(tmp_path: Path) -> None:
    import_csv(write(tmp_path / "a.csv", "first_name,last_name\nAda,Roe\n"), tmp_path)
    import_csv(write(tmp_path / "b.csv", "first_name,last_name\nBo,Zhang\n"), tmp_path)
    roster = Roster.load(tmp_path)
    assert roster is not None
    detector = PhiDetector(roster=roster)
    assert {f.kind for f in detector.scan("Re: ada roe")} == set()
    assert {f.kind for f in detector.scan("Re: bo zhang")} == {"name"}
