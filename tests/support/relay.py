"""Start the real relay in-process on free loopback ports, with a test PKI and upstream."""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiosmtplib

from relay import config as config_mod
from relay.server import Relay
from tests.support.pki import Pki
from tests.support.upstream import Sink

ROOT = Path(__file__).resolve().parents[2]


@dataclass
class RunningRelay:
    relay: Relay
    pki: Pki
    state: Path
    policy_file: Path

    @property
    def port(self) -> int:
        return self.relay.smtp_port

    @property
    def audit_path(self) -> Path:
        path = self.relay.config.audit.file
        assert path is not None
        return path

    def audit(self) -> list[dict[str, Any]]:
        if not self.audit_path.exists():
            return []
        return [json.loads(line) for line in self.audit_path.read_text().splitlines() if line]

    def decisions(self) -> list[dict[str, Any]]:
        return [r for r in self.audit() if r.get("type") == "decision"]

    def deliveries(self) -> list[dict[str, Any]]:
        return [r for r in self.audit() if r.get("type") == "delivery"]

    async def client(
        self,
        *,
        starttls: bool = True,
        login: tuple[str, str] | None = None,
        port: int | None = None,
    ) -> aiosmtplib.SMTP:
        client = aiosmtplib.SMTP(
            hostname="127.0.0.1",
            port=port or self.port,
            start_tls=False,
            tls_context=self.pki.client_context(),
            timeout=15,
        )
        await client.connect()
        await client.ehlo()
        if starttls:
            await client.starttls(server_hostname="localhost")
            await client.ehlo()
        if login:
            await client.login(*login)
        return client

    async def stop(self) -> None:
        await self.relay.stop()


async def start_relay(
    tmp: Path,
    pki: Pki,
    upstream: Sink | None,
    *,
    policy_file: Path | None = None,
    server: dict[str, object] | None = None,
    top: dict[str, object] | None = None,
    upstream_cfg: dict[str, object] | None = None,
    audit: dict[str, object] | None = None,
    sections: dict[str, dict[str, object]] | None = None,
) -> RunningRelay:
    state = tmp / "state"
    if policy_file is None:
        policies = tmp / "policies"
        if not policies.exists():
            shutil.copytree(ROOT / "policies", policies)
        policy_file = policies / "default.toml"
    overrides: dict[str, dict[str, object]] = {
        "server": {
            "listen": "127.0.0.1:0",
            "tls_cert": str(pki.cert),
            "tls_key": str(pki.key),
            "hostname": "relay.test",
            "auth_failure_delay": 0.05,
            **(server or {}),
        },
        "": {"state_dir": str(state), "policy_file": str(policy_file), **(top or {})},
        "audit": {"file": str(state / "audit.log"), **(audit or {})},
        # As if TLS were terminated in front: plain HTTP here, https links (tests of the
        # TLS listener itself pass sections={"http": ...}).
        "http": {"listen": "127.0.0.1:0", "base_url": "https://127.0.0.1:8025", "tls": False},
    }
    for name, values in (sections or {}).items():
        overrides.setdefault(name, {}).update(values)
    if upstream is not None:
        overrides["upstream"] = {
            "host": "localhost",
            "port": upstream.port,
            "ca_file": str(pki.ca),
            "timeout": 5,
            "tls": "implicit" if upstream.implicit else "starttls",
            **(upstream_cfg or {}),
        }
    cfg = config_mod.load(None, environ={}, overrides=overrides)
    relay = Relay(cfg, sources=config_mod.Sources(None, {}, overrides))
    await relay.start()
    return RunningRelay(relay, pki, state, policy_file)
