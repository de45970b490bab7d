"""The compliance report: what an auditor asks of the audit log over a period, as counts.

It reads one or more audit chains (a file with its rotations, or every chain in a
directory), verifies each chain, and counts records by the codes they carry: category,
decision, rule, reason, PHI kind, TLS version, outcome. Nothing else is read from a record,
so recipient hashes, peers, accounts and reply texts never reach the report, and every
value in it is a count or a code the audit writer already restricted to an identifier.
Output: JSON, CSV, or one self-contained HTML page with inline SVG charts (no script, no
network: a Content-Security-Policy forbids both).
"""

from __future__ import annotations

import csv
import gzip
import html
import io
import json
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from relay.audit.chain import Record, parse
from relay.audit.verify import verify, with_rotated
from relay.consent.api import OptOut
from relay.pipeline import ALWAYS_ENFORCED

MAX_PROBLEMS = 50
"""Problems listed per chain; the count says how many there were in all."""

# Delivery outcomes that are not failures.
_DELIVERED = frozenset({"delivered", "duplicate-suppressed"})
_SEVERE = ("tempfail", "reject")


@dataclass(frozen=True, slots=True)
class Chain:
    """One hash chain: its files, oldest first (audit.log.2, audit.log.1, audit.log)."""

    name: str
    files: tuple[Path, ...]


@dataclass(slots=True)
class ChainResult:
    name: str
    files: list[str]
    records: int
    ok: bool
    keyed: bool
    problem_count: int
    problems: list[str]
    first_seq: int | None
    last_seq: int | None
    # The replica ids its records name (relay `replica_id`), so each chain is attributable.
    replicas: list[str] = field(default_factory=list)


def find_chains(paths: Sequence[Path]) -> tuple[list[Chain], list[str]]:
    """The chains to read, and notes about them: the same chains `audit verify` reads. A
    directory holds every `*.log` chain in it (one per replica or worker process), each
    with its rotations (`.1`, `-DATE`, logrotate's `.gz`); a file is one chain, with its
    rotations."""
    chains: list[Chain] = []
    notes: list[str] = []
    for path in paths:
        if path.is_dir():
            # Dot files are the writers' lock files (.audit.log.lock) and editors' backups;
            # a state directory also holds keys, stores and captured mail, never *.log.
            bases = sorted(
                p for p in path.glob("*.log") if p.is_file() and not p.name.startswith(".")
            )
            chains.extend(Chain(str(base), tuple(with_rotated(base))) for base in bases)
        else:
            chains.append(Chain(str(path), tuple(with_rotated(path))))
    return chains, notes


def _records(chain: Chain) -> Iterator[Record]:
    for path in chain.files:
        opener = gzip.open if path.name.endswith(".gz") else open
        with opener(path, "rb") as fh:
            for line in fh:
                if not line.strip():
                    continue
                try:
                    yield parse(line.rstrip(b"\n"))
                except ValueError:
                    continue  # verification names the line


def _ts(moment: datetime) -> str:
    """The audit log's timestamp form, so that records compare as strings."""
    return moment.astimezone(UTC).isoformat(timespec="milliseconds")[:-6] + "Z"


def _code(value: object, empty: str = "none") -> str:
    if value is None or value == "":
        return empty
    return str(value)


