"""A private Postfix instance on loopback: its own config, queue and data directories.

Never the system instance: everything lives under one folder given by the caller, the
SMTP listener is 127.0.0.1:<free port>, and `stop()` stops only this instance's master.
Debian's package provides the programs (`apt-get install -y postfix` with debconf
preseeded `postfix/main_mailer_type select No configuration`); `ensure_installed()`
does that when they are missing and the caller is root.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the checkout, for tests/
from tests.support.postfix import MASTER_CF, free_port

POSTFIX = "/usr/sbin/postfix"

# master.cf is the test instance's (tests/support/postfix.py, chroot off: our queue folder
# has no /etc), plus the local service this instance has always listed.
_MASTER = MASTER_CF + "local      unix  - n n -  - local\n"

# A header policy of the kind sites use in front of a smarthost (regexp, like ours, cheap).
HEADER_CHECKS = """\
/^Subject:.*\\b(MRN|SSN|diagnos[ie]s|lab result)\\b/ REJECT 5.7.1 Subject may contain PHI
/^X-PHI-Category:/ IGNORE
"""


def ensure_installed() -> None:
    """Install Debian's postfix without configuring (or starting) a system instance."""
    if Path(POSTFIX).exists():
        return
    if os.geteuid() != 0:
        raise SystemExit("postfix is not installed; run as root or: apt-get install -y postfix")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    subprocess.run(
        ["debconf-set-selections"],
        input=b"postfix postfix/main_mailer_type select No configuration\n",
        check=True,
    )
    subprocess.run(["apt-get", "install", "-y", "-qq", "postfix"], env=env, check=True)


@dataclass
class Postfix:
    """One instance: smtpd with STARTTLS on `port`, relaying to 127.0.0.1:`relay_port`."""

    folder: Path
    cert: Path
    key: Path
    relay_port: int
    port: int = 0
    tls_upstream: bool = False  # True: the smtp client does verified TLS to the upstream
    upstream_ca: Path | None = None

    @property
    def config_dir(self) -> Path:
        return self.folder / "etc"

    def write_config(self) -> None:
        self.port = self.port or free_port()
        for sub in ("etc", "queue", "data"):
            (self.folder / sub).mkdir(parents=True, exist_ok=True)
        # Postfix's daemons run as user postfix and must reach their folders.
        for path in (self.folder, *self.folder.parents):
            if path == Path("/"):
                break
            if path.stat().st_uid == 0 and not path.stat().st_mode & 0o001:
                path.chmod(path.stat().st_mode | 0o011)
        shutil.chown(self.folder / "data", "postfix", "postfix")
        shutil.copy(self.cert, self.config_dir / "server.crt")
        shutil.copy(self.key, self.config_dir / "server.key")
        os.chmod(self.config_dir / "server.key", 0o600)
        (self.config_dir / "header_checks").write_text(HEADER_CHECKS)
        upstream_tls = (
            [
                "smtp_tls_security_level = secure",
                f"smtp_tls_CAfile = {self.upstream_ca}",
                "smtp_tls_secure_cert_match = nexthop",
                "smtp_tls_session_cache_database = btree:${data_directory}/smtp_scache",
            ]
            if self.tls_upstream
            else ["smtp_tls_security_level = none"]
        )
        main = [
            "compatibility_level = 3.6",
            f"queue_directory = {self.folder / 'queue'}",
            f"data_directory = {self.folder / 'data'}",
            "mail_owner = postfix",
            "setgid_group = postdrop",
            "myhostname = postfix.bench",
            "mydomain = bench",
            "myorigin = $myhostname",
            "mydestination =",
            "local_recipient_maps =",
            "local_transport = error:local delivery is disabled",
            "alias_maps =",
            "alias_database =",
            "biff = no",
            "inet_interfaces = 127.0.0.1",
            "inet_protocols = ipv4",
            "mynetworks = 127.0.0.0/8",
            "smtpd_relay_restrictions = permit_mynetworks, reject_unauth_destination",
            f"relayhost = [127.0.0.1]:{self.relay_port}",
            "smtpd_tls_security_level = may",
            f"smtpd_tls_cert_file = {self.config_dir / 'server.crt'}",
            f"smtpd_tls_key_file = {self.config_dir / 'server.key'}",
            "smtpd_tls_session_cache_database = btree:${data_directory}/smtpd_scache",
            f"header_checks = regexp:{self.config_dir / 'header_checks'}",
            "message_size_limit = 67108864",
            # The memory benchmark holds 200 idle sessions: one smtpd process each.
            "default_process_limit = 400",
            f"maillog_file = {self.folder / 'maillog'}",
            f"maillog_file_prefixes = {self.folder}",
            *upstream_tls,
        ]
        (self.config_dir / "main.cf").write_text("\n".join(main) + "\n")
        (self.config_dir / "master.cf").write_text(_MASTER.format(smtpd_port=self.port))

    def _postfix(self, *args: str) -> subprocess.CompletedProcess[str]:
        # postfix(1) reports to syslog, or to stderr when that is a terminal: `script` gives
        # it one, so a failure says why here instead of in a /dev/log nobody reads.
        command = " ".join([POSTFIX, "-c", str(self.config_dir), *args])
        return subprocess.run(
            ["script", "-qec", command, "/dev/null"],
            capture_output=True,
            text=True,
            timeout=60,
        )

    def start(self, timeout: float = 30.0) -> None:
        self.write_config()
        done = self._postfix("start")
        if done.returncode != 0:
            raise RuntimeError(f"postfix start failed: {done.stdout}{done.stderr}")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", self.port)) == 0:
                    return
            time.sleep(0.1)
        raise RuntimeError(f"postfix did not listen on {self.port}; see {self.folder}/maillog")

    def master_pid(self) -> int:
        text = (self.folder / "queue" / "pid" / "master.pid").read_text()
        return int(text.split()[0])

    def stop(self) -> None:
        # `stop` is for this config directory only; `abort` if it does not go quietly.
        if self._postfix("stop").returncode != 0:
            self._postfix("abort")
