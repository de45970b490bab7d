"""SIGTERM while `serve --workers 2` is still starting: a stop, not a failed start.

An orchestrator stops a relay whenever it likes, start-up included (a rollout cancelled,
`docker stop` right after `docker run`). Wherever the SIGTERM falls among the
supervisor's start-up steps (worker 1 listening, worker 2 starting, worker 2 listening),
the relay must stop as asked: exit 0, no "ended before it was listening" error, no
worker restarted, no process left behind, and the state directory free for the next
start.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from pathlib import Path

import pytest

from tests.adversarial.service import PHI_RELAY
from tests.support.pki import Pki

ROOT = Path(__file__).resolve().parents[2]

# Start-up moments, each the log line after which the SIGTERM is sent: (event, worker).
MOMENTS = {
    "worker-1-listening": ("phi-relay listening", 1),
    "worker-2-http": ("http.listening", 2),
    "worker-2-listening": ("phi-relay listening", 2),
}


def serve_args(home: Path, pki: Pki) -> list[str]:
    return [
        str(PHI_RELAY), "serve", "--workers", "2",
        "--listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0",
        "--tls-cert", str(pki.cert), "--tls-key", str(pki.key),
        "--state-dir", str(home / "state"),
        "--policy-file", str(ROOT / "policies" / "default.toml"),
        "--audit-log", str(home / "state" / "audit.log"),
    ]  # fmt: skip


def events(text: str) -> list[dict[str, object]]:
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.mark.parametrize("moment", list(MOMENTS))
async def test_sigterm_during_start_up_stops_cleanly(tmp_path: Path, pki: Pki, moment: str) -> None:
    event, worker = MOMENTS[moment]
    err_path = tmp_path / "stderr"
    with err_path.open("wb") as err:
        proc = await asyncio.create_subprocess_exec(
            *serve_args(tmp_path, pki),
            cwd=tmp_path,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=err,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 60
        while not any(
            e.get("event") == event and e.get("worker") == worker
            for e in events(err_path.read_text(errors="replace"))
        ):
            assert proc.returncode is None, err_path.read_text()
            assert time.monotonic() < deadline, err_path.read_text()
            await asyncio.sleep(0.002)
        proc.send_signal(signal.SIGTERM)
        try:
            code = await asyncio.wait_for(proc.wait(), 30)
        except TimeoutError:
            raise AssertionError(f"SIGTERM did not stop it\n{err_path.read_text()}") from None
    finally:
        if proc.returncode is None:
            os.killpg(proc.pid, signal.SIGKILL)
            await proc.wait()
    text = err_path.read_text(errors="replace")
    assert code == 0, text
    assert "before it was listening" not in text, text
    assert "Traceback" not in text, text
    assert not any(e.get("event") == "worker died; restarting it" for e in events(text)), text
    deadline = time.monotonic() + 10
    while group_alive(proc.pid):
        assert time.monotonic() < deadline, f"a process of the stopped relay is left\n{text}"
        await asyncio.sleep(0.05)
    # The lock is free: a relay on the same state starts (and stops) at once.
    again = await asyncio.create_subprocess_exec(
        *serve_args(tmp_path, pki), "--workers", "1",
        cwd=tmp_path, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "PHI_RELAY_READY_FILE": str(tmp_path / "ready")},
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while not (tmp_path / "ready").exists():
            assert again.returncode is None, await again.stderr.read()  # type: ignore[union-attr]
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)
    finally:
        again.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(again.wait(), 60) == 0


def loaded(pid: int, name: str) -> bool:
    try:
        return name in Path(f"/proc/{pid}/maps").read_text()
    except OSError:
        return False


@pytest.mark.parametrize("workers", [1, 2])
async def test_sigterm_before_serve_set_its_handlers_is_a_stop(
    tmp_path: Path, pki: Pki, workers: int
) -> None:
    """The SIGTERM comes once the CLI loads its commands (the `_ssl` extension is mapped:
    relay.cli alone does not load it), before the supervisor's or the relay's handlers
    are set (after the configuration is read and the serving stack preloaded). It used
    to end the process by signal midway through the set-up, and was dropped for a PID 1
    (a container's entrypoint), which then served on until its SIGKILL."""
    err_path = tmp_path / "stderr"
    with err_path.open("wb") as err:
        proc = await asyncio.create_subprocess_exec(
            *serve_args(tmp_path, pki), "--workers", str(workers),
            cwd=tmp_path, stdout=asyncio.subprocess.DEVNULL, stderr=err,
            start_new_session=True,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while not loaded(proc.pid, "_ssl.cpython"):
            assert proc.returncode is None, err_path.read_text()
            assert time.monotonic() < deadline, "the CLI never loaded ssl"
            await asyncio.sleep(0.001)
        proc.send_signal(signal.SIGTERM)
        try:
            code = await asyncio.wait_for(proc.wait(), 30)
        except TimeoutError:
            raise AssertionError(f"SIGTERM did not stop it\n{err_path.read_text()}") from None
    finally:
        if proc.returncode is None:
            os.killpg(proc.pid, signal.SIGKILL)
            await proc.wait()
    text = err_path.read_text(errors="replace")
    assert code == 0, text
    assert "Traceback" not in text, text
    deadline = time.monotonic() + 10
    while group_alive(proc.pid):
        assert time.monotonic() < deadline, f"a process of the stopped relay is left\n{text}"
        await asyncio.sleep(0.05)
