"""`phi-relay consent grant|revoke|list|import`: manage recipients' written authorizations."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import TypeVar

from relay.address import AddressError
from relay.cli import EXIT_OK, EXIT_REFUSED, CliError, loader
from relay.consent import open_store
from relay.consent.api import Authorization, ConsentError, ConsentStore, StoreError, now
from relay.consent.csvio import CsvError, parse_date_arg, read_authorizations

T = TypeVar("T")


STORE_ENV = "PHI_RELAY_CONSENT_STORE"  # the consent_store setting, read by the shared loader


def add_store_argument(parser: argparse.ArgumentParser) -> None:
    """--store, --state-dir and --config: the store `serve` uses unless told otherwise."""
    parser.add_argument(
        "--store",
        metavar="URL",
        default=None,
        help=f"consent store URL (default: consent_store from --config or ${STORE_ENV}, "
        "else sqlite:///<state_dir>/consent.db)",
    )
    loader.add_state_dir_argument(parser)
    loader.add_config_argument(parser)


def store_url(args: argparse.Namespace) -> str:
    cfg = loader.load_admin(
        args,
        {
            "consent_store": ("--store", args.store),
            "state_dir": ("--state-dir", args.state_dir),
        },
    )
    return cfg.store_url


def with_store(args: argparse.Namespace, work: Callable[[ConsentStore], Awaitable[T]]) -> T:
    """Open the store, run `work`, close it; store and input errors become one-line CliErrors."""

    async def main() -> T:
        try:
            store = await open_store(store_url(args))
        except ValueError as exc:
            raise CliError(str(exc)) from None
        try:
            return await work(store)
        finally:
            await store.close()

    try:
        return asyncio.run(main())
    except StoreError as exc:
        raise CliError(str(exc)) from None
    except AddressError as exc:
        raise CliError(f"address: {exc}") from None
    except ConsentError as exc:
        raise CliError(str(exc)) from None


def fmt_time(value: datetime | None) -> str:
    return "-" if value is None else value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def statuses(rows: list[Authorization], at: datetime) -> list[str]:
    """Per row: current, expired, revoked, superseded (an older grant) or pending (future)."""
    newest: dict[tuple[str, str], int] = {}
    for index, row in enumerate(rows):
        if row.granted <= at:
            # Rows come ordered by grant time, so the last one seen is the newest.
            newest[(row.recipient, row.scope)] = index
    out = []
    for index, row in enumerate(rows):
        if row.granted > at:
            out.append("pending")
        elif row.revoked is not None and row.revoked <= at:
            out.append("revoked")
        elif newest[(row.recipient, row.scope)] != index:
            out.append("superseded")
        elif row.expires is not None and row.expires <= at:
            out.append("expired")
        else:
            out.append("current")
    return out


def _grant(args: argparse.Namespace) -> int:
    expires = None
    if args.expires is not None:
        try:
            expires = parse_date_arg(args.expires, "--expires")
        except ValueError as exc:
            raise CliError(str(exc)) from None
        if expires <= now():
            raise CliError("--expires: expected a date in the future")

    async def work(store: ConsentStore) -> Authorization:
        return await store.grant(
            args.address, args.scope, args.condition or (), args.form_ref, expires=expires
        )

    row = with_store(args, work)
    tags = ",".join(sorted(row.conditions)) or "-"
    print(f"granted\t{row.recipient}\t{row.scope}\t{tags}\t{fmt_time(row.expires)}")
    return EXIT_OK


def _revoke(args: argparse.Namespace) -> int:
    async def work(store: ConsentStore) -> int:
        return await store.revoke(args.address, args.scope)

    count = with_store(args, work)
    if count == 0:
        print(f"no unrevoked {args.scope} authorization for that address", file=sys.stderr)
        return EXIT_REFUSED
    print(f"revoked\t{count}")
    return EXIT_OK


def _list(args: argparse.Namespace) -> int:
    async def work(store: ConsentStore) -> list[Authorization]:
        return await store.list_authorizations(args.address)

    rows = with_store(args, work)
    for row, status in zip(rows, statuses(rows, now()), strict=True):
        fields = (
            row.recipient,
            row.scope,
            ",".join(sorted(row.conditions)) or "-",
            fmt_time(row.granted),
            fmt_time(row.expires),
            fmt_time(row.revoked),
            status,
            row.form_ref,
        )
        print("\t".join(fields))
    return EXIT_OK


def report_csv_error(exc: CsvError) -> int:
    for problem in exc.problems:
        print(problem, file=sys.stderr)
    if exc.total > len(exc.problems):
        print(f"... and {exc.total - len(exc.problems)} more", file=sys.stderr)
    print("nothing imported", file=sys.stderr)
    return EXIT_REFUSED


def open_csv(path: str) -> Path:
    file = Path(path)
    if not file.is_file():
        raise CliError(f"{path}: no such file")
    return file


def _import(args: argparse.Namespace) -> int:
    file = open_csv(args.file)
    try:
        rows = read_authorizations(file, now())
    except CsvError as exc:
        return report_csv_error(exc)

    async def work(store: ConsentStore) -> int:
        return await store.import_authorizations(rows)

    count = with_store(args, work)
    print(f"imported\t{count}")
    return EXIT_OK


LIST_COLUMNS = "recipient, scope, conditions, granted, expires, revoked, status, form_ref"


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "consent",
        help="grant, revoke, list or import recipients' marketing authorizations",
        description="Manage written authorizations (see docs/consent.md).",
    )
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)

    grant = sub.add_parser("grant", help="record a signed authorization")
    grant.add_argument("address")
    grant.add_argument("--scope", default="marketing", help="default: marketing")
    grant.add_argument(
        "--condition",
        action="append",
        metavar="TAG",
        help="a health condition the authorization covers (repeat for several)",
    )
    grant.add_argument(
        "--expires",
        metavar="YYYY-MM-DD",
        help="no longer valid from 00:00 UTC on this date",
    )
    grant.add_argument("--form-ref", required=True, help="reference to the signed form")
    add_store_argument(grant)
    grant.set_defaults(func=_grant)

    revoke = sub.add_parser("revoke", help="revoke an address's authorization")
    revoke.add_argument("address")
    revoke.add_argument("--scope", default="marketing", help="default: marketing")
    add_store_argument(revoke)
    revoke.set_defaults(func=_revoke)

    listing = sub.add_parser(
        "list",
        help="list authorizations (history included)",
        epilog=f"Tab-separated columns: {LIST_COLUMNS}.",
    )
    listing.add_argument("address", nargs="?")
    add_store_argument(listing)
    listing.set_defaults(func=_list)

    imp = sub.add_parser(
        "import",
        help="import a CSV file, all rows or none",
        epilog="Header row with columns: recipient, form_ref (required); scope, conditions"
        " (separated by ';'), granted, expires, revoked (YYYY-MM-DD or ISO 8601 with zone).",
    )
    imp.add_argument("file", metavar="FILE.csv")
    add_store_argument(imp)
    imp.set_defaults(func=_import)
