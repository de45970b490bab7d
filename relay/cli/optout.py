"""`phi-relay optout add|remove|list|import`: manage recipients' opt-outs by hand or in bulk."""

from __future__ import annotations

import argparse
import sys

from relay.category import builtin
from relay.cli import EXIT_OK, EXIT_REFUSED, CliError
from relay.cli.consent import (
    add_store_argument,
    fmt_time,
    open_csv,
    report_csv_error,
    with_store,
)
from relay.consent.api import ALL, ConsentStore, OptOut, now
from relay.consent.csvio import CsvError, read_optouts


def check_category(name: str) -> None:
    """Only categories the relay knows, or "all": a typo would otherwise suppress nothing."""
    known = sorted(builtin())
    if name != ALL and name not in known:
        raise ValueError(f"expected all or one of {', '.join(known)}")


def _category(args: argparse.Namespace) -> str:
    category: str = args.category.strip().lower()
    try:
        check_category(category)
    except ValueError as exc:
        raise CliError(f"--category: {exc}") from None
    return category


def _add(args: argparse.Namespace) -> int:
    category = _category(args)

    async def work(store: ConsentStore) -> None:
        await store.add_optout(args.address, category, "admin")

    with_store(args, work)
    print(f"opted-out\t{category}")
    return EXIT_OK


def _remove(args: argparse.Namespace) -> int:
    category = None if args.category is None else _category(args)

    async def work(store: ConsentStore) -> int:
        return await store.remove_optout(args.address, category)

    count = with_store(args, work)
    if count == 0:
        print("no active opt-out for that address", file=sys.stderr)
        return EXIT_REFUSED
    print(f"removed\t{count}")
    return EXIT_OK


def _list(args: argparse.Namespace) -> int:
    async def work(store: ConsentStore) -> list[OptOut]:
        return await store.list_optouts(args.address, include_removed=args.all)

    for row in with_store(args, work):
        fields = (
            row.recipient,
            row.category,
            fmt_time(row.when),
            row.source,
            fmt_time(row.removed),
        )
        print("\t".join(fields))
    return EXIT_OK


def _import(args: argparse.Namespace) -> int:
    file = open_csv(args.file)
    try:
        rows = read_optouts(file, now(), check_category)
    except CsvError as exc:
        return report_csv_error(exc)

    async def work(store: ConsentStore) -> int:
        return await store.import_optouts(rows)

    added = with_store(args, work)
    print(f"imported\t{added}\t(already opted out: {len(rows) - added})")
    return EXIT_OK


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "optout",
        help="add, remove, list or import opt-outs",
        description="Manage opt-outs (see docs/consent.md).",
    )
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)

    add = sub.add_parser("add", help="record an opt-out (source: admin)")
    add.add_argument("address")
    add.add_argument("--category", default=ALL, help="a category name, or all (the default)")
    add_store_argument(add)
    add.set_defaults(func=_add)

    remove = sub.add_parser("remove", help="lift an opt-out (kept in the history)")
    remove.add_argument("address")
    remove.add_argument(
        "--category", default=None, help="only this category (default: every opt-out)"
    )
    add_store_argument(remove)
    remove.set_defaults(func=_remove)

    listing = sub.add_parser(
        "list",
        help="list active opt-outs",
        epilog="Tab-separated columns: recipient, category, when, source, removed.",
    )
    listing.add_argument("address", nargs="?")
    listing.add_argument("--all", action="store_true", help="include lifted opt-outs")
    add_store_argument(listing)
    listing.set_defaults(func=_list)

    imp = sub.add_parser(
        "import",
        help="import a CSV file, all rows or none (source: import)",
        epilog="Header row with columns: recipient (required); category (default all),"
        " when (YYYY-MM-DD or ISO 8601 with zone; default now).",
    )
    imp.add_argument("file", metavar="FILE.csv")
    add_store_argument(imp)
    imp.set_defaults(func=_import)
