"""`phi-relay init [DIR]`: write an editable config file, policy file and footer templates."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from relay import init
from relay.cli import EXIT_OK, CliError


def register(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "init",
        help="write a config file, policy file and footer templates to edit",
        description=(
            f"Writes DIR/{init.CONFIG_NAME} (every setting, commented, with its default) and "
            "DIR/policies/ (the shipped policy file and footer templates) and, unless "
            "present, development certificates in DIR/certs/ (replace them for production)."
        ),
    )
    p.add_argument("dir", nargs="?", type=Path, default=Path("."), metavar="DIR")
    p.add_argument("--force", action="store_true", help="replace files that exist")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    try:
        written = init.write(args.dir, force=args.force)
        cert, created = init.dev_certs(args.dir)
    except init.InitError as exc:
        raise CliError(str(exc)) from exc
    for path in written:
        print(f"wrote {path}")
    if created:
        print(f"wrote {cert} (development certificates; clients trust {cert.with_name('ca.crt')})")
    else:
        print(f"kept {cert}")
    print(f"next: phi-relay policy check {written[1]}")
    print(f"      phi-relay serve --config {written[0]}")
    return EXIT_OK
