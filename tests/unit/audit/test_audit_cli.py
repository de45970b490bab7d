"""`phi-relay audit verify`: output and exit codes."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest
from audit_support import KEY, lines, run_cli, write_events

from relay import keys
from relay.audit import AuditLog


@pytest.fixture
def state(tmp_path: Path) -> Path:
    """A state directory whose audit key wrote a three-record log at state/audit.log."""
    directory = tmp_path / "state"
    key = keys.load_or_create(directory, "audit")
    with AuditLog(directory / "audit.log", key=key) as log:
        for i in range(3):
            log.event("test", n=i)
    return directory


@pytest.fixture(autouse=True)
def no_env_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(keys.env_name("audit"), raising=False)


@pytest.fixture
def elsewhere(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The working directory of an admin command run from outside the state directory."""
    directory = tmp_path / "elsewhere"
    directory.mkdir()
    monkeypatch.chdir(directory)
    monkeypatch.delenv("PHI_RELAY_STATE_DIR", raising=False)
    return directory


def _alter_second_record(state: Path) -> None:
    raw = lines(state / "audit.log")
    raw[1] = raw[1].replace(b'"n":1', b'"n":5')
    (state / "audit.log").write_bytes(b"".join(raw))


def test_intact_log_exits_0(state: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = run_cli(["audit", "verify", str(state / "audit.log"), "--state-dir", str(state)])
    out, err = capsys.readouterr()
    assert (code, out) == (0, "OK: 3 records, chain intact\n")
    assert err.startswith("note: last record: seq 2 at ")


def test_a_state_directory_named_from_elsewhere_brings_its_key(
    state: Path, elsewhere: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # `phi-relay audit verify /srv/relay/state` from another directory (an installed
    # wheel, a cron job): the key is the one beside those logs, not ./state's.
    assert run_cli(["audit", "verify", str(state)]) == 0
    assert capsys.readouterr().out == f"OK: {state / 'audit.log'}: 3 records, chain intact\n"
    assert run_cli(["audit", "verify", str(state / "audit.log")]) == 0
    assert capsys.readouterr().out == "OK: 3 records, chain intact\n"
    # Another relay's ./state with its own key does not take over the logs named.
    keys.load_or_create(elsewhere / "state", "audit")
    assert run_cli(["audit", "verify", str(state)]) == 0
    # An edit is still caught with the key found there.
    _alter_second_record(state)
    assert run_cli(["audit", "verify", str(state)]) == 1


def test_a_report_of_a_state_directory_named_from_elsewhere_brings_its_key(
    state: Path, elsewhere: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # `phi-relay audit report /srv/relay/state` from another directory reads the key (and
    # the consent store's opt-outs) beside those logs, as `audit verify` does.
    assert run_cli(["audit", "report", str(state), "--format", "json", "--no-optouts"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["verification"]["ok"] is True
    assert data["events"] == [{"event": "test", "count": 3}]
    assert run_cli(["audit", "report", str(state), "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out)["verification"]["ok"] is True
    assert not (elsewhere / "state").exists()
    # An edit is caught with the key found there.
    _alter_second_record(state)
    assert run_cli(["audit", "report", str(state), "--format", "json", "--no-optouts"]) == 1
    assert json.loads(capsys.readouterr().out)["verification"]["ok"] is False


def test_tampered_log_exits_1_with_one_line_per_problem(
    state: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = state / "audit.log"
    raw = lines(path)
    raw[1] = raw[1].replace(b'"n":1', b'"n":5')
    del raw[0]
    path.write_bytes(b"".join(raw))
    code = run_cli(["audit", "verify", str(path), "--state-dir", str(state)])
    out, _ = capsys.readouterr()
    assert code == 1
    assert out.splitlines() == [
        f"{path}:1: seq 1: record altered or forged: its hash does not match its content",
    ]


def test_key_from_the_environment(
    state: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "env.log"
    write_events(path, 2).close()
    monkeypatch.setenv(keys.env_name("audit"), base64.b64encode(KEY).decode())
    assert run_cli(["audit", "verify", str(path)]) == 0
    assert capsys.readouterr().out == "OK: 2 records, chain intact\n"


def test_links_only_needs_no_key(state: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run_cli(["audit", "verify", "--links-only", str(state / "audit.log")]) == 0
    out = capsys.readouterr().out
    assert out == "OK: 3 records, chain links intact (content not checked: no key)\n"


def test_unreadable_file_exits_2(state: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = state / "nope.log"
    code = run_cli(["audit", "verify", str(missing), "--state-dir", str(state)])
    out, err = capsys.readouterr()
    assert (code, out) == (2, "")
    assert err == f"phi-relay audit: cannot read {missing}: No such file or directory\n"


def test_directory_without_chains_exits_2(
    tmp_path: Path, state: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # A directory is a set of chains (issue 12: one per replica); one with none is an error.
    empty = tmp_path / "no-chains"
    empty.mkdir()
    code = run_cli(["audit", "verify", str(empty), "--state-dir", str(state)])
    assert code == 2
    assert capsys.readouterr().err == (
        f"phi-relay audit: no audit chains in {empty}: expected files named *.log (a.log, "
        "b.log, with their rotations a.log.1 ...)\n"
    )


def test_missing_key_exits_2_and_creates_none(
    tmp_path: Path, state: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    empty = tmp_path / "empty-state"
    code = run_cli(["audit", "verify", str(state / "audit.log"), "--state-dir", str(empty)])
    assert code == 2
    assert capsys.readouterr().err == (
        f"phi-relay audit: no audit key at {empty}/keys/audit.key: give --state-dir DIR, "
        "set PHI_RELAY_AUDIT_KEY, or use --links-only\n"
    )
    assert not empty.exists()


def test_no_files_and_no_configured_log_is_a_usage_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # Without FILEs the configured audit.file is verified (as serve writes it); none here.
    monkeypatch.chdir(tmp_path)
    assert run_cli(["audit", "verify"]) == 2
    assert "no audit log at state/audit.log (audit.file): name the FILEs" in (
        capsys.readouterr().err
    )
