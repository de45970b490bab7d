"""The upstream: a verified-TLS SMTP client (or a local capture folder), errors mapped once.

Every failure becomes a Reply that says whether it is transient (4xx: the client
keeps the message and retries) or permanent (5xx, only when the upstream said so).
Plaintext is never used: no STARTTLS or a certificate that does not verify is a 4xx.
"""

from __future__ import annotations

import asyncio
import os
import re
import ssl
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import aiosmtplib
import structlog
from aiosmtplib.response import SMTPResponse

from relay import esmtp
from relay.address import DOT_ATOM_MAILBOX
from relay.model import Reply, TlsInfo

log = structlog.get_logger("relay.delivery")
_STATUS = re.compile(r"^([245]\.\d{1,3}\.\d{1,3})\s+")
# `email.utils.parseaddr` (aiosmtplib's quote_address, ~20 us) gives a plain mailbox back
# unchanged.
_PLAIN = re.compile(DOT_ATOM_MAILBOX)
# Upstreams quote addresses ("<jane@example.org>: Recipient address rejected"); an address
# can identify a patient, so it is not passed on to the client's reply (or its bounce).
_ADDRESS = re.compile(r"<?[^\s<>@]*[^\s<>@:]@[^\s<>]+>?")


class UpstreamError(Exception):
    """The upstream could not take the message; `reply` is what the client should hear."""

    def __init__(self, reply: Reply, outcome: str) -> None:
        super().__init__(str(reply))
        self.reply = reply
        self.outcome = outcome


class Connection(Protocol):
    """One open upstream session (TLS verified, EHLO and AUTH done), one command at a time."""

    name: str
    tls: TlsInfo
    # True once any byte of a message body went out: from then on a lost connection
    # leaves the outcome unknown and nothing may be sent again.
    body_started: bool

    @property
    def is_open(self) -> bool: ...

    @property
    def extensions(self) -> frozenset[str]:
        """EHLO keywords (lower-case) this connection's upstream offered after TLS."""
        ...

    async def mail(self, sender: str, options: list[str]) -> None: ...

    async def rcpt(self, recipient: str, options: Sequence[str] = ()) -> Reply: ...

    async def data(self, message: bytes, prefix: bytes = b"") -> Reply:
        """Send `prefix` (whole header lines, e.g. our Received) then `message` as one."""
        ...

    async def rset(self) -> None: ...

    async def noop(self) -> None: ...

    async def close(self) -> None: ...


class Connector(Protocol):
    """Opens new upstream connections; the pool (relay.pool) decides when."""

    name: str

    async def connect(self) -> Connection: ...


def is_null_sender(sender: str) -> bool:
    """`MAIL FROM:<>`: aiosmtpd hands it over as `<>`, other callers may pass ''."""
    return sender.strip() in ("", "<>")


def _one_line(text: str, limit: int = 300) -> str:
    flat = " ".join(text.replace("\r", " ").replace("\n", " ").split())
    return flat[:limit]


