"""Send spooled messages again with exponential backoff; bounce what fails for good or expires.

One task per relay process scans the spool every `scan_interval` seconds. Backoff as
Postfix: `min_backoff` doubling per attempt up to `max_backoff`; after `lifetime` a DSN
goes to the sender. An entry is sent by whoever holds its lock (relay.spool.store), so
worker processes sharing one spool never send it twice; it is removed only after the
upstream accepted it (or it was bounced): a crash between the upstream's 250 and the
removal sends it once more on restart, the one documented duplicate window.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import structlog

from relay import esmtp
from relay.delivery import UpstreamError, is_null_sender
from relay.model import DeliveryResult, Reply, TlsInfo
from relay.pool import Pool
from relay.spool import dsn
from relay.spool.store import Entry, Meta, Spool, SpoolError, retried

if TYPE_CHECKING:
    from relay.audit import AuditLog
    from relay.config import Config
    from relay.metrics import Metrics
    from relay.phi.api import Detector

log = structlog.get_logger("relay.spool")


class Context(Protocol):
    """What a retry needs of the running relay (relay.flow.Runtime, read at each attempt,
    so a reload's new upstream or audit settings apply to the queue too)."""

    @property
    def config(self) -> Config: ...

    @property
    def audit(self) -> AuditLog: ...

    @property
    def metrics(self) -> Metrics: ...

    @property
    def upstream(self) -> Pool: ...

    @property
    def reply_detector(self) -> Detector: ...


@dataclass(frozen=True, slots=True)
class Backoff:
    min_backoff: float = 300.0
    max_backoff: float = 4000.0
    lifetime: float = 5 * 86400.0

    def next_at(self, attempts: int, now: float) -> float:
        """When to try again after `attempts` retries (0: the client's own delivery)."""
        delay = min(self.max_backoff, self.min_backoff * 2.0 ** max(0, attempts))
        return now + float(delay)


class Retrier:
    def __init__(
        self,
        spool: Spool,
        runtime: Callable[[], Context],
        backoff: Backoff,
        scan_interval: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.spool = spool
        self._runtime = runtime
        self.backoff = backoff
        self.scan_interval = scan_interval
        self._clock = clock
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self._wake = asyncio.Event()

    def start(self) -> None:
        self._stopping = False
        self._wake = asyncio.Event()
        self._task = asyncio.get_running_loop().create_task(self._loop())

    async def stop(self, grace: float = 30.0) -> None:
        """Let the attempt in progress finish (a send cut off after the upstream's 250 would
        be sent again after the restart), at most `grace` seconds; then cancel."""
        if self._task is None:
            return
        self._stopping = True
        self._wake.set()
        try:
            await asyncio.wait_for(asyncio.shield(self._task), grace)
        except TimeoutError:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._task = None

    async def _loop(self) -> None:
        while not self._stopping:
            try:
                await self.run_due()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the type only: a message could be in the text
                log.error("spool scan failed", error=type(exc).__name__)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.scan_interval)

    async def run_due(self) -> int:
        """Try every due entry once; returns how many were tried."""
        now = self._clock()
        due = [m for m in await asyncio.to_thread(self.spool.metas) if m.next_at <= now]
        tried = 0
        for meta in due:
            if self._stopping:
                break
            tried += await self._claimed_attempt(meta.id)
        size, oldest = await asyncio.to_thread(self.spool.stats, self._clock())
        self._runtime().metrics.spool(size, oldest)
        return tried

    async def _claimed_attempt(self, entry_id: str) -> int:
        lock = await asyncio.to_thread(self.spool.lock, entry_id)
        if lock is None:
            return 0  # being sent by another worker, or gone since the listing
        try:
            # Read again under the lock: another worker may have tried it just now.
            meta = await asyncio.to_thread(self.spool.meta_of, entry_id)
            if meta is None or meta.next_at > self._clock():
                return 0
            await self._attempt(meta)
            return 1
        finally:
            lock.close()

    async def _attempt(self, meta: Meta) -> None:
        rt = self._runtime()
        try:
            entry = await asyncio.to_thread(self.spool.load, meta.id)
        except SpoolError as err:
            log.error("spool entry unreadable; left in place", entry=meta.id, error=str(err))
            return
        started = time.monotonic()
        reply, refused, tls, unknown = await _send(rt.upstream, entry)
        now = self._clock()
        later = {r: a for r, a in refused.items() if a.transient}
        never = {r: a for r, a in refused.items() if not a.transient}
        if not reply.success:
            for rcpt in entry.recipients:
                if rcpt not in refused:
                    (later if reply.transient else never)[rcpt] = reply
        delivered = tuple(r for r in entry.recipients if r not in later and r not in never)
        if delivered:
            await self._record(rt, meta, delivered, reply, "delivered", started, tls)
        expired = bool(later) and now - meta.created >= self.backoff.lifetime
        if expired:
            never.update(later)
            later = {}
        if never:
            first = next(iter(never.values()))
            await self._record(rt, meta, tuple(never), first, "bounced", started, tls)
            if not meta.dsn:
                await self._bounce(rt, meta, entry, never, expired)
        if not later:
            await asyncio.to_thread(self.spool.delete, meta.id)
            return
        first = next(iter(later.values()))
        # Lost after the message went out: it may have arrived; counted like flow does.
        outcome = "ambiguous" if unknown else "deferred"
        await self._record(rt, meta, tuple(later), first, outcome, started, tls)
        next_at = self.backoff.next_at(meta.attempts + 1, now)
        if len(later) == len(entry.recipients):
            await asyncio.to_thread(self.spool.update, retried(meta, next_at, first.status))
            return
        # Some went out: keep only the others (new entry first, so none is ever lost).
        rest = Entry(
            entry.sender,
            tuple(later),
            entry.mail_options,
            {r: entry.rcpt_options.get(r, ()) for r in later},
            entry.data,
        )
        await asyncio.to_thread(self.spool.put, rest, meta.decision_id, next_at, meta)
        await asyncio.to_thread(self.spool.delete, meta.id)

    async def _bounce(
        self, rt: Context, meta: Meta, entry: Entry, failed: dict[str, Reply], expired: bool
    ) -> None:
        if is_null_sender(entry.sender):
            return  # never a bounce for a bounce (RFC 5321 6.1)
        # RFC 3461 4.1: NOTIFY=NEVER, or a NOTIFY list without FAILURE, asks for no DSN.
        wanted = {r: a for r, a in failed.items() if _wants_failure(entry.rcpt_options.get(r))}
        if not wanted:
            return
        params = dict(esmtp.split(" ".join(entry.mail_options)))
        rcpt_params = {
            r: dict(esmtp.split(" ".join(entry.rcpt_options.get(r, ())))) for r in wanted
        }
        report = dsn.build(
            reporting_host=rt.config.server.hostname,
            sender=entry.sender,
            failed=wanted,
            original=entry.data,
            envid=params.get("ENVID") or "",
            orcpt={r: p.get("ORCPT") or "" for r, p in rcpt_params.items()},
            expired=expired,
        )
        bounce = Entry("<>", (entry.sender,), (), {}, report)
        reply, _, _, _ = await _send(rt.upstream, bounce)
        if reply.success or not reply.transient:
            if not reply.success:
                log.error("DSN refused by the upstream", status=reply.status)
            await self._event(rt, "dsn-sent" if reply.success else "dsn-refused", meta, reply)
            return
        # The upstream is down: the DSN waits in the spool like any message (it has the
        # null sender, so it is never bounced in turn).
        retry_at = self.backoff.next_at(0, self._clock())
        await asyncio.to_thread(self.spool.put, bounce, meta.decision_id, retry_at, dsn=True)
        await self._event(rt, "dsn-queued", meta, reply)

    async def _event(self, rt: Context, event: str, meta: Meta, reply: Reply) -> None:
        try:
            await rt.audit.event_async(
                event,
                decision_id=meta.decision_id,
                reply_code=reply.code,
                reply_status=reply.status,
            )
        except Exception:
            log.error("audit event failed", audit_event=event, decision_id=meta.decision_id)
            rt.metrics.audit_error()

    async def _record(
        self,
        rt: Context,
        meta: Meta,
        recipients: tuple[str, ...],
        reply: Reply,
        outcome: str,
        started: float,
        tls: TlsInfo,
    ) -> None:
        from relay import replies

        result = DeliveryResult(
            decision_id=meta.decision_id,
            upstream=rt.upstream.name,
            recipients=recipients,
            reply=replies.for_audit(reply, rt.reply_detector),
            refused={},
            duration_ms=(time.monotonic() - started) * 1000,
            tls=tls,
            # A queued DSN's own fate, apart from the message it reports on.
            outcome=f"dsn-{outcome}" if meta.dsn else outcome,
            attempt=meta.attempts + 2,  # the first attempt was the client's own delivery
        )
        rt.metrics.delivery(result)
        try:
            await rt.audit.delivery_async(result)
        except Exception:
            log.error("audit delivery record failed", decision_id=meta.decision_id)
            rt.metrics.audit_error()


def _wants_failure(options: tuple[str, ...] | None) -> bool:
    for key, value in esmtp.split(" ".join(options or ())):
        if key == "NOTIFY":
            return "FAILURE" in (value or "").upper().split(",")
    return True  # no NOTIFY: failures are reported (RFC 3461 4.1)


async def _send(upstream: Pool, entry: Entry) -> tuple[Reply, dict[str, Reply], TlsInfo, bool]:
    """One upstream transaction through the pool: (reply, refused recipients, TLS, and
    whether the outcome is unknown: the connection was lost after DATA had begun)."""
    refused: dict[str, Reply] = {}
    envelope = upstream.begin()
    in_data = False
    try:
        await envelope.mail(entry.sender, esmtp.sized(entry.mail_options, len(entry.data)))
        for rcpt in entry.recipients:
            answer = await envelope.rcpt(rcpt, entry.rcpt_options.get(rcpt, ()))
            if not answer.success:
                refused[rcpt] = answer
        if len(refused) == len(entry.recipients):
            await envelope.abort()
            return next(iter(refused.values())), refused, envelope.tls, False
        in_data = True
        return await envelope.data(entry.data), refused, envelope.tls, False
    except UpstreamError as err:
        await envelope.abort()
        unknown = in_data and err.outcome in ("timeout", "disconnected")
        return err.reply, refused, envelope.tls, unknown
