"""The SMTP protocol, and only that: TLS, AUTH, limits and replies; message handling is `flow`.

Built on aiosmtpd with its known traps handled here, in one place:
- its STARTTLS requirement is per connection (plaintext networks are exempt) and
  implicit-TLS connections count as TLS (aiosmtpd only knows STARTTLS);
- a second STARTTLS inside TLS is refused;
- AUTH is ours: only after TLS, verified off the event loop, delayed and locked
  out after repeated failures;
- every reply carries an enhanced status code (we advertise ENHANCEDSTATUSCODES);
- the size limit is always explicit (aiosmtpd defaults to 32 MiB otherwise);
- handler hooks are found by name, so the handler's names are checked at import.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import collections
import contextlib
import inspect
import ipaddress
import re
import ssl
import time
from asyncio import sslproto
from collections.abc import Awaitable, Callable, Iterable
from typing import TYPE_CHECKING, Any, NamedTuple, cast

import structlog
from aiosmtpd.smtp import (
    ALLOWED_BEFORE_STARTTLS,
    BOGUS_LIMIT,
    MISSING,
    SMTP,
    Envelope,
    Session,
    TLSSetupException,
    _AuthMechAttr,
    login_always_fail,
)
from aiosmtpd.smtp import log as aiosmtpd_log

from relay import esmtp, inflight
from relay.address import DOT_ATOM_MAILBOX
from relay.config import IPNetwork
from relay.datareader import read_data
from relay.flow import Runtime, Transaction, new_id
from relay.limits import AUTH_BUSY, AUTH_WAIT_POLL, AuthThrottle, DataPace, SessionLimiter
from relay.message import SessionFacts
from relay.model import Peer, Reply, TlsInfo
from relay.proxy import BAD_HEADER, NOT_LISTED, read_header, sniff
from relay.users import Users

if TYPE_CHECKING:
    from asyncio.streams import _ReaduntilBuffer

log = structlog.get_logger("relay.session")

_HAS_STATUS = re.compile(r"^[245]\d\d[ -][245]\.\d{1,3}\.\d{1,3}( |$)")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
# aiosmtpd's own replies, given enhanced status codes and words a person can act on.
_AIOSMTPD_REPLIES = {
    "530 Must issue a STARTTLS command first": "530 5.7.0 Must issue a STARTTLS command first",
    "220 Ready to start TLS": "220 2.0.0 Ready to start TLS",
    "500 Line too long (see RFC5321 4.5.3.1.6)": (
        "500 5.5.2 Line too long; lines must be at most {line} octets (RFC 5322)"
    ),
    "552 Error: Too much mail data": "552 5.3.4 Message too big; the limit is {size} bytes",
    "552 Error: message size exceeds fixed maximum message size": (
        "552 5.3.4 Message too big; the limit is {size} bytes"
    ),
    "500 Command line too long": "500 5.5.2 Command line too long",
    "503 Error: need RCPT command": "503 5.5.1 Need a RCPT command first",
    "503 Error: need MAIL command": "503 5.5.1 Need a MAIL command first",
    "503 Error: nested MAIL command": "503 5.5.1 MAIL already given; RSET first",
    "503 Error: send HELO first": "503 5.5.1 Send EHLO first",
    "555 MAIL FROM parameters not recognized or not implemented": (
        "555 5.5.4 MAIL parameter not recognized; this relay takes SIZE, BODY, SMTPUTF8, "
        "RET, ENVID and REQUIRETLS"
    ),
    "555 RCPT TO parameters not recognized or not implemented": (
        "555 5.5.4 RCPT parameter not recognized; this relay takes NOTIFY and ORCPT"
    ),
}


class BogusCommand(Exception):
    """A command line naming no command we know (aiosmtpd counts them, then hangs up)."""

    def __init__(self, command: str) -> None:
        super().__init__("unrecognised command")  # the client's word stays out of the text
        self.command = command


class _CrlfLineReader(asyncio.StreamReader):
    """Command lines end at CRLF only: a bare LF inside one cannot start a second command."""

    overlong_auth = False  # the last overlong line was an AUTH command (RFC 4954: 5.5.6)

    async def readuntil(self, separator: _ReaduntilBuffer = b"\r\n") -> bytes:
        # aiosmtpd reads commands with the default separator (LF); DATA and AUTH pass theirs.
        try:
            return await super().readuntil(separator)
        except asyncio.LimitOverrunError:
            if not self.overlong_auth:
                self.overlong_auth = bytes(self._buffer[:5]).upper() == b"AUTH "  # type: ignore[attr-defined]
            raise


def in_networks(host: str, networks: Iterable[IPNetwork]) -> bool:
    try:
        ip = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return any(ip in net for net in networks)


# `<dot-atom@host.name>` and ASCII parameters: what nearly every MAIL and RCPT holds.
_PLAIN_ADDRESS = re.compile(rf"<({DOT_ATOM_MAILBOX})>([\x20-\x7e\t]*)")


def plain_address(arg: str) -> tuple[str, str] | None:
    """aiosmtpd's `_getaddr` for a plain `<local@domain> PARAMS`, without the `email`
    header parser (~45 µs per MAIL and RCPT, ~1 µs here); None for anything else (quoted
    or obsolete local parts, address literals, comments, non-ASCII), which goes to it.
    Gives exactly what it gives (tests/unit/test_session_addr.py compares them)."""
    m = _PLAIN_ADDRESS.fullmatch(arg)
    if m is None:
        return None
    rest = m.group(2).lstrip(" \t")
    if rest.startswith("("):  # a comment: the parser's to read
        return None
    return m.group(1), rest


class Shared:
    """State shared by all sessions of one server: runtime (swapped on reload), limits, users."""

    def __init__(
        self,
        runtime: Runtime,
        users: Users | None,
        tls_context: ssl.SSLContext,
    ) -> None:
        self.runtime = runtime
        self.users = users
        self.tls_context = tls_context
        s = runtime.config.server
        self.limiter = SessionLimiter(
            s.max_sessions, s.max_sessions_per_client, s.reserved_sessions
        )
        self.throttle = AuthThrottle(
            per_pair=s.auth_max_failures,
            per_account=s.auth_max_failures_per_account,
            per_address=s.auth_max_failures_per_address,
            window=s.auth_lockout,
        )
        self.sessions: set[RelaySMTP] = set()
        # Messages being decided and delivered; they outlive their session if need be.
        self.deliveries: set[asyncio.Task[Reply]] = set()
        self.flight = inflight.InFlight(report=runtime.metrics.bytes_in_flight)
        self.closing = False
        self.closing_since = 0.0  # loop time the stop began


class RelaySMTP(SMTP):
    def __init__(
        self, shared: Shared, *, implicit_tls: bool, hostname: str, tls_after_accept: bool = False
    ) -> None:
        cfg = shared.runtime.config.server
        self.shared = shared
        self.implicit_tls = implicit_tls
        # Implicit TLS on a plain listener: behind a balancer the PROXY header comes first.
        self.tls_after_accept = implicit_tls and tls_after_accept
        # +2 for CRLF, +1 for the transparency dot (RFC 5321 4.5.2).
        self.line_length_limit = cfg.max_line_length + 3
        self._init_aiosmtpd(
            _HANDLER,
            data_size_limit=cfg.max_message_size,
            hostname=hostname,
            # Implicit-TLS connections are TLS from the first byte: no STARTTLS there.
            tls_context=None if implicit_tls else shared.tls_context,
            timeout=cfg.client_timeout,
        )
        # Per session (aiosmtpd's is one dict shared by every session): an AUTH initial
        # response may use the whole line (RFC 4954 4 allows long ones), others the 512.
        self.command_size_limits = collections.defaultdict(
            lambda: SMTP.command_size_limit, {"AUTH": self.line_length_limit}
        )
        self.session_id = new_id()
        self.peer_host = ""
        self.peer_port = 0
        # PROXY protocol: a listed balancer must send a header (read before the greeting);
        # anyone else's first bytes are checked so a header cannot pose as a command.
        self.expect_proxy = False
        self.sniffing = False
        self.sniffed = b""
        self.balancer: str | None = None
        self.admit_later = False
        self.refusal: str | None = None
        self.registered = False
        self.holds_slot = False
        self.unauth_slot = False
        self.trusted = False
        self.pace: DataPace | None = None
        # Bytes of the message being received, and how many of them shared.flight counts.
        self.received = 0
        self.charged = 0
        self.longest_line = 0  # octets of the longest line of the message just received
        self.busy = False
        self.in_data = False
        self.handshaking = False  # between STARTTLS's 220 and the handshake's end
        self.lost = False
        self.auth_user: str | None = None
        self.txn: Transaction | None = None
        self.deadline = 0.0  # of the idle timer (loop time); see _reset_timeout
        # Replies not yet written: one to a pipelined command while the client's next
        # command is already here goes out with the next reply in one write.
        self.held: list[bytes] = []
        self.pipelined = False  # inside MAIL, RCPT, RSET or NOOP (RFC 2920 3.1)

    def _init_aiosmtpd(
        self,
        handler: Handler,
        *,
        data_size_limit: int,
        hostname: str,
        tls_context: ssl.SSLContext | None,
        timeout: float,
    ) -> None:
        """What aiosmtpd 1.4's SMTP.__init__ sets up, for the arguments we pass (SMTPUTF8 on,
        bytes not decoded, AUTH ours and after TLS only), with its method tables found once
        per class: it runs inspect.getmembers over the session and the handler, dir() twice
        and the EHLO hook's signature on every connection (~0.1 ms each). The unit test
        test_session_init checks this builds exactly what aiosmtpd's own __init__ does."""
        self.__ident__ = "phi-relay ESMTP"
        self.loop = asyncio.get_running_loop()
        # Our line rule in aiosmtpd's reader: command lines end at CRLF only.
        asyncio.StreamReaderProtocol.__init__(
            self,
            _CrlfLineReader(loop=self.loop, limit=self.line_length_limit),
            client_connected_cb=self._cb_client_connected,
            loop=self.loop,
        )
        self.event_handler = handler
        self.data_size_limit = data_size_limit
        self.enable_SMTPUTF8 = True
        self._decode_data = False
        self.hostname = hostname
        self.tls_context = tls_context
        self.require_starttls = tls_context and False  # as aiosmtpd: None without TLS
        self._timeout_duration = timeout
        self._timeout_handle = None
        self._tls_handshake_okay = True
        self._tls_protocol = None
        self._original_transport = None
        self.session = None
        self.envelope = None
        self.transport = None
        self._handler_coroutine = None
        self._auth_require_tls = True
        self._proxy_timeout = None
        self._authenticator = None
        self._auth_callback = login_always_fail
        self._auth_required = False
        tables = _method_tables(type(self), type(handler))
        self._auth_methods = {
            mech: _AuthMechAttr(getattr(self if builtin else handler, name), builtin)
            for mech, name, builtin in tables.auth
        }
        self._handle_hooks = {cmd: getattr(handler, name) for cmd, name in tables.hooks}
        self._ehlo_hook_ver = tables.ehlo_hook_ver
        self._smtp_methods = {cmd: getattr(self, name) for cmd, name in tables.smtp}
        self._enforce_call_limit = False

    # --- connection lifecycle ------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        first = self.transport is None
        super().connection_made(transport)
        if not first:
            return  # the STARTTLS upgrade of a connection already counted
        peer = transport.get_extra_info("peername")
        host, port = (str(peer[0]), int(peer[1])) if peer else ("", 0)
        cfg = self.shared.runtime.config.server
        self.peer_host, self.peer_port = host, port
        # Implicit TLS is admitted after its handshake, as on a TLS listener.
        self.admit_later = self.tls_after_accept
        if cfg.proxy_protocol_from and in_networks(host, cfg.proxy_protocol_from):
            # Who the client is, and so every address rule, waits for the header.
            self.expect_proxy = self.admit_later = True
            # The header's own deadline answers first, with a reply that says what is wrong.
            self._reset_timeout(cfg.proxy_protocol_timeout + 1)
            return
        self.sniffing = bool(cfg.proxy_protocol_from) and not self.implicit_tls
        if not self.admit_later:
            self._admit(host, port)

    def _admit(self, host: str, port: int) -> None:
        """The client's address is known: apply the address rules and take a session slot."""
        self.peer_host, self.peer_port = host, port
        cfg = self.shared.runtime.config.server
        self.plaintext_ok = in_networks(self.peer_host, cfg.plaintext_networks)
        # A plaintext network cannot AUTH (AUTH needs TLS), so it is trusted or it is useless.
        self.trusted = self.plaintext_ok or in_networks(self.peer_host, cfg.trusted_networks)
        # Per connection: plaintext networks may skip STARTTLS, nobody else may.
        self.require_starttls = not self.implicit_tls and not self.plaintext_ok
        if self.shared.closing:
            self.refusal = "421 4.3.2 Service shutting down; try again later"
        else:
            self.refusal = self.shared.limiter.acquire(self.peer_host, trusted=self.trusted)
        if self.refusal is None:
            self.registered = True
            self.holds_slot = True
            self.unauth_slot = not self.trusted
            self.shared.sessions.add(self)
            self.shared.runtime.metrics.session(True)
        else:
            self.shared.runtime.metrics.refused_reply(self.refusal)
        self._reset_timeout()  # aiosmtpd started it before we knew whether the peer is trusted

    async def _read_proxy(self) -> bool:
        """The header from a listed balancer; False (after a refusal) if it is not usable."""
        cfg = self.shared.runtime.config.server
        balancer = (self.peer_host, self.peer_port)
        origin = await read_header(self._reader, cfg.proxy_protocol_timeout, balancer)
        if origin is None:
            log.warning("PROXY header missing or malformed", balancer=self.peer_host)
            self.shared.runtime.metrics.refused_session("proxy-header")
            await self._refuse(BAD_HEADER)
            return False
        self.balancer = self.peer_host
        self.expect_proxy = False
        self.peer_host, self.peer_port = origin.host, origin.port
        return True

    async def _start_implicit_tls(self) -> bool:
        """Implicit TLS behind a balancer: the handshake starts after the PROXY header.

        Bytes of the ClientHello that arrived with the header are already in the reader;
        they are handed to the TLS layer before any more can arrive (no await between).
        """
        assert self.transport is not None
        early = bytes(self._reader._buffer)  # type: ignore[attr-defined]
        self._reader._buffer.clear()  # type: ignore[attr-defined]
        waiter = self.loop.create_future()
        self._tls_protocol = sslproto.SSLProtocol(
            self.loop, self, self.shared.tls_context, waiter, server_side=True
        )
        self._original_transport = self.transport
        self._original_transport.set_protocol(self._tls_protocol)
        self.transport = self._tls_protocol._app_transport
        self._tls_protocol.connection_made(self._original_transport)
        while early:
            buf = self._tls_protocol.get_buffer(len(early))
            n = min(len(buf), len(early))
            buf[:n] = early[:n]
            self._tls_protocol.buffer_updated(n)
            early = early[n:]
        try:
            async with asyncio.timeout(self.shared.runtime.config.server.client_timeout):
                await waiter
        except (TimeoutError, OSError, ssl.SSLError):
            # Never admitted, so there is no slot to give back; close both layers.
            self._original_transport.close()
            return False
        return True

    async def _refuse(self, reply: str) -> None:
        with contextlib.suppress(ConnectionError, RuntimeError):
            await self.push(reply)
        if self.transport is not None:
            self.transport.close()

    def _release_slot(self) -> None:
        if self.holds_slot:
            self.holds_slot = False
            self.shared.limiter.release(self.peer_host, unauthenticated=self.unauth_slot)

    async def smtp_QUIT(self, arg: str) -> None:
        # A client that read our 221 may reconnect before connection_lost runs: free its
        # slot now, or a busy client is refused with 421 under its own limit.
        await super().smtp_QUIT(arg)
        self._release_slot()

    def connection_lost(self, error: Exception | None) -> None:
        if self.lost:
            return  # `shutdown` ended a handshake itself; the SSL layer may report it too
        self.lost = True
        self._release_slot()
        if self.registered:
            self.registered = False
            self.shared.sessions.discard(self)
            self.shared.runtime.metrics.session(False)
            asyncio.get_running_loop().create_task(self._cleanup())
        super().connection_lost(error)
        task = self._handler_coroutine
        if task is None or task.done():
            self._unlink()
        else:  # cancelled just now: it ends at its next step
            task.add_done_callback(self._unlink)

    def _unlink(self, _task: object = None) -> None:
        """Break what points back at this ended session, so reference counting frees it,
        its TLS objects and its socket at once: the bound-method tables, the stream
        writer, the reader's callback, and the handler task (its cancellation traceback
        holds the session's frames). Left to the cycle collector, each connection's ~70
        objects were promoted and walked by every gen-1 and gen-2 collection."""
        self._handler_coroutine = None
        self._smtp_methods = {}
        self._auth_methods = {}
        self._client_connected_cb = None
        self._writer = None  # type: ignore[assignment]

    async def _cleanup(self) -> None:
        if self.txn is not None:
            await self.txn.abort()
            self.txn = None

    def _reset_timeout(self, duration: float | None = None) -> None:
        if duration is None:
            # Before AUTH a client outside the trusted networks gets the shorter idle timeout.
            cfg = self.shared.runtime.config.server
            known = self.trusted or getattr(self, "auth_user", None) is not None
            duration = cfg.client_timeout if known else cfg.pre_auth_timeout
        # aiosmtpd cancels and makes a timer at every command (and we at every DATA chunk):
        # one timer is kept instead, and when it fires early it waits for the rest.
        self.deadline = self.loop.time() + (duration or self._timeout_duration)
        handle = self._timeout_handle
        if handle is not None and not handle.cancelled() and handle.when() <= self.deadline:
            return
        if handle is not None:
            handle.cancel()
        self._timeout_handle = self.loop.call_at(self.deadline, self._timer_fired)

    def _timer_fired(self) -> None:
        if self.loop.time() < self.deadline:
            self._timeout_handle = self.loop.call_at(self.deadline, self._timer_fired)
            return
        self._timeout_cb()

    def data_received(self, data: bytes) -> None:
        if self.sniffing:
            self.sniffed += data
            verdict = sniff(self.sniffed)
            if verdict is None:
                return
            self.sniffing = False
            data, self.sniffed = self.sniffed, b""
            if verdict:
                # A PROXY header from an address that is not a listed balancer: a spoof.
                log.warning("PROXY header from an unlisted address", peer=self.peer_host)
                self.shared.runtime.metrics.refused_session("proxy-not-listed")
                self.loop.create_task(self._refuse(NOT_LISTED))
                return
        super().data_received(data)
        pace = self.pace
        if pace is not None:
            self.received += len(data)
            if self.received > self.charged:  # beyond what SIZE declared
                self.shared.flight.add(self.received - self.charged)
                self.charged = self.received
            now = self.loop.time()
            self._reset_timeout(max(pace.received(len(data), now), 0.001))

    def _timeout_cb(self) -> None:
        # aiosmtpd just closes; RFC 5321 3.8 asks for a 421 so the client knows to retry later.
        transport = self.transport
        if transport is None:
            return
        # Plain or TLS, asyncio's or uvloop's (whose transports do not derive from
        # asyncio.WriteTransport): every transport a session has is a stream transport.
        stream = cast(asyncio.WriteTransport, transport)
        if not stream.is_closing():
            held, self.held = self.held, []
            stream.write(
                b"".join((*held, b"421 4.4.2 Timed out waiting for the client; closing\r\n"))
            )
        # close() flushes the write buffer first; connection_lost() then cleans up.
        transport.close()

    async def _handle_client(self) -> None:
        if self.expect_proxy and not await self._read_proxy():
            return
        if self.tls_after_accept and not await self._start_implicit_tls():
            return
        if self.admit_later:
            self._admit(self.peer_host, self.peer_port)
        if self.refusal is not None:
            await self.push(self.refusal)
            assert self.transport is not None
            self.transport.close()
            return
        await self.push(f"220 {self.hostname} {self.__ident__}")
        bogus_budget = BOGUS_LIMIT
        while self.transport is not None:
            try:
                await self._command(await self._next_line())
            except BogusCommand as bogus:
                # aiosmtpd's own warnings, on its logger (the service log routes and
                # scrubs them, relay/logs.py).
                aiosmtpd_log.warning(
                    "%r unrecognised: %s", (self.peer_host, self.peer_port), bogus.command
                )
                bogus_budget -= 1
                if bogus_budget < 1:
                    aiosmtpd_log.warning(
                        "%r too many bogus commands", (self.peer_host, self.peer_port)
                    )
                    await self.push("502 5.5.1 Too many unrecognized commands, goodbye.")
                    self.transport.close()
                    continue
                await self.push("500 5.5.1 Command not recognized")
            except (asyncio.CancelledError, ConnectionResetError):
                self._writer.close()  # the connection was reset (during DATA, too)
                raise
            except Exception as error:
                await self._command_failed(error)

    async def _next_line(self) -> bytes | None:
        """The next command line (CRLF removed), or None after answering an overlong one
        (read to its end first, so the next line is the next command)."""
        try:
            line = await self._reader.readuntil()
        except asyncio.LimitOverrunError as error:
            await self._reader.read(error.consumed)
            while True:
                try:
                    await self._reader.readuntil()
                    break
                except asyncio.LimitOverrunError as e:
                    await self._reader.read(e.consumed)
            await self.push("500 Command line too long")
            return None
        return line.rstrip(b"\r\n")

    async def _command(self, line: bytes | None) -> None:
        """One command, checked and dispatched as aiosmtpd 1.4's _handle_client does (its
        replies, in its order), without its two log calls and call-limit table per line."""
        if line is None:
            return
        assert self.session is not None
        if not line:
            await self.push("500 Error: bad syntax")
            return
        command_bytes, _, arg_bytes = line.partition(b" ")
        try:
            command = command_bytes.upper().decode("ascii")
        except UnicodeDecodeError:
            await self.push("500 Error: bad syntax")
            return
        # SMTPUTF8 is on: arguments are UTF-8, surrogateescape keeps any other byte.
        arg = str(arg_bytes.strip(), "utf-8", "surrogateescape") if arg_bytes else None
        if self.session.extended_smtp:
            limit = self.command_size_limits[command]
        else:
            limit = self.command_size_limit
        if len(line) > limit:
            await self.push("500 Command line too long")
            return
        if not self._tls_handshake_okay and command != "QUIT":
            await self.push("554 Command refused due to lack of security")
            return
        if (
            self.require_starttls
            and not self._tls_protocol
            and command not in ALLOWED_BEFORE_STARTTLS
        ):
            await self.push("530 Must issue a STARTTLS command first")
            return
        method = self._smtp_methods.get(command)
        if method is None:
            raise BogusCommand(command)
        self._reset_timeout()  # a valid command: the idle timer starts again
        await method(arg)

    async def _command_failed(self, error: Exception) -> None:
        """As aiosmtpd: the handler's reply for an exception; a failed TLS setup ends it."""
        try:
            status = await self.handle_exception(error)
        except Exception:
            status = "500 Error: Cannot describe error"
        if isinstance(error, TLSSetupException):
            assert self.transport is not None
            self.transport.close()
            self.connection_lost(error)
        else:
            await self.push(status)

    async def push(self, status: Any) -> None:
        text = status.decode("utf-8", "replace") if isinstance(status, bytes) else str(status)
        cfg = self.shared.runtime.config.server
        if text.startswith('500 Error: command "') and text.endswith('" not recognized'):
            # aiosmtpd would echo the client's word back (control characters and all).
            text = "500 5.5.1 Command not recognized"
        reader = getattr(self, "_stream_reader", None)
        if (
            text == "500 Command line too long"
            and isinstance(reader, _CrlfLineReader)
            and reader.overlong_auth
        ):
            reader.overlong_auth = False
            text = "500 5.5.6 Authentication exchange line is too long"
        mapped = _AIOSMTPD_REPLIES.get(text)
        if mapped is not None:
            text = mapped.format(line=cfg.max_line_length, size=cfg.max_message_size)
        elif (
            len(text) >= 4
            and text[:3].isdigit()
            and text[0] in "245"
            and text[:3] not in ("220", "334", "354")
            and text[3] == " "
            and not _HAS_STATUS.match(text)
            and text not in ("250 HELP", f"250 {self.hostname}")
        ):
            # RFC 2034: once ENHANCEDSTATUSCODES is advertised, every reply carries one.
            default = {"2": "2.0.0", "4": "4.0.0", "5": "5.5.0"}[text[0]]
            text = f"{text[:3]} {default} {text[4:]}"
        if text.startswith("530 "):
            # aiosmtpd's STARTTLS check and our gate both answer here: counted once, here.
            self.shared.runtime.metrics.refused_reply(text)
        # A reply is one line: nothing the client sent can add a CR or LF to it.
        await self.emit(_CONTROL.sub("?", text))

    async def emit(self, line: str) -> None:
        """Write one reply (its lines joined by CRLF), or hold it for the next write: each
        write is a TLS record and a send() on each side, so replies the client can read
        together go together. Held only for a pipelined command while the client's next
        command line is already buffered (its own reply then follows before any wait for
        the client, RFC 2920 3.2); anything else writes everything held."""
        self.held.append(line.encode() + b"\r\n")
        if (
            self.pipelined and not line.startswith("421") and b"\r\n" in self._reader._buffer  # type: ignore[attr-defined]
        ):
            return
        await self.flush()

    async def flush(self) -> None:
        if self.held:
            data = b"".join(self.held)
            self.held.clear()
            self._writer.write(data)
            await self._writer.drain()

    async def _pipelined(
        self, command: Callable[[str | None], Awaitable[None]], arg: str | None
    ) -> None:
        self.pipelined = True
        try:
            await command(arg)
        finally:
            self.pipelined = False

    # --- TLS ----------------------------------------------------------------------------

    @property
    def tls_active(self) -> bool:
        return self.implicit_tls or self._tls_protocol is not None

    def tls_info(self) -> TlsInfo:
        if not self.tls_active or self.transport is None:
            return TlsInfo()
        obj = self.transport.get_extra_info("ssl_object")
        if obj is None:
            return TlsInfo()
        cipher = obj.cipher()
        return TlsInfo(obj.version(), cipher[0] if cipher else None)

    async def smtp_STARTTLS(self, arg: str) -> None:
        if self.tls_active:
            await self.push("503 5.5.1 TLS already active")
            return
        self.handshaking = True
        try:
            await super().smtp_STARTTLS(arg)
        finally:
            self.handshaking = False

    def ehlo_lines(self, hostname: str) -> list[str]:
        cfg = self.shared.runtime.config.server
        lines = [
            self.hostname,
            f"SIZE {cfg.max_message_size}",
            "8BITMIME",
            "SMTPUTF8",
            "PIPELINING",
            "ENHANCEDSTATUSCODES",
        ]
        lines.append("DSN")
        if not self.tls_active:
            lines.append("STARTTLS")
        else:
            # RFC 8689 2: offered only once TLS is in use.
            lines.append("REQUIRETLS")
            if self.shared.users is not None:
                lines.append("AUTH PLAIN LOGIN")
        lines.append("HELP")
        return [f"250-{ln}" for ln in lines[:-1]] + [f"250 {lines[-1]}"]

    # --- AUTH ---------------------------------------------------------------------------

    async def smtp_AUTH(self, arg: str | None) -> None:
        if await self.check_helo_needed("EHLO"):
            return
        assert self.session is not None
        if not self.tls_active:
            await self.push("530 5.7.0 Must issue a STARTTLS command first")
            return
        users = self.shared.users
        if users is None:
            await self.push("503 5.5.1 AUTH not available on this relay")
            return
        if self.auth_user is not None:
            await self.push("503 5.5.1 Already authenticated")
            return
        if self.txn is not None:
            await self.push("503 5.5.1 AUTH not allowed during a mail transaction")
            return
        args = (arg or "").split()
        if not args or len(args) > 2:
            await self.push("501 5.5.4 Syntax: AUTH PLAIN|LOGIN [initial-response]")
            return
        throttle = self.shared.throttle
        locked = throttle.address_locked(self.peer_host, time.monotonic())
        if locked is not None:
            await self.push(locked)
            return
        mechanism = args[0].upper()
        if mechanism == "PLAIN":
            creds = await self._plain(args)
        elif mechanism == "LOGIN":
            creds = await self._login(args)
        else:
            await self.push("504 5.5.4 Unrecognized authentication type; use PLAIN or LOGIN")
            return
        if creds is None:
            return
        name, password = creds
        # Counted before the (slow) check, so parallel attempts cannot all get through.
        attempt = throttle.begin(self.peer_host, name, time.monotonic())
        # At a limit only through attempts still being checked (parallel logins, as a
        # Postfix's smtp processes make): wait for them rather than refuse the password.
        waited = time.monotonic() + self.shared.runtime.config.server.pre_auth_timeout
        while attempt == AUTH_BUSY and time.monotonic() < waited:
            await asyncio.sleep(AUTH_WAIT_POLL)
            attempt = throttle.begin(self.peer_host, name, time.monotonic())
        if isinstance(attempt, str):
            await self.push(attempt)
            return
        if await users.verify(name, password):
            throttle.succeed(attempt, time.monotonic())
            self.auth_user = name
            if self.unauth_slot:
                self.unauth_slot = False
                self.shared.limiter.promote()
            self._reset_timeout()  # from the pre-AUTH idle timeout to the ordinary one
            self.session.authenticated = True
            await self.push("235 2.7.0 Authentication successful")
            return
        throttle.fail(attempt)
        self.shared.runtime.metrics.auth_failure()
        try:
            # Off the loop: a guesser must not stall every session behind a slow audit sink.
            await self.shared.runtime.audit.event_async(
                "auth-failure",
                session_id=self.session_id,
                peer=self.peer_host,
                mechanism=mechanism,
                user=name if users.known(name) else "(unknown user)",
            )
        except Exception:
            log.error("audit write failed", event="auth-failure")
        await asyncio.sleep(self.shared.runtime.config.server.auth_failure_delay)
        await self.push("535 5.7.8 Authentication credentials invalid")

    async def _read_b64(self, initial: str | None, challenge: str) -> str | None:
        if initial is not None:
            blob = initial.encode()
        else:
            await self.emit(f"334 {base64.b64encode(challenge.encode()).decode()}")
            line = await self._auth_line()
            if line is None:
                return None
            blob = line.strip()
            if blob == b"*":
                await self.push("501 5.7.0 Authentication aborted")
                return None
        try:
            return base64.b64decode(blob, validate=True).decode("utf-8", "surrogateescape")
        except (binascii.Error, ValueError):
            await self.push("501 5.5.2 Cannot decode base64")
            return None

    async def _auth_line(self) -> bytes | None:
        """One client line of the AUTH exchange; an overlong one is read to its end and
        refused, so the next line is read as the next command (in step)."""
        try:
            return await self._reader.readuntil(b"\r\n")
        except asyncio.LimitOverrunError as exc:
            await self._reader.readexactly(exc.consumed)
            while True:
                try:
                    await self._reader.readuntil(b"\r\n")
                    break
                except asyncio.LimitOverrunError as more:
                    await self._reader.readexactly(more.consumed)
        except asyncio.IncompleteReadError:
            return None  # the client went away mid-exchange
        if isinstance(self._reader, _CrlfLineReader):
            self._reader.overlong_auth = False  # answered here, not by aiosmtpd
        await self.push("500 5.5.6 Authentication exchange line is too long")
        return None

    async def _plain(self, args: list[str]) -> tuple[str, str] | None:
        text = await self._read_b64(args[1] if len(args) > 1 else None, "")
        if text is None:
            return None
        parts = text.split("\x00")
        if len(parts) != 3:
            await self.push("501 5.5.2 Cannot split the PLAIN response")
            return None
        return parts[1], parts[2]

    async def _login(self, args: list[str]) -> tuple[str, str] | None:
        name = await self._read_b64(args[1] if len(args) > 1 else None, "Username:")
        if name is None:
            return None
        password = await self._read_b64(None, "Password:")
        if password is None:
            return None
        return name, password

    # --- ESMTP parameters: aiosmtpd would refuse them (555) and upper-cases them --------

    async def smtp_MAIL(self, arg: str | None) -> None:
        self.params_for, self.raw_params = esmtp.MAIL_PARAMS, ""
        await self._pipelined(super().smtp_MAIL, arg)

    async def smtp_RCPT(self, arg: str | None) -> None:
        self.params_for, self.raw_params = esmtp.RCPT_PARAMS, ""
        await self._pipelined(super().smtp_RCPT, arg)

    async def smtp_RSET(self, arg: str) -> None:
        await self._pipelined(super().smtp_RSET, arg)

    async def smtp_NOOP(self, arg: str) -> None:
        await self._pipelined(super().smtp_NOOP, arg)

    async def smtp_EHLO(self, hostname: str) -> None:
        """aiosmtpd's EHLO (1.4) with our lines: it built its own list for the hook to
        replace and pushed each line on its own; here they are one write."""
        if not hostname:
            await self.push("501 Syntax: EHLO hostname")
            return
        assert self.session is not None
        self._set_rset_state()  # type: ignore[no-untyped-call]
        self.session.extended_smtp = True
        # As aiosmtpd: MAIL's line limit grows by SIZE= and SMTPUTF8 at each EHLO.
        if self.data_size_limit:
            self.command_size_limits["MAIL"] += 26
        self.command_size_limits["MAIL"] += 10
        if _CONTROL.search(hostname):
            await self.push("501 5.5.2 Control characters in EHLO")
            return
        self.session.host_name = hostname
        await self.on_rset()  # EHLO resets the transaction (RFC 5321 4.1.4)
        await self.emit("\r\n".join(self.ehlo_lines(hostname)))

    def _getaddr(self, arg: str) -> tuple[Any, Any]:
        plain = plain_address(arg)
        limit = self.local_part_limit
        address: str | None
        rest: str | None
        if plain is not None and not (limit and len(plain[0].rpartition("@")[0]) > limit):
            address, rest = plain
        else:  # everything else, and a local part over the limit (None, None), as it says
            address, rest = super()._getaddr(arg)
        self.raw_params = rest or ""  # as sent: ENVID and ORCPT are case-sensitive
        return address, rest

    def _getparams(self, params: Any) -> Any:
        result = super()._getparams(params)
        if result is None:
            return None
        ours: frozenset[str] = getattr(self, "params_for", frozenset())
        return {k: v for k, v in result.items() if k not in ours}

    # --- mail transaction (called by the handler hooks) ----------------------------------

    def facts(self) -> SessionFacts:
        return SessionFacts(
            session_id=self.session_id,
            peer=Peer(self.peer_host, self.peer_port),
            tls=self.tls_info(),
            auth_user=self.auth_user,
            trusted_network=self.trusted,
            plaintext_network=self.plaintext_ok,
        )

    def _gate(self) -> str | None:
        """Checks every MAIL must pass: TLS (unless exempt) and authentication or trust."""
        if not self.tls_active and not self.plaintext_ok:
            return "530 5.7.0 Must issue a STARTTLS command first"
        if self.auth_user is None and not self.trusted:
            return "530 5.7.0 Authentication required"
        if self.shared.closing:
            return "421 4.3.2 Service shutting down; try again later"
        return None

    async def on_mail(self, envelope: Envelope, address: str, options: list[str]) -> str:
        await self.on_rset()  # a transaction left open by a failed DATA
        refusal = self._gate()
        if refusal is not None:
            return refusal
        if _CONTROL.search(address) or any(_CONTROL.search(o) for o in options):
            return "501 5.5.2 Control characters in MAIL command"
        try:
            extra = esmtp.check_mail(getattr(self, "raw_params", ""))
        except esmtp.ParamError as err:
            return err.reply
        if esmtp.requires_tls(extra) and not self.tls_active:
            # RFC 8689 4.1: REQUIRETLS only on a TLS session (a plaintext network included).
            return "530 5.7.10 REQUIRETLS needs TLS; issue STARTTLS first"
        smtputf8 = "SMTPUTF8" in (o.upper() for o in options)
        given = [o for o in options if o.partition("=")[0].upper() not in esmtp.MAIL_PARAMS]
        self.busy = True
        try:
            txn = Transaction(
                self.shared.runtime,
                self.facts(),
                address,
                [*given, *extra],
                smtputf8,
                (self.session.host_name if self.session else "") or "",
            )
            reply = await txn.open()
        finally:
            self.busy = False
        if reply is not None:
            return str(reply)
        self.txn = txn
        envelope.mail_from = address
        envelope.mail_options.extend(options)
        envelope.smtp_utf8 = smtputf8
        return "250 2.1.0 Sender OK"

    async def on_rcpt(self, envelope: Envelope, address: str, options: list[str]) -> str:
        if self.txn is None:
            return "503 5.5.1 Need a MAIL command first"
        if _CONTROL.search(address) or any(_CONTROL.search(o) for o in options):
            return "501 5.5.2 Control characters in RCPT command"
        try:
            extra = esmtp.check_rcpt(getattr(self, "raw_params", ""))
        except esmtp.ParamError as err:
            return err.reply
        self.busy = True
        try:
            reply = await self.txn.add_recipient(address, extra)
        finally:
            self.busy = False
        if reply is not None:
            return str(reply)
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 Recipient OK"

    async def on_data(self, envelope: Envelope) -> str:
        self.pace = None  # the whole message is in
        txn, self.txn = self.txn, None
        if txn is None:
            return "503 5.5.1 Need a MAIL command first"
        cfg = self.shared.runtime.config
        raw = envelope.original_content or b""
        # aiosmtpd's reader limit has room for a transparency dot and CRLF, so a line one or
        # two octets over the limit gets through it; the exact check is on the unstuffed text
        # (split at every LF), needed only when a line came close.
        longest, self.longest_line = self.longest_line, 0
        if longest - 1 > cfg.server.max_line_length + 1 and (
            max(map(len, raw.split(b"\n")), default=0) > cfg.server.max_line_length + 1
        ):
            await txn.abort()
            return _AIOSMTPD_REPLIES["500 Line too long (see RFC5321 4.5.3.1.6)"].format(
                line=cfg.server.max_line_length
            )
        # Processing and upstream delivery must not be cut by the idle timer.
        self._reset_timeout(cfg.server.policy_timeout + 4 * cfg.upstream.timeout + 30)
        # Once the message is in, deciding and delivering run to the end even if the
        # client hangs up (aiosmtpd then cancels this coroutine): a message cut off half
        # way upstream would have no delivery record. Shutdown waits for these tasks.
        task = asyncio.get_running_loop().create_task(txn.finish(raw))
        self.busy = True
        self.shared.deliveries.add(task)
        task.add_done_callback(self._delivered)
        # The message's bytes stay counted until its delivery is over.
        charged, self.charged, self.received = self.charged, 0, 0
        task.add_done_callback(lambda _: self.shared.flight.release(charged))
        reply: Reply = await asyncio.shield(task)
        self._reset_timeout()
        return str(reply)

    def _delivered(self, task: asyncio.Task[Reply]) -> None:
        self.busy = False
        self.shared.deliveries.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("delivery failed", error=type(task.exception()).__name__)

    async def on_rset(self) -> None:
        txn, self.txn = self.txn, None
        if txn is not None:
            await txn.abort()

    async def smtp_DATA(self, arg: str) -> None:
        # Inside DATA the idle timeout still applies, with a minimum rate and a deadline for
        # the whole transfer (DataPace); aiosmtpd alone would wait one idle period in all.
        if self.txn is not None and self.envelope is not None and self.envelope.rcpt_tos:
            cfg = self.shared.runtime.config.server
            # A client that declared SIZE at MAIL (Postfix, smtplib do) has it counted
            # now, so many starting DATA at once cannot all pass an empty count.
            declared = min(_declared_size(self.envelope.mail_options), cfg.max_message_size)
            flight = self.shared.flight
            if not arg and (
                flight.full(cfg.max_bytes_in_flight)
                or (flight.bytes and flight.bytes + declared > cfg.max_bytes_in_flight)
            ):
                await self._refuse_data()
                return
            self.charged = declared
            flight.add(declared)
            self.pace = DataPace.start(
                self.loop.time(),
                idle=cfg.client_timeout,
                min_rate=cfg.min_data_rate,
                total=cfg.data_timeout,
            )
            self._reset_timeout(self.pace.deadline - self.loop.time())
        # From "DATA" until its reply is written the session is in flight, even while it
        # only waits for the client's next line: a shutdown must not cut it.
        self.in_data = True
        try:
            await self._receive_data(arg)
            # Answered without calling handle_DATA (too big, line too long): the upstream
            # still holds the envelope; release it.
            await self.on_rset()
        finally:
            self.in_data = False
            # Refused by aiosmtpd or cut off: the bytes are gone with the session's buffer.
            charged, self.charged, self.received = self.charged, 0, 0
            self.shared.flight.release(charged)
            if self.pace is not None:
                self.pace = None
                self._reset_timeout()

    async def _receive_data(self, arg: str) -> None:
        """aiosmtpd's smtp_DATA (1.4), with the message read into one buffer instead of an
        object per line (relay.datareader); its replies, mapped by `push`, are the same."""
        if await self.check_helo_needed():
            return
        if await self.check_auth_needed("DATA"):
            return
        assert self.envelope is not None
        if not self.envelope.rcpt_tos:
            await self.push("503 Error: need RCPT command")
            return
        if arg:
            await self.push("501 Syntax: DATA")
            return
        await self.push("354 End data with <CR><LF>.<CR><LF>")
        try:
            data = await read_data(
                self._reader,
                size_limit=self.data_size_limit or 0,
                line_limit=self.line_length_limit,
            )
        except asyncio.CancelledError:
            self._writer.close()  # the connection was reset during DATA
            raise
        if data.content is None:
            if not (data.too_long or data.too_much):
                return  # the client went away
            await self.push(
                "500 Line too long (see RFC5321 4.5.3.1.6)"
                if data.too_long
                else "552 Error: Too much mail data"
            )
            self._set_post_data_state()  # type: ignore[no-untyped-call]
            return
        self.longest_line = data.longest
        self.envelope.content = self.envelope.original_content = data.content
        status = await self._call_handler_hook("DATA")
        self._set_post_data_state()  # type: ignore[no-untyped-call]
        await self.push("250 OK" if status is MISSING else status)

    async def _refuse_data(self) -> None:
        """Too many bytes in flight: 452 before any of the message is sent, and the
        transaction ends (its upstream connection goes back to the pool)."""
        flight = self.shared.flight
        flight.refused += 1
        log.warning(
            "DATA refused: too many bytes in flight",
            bytes_in_flight=flight.bytes,
            cap=self.shared.runtime.config.server.max_bytes_in_flight,
        )
        await self.on_rset()
        self._set_rset_state()  # type: ignore[no-untyped-call]
        await self.push(inflight.FULL)

    @property
    def in_flight(self) -> bool:
        """A transaction is open (MAIL given), being received, or being decided and sent."""
        return self.txn is not None or self.busy or self.in_data

    @property
    def closing(self) -> bool:
        """Told to go (or gone): only the TLS goodbye or the socket's close is left."""
        return self.transport is None or self.transport.is_closing()

    async def shutdown(self, *, force: bool = False) -> None:
        """Close an idle session with 421; one in flight is left to finish, unless `force`
        (the drain timeout is over)."""
        if self.transport is None or (self.in_flight and not force):
            return
        if self.handshaking:
            # A handshake on the wire as the stop began (TLS 1.3 clients send EHLO before
            # the relay has read their Finished) may finish: its 421 then goes over TLS.
            grace = self.shared.runtime.config.server.shutdown_handshake_grace
            if not force and asyncio.get_running_loop().time() < (
                self.shared.closing_since + grace
            ):
                return
            # Between STARTTLS's 220 and the end of the handshake a 421 would reach the
            # client as plaintext inside its TLS stream; the SSL layer would not report the
            # close either, so end the session as aiosmtpd ends a failed handshake.
            raw = self._original_transport
            for layer in (self.transport, raw):
                if layer is not None:  # uvloop's transports are no asyncio.Transport
                    cast(asyncio.Transport, layer).abort()
            if raw is not None:
                self.connection_lost(None)
            return
        if not self.transport.is_closing() and not self.busy:
            # A session busy deciding or delivering gets no 421: its outcome is not known yet.
            # The peer may vanish between the check and the write; the goodbye is best effort.
            with contextlib.suppress(ConnectionError, RuntimeError, AttributeError):
                await self.push("421 4.3.2 Service shutting down; try again later")
        if self.transport is not None:
            self.transport.close()


