"""The relay's CPU per connection alone: connect, EHLO, STARTTLS, EHLO, QUIT, no message.

Run from the repository root (PYTHONPATH=<checkout> to measure another checkout):

    .venv/bin/python bench/connections.py --connections 2000 --concurrency 10

What `bench/load.py --per-session 1` pays per message on top of `--per-session 20`, without
the message: the accept, the greeting, both EHLOs, the STARTTLS switch and the TLS
handshake, QUIT and the TLS goodbye, the session's setup and teardown. Loopback only; the
relay runs as `python -m relay serve` (bench/load.py's start_relay) against bench/load.py's
sink, which never sees a message. Prints connections/s and relay CPU ms per connection
(its process tree, as bench/load.py counts it).
"""

from __future__ import annotations

import argparse
import asyncio
import ssl
import sys
import tempfile
import time
from pathlib import Path

import aiosmtplib

sys.path.insert(0, str(Path(__file__).resolve().parent))
from load import Sink, make_pki, positive_int, process_cpu, start_relay, stop_relay

WARM_UP = 100  # connections before the count starts (first handshakes, pool, caches)


async def one_connection(port: int, tls: ssl.SSLContext, timeout: float) -> None:
    client = aiosmtplib.SMTP(
        hostname="127.0.0.1",
        port=port,
        tls_context=tls,
        start_tls=False,
        timeout=timeout,
        local_hostname="client.bench",
    )
    await client.connect()
    await client.ehlo()
    await client.starttls()
    await client.ehlo()
    await client.quit()


async def run(args: argparse.Namespace) -> int:
    with tempfile.TemporaryDirectory(prefix="phi-relay-conn-") as name:
        tmp = Path(name)
        pki = make_pki(tmp)
        sink = await Sink(pki.server_context()).start()
        tls = pki.client_context()
        proc, port, _, _ = await start_relay(
            tmp, pki, sink.port, args.concurrency, None, args.workers
        )
        left = WARM_UP

        async def client() -> None:
            nonlocal left
            while left > 0:
                left -= 1
                await one_connection(port, tls, args.timeout)

        try:
            await asyncio.gather(*(client() for _ in range(min(5, args.concurrency))))
            left = args.connections
            cpu0, start = process_cpu(proc.pid), time.monotonic()
            await asyncio.gather(*(client() for _ in range(args.concurrency)))
            cpu, seconds = process_cpu(proc.pid) - cpu0, time.monotonic() - start
        finally:
            await stop_relay(proc)
            await sink.stop()
        print(
            f"{args.connections} connections, {args.concurrency} at once: "
            f"{args.connections / seconds:.0f}/s, relay {cpu / args.connections * 1e3:.3f} ms "
            "CPU per connection",
            flush=True,
        )
        return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--connections", type=positive_int, default=2000, help="counted (2000)")
    p.add_argument("--concurrency", type=positive_int, default=10, help="at once (10)")
    p.add_argument("--workers", type=positive_int, default=1, help="the relay's --workers (1)")
    p.add_argument("--timeout", type=float, default=30.0, help="per SMTP command, seconds")
    return asyncio.run(run(p.parse_args(argv)))


if __name__ == "__main__":
    raise SystemExit(main())
