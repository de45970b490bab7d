"""MAIL and RCPT parameters of REQUIRETLS (RFC 8689) and DSN (RFC 3461): syntax, and what
an upstream may be given.

aiosmtpd upper-cases parameters and refuses any it does not know with 555; the session
hands this module the parameter text exactly as the client sent it (ENVID and ORCPT
are case-sensitive xtext), and the relay passes the parameters on only to an upstream
that advertises the extension. A REQUIRETLS message is never given to an upstream that
does not offer REQUIRETLS: that is `550 5.7.30` (RFC 8689 section 5).
"""

from __future__ import annotations

import re
from collections.abc import Sequence, Set

MAIL_PARAMS = frozenset({"RET", "ENVID", "REQUIRETLS"})
RCPT_PARAMS = frozenset({"NOTIFY", "ORCPT"})
DSN_PARAMS = frozenset({"RET", "ENVID", "NOTIFY", "ORCPT"})
# xtext (RFC 3461 4): printable ASCII except "+" and "=", or "+" and two upper-case hex digits.
_XTEXT = re.compile(r"(?:[!-*,-<>-~]|\+[0-9A-F]{2})+")
_ADDR_TYPE = re.compile(r"[A-Za-z0-9][A-Za-z0-9-]*")
ENVID_MAX = 100  # RFC 3461 4.4
ORCPT_MAX = 500  # RFC 3461 4.2

NO_REQUIRETLS_UPSTREAM = (
    550,
    "5.7.30",
    "REQUIRETLS support required: the upstream does not offer REQUIRETLS; not sent",
)


class ParamError(Exception):
    """A parameter the client got wrong; `reply` says which and what is expected."""

    def __init__(self, reply: str) -> None:
        super().__init__(reply)
        self.reply = reply


def split(text: str) -> list[tuple[str, str | None]]:
    """`KEY[=VALUE] ...` as sent -> [(KEY upper-cased, VALUE as sent or None)]."""
    out: list[tuple[str, str | None]] = []
    for item in text.split():
        key, eq, value = item.partition("=")
        out.append((key.upper(), value if eq else None))
    return out


def _once(pairs: list[tuple[str, str | None]], verb: str) -> None:
    seen: set[str] = set()
    for key, _ in pairs:
        if key in seen:
            raise ParamError(f"501 5.5.4 {key} given twice in {verb}")
        seen.add(key)


def check_mail(text: str) -> list[str]:
    """The MAIL parameters of ours, validated, in the client's spelling (`RET=HDRS`, ...)."""
    pairs = [(k, v) for k, v in split(text) if k in MAIL_PARAMS]
    _once(pairs, "MAIL")
    out: list[str] = []
    for key, value in pairs:
        if key == "RET":
            if value is None or value.upper() not in ("FULL", "HDRS"):
                raise ParamError("501 5.5.4 RET must be FULL or HDRS (RFC 3461)")
            out.append(f"RET={value.upper()}")
        elif key == "ENVID":
            if value is None or len(value) > ENVID_MAX or not _XTEXT.fullmatch(value):
                raise ParamError(
                    f"501 5.5.4 ENVID must be xtext of at most {ENVID_MAX} characters (RFC 3461)"
                )
            out.append(f"ENVID={value}")
        else:  # REQUIRETLS
            if value is not None:
                raise ParamError("501 5.5.4 REQUIRETLS takes no value (RFC 8689)")
            out.append("REQUIRETLS")
    return out


def check_rcpt(text: str) -> list[str]:
    """The RCPT parameters of ours, validated, in the client's spelling."""
    pairs = [(k, v) for k, v in split(text) if k in RCPT_PARAMS]
    _once(pairs, "RCPT")
    out: list[str] = []
    for key, value in pairs:
        if key == "NOTIFY":
            words = (value or "").upper().split(",")
            if (
                value is None
                or (words != ["NEVER"] and not set(words) <= {"SUCCESS", "FAILURE", "DELAY"})
                or len(set(words)) != len(words)
            ):
                raise ParamError(
                    "501 5.5.4 NOTIFY must be NEVER, or SUCCESS, FAILURE and DELAY "
                    "separated by commas (RFC 3461)"
                )
            out.append(f"NOTIFY={','.join(words)}")
        else:  # ORCPT
            addr_type, semi, addr = (value or "").partition(";")
            if (
                not semi
                or not _ADDR_TYPE.fullmatch(addr_type)
                or not _XTEXT.fullmatch(addr)
                or len(value or "") > ORCPT_MAX
            ):
                raise ParamError(
                    "501 5.5.4 ORCPT must be addr-type;xtext, e.g. rfc822;jane@example.org "
                    "(RFC 3461)"
                )
            out.append(f"ORCPT={value}")
    return out


# MAIL parameters that go on to the upstream (each only if it offers the extension).
UPSTREAM_MAIL = frozenset({"BODY", "SMTPUTF8", "SIZE", *MAIL_PARAMS})


def upstream_mail(options: Sequence[str]) -> list[str]:
    """The client's MAIL parameters the upstream may be given, in the client's order."""
    return [o for o in options if o.partition("=")[0].upper() in UPSTREAM_MAIL]


def sized(options: Sequence[str], size: int) -> list[str]:
    """`options` with SIZE declaring exactly `size` (the bytes the upstream gets)."""
    rest = [o for o in options if o.partition("=")[0].upper() != "SIZE"]
    return [*rest, f"SIZE={size}"]


def requires_tls(options: Sequence[str]) -> bool:
    return any(o.upper() == "REQUIRETLS" for o in options)


def for_upstream(options: Sequence[str], extensions: Set[str]) -> list[str]:
    """`options` an upstream with these EHLO keywords (lower-case) may be given.

    DSN parameters go only to a DSN upstream (else the upstream's own DSNs simply follow
    its defaults), SIZE only to one offering SIZE; BODY and SMTPUTF8 always (a message
    that needs them cannot go without). REQUIRETLS is checked by the caller, as it
    refuses rather than drops.
    """
    out: list[str] = []
    for option in options:
        key = option.partition("=")[0].upper()
        if key in DSN_PARAMS and "dsn" not in extensions:
            continue
        if key == "SIZE" and "size" not in extensions:
            continue
        if key == "REQUIRETLS" and "requiretls" not in extensions:
            continue
        out.append(option)
    return out
