"""`phi-relay roster import FILE.csv`: store keyed hashes of patient names and MRNs."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from relay.cli import EXIT_OK, CliError
from relay.keys import KeyError_
from relay.phi.roster import DB_NAME, RosterError, import_csv

DEFAULT_STATE_DIR = Path("state")


def register(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "roster", help="manage the patient roster used to catch bare names in subjects"
    )
    rsub = p.add_subparsers(dest="roster_command", metavar="ACTION", required=True)
    imp: argparse.ArgumentParser = rsub.add_parser(
        "import",
        help="replace the roster with a CSV of first_name,last_name,mrn",
        description=(
            "Reads a CSV with a header naming first_name, last_name and/or mrn. Only keyed "
            "hashes are stored. A bad row stops the import with its line number; nothing "
            "is imported then."
        ),
    )
    imp.add_argument("csv", type=Path, help="roster CSV file")
    imp.add_argument("--state-dir", type=Path, default=DEFAULT_STATE_DIR, help="state directory")
    imp.set_defaults(func=run_import)


def run_import(args: argparse.Namespace) -> int:
    if not args.csv.is_file():
        raise CliError(f"{args.csv}: no such file")
    try:
        rows = import_csv(args.csv, args.state_dir)
    except RosterError as exc:
        raise CliError(f"{args.csv}: {exc}; nothing imported") from exc
    except KeyError_ as exc:
        raise CliError(str(exc)) from exc
    except OSError as exc:
        raise CliError(f"{args.state_dir}: cannot write the roster ({exc.strerror})") from exc
    print(f"imported {rows} roster rows into {args.state_dir / DB_NAME} (keyed hashes only)")
    return EXIT_OK
