"""The one place that knows the order.

parse -> policies -> decision -> audit -> rewrite -> deliver -> audit.

A `Transaction` follows one client transaction (MAIL .. DATA). From MAIL onwards it holds
an upstream envelope leased from the delivery layer's pool (relay.pool), so that the
upstream's per-recipient answers reach the client at RCPT time ("250 means the upstream
accepted it"), and only after the decision is written to the audit log does the message
itself go upstream. The envelope is the transaction's alone; the session never sees it.
"""

from __future__ import annotations

import asyncio
import email.utils
import hashlib
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import structlog

from relay import claimowner, esmtp, maillog, pipeline, replies
from relay.address import domain_of
from relay.category import HEADER
from relay.decide import Decided, Request, Strikes, decide, ordinary
from relay.dedup import Claim, DedupError
from relay.delivery import UpstreamError
from relay.message import SessionFacts, ShapeLimits
from relay.model import (
    Action,
    Decision,
    DeliveryResult,
    Envelope,
    LinkMaker,
    Modification,
    RemoveHeader,
    Reply,
    TlsInfo,
    Verdict,
)
from relay.pool import Pool, UpstreamEnvelope
from relay.rewrite import RewriteError, has_footer, links_for, per_recipient, render_with
from relay.worker import Decisions, JobTimeout, RenderJob, Spec, WorkerError

if TYPE_CHECKING:
    from relay.audit import AuditLog
    from relay.config import Config
    from relay.dedup import DedupStore
    from relay.dkim import Signer
    from relay.metrics import Metrics
    from relay.phi.api import Detector
    from relay.rules import RuleSet
    from relay.spool.store import Spool

log = structlog.get_logger("relay.flow")


@dataclass(frozen=True, slots=True)
class Runtime:
    """Everything a transaction needs; replaced as a whole when configuration reloads."""

    config: Config
    rules: RuleSet
    audit: AuditLog
    metrics: Metrics
    upstream: Pool
    links: LinkMaker | None
    dedup: DedupStore | None
    # The policies' detector (with the roster), also used to keep PHI in upstream reply
    # text out of the audit log; None means the shared detector without a roster.
    detector: Detector | None = None

    # Worker processes for large messages and the record of timed-out ones; None: inline.
    decisions: Decisions | None = None
    # DKIM: signs after every change and handles signatures the changes made stale.
    signer: Signer | None = None
    # The opt-in spool: where mail goes when the upstream cannot take it now; None: off.
    spool: Spool | None = None

    @property
    def worker_spec(self) -> Spec:
        s = self.config.server
        return Spec(
            policy_file=self.rules.file,
            policy_digest=self.rules.digest,
            state_dir=self.config.state_dir,
            store_url=self.config.store_url,
            limits=self.limits,
            policy_timeout=s.policy_timeout,
            mode=s.mode,
        )

    @property
    def reply_detector(self) -> Detector:
        if self.detector is not None:
            return self.detector
        from relay.phi import default_detector

        return default_detector()

    @property
    def limits(self) -> ShapeLimits:
        s = self.config.server
        return ShapeLimits(
            s.max_header_bytes, s.max_mime_depth, s.bare_line_endings, s.max_received
        )


def new_id() -> str:
    return uuid.uuid4().hex