def reply_from_upstream(code: int, message: str) -> Reply:
    text = _ADDRESS.sub("<address>", _one_line(message))
    m = _STATUS.match(text)
    if m and m.group(1)[0] == str(code)[0]:
        status, text = m.group(1), text[m.end() :]
    else:
        status = {2: "2.0.0", 4: "4.0.0", 5: "5.0.0"}.get(code // 100, "4.0.0")
    if not 200 <= code < 600 or (code < 400 and code >= 300):
        # A code no SMTP client can act on: treat as a transient protocol error.
        return Reply(451, "4.5.0", f"Upstream answered unexpectedly ({code})")
    return Reply(code, status, f"Upstream: {text}" if text else "Upstream refused")


def _is_cert_failure(exc: BaseException) -> bool:
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ssl.SSLCertVerificationError):
            return True
        if "CERTIFICATE_VERIFY_FAILED" in str(seen) or "certificate verify failed" in str(seen):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _caused_by_ssl_error(exc: BaseException) -> bool:
    # aiosmtplib wraps a failed implicit-TLS handshake in SMTPConnectError.
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ssl.SSLError):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def map_error(exc: BaseException) -> UpstreamError:
    """The single place library exceptions become replies."""
    if isinstance(exc, UpstreamError):
        return exc
    if _is_cert_failure(exc):
        return UpstreamError(
            Reply(451, "4.7.5", "Upstream TLS certificate could not be verified; not sent"),
            "tls-verify-failed",
        )
    if _caused_by_ssl_error(exc):
        return UpstreamError(
            Reply(451, "4.7.5", "TLS handshake with the upstream failed; not sent"),
            "tls-failed",
        )
    if isinstance(exc, aiosmtplib.SMTPTimeoutError | TimeoutError):
        return UpstreamError(Reply(451, "4.4.2", "Upstream timed out; try again later"), "timeout")
    if isinstance(exc, aiosmtplib.SMTPResponseException) and exc.code >= 400:
        reply = reply_from_upstream(exc.code, exc.message)
        return UpstreamError(reply, "refused" if reply.code >= 500 else "deferred")
    if isinstance(exc, aiosmtplib.SMTPConnectError | ConnectionRefusedError):
        return UpstreamError(
            Reply(451, "4.4.1", "Upstream unreachable; try again later"), "unreachable"
        )
    if isinstance(exc, aiosmtplib.SMTPServerDisconnected | ConnectionError | EOFError):
        return UpstreamError(
            Reply(451, "4.4.2", "Connection to the upstream was lost; try again later"),
            "disconnected",
        )
    if isinstance(exc, OSError):
        return UpstreamError(
            Reply(451, "4.4.1", "Upstream unreachable; try again later"), "unreachable"
        )
    return UpstreamError(
        Reply(451, "4.3.0", "Upstream error; try again later"), f"error:{type(exc).__name__}"
    )


def _params(options: Sequence[str]) -> list[bytes]:
    return [option.encode("ascii") for option in options]  # as aiosmtplib encodes them


def client_tls_context(ca_file: Path | None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(ca_file) if ca_file else None)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.check_hostname = True
    ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


@dataclass
class SmtpConnection:
    client: aiosmtplib.SMTP
    name: str
    tls: TlsInfo
    timeout: float
    body_started: bool = False

    @property
    def is_open(self) -> bool:
        # An upstream that closed an idle connection is seen here without a round trip.
        return self.client.is_connected

    @property
    def extensions(self) -> frozenset[str]:
        # This connection's own EHLO answer (after STARTTLS): pooled connections can have
        # been opened before the upstream changed what it offers.
        return frozenset(self.client.esmtp_extensions)

    async def mail(self, sender: str, options: list[str]) -> None:
        self.body_started = False  # a new transaction: nothing of its message has gone out
        extensions = self.extensions
        if esmtp.requires_tls(options) and "requiretls" not in extensions:
            # RFC 8689 5: never hand a REQUIRETLS message to a hop that does not promise it.
            raise UpstreamError(Reply(*esmtp.NO_REQUIRETLS_UPSTREAM), "no-requiretls")
        options = esmtp.for_upstream(options, extensions)
        try:
            if is_null_sender(sender):
                await self._mail_null(options)
            elif _PLAIN.fullmatch(sender):
                resp = await self.client.execute_command(
                    b"MAIL", b"FROM:<" + sender.encode("ascii") + b">", *_params(options)
                )
                if resp.code != 250:  # as aiosmtplib's mail()
                    raise aiosmtplib.SMTPSenderRefused(resp.code, resp.message, sender)
            else:
                await self.client.mail(sender, options=options, encoding="utf-8")
        except Exception as exc:
            raise map_error(exc) from exc

    async def _mail_null(self, options: list[str]) -> None:
        # aiosmtplib validates the sender as a mailbox and refuses `<>`; bounces and DSNs
        # need exactly the null reverse-path (RFC 5321 4.5.5).
        resp = await self.client.execute_command(
            b"MAIL", b"FROM:<>", *(o.encode("ascii") for o in options)
        )
        if resp.code != 250:
            raise aiosmtplib.SMTPSenderRefused(resp.code, resp.message, "<>")

    async def rcpt(self, recipient: str, options: Sequence[str] = ()) -> Reply:
        given = esmtp.for_upstream(options, self.extensions)
        try:
            if _PLAIN.fullmatch(recipient):
                resp = await self.client.execute_command(
                    b"RCPT", b"TO:<" + recipient.encode("ascii") + b">", *_params(given)
                )
                if resp.code not in (250, 251):  # as aiosmtplib's rcpt()
                    return reply_from_upstream(resp.code, resp.message)
            else:
                await self.client.rcpt(recipient, options=given, encoding="utf-8")
        except aiosmtplib.SMTPRecipientRefused as exc:
            return reply_from_upstream(exc.code, exc.message)
        except Exception as exc:
            raise map_error(exc) from exc
        return Reply(250, "2.1.5", "OK")

    async def data(self, message: bytes, prefix: bytes = b"") -> Reply:
        """DATA, then the message. A failure before the 354 has sent nothing of it."""
        self.body_started = False
        try:
            start = await self.client.execute_command(b"DATA")
            if start.code != 354:
                return reply_from_upstream(start.code, start.message)
            self.body_started = True
            resp = await _send_body(self.client, prefix, message, self.timeout)
        except Exception as exc:
            self.client.close()  # a half-sent body leaves the session out of step
            raise map_error(exc) from exc
        return reply_from_upstream(resp.code, resp.message)

    async def rset(self) -> None:
        try:
            await self.client.rset()
        except Exception as exc:
            raise map_error(exc) from exc

    async def noop(self) -> None:
        try:
            await self.client.noop()
        except Exception as exc:
            raise map_error(exc) from exc

    async def close(self) -> None:
        if not self.client.is_connected:
            return
        try:
            async with asyncio.timeout(5):
                await self.client.quit()
        except Exception:
            self.client.close()


