"""`phi-relay audit verify FILE...` proves the audit chain is intact; `audit report` sums it up."""

from __future__ import annotations

import argparse
import asyncio
import sys
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

from relay import keys
from relay.audit.names import chains_of
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
            "(audit.log.2 audit.log.1 audit.log), or every chain in a DIRECTORY (each "
            "*.log file and its rotations: one per replica or worker). Prints 'OK: N records, "
            "chain intact' and exits 0, or one line per problem and exits 1."
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
    _register_report(sub)


def _register_report(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    report = sub.add_parser(
        "report",
        help="write the compliance report for a period (HTML, JSON or CSV)",
        description=(
            "Verify every audit chain in PATHs (a file and its rotations, or a directory "
            "of *.log chains) and count what an auditor asks for over the period: messages "
            "by category and decision, refusals and subject replacements by rule and PHI "
            "kind, recipients suppressed, opt-outs recorded (from the consent store), TLS "
            "versions, upstream failures, monitor-mode 'would have refused'. No PHI. "
            "Exits 0, or 1 when a chain fails verification (the report says so)."
        ),
    )
    report.add_argument(
        "paths",
        nargs="*",
        type=Path,
        metavar="PATH",
        help="audit log files or directories; default: audit.file from the configuration",
    )
    report.add_argument(
        "--since",
        type=_moment,
        help="start of the period, UTC: 2026-11-01 or 2026-11-01T08:00 (default: the start)",
    )
    report.add_argument(
        "--until",
        type=_until,
        help="end of the period, UTC, exclusive; a date alone includes that whole day "
        "(default: now)",
    )
    report.add_argument("--format", choices=("html", "json", "csv"), default="html")
    report.add_argument("--output", "-o", type=Path, help="write here (default: stdout)")
    report.add_argument(
        "--no-optouts",
        action="store_true",
        help="do not read opt-outs from the consent store (the report says they are missing)",
    )
    report.add_argument(
        "--links-only",
        action="store_true",
        help="without the key: verify only that records link up, not their content",
    )
    loader.add_state_dir_argument(report)
    loader.add_config_argument(report)
    report.set_defaults(func=run_report)


def _moment(text: str) -> datetime:
    try:
        moment = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a date or time; expected 2026-11-01 or 2026-11-01T08:00 (UTC)"
        ) from None
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def _until(text: str) -> datetime:
    moment = _moment(text)
    try:
        date.fromisoformat(text.strip())
    except ValueError:
        return moment
    return moment + timedelta(days=1)  # a date alone: to the end of that day


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


def _key_dir(args: argparse.Namespace, configured: Path, named: list[Path] | None = None) -> Path:
    """The state directory whose key signed the logs named on the command line.

    A DIRECTORY (or a FILE's folder) that holds keys/audit.key is the state directory of
    the relay that wrote those logs, so `audit verify /srv/relay/state` works from any
    directory; --state-dir, when given, and the configured one otherwise, decide the rest.
    """
    if args.state_dir is not None:
        return configured
    given: list[Path] = args.files if named is None else named
    for path in given:
        folder = path if path.is_dir() else path.parent
        if keys.key_path(folder, KEY_NAME).exists():
            return folder
    return configured


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


def chains_in(directory: Path) -> list[list[Path]]:
    """Each chain in a directory (one per replica or worker): FILE.N ... FILE.1 FILE."""
    bases = sorted(p for p in directory.glob("*.log") if p.is_file())
    if not bases:
        raise CliError(
            f"no audit chains in {directory}: expected files named *.log (a.log, b.log, with "
            "their rotations a.log.1 ...)"
        )
    return [configured_files(base) for base in bases]


