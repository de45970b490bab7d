"""The HTTP listener's socket: a cap on connections and a deadline for every handshake.

aiohttp alone accepts connections without limit and lets a half-sent request wait for
an hour, so a few hundred of them exhaust the process's descriptors and the SMTP
listener stops greeting. Here every accepted connection counts (a TLS handshake in
progress too), connections over the cap get `503` and are closed at once, and the TLS
handshake has the same deadline as the request headers (aiohttp's keep-alive timer,
which starts when the connection opens, covers the headers and the idle time after).
"""

from __future__ import annotations

import asyncio
import ssl
import weakref
from collections.abc import Callable

from aiohttp import web

BUSY = (
    b"HTTP/1.1 503 Service Unavailable\r\nConnection: close\r\nContent-Length: 0\r\n"
    b"Retry-After: 5\r\n\r\n"
)


class _Busy(asyncio.Protocol):
    """Over the cap: say so and hang up."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if isinstance(transport, asyncio.WriteTransport):
            transport.write(BUSY)
        transport.close()


class _Counted(asyncio.Protocol):
    """aiohttp's protocol, counted while its connection lives."""

    def __init__(self, inner: asyncio.Protocol, live: weakref.WeakSet[_Counted]) -> None:
        self.inner, self.live = inner, live
        # Held weakly: a TLS handshake that fails never reaches connection_made or
        # connection_lost, and dropping this object is then the only sign it is gone.
        live.add(self)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.inner.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        self.inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self.inner.eof_received()

    def pause_writing(self) -> None:
        self.inner.pause_writing()

    def resume_writing(self) -> None:
        self.inner.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        self.live.discard(self)
        self.inner.connection_lost(exc)


class GuardedSite(web.BaseSite):
    """Like aiohttp's TCPSite, with `max_connections` and a TLS handshake deadline."""

    def __init__(
        self,
        runner: web.BaseRunner,
        host: str,
        port: int,
        *,
        max_connections: int,
        handshake_timeout: float,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        super().__init__(runner, ssl_context=ssl_context)
        self._host, self._port = host, port
        self.max_connections = max_connections
        self.handshake_timeout = handshake_timeout
        self.live: weakref.WeakSet[_Counted] = weakref.WeakSet()

    @property
    def name(self) -> str:
        scheme = "https" if self._ssl_context else "http"
        return f"{scheme}://{self._host}:{self._port}"

    def _factory(self, server: Callable[[], asyncio.Protocol]) -> Callable[[], asyncio.Protocol]:
        def make() -> asyncio.Protocol:
            if len(self.live) >= self.max_connections:
                return _Busy()
            return _Counted(server(), self.live)

        return make

    async def start(self) -> None:
        await super().start()
        server = self._runner.server
        assert server is not None
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            self._factory(server),
            self._host,
            self._port,
            ssl=self._ssl_context,
            ssl_handshake_timeout=self.handshake_timeout if self._ssl_context else None,
            reuse_address=True,
        )