# HELP lists a command by the syntax aiosmtpd's decorator put on its method: ours keep it.
for _name in ("smtp_EHLO", "smtp_RSET", "smtp_NOOP"):
    for _attr in ("__smtp_syntax__", "__smtp_syntax_extended__", "__smtp_syntax_when__"):
        setattr(getattr(RelaySMTP, _name), _attr, getattr(getattr(SMTP, _name), _attr))


class Handler:
    """aiosmtpd hooks. Each delegates to the session object; names are checked below."""

    async def handle_MAIL(
        self,
        server: RelaySMTP,
        session: Session,
        envelope: Envelope,
        address: str,
        options: list[str],
    ) -> str:
        return await server.on_mail(envelope, address, options)

    async def handle_RCPT(
        self,
        server: RelaySMTP,
        session: Session,
        envelope: Envelope,
        address: str,
        options: list[str],
    ) -> str:
        return await server.on_rcpt(envelope, address, options)

    async def handle_DATA(self, server: RelaySMTP, session: Session, envelope: Envelope) -> str:
        return await server.on_data(envelope)

    async def handle_RSET(self, server: RelaySMTP, session: Session, envelope: Envelope) -> str:
        await server.on_rset()
        return "250 2.0.0 OK"

    async def handle_exception(self, error: Exception) -> str:
        # The type only: exception text could quote client input.
        log.error("session error", error=type(error).__name__)
        return "451 4.3.0 Internal error; try again later"


