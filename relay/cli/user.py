"""`phi-relay user add`: add an AUTH user, password read from stdin and stored hashed."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from relay.cli import EXIT_OK, CliError
from relay.users import UsersFileError, add_user


def register(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser("user", help="AUTH users")
    usub = p.add_subparsers(dest="user_command", metavar="ACTION", required=True)
    add = usub.add_parser("add", help="add or replace a user")
    add.add_argument("--users-file", type=Path, required=True)
    add.add_argument("name")
    add.add_argument(
        "--password-stdin", action="store_true", required=True, help="read the password from stdin"
    )
    add.set_defaults(func=run_add)


def run_add(args: argparse.Namespace) -> int:
    password = sys.stdin.readline().rstrip("\r\n")
    if not password:
        raise CliError("no password on standard input")
    try:
        replaced = add_user(args.users_file, args.name, password)
    except UsersFileError as exc:
        raise CliError(str(exc)) from exc
    except OSError as exc:
        raise CliError(f"{args.users_file}: cannot be written ({exc.strerror})") from exc
    print(f"{'replaced' if replaced else 'added'} user {args.name} in {args.users_file}")
    return EXIT_OK
