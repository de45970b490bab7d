"""The container image's entrypoint, run as the image would run it (no Docker engine here).

The Dockerfile is read, not restated: its ENV, WORKDIR, USER, ENTRYPOINT, CMD and
HEALTHCHECK drive the test. A root laid out like the image (/app with the sources,
/var/lib/phi-relay owned by the numeric USER) gets the dependencies the way the image's
RUN lines install them (hashes required, from requirements.lock), and the ENTRYPOINT runs
as that uid/gid with that environment. Only the listen addresses are overridden, to
loopback, the way `docker run -e` would.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import smtplib
import socket
import ssl
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from email.message import EmailMessage
from pathlib import Path

import pytest
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[2]
SYSTEM_PYTHON = Path("/usr/bin/python3")  # outside /root, so the image's uid can run it


@dataclass(frozen=True)
class Image:
    env: dict[str, str]
    workdir: str
    user: tuple[int, int]
    entrypoint: list[str]
    cmd: list[str]
    healthcheck: list[str]
    text: str


def parse_dockerfile(path: Path) -> Image:
    text = path.read_text()
    joined = text.replace("\\\n", " ")
    env: dict[str, str] = {}
    workdir, user = "/", (0, 0)
    entrypoint: list[str] = []
    cmd: list[str] = []
    health: list[str] = []
    for line in joined.splitlines():
        word, _, rest = line.strip().partition(" ")
        if word == "ENV":
            for item in rest.split():
                key, _, value = item.partition("=")
                env[key] = value
        elif word == "WORKDIR":
            workdir = rest.strip()
        elif word == "USER":
            uid, _, gid = rest.strip().partition(":")
            assert uid.isdigit() and gid.isdigit(), "USER must be numeric uid:gid"
            user = (int(uid), int(gid))
        elif word == "ENTRYPOINT":
            entrypoint = json.loads(rest)
        elif word == "CMD":
            cmd = json.loads(rest)
        elif word == "HEALTHCHECK":
            health = json.loads(rest[rest.index("CMD") + 3 :])
    return Image(env, workdir, user, entrypoint, cmd, health, text)


IMAGE = parse_dockerfile(ROOT / "Dockerfile")
STATE = IMAGE.env["PHI_RELAY_STATE_DIR"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest.fixture(scope="module")
def image_root() -> Iterator[Path]:
    """A root laid out like the image, with the image's dependencies installed."""
    if os.geteuid() != 0:
        pytest.fail("the entrypoint test runs the image's uid, which needs root")
    root = Path(tempfile.mkdtemp(prefix="phi-relay-image-"))
    root.chmod(0o755)
    try:
        app = root / IMAGE.workdir.lstrip("/")
        app.mkdir(parents=True)
        for name in ("requirements.lock", "pyproject.toml", "README.md"):
            shutil.copy(ROOT / name, app / name)
        ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
        shutil.copytree(ROOT / "relay", app / "relay", symlinks=True, ignore=ignore)
        shutil.copytree(ROOT / "policies", app / "policies", ignore=ignore)
        venv = root / "usr-local"  # stands for the image's /usr/local
        run = {"capture_output": True, "text": True, "timeout": 300, "check": False}
        made = subprocess.run([str(SYSTEM_PYTHON), "-m", "venv", str(venv)], **run)  # type: ignore[call-overload]
        assert made.returncode == 0, made.stderr
        pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "-q"]
        # The Dockerfile's two RUN pip lines, in its order.
        for args in (
            ["--require-hashes", "--no-deps", "-r", "requirements.lock"],
            ["--no-deps", "--no-build-isolation", "."],
        ):
            assert f"pip install {' '.join(args)}" in IMAGE.text
            done = subprocess.run([*pip, *args], cwd=app, **run)  # type: ignore[call-overload]
            assert done.returncode == 0, done.stderr[-3000:]
        state = root / STATE.lstrip("/")
        state.mkdir(parents=True)
        os.chown(state, *IMAGE.user)
        state.chmod(0o700)
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


def image_env(root: Path, **overrides: str) -> dict[str, str]:
    """The Dockerfile's ENV with its absolute paths moved under `root`."""
    env = {
        "PATH": f"{root / 'usr-local' / 'bin'}:/usr/bin:/bin",
        "HOME": str(root / STATE.lstrip("/")),
        "LANG": "C.UTF-8",
    }
    for key, value in IMAGE.env.items():
        env[key] = str(root / value.lstrip("/")) if value.startswith("/") else value
    env.update(overrides)
    return env


