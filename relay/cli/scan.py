"""`phi-relay scan-subjects [FILE|-]`: judge subject lines, one per line, as the relay would.

Output per input line: `phi` when the relay would refuse or replace the subject,
else `clean`; then a TAB, the comma-separated finding kinds, a TAB and the
comma-separated rule ids (both empty when clean); with --json one JSON document
instead. Lines are raw header values: RFC 2047 words are decoded first and every
plausible reading is judged. Exit 1 when any subject is PHI, so a template lint in
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
from relay.phi.api import Judgement
from relay.phi.normalize import subject_texts
from relay.phi.roster import Roster


def register(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "scan-subjects",
        help="classify subject lines (one per line) as phi or clean",
        description="Prints 'phi' (the relay would refuse or replace it) or 'clean', a TAB,"
        " the finding kinds, a TAB and the rule ids for each input line."
        " Exit 0 when every subject is clean, 1 when any is PHI, 2 on a usage error.",
    )
    p.add_argument(
        "--json",
        action="store_true",
        help='one JSON document: {"subjects": N, "phi": M, "results": [{"line", "verdict",'
        ' "kinds", "rules"}]} (the subjects themselves are not repeated)',
    )
    p.add_argument("file", nargs="?", default="-", help="file of subjects, or - for stdin")
    p.add_argument("--state-dir", type=Path, help="state directory holding an imported roster")
    p.set_defaults(func=run)


def judge_line(line: str, roster: Roster | None = None) -> Judgement:
    """The relay's judgement of one raw subject value (every plausible reading)."""
    return default_detector(roster).judge(subject_texts(line.rstrip("\r\n")))


def format_line(judged: Judgement) -> str:
    """One output line (without the newline): verdict, kinds, rule ids."""
    verdict = "phi" if judged.phi else "clean"
    return f"{verdict}\t{','.join(judged.kinds)}\t{','.join(judged.rules)}"


def scan_lines(
    lines: TextIO, out: TextIO, roster: Roster | None = None, as_json: bool = False
) -> int:
    """Judge each line; returns how many were PHI."""
    results: list[dict[str, object]] = []
    phi = 0
    for number, line in enumerate(lines, start=1):
        judged = judge_line(line, roster)
        phi += judged.phi
        if as_json:
            verdict = "phi" if judged.phi else "clean"
            kinds, rules = list(judged.kinds), list(judged.rules)
            results.append({"line": number, "verdict": verdict, "kinds": kinds, "rules": rules})
        else:
            out.write(format_line(judged) + "\n")
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
