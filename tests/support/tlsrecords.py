"""An SMTP client that counts the TLS records the server sends: one record per write.

It runs TLS itself (an `ssl.SSLObject` over memory BIOs on a plain asyncio stream), so it
sees the raw bytes and can split them into records before decrypting: a test can tell
how many writes the server made for a reply.
"""

from __future__ import annotations

import asyncio
import ssl

from tests.support.rawsmtp import TIMEOUT, Closed, RawSmtp

APPLICATION_DATA = 23  # the record type that carries every TLS 1.3 record after the hello


class CountingTls:
    def __init__(self, conn: RawSmtp, tls: ssl.SSLContext, server_hostname: str) -> None:
        self.reader, self.writer = conn.reader, conn.writer
        self.incoming, self.outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.obj = tls.wrap_bio(self.incoming, self.outgoing, server_hostname=server_hostname)
        self.raw = b""  # received bytes not yet split into whole records
        self.records = 0  # application-data records received
        self.plain = b""  # decrypted, not yet returned as reply lines

    @classmethod
    async def ready(cls, port: int, tls: ssl.SSLContext) -> CountingTls:
        """Connected, EHLO, STARTTLS, handshake, EHLO and a NOOP (so the server's session
        tickets are in): the record count starts at 0 here."""
        conn = await RawSmtp.connect(port)
        await conn.ehlo()
        await conn.send(b"STARTTLS\r\n")
        assert await conn.reply() == "220 2.0.0 Ready to start TLS"
        self = cls(conn, tls, "localhost")
        await self._handshake()
        await self.send(b"EHLO client.test\r\n")
        await self.reply_lines()
        await self.send(b"NOOP\r\n")
        assert await self.reply_lines() == ["250 2.0.0 OK"]
        self.records = 0
        return self

    async def _handshake(self) -> None:
        while True:
            try:
                self.obj.do_handshake()
                break
            except ssl.SSLWantReadError:
                await self._flush()
                await self._receive()
        await self._flush()

    async def _flush(self) -> None:
        data = self.outgoing.read()
        if data:
            self.writer.write(data)
            await asyncio.wait_for(self.writer.drain(), TIMEOUT)

    async def _receive(self) -> None:
        data = await asyncio.wait_for(self.reader.read(65536), TIMEOUT)
        if not data:
            raise Closed("connection closed")
        self.raw += data
        while len(self.raw) >= 5:
            end = 5 + int.from_bytes(self.raw[3:5], "big")
            if len(self.raw) < end:
                break
            self.records += self.raw[0] == APPLICATION_DATA
            self.raw = self.raw[end:]
        self.incoming.write(data)

    async def send(self, data: bytes) -> None:
        """`data` in one TLS record (one write), as a pipelining client sends a group."""
        self.obj.write(data)
        await self._flush()

    async def reply_lines(self) -> list[str]:
        """The lines of one whole reply (up to its last line)."""
        lines: list[str] = []
        while True:
            while b"\r\n" not in self.plain:
                try:
                    self.plain += self.obj.read(65536)
                except ssl.SSLWantReadError:
                    await self._receive()
            raw, self.plain = self.plain.split(b"\r\n", 1)
            line = raw.decode()
            lines.append(line)
            if len(line) < 4 or line[3] != "-":
                return lines

    async def close(self) -> None:
        self.writer.close()