@dataclass
class Report:
    since: datetime | None
    until: datetime | None
    generated: datetime
    chains: list[ChainResult] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    decisions: int = 0
    recipients: int = 0
    accepted: int = 0
    messages: Counter[tuple[str, str]] = field(default_factory=Counter)
    refusals: Counter[tuple[str, str]] = field(default_factory=Counter)
    refusal_kinds: Counter[str] = field(default_factory=Counter)
    replacements: Counter[tuple[str, str]] = field(default_factory=Counter)
    replacement_kinds: Counter[str] = field(default_factory=Counter)
    suppressed: Counter[str] = field(default_factory=Counter)
    tls_inbound: Counter[str] = field(default_factory=Counter)
    tls_upstream: Counter[str] = field(default_factory=Counter)
    deliveries: Counter[str] = field(default_factory=Counter)
    upstream_failures: Counter[tuple[str, str, str]] = field(default_factory=Counter)
    monitor_decisions: int = 0
    would_refuse_messages: int = 0
    would_refuse: Counter[tuple[str, str]] = field(default_factory=Counter)
    events: Counter[str] = field(default_factory=Counter)
    optouts: Counter[tuple[str, str]] | None = None
    optouts_lifted: Counter[str] | None = None

    @property
    def verified(self) -> bool:
        return bool(self.chains) and all(c.ok for c in self.chains)

    # --- counting -------------------------------------------------------------------------

    def add(self, record: Record) -> None:
        kind = record.get("type")
        if kind == "decision":
            self._decision(record)
        elif kind == "delivery":
            self._delivery(record)
        elif kind == "event":
            name = _code(record.get("event"))
            self.events[name] += 1
            if name in ("upstream-unavailable", "recipient-refused"):
                self.upstream_failures[
                    (
                        f"at {_code(record.get('stage'))}",
                        _code(record.get("outcome")),
                        _code(record.get("reply_code")),
                    )
                ] += 1

    def _decision(self, r: Record) -> None:
        self.decisions += 1
        self.recipients += len(r.get("recipients") or [])
        self.accepted += len(r.get("accepted") or [])
        category = _code(r.get("category"), "unknown")
        enforced = _code(r.get("enforced_action"))
        monitor = r.get("mode") == "monitor"
        self.messages[(category, enforced)] += 1
        self.tls_inbound[_code(r.get("tls_version"), "plaintext (listed network)")] += 1
        for reason in (r.get("dropped") or {}).values():
            self.suppressed[_code(reason)] += 1
        verdicts = [v for v in r.get("verdicts") or [] if isinstance(v, dict)]
        for v in verdicts:
            rule, reason, action = _code(v.get("rule")), _code(v.get("reason")), v.get("action")
            kinds = [_code(k) for k in v.get("kinds") or []]
            enforced_here = not monitor or rule in ALWAYS_ENFORCED
            if action == "reject" and enforced == "reject" and enforced_here:
                self.refusals[(rule, reason)] += 1
                for k in kinds:
                    self.refusal_kinds[k] += 1
            if action == "modify" and reason.startswith("phi.") and enforced_here:
                self.replacements[(rule, reason)] += 1
                for k in kinds:
                    self.replacement_kinds[k] += 1
        if monitor:
            self.monitor_decisions += 1
            would = [
                v
                for v in verdicts
                if v.get("action") in _SEVERE and _code(v.get("rule")) not in ALWAYS_ENFORCED
            ]
            if would and r.get("action") in _SEVERE:
                self.would_refuse_messages += 1
                for v in would:
                    self.would_refuse[(_code(v.get("rule")), _code(v.get("reason")))] += 1

    def _delivery(self, r: Record) -> None:
        outcome = _code(r.get("outcome"))
        self.deliveries[outcome] += 1
        self.tls_upstream[_code(r.get("tls_version"), "none")] += 1
        if outcome not in _DELIVERED or r.get("refused"):
            status = _code(r.get("reply_code"))
            self.upstream_failures[("delivery", outcome, status)] += 1

    def add_optouts(self, rows: Sequence[OptOut]) -> None:
        self.optouts, self.optouts_lifted = Counter(), Counter()
        since = self.since or datetime.min.replace(tzinfo=UTC)
        until = self.until or datetime.max.replace(tzinfo=UTC)
        for o in rows:
            if since <= o.when < until:
                self.optouts[(o.category, o.source)] += 1
            if o.removed is not None and since <= o.removed < until:
                self.optouts_lifted[o.category] += 1

    # --- output ---------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        def rows(counter: Counter[Any], *names: str) -> list[dict[str, Any]]:
            out = []
            for key, count in sorted(counter.items(), key=lambda kv: (-kv[1], kv[0])):
                keys = key if isinstance(key, tuple) else (key,)
                out.append({**dict(zip(names, keys, strict=True)), "count": count})
            return out

        return {
            "period": {
                "since": _ts(self.since) if self.since else None,
                "until": _ts(self.until) if self.until else None,
                "generated": _ts(self.generated),
            },
            "verification": {
                "ok": self.verified,
                "chains": [asdict(c) for c in self.chains],
                "notes": self.notes,
            },
            "totals": {
                "decisions": self.decisions,
                "recipients": self.recipients,
                "recipients_accepted": self.accepted,
                "upstream_transactions": sum(self.deliveries.values()),
            },
            "messages": rows(self.messages, "category", "decision"),
            "refusals": rows(self.refusals, "rule", "reason"),
            "refusals_by_phi_kind": rows(self.refusal_kinds, "kind"),
            "replacements": rows(self.replacements, "rule", "reason"),
            "replacements_by_phi_kind": rows(self.replacement_kinds, "kind"),
            "recipients_suppressed": rows(self.suppressed, "reason"),
            "optouts_recorded": None if self.optouts is None
            else rows(self.optouts, "category", "source"),
            "optouts_lifted": None if self.optouts_lifted is None
            else rows(self.optouts_lifted, "category"),
            "tls_inbound": rows(self.tls_inbound, "version"),
            "tls_upstream": rows(self.tls_upstream, "version"),
            "upstream_outcomes": rows(self.deliveries, "outcome"),
            "upstream_failures": rows(self.upstream_failures, "where", "outcome", "reply_code"),
            "monitor_mode": {
                "decisions": self.monitor_decisions,
                "would_have_refused": self.would_refuse_messages,
                "by_rule": rows(self.would_refuse, "rule", "reason"),
            },
            "events": rows(self.events, "event"),
        }  # fmt: skip

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=False) + "\n"

    def to_csv(self) -> str:
        """One row per count: section, up to three keys, count (long form, for spreadsheets)."""
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(["section", "key1", "key2", "key3", "count"])
        data = self.to_dict()
        period = data["period"]
        writer.writerow(["period", period["since"] or "", period["until"] or "", "", ""])
        for c in self.chains:
            writer.writerow(
                ["verification", c.name, "ok" if c.ok else "failed", c.problem_count, c.records]
            )
        for name, value in data["totals"].items():
            writer.writerow(["totals", name, "", "", value])
        sections = [k for k, v in data.items() if isinstance(v, list)]
        for section in sections:
            for row in data[section]:
                keys = [str(v) for k, v in row.items() if k != "count"]
                writer.writerow([section, *keys, *[""] * (3 - len(keys)), row["count"]])
        for key in ("optouts_recorded", "optouts_lifted"):
            for row in data[key] or []:
                keys = [str(v) for k, v in row.items() if k != "count"]
                writer.writerow([key, *keys, *[""] * (3 - len(keys)), row["count"]])
        monitor = data["monitor_mode"]
        writer.writerow(["monitor_mode", "decisions", "", "", monitor["decisions"]])
        writer.writerow(
            ["monitor_mode", "would_have_refused", "", "", monitor["would_have_refused"]]
        )
        for row in monitor["by_rule"]:
            writer.writerow(["monitor_mode_by_rule", row["rule"], row["reason"], "", row["count"]])
        return out.getvalue()

    def to_html(self) -> str:
        from relay.audit.report_html import render

        return render(self)


