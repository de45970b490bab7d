"""The state directory as an operator meets it: one writer, keys never silently remade,
private file modes, and every bad state refused at start with one line, never a traceback.

Each case runs the real `phi-relay serve` (a subprocess) on a state directory that a real
earlier run left behind, then damaged the way disks, backups and operators do.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import stat
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.adversarial.service import PHI_RELAY, Service, start_service
from tests.support.pki import Pki
from tests.support.rawsmtp import RawSmtp
from tests.support.relay import ROOT
from tests.support.upstream import Sink

SENDER = "app@clinic.example"
MESSAGE = (
    b"From: app@clinic.example\r\nTo: someone@example.org\r\nSubject: Parking update\r\n"
    b"Message-ID: <state-1@clinic.example>\r\n\r\nThe lot on Elm Street closes on Friday.\r\n"
)


def serve_args(home: Path, pki: Pki | None, sink: Sink | None, *extra: str) -> list[str]:
    args = ["serve", "--listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0"]
    if pki is not None:
        args += ["--tls-cert", str(pki.cert), "--tls-key", str(pki.key)]
    if sink is not None and pki is not None:
        args += ["--upstream", f"localhost:{sink.port}", "--upstream-ca", str(pki.ca)]
    args += [
        "--state-dir",
        str(home / "state"),
        "--policy-file",
        str(ROOT / "policies" / "default.toml"),
        "--audit-log",
        str(home / "state" / "audit.log"),
        *extra,
    ]
    return args


def clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("PHI_RELAY_")}


async def refused(home: Path, args: list[str]) -> str:
    """Run serve, expect it to refuse to start: exit 2 and exactly one line on stderr."""
    proc = await asyncio.create_subprocess_exec(
        str(PHI_RELAY),
        *args,
        cwd=home,
        env=clean_env(),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), 60)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise AssertionError("serve started instead of refusing") from None
    text = err.decode(errors="replace")
    assert "Traceback" not in text, text
    # structlog lines (JSON, one per event) may precede the refusal; the refusal is last.
    lines = [ln for ln in text.splitlines() if not ln.startswith("{")]
    assert proc.returncode == 2, (proc.returncode, text, out)
    assert len(lines) == 1, text
    assert lines[0].startswith("phi-relay serve: "), lines
    return lines[0]


async def deliver_one(port: int, pki: Pki) -> str:
    conn = await RawSmtp.ready(port, pki.client_context())
    assert await conn.cmd(f"MAIL FROM:<{SENDER}>") == "250 2.1.0 Sender OK"
    assert await conn.cmd("RCPT TO:<someone@example.org>") == "250 2.1.5 Recipient OK"
    assert (await conn.cmd("DATA")).startswith("354")
    await conn.send(MESSAGE + b".\r\n")
    answer = await conn.reply()
    await conn.cmd("QUIT")
    await conn.close()
    return answer


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# --- 15: one writer per state directory and audit log ------------------------------------


async def test_second_serve_on_the_same_state_refuses_and_a_crash_frees_it(
    tmp_path: Path, pki: Pki, sink: Sink
) -> None:
    first_home, second_home = tmp_path / "a", tmp_path / "b"
    first_home.mkdir()
    second_home.mkdir()
    first = await start_service(first_home, pki, sink)
    try:
        state = first_home / "state"
        line = await refused(second_home, serve_args(first_home, pki, sink))
        assert line == (
            f"phi-relay serve: another phi-relay (pid {first.proc.pid}) is already using "
            f"state directory {state}; stop it, or give this one its own --state-dir and "
            "--audit-log"
        )
        # Another state directory, but the same audit log: still one writer per chain.
        shared_log = first_home / "state" / "audit.log"
        line = await refused(
            second_home, serve_args(second_home, pki, sink, "--audit-log", str(shared_log))
        )
        assert f"is already using audit log {shared_log};" in line
        # The refused starts wrote nothing: the running relay still delivers.
        assert (await deliver_one(first.smtp_port, pki)).startswith("250 ")
    finally:
        # A crash (no clean exit) must not leave the state locked for ever.
        first.proc.send_signal(signal.SIGKILL)
        await first.proc.wait()
    again = await start_service_in(first_home, pki, sink)
    try:
        assert (await deliver_one(again.smtp_port, pki)).startswith("250 ")
    finally:
        assert await again.stop() == 0


async def start_service_in(home: Path, pki: Pki, sink: Sink) -> Service:
    """start_service for a home that already has its policies copied."""
    fresh = home.parent / (home.name + "-again")
    fresh.mkdir()
    return await start_service(
        fresh,
        pki,
        sink,
        "--state-dir",
        str(home / "state"),
        "--audit-log",
        str(home / "state" / "audit.log"),
    )


# --- 17: keys only from an explicit init; private modes ----------------------------------


async def test_first_start_makes_private_state_and_keys(
    tmp_path: Path, pki: Pki, sink: Sink
) -> None:
    svc = await start_service(tmp_path, pki, sink)
    try:
        assert (await deliver_one(svc.smtp_port, pki)).startswith("250 ")
    finally:
        assert await svc.stop() == 0
    state = tmp_path / "state"
    assert mode(state) == 0o700
    assert mode(state / "keys") == 0o700
    for name in ("audit", "dedup", "unsubscribe"):
        assert mode(state / "keys" / f"{name}.key") == 0o600
    for name in ("dedup.db", "consent.db", "audit.log"):
        assert mode(state / name) == 0o600, name


async def test_captured_mail_and_sqlite_files_are_private(tmp_path: Path, pki: Pki) -> None:
    home = tmp_path / "home"
    home.mkdir()
    shutil.copytree(ROOT / "policies", home / "policies")
    ready = home / "ready"
    env = clean_env() | {"PHI_RELAY_READY_FILE": str(ready)}
    args = serve_args(home, pki, None)
    proc = await asyncio.create_subprocess_exec(
        str(PHI_RELAY), *args, cwd=home, env=env, stderr=asyncio.subprocess.DEVNULL
    )
    try:
        for _ in range(600):
            if ready.exists() and ready.read_text().endswith("\n"):
                break
            assert proc.returncode is None
            await asyncio.sleep(0.05)
        port = int(ready.read_text().split()[0])
        assert (await deliver_one(port, pki)).startswith("250 ")
    finally:
        proc.send_signal(signal.SIGTERM)
        await asyncio.wait_for(proc.wait(), 40)
    state = home / "state"
    captured = [p for p in (state / "captured").iterdir()]
    assert captured
    assert mode(state / "captured") == 0o700
    for path in [*captured, *state.glob("*.db*")]:
        assert mode(path) == 0o600, path


# --- 17 and 21: bad states refuse to start, each with its own one-line message ------------


@pytest.fixture(scope="module")
def used_state(tmp_path_factory: pytest.TempPathFactory, pki: Pki) -> Path:
    """A state directory left by a real run that relayed one message."""
    home = tmp_path_factory.mktemp("used")

    async def run() -> None:
        sink = await Sink(pki.server_context()).start()
        try:
            svc = await start_service(home, pki, sink)
            try:
                assert (await deliver_one(svc.smtp_port, pki)).startswith("250 ")
            finally:
                assert await svc.stop() == 0
        finally:
            await sink.stop()

    asyncio.run(run())
    assert len(sink_lines := (home / "state" / "audit.log").read_text().splitlines()) >= 3, (
        sink_lines
    )
    return home / "state"


def _garbage(name: str) -> Callable[[Path], str]:
    def damage(state: Path) -> str:
        (state / name).write_bytes(b"this is not a database" * 100)
        for side in ("-wal", "-shm"):
            (state / f"{name}{side}").unlink(missing_ok=True)
        return str(state / name)

    return damage


def _unlink(name: str) -> Callable[[Path], str]:
    def damage(state: Path) -> str:
        (state / "keys" / f"{name}.key").unlink()
        return str(state / "keys" / f"{name}.key")

    return damage


def _chmod(name: str, value: int) -> Callable[[Path], str]:
    def damage(state: Path) -> str:
        (state / "keys" / f"{name}.key").chmod(value)
        return str(state / "keys" / f"{name}.key")

    return damage


def _write_key(name: str, text: str) -> Callable[[Path], str]:
    def damage(state: Path) -> str:
        (state / "keys" / f"{name}.key").write_text(text)
        return str(state / "keys" / f"{name}.key")

    return damage


BAD_STATES: list[tuple[str, Callable[[Path], str], str]] = [
    (
        "missing-audit-key",
        _unlink("audit"),
        "phi-relay serve: missing key {path} but {state} already holds state (",
    ),
    (
        "missing-unsubscribe-key",
        _unlink("unsubscribe"),
        "phi-relay serve: missing key {path} but {state} already holds state (",
    ),
    (
        "empty-key",
        _write_key("dedup", ""),
        "phi-relay serve: key: {path}: empty; restore it from backup",
    ),
    (
        "key-not-base64",
        _write_key("audit", "not a key!\n"),
        "phi-relay serve: key: {path}: expected base64 of 32 random bytes",
    ),
    (
        "world-readable-key",
        _chmod("audit", 0o644),
        "phi-relay serve: key: {path}: readable by group or others (mode 0644); "
        "run chmod 600 {path}",
    ),
    (
        "group-readable-key",
        _chmod("unsubscribe", 0o640),
        "phi-relay serve: key: {path}: readable by group or others (mode 0640); "
        "run chmod 600 {path}",
    ),
    (
        "corrupt-dedup-db",
        _garbage("dedup.db"),
        "phi-relay serve: {path}: not a readable SQLite database (file is not a database); ",
    ),
    (
        "corrupt-consent-db",
        _garbage("consent.db"),
        "phi-relay serve: consent_store: ",
    ),
]


@pytest.mark.parametrize(
    ("damage", "expected"), [c[1:] for c in BAD_STATES], ids=[c[0] for c in BAD_STATES]
)
async def test_bad_state_refuses_to_start_with_one_line(
    tmp_path: Path,
    pki: Pki,
    sink: Sink,
    used_state: Path,
    damage: Callable[[Path], str],
    expected: str,
) -> None:
    shutil.copytree(used_state, tmp_path / "state")
    for lock in (tmp_path / "state").glob("*.lock"):
        lock.unlink()
    path = damage(tmp_path / "state")
    before = {p: p.read_bytes() for p in (tmp_path / "state").rglob("*") if p.is_file()}
    line = await refused(tmp_path, serve_args(tmp_path, pki, sink))
    assert line.startswith(expected.format(path=path, state=tmp_path / "state")), line
    # Refusing changed nothing: no key made, no store rebuilt, no audit record written.
    after = {p: p.read_bytes() for p in (tmp_path / "state").rglob("*") if p.is_file()}
    for lock in (tmp_path / "state").glob("*.lock"):
        after.pop(lock, None)
    assert after == before


async def test_unwritable_certificate_folder_is_one_line(tmp_path: Path) -> None:
    # Default certificates are generated into ./certs; here that name is taken by a file.
    (tmp_path / "certs").write_text("not a folder")
    line = await refused(tmp_path, serve_args(tmp_path, None, None))
    assert line.startswith("phi-relay serve: cannot create development certificates in certs: "), (
        line
    )


async def test_keys_init_is_the_explicit_way_back(
    tmp_path: Path, pki: Pki, sink: Sink, used_state: Path
) -> None:
    state = tmp_path / "state"
    shutil.copytree(used_state, state)
    (state / "relay.lock").unlink(missing_ok=True)
    kept = (state / "keys" / "audit.key").read_bytes()
    (state / "keys" / "unsubscribe.key").unlink()
    await refused(tmp_path, serve_args(tmp_path, pki, sink))
    proc = await asyncio.create_subprocess_exec(
        str(PHI_RELAY),
        "keys",
        "init",
        "--state-dir",
        str(state),
        env=clean_env(),
        stdout=asyncio.subprocess.PIPE,
    )
    out, _ = await proc.communicate()
    assert proc.returncode == 0
    assert (
        out.decode()
        == f"created {state / 'keys' / 'unsubscribe.key'}\nkept existing: audit, dedup\n"
    )
    assert (state / "keys" / "audit.key").read_bytes() == kept
    assert mode(state / "keys" / "unsubscribe.key") == 0o600
    home = tmp_path / "run"
    home.mkdir()
    svc = await start_service(
        home, pki, sink, "--state-dir", str(state), "--audit-log", str(state / "audit.log")
    )
    try:
        assert (await deliver_one(svc.smtp_port, pki)).startswith("250 ")
    finally:
        assert await svc.stop() == 0


assert sys.platform != "win32"  # flock and file modes are POSIX


BAD_CONFIGS = sorted((Path(__file__).parent / "bad_configs").glob("*.toml"))
# The first line of each file: "# expect: <how serve's one line must start>".
EXPECTED = {p: p.read_text().splitlines()[0] for p in BAD_CONFIGS}


@pytest.mark.parametrize("config", BAD_CONFIGS, ids=[p.stem for p in BAD_CONFIGS])
async def test_bad_configuration_refuses_to_start_with_one_line(
    tmp_path: Path, pki: Pki, config: Path
) -> None:
    first = EXPECTED[config]
    assert first.startswith("# expect: "), config
    (tmp_path / "certs").mkdir()
    shutil.copy(pki.cert, tmp_path / "certs" / "server.crt")
    shutil.copy(pki.key, tmp_path / "certs" / "server.key")
    shutil.copy(config, tmp_path / config.name)
    line = await refused(tmp_path, ["serve", "--config", config.name])
    expected = first.removeprefix("# expect: ").format(config=config.name)
    assert line.startswith(expected), line
    # A refused start leaves no state behind to be mistaken for a history later.
    assert not (tmp_path / "state" / "keys").exists()
