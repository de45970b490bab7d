"""Admin commands find the state `serve` uses: --config, PHI_RELAY_CONFIG, PHI_RELAY_STATE_DIR.

The class of failure: in a container (config by variables, state in a volume) an admin
command wrote to ./state while `serve` read the volume. Each command here runs from an
empty working directory with one configuration source, and `check` (which loads its
configuration exactly as `serve` does) must then see what the command wrote.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from email.message import EmailMessage
from pathlib import Path

import pytest

from relay import keys
from relay.audit.log import AuditLog
from relay.config_doc import variables
from relay.users import check_password

PHI_RELAY = [sys.executable, "-m", "relay"]
ROOT = Path(__file__).resolve().parents[2]
SOURCES = ["flag --config", "PHI_RELAY_CONFIG", "PHI_RELAY_STATE_DIR"]


def run(
    args: list[str], cwd: Path, env: dict[str, str], stdin: str = ""
) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("PHI_RELAY_")}
    return subprocess.run(
        PHI_RELAY + args,
        cwd=cwd,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        env={**base, "PYTHONPATH": str(ROOT), **env},
        check=False,
    )


class Site:
    """A state volume at `home/volume`, configured one way, used from an unrelated `cwd`."""

    def __init__(self, tmp: Path, source: str) -> None:
        self.volume = tmp / "volume"
        self.volume.mkdir()  # a mounted volume exists before any command runs
        self.cwd = tmp / "elsewhere"
        self.cwd.mkdir()
        self.users = self.volume / "users"
        self.audit = self.volume / "audit.log"
        cfg = tmp / "relay.toml"
        cfg.write_text(
            f'state_dir = "{self.volume}"\n'
            f'[server]\nusers_file = "{self.users}"\n'
            f'[audit]\nfile = "{self.audit}"\n'
        )
        self.flags: list[str] = []
        self.env: dict[str, str] = {}
        if source == "flag --config":
            self.flags = ["--config", str(cfg)]
        elif source == "PHI_RELAY_CONFIG":
            self.env = {"PHI_RELAY_CONFIG": str(cfg)}
        else:
            self.env = {
                "PHI_RELAY_STATE_DIR": str(self.volume),
                "PHI_RELAY_SERVER_USERS_FILE": str(self.users),
                "PHI_RELAY_AUDIT_FILE": str(self.audit),
            }

    def run(self, args: list[str], stdin: str = "") -> subprocess.CompletedProcess[str]:
        out = run([*args, *self.flags], self.cwd, self.env, stdin)
        assert "Traceback" not in out.stderr, out.stderr
        return out

    def check(self, subject: str, rcpt: str, category: str = "treatment") -> int:
        return self.check_run(subject, rcpt, category).returncode

    def check_run(
        self, subject: str, rcpt: str, category: str = "treatment"
    ) -> subprocess.CompletedProcess[str]:
        msg = EmailMessage()
        msg["From"] = "app@clinic.example"
        msg["To"] = rcpt
        msg["Subject"] = subject
        msg["X-PHI-Category"] = category
        msg.set_content("Synthetic body.\n")
        path = self.cwd / "m.eml"
        path.write_bytes(bytes(msg))
        return self.run(["check", str(path)])

    def nothing_in_cwd(self) -> None:
        assert not (self.cwd / "state").exists(), "a command wrote to ./state, not the volume"


@pytest.fixture(params=SOURCES)
def site(request: pytest.FixtureRequest, tmp_path: Path) -> Site:
    return Site(tmp_path, request.param)


def test_consent_and_optout_reach_the_store_serve_reads(site: Site) -> None:
    granted, other = "granted@example.org", "other@example.org"
    assert site.check("Spring wellness offers", granted, "marketing") == 1
    out = site.run(["consent", "grant", granted, "--form-ref", "FORM-1"])
    assert out.returncode == 0, out.stderr
    assert site.check("Spring wellness offers", granted, "marketing") == 0
    assert site.check("Spring wellness offers", other, "marketing") == 1
    listed = site.run(["consent", "list"])
    assert listed.stdout.startswith(granted + "\tmarketing")
    assert site.check("5 tips for a healthy heart", other, "education") == 0
    assert site.run(["optout", "add", other]).returncode == 0
    assert site.check("5 tips for a healthy heart", other, "education") == 1
    assert (site.volume / "consent.db").is_file()
    site.nothing_in_cwd()


def _subject_phi_line(result: subprocess.CompletedProcess[str]) -> str:
    return next(line for line in result.stdout.splitlines() if line.startswith("subject-phi"))


def test_roster_import_reaches_the_roster_serve_reads(site: Site) -> None:
    csv = site.cwd / "roster.csv"
    csv.write_text("first_name,last_name,mrn\nZorba,Quillfeather,A-99812\n")
    # Before the import no rule knows the name (the scorer may still judge the subject);
    # after it, the roster's exact match refuses it as a name.
    before = _subject_phi_line(site.check_run("Re: zorba quillfeather", "p@example.org"))
    assert "name" not in before, before
    out = site.run(["roster", "import", str(csv)])
    assert out.returncode == 0, out.stderr
    assert str(site.volume) in out.stdout
    after = site.check_run("Re: zorba quillfeather", "p@example.org")
    assert after.returncode == 1
    assert "name" in _subject_phi_line(after), after.stdout
    site.nothing_in_cwd()


def test_audit_verify_uses_the_configured_log_and_key(site: Site) -> None:
    key = keys.load_or_create(site.volume, "audit")
    with AuditLog(site.audit, key=key) as log:
        log.event("relay-start")
        log.event("relay-stop")
    out = site.run(["audit", "verify"])
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "OK: 2 records, chain intact"
    site.nothing_in_cwd()


def test_keys_init_writes_the_keys_serve_reads(site: Site) -> None:
    out = site.run(["keys", "init"])
    assert out.returncode == 0, out.stderr
    assert (site.volume / "keys" / "audit.key").is_file()
    site.nothing_in_cwd()


def test_user_add_writes_the_users_file_serve_reads(site: Site) -> None:
    out = site.run(["user", "add", "clinic-app", "--password-stdin"], "a long passphrase here\n")
    assert out.returncode == 0, out.stderr
    name, _, stored = site.users.read_text().strip().partition(":")
    assert name == "clinic-app" and check_password(stored, "a long passphrase here")


def test_user_add_without_any_users_file_says_how_to_give_one(tmp_path: Path) -> None:
    out = run(["user", "add", "x", "--password-stdin"], tmp_path, {}, "a long passphrase here\n")
    assert out.returncode == 2
    assert "no users file: give --users-file FILE" in out.stderr


def test_misspelt_variable_is_refused_at_start(tmp_path: Path) -> None:
    for args in (["serve"], ["consent", "list"], ["check", "x.eml"]):
        out = run(args, tmp_path, {"PHI_RELAY_SERVER_LISTN": "127.0.0.1:0"})
        assert out.returncode == 2, args
        assert out.stderr.strip().endswith(
            "environment PHI_RELAY_SERVER_LISTN: unknown variable; did you mean "
            "PHI_RELAY_SERVER_LISTEN? `phi-relay serve --help` lists them"
        ), out.stderr
    assert not (tmp_path / "state").exists()


def test_serve_help_lists_every_variable(tmp_path: Path) -> None:
    out = run(["serve", "--help"], tmp_path, {})
    assert out.returncode == 0
    listed = {line.strip() for line in out.stdout.splitlines() if line.startswith("  PHI_")}
    assert listed >= set(variables()) | {"PHI_RELAY_CONFIG"}
    assert "PHI_RELAY_SERVER_LISTEN" in listed and "PHI_RELAY_AUDIT_KEY" in listed


@pytest.mark.parametrize(
    ("args", "env", "expected"),
    [
        (["--mode", "loud"], {}, "flag --mode: server.mode: expected enforce or monitor"),
        (
            [],
            {"PHI_RELAY_SERVER_MODE": "loud"},
            "environment PHI_RELAY_SERVER_MODE: server.mode: expected enforce or monitor",
        ),
        (
            ["--upstream-timeout", "soon"],
            {},
            "flag --upstream-timeout: upstream.timeout: expected a number of seconds > 0",
        ),
        (["--client-timeout", "0"], {}, "flag --client-timeout: server.client_timeout:"),
        (["--trusted-network", "x"], {}, "flag --trusted-network: server.trusted_networks:"),
        (["--upstream", "h:99999"], {}, "flag --upstream: upstream: expected a port number"),
        (
            [],
            {"PHI_RELAY_CONFIG": "/nonexistent/relay.toml"},
            "environment PHI_RELAY_CONFIG: /nonexistent/relay.toml: no such configuration file",
        ),
        (
            ["--config", "/nonexistent/relay.toml"],
            {},
            "flag --config: /nonexistent/relay.toml: no such configuration file",
        ),
        (
            ["--policy-file", "nope.toml"],
            {},
            "flag --policy-file: policy_file: nope.toml: no such policy file",
        ),
        (
            [],
            {"PHI_RELAY_POLICY_FILE": "nope.toml"},
            "environment PHI_RELAY_POLICY_FILE: policy_file: nope.toml: no such policy file",
        ),
    ],
)
def test_errors_name_what_the_user_gave(
    tmp_path: Path, args: list[str], env: dict[str, str], expected: str
) -> None:
    out = run(["serve", *args], tmp_path, env)
    assert out.returncode == 2
    assert expected in out.stderr, out.stderr
    assert "Traceback" not in out.stderr


def test_scan_subjects_exit_code_and_json(tmp_path: Path) -> None:
    clean = run(["scan-subjects", "--json"], tmp_path, {}, "Our new Saturday hours\n")
    assert clean.returncode == 0
    assert json.loads(clean.stdout) == {
        "subjects": 1,
        "phi": 0,
        "results": [{"line": 1, "verdict": "clean", "kinds": [], "rules": []}],
    }
    mixed = run(["scan-subjects", "--json", "-"], tmp_path, {}, "Hello\nMRN 4451234 results\n")
    assert mixed.returncode == 1
    doc = json.loads(mixed.stdout)
    assert doc["subjects"] == 2 and doc["phi"] == 1
    assert doc["results"][1]["verdict"] == "phi" and "mrn" in doc["results"][1]["kinds"]
    assert "4451234" not in mixed.stdout  # the subjects are not echoed back
