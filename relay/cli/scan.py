"""`phi-relay scan-subjects [FILE|-]`: classify subject lines, one per line, as phi or clean.

Output per input line: `phi` or `clean`, a TAB, the comma-separated finding kinds
(empty when clean); with --json one JSON document instead. Lines are raw header values:
RFC 2047 words are decoded first. Exit 1 when any subject is PHI, so a template lint in
CI fails on it.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, TextIO

from relay.cli import EXIT_OK, EXIT_REFUSED, CliError
from relay.phi import default_detector
from relay.phi.normalize import subject_text
from relay.phi.roster import Roster


def register(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "scan-subjects",
        help="classify subject lines (one per line) as phi or clean",
        description="Prints 'phi' or 'clean', a TAB and the finding kinds for each input line."
        " Exit 0 when every subject is clean, 1 when any is PHI, 2 on a usage error.",
    )
    p.add_argument(
        "--json",
        action="store_true",
        help='one JSON document: {"subjects": N, "phi": M, "results": [{"line", "verdict",'
        ' "kinds"}]} (the subjects themselves are not repeated)',
    )
    p.add_argument("file", nargs="?", default="-", help="file of subjects, or - for stdin")
    p.add_argument("--state-dir", type=Path, help="state directory holding an imported roster")
    p.set_defaults(func=run)


def scan_lines(
    lines: TextIO, out: TextIO, roster: Roster | None = None, as_json: bool = False
) -> int:
    """Classify each line; returns how many were PHI."""
    detector = default_detector(roster)
    results: list[dict[str, object]] = []
    phi = 0
    for number, line in enumerate(lines, start=1):
        text = subject_text(line.rstrip("\r\n"))
        found = sorted({f.kind for f in detector.scan(text)})
        phi += bool(found)
        verdict = "phi" if found else "clean"
        if as_json:
            results.append({"line": number, "verdict": verdict, "kinds": found})
        else:
            out.write(f"{verdict}\t{','.join(found)}\n")
    if as_json:
        json.dump({"subjects": len(results), "phi": phi, "results": results}, out)
        out.write("\n")
    return phi


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
        phi = scan_lines(sys.stdin, sys.stdout, roster, args.json)
    else:
        try:
            with open(args.file, encoding="utf-8", errors="replace") as fh:
                phi = scan_lines(fh, sys.stdout, roster, args.json)
        except OSError as exc:
            raise CliError(f"{args.file}: cannot be read ({exc.strerror})") from exc
    return EXIT_REFUSED if phi else EXIT_OK
