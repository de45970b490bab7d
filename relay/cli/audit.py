"""`phi-relay audit verify FILE...`: prove the audit log's hash chain is intact."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from relay import keys
from relay.audit.verify import verify
from relay.cli import EXIT_OK, EXIT_REFUSED, CliError

KEY_NAME = "audit"
DEFAULT_STATE_DIR = Path("state")


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    audit = subparsers.add_parser("audit", help="work with the audit log")
    sub = audit.add_subparsers(dest="audit_command", metavar="ACTION", required=True)
    check = sub.add_parser(
        "verify",
        help="check that audit log files were not edited",
        description=(
            "Check one chain across FILEs given oldest first "
            "(audit.log.2 audit.log.1 audit.log). Prints 'OK: N records, chain intact' "
            "and exits 0, or one line per problem and exits 1."
        ),
    )
    check.add_argument("files", nargs="+", type=Path, metavar="FILE")
    check.add_argument(
        "--state-dir",
        type=Path,
        default=None,
        help="where serve keeps keys/audit.key (default: ./state; "
        f"{keys.env_name(KEY_NAME)} overrides)",
    )
    check.add_argument(
        "--links-only",
        action="store_true",
        help="without the key: check only that records link up, not their content",
    )
    check.set_defaults(func=run_verify)


def _load_key(state_dir: Path | None) -> bytes:
    """The audit key, never a new one: a fresh key would make every record look forged."""
    directory = state_dir or DEFAULT_STATE_DIR
    if not keys.present(directory, KEY_NAME):
        raise CliError(
            f"no audit key at {keys.key_path(directory, KEY_NAME)}: give --state-dir DIR, set "
            f"{keys.env_name(KEY_NAME)}, or use --links-only"
        )
    try:
        return keys.load(directory, KEY_NAME)
    except (keys.KeyError_, OSError) as exc:
        raise CliError(f"cannot load the audit key: {exc}") from exc


def run_verify(args: argparse.Namespace) -> int:
    key = None if args.links_only else _load_key(args.state_dir)
    try:
        report = verify(args.files, key)
    except OSError as exc:
        where = exc.filename if exc.filename is not None else "audit log"
        raise CliError(f"cannot read {where}: {exc.strerror or exc}") from exc
    for note in report.notes:
        print(f"note: {note}", file=sys.stderr)
    if not report.ok:
        for problem in report.problems:
            print(problem)
        return EXIT_REFUSED
    if key is None:
        print(f"OK: {report.records} records, chain links intact (content not checked: no key)")
    else:
        print(f"OK: {report.records} records, chain intact")
    return EXIT_OK
