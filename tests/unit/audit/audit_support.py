"""Builders shared by the audit tests: synthetic decisions, deliveries and a CLI runner."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from relay.audit import AuditLog
from relay.cli import CliError
from relay.cli import audit as audit_cli
from relay.model import (
    Action,
    Decision,
    DeliveryResult,
    Peer,
    Reply,
    TlsInfo,
    Verdict,
)

KEY = bytes(range(32))
DECISION_TIME = 1_700_000_000.1234  # 2023-11-14T22:13:20.123Z
TLS = TlsInfo("TLSv1.3", "TLS_AES_256_GCM_SHA384")


def decision(
    recipients: tuple[str, ...] = ("pat@example.org",),
    *,
    decision_id: str = "dec-1",
    dropped: dict[str, str] | None = None,
    reply: Reply | None = None,
) -> Decision:
    dropped = dropped or {}
    return Decision(
        decision_id=decision_id,
        session_id="ses-1",
        time=DECISION_TIME,
        peer=Peer("192.0.2.10", 40000),
        tls=TLS,
        auth_user="clinic-app",
        sender_domain="clinic.example",
        recipients=recipients,
        category="treatment",
        mode="enforce",
        verdicts=(
            Verdict.ok("require-tls"),
            Verdict("subject-phi", Action.REJECT, "phi.subject.mrn", ("mrn", "date")),
        ),
        action=Action.REJECT,
        enforced_action=Action.REJECT,
        reply=reply or Reply(550, "5.7.1", "Subject line contains protected health information"),
        accepted=tuple(r for r in recipients if r not in dropped),
        dropped=dropped,
        size=2048,
    )


def delivery(
    recipients: tuple[str, ...] = ("pat@example.org",),
    *,
    reply: Reply | None = None,
    refused: dict[str, Reply] | None = None,
) -> DeliveryResult:
    return DeliveryResult(
        decision_id="dec-1",
        upstream="smtp.provider.example:587",
        recipients=recipients,
        reply=reply or Reply(250, "2.0.0", "Ok: queued as 4F2A"),
        refused=refused or {},
        duration_ms=12.345678,
        tls=TLS,
        outcome="delivered",
        attempt=2,
    )


def write_events(path: Path, count: int, **kwargs: Any) -> AuditLog:
    """A log at `path` holding `count` event records (seq 0..count-1), left open."""
    log = AuditLog(path, key=KEY, clock=lambda: DECISION_TIME, **kwargs)
    for i in range(count):
        log.event("test", n=i)
    return log


def records(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def lines(path: Path) -> list[bytes]:
    return path.read_bytes().splitlines(keepends=True)


def run_cli(argv: list[str]) -> int:
    """The audit subcommand as `phi-relay` runs it, without loading other subcommands."""
    parser = argparse.ArgumentParser(prog="phi-relay")
    sub = parser.add_subparsers(dest="command", required=True)
    audit_cli.register(sub)
    args = parser.parse_args(argv)
    try:
        code: int = args.func(args)
    except CliError as exc:
        print(f"phi-relay {args.command}: {exc}", file=sys.stderr)
        return 2
    return code
