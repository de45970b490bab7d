"""RelaySMTP builds aiosmtpd's per-connection state itself (method tables found once per
class): it must be exactly what aiosmtpd's own SMTP.__init__ builds, or an aiosmtpd upgrade
that changes its __init__ would go unnoticed."""

from __future__ import annotations

import asyncio
import inspect
import ssl
import time
import weakref
from types import SimpleNamespace
from typing import Any

import pytest
from aiosmtpd.smtp import SMTP

from relay.config import Config
from relay.session import Handler, RelaySMTP, _CrlfLineReader


class _AiosmtpdInit(RelaySMTP):
    """The same session, set up by aiosmtpd's own __init__."""

    def _init_aiosmtpd(self, handler: Handler, **kw: Any) -> None:
        SMTP.__init__(
            self,
            handler,
            enable_SMTPUTF8=True,
            decode_data=False,
            ident="phi-relay ESMTP",
            require_starttls=False,
            auth_required=False,
            auth_require_tls=True,
            **kw,
        )
        self._stream_reader.__class__ = _CrlfLineReader


def _shared() -> Any:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.verify_mode = ssl.CERT_NONE
    return SimpleNamespace(runtime=SimpleNamespace(config=Config()), tls_context=ctx)


def _comparable(name: str, value: Any) -> Any:
    if name == "_smtp_methods":
        return {k: v.__func__ for k, v in value.items()}
    if name == "_handle_hooks":
        return {k: (v.__func__, type(v.__self__)) for k, v in value.items()}
    if name == "_auth_methods":
        return {k: (v.method.__func__, v.is_builtin) for k, v in value.items()}
    if name == "command_size_limits":
        return dict(value)
    if inspect.ismethod(value):  # bound to this session in both
        return value.__func__
    if isinstance(value, weakref.ref):
        return type(value())
    if isinstance(value, asyncio.Future | asyncio.StreamReader | asyncio.Task):
        return type(value)  # a new one per session in both
    if name == "session_id":
        return None
    return value


@pytest.mark.parametrize("implicit_tls", [False, True])
async def test_same_state_as_aiosmtpd_init(implicit_tls: bool) -> None:
    shared = _shared()
    ours = RelaySMTP(shared, implicit_tls=implicit_tls, hostname="relay.test")
    theirs = _AiosmtpdInit(shared, implicit_tls=implicit_tls, hostname="relay.test")
    assert sorted(vars(ours)) == sorted(vars(theirs))
    for name in vars(ours):
        mine, ref = _comparable(name, vars(ours)[name]), _comparable(name, vars(theirs)[name])
        assert mine == ref, name
    assert set(ours._smtp_methods) >= {"EHLO", "MAIL", "RCPT", "DATA", "STARTTLS", "AUTH"}
    # EHLO is the session's own (RelaySMTP.smtp_EHLO): the handler has no EHLO hook.
    assert ours._ehlo_hook_ver is None
    assert "EHLO" not in ours._handle_hooks
    assert type(ours._stream_reader) is _CrlfLineReader
    assert ours._stream_reader._limit == ours.line_length_limit  # type: ignore[attr-defined]


async def test_session_setup_is_cheaper() -> None:
    shared = _shared()
    for cls in (RelaySMTP, _AiosmtpdInit):  # warm both (the tables are built on first use)
        cls(shared, implicit_tls=False, hostname="relay.test")

    def per_session(cls: type[RelaySMTP]) -> float:
        start = time.perf_counter()
        for _ in range(300):
            cls(shared, implicit_tls=False, hostname="relay.test")
        return (time.perf_counter() - start) / 300

    ours = min(per_session(RelaySMTP) for _ in range(3))
    theirs = min(per_session(_AiosmtpdInit) for _ in range(3))
    assert ours < theirs / 2, (ours, theirs)