def _verify_dir(chains: list[list[Path]], key: bytes | None) -> int:
    failed = 0
    for files in chains:
        name = files[-1]
        try:
            report = verify(files, key)
        except OSError as exc:
            raise CliError(f"cannot read {exc.filename or name}: {exc.strerror or exc}") from exc
        for note in report.notes:
            print(f"note: {name}: {note}", file=sys.stderr)
        if report.ok:
            print(f"OK: {name}: {report.records} records, chain intact")
        else:
            failed += 1
            for problem in report.problems:
                print(f"{name}: {problem}")
    return EXIT_REFUSED if failed else EXIT_OK


def run_verify(args: argparse.Namespace) -> int:
    cfg = loader.load_admin(args, {"state_dir": ("--state-dir", args.state_dir)})
    key_dir = _key_dir(args, cfg.state_dir)
    if len(args.files) == 1 and args.files[0].is_dir():
        chains = chains_in(args.files[0])
        return _verify_dir(chains, None if args.links_only else _load_key(key_dir))
    if not args.files:
        configured_files(cfg.audit.file)  # says so if there is none
        assert cfg.audit.file is not None
        bases = chains_of(cfg.audit.file)
        if len(bases) > 1:  # a relay with several workers: one chain each
            chains = [configured_files(base) for base in bases]
            return _verify_dir(chains, None if args.links_only else _load_key(cfg.state_dir))
    files = args.files or configured_files(cfg.audit.file)
    key = None if args.links_only else _load_key(key_dir)
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


def run_report(args: argparse.Namespace) -> int:
    from relay.audit import report as report_mod
    from relay.consent import open_store
    from relay.consent.api import OptOut

    cfg = loader.load_admin(args, {"state_dir": ("--state-dir", args.state_dir)})
    since, until = args.since, args.until or datetime.now(UTC)
    if since is not None and since >= until:
        raise CliError("--since must be before --until")
    for path in args.paths:
        if not path.exists():
            raise CliError(f"{path}: no such audit log file or directory")
    if args.paths:
        paths = args.paths
    else:
        configured_files(cfg.audit.file)  # says so if there is none
        assert cfg.audit.file is not None
        paths = chains_of(cfg.audit.file)  # every worker's chain
    chains, notes = report_mod.find_chains(paths)
    if not chains:
        raise CliError(f"no audit log (*.log) found in {', '.join(map(str, paths))}")
    # As `audit verify`: a state directory named on the command line brings its own key
    # and consent store, so the report works from any directory (a cron job, a wheel).
    state_dir = _key_dir(args, cfg.state_dir, list(args.paths))
    if state_dir != cfg.state_dir:
        cfg = loader.load_admin(args, {"state_dir": ("--state-dir", state_dir)})
    key = None if args.links_only else _load_key(cfg.state_dir)
    optouts = None
    if not args.no_optouts:

        async def read() -> list[OptOut]:
            store = await open_store(cfg.store_url)
            try:
                return await store.list_optouts(include_removed=True)
            finally:
                await store.close()

        try:
            optouts = asyncio.run(read())
        except Exception as exc:
            raise CliError(
                f"cannot read opt-outs from the consent store ({type(exc).__name__}: {exc}); "
                "give --config or --state-dir as serve has them, or --no-optouts"
            ) from exc
    try:
        result = report_mod.build(
            chains, key, since=since, until=until, optouts=optouts, notes=notes
        )
    except OSError as exc:
        where = exc.filename if exc.filename is not None else "audit log"
        raise CliError(f"cannot read {where}: {exc.strerror or exc}") from exc
    text = {"html": result.to_html, "json": result.to_json, "csv": result.to_csv}[args.format]()
    if args.output is None:
        sys.stdout.write(text)
    else:
        try:
            args.output.write_text(text, encoding="utf-8")
        except OSError as exc:
            raise CliError(f"cannot write {args.output}: {exc.strerror or exc}") from exc
    for chain in result.chains:
        if not chain.ok:
            print(
                f"verification FAILED: {chain.name}: {chain.problem_count} problem(s); "
                "run `phi-relay audit verify` on its files for every line",
                file=sys.stderr,
            )
    return EXIT_OK if result.verified else EXIT_REFUSED