_CHUNK = 64 * 1024
_LINE_ENDINGS = re.compile(rb"\r\n|\n|\r(?!\n)")
_LEADING_DOT = re.compile(rb"(?m)^\.")


def dot_stuffed(message: bytes, chunk: int = _CHUNK) -> Iterator[bytes]:
    """The message as DATA carries it (CRLF lines, leading dots doubled, RFC 5321 4.5.2),
    in pieces of about `chunk` bytes cut after a line end, so no whole copy is made."""
    start, size = 0, len(message)
    ended = False
    while start < size:
        cut = message.find(b"\n", start + chunk)
        end = size if cut == -1 else cut + 1
        piece = message[start:end]
        # The substitutions only where they change something (the usual piece has CRLF
        # lines and no leading dot): a count and a search cost ~10x less than the two subs.
        pairs = piece.count(b"\r\n")
        if piece.count(b"\n") != pairs or piece.count(b"\r") != pairs:
            piece = _LINE_ENDINGS.sub(b"\r\n", piece)
        if piece.startswith(b".") or b"\n." in piece:
            piece = _LEADING_DOT.sub(b"..", piece)
        ended = piece.endswith(b"\r\n")
        yield piece
        start = end
    if not ended:
        yield b"\r\n"


def stuffed_parts(prefix: bytes, message: bytes) -> Iterator[bytes]:
    """`dot_stuffed(prefix + message)` without making that whole copy. `prefix` is whole
    lines (else it is joined after all: a message's first line must start a line)."""
    if prefix and not prefix.endswith(b"\n"):
        prefix, message = b"", prefix + message
    if prefix:
        yield from dot_stuffed(prefix)
    if message or not prefix:
        yield from dot_stuffed(message)


async def _send_body(
    client: aiosmtplib.SMTP, prefix: bytes, message: bytes, timeout: float
) -> SMTPResponse:
    # aiosmtplib's data() builds three whole copies of the message before it writes; here
    # it goes out in pieces with the transport's flow control, then the final dot.
    proto = client.protocol
    if proto is None:
        raise aiosmtplib.SMTPServerDisconnected("Connection lost")
    async with asyncio.timeout(timeout):
        # As aiosmtplib does before a write that expects a reply: an early answer (552
        # mid-body) must not be dropped as unsolicited.
        proto._response_pending = True
        if len(prefix) + len(message) <= _CHUNK:
            # A small message (most) goes out in one write with its final dot: one TLS
            # record and one send instead of three, for a copy of at most _CHUNK bytes.
            proto.write(b"".join([*stuffed_parts(prefix, message), b".\r\n"]))
        else:
            for piece in stuffed_parts(prefix, message):
                proto.write(piece)
                await proto._drain_helper()
            proto.write(b".\r\n")
    return await proto.read_response(timeout=timeout)


