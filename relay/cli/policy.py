"""`phi-relay policy check`: validate a policy file; errors name the file, key and expectation."""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path
from typing import Any

from relay.cli import EXIT_OK, EXIT_REFUSED
from relay.phi import default_detector
from relay.policy.base import ConfigError, PolicyDeps
from relay.rules import load


class _NoStore:
    """Policy check builds policies without opening the consent store."""

    async def authorization(self, *a: object, **k: object) -> None:
        return None

    async def opted_out(self, *a: object, **k: object) -> bool:
        return False

    async def add_optout(self, *a: object, **k: object) -> None:
        return None

    async def ping(self) -> None:
        return None

    async def close(self) -> None:
        return None


def register(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser("policy", help="policy files")
    psub = p.add_subparsers(dest="policy_command", metavar="ACTION", required=True)
    check = psub.add_parser("check", help="validate a policy file")
    check.add_argument("file", type=Path, nargs="?", default=Path("policies/default.toml"))
    check.set_defaults(func=run_check)


def run_check(args: argparse.Namespace) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        deps = PolicyDeps(
            policy_dir=args.file.parent,
            state_dir=Path(tmp),
            detector=default_detector(),
            store=_NoStore(),  # type: ignore[arg-type]
        )
        try:
            rules = load(args.file, deps)
        except ConfigError as exc:
            print(f"error: {exc}")
            return EXIT_REFUSED
    print(f"{args.file}: OK; pipeline: {', '.join(p.name for p in rules.policies)}")
    return EXIT_OK
