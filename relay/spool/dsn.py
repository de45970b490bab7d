"""A delivery status notification (RFC 3464 multipart/report) for a spooled message that
failed for good or expired, addressed to its envelope sender."""

from __future__ import annotations

import email.utils
import uuid
from collections.abc import Mapping

from relay.model import Reply


def build(
    *,
    reporting_host: str,
    sender: str,
    failed: Mapping[str, Reply],
    original: bytes,
    envid: str = "",
    orcpt: Mapping[str, str] | None = None,
    expired: bool = False,
) -> bytes:
    """The DSN as bytes (CRLF). Carries the original's header only (RET=HDRS style, even
    for RET=FULL), never its body: the body may hold PHI and the sender has it already.
    `envid` and `orcpt` (per recipient) are the client's ENVID and ORCPT (RFC 3461 as
    given, xtext), written back as Original-Envelope-Id and Original-Recipient."""
    boundary = f"=_phi-relay-{uuid.uuid4().hex}"
    why = (
        "could not be delivered before the relay's queue lifetime ran out"
        if expired
        else "was refused by the next mail server"
    )
    human = (
        f"This is the mail relay at {reporting_host}.\r\n\r\n"
        f"Your message {why}, for {len(failed)} recipient(s). It will not be retried.\r\n"
    )
    original_of = orcpt or {}
    per_rcpt = "".join(
        (f"\r\nOriginal-Recipient: {original_of[rcpt]}" if original_of.get(rcpt) else "")
        + f"\r\nFinal-Recipient: rfc822;{rcpt}\r\n"
        f"Action: failed\r\n"
        f"Status: {reply.status}\r\n"
        f"Diagnostic-Code: smtp; {reply.code} {reply.status} {reply.text}\r\n"
        for rcpt, reply in failed.items()
    )
    status = f"Reporting-MTA: dns; {reporting_host}\r\n"
    if envid:
        status += f"Original-Envelope-Id: {envid}\r\n"
    status += f"Arrival-Date: {email.utils.formatdate(localtime=False)}\r\n" + per_rcpt
    head = original.split(b"\r\n\r\n", 1)[0] + b"\r\n"
    parts = [
        "From: Mail Delivery System <MAILER-DAEMON@" + reporting_host + ">",
        f"To: <{sender}>",
        "Subject: Undelivered mail returned to sender",
        f"Date: {email.utils.formatdate(localtime=False)}",
        f"Message-ID: <{uuid.uuid4().hex}@{reporting_host}>",
        "Auto-Submitted: auto-replied",
        "MIME-Version: 1.0",
        f'Content-Type: multipart/report; report-type=delivery-status; boundary="{boundary}"',
        "",
        f"--{boundary}",
        "Content-Type: text/plain; charset=us-ascii",
        "",
        human,
        f"--{boundary}",
        "Content-Type: message/delivery-status",
        "",
        status,
        f"--{boundary}",
        "Content-Type: text/rfc822-headers",
        "",
    ]
    text = "\r\n".join(parts).encode("utf-8", "surrogateescape") + b"\r\n"
    return text + head + f"\r\n--{boundary}--\r\n".encode()
