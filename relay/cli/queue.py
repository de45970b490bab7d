"""`phi-relay queue list | flush | delete ID`: look at and act on the spool (spool.enabled)."""

from __future__ import annotations

import argparse
import time
from dataclasses import replace
from typing import Any

from relay.cli import EXIT_OK, CliError, loader
from relay.spool.store import Meta, Spool, SpoolError

EXIT_NOT_FOUND = 1


def register(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "queue",
        help="list, flush or delete messages in the spool",
        description=(
            "The spool (docs/spool.md) of the configuration serve loads. `list` shows each "
            "entry's id, its decision id (the one in the client's 250 Queued reply and the "
            "audit log), age, attempts, next retry and last status (never an address); "
            "`flush` makes every entry due now (a running relay sends them at its next "
            "scan); `delete ID` removes one entry without sending or bouncing it."
        ),
    )
    qsub = p.add_subparsers(dest="queue_command", metavar="ACTION", required=True)
    for name, helptext in (("list", "show the queue"), ("flush", "retry everything now")):
        q = qsub.add_parser(name, help=helptext)
        _common(q)
        q.set_defaults(func=run)
    d = qsub.add_parser("delete", help="remove one queued message")
    d.add_argument("id", metavar="ID", help="the entry id from `queue list`")
    _common(d)
    d.set_defaults(func=run)


def _common(p: argparse.ArgumentParser) -> None:
    loader.add_state_dir_argument(p)
    loader.add_config_argument(p)
    p.add_argument("--spool-dir", help="spool directory (default: spool.dir or STATE_DIR/spool)")


class _Folder(Spool):
    """The spool's files without its key: listing, flushing and deleting need none."""

    def __init__(self, folder: Any) -> None:
        self.folder = folder


def _spool(args: argparse.Namespace) -> _Folder:
    cfg = loader.load_admin(
        args,
        {
            "state_dir": ("--state-dir", args.state_dir),
            "spool.dir": ("--spool-dir", args.spool_dir),
        },
    )
    folder = cfg.spool_dir
    if not folder.is_dir():
        raise CliError(f"no spool at {folder}: is spool.enabled set, or give --spool-dir DIR")
    return _Folder(folder)


def _line(meta: Meta, now: float) -> str:
    due = "now" if meta.next_at <= now else f"in {int(meta.next_at - now)}s"
    return (
        f"{meta.id}  decision {meta.decision_id or '-'}  age {int(now - meta.created)}s  "
        f"attempts {meta.attempts}  "
        f"recipients {meta.recipients}  size {meta.size}  next {due}  "
        f"last {meta.last_status or '-'}" + ("  (a DSN to the sender)" if meta.dsn else "")
    )


def run(args: argparse.Namespace) -> int:
    spool = _spool(args)
    now = time.time()
    try:
        if args.queue_command == "list":
            metas = spool.metas()
            for meta in metas:
                print(_line(meta, now))
            print(f"{len(metas)} queued")
            return EXIT_OK
        if args.queue_command == "flush":
            metas, busy = spool.metas(), 0
            for meta in metas:
                lock = spool.lock(meta.id)
                if lock is None:  # being sent right now: it needs no flush
                    busy += 1
                    continue
                try:
                    spool.update(replace(meta, next_at=0.0))
                finally:
                    lock.close()
            print(f"{len(metas) - busy} made due now" + (f", {busy} being sent" if busy else ""))
            return EXIT_OK
        return _delete(spool, args.id)
    except SpoolError as exc:
        raise CliError(str(exc)) from exc


def _delete(spool: Spool, entry_id: str) -> int:
    lock = spool.lock(entry_id)
    if lock is None:
        if spool.meta_of(entry_id) is not None:
            raise CliError(f"{entry_id} is being sent right now; run `queue list` and try again")
        print(f"no queued message {entry_id}")
        return EXIT_NOT_FOUND
    try:
        spool.delete(entry_id)
    finally:
        lock.close()
    print(f"deleted {entry_id} (not sent, no bounce)")
    return EXIT_OK
