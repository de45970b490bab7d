"""`phi-relay keys init`: the one explicit way to make the relay's secret keys."""

from __future__ import annotations

import argparse
from typing import Any

from relay import keys
from relay.cli import EXIT_OK, CliError, loader


def register(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser("keys", help="manage the relay's secret keys")
    ksub = p.add_subparsers(dest="keys_command", metavar="ACTION", required=True)
    init: argparse.ArgumentParser = ksub.add_parser(
        "init",
        help="create the keys that are missing (never replaces one)",
        description=(
            "Create each missing key file (audit, dedup, unsubscribe) as 0600 in "
            "STATE_DIR/keys. Existing keys are left alone. A new key cannot check old "
            "audit records or open unsubscribe links already mailed: restore a lost key "
            "from backup when you can."
        ),
    )
    loader.add_state_dir_argument(init)
    loader.add_config_argument(init)
    init.add_argument("--spool", action="store_true", help="also the spool key (for spool.enabled)")
    init.set_defaults(func=run_init)


def run_init(args: argparse.Namespace) -> int:
    state_dir = loader.load_admin(args, {"state_dir": ("--state-dir", args.state_dir)}).state_dir
    try:
        names = (*keys.SERVE_KEYS, keys.SPOOL_KEY) if args.spool else keys.SERVE_KEYS
        created = keys.init(state_dir, names)
    except OSError as exc:
        raise CliError(f"{state_dir / 'keys'}: cannot create keys ({exc.strerror})") from exc
    for path in created:
        print(f"created {path}")
    kept = [n for n in keys.SERVE_KEYS if keys.key_path(state_dir, n) not in created]
    if kept:
        print(f"kept existing: {', '.join(kept)}")
    return EXIT_OK
