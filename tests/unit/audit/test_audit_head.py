"""Where the chain goes on when the file being opened holds no record: head file, rotations."""

from __future__ import annotations

import gzip
import json
import os
from pathlib import Path

import pytest

from relay.audit import AuditLog, verify
from tests.unit.audit.audit_support import KEY


def records(text: str) -> list[dict[str, object]]:
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


def test_stdout_only_chain_goes_on_after_a_restart(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    head = tmp_path / "audit.head"
    for run in range(2):
        log = AuditLog(None, key=KEY, stdout=True, head=head)
        log.event("relay-start", run=run)
        log.close()
    out = records(capsys.readouterr().out)
    assert [r["seq"] for r in out] == [0, 1, 2]
    assert out[1]["event"] == "chain-continued"
    assert out[1]["prev"] == out[0]["hash"] and out[2]["prev"] == out[1]["hash"]
    assert (head.stat().st_mode & 0o777) == 0o600


def test_an_emptied_file_goes_on_from_the_compressed_rotation(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    with AuditLog(path, key=KEY) as log:
        for n in range(3):
            log.event("tick", n=n)
    rotated = tmp_path / "audit.log.1.gz"
    rotated.write_bytes(gzip.compress(path.read_bytes()))
    plain = path.read_bytes()
    path.write_bytes(b"")
    with AuditLog(path, key=KEY) as log:
        log.event("tick", n=3)
    (tmp_path / "old").write_bytes(plain)
    report = verify([tmp_path / "old", path], KEY)
    assert report.ok, report.problems
    assert [json.loads(x)["seq"] for x in path.read_text().splitlines()] == [3, 4]


def test_a_head_file_ahead_of_the_rotations_wins(tmp_path: Path) -> None:
    path, head = tmp_path / "audit.log", tmp_path / "audit.head"
    with AuditLog(path, key=KEY, head=head) as log:
        log.event("tick", n=0)
    os.replace(path, tmp_path / "audit.log.2")
    with AuditLog(path, key=KEY, head=head) as log:
        log.event("tick", n=1)
    # audit.log.1 was shipped off the host and removed: only the head knows its end.
    os.replace(path, tmp_path / "shipped")
    with AuditLog(path, key=KEY, head=head) as log:
        log.event("tick", n=2)
    report = verify([tmp_path / "audit.log.2", tmp_path / "shipped", path], KEY)
    assert report.ok, report.problems


def test_a_record_under_another_key_is_not_continued(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    with AuditLog(path, key=b"x" * 32) as log:
        log.event("tick", n=0)
    os.replace(path, tmp_path / "audit.log.1")
    with AuditLog(path, key=KEY) as log:
        log.event("tick", n=1)
    assert json.loads(path.read_text())["seq"] == 0


def test_rotations_are_found_oldest_first_whatever_their_names(tmp_path: Path) -> None:
    from relay.audit.verify import with_rotated

    path = tmp_path / "audit.log"
    names = ["audit.log-20261101.gz", "audit.log.2", "audit.log.1"]
    for age, name in enumerate(names):
        (tmp_path / name).write_bytes(b"x\n")
        os.utime(tmp_path / name, (1_700_000_000 + age, 1_700_000_000 + age))
    (tmp_path / ".audit.log.lock").write_bytes(b"1\n")
    (tmp_path / "audit.head").write_bytes(b"1\n")
    path.write_bytes(b"")
    assert with_rotated(path) == [*(tmp_path / n for n in names), path]
