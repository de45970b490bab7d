"""A private Postfix instance (Debian's postfix) whose relayhost is the relay under test.

Own config_directory, queue_directory and data_directory in a temporary folder, an smtpd
on a free loopback port, its log in its own file (maillog_file, no syslog), chroot off:
it never reads or touches the system instance. Postfix needs root (the tests and CI run
as root) because master starts as root and drops to the `postfix` user.

MAIN_CF holds the relay-facing lines exactly as the README's "Postfix relayhost" section
shows them; tests/integration/test_postfix.py checks that the two agree.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

# The lines an operator adds to main.cf to send through phi-relay (README "Postfix relayhost").
# RELAY_PORT, CA_FILE and SASL_FILE are filled in; the README shows the usual values.
RELAYHOST_LINES = """\
relayhost = [{relay_host}]:{relay_port}
smtp_tls_security_level = secure
smtp_tls_CAfile = {ca_file}
smtp_sasl_auth_enable = yes
smtp_sasl_password_maps = texthash:{sasl_file}
smtp_sasl_security_options = noanonymous
smtp_sasl_tls_security_options = noanonymous
"""

# What makes this instance private and quick to test; not for an operator's main.cf.
PRIVATE_LINES = """\
compatibility_level = 3.6
queue_directory = {home}/spool
data_directory = {home}/data
mail_owner = postfix
setgid_group = postdrop
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
myhostname = postfix.test
mydomain = postfix.test
myorigin = postfix.test
mydestination =
mynetworks = 127.0.0.0/8
local_transport = error:no local delivery here
alias_maps =
alias_database =
maillog_file = {home}/maillog
maillog_file_prefixes = {home}
smtp_host_lookup = native
delay_warning_time = 0
smtp_tls_loglevel = 1
"""

MASTER_CF = """\
127.0.0.1:{smtpd_port} inet n - n - - smtpd
pickup     unix  n - n 60 1 pickup
cleanup    unix  n - n -  0 cleanup
qmgr       unix  n - n 300 1 qmgr
tlsmgr     unix  - - n 1000? 1 tlsmgr
rewrite    unix  - - n -  - trivial-rewrite
bounce     unix  - - n -  0 bounce
defer      unix  - - n -  0 bounce
trace      unix  - - n -  0 bounce
verify     unix  - - n -  1 verify
flush      unix  n - n 1000? 0 flush
proxymap   unix  - - n -  - proxymap
proxywrite unix  - - n -  1 proxymap
smtp       unix  - - n -  - smtp
relay      unix  - - n -  - smtp
showq      unix  n - n -  - showq
error      unix  - - n -  - error
retry      unix  - - n -  - error
discard    unix  - - n -  - discard
anvil      unix  - - n -  1 anvil
scache     unix  - - n -  1 scache
postlog    unix-dgram n - n - 1 postlogd
"""

_STATUS = re.compile(r"postfix/\w+\[\d+\]: (\w+): to=<([^>]*)>.*? status=(\w+) \((.*)\)$")


@dataclass(frozen=True)
class Status:
    queue_id: str
    rcpt: str
    status: str  # sent, deferred, bounced
    detail: str


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def postfix_path() -> str:
    path = shutil.which("postfix") or (
        "/usr/sbin/postfix" if Path("/usr/sbin/postfix").exists() else None
    )
    if path is None:
        raise RuntimeError(
            "Postfix is not installed: apt-get install postfix (CI installs it in .ci/run)"
        )
    return path


class Postfix:
    def __init__(self, relay_port: int, ca_file: Path, user: str, password: str) -> None:
        if os.geteuid() != 0:
            raise RuntimeError("a private Postfix instance needs root (tests and CI run as root)")
        postfix_path()
        # Not under pytest's 0700 tmp folder: the `postfix` user must reach these paths.
        self.home = Path(tempfile.mkdtemp(prefix="phi-relay-postfix-"))
        self.home.chmod(0o755)
        self.etc = self.home / "etc"
        self.etc.mkdir()
        (self.home / "spool").mkdir()  # postfix start fills it with its queues
        (self.home / "data").mkdir()
        shutil.chown(self.home / "data", "postfix")
        self.ca = self.home / "relay-ca.crt"
        shutil.copyfile(ca_file, self.ca)
        self.ca.chmod(0o644)
        self.sasl = self.home / "sasl_passwd"
        self.sasl.write_text(f"[localhost]:{relay_port} {user}:{password}\n")
        self.sasl.chmod(0o600)
        self.smtpd_port = free_port()
        self.relay_lines = RELAYHOST_LINES.format(
            relay_host="localhost", relay_port=relay_port, ca_file=self.ca, sasl_file=self.sasl
        )
        main = PRIVATE_LINES.format(home=self.home) + self.relay_lines
        (self.etc / "main.cf").write_text(main)
        (self.etc / "master.cf").write_text(MASTER_CF.format(smtpd_port=self.smtpd_port))
        self.log = self.home / "maillog"

    def command(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(list(args), capture_output=True, text=True, timeout=60, check=False)

    def start(self) -> Postfix:
        out = self.command(postfix_path(), "-c", str(self.etc), "start")
        if out.returncode != 0:
            raise RuntimeError(f"postfix start failed: {out.stderr}{self.log_text()}")
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.smtpd_port), timeout=1):
                    return self
            except OSError:
                time.sleep(0.1)
        raise RuntimeError(f"postfix smtpd did not listen: {self.log_text()}")

    def stop(self) -> None:
        self.command(postfix_path(), "-c", str(self.etc), "abort")
        shutil.rmtree(self.home, ignore_errors=True)

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def statuses(self) -> list[Status]:
        out = []
        for line in self.log_text().splitlines():
            m = _STATUS.search(line)
            if m:
                out.append(Status(*m.groups()))
        return out

    async def wait_status(self, count: int, timeout: float = 30) -> list[Status]:
        """Wait until the log holds `count` delivery status lines (sent/deferred/bounced)."""
        deadline = time.monotonic() + timeout
        while True:
            found = self.statuses()
            if len(found) >= count:
                return found
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"{len(found)} status lines, wanted {count}:\n{self.log_text()}"
                )
            await asyncio.sleep(0.1)

    async def queue(self) -> str:
        """`postqueue -p` for this instance."""
        out = await asyncio.to_thread(self.command, "postqueue", "-c", str(self.etc), "-p")
        return out.stdout

    async def flush(self) -> None:
        """`postqueue -f`: attempt delivery of everything queued now."""
        out = await asyncio.to_thread(self.command, "postqueue", "-c", str(self.etc), "-f")
        assert out.returncode == 0, out.stderr
