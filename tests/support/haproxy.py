"""A private HAProxy (Debian's `haproxy`) in TCP mode in front of the relay, on loopback.

Each frontend listens on a free 127.0.0.1 port and forwards to one backend address with
`send-proxy` (v1) or `send-proxy-v2`, from a chosen source address (`source`), so a test
can list exactly that address as the load balancer. Missing binaries fail the test: CI
installs haproxy, so these tests must run there.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

START_TIMEOUT = 15.0
INSTALL_HINT = "haproxy not found: run `apt-get install haproxy` (see README, Run the tests)"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass(frozen=True)
class Route:
    name: str
    backends: tuple[int, ...]  # relay ports on 127.0.0.1 (round robin)
    proxy: str  # "send-proxy" or "send-proxy-v2"
    source: str = "127.0.0.2"


@dataclass
class Haproxy:
    folder: Path
    routes: list[Route]
    ports: dict[str, int] = field(default_factory=dict)
    process: subprocess.Popen[bytes] | None = None
    log: IO[bytes] | None = None

    def config(self) -> str:
        lines = [
            "global",
            "  maxconn 200",
            "defaults",
            "  mode tcp",
            "  timeout connect 5s",
            "  timeout client 60s",
            "  timeout server 60s",
        ]
        for route in self.routes:
            port = self.ports.setdefault(route.name, free_port())
            lines += [
                f"frontend {route.name}",
                f"  bind 127.0.0.1:{port}",
                f"  default_backend {route.name}_relays",
                f"backend {route.name}_relays",
                "  balance roundrobin",
            ]
            lines += [
                f"  server r{i} 127.0.0.1:{backend} {route.proxy} source {route.source}"
                for i, backend in enumerate(route.backends)
            ]
        return "\n".join(lines) + "\n"

    def start(self) -> Haproxy:
        binary = shutil.which("haproxy") or "/usr/sbin/haproxy"
        if not Path(binary).exists():
            raise AssertionError(INSTALL_HINT)
        cfg = self.folder / "haproxy.cfg"
        cfg.write_text(self.config())
        check = subprocess.run(
            [binary, "-c", "-f", str(cfg)], capture_output=True, timeout=30, check=False
        )
        assert check.returncode == 0, check.stderr.decode() + check.stdout.decode()
        self.log = (self.folder / "haproxy.log").open("wb")
        self.process = subprocess.Popen(
            [binary, "-db", "-f", str(cfg)], stdout=subprocess.DEVNULL, stderr=self.log
        )
        deadline = time.monotonic() + START_TIMEOUT
        for port in self.ports.values():
            while True:
                assert self.process.poll() is None, (self.folder / "haproxy.log").read_text()
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=1).close()
                    break
                except OSError:
                    assert time.monotonic() < deadline, "haproxy did not start listening"
                    time.sleep(0.05)
        return self

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
            self.process = None
        if self.log is not None:
            self.log.close()
            self.log = None