@dataclass
class SmtpUpstream:
    host: str
    port: int
    implicit_tls: bool
    tls_context: ssl.SSLContext
    timeout: float
    local_hostname: str
    username: str = ""
    password: str | None = None
    name: str = field(init=False)

    def __post_init__(self) -> None:
        self.name = f"{self.host}:{self.port}"

    async def connect(self) -> Connection:
        client = aiosmtplib.SMTP(
            hostname=self.host,
            port=self.port,
            use_tls=self.implicit_tls,
            start_tls=False,
            tls_context=self.tls_context,
            timeout=self.timeout,
            local_hostname=self.local_hostname,
        )
        try:
            await client.connect()
            await client.ehlo()
            if not self.implicit_tls:
                if not client.supports_extension("starttls"):
                    client.close()
                    raise UpstreamError(
                        Reply(
                            451,
                            "4.7.4",
                            "Upstream does not offer STARTTLS; not sending in plaintext",
                        ),
                        "no-starttls",
                    )
                await client.starttls(tls_context=self.tls_context)
                await client.ehlo()
            if self.username:
                await client.login(self.username, self.password or "")
        except Exception as exc:
            client.close()
            err = map_error(exc)
            if isinstance(exc, aiosmtplib.SMTPAuthenticationError):
                # Our credentials are an operator problem: never a 5xx for the client's mail.
                err = UpstreamError(
                    Reply(451, "4.7.0", "Relay could not authenticate to the upstream"),
                    "upstream-auth-failed",
                )
            raise err from exc
        return SmtpConnection(client, self.name, _tls_of(client), self.timeout)


def _tls_of(client: aiosmtplib.SMTP) -> TlsInfo:
    obj = client.get_transport_info("ssl_object")
    if isinstance(obj, ssl.SSLObject | ssl.SSLSocket):
        cipher = obj.cipher()
        return TlsInfo(obj.version(), cipher[0] if cipher else None)
    return TlsInfo()


@dataclass
class CaptureConnection:
    folder: Path
    name: str = "capture"
    tls: TlsInfo = field(default_factory=lambda: TlsInfo("local", "none"))
    body_started: bool = False
    is_open: bool = True
    # The capture folder is the last stop, not a hop: nothing is passed further, so there
    # is no extension to offer and REQUIRETLS mail is simply stored.
    extensions: frozenset[str] = frozenset()
    sender: str = ""
    recipients: list[str] = field(default_factory=list)

    async def mail(self, sender: str, options: list[str]) -> None:
        self.sender, self.recipients = sender, []

    async def rcpt(self, recipient: str, options: Sequence[str] = ()) -> Reply:
        self.recipients.append(recipient)
        return Reply(250, "2.1.5", "OK")

    async def data(self, message: bytes, prefix: bytes = b"") -> Reply:
        name = f"{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:12]}.eml"
        envelope = (
            f"X-Captured-Mail-From: <{'' if is_null_sender(self.sender) else self.sender}>\r\n"
            + "".join(f"X-Captured-Rcpt-To: <{r}>\r\n" for r in self.recipients)
        ).encode("utf-8", "surrogateescape")
        await asyncio.to_thread(_write_atomic, self.folder / name, envelope + prefix + message)
        return Reply(250, "2.0.0", f"Captured as {name}")

    async def rset(self) -> None:
        self.sender, self.recipients = "", []

    async def noop(self) -> None:
        return None

    async def close(self) -> None:
        self.is_open = False


def _write_atomic(path: Path, data: bytes) -> None:
    # Captured mail is PHI: owner-only, whatever the process umask.
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_suffix(".tmp")
    with os.fdopen(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    tmp.rename(path)


@dataclass
class CaptureUpstream:
    """Development stand-in for a provider: delivered mail lands as .eml files in a folder."""

    folder: Path
    name: str = "capture"

    async def connect(self) -> Connection:
        self.folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        return CaptureConnection(self.folder)
