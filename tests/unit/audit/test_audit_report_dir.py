"""`phi-relay audit report DIR` reads the same chains as `audit verify DIR`: every `*.log`
chain of every replica and worker in the directory, each with all of its rotations (`.N`,
logrotate's `-DATE` and compressed `.gz`), and names the replica each chain came from."""

from __future__ import annotations

import gzip
import json
import os
import shutil
from pathlib import Path

import pytest
from audit_support import decision, run_cli

from relay import keys
from relay.audit import AuditLog


@pytest.fixture(autouse=True)
def no_env_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(keys.env_name("audit"), raising=False)


def chain(path: Path, key: bytes, replica: str, messages: int) -> None:
    """`messages` decisions written by one process, rotated every few records."""
    with AuditLog(path, key=key, max_bytes=3000, replica=replica) as log:
        for i in range(messages):
            log.decision(decision(decision_id=f"{replica}-{i}"))


def age(path: Path, seconds: float) -> None:
    stamp = path.stat().st_mtime - seconds
    os.utime(path, (stamp, stamp))


@pytest.fixture
def chains(tmp_path: Path) -> tuple[Path, Path]:
    """A directory as an operator collects it: replica a (two workers) and replica b."""
    state = tmp_path / "state"
    key = keys.load_or_create(state, "audit")
    folder = tmp_path / "chains"
    folder.mkdir()
    chain(folder / "a-w1.log", key, "a", 12)
    chain(folder / "a-w2.log", key, "a", 3)
    chain(folder / "b.log", key, "b", 12)
    # logrotate `compress` on a-w1's older files, `dateext` on b's: same chains, new names.
    for old in sorted(folder.glob("a-w1.log.*")):
        packed = old.with_name(old.name + ".gz")
        with old.open("rb") as src, gzip.open(packed, "wb") as dst:
            shutil.copyfileobj(src, dst)
        shutil.copystat(old, packed)
        old.unlink()
    rotated_b = sorted(folder.glob("b.log.*"), key=lambda p: p.stat().st_mtime)
    assert rotated_b, "b's chain should have rotated"
    for n, old in enumerate(rotated_b):
        old.rename(folder / f"b.log-2026113{n}")
    assert list(folder.glob("*.gz")) and list(folder.glob("b.log-*"))
    return state, folder


def test_report_reads_every_chain_and_rotation_that_verify_reads(
    chains: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    state, folder = chains
    assert run_cli(["audit", "verify", str(folder), "--state-dir", str(state)]) == 0
    verified = capsys.readouterr().out.splitlines()
    assert [line.split(": ")[1] for line in verified] == [
        str(folder / name) for name in ("a-w1.log", "a-w2.log", "b.log")
    ]
    out = tmp_path / "report.json"
    args = ["audit", "report", str(folder), "--format", "json", "-o", str(out)]
    code = run_cli([*args, "--no-optouts", "--state-dir", str(state)])
    report = json.loads(out.read_text())
    by_name = {Path(c["name"]).name: c for c in report["verification"]["chains"]}
    assert code == 0, capsys.readouterr().err
    assert sorted(by_name) == ["a-w1.log", "a-w2.log", "b.log"]
    assert all(c["ok"] for c in by_name.values()), by_name
    assert len(by_name["a-w1.log"]["files"]) > 1
    assert any(f.endswith(".gz") for f in by_name["a-w1.log"]["files"])
    assert any("b.log-2026113" in f for f in by_name["b.log"]["files"])
    assert {n: c["replicas"] for n, c in by_name.items()} == {
        "a-w1.log": ["a"],
        "a-w2.log": ["a"],
        "b.log": ["b"],
    }
    # Every decision of every chain, compressed and renamed rotations included.
    assert report["totals"]["decisions"] == 12 + 3 + 12


def test_a_lone_chain_file_brings_its_compressed_rotations_too(
    chains: tuple[Path, Path], tmp_path: Path
) -> None:
    state, folder = chains
    out = tmp_path / "one.json"
    args = ["audit", "report", str(folder / "a-w1.log"), "--format", "json", "-o", str(out)]
    assert run_cli([*args, "--no-optouts", "--state-dir", str(state)]) == 0
    [only] = json.loads(out.read_text())["verification"]["chains"]
    assert only["ok"] and only["records"] == 12 and only["replicas"] == ["a"]
