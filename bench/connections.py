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
import itertools
import re
import ssl
import sys
import tempfile
import time
import uuid
from pathlib import Path

import aiosmtplib

sys.path.insert(0, str(Path(__file__).resolve().parent))
from load import (
    SENDER,
    Sink,
    make_messages,
    make_pki,
    positive_int,
    process_cpu,
    start_relay,
    stop_relay,
)

WARM_UP = 100  # connections before the count starts (first handshakes, pool, caches)


async def one_connection(
    port: int, tls: ssl.SSLContext, timeout: float, message: tuple[str, bytes] | None = None
) -> None:
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
    if message is not None:
        rcpt, raw = message
        await client.sendmail(SENDER, [rcpt], raw)
    await client.quit()


_MESSAGE_ID = re.compile(rb"^Message-ID: <[^>]*>", re.M | re.I)
_sent = itertools.count()


def unique_id(raw: bytes) -> bytes:
    """`raw` with a Message-ID of its own, so the relay's dedup never suppresses a copy."""
    mid = f"Message-ID: <{next(_sent)}.{uuid.uuid4().hex}@clinic.example>".encode()
    return _MESSAGE_ID.sub(mid, raw, count=1)


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
        # --message: one of bench/load.py's messages on every connection (as load.py's
        # --per-session 1), each with its own Message-ID so dedup never suppresses one.
        messages = (
            make_messages(args.message_pool, args.body_bytes, 20261201) if args.message else []
        )
        refused = 0

        async def client() -> None:
            nonlocal left, refused
            while left > 0:
                left -= 1
                message = None
                if args.message:
                    rcpt, raw = messages[left % len(messages)]
                    message = rcpt, unique_id(raw)
                try:
                    await one_connection(port, tls, args.timeout, message)
                except aiosmtplib.SMTPResponseException as exc:
                    # A faker subject the subject detector reads as PHI now and then (550).
                    if exc.code != 550:
                        raise
                    refused += 1

        try:
            await asyncio.gather(*(client() for _ in range(min(5, args.concurrency))))
            left, refused = args.connections, 0
            received = sink.messages
            cpu0, start = process_cpu(proc.pid), time.monotonic()
            await asyncio.gather(*(client() for _ in range(args.concurrency)))
            cpu, seconds = process_cpu(proc.pid) - cpu0, time.monotonic() - start
        finally:
            await stop_relay(proc)
            await sink.stop()
        if args.message and sink.messages - received + refused < args.connections:
            print(f"the sink received {sink.messages - received} of {args.connections} messages")
            return 1
        print(
            f"{args.connections} connections{' with a message' if args.message else ''}, "
            f"{args.concurrency} at once: "
            f"{args.connections / seconds:.0f}/s, relay {cpu / args.connections * 1e3:.3f} ms "
            f"CPU per connection" + (f" ({refused} refused with 550)" if refused else ""),
            flush=True,
        )
        return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--connections", type=positive_int, default=2000, help="counted (2000)")
    p.add_argument("--concurrency", type=positive_int, default=10, help="at once (10)")
    p.add_argument("--workers", type=positive_int, default=1, help="the relay's --workers (1)")
    p.add_argument("--timeout", type=float, default=30.0, help="per SMTP command, seconds")
    p.add_argument("--message", action="store_true", help="send one message on every connection")
    p.add_argument("--body-bytes", type=positive_int, default=4600, help="with --message")
    p.add_argument(
        "--message-pool", type=positive_int, default=400, help="distinct messages made first"
    )
    return asyncio.run(run(p.parse_args(argv)))


if __name__ == "__main__":
    raise SystemExit(main())
