"""A raw SMTP client for attack tests: exact bytes out, exact replies in, STARTTLS on demand.

Unlike smtplib or aiosmtplib it never normalises line endings, never dot-stuffs and
lets a test put several commands in one write, which is what the attacks need.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl

TIMEOUT = 15.0  # generous: a noisy 2-core CI machine, and every wait is bounded


class Closed(Exception):
    """The server closed the connection before a full reply arrived."""


class RawSmtp:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.banner = ""

    @classmethod
    async def connect(cls, port: int, host: str = "127.0.0.1", *, local: str = "") -> RawSmtp:
        """`local`: the source address (any 127.x.y.z works on Linux), to test per-network rules."""
        source = (local, 0) if local else None
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(host, port, local_addr=source), TIMEOUT
        )
        conn = cls(reader, writer)
        conn.banner = await conn.reply()
        return conn

    @classmethod
    async def ready(
        cls, port: int, tls: ssl.SSLContext, *, helo: str = "client.test", local: str = ""
    ) -> RawSmtp:
        """Connected, EHLO, STARTTLS, EHLO again: ready for MAIL."""
        conn = await cls.connect(port, local=local)
        assert conn.banner.startswith("220 "), conn.banner
        await conn.ehlo(helo)
        await conn.starttls(tls)
        await conn.ehlo(helo)
        return conn

    async def reply(self, timeout: float = TIMEOUT) -> str:
        """One (possibly multi-line) reply; returns its last line, e.g. '250 2.0.0 OK'."""
        lines = await self.reply_lines(timeout)
        return lines[-1]

    async def reply_lines(self, timeout: float = TIMEOUT) -> list[str]:
        lines: list[str] = []
        while True:
            raw = await asyncio.wait_for(self.reader.readline(), timeout)
            if not raw.endswith(b"\r\n"):
                raise Closed(raw.decode("utf-8", "replace"))
            line = raw[:-2].decode("utf-8", "replace")
            lines.append(line)
            if len(line) < 4 or line[3] != "-":
                return lines

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await asyncio.wait_for(self.writer.drain(), TIMEOUT)

    async def cmd(self, line: str | bytes, timeout: float = TIMEOUT) -> str:
        data = line.encode("utf-8") if isinstance(line, str) else line
        await self.send(data + b"\r\n")
        return await self.reply(timeout)

    async def ehlo(self, name: str = "client.test") -> list[str]:
        await self.send(f"EHLO {name}\r\n".encode())
        lines = await self.reply_lines()
        assert lines[-1].startswith("250"), lines
        return lines

    async def starttls(
        self, tls: ssl.SSLContext, *, pipelined: bytes = b"", server_hostname: str = "localhost"
    ) -> None:
        """STARTTLS, with `pipelined` bytes sent in the same packet (the CVE-2011-0411 attack)."""
        await self.send(b"STARTTLS\r\n" + pipelined)
        answer = await self.reply()
        assert answer == "220 2.0.0 Ready to start TLS", answer
        await asyncio.wait_for(self.writer.start_tls(tls, server_hostname=server_hostname), TIMEOUT)

    async def data(self, message: bytes, timeout: float = TIMEOUT) -> str:
        """DATA with `message` sent as is; the caller supplies the end marker."""
        answer = await self.cmd("DATA")
        assert answer.startswith("354 "), answer
        await self.send(message)
        return await self.reply(timeout)

    async def mail(
        self, sender: str, rcpts: list[str], message: bytes, *, timeout: float = TIMEOUT
    ) -> str:
        """A whole transaction, message bytes sent as is and terminated with CRLF.CRLF."""
        answer = await self.cmd(f"MAIL FROM:<{sender}>")
        assert answer == "250 2.1.0 Sender OK", answer
        for rcpt in rcpts:
            answer = await self.cmd(f"RCPT TO:<{rcpt}>")
            assert answer == "250 2.1.5 Recipient OK", answer
        return await self.data(message + b".\r\n", timeout)

    async def closed_by_server(self, timeout: float = TIMEOUT) -> bytes:
        """Everything the server still sends until it closes; fails if it never does."""
        return await asyncio.wait_for(self.reader.read(), timeout)

    async def close(self) -> None:
        self.writer.close()
        # The server may have gone first; closing is best effort.
        with contextlib.suppress(OSError, ssl.SSLError, TimeoutError):
            await asyncio.wait_for(self.writer.wait_closed(), 5)
