"""Prometheus metrics: one method per event, labels that can never hold PHI.

Every label value is either from a fixed set (actions, reply classes, known
categories) or passes a strict code pattern; anything else is counted as "other" or
"unknown". So an address, subject or free text that reached a label by mistake is
never exported, and label cardinality stays bounded. docs/metrics.md lists every metric.
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
from collections.abc import Iterable, Iterator
from pathlib import Path

from prometheus_client import (
    GC_COLLECTOR,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Metric,
    PlatformCollector,
    ProcessCollector,
    multiprocess,
    values,
)
from prometheus_client.registry import Collector

from relay.model import Decision, DeliveryResult

# The categories of DESIGN.md. The lead passes the configured table's names, which
# may add operator-defined ones.
DEFAULT_CATEGORIES = (
    "treatment",
    "appointment-reminder",
    "care-coordination",
    "refill-reminder",
    "operations",
    "education",
    "provider-products",
    "provider-recommended",
    "fundraising",
    "marketing",
    "re-engagement",
)
UNKNOWN = "unknown"
OTHER = "other"
_CODE = re.compile(r"^[a-z0-9][a-z0-9._:-]{0,63}$")

DECISION_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
UPSTREAM_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)


# relay.pool's event names -> the `event` label of phi_relay_upstream_connections.
_CONNECTION_EVENTS = {
    "opened": "opened",
    "reused": "reused",
    "retried": "replaced",
    "expired": "expired",
}


def code_label(value: str) -> str:
    """`value` lower-cased if it looks like a code (`phi.subject.mrn`), else "other"."""
    text = value.strip().lower()
    return text if _CODE.fullmatch(text) else OTHER


def reply_class(code: int) -> str:
    return f"{code // 100}xx" if 200 <= code < 600 else OTHER


# Reason codes a verdict carries when its policy failed rather than decided (relay.pipeline).
POLICY_FAILURES = frozenset({"policy.error", "policy.timeout"})

# Refusals before a message, from the reply the client got: (start of the reply, code).
# The first match wins, so the more specific text comes first.
_REFUSALS = (
    ("530 5.7.0 Must issue a STARTTLS", "tls.required"),
    ("530 5.7.0 Authentication required", "auth.required"),
    ("421 4.7.0 Too many connections from your address", "sessions.per-client"),
    ("421 4.7.0 Too many unauthenticated", "sessions.unauthenticated"),
    ("421 4.7.0 Too many connections", "sessions.full"),
    ("421 4.3.2 Service shutting down", "shutting-down"),
)


def refusal_code(reply: str) -> str:
    """The reason code for a refusal reply line: a known one, else `reply.NNN`."""
    for start, code in _REFUSALS:
        if reply.startswith(start):
            return code
    head = reply[:3]
    return f"reply.{head}" if head.isdigit() else OTHER


def use_shared_dir(path: Path) -> None:
    """Keep this process's metric values in files under `path` (prometheus-client's
    multiprocess mode), so any worker of a supervised relay can serve the sums of all.

    Must run before the first metric is made; the supervisor empties `path` at start
    and marks a dead worker's live gauges gone (`worker_gone`).
    """
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(path)
    values.ValueClass = values.MultiProcessValue()  # type: ignore[no-untyped-call]


def worker_gone(path: Path, pid: int) -> None:
    """A worker ended: its sessions no longer count in `phi_relay_sessions_active`."""
    multiprocess.mark_process_dead(pid, str(path))  # type: ignore[no-untyped-call]


class ProcessTreeCollector(Collector):
    """`process_*` for a supervised relay as a whole, whichever worker is scraped: the
    supervisor and every process under it (workers and their decision workers).

    CPU seconds, memory and open descriptors are summed; `process_max_fds` is the
    answering worker's limit and `process_start_time_seconds` the supervisor's start.
    """

    _SUMMED = frozenset(
        {
            "process_cpu_seconds_total",
            "process_virtual_memory_bytes",
            "process_resident_memory_bytes",
            "process_open_fds",
        }
    )

    def __init__(self, proc: str = "/proc") -> None:
        self._proc = proc

    def _tree(self, root: int) -> list[int]:
        pids, todo = [], [root]
        while todo:
            pid = todo.pop()
            pids.append(pid)
            with contextlib.suppress(OSError, ValueError):
                text = Path(f"{self._proc}/{pid}/task/{pid}/children").read_text()
                todo += [int(p) for p in text.split()]
        return pids

    def collect(self) -> Iterator[Metric]:
        me, root = os.getpid(), os.getppid()
        values: dict[str, float] = {}
        families: dict[str, Metric] = {}
        for pid in self._tree(root):
            one = ProcessCollector(pid=functools.partial(int, pid), proc=self._proc, registry=None)
            for family in one.collect():
                for sample in family.samples:
                    name = sample.name
                    families.setdefault(name, family)
                    if name in self._SUMMED:
                        values[name] = values.get(name, 0.0) + sample.value
                    elif (name == "process_max_fds" and pid == me) or (
                        name == "process_start_time_seconds" and pid == root
                    ):
                        values[name] = sample.value
        for name, value in values.items():
            family = families[name]
            out = Metric(family.name, family.documentation, family.type)
            out.add_sample(name, {}, value)
            yield out


class Metrics:
    """The relay's metrics, in `registry` (a fresh one, with process metrics, by default).

    With `shared_dir` (a supervised worker) the values live in files there and
    `registry` serves the sums over every worker's files; process metrics are then
    `process_*` sum the supervisor and all its processes (`ProcessTreeCollector`).
    """

    def __init__(
        self,
        registry: CollectorRegistry | None = None,
        categories: Iterable[str] = DEFAULT_CATEGORIES,
        shared_dir: Path | None = None,
    ) -> None:
        if shared_dir is not None:
            use_shared_dir(shared_dir)
            served = CollectorRegistry()
            multiprocess.MultiProcessCollector(served, str(shared_dir))  # type: ignore[no-untyped-call]
            served.register(ProcessTreeCollector())
            PlatformCollector(registry=served)
            self.registry = served
            registry = CollectorRegistry()  # holds the metrics; never served itself
        else:
            if registry is None:
                registry = CollectorRegistry()
                ProcessCollector(registry=registry)
                PlatformCollector(registry=registry)
                registry.register(GC_COLLECTOR)
            self.registry = registry
        self._categories = frozenset(c for c in categories if _CODE.fullmatch(c))
        r = registry
        self._messages = Counter(
            "phi_relay_messages",
            "Messages decided, by enforced decision and category.",
            ["decision", "category"],
            registry=r,
        )
        self._verdicts = Counter(
            "phi_relay_policy_verdicts",
            "Policy verdicts, by policy, action and PHI-free reason code.",
            ["policy", "action", "reason"],
            registry=r,
        )
        self._dropped = Counter(
            "phi_relay_recipients_dropped",
            "Recipients removed from an envelope by policy, by reason code.",
            ["reason"],
            registry=r,
        )
        self._decision_seconds = Histogram(
            "phi_relay_decision_seconds",
            "Time from end of DATA to decision (parse and all policies).",
            buckets=DECISION_BUCKETS,
            registry=r,
        )
        self._deliveries = Counter(
            "phi_relay_deliveries",
            "Upstream transactions, by outcome and reply class.",
            ["outcome", "reply_class"],
            registry=r,
        )
        self._upstream_seconds = Histogram(
            "phi_relay_upstream_seconds",
            "Duration of one upstream transaction.",
            buckets=UPSTREAM_BUCKETS,
            registry=r,
        )
        self._sessions_active = Gauge(
            "phi_relay_sessions_active",
            "SMTP sessions open now.",
            registry=r,
            multiprocess_mode="livesum",
        )
        self._sessions = Counter("phi_relay_sessions", "SMTP sessions opened.", registry=r)
        self._sessions_refused = Counter(
            "phi_relay_sessions_refused",
            "SMTP sessions or commands refused before a message, by reason code.",
            ["reason"],
            registry=r,
        )
        self._auth_failures = Counter(
            "phi_relay_auth_failures", "Failed SMTP AUTH attempts.", registry=r
        )
        self._reloads = Counter(
            "phi_relay_config_reloads", "Configuration reloads, by result.", ["result"], registry=r
        )
        # Registered on the first spool() call: a relay without the spool does not emit them.
        self._spool_gauges: tuple[Gauge, Gauge] | None = None
        self._registry = r
        self._reload_ok = Gauge(
            "phi_relay_config_last_reload_success",
            "1 if the last configuration reload succeeded, 0 if it failed.",
            registry=r,
            # Across workers: 0 as soon as any live worker's last reload failed.
            multiprocess_mode="livemin",
        )
        self._policy_errors = Counter(
            "phi_relay_policy_errors",
            "Policies that raised or timed out (the message was tempfailed), by policy.",
            ["policy"],
            registry=r,
        )
        self._unsubscribes = Counter(
            "phi_relay_unsubscribes",
            "Unsubscribe requests over HTTP, by category and result.",
            ["category", "result"],
            registry=r,
        )
        self._audit_errors = Counter(
            "phi_relay_audit_errors",
            "Audit writes that failed (the message was tempfailed).",
            registry=r,
        )
        self._dedup_errors = Counter(
            "phi_relay_dedup_errors",
            "Dedup store reads or writes that failed, by stage (claim: message tempfailed "
            "before sending; confirm, release: after the upstream answered).",
            ["stage"],
            registry=r,
        )
        self._upstream_connections = Counter(
            "phi_relay_upstream_connections",
            "Upstream connections, by event: opened (a new one), reused (leased again after "
            "RSET), replaced (a pooled one the upstream had closed, retried on a new one "
            "before DATA), expired (closed idle after upstream.pool_idle_timeout).",
            ["event"],
            registry=r,
        )
        self._pool_waits = Counter(
            "phi_relay_upstream_pool_waits",
            "Transactions that found every upstream connection in use "
            "(upstream.pool_max_connections) and waited for one.",
            registry=r,
        )
        self._pool_wait_timeouts = Counter(
            "phi_relay_upstream_pool_wait_timeouts",
            "Of those, the ones that gave up after upstream.pool_wait_timeout (451 4.4.5).",
            registry=r,
        )
        self._upstream_open = Gauge(
            "phi_relay_upstream_connections_open",
            "Upstream connections open now: leased, idle or being opened.",
            registry=r,
            multiprocess_mode="livesum",
        )
        self._bytes_in_flight = Gauge(
            "phi_relay_bytes_in_flight",
            "Bytes of the messages being received, decided or delivered now, summed over "
            "workers (server.max_bytes_in_flight caps each worker's).",
            registry=r,
            multiprocess_mode="livesum",
        )
        # A fresh process has loaded its configuration, or it would not be running.
        self._reload_ok.set(1)

    def category_label(self, category: str) -> str:
        # Category names can come from a client's X-PHI-Category header: only known
        # names become label values.
        return category if category in self._categories else UNKNOWN

    def decision(self, d: Decision, seconds: float) -> None:
        category = self.category_label(d.category)
        self._messages.labels(d.enforced_action.name.lower(), category).inc()
        for v in d.verdicts:
            reason = code_label(v.reason) if v.reason else "none"
            self._verdicts.labels(code_label(v.rule), v.action.name.lower(), reason).inc()
            if v.reason in POLICY_FAILURES:
                # The pipeline turned the failure into a tempfail verdict; it is counted here
                # because every decided message passes through this one method.
                self.policy_error(v.rule)
        for reason in d.dropped.values():
            self._dropped.labels(code_label(reason)).inc()
        self._decision_seconds.observe(max(seconds, 0.0))

    def delivery(self, r: DeliveryResult) -> None:
        self._deliveries.labels(code_label(r.outcome), reply_class(r.reply.code)).inc()
        self._upstream_seconds.observe(max(r.duration_ms, 0.0) / 1000.0)

    def session(self, opened: bool) -> None:
        """Call with True when a session opens and False when it closes."""
        if opened:
            self._sessions.inc()
            self._sessions_active.inc()
        else:
            self._sessions_active.dec()

    def refused_session(self, reason: str) -> None:
        self._sessions_refused.labels(code_label(reason)).inc()

    def refused_reply(self, reply: str) -> None:
        """A session or command refused before a message, given the reply line it got."""
        self.refused_session(refusal_code(reply))

    def spool(self, size: int, oldest: float) -> None:
        if self._spool_gauges is None:
            self._spool_gauges = (
                # The workers of one host share one spool and each reports its own scan
                # of it: one series, the live workers' freshest (max) view.
                Gauge(
                    "phi_relay_spool_messages",
                    "Messages waiting in the spool.",
                    registry=self._registry,
                    multiprocess_mode="livemax",
                ),
                Gauge(
                    "phi_relay_spool_oldest_seconds",
                    "Age of the oldest message in the spool, in seconds (0: empty).",
                    registry=self._registry,
                    multiprocess_mode="livemax",
                ),
            )
        self._spool_gauges[0].set(size)
        self._spool_gauges[1].set(oldest)

    def auth_failure(self) -> None:
        self._auth_failures.inc()

    def config_reload(self, ok: bool, *, refused: bool = False) -> None:
        """`refused`: the new configuration was valid but would weaken the running relay."""
        self._reloads.labels("ok" if ok else ("refused" if refused else "error")).inc()
        self._reload_ok.set(1 if ok else 0)

    def policy_error(self, rule: str) -> None:
        self._policy_errors.labels(code_label(rule)).inc()

    def unsubscribe(self, category: str, result: str) -> None:
        self._unsubscribes.labels(self.category_label(category), code_label(result)).inc()

    def audit_error(self) -> None:
        self._audit_errors.inc()

    def dedup_error(self, stage: str) -> None:
        self._dedup_errors.labels(code_label(stage)).inc()

    # --- the upstream pool (relay.pool.PoolObserver) and the bytes in flight ---------------

    def pool_event(self, event: str) -> None:
        if event == "waited":
            self._pool_waits.inc()
        elif event == "busy":
            self._pool_wait_timeouts.inc()
        elif event in _CONNECTION_EVENTS:
            self._upstream_connections.labels(_CONNECTION_EVENTS[event]).inc()

    def pool_open(self, delta: int) -> None:
        self._upstream_open.inc(delta)

    def bytes_in_flight(self, count: int) -> None:
        self._bytes_in_flight.set(count)
