"""The commands as a user runs them: real processes, exit codes, one-line errors, no tracebacks."""

from __future__ import annotations

import os
import signal
import smtplib
import ssl
import subprocess
import sys
import time
from email.message import EmailMessage
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PHI_RELAY = [sys.executable, "-m", "relay"]


def run(
    args: list[str], cwd: Path, stdin: str = "", env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        PHI_RELAY + args,
        cwd=cwd,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **(env or {})},
        check=False,
    )


def eml(path: Path, subject: str, category: str | None = None) -> Path:
    msg = EmailMessage()
    msg["From"] = "app@clinic.example"
    msg["To"] = "patient@example.org"
    msg["Subject"] = subject
    if category:
        msg["X-PHI-Category"] = category
    msg.set_content("Body.\n")
    path.write_bytes(bytes(msg))
    return path


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    (tmp_path / "policies").mkdir()
    for f in (ROOT / "policies").iterdir():
        (tmp_path / "policies" / f.name).write_bytes(f.read_bytes())
    return tmp_path


def test_check_exit_codes(workdir: Path) -> None:
    ok = run(["check", str(eml(workdir / "ok.eml", "Our new Saturday hours"))], workdir)
    assert ok.returncode == 0, ok.stderr
    assert "decision: accept\t1 of 1 recipient(s)" in ok.stdout
    bad = run(["check", str(eml(workdir / "bad.eml", "Your HIV test results are ready"))], workdir)
    assert bad.returncode == 1
    assert "subject-phi\treject\tphi.subject" in bad.stdout
    assert (
        "decision: reject\t550 5.7.1 Subject line contains protected health information"
        in bad.stdout
    )
    missing = run(["check", str(workdir / "nope.eml")], workdir)
    assert missing.returncode == 2
    assert "cannot be read" in missing.stderr and "Traceback" not in missing.stderr


def test_scan_subjects(workdir: Path) -> None:
    out = run(
        ["scan-subjects", "-"], workdir, stdin="5 tips to manage diabetes\nMRN 4451234 results\n"
    )
    assert out.returncode == 1  # one subject is PHI
    lines = out.stdout.splitlines()
    assert lines[0] == "clean\t\t"  # verdict, kinds, rule ids
    assert lines[1].startswith("phi\t") and "mrn" in lines[1].split("\t")[1].split(",")


def test_policy_check_names_file_and_key(workdir: Path) -> None:
    good = run(["policy", "check", "policies/default.toml"], workdir)
    assert good.returncode == 0 and "OK" in good.stdout
    bad = workdir / "policies" / "bad.toml"
    bad.write_text(
        'pipeline = ["require-tls", "subject-phi"]\n[policy.subject-phi.actions]\nmrn = "shout"\n'
    )
    out = run(["policy", "check", str(bad)], workdir)
    assert out.returncode == 1
    assert f"{bad}: policy.subject-phi.actions.mrn:" in out.stdout
    assert "Traceback" not in out.stdout + out.stderr


def test_user_add_and_certs_init(workdir: Path) -> None:
    users = workdir / "users"
    out = run(
        ["user", "add", "--users-file", str(users), "clinic-app", "--password-stdin"],
        workdir,
        stdin="a long passphrase here\n",
    )
    assert out.returncode == 0, out.stderr
    text = users.read_text()
    assert text.startswith("clinic-app:scrypt$") and "a long passphrase here" not in text
    assert oct(users.stat().st_mode & 0o777) == "0o600"
    short = run(
        ["user", "add", "--users-file", str(users), "x", "--password-stdin"],
        workdir,
        stdin="short\n",
    )
    assert short.returncode == 2 and "at least 12 characters" in short.stderr
    certs = run(["certs", "init", "--dir", "c"], workdir)
    assert certs.returncode == 0
    assert (workdir / "c" / "server.key").stat().st_mode & 0o077 == 0


def test_serve_bad_flag_value_is_one_line(workdir: Path) -> None:
    out = run(["serve", "--listen", "nowhere", "--state-dir", "s"], workdir)
    assert out.returncode == 2
    assert "flag --listen: server.listen: expected HOST:PORT" in out.stderr
    assert "Traceback" not in out.stderr


def test_serve_default_works_and_stops_on_sigterm(workdir: Path) -> None:
    """The README's `phi-relay serve` on a fresh directory: certs made, capture upstream, TLS."""
    ready = workdir / "ready"
    env = {**os.environ, "PHI_RELAY_READY_FILE": str(ready)}
    proc = subprocess.Popen(
        [*PHI_RELAY, "serve", "--listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0"],
        cwd=workdir,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        for _ in range(300):
            if ready.exists() and ready.read_text().strip():
                break
            assert proc.poll() is None, proc.communicate()
            time.sleep(0.05)
        smtp_port = int(ready.read_text().split()[0])
        ctx = ssl.create_default_context(cafile=str(workdir / "certs" / "ca.crt"))
        with smtplib.SMTP("127.0.0.1", smtp_port, timeout=10) as client:
            client.starttls(context=ctx)
            msg = EmailMessage()
            msg["From"] = "app@clinic.example"
            msg["To"] = "patient@example.org"
            msg["Subject"] = "Our new Saturday hours"
            msg.set_content("Open 9 to 1.\n")
            client.send_message(msg)
        captured = list((workdir / "state" / "captured").glob("*.eml"))
        assert len(captured) == 1
        assert b"Our new Saturday hours" in captured[0].read_bytes()
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert "NO UPSTREAM CONFIGURED" in err
    assert "generated development certificates" in out
