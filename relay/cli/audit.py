"""`phi-relay audit verify FILE...`: prove the audit log's hash chain is intact."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from relay import keys
from relay.audit.verify import verify, with_rotated
from relay.cli import EXIT_OK, EXIT_REFUSED, CliError, loader

KEY_NAME = "audit"


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
    check.add_argument(
        "files",
        nargs="*",
        type=Path,
        metavar="FILE",
        help="default: audit.file from the configuration and its rotations (FILE.N ... FILE.1, "
        "FILE-DATE, .gz), oldest first",
    )
    loader.add_state_dir_argument(check)
    loader.add_config_argument(check)
    check.add_argument(
        "--links-only",
        action="store_true",
        help="without the key: check only that records link up, not their content",
    )
    check.set_defaults(func=run_verify)


def _load_key(directory: Path) -> bytes:
    """The audit key, never a new one: a fresh key would make every record look forged."""
    if not keys.present(directory, KEY_NAME):
        raise CliError(
            f"no audit key at {keys.key_path(directory, KEY_NAME)}: give --state-dir DIR, set "
            f"{keys.env_name(KEY_NAME)}, or use --links-only"
        )
    try:
        return keys.load(directory, KEY_NAME)
    except (keys.KeyError_, OSError) as exc:
        raise CliError(f"cannot load the audit key: {exc}") from exc


def configured_files(audit_file: Path | None) -> list[Path]:
    """The configured audit file and its rotations, oldest first."""
    if audit_file is None:
        raise CliError("no audit file configured (audit.file is empty): name the FILEs")
    if not audit_file.exists():
        raise CliError(
            f"no audit log at {audit_file} (audit.file): name the FILEs, or give --config "
            "or $PHI_RELAY_AUDIT_FILE as serve has them"
        )
    # FILE.N .. FILE.1, FILE-DATE, and logrotate's compressed .gz ones, oldest first.
    return with_rotated(audit_file)


def run_verify(args: argparse.Namespace) -> int:
    cfg = loader.load_admin(args, {"state_dir": ("--state-dir", args.state_dir)})
    files = args.files or configured_files(cfg.audit.file)
    key = None if args.links_only else _load_key(cfg.state_dir)
    try:
        report = verify(files, key)
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
