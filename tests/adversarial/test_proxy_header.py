"""PROXY protocol attacks over raw sockets: a header from an address that is not a listed
balancer (spoofing a trusted client), and a listed balancer that sends no header, a late
one or a malformed one. Each is refused with a reply that says why; none is ever trusted."""

from __future__ import annotations

import asyncio
import ipaddress
import struct
from pathlib import Path

import pytest

from relay.proxy import BAD_HEADER, NOT_LISTED
from tests.support.pki import Pki
from tests.support.rawsmtp import TIMEOUT, RawSmtp
from tests.support.relay import RunningRelay, start_relay
from tests.support.upstream import Sink

BALANCER = "127.0.0.2"
TRUSTED = "127.0.0.5"
V2_SIG = b"\r\n\r\n\x00\r\nQUIT\n"


def v1(src: str, sport: int = 40000) -> bytes:
    return f"PROXY TCP4 {src} 127.0.0.1 {sport} 25\r\n".encode()


def v2(src: str, sport: int = 40000, command: int = 0x21, family: int = 0x11) -> bytes:
    body = ipaddress.IPv4Address(src).packed + ipaddress.IPv4Address("127.0.0.1").packed
    body += struct.pack("!HH", sport, 25)
    return V2_SIG + bytes([command, family]) + struct.pack("!H", len(body)) + body


async def relay_behind_balancer(tmp_path: Path, pki: Pki, sink: Sink) -> RunningRelay:
    return await start_relay(
        tmp_path,
        pki,
        sink,
        server={
            "proxy_protocol_from": [f"{BALANCER}/32"],
            "trusted_networks": [f"{TRUSTED}/32"],
            "proxy_protocol_timeout": 0.5,
        },
    )


async def open_from(port: int, local: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.wait_for(
        asyncio.open_connection("127.0.0.1", port, local_addr=(local, 0)), TIMEOUT
    )


async def until_closed(reader: asyncio.StreamReader) -> bytes:
    return await asyncio.wait_for(reader.read(), TIMEOUT)


@pytest.mark.parametrize("header", [v1(TRUSTED), v2(TRUSTED)], ids=["v1", "v2"])
async def test_a_header_from_an_unlisted_address_is_refused_not_believed(
    tmp_path: Path, pki: Pki, sink: Sink, header: bytes
) -> None:
    r = await relay_behind_balancer(tmp_path, pki, sink)
    try:
        # 127.0.0.9 claims to speak for the trusted 127.0.0.5.
        conn = await RawSmtp.connect(r.port, local="127.0.0.9")
        assert conn.banner.startswith("220 "), conn.banner
        for piece in (header[:3], header[3:]):  # split: the check must not need one packet
            await conn.send(piece)
            await asyncio.sleep(0.05)
        rest = await conn.closed_by_server()
        await conn.close()
        assert rest == NOT_LISTED.encode() + b"\r\n"
        # Without the header the same address is an ordinary, untrusted client.
        plain = await RawSmtp.ready(r.port, pki.client_context(), local="127.0.0.9")
        assert await plain.cmd("MAIL FROM:<app@clinic.example>") == (
            "530 5.7.0 Authentication required"
        )
        await plain.close()
    finally:
        await r.stop()
    assert r.decisions() == []
    assert sink.received == []


@pytest.mark.parametrize(
    "sent",
    [
        b"EHLO client.test\r\n",  # no header at all: a client reaching the relay directly
        b"PROXY TCP4 999.0.0.1 127.0.0.1 40000 25\r\n",
        b"PROXY TCP4 127.0.0.5 127.0.0.1 040000 25\r\n",
        b"PROXY TCP6 127.0.0.5 127.0.0.1 40000 25\r\n",
        b"PROXY TCP4 127.0.0.5 127.0.0.1 40000 25 extra\r\n",
        b"PROXY " + b"9" * 200 + b"\r\n",
        v2(TRUSTED, family=0x12),  # UDP
        v2(TRUSTED, command=0x31),  # version 3
        V2_SIG + b"\x21\x11\x00\x0c\x7f\x00",  # truncated address block, then silence
        b"PROXY TCP4 127.0.0.5",  # no line end, then silence
        b"",  # silence
    ],
    ids=[
        "smtp",
        "bad-ip",
        "leading-zero-port",
        "family-mismatch",
        "extra-field",
        "overlong",
        "v2-udp",
        "v2-version",
        "v2-truncated",
        "v1-unterminated",
        "silence",
    ],
)
async def test_a_listed_balancer_without_a_good_header_is_refused(
    tmp_path: Path, pki: Pki, sink: Sink, sent: bytes
) -> None:
    r = await relay_behind_balancer(tmp_path, pki, sink)
    try:
        reader, writer = await open_from(r.port, BALANCER)
        writer.write(sent)
        await writer.drain()
        got = await until_closed(reader)
        await RawSmtp(reader, writer).close()
        # No greeting: the relay never spoke SMTP to an unknown client.
        assert got == BAD_HEADER.encode() + b"\r\n", got
        assert r.relay.shared is not None and not r.relay.shared.sessions
    finally:
        await r.stop()


async def test_good_headers_from_the_balancer_and_a_local_health_check(
    tmp_path: Path, pki: Pki, sink: Sink
) -> None:
    r = await relay_behind_balancer(tmp_path, pki, sink)
    try:
        for header, trusted in ((v1(TRUSTED), True), (v2(TRUSTED), True), (v2("127.0.0.9"), False)):
            reader, writer = await open_from(r.port, BALANCER)
            writer.write(header)
            conn = RawSmtp(reader, writer)
            assert (await conn.reply()).startswith("220 relay.test")
            await conn.ehlo()
            await conn.starttls(pki.client_context())
            await conn.ehlo()
            answer = await conn.cmd("MAIL FROM:<app@clinic.example>")
            assert answer == (
                "250 2.1.0 Sender OK" if trusted else "530 5.7.0 Authentication required"
            )
            await conn.close()
        # LOCAL (HAProxy's health checks): the balancer speaks for itself, and is not trusted.
        reader, writer = await open_from(r.port, BALANCER)
        writer.write(V2_SIG + b"\x20\x00\x00\x00")
        conn = RawSmtp(reader, writer)
        assert (await conn.reply()).startswith("220 relay.test")
        await conn.close()
    finally:
        await r.stop()