# aiosmtpd finds hooks by name; a misspelt hook would silently never run.
KNOWN_HOOKS = {
    "handle_EHLO",
    "handle_HELO",
    "handle_MAIL",
    "handle_RCPT",
    "handle_DATA",
    "handle_RSET",
    "handle_NOOP",
    "handle_QUIT",
    "handle_VRFY",
    "handle_AUTH",
    "handle_STARTTLS",
    "handle_PROXY",
    "handle_exception",
}
_unknown = {n for n in dir(Handler) if n.startswith("handle_")} - KNOWN_HOOKS
assert not _unknown, f"unknown aiosmtpd hooks: {_unknown}"
_HANDLER = Handler()  # stateless: one for every session


def _declared_size(options: list[str]) -> int:
    """The SIZE= a client gave at MAIL (RFC 1870), 0 if none or not a number."""
    for option in options:
        if option.upper().startswith("SIZE="):
            value = option[5:]
            return int(value) if value.isdigit() and len(value) < 12 else 0
    return 0


class _MethodTables(NamedTuple):
    smtp: tuple[tuple[str, str], ...]  # (command, method name)
    auth: tuple[tuple[str, str, bool], ...]  # (mechanism, method name, on the session)
    hooks: tuple[tuple[str, str], ...]  # (command, hook name)
    ehlo_hook_ver: str | None


