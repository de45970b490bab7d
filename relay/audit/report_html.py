"""The compliance report as one self-contained HTML page: tables and inline SVG bar charts.

No script, no external resource (a Content-Security-Policy forbids both), so the page
opens the same offline, in a mail attachment or in a document archive, and prints.
Every value shown is a count or a code from `relay.audit.report.Report`, escaped here.
"""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING, Any

from relay.audit.report import escape

if TYPE_CHECKING:
    from relay.audit.report import Report

CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src data:"
DECISION_COLORS = {
    "pass": "#2e7d32",
    "modify": "#1565c0",
    "tempfail": "#ef8f00",
    "reject": "#c62828",
    "none": "#757575",
}
BAR = "#3f51b5"
_STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;color:#1b1b1b;
max-width:1060px;margin:2em auto;padding:0 1.2em;line-height:1.45}
h1{font-size:1.6em;margin-bottom:.2em}h2{font-size:1.2em;margin-top:2em;
border-bottom:2px solid #e0e0e0;padding-bottom:.2em}
table{border-collapse:collapse;margin:.6em 0;font-size:.92em}
th,td{border:1px solid #d0d0d0;padding:.25em .7em;text-align:left}
td.n,th.n{text-align:right;font-variant-numeric:tabular-nums}
th{background:#f3f3f3}.meta{color:#555}.banner{padding:.8em 1em;border-radius:6px;
font-weight:600;margin:1em 0}.ok{background:#e8f5e9;color:#1b5e20;border:1px solid #a5d6a7}
.bad{background:#ffebee;color:#b71c1c;border:1px solid #ef9a9a}
.empty{color:#777;font-style:italic}.grid{display:flex;flex-wrap:wrap;gap:1.5em}
.grid>div{flex:1 1 460px}svg.chart{display:block;margin:.4em 0 1em}
code{font-size:.95em}@media print{h2{break-after:avoid}}
"""


def _table(headers: list[str], rows: list[list[Any]]) -> str:
    if not rows:
        return '<p class="empty">None in this period.</p>'
    head = "".join(
        f'<th class="n">{escape(h)}</th>' if h == "count" else f"<th>{escape(h)}</th>"
        for h in headers
    )
    body = "".join(
        "<tr>"
        + "".join(
            f'<td class="n">{escape(c)}</td>' if isinstance(c, int) else f"<td>{escape(c)}</td>"
            for c in row
        )
        + "</tr>"
        for row in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _rows(counter: Counter[Any]) -> list[list[Any]]:
    out = []
    for key, count in sorted(counter.items(), key=lambda kv: (-kv[1], kv[0])):
        keys = list(key) if isinstance(key, tuple) else [key]
        out.append([*keys, count])
    return out


def bar_chart(title: str, rows: list[tuple[str, int]], *, width: int = 480) -> str:
    """Horizontal bars, one per row, with the label on the left and the count on the right."""
    if not rows:
        return ""
    label_w, bar_h, gap, top = 190, 18, 6, 26
    plot_w = width - label_w - 60
    top_value = max(v for _, v in rows) or 1
    height = top + len(rows) * (bar_h + gap) + 4
    parts = [
        f'<svg class="chart" xmlns="http://www.w3.org/2000/svg" role="img" '
        f'width="{width}" height="{height}" viewBox="0 0 {width} {height}" '
        f'aria-label="{escape(title)}">',
        f'<text x="0" y="16" font-size="13" font-weight="600">{escape(title)}</text>',
    ]
    for i, (label, value) in enumerate(rows):
        y = top + i * (bar_h + gap)
        w = max(1, round(plot_w * value / top_value)) if value else 0
        parts.append(
            f'<text x="{label_w - 6}" y="{y + 13}" font-size="12" text-anchor="end">'
            f"{escape(label[:32])}</text>"
            f'<rect class="bar" x="{label_w}" y="{y}" width="{w}" height="{bar_h}" '
            f'fill="{BAR}"><title>{escape(label)}: {value}</title></rect>'
            f'<text x="{label_w + w + 5}" y="{y + 13}" font-size="12">{value}</text>'
        )
    parts.append("</svg>")
    return "".join(parts)


def stacked_chart(
    title: str,
    rows: list[tuple[str, dict[str, int]]],
    colors: dict[str, str],
    *,
    width: int = 980,
) -> str:
    """One horizontal bar per row, split into the series of `colors`, with a legend."""
    if not rows:
        return ""
    label_w, bar_h, gap, top = 190, 20, 6, 44
    plot_w = width - label_w - 70
    top_value = max(sum(parts.values()) for _, parts in rows) or 1
    height = top + len(rows) * (bar_h + gap) + 4
    out = [
        f'<svg class="chart" xmlns="http://www.w3.org/2000/svg" role="img" '
        f'width="{width}" height="{height}" viewBox="0 0 {width} {height}" '
        f'aria-label="{escape(title)}">',
        f'<text x="0" y="16" font-size="13" font-weight="600">{escape(title)}</text>',
    ]
    x = label_w
    for series, color in colors.items():
        out.append(
            f'<rect x="{x}" y="24" width="12" height="12" fill="{color}"/>'
            f'<text x="{x + 16}" y="34" font-size="12">{escape(series)}</text>'
        )
        x += 24 + 8 * len(series)
    for i, (label, parts) in enumerate(rows):
        y = top + i * (bar_h + gap)
        out.append(
            f'<text x="{label_w - 6}" y="{y + 14}" font-size="12" text-anchor="end">'
            f"{escape(label[:32])}</text>"
        )
        x = label_w
        for series, color in colors.items():
            value = parts.get(series, 0)
            if not value:
                continue
            w = max(1, round(plot_w * value / top_value))
            out.append(
                f'<rect class="bar" x="{x}" y="{y}" width="{w}" height="{bar_h}" fill="{color}">'
                f"<title>{escape(label)}, {escape(series)}: {value}</title></rect>"
            )
            x += w
        out.append(f'<text x="{x + 5}" y="{y + 14}" font-size="12">{sum(parts.values())}</text>')
    out.append("</svg>")
    return "".join(out)


def _verification(report: Report) -> str:
    chains = report.chains
    total = sum(c.records for c in chains)
    if report.verified:
        keyed = all(c.keyed for c in chains)
        what = "chain intact" if keyed else "links intact (content not checked: no key)"
        banner = (
            f'<div class="banner ok">Verification passed: {len(chains)} chain(s), '
            f"{total} records, {what}.</div>"
        )
    elif not chains:
        banner = '<div class="banner bad">Verification FAILED: no audit chain was found.</div>'
    else:
        bad = sum(1 for c in chains if not c.ok)
        banner = (
            f'<div class="banner bad">Verification FAILED: {bad} of {len(chains)} chain(s) '
            "were edited, truncated or reordered. The counts below include records that "
            "may have been altered.</div>"
        )
    rows = [
        [
            c.name,
            ", ".join(c.replicas) or "-",
            len(c.files),
            c.records,
            "-" if c.first_seq is None else f"{c.first_seq}-{c.last_seq}",
            "ok" if c.ok else f"FAILED ({c.problem_count} problems)",
        ]
        for c in chains
    ]
    parts = [banner, _table(["chain", "replica", "files", "records", "seq", "result"], rows)]
    for c in chains:
        if c.problems:
            items = "".join(f"<li><code>{escape(p)}</code></li>" for p in c.problems)
            more = (
                f"<li>... and {c.problem_count - len(c.problems)} more</li>"
                if c.problem_count > len(c.problems)
                else ""
            )
            parts.append(f"<p>Problems in {escape(c.name)}:</p><ul>{items}{more}</ul>")
    if report.notes:
        parts.append("<ul>" + "".join(f"<li>{escape(n)}</li>" for n in report.notes) + "</ul>")
    return "".join(parts)


def _section(title: str, *parts: str) -> str:
    return f"<section><h2>{escape(title)}</h2>{''.join(parts)}</section>"


def _grid(*cells: str) -> str:
    return '<div class="grid">' + "".join(f"<div>{c}</div>" for c in cells) + "</div>"


def render(report: Report) -> str:
    data = report.to_dict()
    period = data["period"]
    since, until = period["since"] or "the first record", period["until"] or "the last record"
    by_category: dict[str, dict[str, int]] = {}
    for (category, decision), count in report.messages.items():
        by_category.setdefault(category, {})[decision] = count
    category_rows = sorted(by_category.items(), key=lambda kv: -sum(kv[1].values()))
    kinds = Counter(report.refusal_kinds) + Counter(report.replacement_kinds)
    optouts = (
        '<p class="empty">Not included: the consent store was not read (--no-optouts).</p>'
        if report.optouts is None
        else _grid(
            _table(["category", "source", "count"], _rows(report.optouts))
            + "<p>Lifted by an administrator in this period:</p>"
            + _table(["category", "count"], _rows(report.optouts_lifted or Counter())),
            bar_chart(
                "Opt-outs recorded, by category",
                [(k, v) for k, v in _by_first(report.optouts).most_common()],
            ),
        )
    )
    body = [
        "<h1>phi-relay compliance report</h1>",
        f'<p class="meta">Period: {escape(since)} to {escape(until)} (UTC, end exclusive). '
        f"Generated {escape(period['generated'])}. Counts only: this report holds no "
        "addresses, names, subjects or message text.</p>",
        _section("Audit log verification", _verification(report)),
        _section(
            "Summary",
            _table(
                ["measure", "count"],
                [
                    ["messages decided", report.decisions],
                    ["recipients", report.recipients],
                    ["recipients the message went to", report.accepted],
                    ["upstream transactions", sum(report.deliveries.values())],
                    ["monitor-mode decisions", report.monitor_decisions],
                ],
            ),
        ),
        _section(
            "Messages by category and decision",
            stacked_chart("Messages by category and decision", category_rows, DECISION_COLORS),
            _table(["category", "decision", "count"], _rows(report.messages)),
        ),
        _section(
            "Refusals and subject replacements",
            _grid(
                "<p>Refused, by rule and reason:</p>"
                + _table(["rule", "reason", "count"], _rows(report.refusals))
                + "<p>Subjects replaced, by rule and reason:</p>"
                + _table(["rule", "reason", "count"], _rows(report.replacements)),
                bar_chart("Refusals and replacements by PHI kind", kinds.most_common())
                + _table(
                    ["PHI kind", "refused", "replaced"],
                    [
                        [k, report.refusal_kinds.get(k, 0), report.replacement_kinds.get(k, 0)]
                        for k, _ in kinds.most_common()
                    ],
                ),
            ),
        ),
        _section(
            "Recipients suppressed (consent and opt-out)",
            _grid(
                _table(["reason", "count"], _rows(report.suppressed)),
                bar_chart("Recipients suppressed, by reason", report.suppressed.most_common()),
            ),
        ),
        _section("Opt-outs recorded", optouts),
        _section(
            "TLS versions",
            _grid(
                bar_chart("Inbound (client to relay)", report.tls_inbound.most_common())
                + _table(["version", "count"], _rows(report.tls_inbound)),
                bar_chart("Upstream (relay to provider)", report.tls_upstream.most_common())
                + _table(["version", "count"], _rows(report.tls_upstream)),
            ),
        ),
        _section(
            "Upstream",
            _grid(
                bar_chart("Upstream transactions, by outcome", report.deliveries.most_common())
                + _table(["outcome", "count"], _rows(report.deliveries)),
                "<p>Failures (deliveries not completed, and upstream sessions refused):</p>"
                + _table(
                    ["where", "outcome", "reply code", "count"], _rows(report.upstream_failures)
                ),
            ),
        ),
        _section(
            "Monitor mode: would have refused",
            f"<p>{report.would_refuse_messages} of {report.monitor_decisions} monitor-mode "
            "decisions would have been refused or deferred in enforce mode.</p>",
            _grid(
                _table(["rule", "reason", "count"], _rows(report.would_refuse)),
                bar_chart(
                    "Would have refused, by rule",
                    [(f"{r} {why}", n) for (r, why), n in report.would_refuse.most_common()],
                ),
            ),
        ),
        _section("Other audit events", _table(["event", "count"], _rows(report.events))),
    ]
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        f'<meta http-equiv="Content-Security-Policy" content="{CSP}">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>phi-relay compliance report {escape(since)} to {escape(until)}</title>"
        f"<style>{_STYLE}</style></head><body>{''.join(body)}</body></html>\n"
    )


def _by_first(counter: Counter[tuple[str, str]]) -> Counter[str]:
    out: Counter[str] = Counter()
    for (first, _), count in counter.items():
        out[first] += count
    return out
