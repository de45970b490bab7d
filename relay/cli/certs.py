"""`phi-relay certs init`: create development certificates with the cryptography package."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from relay.certs import init_dev_certs
from relay.cli import EXIT_OK


def register(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser("certs", help="development certificates")
    csub = p.add_subparsers(dest="certs_command", metavar="ACTION", required=True)
    init = csub.add_parser("init", help="create certs/ca.crt, server.crt and server.key")
    init.add_argument("--dir", type=Path, default=Path("certs"))
    init.add_argument("--hostname", default="phi-relay.localdomain")
    init.add_argument("--force", action="store_true", help="replace existing certificates")
    init.set_defaults(func=run_init)


def run_init(args: argparse.Namespace) -> int:
    paths, created = init_dev_certs(args.dir, args.hostname, force=args.force)
    if created:
        print(f"created {paths.ca}, {paths.cert}, {paths.key} (development only; trust {paths.ca})")
    else:
        print(f"{paths.cert} and {paths.key} exist; use --force to replace them")
    return EXIT_OK