class Transaction:
    def __init__(
        self,
        runtime: Runtime,
        facts: SessionFacts,
        mail_from: str,
        mail_options: Sequence[str],
        smtputf8: bool,
        helo: str,
    ) -> None:
        self.rt = runtime
        self.facts = facts
        self.mail_from = mail_from
        self.options = tuple(mail_options)
        # What goes on to the upstream at MAIL (relay.esmtp.UPSTREAM_MAIL): BODY and
        # SMTPUTF8 describe the message; RET, ENVID and REQUIRETLS are the client's asks;
        # SIZE is the client's estimate, re-declared exactly once the message is known.
        # A connection passes each only if its upstream offers it, and refuses REQUIRETLS
        # mail when it does not.
        self.upstream_options = esmtp.upstream_mail(self.options)
        self.rcpt_options: dict[str, tuple[str, ...]] = {}  # NOTIFY, ORCPT per recipient
        self.smtputf8 = smtputf8
        self.helo = helo
        self.recipients: list[str] = []
        self.upstream: UpstreamEnvelope = runtime.upstream.begin()
        # The upstream could not take this transaction and the spool is on: the envelope is
        # accepted here and the message queued (250 then means "durably queued").
        self.spooling = False
        self._unsettled: list[str] = []  # claimed recipients not yet confirmed or released
        # For the service log's one line per message.
        self.decision_id = ""
        self.decision: Decision | None = None

    # --- envelope phase: proxied to the upstream so its answers reach the client ---------

    async def open(self) -> Reply | None:
        """Lease an upstream envelope and send MAIL. None means OK; a Reply is the refusal."""
        try:
            await self.upstream.mail(self.mail_from, self.upstream_options)
        except UpstreamError as err:
            await self._upstream_event("mail", err)
            if self._may_spool(err.reply):
                self.spooling = True
                return None
            return err.reply
        return None

    def _may_spool(self, reply: Reply) -> bool:
        # Only a transient failure is queued; a REQUIRETLS message is never held by a relay
        # that cannot yet know the next hop's answer.
        return (
            self.rt.spool is not None
            and reply.transient
            and not esmtp.requires_tls(self.upstream_options)
        )

    async def add_recipient(self, rcpt: str, options: Sequence[str] = ()) -> Reply | None:
        """`options`: the client's NOTIFY and ORCPT for this recipient (relay.esmtp)."""
        if len(self.recipients) >= self.rt.config.server.max_recipients:
            return Reply(452, "4.5.3", "Too many recipients; send the rest in another message")
        if self.spooling:  # the upstream is away: the spool takes the envelope
            return self._accept(rcpt, options)
        if not self.upstream.open:
            # The upstream dropped this transaction at an earlier RCPT; a fresh upstream
            # session has no MAIL, and its "503" would refuse a good recipient for good.
            return Reply(
                451,
                "4.4.2",
                "Upstream connection lost during this transaction; send RSET and try again",
            )
        try:
            reply = await self.upstream.rcpt(rcpt, options)
        except UpstreamError as err:
            await self._upstream_event("rcpt", err)
            if not self._may_spool(err.reply):
                return err.reply
            self.spooling = True
            return self._accept(rcpt, options)
        if not reply.success:
            await self._recipient_refused(rcpt, reply)
            return reply
        return self._accept(rcpt, options)

    def _accept(self, rcpt: str, options: Sequence[str]) -> Reply | None:
        """Take the recipient into the envelope; None is RCPT's "accepted"."""
        self.recipients.append(rcpt)
        self.rcpt_options[rcpt] = tuple(options)
        return None

    async def abort(self) -> None:
        await self.upstream.abort()

    def _failure(
        self, what: str, *, error: bool = False, detail: str | None = None, **fields: maillog.Field
    ) -> None:
        f = self.facts
        maillog.failure(
            what, peer=f.peer.host, session_id=f.session_id, error=error, detail=detail, **fields
        )

    async def _recipient_refused(self, rcpt: str, reply: Reply) -> None:
        """The upstream refused a recipient at RCPT: the client hears it at once and no
        decision or delivery record will name that recipient, so the refusal is its own
        record (the recipient as the log's keyed hash, never the address)."""
        try:
            await self.rt.audit.event_async(
                "recipient-refused",
                session_id=self.facts.session_id,
                stage="rcpt",
                upstream=self.rt.upstream.name,
                recipient=self.rt.audit.hash_recipient(rcpt),
                outcome="deferred" if reply.transient else "refused",
                reply_code=reply.code,
                reply_status=reply.status,
            )
        except Exception:
            self._failure("audit-write", error=True, stage="rcpt")

    async def _upstream_event(self, stage: str, err: UpstreamError) -> None:
        self._failure(
            "upstream-unavailable",
            stage=stage,
            upstream=self.rt.upstream.name,
            outcome=err.outcome,
            reply_code=err.reply.code,
            reply_status=err.reply.status,
        )
        try:
            await self.rt.audit.event_async(
                "upstream-unavailable",
                session_id=self.facts.session_id,
                stage=stage,
                upstream=self.rt.upstream.name,
                outcome=err.outcome,
                reply_code=err.reply.code,
                reply_status=err.reply.status,
            )
        except Exception:
            self._failure("audit-write", error=True, stage=stage)

    # --- message phase -------------------------------------------------------------------

    async def finish(self, raw: bytes) -> Reply:
        """The reply to DATA. Never raises: the session must stay in step for the next MAIL."""
        started = time.monotonic()
        try:
            reply = await self._finish(raw)
        except Exception as exc:
            # The type only: exception text could quote the message.
            self._failure(
                "internal-error",
                error=True,
                decision_id=self.decision_id or None,
                exception=type(exc).__name__,
            )
            await self.abort()
            reply = Reply(451, "4.3.0", "Internal error; try again later")
        self._log_message(reply, time.monotonic() - started)
        return reply

    def _log_message(self, reply: Reply, seconds: float) -> None:
        d = self.decision
        maillog.message(
            session_id=self.facts.session_id,
            decision_id=self.decision_id or "none",
            category=d.category if d else "unknown",
            decision=d.enforced_action.name.lower() if d else "none",
            reply=reply,
            seconds=seconds,
            recipients=len(self.recipients),
            accepted=len(d.accepted) if d else 0,
        )
        if d is not None:
            maillog.policy_failures(d, self.facts.peer.host)

    async def _finish(self, raw: bytes) -> Reply:
        started = time.monotonic()
        rt = self.rt
        decision_id = self.decision_id = new_id()
        envelope = Envelope(self.mail_from, tuple(self.recipients), self.options, self.smtputf8)
        decided = await self._decide(raw, envelope, decision_id)
        outcome, category = decided.outcome, decided.category
        if decided.raw is not None:
            raw = decided.raw

        if outcome.deciding is not None:
            reply = replies.for_verdict(outcome.deciding, rt.rules.categories.names())
        else:
            reply = Reply(250, "2.0.0", "Accepted for delivery")
        # Each recipient is claimed before anything is sent: a state store that is full or
        # locked is found now (451, nothing sent), and of two identical messages arriving
        # at once only one can take a recipient.
        claim = Claim("", decision_id, mine=outcome.accepted)
        claim_failed = False
        if rt.dedup is not None and outcome.enforced < Action.TEMPFAIL and outcome.accepted:
            fingerprint = rt.dedup.fingerprint(self.mail_from, raw)
            try:
                # The owner names this process, so if it dies mid-send the retry need
                # not wait out the lease (relay.claimowner).
                owner = claimowner.owner(decision_id)
                claim = await rt.dedup.claim(fingerprint, outcome.accepted, owner)
            except DedupError as err:
                self._failure("dedup-claim", error=True, decision_id=decision_id, detail=str(err))
                rt.metrics.dedup_error("claim")
                claim_failed = True
                reply = replies.by_reason("dedup.error")
        decision = Decision(
            decision_id=decision_id,
            session_id=self.facts.session_id,
            time=time.time(),
            peer=self.facts.peer,
            tls=self.facts.tls,
            auth_user=self.facts.auth_user,
            sender_domain=domain_of(self.mail_from),
            recipients=envelope.rcpt_tos,
            category=category,
            mode=rt.config.server.mode,
            verdicts=outcome.verdicts,
            action=outcome.action,
            enforced_action=outcome.enforced,
            reply=reply,
            accepted=outcome.accepted,
            dropped=outcome.dropped,
            size=len(raw),
        )
        self.decision = decision
        # The decision is on disk before anything is forwarded or refused.
        try:
            await rt.audit.decision_async(decision)
        except Exception:
            self._failure("audit-write", error=True, stage="decision", decision_id=decision_id)
            rt.metrics.audit_error()
            await self.abort()
            await self._release(claim, claim.mine, decision_id)
            return replies.by_reason("audit.error")
        rt.metrics.decision(decision, time.monotonic() - started)

        if outcome.enforced >= Action.TEMPFAIL or claim_failed:
            await self.abort()
            if claim_failed:
                await self._dedup_event(decision_id, "claim", len(outcome.accepted))
            return reply
        if not decided.judged:  # pragma: no cover - an unjudged message is never passed
            await self.abort()
            return replies.by_reason("rewrite.error")
        total = len(envelope.rcpt_tos)
        if claim.stale:
            # A crashed send left these claimed: whether they got it is unknown.
            await self._dedup_event(decision_id, "stale-claim", len(claim.stale))
        in_flight = replies.by_reason("dedup.in-flight")
        if claim.busy:
            await self._delivery(decision_id, claim.busy, in_flight, "in-flight-elsewhere", 0.0)
        if not claim.mine:
            await self.abort()
            if claim.busy:
                return in_flight
            await self._delivery(
                decision_id,
                (),
                Reply(250, "2.0.0", "already delivered"),
                "duplicate-suppressed",
                0.0,
            )
            done = Reply(250, "2.0.0", "Already delivered to every recipient; not sent again")
            return replies.with_suppressed(done, total, outcome.dropped)

        mods: tuple[Modification, ...] = (RemoveHeader(HEADER), *outcome.modifications)
        try:
            sent = await self._deliver(raw, claim, mods, category, decision_id)
        except BaseException:
            # Whatever was not settled goes back, so the client's retry can send it.
            await self._release(claim, self._unsettled, decision_id)
            raise
        return replies.with_suppressed(sent, total, outcome.dropped)

    # --- dedup: confirm what the upstream accepted, release the rest ---------------------

    async def _confirm(self, claim: Claim, recipients: tuple[str, ...], decision_id: str) -> None:
        self._unsettled = [r for r in self._unsettled if r not in recipients]
        if self.rt.dedup is None or not claim.fingerprint or not recipients:
            return
        try:
            await self.rt.dedup.confirm(claim, recipients)
        except DedupError as err:
            # The upstream accepted: that is the truth and the client hears 250. The claim
            # on disk still holds the recipients and the store retries the confirmation,
            # so a retry of this message is not sent again.
            self._failure("dedup-confirm", error=True, decision_id=decision_id, detail=str(err))
            self.rt.metrics.dedup_error("confirm")
            await self._dedup_event(decision_id, "confirm", len(recipients))

    async def _release(self, claim: Claim, recipients: Sequence[str], decision_id: str) -> None:
        self._unsettled = [r for r in self._unsettled if r not in recipients]
        if self.rt.dedup is None or not claim.fingerprint or not recipients:
            return
        try:
            await self.rt.dedup.release(claim, tuple(recipients))
        except DedupError as err:
            # Not lost: the claim lapses after dedup.claim_lease and a retry then sends it.
            self._failure("dedup-release", error=True, decision_id=decision_id, detail=str(err))
            self.rt.metrics.dedup_error("release")
            await self._dedup_event(decision_id, "release", len(recipients))

    async def _dedup_event(self, decision_id: str, stage: str, count: int) -> None:
        try:
            await self.rt.audit.event_async(
                "dedup-write-failed" if stage != "stale-claim" else "dedup-stale-claim",
                decision_id=decision_id,
                stage=stage,
                recipients=count,
            )
        except Exception:
            self._failure("audit-write", error=True, stage=f"dedup-{stage}")

    async def _decide(self, raw: bytes, envelope: Envelope, decision_id: str) -> Decided:
        """The policies' outcome: inline for a small message, else in a worker process."""
        rt = self.rt
        s = rt.config.server
        request = Request(raw, envelope, self.facts, decision_id)
        pool = rt.decisions.pool if rt.decisions is not None else None
        if pool is None or ordinary(raw, s.inline_max_bytes):
            # Small ordinary messages cost less inline than the trip to a worker
            # (bench/decide.py), and every step is bounded by their size.
            decided = await decide(
                request, rt.rules, rt.limits, policy_timeout=s.policy_timeout, mode=s.mode
            )
        else:
            try:
                decided = await pool.decide(rt.worker_spec, request, s.decision_timeout)
            except JobTimeout:
                return await self._timed_out(raw, envelope, [], "unknown")
            except WorkerError as err:
                self._failure(
                    "decision-worker", error=True, decision_id=decision_id, reason=err.reason
                )
                reason = "worker.busy" if err.reason == "worker.busy" else "worker.unavailable"
                unjudged = Verdict(rule="message", action=Action.TEMPFAIL, reason=reason)
                outcome = pipeline.combine([unjudged], envelope.rcpt_tos, s.mode)
                return Decided(outcome, "unknown", None, False)
        deciding = decided.outcome.deciding
        if deciding is not None and deciding.reason == "policy.timeout":
            verdicts = list(decided.outcome.verdicts)
            return await self._timed_out(raw, envelope, verdicts, decided.category)
        return decided

    async def _timed_out(
        self, raw: bytes, envelope: Envelope, verdicts: list[Verdict], category: str
    ) -> Decided:
        """A decision that ran out of time: deferred once, refused when it happens again."""
        rt = self.rt
        strikes = rt.decisions.strikes if rt.decisions is not None else _STRIKES
        # Hashing megabytes releases the GIL in hashlib; keep it off the event loop.
        digest = await asyncio.to_thread(lambda: hashlib.sha256(raw).digest())
        if not verdicts:
            verdicts = [Verdict(rule="message", action=Action.TEMPFAIL, reason="decision.timeout")]
        if strikes.strike(digest):
            verdicts.append(
                Verdict(rule="message", action=Action.REJECT, reason="message.too-complex")
            )
        outcome = pipeline.combine(verdicts, envelope.rcpt_tos, rt.config.server.mode)
        return Decided(outcome, category, None, False)

    def _received(self, decision_id: str) -> bytes:
        tls = self.facts.tls
        proto = "ESMTPS" if tls.active else "ESMTP"
        if self.facts.auth_user:
            proto += "A"
        with_tls = f" ({tls.version} {tls.cipher})" if tls.active else ""
        helo = "".join(c for c in self.helo if c.isalnum() or c in ".-_[]:")[:64] or "unknown"
        line = (
            f"Received: from {helo} ({self.facts.peer.host})\r\n"
            f"\tby {self.rt.config.server.hostname} (phi-relay) with {proto}{with_tls}\r\n"
            f"\tid {decision_id}; {email.utils.formatdate(localtime=False)}\r\n"
        )
        return line.encode("ascii", "replace")

    async def _deliver(
        self,
        raw: bytes,
        claim: Claim,
        mods: tuple[Modification, ...],
        category: str,
        decision_id: str,
    ) -> Reply:
        recipients = claim.mine
        self._unsettled = list(recipients)
        groups: list[tuple[str, ...]]
        groups = [(r,) for r in recipients] if per_recipient(mods) else [recipients]
        received = self._received(decision_id)
        delivered: list[str] = []
        queued: list[str] = []
        failures: list[tuple[Reply, int]] = []
        for index, group in enumerate(groups):
            rendered = await self._render(raw, mods, group, category)
            if isinstance(rendered, tuple):
                # A message that cannot be rewritten now never will be: 5xx, or the client
                # would retry forever. Only a missing link service is worth a retry.
                why, permanent = rendered
                reason = "rewrite.permanent" if permanent else "rewrite.error"
                if why == "rewrite.timeout" and permanent:
                    reason = "message.too-complex"  # timed out before: do not invite a retry
                self._failure("rewrite", decision_id=decision_id, reason=why)
                failed = replies.by_reason(reason)
                await self._delivery(decision_id, group, failed, "rewrite-failed", 0.0)
                failures.append((failed, len(group)))
                await self._release(claim, group, decision_id)
                continue
            body = rendered
            signed = await self._sign(raw, body, decision_id)
            if isinstance(signed, Reply):
                await self._delivery(decision_id, group, signed, "dkim-refused", 0.0)
                failures.append((signed, len(group)))
                await self._release(claim, group, decision_id)
                continue
            if self.spooling:
                refused: dict[str, Reply] = {}
                reply = await self._queue(group, received + signed, decision_id)
                if reply.success:
                    queued.extend(group)
            else:
                reply, refused = await self._send(group, received, signed, index == 0, decision_id)
                later = tuple(
                    r
                    for r in group
                    if (r in refused and refused[r].transient)
                    or (r not in refused and not reply.success and reply.transient)
                )
                if later and self._may_spool(Reply(451, "4.0.0", "deferred")):
                    # Deferred upstream: queue those; the others keep their own answers.
                    spooled = await self._queue(later, received + signed, decision_id)
                    if spooled.success:
                        refused = {r: a for r, a in refused.items() if r not in later}
                        reply = reply if reply.success else spooled
                        queued.extend(later)
            failures.extend((r, 1) for r in refused.values())
            served = tuple(r for r in group if r not in refused) if reply.success else ()
            delivered.extend(served)
            await self._confirm(claim, served, decision_id)
            # Refused or deferred (an ambiguous loss included: a retry must be able to send,
            # and the audit counts the possible duplicate): free for the client's retry.
            await self._release(claim, [r for r in group if r not in served], decision_id)
            if not reply.success and len(refused) < len(group):
                failures.append((reply, len(group) - len(refused)))
        if claim.busy:
            failures.append((replies.by_reason("dedup.in-flight"), len(claim.busy)))
            recipients = (*recipients, *claim.busy)
        if not failures and queued:
            return Reply(
                250,
                "2.0.0",
                f"Queued as {decision_id}: the upstream is unavailable; delivery will be "
                f"retried ({len(queued)} of {len(recipients)} recipients queued)",
            )
        if not failures:
            return Reply(250, "2.0.0", f"Delivered to upstream as {decision_id}")
        transient = [r for r, _ in failures if r.transient]
        worst = transient[0] if transient else failures[0][0]
        if delivered:
            # A retry is safe: recipients already served are skipped (dedup).
            note = f" (delivered to {len(delivered)} of {len(recipients)} recipients)"
            return Reply(worst.code, worst.status, worst.text + note)
        return worst

    async def _render(
        self, raw: bytes, mods: tuple[Modification, ...], group: tuple[str, ...], category: str
    ) -> bytes | tuple[str, bool]:
        """The bytes for one group, or (reason, permanent). Large messages render in a worker:
        the footer walk over a big HTML part is linear but would still hold the loop."""
        rt = self.rt
        s = rt.config.server
        recipient = group[0] if len(group) == 1 else None
        try:
            made = links_for(mods, recipient, category, rt.links)
            pool = rt.decisions.pool if rt.decisions is not None else None
            if pool is None or ordinary(raw, s.inline_max_bytes) or not has_footer(mods):
                return render_with(raw, mods, made)
        except RewriteError as err:
            return err.reason, err.permanent
        try:
            return await pool.render(RenderJob(raw, mods, category, made), s.decision_timeout)
        except JobTimeout:
            digest = await asyncio.to_thread(lambda: hashlib.sha256(raw).digest())
            return "rewrite.timeout", rt.decisions is not None and rt.decisions.strikes.strike(
                digest
            )
        except WorkerError as err:
            return err.reason, False

    async def _queue(self, group: tuple[str, ...], data: bytes, decision_id: str) -> Reply:
        """Into the spool, fsynced before this returns; the reply says queued."""
        from relay.spool.store import Entry, SpoolError

        spool = self.rt.spool
        assert spool is not None
        entry = Entry(
            self.mail_from,
            group,
            tuple(self.upstream_options),
            {r: self.rcpt_options.get(r, ()) for r in group},
            data,
        )
        first_retry = time.time() + self.rt.config.spool.min_backoff
        try:
            meta = await asyncio.to_thread(spool.put, entry, decision_id, first_retry)
        except SpoolError as err:
            log.error("spool write failed", decision_id=decision_id, error=str(err))
            failed = Reply(451, "4.3.0", "Cannot queue the message (spool write failed); try later")
            await self._delivery(decision_id, group, failed, "spool-failed", 0.0)
            return failed
        queued = Reply(250, "2.0.0", f"Queued as {meta.id}")
        await self._delivery(decision_id, group, queued, "spooled", 0.0)
        return queued

    async def _sign(self, raw: bytes, body: bytes, decision_id: str) -> bytes | Reply:
        """The last change: a stale signature handled per dkim.stale_signature, then ours."""
        signer = self.rt.signer
        if signer is None:
            return body
        from relay.dkim import DkimError, remove_signatures, stale_signatures

        stale = stale_signatures(raw, body) if signer.stale != "keep" else []
        if stale:
            # Signed before the relay and changed here: those signatures no longer verify.
            if signer.stale == "refuse":
                return replies.by_reason("dkim.stale-signature")
            body = remove_signatures(body, stale)
        if not signer.keys:
            return body
        try:
            signed, _ = await asyncio.to_thread(signer.sign, body)
        except DkimError as err:
            log.error("DKIM signing failed", decision_id=decision_id, error=str(err))
            return replies.by_reason("dkim.error")
        return signed

    async def _send(
        self, group: tuple[str, ...], received: bytes, data: bytes, first: bool, decision_id: str
    ) -> tuple[Reply, dict[str, Reply]]:
        """One upstream transaction. The first may reuse the envelope opened at MAIL/RCPT.
        `received` goes first, apart: joined to a large message it would be a second copy."""
        started = time.monotonic()
        tls = TlsInfo()
        refused: dict[str, Reply] = {}
        try:
            envelope = self.upstream
            reuse = first and envelope.open and tuple(self.recipients) == group
            if not reuse:
                await envelope.abort()
                envelope = self.upstream = self.rt.upstream.begin()
                size = len(received) + len(data)
                await envelope.mail(self.mail_from, esmtp.sized(self.upstream_options, size))
                for rcpt in group:
                    answer = await envelope.rcpt(rcpt, self.rcpt_options.get(rcpt, ()))
                    if not answer.success:
                        refused[rcpt] = answer
                if len(refused) == len(group):
                    await envelope.abort()
                    reply = next(iter(refused.values()))
                    outcome = "deferred" if reply.transient else "refused"
                    await self._delivery(decision_id, group, reply, outcome, started, refused, tls)
                    return reply, refused
            reply = await envelope.data(data, received)
            tls = envelope.tls
        except UpstreamError as err:
            tls = self.upstream.tls
            # After DATA was sent, a lost reply leaves the outcome unknown: the one window SMTP
            # cannot close. It is counted as "ambiguous" in the audit log.
            outcome = "ambiguous" if err.outcome in ("timeout", "disconnected") else err.outcome
            await self._delivery(decision_id, group, err.reply, outcome, started, refused, tls)
            return err.reply, refused
        outcome = "delivered" if reply.success else ("deferred" if reply.transient else "refused")
        await self._delivery(decision_id, group, reply, outcome, started, refused, tls)
        return reply, refused

    async def _delivery(
        self,
        decision_id: str,
        group: tuple[str, ...],
        reply: Reply,
        outcome: str,
        started: float,
        refused: dict[str, Reply] | None = None,
        tls: TlsInfo | None = None,
    ) -> None:
        result = DeliveryResult(
            decision_id=decision_id,
            upstream=self.rt.upstream.name,
            recipients=group,
            # Upstream words are kept only when the PHI detector finds nothing in them.
            reply=replies.for_audit(reply, self.rt.reply_detector),
            refused=refused or {},
            duration_ms=(time.monotonic() - started) * 1000 if started else 0.0,
            tls=tls or TlsInfo(),
            outcome=outcome,
        )
        self.rt.metrics.delivery(result)
        quiet = ("delivered", "duplicate-suppressed", "rewrite-failed", "spooled")
        if outcome not in quiet or refused:
            self._failure(
                "delivery",
                decision_id=decision_id,
                upstream=self.rt.upstream.name,
                outcome=outcome,
                reply_code=reply.code,
                reply_status=reply.status,
                recipients=len(group),
                refused=len(refused or {}),
            )
        try:
            await self.rt.audit.delivery_async(result)
        except Exception:
            # Cannot un-deliver: record the failure in the service log and the metrics.
            self._failure("audit-write", error=True, stage="delivery", decision_id=decision_id)
            self.rt.metrics.audit_error()


RuntimeGetter = Callable[[], Runtime]
# Strikes when the runtime has no Decisions of its own (a relay built without one).
_STRIKES = Strikes()