def build(
    chains: Sequence[Chain],
    key: bytes | None,
    *,
    since: datetime | None,
    until: datetime | None,
    optouts: Sequence[OptOut] | None = None,
    notes: Sequence[str] = (),
    now: datetime | None = None,
) -> Report:
    """Verify each chain and count its records with `since <= ts < until`.

    Raises OSError if a file cannot be read.
    """
    report = Report(since, until, now or datetime.now(UTC), notes=list(notes))
    low = _ts(since) if since else ""
    high = _ts(until) if until else "~"
    for chain in chains:
        checked = verify(list(chain.files), key)
        report.chains.append(
            ChainResult(
                name=chain.name,
                files=[str(f) for f in chain.files],
                records=checked.records,
                ok=checked.ok,
                keyed=key is not None,
                problem_count=len(checked.problems),
                problems=[str(p) for p in checked.problems[:MAX_PROBLEMS]],
                first_seq=checked.first_seq,
                last_seq=checked.last_seq,
            )
        )
        replicas: set[str] = set()
        for record in _records(chain):
            replica = record.get("replica")
            if isinstance(replica, str):
                replicas.add(replica)
            ts = record.get("ts")
            if isinstance(ts, str) and low <= ts < high:
                report.add(record)
        report.chains[-1].replicas = sorted(replicas)
    if optouts is not None:
        report.add_optouts(optouts)
    return report


def escape(text: object) -> str:
    return html.escape(str(text), quote=True)
