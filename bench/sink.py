"""The benchmarks' upstream: an aiosmtpd sink in its own process, counting and keeping nothing.

    python bench/sink.py --cert CERT --key KEY

Two loopback listeners: one that requires STARTTLS (for direct sends and for phi-relay,
which only speaks verified TLS upstream) and one plaintext (for Postfix, whose upstream
leg is plaintext in the anchor set-up). It prints its ports as one JSON line, then
answers one JSON line per command read from stdin: `stats` (messages, recipients, bytes,
sessions per listener) or `reset`. It exits when stdin closes.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import ssl
import sys

from aiosmtpd.smtp import SMTP, Envelope, Session


class Counts:
    def __init__(self) -> None:
        self.messages = 0
        self.recipients = 0
        self.bytes = 0
        self.sessions = {"tls": 0, "plain": 0}

    def as_dict(self) -> dict[str, object]:
        return {
            "messages": self.messages,
            "recipients": self.recipients,
            "bytes": self.bytes,
            "sessions": dict(self.sessions),
        }


class _Handler:
    def __init__(self, counts: Counts) -> None:
        self.counts = counts

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        self.counts.messages += 1
        self.counts.recipients += len(envelope.rcpt_tos)
        self.counts.bytes += len(envelope.original_content or b"")
        return "250 2.0.0 queued"


async def main_async(args: argparse.Namespace) -> None:
    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    tls.load_cert_chain(args.cert, args.key)
    counts = Counts()
    handler = _Handler(counts)

    def factory(kind: str) -> SMTP:
        counts.sessions[kind] += 1
        return SMTP(
            handler,
            hostname="sink.bench",
            tls_context=tls if kind == "tls" else None,
            require_starttls=kind == "tls",
            data_size_limit=64 * 1024 * 1024,
        )

    loop = asyncio.get_running_loop()
    tls_srv = await loop.create_server(lambda: factory("tls"), "127.0.0.1", 0, backlog=1024)
    plain_srv = await loop.create_server(lambda: factory("plain"), "127.0.0.1", 0, backlog=1024)
    ports = {
        "tls": tls_srv.sockets[0].getsockname()[1],
        "plain": plain_srv.sockets[0].getsockname()[1],
    }
    print(json.dumps(ports), flush=True)
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while line := await reader.readline():
        command = line.decode().strip()
        if command == "reset":
            counts.__init__()  # type: ignore[misc]
            print("{}", flush=True)
        elif command == "stats":
            print(json.dumps(counts.as_dict()), flush=True)
        else:
            print(json.dumps({"error": f"unknown command {command!r}"}), flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--cert", required=True)
    p.add_argument("--key", required=True)
    asyncio.run(main_async(p.parse_args()))


if __name__ == "__main__":
    main()
