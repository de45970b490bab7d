"""The relay's CPU while idle: what its timers, polling and housekeeping cost with no load.

Run from the repository root (PYTHONPATH=<checkout> to measure another checkout):

    .venv/bin/python bench/idle.py --seconds 10
    .venv/bin/python bench/idle.py --seconds 10 --workers 1 --warm 200

Starts `python -m relay serve` (bench/load.py's start_relay, its shipped settings) against
bench/load.py's sink, sends `--warm` messages over new STARTTLS connections (so the
upstream pool holds connections and every lazy part has started, as after traffic), waits
`--settle` seconds, then counts the CPU of each process of the relay's tree over
`--seconds` of no load. At one client the relay carries ~130 messages/s, so background
CPU of X ms/s adds X/130 ms to every message's CPU. Loopback only.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys
import tempfile
import time
from pathlib import Path

import aiosmtplib

sys.path.insert(0, str(Path(__file__).resolve().parent))
from load import (
    SENDER,
    Sink,
    make_messages,
    make_pki,
    positive_int,
    proc_stats,
    start_relay,
    stop_relay,
)

CLK = os.sysconf("SC_CLK_TCK")


def tree(pid: int) -> dict[int, tuple[str, int]]:
    """pid -> (short command line, utime+stime ticks) for `pid` and its descendants."""
    stats = proc_stats()
    out: dict[int, tuple[str, int]] = {}
    todo = [pid]
    while todo:
        p = todo.pop()
        fields = stats.get(p)
        if fields is None:
            continue
        with contextlib.suppress(OSError):
            argv = Path(f"/proc/{p}/cmdline").read_bytes().split(b"\0")
            name = " ".join(a.decode(errors="replace") for a in argv[1:4])
        out[p] = (name, int(fields[11]) + int(fields[12]))
        todo.extend(q for q, f in stats.items() if int(f[1]) == p)
    return out


async def run(args: argparse.Namespace) -> int:
    with tempfile.TemporaryDirectory(prefix="phi-relay-idle-") as name:
        tmp = Path(name)
        pki = make_pki(tmp)
        sink = await Sink(pki.server_context()).start()
        proc, port, _, _ = await start_relay(tmp, pki, sink.port, 10, None, args.workers)
        try:
            tls = pki.client_context()
            for rcpt, raw in make_messages(args.warm, 4600, 20261201):
                client = aiosmtplib.SMTP(
                    hostname="127.0.0.1", port=port, tls_context=tls, start_tls=True
                )
                await client.connect()
                await client.sendmail(SENDER, [rcpt], raw)
                await client.quit()
            await asyncio.sleep(args.settle)
            before, start = tree(proc.pid), time.monotonic()
            await asyncio.sleep(args.seconds)
            after, seconds = tree(proc.pid), time.monotonic() - start
        finally:
            await stop_relay(proc)
            await sink.stop()
        total = 0
        for pid, (cmd, ticks) in sorted(after.items()):
            used = ticks - before.get(pid, (cmd, 0))[1]
            total += used
            print(f"  pid {pid:>7} {cmd[:60]:<60} {used / CLK * 1e3 / seconds:7.2f} ms/s")
        ms = total / CLK * 1e3 / seconds
        print(
            f"idle {seconds:.1f} s after {args.warm} messages: relay tree {ms:.2f} ms CPU per s "
            f"(= {ms / 130:.3f} ms per message at 130 msgs/s)",
            flush=True,
        )
        return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--seconds", type=float, default=10.0, help="idle time counted (10)")
    p.add_argument("--settle", type=float, default=2.0, help="wait after the warm-up (2)")
    p.add_argument("--warm", type=int, default=50, help="messages sent first (50)")
    p.add_argument("--workers", type=positive_int, default=None, help="the relay's --workers")
    return asyncio.run(run(p.parse_args(argv)))


if __name__ == "__main__":
    raise SystemExit(main())
