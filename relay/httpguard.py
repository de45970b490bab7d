"""The HTTP listener's socket: a cap on connections, TLS, and a deadline for every handshake.

aiohttp alone accepts connections without limit and lets a half-sent request wait for
an hour, so a few hundred of them exhaust the process's descriptors and the SMTP
listener stops greeting. Here every accepted connection counts from accept to close,
a TLS handshake in progress included (TLS is set up here, on the counted connection,
rather than by the event loop before we see it). Over the cap a connection is closed at
once (with a `503` when it is plain HTTP). The handshake has the same deadline as the
request headers; aiohttp's keep-alive timer, which starts when the connection opens,
covers the headers and the idle time after.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
from asyncio import sslproto
from collections.abc import Callable
from typing import cast

from aiohttp import web

BUSY = (
    b"HTTP/1.1 503 Service Unavailable\r\nConnection: close\r\nContent-Length: 0\r\n"
    b"Retry-After: 5\r\n\r\n"
)


class _Connection(asyncio.Protocol):
    """One accepted connection, counted while it lives; aiohttp's protocol once ready."""

    def __init__(self, site: GuardedSite, make_inner: Callable[[], asyncio.Protocol]) -> None:
        self.site, self.make_inner = site, make_inner
        self.inner: asyncio.Protocol | None = None
        self.pending: list[bytes] = []
        self.eof = False
        # Under TLS, the socket's transport while the handshake runs.
        self.raw: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if self.raw is not None:
            # The TLS layer's transport: its handshake is done.
            self._attach(transport)
            return
        site = self.site
        # A stream server's transport, whichever loop made it (uvloop's do not derive from
        # asyncio.Transport, so no isinstance test here).
        stream = cast(asyncio.Transport, transport)
        if len(site.live) >= site.max_connections:
            if site.tls is None:
                stream.write(BUSY)
            stream.close()
            return
        site.live.add(self)
        if site.tls is None:
            self._attach(stream)
            return
        # The TLS layer takes the socket's bytes from the first one on, set up here rather
        # than by loop.start_tls in a task: uvloop reads once connection_made returns even
        # after a pause_reading in it, so a ClientHello could reach this protocol before
        # start_tls took over. The layer calls connection_made again when the handshake is
        # done, and gives up at the deadline. `sslproto.SSLProtocol` is looked up here, so
        # relay/tlsbuffers.py's shared read buffer applies.
        loop = asyncio.get_running_loop()
        waiter = loop.create_future()
        waiter.add_done_callback(self._handshake_ended)
        tls = sslproto.SSLProtocol(
            loop,
            self,
            site.tls,
            waiter,
            server_side=True,
            ssl_handshake_timeout=site.handshake_timeout,  # type: ignore[arg-type]  # seconds, a float
        )
        self.raw = stream
        stream.set_protocol(tls)
        tls.connection_made(stream)

    def _handshake_ended(self, waiter: asyncio.Future[None]) -> None:
        if self.inner is not None:
            return
        # Timed out, not TLS, a certificate the client refused, or the peer went away:
        # nothing to answer.
        self.site.live.discard(self)
        if not waiter.cancelled():
            waiter.exception()  # retrieved: the reason is not worth a log line
        if self.raw is not None:
            self.raw.abort()

    def _attach(self, transport: asyncio.BaseTransport) -> None:
        self.inner = self.make_inner()
        self.inner.connection_made(transport)
        # Bytes decrypted before start_tls returned belong to the first request.
        for data in self.pending:
            self.inner.data_received(data)
        self.pending.clear()
        if self.eof:
            self.inner.eof_received()

    def data_received(self, data: bytes) -> None:
        if self.inner is None:
            self.pending.append(data)
        else:
            self.inner.data_received(data)

    def eof_received(self) -> bool | None:
        if self.inner is None:
            self.eof = True
            return None
        return self.inner.eof_received()

    def pause_writing(self) -> None:
        if self.inner is not None:
            self.inner.pause_writing()

    def resume_writing(self) -> None:
        if self.inner is not None:
            self.inner.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        self.site.live.discard(self)
        if self.inner is not None:
            self.inner.connection_lost(exc)


class GuardedSite(web.BaseSite):
    """Like aiohttp's TCPSite, with `max_connections`, TLS set up per counted connection,
    and a handshake deadline."""

    def __init__(
        self,
        runner: web.BaseRunner,
        host: str,
        port: int,
        *,
        max_connections: int,
        handshake_timeout: float,
        ssl_context: ssl.SSLContext | None = None,
        sock: socket.socket | None = None,
    ) -> None:
        # aiohttp must not wrap the socket itself: the handshake happens on our connection.
        super().__init__(runner)
        self._host, self._port = host, port
        self.tls = ssl_context
        self.max_connections = max_connections
        self.handshake_timeout = handshake_timeout
        self.live: set[_Connection] = set()
        # A listening socket bound by the supervisor, shared by every worker process.
        self._sock = sock

    @property
    def name(self) -> str:
        scheme = "https" if self.tls else "http"
        return f"{scheme}://{self._host}:{self._port}"

    async def start(self) -> None:
        await super().start()
        server = self._runner.server
        assert server is not None

        def make() -> asyncio.Protocol:
            return _Connection(self, server)

        loop = asyncio.get_running_loop()
        if self._sock is not None:
            self._server = await loop.create_server(make, sock=self._sock)
        else:
            self._server = await loop.create_server(
                make, self._host, self._port, reuse_address=True
            )

    async def stop(self) -> None:
        for conn in list(self.live):
            if conn.raw is not None and conn.inner is None:  # still in its handshake
                conn.site.live.discard(conn)
                conn.raw.abort()
        await super().stop()
