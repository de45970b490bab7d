"""Run the real `phi-relay serve` as a subprocess on free loopback ports, its logs kept in files."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import ssl
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from relay.audit.names import chains_of
from tests.support.pki import Pki
from tests.support.relay import ROOT
from tests.support.upstream import Sink

PHI_RELAY = Path(sys.executable).with_name("phi-relay")


@dataclass
class Service:
    proc: asyncio.subprocess.Process
    home: Path
    smtp_port: int
    http_port: int
    http_tls: ssl.SSLContext | None = None  # the HTTP listener is TLS unless http.tls = false

    @property
    def policy_file(self) -> Path:
        return self.home / "policies" / "default.toml"

    @property
    def audit_path(self) -> Path:
        return self.home / "state" / "audit.log"

    def audit_records(self) -> list[dict[str, Any]]:
        """Every record of every worker's chain (audit.log, audit.w2.log, ...)."""
        out: list[dict[str, Any]] = []
        for path in chains_of(self.audit_path):
            if path.exists():
                out += [json.loads(line) for line in path.read_text().splitlines() if line]
        return out

    def log_text(self) -> str:
        """Everything the service wrote to stdout and stderr so far."""
        return "".join(
            (self.home / name).read_text(errors="replace") for name in ("stdout", "stderr")
        )

    async def http_get(self, path: str) -> str:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(
                "127.0.0.1",
                self.http_port,
                ssl=self.http_tls,
                server_hostname="localhost" if self.http_tls else None,
            ),
            10,
        )
        writer.write(f"GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n".encode())
        body = await asyncio.wait_for(reader.read(), 10)
        writer.close()
        await writer.wait_closed()
        head, _, rest = body.decode().partition("\r\n\r\n")
        assert head.startswith("HTTP/1.1 200 ") or head.startswith("HTTP/1.0 200 "), head
        return rest

    async def metric(self, name: str) -> float | None:
        for line in (await self.http_get("/metrics")).splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
        return None

    async def wait_metric(self, name: str, value: float, timeout: float = 20) -> None:
        """Signals are handled asynchronously: wait (bounded) until the metric shows it."""
        deadline = time.monotonic() + timeout
        while (seen := await self.metric(name)) != value:
            assert time.monotonic() < deadline, (name, seen, value)
            await asyncio.sleep(0.05)

    def signal(self, sig: signal.Signals) -> None:
        self.proc.send_signal(sig)

    async def stop(self) -> int:
        """SIGTERM and wait for a graceful exit; returns the exit code."""
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return await asyncio.wait_for(self.proc.wait(), 40)
        except TimeoutError:
            self.proc.kill()
            await self.proc.wait()
            raise


def _limited(nofile: int | None) -> list[str]:
    """A command prefix that runs the relay with at most `nofile` open descriptors."""
    if nofile is None:
        return []
    return [sys.executable, "-c", _SET_NOFILE, str(nofile)]


# Sets RLIMIT_NOFILE, then becomes the relay (no preexec_fn: not safe with threads).
_SET_NOFILE = (
    "import os, resource, sys; n = int(sys.argv[1]); "
    "resource.setrlimit(resource.RLIMIT_NOFILE, (n, n)); os.execv(sys.argv[2], sys.argv[2:])"
)


async def start_service(
    home: Path,
    pki: Pki,
    sink: Sink,
    *extra: str,
    env: Mapping[str, str] | None = None,
    upstream_flags: bool = True,
    nofile: int | None = None,
    workers: int = 1,
) -> Service:
    """`env` adds PHI_RELAY_* variables; without `upstream_flags` the upstream comes from
    the configuration file or the environment (as an operator would set it); `nofile`
    lowers the process's descriptor limit, to show what exhausting it does; `workers`
    is `serve --workers` (1: one process, whose audit log is the one audit.log)."""
    shutil.copytree(ROOT / "policies", home / "policies")
    ready = home / "ready"
    environ = {k: v for k, v in os.environ.items() if not k.startswith("PHI_RELAY_")}
    environ.update(env or {})
    environ["PHI_RELAY_READY_FILE"] = str(ready)
    upstream = (
        ["--upstream", f"localhost:{sink.port}", "--upstream-ca", str(pki.ca)]
        if upstream_flags
        else []
    )
    args = [
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--http-listen",
        "127.0.0.1:0",
        "--tls-cert",
        str(pki.cert),
        "--tls-key",
        str(pki.key),
        *upstream,
        "--upstream-timeout",
        "2",
        "--state-dir",
        str(home / "state"),
        "--policy-file",
        str(home / "policies" / "default.toml"),
        "--audit-log",
        str(home / "state" / "audit.log"),
        "--workers",
        str(workers),
        *extra,
    ]
    with (home / "stdout").open("wb") as out, (home / "stderr").open("wb") as err:
        proc = await asyncio.create_subprocess_exec(
            *_limited(nofile),
            str(PHI_RELAY),
            *args,
            cwd=home,
            env=environ,
            stdout=out,
            stderr=err,
        )
    deadline = time.monotonic() + 60
    while not ready.exists() or not ready.read_text().endswith("\n"):
        if proc.returncode is not None or time.monotonic() > deadline:
            if proc.returncode is None:
                proc.kill()
            await proc.wait()
            raise AssertionError(f"relay did not start:\n{(home / 'stderr').read_text()}")
        await asyncio.sleep(0.05)
    smtp, _implicit, http = ready.read_text().split()
    plain_http = environ.get("PHI_RELAY_HTTP_TLS", "true").lower() in ("false", "0", "no", "off")
    return Service(proc, home, int(smtp), int(http), None if plain_http else pki.client_context())
