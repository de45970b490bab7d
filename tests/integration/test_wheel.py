"""Installs anywhere: the built wheel in a fresh venv, `phi-relay serve` in an empty directory.

The wheel is built once per test session from a copy of the tracked sources (so a stale
build/ folder cannot hide a missing package-data entry) and installed into a new venv
outside the repository; every command then runs from an empty temporary directory.
"""

from __future__ import annotations

import os
import shutil
import signal
import smtplib
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from email.message import EmailMessage
from pathlib import Path

import pytest
from cryptography import x509

import relay

ROOT = Path(__file__).resolve().parents[2]


def clean_env(**extra: str) -> dict[str, str]:
    """The caller's environment without anything that could point back into the repository."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("PHI_RELAY_") and k not in {"PYTHONPATH", "VIRTUAL_ENV"}
    }
    env.update(extra)
    return env


@pytest.fixture(scope="session")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """bin/ of a fresh venv with the wheel (and its dependencies) installed."""
    base = tmp_path_factory.mktemp("wheel")
    src = base / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    shutil.copytree(
        ROOT / "relay", src / "relay", ignore=shutil.ignore_patterns("__pycache__", "*.pyc")
    )
    dist = base / "dist"
    quiet = {"capture_output": True, "text": True, "timeout": 300, "check": False}
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(dist), str(src)],
        **quiet,  # type: ignore[call-overload]
    )
    assert built.returncode == 0, built.stderr[-3000:]
    (wheel,) = dist.glob("phi_relay-*.whl")
    venv = base / "venv"
    made = subprocess.run([sys.executable, "-m", "venv", str(venv)], **quiet)  # type: ignore[call-overload]
    assert made.returncode == 0, made.stderr
    pip = subprocess.run(
        [str(venv / "bin" / "python"), "-m", "pip", "install", "-q", str(wheel)],
        **quiet,  # type: ignore[call-overload]
    )
    assert pip.returncode == 0, pip.stderr[-3000:]
    return venv / "bin"


def phi_relay(bin_dir: Path, args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(bin_dir / "phi-relay"), *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        env=clean_env(),
        check=False,
    )


@pytest.fixture
def served(installed: Path, tmp_path: Path) -> Iterator[tuple[Path, int]]:
    """`phi-relay serve` from the wheel, in an empty directory, on free loopback ports."""
    home = tmp_path / "empty"
    home.mkdir()
    ready = tmp_path / "ready"
    env = clean_env(
        PHI_RELAY_SERVER_LISTEN="127.0.0.1:0",
        PHI_RELAY_HTTP_LISTEN="127.0.0.1:0",
        PHI_RELAY_READY_FILE=str(ready),
    )
    log = tmp_path / "serve.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [str(installed / "phi-relay"), "serve"], cwd=home, env=env, stdout=out, stderr=out
        )
    try:
        deadline = time.monotonic() + 30
        while not ready.exists() or not ready.read_text().strip():
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                pytest.fail(f"serve did not start: {log.read_text()[-2000:]}")
            time.sleep(0.05)
        yield home, int(ready.read_text().split()[0])
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            code = proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
        assert code == 0, log.read_text()[-2000:]


def message(subject: str) -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = "app@clinic.example"
    msg["To"] = "patient@example.org"
    msg["Subject"] = subject
    msg.set_content("Synthetic test body.\n")
    return msg


def test_wheel_serve_in_an_empty_directory_relays_over_starttls(
    served: tuple[Path, int],
) -> None:
    home, port = served
    ca = home / "certs" / "ca.crt"
    assert ca.is_file(), "development certificates are made in the working directory"
    ctx = ssl.create_default_context(cafile=str(ca))
    # "localhost" by name: the certificate must carry DNS SANs, not only IP SANs.
    with smtplib.SMTP("localhost", port, timeout=15) as client:
        client.starttls(context=ctx)
        assert client.send_message(message("Our new Saturday hours")) == {}
        with pytest.raises(smtplib.SMTPDataError) as refused:
            client.send_message(message("MRN 4451234 lab results"))
    assert refused.value.smtp_code == 550
    assert refused.value.smtp_error.startswith(b"5.7.1 Subject line contains protected health")
    captured = [p for p in (home / "state" / "captured").rglob("*") if p.is_file()]
    assert len(captured) == 1
    assert b"Our new Saturday hours" in captured[0].read_bytes()


def test_development_certificate_names_this_host(served: tuple[Path, int]) -> None:
    home, _ = served
    pem = (home / "certs" / "server.crt").read_bytes()
    leaf = x509.load_pem_x509_certificates(pem)[0]
    sans = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    dns = sans.get_values_for_type(x509.DNSName)
    assert "localhost" in dns
    assert socket.gethostname().lower() in dns
    assert "phi-relay.localdomain" in dns
    assert {str(ip) for ip in sans.get_values_for_type(x509.IPAddress)} == {"127.0.0.1", "::1"}


def test_wheel_version_and_init(installed: Path, tmp_path: Path) -> None:
    version = phi_relay(installed, ["--version"], tmp_path)
    assert version.returncode == 0
    assert version.stdout.strip() == f"phi-relay {relay.__version__}"
    made = phi_relay(installed, ["init", "site"], tmp_path)
    assert made.returncode == 0, made.stderr
    site = tmp_path / "site"
    assert sorted(p.name for p in (site / "policies").iterdir()) == [
        "default.toml",
        "footer.html",
        "footer.txt",
    ]
    checked = phi_relay(installed, ["policy", "check", str(site / "policies/default.toml")], site)
    assert checked.returncode == 0, checked.stdout
    again = phi_relay(installed, ["init", "site"], tmp_path)
    assert again.returncode == 2
    assert "already exists; use --force" in again.stderr and "Traceback" not in again.stderr


def test_init_then_serve_from_any_directory_keeps_everything_in_the_init_folder(
    installed: Path, tmp_path: Path
) -> None:
    """README "Install anywhere": `init DIR`, then `serve --config DIR/phi-relay.toml` run
    from elsewhere (systemd starts services in /): certificates, keys and state all live
    in DIR, so the CA clients trust does not change with the working directory."""
    made = phi_relay(installed, ["init", "site"], tmp_path)
    assert made.returncode == 0, made.stderr
    site = tmp_path / "site"
    assert f"wrote {site / 'certs' / 'server.crt'}" in made.stdout
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    ready = tmp_path / "ready"
    env = clean_env(
        PHI_RELAY_SERVER_LISTEN="127.0.0.1:0",
        PHI_RELAY_HTTP_LISTEN="127.0.0.1:0",
        PHI_RELAY_READY_FILE=str(ready),
    )
    config = str(site / "phi-relay.toml")
    log = tmp_path / "serve.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [str(installed / "phi-relay"), "serve", "--workers", "1", "--config", config],
            cwd=elsewhere,
            env=env,
            stdout=out,
            stderr=out,
        )
    try:
        deadline = time.monotonic() + 30
        while not ready.exists() or not ready.read_text().strip():
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                pytest.fail(f"serve did not start: {log.read_text()[-2000:]}")
            time.sleep(0.05)
        port = int(ready.read_text().split()[0])
        ctx = ssl.create_default_context(cafile=str(site / "certs" / "ca.crt"))
        with smtplib.SMTP("localhost", port, timeout=15) as client:
            client.starttls(context=ctx)
            assert client.send_message(message("Our new Saturday hours")) == {}
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=20)
    assert code == 0, log.read_text()[-2000:]
    assert list(elsewhere.iterdir()) == [], "serve wrote into its working directory"
    assert (site / "state" / "keys" / "audit.key").is_file()
    assert len(list((site / "state" / "captured").rglob("*.eml"))) == 1
    again = phi_relay(installed, ["init", "site", "--force"], tmp_path)
    assert again.returncode == 0, again.stderr
    # The CA clients were given to trust is not replaced by --force.
    assert f"kept {site / 'certs' / 'server.crt'}" in again.stdout