_TABLES: dict[tuple[type[SMTP], type[Handler]], _MethodTables] = {}


def _method_tables(session_cls: type[SMTP], handler_cls: type[Handler]) -> _MethodTables:
    """aiosmtpd's name lookups, as its __init__ makes them, once per pair of classes."""
    found = _TABLES.get((session_cls, handler_cls))
    if found is None:
        found = _TABLES[session_cls, handler_cls] = _find_methods(session_cls, handler_cls)
    return found


def _find_methods(session_cls: type[SMTP], handler_cls: type[Handler]) -> _MethodTables:
    auth: dict[str, tuple[str, bool]] = {}
    for cls, builtin in ((session_cls, True), (handler_cls, False)):
        for name in dir(cls):
            if name.startswith("auth_"):
                func = getattr(cls, name)
                default = name.replace("auth_", "").replace("__", "-")
                auth[getattr(func, "__auth_mechanism_name__", default)] = (name, builtin)
    hooks = tuple(
        (n.replace("handle_", ""), n) for n in dir(handler_cls) if n.startswith("handle_")
    )
    ehlo = getattr(handler_cls, "handle_EHLO", None)
    # aiosmtpd 1.4 accepts a 4-argument EHLO hook (deprecated) and a 5-argument one.
    ver = None if ehlo is None else "new" if len(inspect.signature(ehlo).parameters) == 6 else "old"
    return _MethodTables(
        smtp=tuple((n.replace("smtp_", ""), n) for n in dir(session_cls) if n.startswith("smtp_")),
        auth=tuple((m, n, b) for m, (n, b) in auth.items()),
        hooks=hooks,
        ehlo_hook_ver=ver,
    )


def factory(
    shared: Shared, *, implicit_tls: bool, hostname: str, tls_after_accept: bool = False
) -> Callable[[], RelaySMTP]:
    return lambda: RelaySMTP(
        shared, implicit_tls=implicit_tls, hostname=hostname, tls_after_accept=tls_after_accept
    )
