"""`phi-relay check MESSAGE.eml`: run the policies on a message without sending it."""

from __future__ import annotations

import argparse
import asyncio
import email.utils
from pathlib import Path
from typing import Any

from relay import headers, replies
from relay.cli import EXIT_OK, EXIT_REFUSED, CliError
from relay.cli.serve import load_config
from relay.consent import open_store
from relay.decide import Request, decide
from relay.message import SessionFacts, ShapeError, ShapeLimits, check_raw, parse
from relay.model import Action, Envelope, Peer, TlsInfo, Verdict
from relay.phi import default_detector
from relay.phi.roster import Roster
from relay.policy.base import ConfigError, PolicyDeps
from relay.rules import load as load_rules


def register(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "check",
        help="run the policies on a message without sending it",
        description="Exit 0 if the message would be accepted, 1 if refused, 2 on a usage "
        "or input error.",
    )
    p.add_argument("message", type=Path, help="message file (.eml)")
    p.add_argument("--mail-from", help="envelope sender (default: the From address)")
    p.add_argument("--rcpt", action="append", help="envelope recipient (default: To and Cc)")
    p.add_argument("--auth-user", help="authenticated user to assume (for category mapping)")
    p.add_argument("--config", type=Path, help="TOML configuration file")
    p.add_argument("--policy-file", help="policy file (default policies/default.toml)")
    p.add_argument("--state-dir", help="state directory (consent store, roster)")
    p.set_defaults(func=run)


def _addresses(block: headers.HeaderBlock, *names: str) -> list[str]:
    values = [v for n in names for v in block.values(n)]
    return [addr for _, addr in email.utils.getaddresses(values) if addr]


async def _check(args: argparse.Namespace) -> int:
    cfg = load_config(args).config
    try:
        raw = args.message.read_bytes()
    except OSError as exc:
        raise CliError(f"{args.message}: cannot be read ({exc.strerror})") from exc
    raw = raw.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    s = cfg.server
    limits = ShapeLimits(s.max_header_bytes, s.max_mime_depth, "normalise", s.max_received)
    store = await open_store(cfg.store_url)
    try:
        deps = PolicyDeps(
            policy_dir=cfg.policy_file.parent,
            state_dir=cfg.state_dir,
            detector=default_detector(Roster.load(cfg.state_dir)),
            store=store,
        )
        try:
            ruleset = load_rules(cfg.policy_file, deps)
        except ConfigError as exc:
            raise CliError(str(exc)) from exc
        try:
            block = parse(check_raw(raw, Envelope("", (), (), True), limits), limits).block
        except ShapeError as err:
            verdict = Verdict(
                rule="message", action=Action.REJECT, reason=err.reason, kinds=err.kinds
            )
            print(f"message\treject\t{err.reason}")
            print(f"decision: reject\t{replies.for_verdict(verdict)}")
            return EXIT_REFUSED
        sender = args.mail_from or next(iter(_addresses(block, "From")), "")
        rcpts = tuple(args.rcpt or _addresses(block, "To", "Cc"))
        if not rcpts:
            raise CliError("no recipients: pass --rcpt ADDRESS or give the message a To header")
        envelope = Envelope(sender, rcpts, (), True)
        facts = SessionFacts(
            "check", Peer("127.0.0.1", 0), TlsInfo("TLSv1.3", "check"), args.auth_user, True, False
        )
        # The very function `serve` runs, so `check` cannot disagree with the relay.
        decided = await decide(
            Request(raw, envelope, facts, "check"),
            ruleset,
            limits,
            policy_timeout=s.policy_timeout,
            mode=s.mode,
        )
    finally:
        await store.close()
    outcome = decided.outcome
    if decided.judged:
        print(f"category\t{decided.category}\t(from {decided.category_source})")
    for v in outcome.verdicts:
        detail = f" ({', '.join(v.kinds)})" if v.kinds else ""
        dropped = f"\tdrops {len(v.drop)} recipient(s)" if v.drop else ""
        print(f"{v.rule}\t{v.action.name.lower()}\t{v.reason or '-'}{detail}{dropped}")
    if outcome.deciding is not None:
        reply = replies.for_verdict(outcome.deciding, ruleset.categories.names())
        print(f"decision: {outcome.enforced.name.lower()}\t{reply}")
        return EXIT_REFUSED
    print(f"decision: accept\t{len(outcome.accepted)} of {len(rcpts)} recipient(s)")
    return EXIT_OK


def run(args: argparse.Namespace) -> int:
    return asyncio.run(_check(args))
