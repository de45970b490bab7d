"""The lean supervisor (relay/overseer.py) loads nothing of the serving stack, and the
service-log lines it writes itself read as structlog's do (relay.logs)."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest
import structlog

from relay import logs, overseer, slot

HEAVY = ("structlog", "ssl", "_ssl", "asyncio", "sqlite3", "aiohttp", "cryptography", "dataclasses")


def test_the_lean_supervisor_imports_no_code_of_ours_and_nothing_heavy() -> None:
    code = "import sys, relay.overseer; print(' '.join(sorted(sys.modules)))"
    out = subprocess.run(
        [sys.executable, "-S", "-c", f"import sys; sys.path[:0] = {sys.path!r}; {code}"],
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout.split()
    ours = [m for m in out if m.startswith("relay")]
    assert ours == ["relay", "relay.overseer"], ours
    assert not set(out) & set(HEAVY), set(out) & set(HEAVY)


def test_its_ready_line_is_the_workers() -> None:
    assert overseer.READY == slot.READY


@pytest.mark.parametrize("json_lines", [True, False], ids=["json", "console"])
def test_its_log_lines_read_as_structlogs(
    json_lines: bool, capfd: pytest.CaptureFixture[str]
) -> None:
    fields = {"worker": 2, "pid": 41, "exit": "signal SIGKILL", "error": None, "seconds": 0.25}
    saved = structlog.get_config()
    try:  # (its writer holds the captured stderr: later tests must not log to that)
        logs.configure(json=json_lines)
        structlog.get_logger("relay.supervisor").warning("worker died; restarting it", **fields)
        overseer.Log(json_lines)("warning", "worker died; restarting it", **fields)
    finally:
        structlog.configure(**saved)
    theirs, ours = capfd.readouterr().err.splitlines()
    stamp = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z")
    assert stamp.sub("T", ours) == stamp.sub("T", theirs)
    if json_lines:
        assert list(json.loads(ours)) == list(json.loads(theirs))
