"""`phi-relay roster import FILE.csv`: store keyed hashes of patient names and MRNs."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from relay.cli import EXIT_OK, CliError, loader
from relay.keys import KeyError_
from relay.phi.roster import DB_NAME, RosterError, import_csv


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
    loader.add_state_dir_argument(imp)
    loader.add_config_argument(imp)
    imp.set_defaults(func=run_import)


def run_import(args: argparse.Namespace) -> int:
    if not args.csv.is_file():
        raise CliError(f"{args.csv}: no such file")
    state_dir = loader.load_admin(args, {"state_dir": ("--state-dir", args.state_dir)}).state_dir
    try:
        rows = import_csv(args.csv, state_dir)
    except RosterError as exc:
        raise CliError(f"{args.csv}: {exc}; nothing imported") from exc
    except KeyError_ as exc:
        raise CliError(str(exc)) from exc
    except OSError as exc:
        raise CliError(f"{state_dir}: cannot write the roster ({exc.strerror})") from exc
    print(f"imported {rows} roster rows into {state_dir / DB_NAME} (keyed hashes only)")
    return EXIT_OK
