"""PROXY protocol (v1 text, v2 binary) from listed load balancers: the real client address.

The header is parsed by aiosmtpd's own parser (`aiosmtpd.proxy_protocol.get_proxy`);
this module adds what a relay needs around it: a header is required from a listed
balancer and refused from anyone else, reading it has a deadline, and only TCP over
IPv4 or IPv6 (or a v2 LOCAL health check, which keeps the balancer's own address)
is accepted.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from aiosmtpd.proxy_protocol import AF, PROTO, V2_CMD, V2_SIGNATURE, get_proxy

V1_SIGNATURE = b"PROXY "
# Enough bytes to tell a PROXY header from an SMTP command or a TLS ClientHello.
SNIFF_BYTES = len(V2_SIGNATURE)

NOT_LISTED = (
    "554 5.7.0 PROXY protocol header refused: this address is not a listed load balancer "
    "(server.proxy_protocol_from)"
)
BAD_HEADER = (
    "554 5.5.0 PROXY protocol header missing or malformed; connections from a load balancer "
    "must start with a PROXY v1 or v2 header (send-proxy / send-proxy-v2)"
)


@dataclass(frozen=True, slots=True)
class Origin:
    """The client behind the balancer (or the balancer itself for a LOCAL health check)."""

    host: str
    port: int
    version: int


def sniff(first: bytes) -> bool | None:
    """Whether the first bytes of a connection are a PROXY header; None: not enough yet."""
    for signature in (V1_SIGNATURE, V2_SIGNATURE):
        n = min(len(first), len(signature))
        if first[:n] == signature[:n]:
            if n == len(signature):
                return True
            return None if len(first) < len(signature) else False
    return False


async def read_header(
    reader: asyncio.StreamReader, timeout: float, balancer: tuple[str, int]
) -> Origin | None:
    """The header's source address, or None for a missing, late or malformed header."""
    try:
        async with asyncio.timeout(timeout):
            data = await get_proxy(reader)
    except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
        return None
    except (ConnectionError, ValueError):
        return None
    if not data.valid or data.version is None:
        return None
    if data.version == 2 and data.command == V2_CMD.LOCAL:
        return Origin(balancer[0], balancer[1], 2)
    if data.family == AF.UNSPEC and data.version == 1:
        # "PROXY UNKNOWN": the balancer could not tell; it is then the client.
        return Origin(balancer[0], balancer[1], 1)
    if data.family not in (AF.INET, AF.INET6) or data.protocol != PROTO.STREAM:
        return None
    if data.src_addr is None or data.src_port is None:
        return None
    return Origin(str(data.src_addr), int(data.src_port), data.version)