def as_image_user(
    root: Path, argv: list[str], env: dict[str, str], **kw: object
) -> subprocess.Popen[bytes]:
    uid, gid = IMAGE.user
    return subprocess.Popen(  # type: ignore[call-overload, no-any-return]
        argv,
        cwd=root / IMAGE.workdir.lstrip("/"),
        env=env,
        user=uid,
        group=gid,
        extra_groups=[],
        **kw,
    )


def test_requirements_lock_pins_every_dependency_with_hashes() -> None:
    import tomllib

    lock = (ROOT / "requirements.lock").read_text()
    pinned: dict[str, str] = {}
    for line in lock.splitlines():
        if "==" in line and not line.startswith((" ", "#")):
            name, _, version = line.split(" ")[0].partition("==")
            pinned[name.lower().replace("_", "-")] = version
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    for dep in deps:
        req = Requirement(dep)
        name = req.name.lower().replace("_", "-")
        assert name in pinned, f"{name} is not in requirements.lock: re-run pip-compile"
        assert req.specifier.contains(pinned[name]), f"{name}=={pinned[name]} breaks {req}"
    assert {"setuptools", "wheel"} <= set(pinned), "the image builds with locked tools"
    blocks = lock.split("\n\n")
    assert all("--hash=sha256:" in b for b in blocks if "==" in b)


def test_dockerfile_is_pinned_and_numeric() -> None:
    base = next(ln for ln in IMAGE.text.splitlines() if ln.startswith("FROM "))
    assert "@sha256:" in base and len(base.split("@sha256:")[1]) == 64
    assert IMAGE.user[0] >= 10000 and IMAGE.user[0] != 0
    assert IMAGE.healthcheck == ["phi-relay", "healthcheck"]


def test_entrypoint_starts_as_the_image_user_and_relays(image_root: Path) -> None:
    root = image_root
    http_port = free_port()
    ready = root / STATE.lstrip("/") / "ready"
    env = image_env(
        root,
        PHI_RELAY_SERVER_LISTEN="127.0.0.1:0",
        PHI_RELAY_HTTP_LISTEN=f"127.0.0.1:{http_port}",
        PHI_RELAY_READY_FILE=str(ready),
    )
    log = root / "entrypoint.log"
    with log.open("wb") as out:
        proc = as_image_user(root, IMAGE.entrypoint + IMAGE.cmd, env, stdout=out, stderr=out)
    try:
        deadline = time.monotonic() + 30
        while not (ready.exists() and ready.read_text().strip()):
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"entrypoint did not start: {log.read_text()[-3000:]}")
            time.sleep(0.05)
        smtp_port = int(ready.read_text().split()[0])
        state = root / STATE.lstrip("/")
        ca = state / "certs" / "ca.crt"  # made by the entrypoint in the state volume
        ctx = ssl.create_default_context(cafile=str(ca))
        msg = EmailMessage()
        msg["From"], msg["To"] = "app@clinic.example", "patient@example.org"
        msg["Subject"] = "Our new Saturday hours"
        msg.set_content("Synthetic body.\n")
        with smtplib.SMTP("localhost", smtp_port, timeout=15) as client:
            client.starttls(context=ctx)
            assert client.send_message(msg) == {}
        # Everything the relay wrote belongs to the image's uid; the key files stay private.
        for path in state.rglob("*"):
            assert (path.stat().st_uid, path.stat().st_gid) == IMAGE.user, path
        assert (state / "keys" / "audit.key").stat().st_mode & 0o077 == 0
        assert (state / "audit.log").is_file()
        lines = [json.loads(ln) for ln in log.read_text().splitlines() if ln.startswith("{")]
        assert any(ln.get("event") == "phi-relay listening" for ln in lines)  # --log-json
        # HEALTHCHECK: the port comes from the configuration, not a constant.
        health = as_image_user(root, IMAGE.healthcheck, env, stdout=subprocess.PIPE)
        assert health.wait(timeout=30) == 0
        assert health.stdout is not None
        assert f"127.0.0.1:{http_port}/healthz" in health.stdout.read().decode()
        health.stdout.close()
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=30)
    assert code == 0, log.read_text()[-3000:]
    down = as_image_user(root, IMAGE.healthcheck, env, stderr=subprocess.PIPE)
    assert down.wait(timeout=30) == 1
    assert down.stderr is not None
    assert b"unhealthy" in down.stderr.read()
    down.stderr.close()
