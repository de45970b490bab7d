"""`phi-relay scan-subjects [FILE|-]`: classify subject lines, one per line, as phi or clean.

Output per input line: `phi` or `clean`, a TAB, the comma-separated finding kinds
(empty when clean). Lines are raw header values: RFC 2047 words are decoded first.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, TextIO

from relay.cli import EXIT_OK, CliError
from relay.phi import default_detector
from relay.phi.normalize import subject_text
from relay.phi.roster import Roster


def register(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "scan-subjects",
        help="classify subject lines (one per line) as phi or clean",
        description="Prints 'phi' or 'clean', a TAB and the finding kinds for each input line.",
    )
    p.add_argument("file", nargs="?", default="-", help="file of subjects, or - for stdin")
    p.add_argument("--state-dir", type=Path, help="state directory holding an imported roster")
    p.set_defaults(func=run)


def scan_lines(lines: TextIO, out: TextIO, roster: Roster | None = None) -> int:
    detector = default_detector(roster)
    count = 0
    for line in lines:
        text = subject_text(line.rstrip("\r\n"))
        found = sorted({f.kind for f in detector.scan(text)})
        out.write(f"{'phi' if found else 'clean'}\t{','.join(found)}\n")
        count += 1
    return count


def run(args: argparse.Namespace) -> int:
    roster = None
    if args.state_dir is not None:
        try:
            roster = Roster.load(args.state_dir)
        except Exception as exc:
            raise CliError(
                f"{args.state_dir}: roster cannot be read ({type(exc).__name__})"
            ) from exc
        if roster is None:
            raise CliError(f"{args.state_dir}: no roster imported (run: phi-relay roster import)")
    if args.file == "-":
        scan_lines(sys.stdin, sys.stdout, roster)
        return EXIT_OK
    try:
        with open(args.file, encoding="utf-8", errors="replace") as fh:
            scan_lines(fh, sys.stdout, roster)
    except OSError as exc:
        raise CliError(f"{args.file}: cannot be read ({exc.strerror})") from exc
    return EXIT_OK
