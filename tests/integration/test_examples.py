"""examples/: each sample message gets the decision examples/README.md and the README say."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"


def phi_relay(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PHI_RELAY_")}
    return subprocess.run(
        [sys.executable, "-m", "relay", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        env={**env, "PYTHONPATH": str(ROOT)},
        check=False,
    )


@pytest.mark.parametrize(
    ("name", "code", "expect"),
    [
        ("appointment-reminder.eml", 0, "category\tappointment-reminder\t(from header)"),
        ("education-newsletter.eml", 0, "optout-footer\tmodify\tfooter.added"),
        ("fundraising-appeal.eml", 0, "optout-footer\tmodify\tfooter.added"),
        ("phi-subject.eml", 1, "decision: reject\t550 5.7.1 Subject line contains protected"),
        ("marketing-offer.eml", 1, "consent.no-authorized-recipients"),
    ],
)
def test_example_decision(tmp_path: Path, name: str, code: int, expect: str) -> None:
    out = phi_relay(["check", str(EXAMPLES / name)], tmp_path)
    assert out.returncode == code, out.stdout + out.stderr
    assert expect in out.stdout, out.stdout


def test_marketing_example_after_a_consent_grant(tmp_path: Path) -> None:
    grant = ["consent", "grant", "patient@example.org", "--form-ref", "FORM-2026-0042"]
    assert phi_relay(grant, tmp_path).returncode == 0
    out = phi_relay(["check", str(EXAMPLES / "marketing-offer.eml")], tmp_path)
    assert out.returncode == 0, out.stdout
    assert "decision: accept\t1 of 1 recipient(s)" in out.stdout


def test_every_example_is_listed() -> None:
    listed = (EXAMPLES / "README.md").read_text()
    for path in EXAMPLES.glob("*.eml"):
        assert f"`{path.name}`" in listed, path.name
