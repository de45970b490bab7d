"""Inline decision vs. a worker process, by message size: where the worker starts to pay.

    .venv/bin/python bench/decide.py [--rounds 30] [--body-phi]

Builds the shipped policies (plus body-phi with --body-phi) over a temporary state
directory, then times `relay.decide.decide` in this process and the same request
through `relay.worker.Pool` (one warm worker), for plain-text messages of growing
size. The inline time is also how long the event loop is held. The default
`server.inline_max_bytes` comes from this table: the largest size whose inline time
stays well under the ~100 ms stall budget while costing less than the round trip.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from relay import rules
from relay.consent import open_store
from relay.decide import Request, decide
from relay.message import SessionFacts, ShapeLimits
from relay.model import Envelope, Peer, TlsInfo
from relay.phi import default_detector
from relay.policy.base import PolicyDeps
from relay.worker import Pool, Spec

ROOT = Path(__file__).resolve().parents[1]
SIZES = (1_000, 4_000, 16_000, 32_000, 64_000, 256_000, 1_000_000)
LINE = b"Dear patient, your visit on Monday went well. Call the front desk or reply.\r\n"


def message(size: int) -> bytes:
    head = (
        b"From: app@clinic.example\r\nTo: someone@example.org\r\n"
        b"Subject: Our new Saturday hours\r\nMessage-ID: <bench@clinic.example>\r\n\r\n"
    )
    return head + LINE * max(1, (size - len(head)) // len(LINE))


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--body-phi", action="store_true", help="add body-phi to the pipeline")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp)
        shutil.copytree(ROOT / "policies", home / "policies")
        policy = home / "policies" / "default.toml"
        if args.body_phi:
            policy.write_text(policy.read_text().replace('# "body-phi",', '"body-phi",', 1))
        state = home / "state"
        state.mkdir()
        url = f"sqlite:///{state / 'consent.db'}"
        store = await open_store(url)
        deps = PolicyDeps(home / "policies", state, detector=default_detector(), store=store)
        ruleset = rules.load(policy, deps)
        limits = ShapeLimits(64 * 1024, 100, "refuse", 50)
        spec = Spec(policy, ruleset.digest, state, url, limits, 10.0, "enforce")
        facts = SessionFacts(
            "bench", Peer("127.0.0.1", 0), TlsInfo("TLSv1.3", "x"), None, True, False
        )
        envelope = Envelope("app@clinic.example", ("someone@example.org",))
        pool = Pool(1)
        started = time.monotonic()
        await pool.decide(spec, Request(message(1000), envelope, facts, "warm"), 60)
        print(f"worker start (spawn, imports, rules): {time.monotonic() - started:.2f} s")
        print(f"{'size':>10} {'inline ms':>10} {'worker ms':>10}  cheaper")
        for size in SIZES:
            request = Request(message(size), envelope, facts, "bench")
            inline, worker = [], []
            for _ in range(args.rounds):
                t = time.perf_counter()
                await decide(request, ruleset, limits, policy_timeout=10.0, mode="enforce")
                inline.append(time.perf_counter() - t)
                t = time.perf_counter()
                await pool.decide(spec, request, 60)
                worker.append(time.perf_counter() - t)
            a, b = statistics.median(inline) * 1000, statistics.median(worker) * 1000
            print(f"{size:>10} {a:>10.2f} {b:>10.2f}  {'inline' if a <= b else 'worker'}")
        await pool.close()
        await store.close()


if __name__ == "__main__":
    asyncio.run(main())
