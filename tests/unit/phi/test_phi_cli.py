"""`phi-relay scan-subjects` and `phi-relay roster import` through the real CLI entry point."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from relay.cli import main


def test_scan_subjects_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = tmp_path / "s.txt"
    src.write_text(
        "Our new Saturday hours\n"
        "MRN 00482913, DOB 03/14/1985\n"
        "=?UTF-8?B?WW91ciBISVYgdGVzdCByZXN1bHRz?=\n",
        encoding="utf-8",
    )
    assert main(["scan-subjects", str(src)]) == 1  # any PHI subject: exit 1
    # phi when the relay would refuse or replace; then the kinds and the rule ids.
    assert capsys.readouterr().out == (
        "clean\t\t\n"
        "phi\tdate,mrn\tid.cued,id.date\n"
        "phi\thiv,procedure,result\thealth.possessive,health.result,health.term,model.health\n"
    )


def test_scan_subjects_stdin(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(
        "sys.stdin", io.StringIO("5 tips to manage diabetes\r\nPatient: Jane Okafor\n")
    )
    assert main(["scan-subjects", "-"]) == 1
    assert capsys.readouterr().out == "clean\t\t\nphi\tname\tname.patient-cue\n"


def test_scan_subjects_missing_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["scan-subjects", str(tmp_path / "nope.txt")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("phi-relay scan-subjects: ")
    assert "Traceback" not in err


def test_roster_import_then_scan(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    csv = tmp_path / "roster.csv"
    csv.write_text("first_name,last_name,mrn\nZorba,Quillfeather,A-99812\n", encoding="utf-8")
    state = tmp_path / "state"
    assert main(["roster", "import", str(csv), "--state-dir", str(state)]) == 0
    assert "imported 1 roster rows" in capsys.readouterr().out
    monkeypatch.setattr("sys.stdin", io.StringIO("Re: zorba quillfeather\nChart A-99812\nHello\n"))
    assert main(["scan-subjects", "--state-dir", str(state)]) == 1
    # The chart number is both cued (id.cued) and on the roster: the stronger evidence,
    # the roster's exact match, is the rule reported.
    assert capsys.readouterr().out == ("phi\tname\troster.name\nphi\tmrn\troster.mrn\nclean\t\t\n")


def test_roster_bad_row_reports_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    csv = tmp_path / "roster.csv"
    csv.write_text("first_name,last_name,mrn\nAda,Roe,A-12345\nBo,,\n", encoding="utf-8")
    assert main(["roster", "import", str(csv), "--state-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "line 3: first_name and last_name must both be given; nothing imported" in err
    assert not (tmp_path / "roster.db").exists()


def test_scan_with_state_dir_without_roster(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["scan-subjects", "--state-dir", str(tmp_path), str(tmp_path / "x")]) == 2
    assert "no roster imported" in capsys.readouterr().err
