"""`phi-relay user add`: add an AUTH user, password read from stdin and stored hashed."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from relay.cli import EXIT_OK, CliError, loader
from relay.users import UsersFileError, add_user


def register(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser("user", help="AUTH users")
    usub = p.add_subparsers(dest="user_command", metavar="ACTION", required=True)
    add = usub.add_parser("add", help="add or replace a user")
    add.add_argument(
        "--users-file",
        type=Path,
        help="default: server.users_file from --config or $PHI_RELAY_SERVER_USERS_FILE",
    )
    loader.add_config_argument(add)
    add.add_argument("name")
    add.add_argument(
        "--password-stdin", action="store_true", required=True, help="read the password from stdin"
    )
    add.set_defaults(func=run_add)


def run_add(args: argparse.Namespace) -> int:
    cfg = loader.load_admin(args, {"server.users_file": ("--users-file", args.users_file)})
    users_file = cfg.server.users_file
    if users_file is None:
        raise CliError(
            "no users file: give --users-file FILE, or set server.users_file in --config "
            "or $PHI_RELAY_SERVER_USERS_FILE (serve reads the same one)"
        )
    password = sys.stdin.readline().rstrip("\r\n")
    if not password:
        raise CliError("no password on standard input")
    try:
        replaced = add_user(users_file, args.name, password)
    except UsersFileError as exc:
        raise CliError(str(exc)) from exc
    except OSError as exc:
        raise CliError(f"{users_file}: cannot be written ({exc.strerror})") from exc
    print(f"{'replaced' if replaced else 'added'} user {args.name} in {users_file}")
    return EXIT_OK
