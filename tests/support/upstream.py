"""A real upstream SMTP server for tests: aiosmtpd over STARTTLS or implicit TLS, recording mail.

Knobs let a test make it refuse recipients, drop STARTTLS, present a rogue certificate,
answer 421 or reset the connection at a chosen stage, or stall.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from email import message_from_bytes, policy
from email.message import EmailMessage
from typing import Any, ClassVar

from aiosmtpd.smtp import SMTP, Envelope, Session


@dataclass
class Received:
    mail_from: str
    rcpt_tos: list[str]
    data: bytes
    # MAIL and RCPT parameters exactly as sent (with Sink(extensions=...) only).
    mail_params: str = ""
    rcpt_params: list[str] = field(default_factory=list)
    # Which upstream session carried it, and the extra extensions that session offered.
    session: int = 0
    offered: tuple[str, ...] = ()

    @property
    def message(self) -> EmailMessage:
        msg = message_from_bytes(self.data, policy=policy.default)
        assert isinstance(msg, EmailMessage)
        return msg


@dataclass
class Faults:
    refuse_rcpt: dict[str, str] = field(default_factory=dict)  # address -> full reply
    data_reply: str | None = None  # e.g. "451 4.3.0 try later" instead of 250
    reset_at: str | None = None  # "MAIL" | "RCPT" | "DATA" (after the message, before reply)
    reset_skip: int = 0  # times `reset_at` passes untouched first (the 2nd RCPT: 1)
    stall_at: str | None = None  # stage to hang at (a timeout for the relay)
    stall_seconds: float = 30.0
    reply_421_at: str | None = None
    data_reply_for: dict[str, str] = field(default_factory=dict)  # rcpt -> DATA reply instead
    # The ambiguous window: keep the message, then drop the connection before replying.
    lose_reply_after_accept: bool = False
    rcpt_replies: list[str] = field(default_factory=list)  # for successive RCPTs; "" = normal
    # Awaited once the message is kept, before the 250: what happens at the moment the
    # upstream has accepted (a test takes a lock, or holds the reply back).
    on_accept: Callable[[], Awaitable[None]] | None = None


class _Handler:
    def __init__(self, sink: Sink, faults: Faults | None = None, number: int = 0) -> None:
        self.sink = sink
        self.own_faults = faults  # this session's faults (Sink.session_faults), else the sink's
        self.number = number  # which upstream session (1, 2, ...), for Sink.commands

    def _log(self, verb: str) -> None:
        self.sink.commands.append((self.number, verb))

    async def handle_RSET(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        self._log("RSET")
        return "250 OK"

    async def handle_NOOP(
        self, server: SMTP, session: Session, envelope: Envelope, arg: str
    ) -> str:
        self._log("NOOP")
        return "250 OK"

    async def handle_QUIT(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        self._log("QUIT")
        return "221 Bye"

    @property
    def faults(self) -> Faults:
        return self.own_faults if self.own_faults is not None else self.sink.faults

    async def _fault(self, server: SMTP, stage: str) -> str | None:
        f = self.faults
        if f.stall_at == stage:
            await asyncio.sleep(f.stall_seconds)
        if f.reset_at == stage and f.reset_skip > 0:
            f.reset_skip -= 1
        elif f.reset_at == stage:
            assert isinstance(server.transport, asyncio.Transport)
            server.transport.abort()
            return "421 4.4.2 reset"  # never seen: the connection is gone
        if f.reply_421_at == stage:
            return "421 4.3.2 Service not available, closing channel"
        return None

    async def handle_MAIL(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        self._log("MAIL")
        fault = await self._fault(server, "MAIL")
        if fault:
            return fault
        envelope.mail_from = address
        envelope.mail_options.extend(options)
        return "250 2.1.0 OK"

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        fault = await self._fault(server, "RCPT")
        if fault:
            return fault
        if address in self.faults.refuse_rcpt:
            return self.faults.refuse_rcpt[address]
        if self.faults.rcpt_replies:
            scripted = self.faults.rcpt_replies.pop(0)
            if scripted:
                return scripted
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        self._log("DATA")
        fault = await self._fault(server, "DATA")
        if fault:
            return fault
        if self.faults.data_reply:
            return self.faults.data_reply
        for rcpt in envelope.rcpt_tos:
            if rcpt in self.faults.data_reply_for:
                return self.faults.data_reply_for[rcpt]
        data = envelope.original_content or b""
        params = getattr(server, "params", [])
        self.sink.received.append(
            Received(
                envelope.mail_from or "",
                list(envelope.rcpt_tos),
                data,
                params[0] if params else "",
                params[1:],
                self.number,
                getattr(self, "offered", ()),
            )
        )
        self.sink.event.set()
        if self.faults.on_accept is not None:
            await self.faults.on_accept()
        if self.faults.lose_reply_after_accept:
            assert isinstance(server.transport, asyncio.Transport)
            server.transport.abort()
            return "250 2.0.0 queued"  # never seen: the connection is gone
        return "250 2.0.0 queued"


class _CountedSMTP(SMTP):
    def __init__(self, sink: Sink, handler: _Handler, **kwargs: Any) -> None:
        super().__init__(handler, **kwargs)
        self.sink = sink
        self.counted = True

    def connection_lost(self, exc: Exception | None) -> None:
        if self.counted:  # once, also when TLS was started on the connection
            self.counted = False
            self.sink.open_now -= 1
        super().connection_lost(exc)


class _EsmtpHandler(_Handler):
    """Advertises extra ESMTP extensions (DSN, REQUIRETLS) in EHLO: those the sink had
    when this session was opened."""

    def __init__(
        self, sink: Sink, faults: Faults | None, number: int, offered: tuple[str, ...]
    ) -> None:
        super().__init__(sink, faults, number)
        self.offered = offered

    async def handle_EHLO(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        hostname: str,
        responses: list[str],
    ) -> list[str]:
        session.host_name = hostname
        extra = [f"250-{e}" for e in self.offered]
        return responses[:-1] + extra + responses[-1:]


class _EsmtpSMTP(_CountedSMTP):
    """aiosmtpd refuses MAIL/RCPT parameters it does not know (555); this one takes those
    of the advertised extensions and records every parameter string as sent."""

    KNOWN: ClassVar[dict[str, set[str]]] = {
        "DSN": {"RET", "ENVID", "NOTIFY", "ORCPT"},
        "REQUIRETLS": {"REQUIRETLS"},
    }

    def __init__(
        self, sink: Sink, handler: _Handler, *, extensions: tuple[str, ...], **kwargs: Any
    ) -> None:
        super().__init__(sink, handler, **kwargs)
        self.accepted = set().union(*(self.KNOWN.get(e, set()) for e in extensions))
        self.params: list[str] = []

    def _getaddr(self, arg: str) -> tuple[Any, Any]:
        address, rest = super()._getaddr(arg)
        if self.envelope is not None and not self.envelope.mail_from:
            self.params = []  # a MAIL: a new transaction
        self.params.append((rest or "").strip())
        return address, rest

    def _getparams(self, params: Any) -> Any:
        result = super()._getparams(params)
        if result is None:
            return None
        return {k: v for k, v in result.items() if k not in self.accepted}


class Sink:
    def __init__(
        self,
        tls_context: ssl.SSLContext | None,
        *,
        starttls: bool = True,
        implicit: bool = False,
        extensions: tuple[str, ...] = (),
    ) -> None:
        self.tls_context = tls_context
        self.extensions = extensions
        self.starttls = starttls
        self.implicit = implicit
        self.received: list[Received] = []
        self.faults = Faults()
        self.event = asyncio.Event()
        self.server: asyncio.Server | None = None
        self.port = 0
        self.connections = 0
        self.open_now = 0  # connections open at this moment, and the most at once
        self.peak_open = 0
        # (upstream session number, verb) for MAIL, DATA, RSET, NOOP and QUIT, in order.
        self.commands: list[tuple[int, str]] = []
        # Called once per upstream session; returns that session's faults (None: the sink's).
        self.session_faults: Callable[[], Faults | None] | None = None

    def _factory(self) -> SMTP:
        self.connections += 1
        kwargs: dict[str, Any] = {
            "hostname": "upstream.test",
            "enable_SMTPUTF8": True,
            "data_size_limit": 50 * 1024 * 1024,
        }
        if self.starttls and not self.implicit:
            kwargs["tls_context"] = self.tls_context
            kwargs["require_starttls"] = True
        own = self.session_faults() if self.session_faults is not None else None
        self.open_now += 1
        self.peak_open = max(self.peak_open, self.open_now)
        offered = tuple(self.extensions)  # read per connection: a test may change them
        if offered:
            handler = _EsmtpHandler(self, own, self.connections, offered)
            return _EsmtpSMTP(self, handler, extensions=offered, **kwargs)
        return _CountedSMTP(self, _Handler(self, own, self.connections), **kwargs)

    async def start(self, port: int = 0) -> Sink:
        """Listen on `port` (0: a free one); a stopped sink restarts on its old port."""
        loop = asyncio.get_running_loop()
        self.server = await loop.create_server(
            self._factory,
            host="127.0.0.1",
            port=port,
            ssl=self.tls_context if self.implicit else None,
        )
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            if hasattr(self.server, "close_clients"):  # Python >= 3.13
                self.server.close_clients()
            await self.server.wait_closed()

    def session_commands(self, number: int) -> list[str]:
        return [verb for n, verb in self.commands if n == number]

    def all_rcpts(self) -> list[str]:
        return [r for m in self.received for r in m.rcpt_tos]


def hold_accepts(sink: Sink) -> asyncio.Event:
    """Make `sink` keep every message unanswered (in flight) until the returned event is set."""
    release = asyncio.Event()

    async def hold() -> None:
        await release.wait()

    sink.faults.on_accept = hold
    return release
