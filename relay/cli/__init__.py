"""The `phi-relay` command: one subcommand module per area, each with `register()`.

Exit codes: 0 success (or message accepted), 1 refused / check failed, 2 usage or input error.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys
from collections.abc import Sequence

from relay import __version__, earlystop

EXIT_OK = 0
EXIT_REFUSED = 1
EXIT_USAGE = 2


class CliError(Exception):
    """A problem the user can fix; printed as one line, exit code 2."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="phi-relay", description="SMTP relay that enforces HIPAA email policy in transit."
    )
    parser.add_argument("--version", action="version", version=f"phi-relay {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for mod in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        module = importlib.import_module(f"{__name__}.{mod.name}")
        register = getattr(module, "register", None)
        if register is not None:
            register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    earlystop.arm()  # before the commands load: serve may be PID 1 (relay.earlystop)
    args: argparse.Namespace | None = None
    try:
        args = build_parser().parse_args(argv)
    finally:
        if args is None or args.command != "serve":
            earlystop.disarm()
    try:
        code: int = args.func(args)
    except CliError as exc:
        print(f"phi-relay {args.command}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130
    return code


if __name__ == "__main__":
    sys.exit(main())
