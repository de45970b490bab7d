"""`phi-relay audit report` on audit logs made by real traffic through two real relays.

Relay A enforces (its chain rotates into several files), relay B runs in monitor mode;
both write chains into one directory under the same audit key, as replicas do. The
report is checked number by number against the traffic sent, holds none of the
addresses, subjects or hashes, says when a chain was edited, and its HTML is rendered
by headless Chromium (Debian `chromium`) with every chart laid out at a non-zero size.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import ssl
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import aiosmtplib
import pytest

from tests.support.mail import SENDER, message
from tests.support.pki import Pki
from tests.support.relay import ROOT, RunningRelay, start_relay
from tests.support.upstream import Sink

PHI_RELAY = Path(sys.executable).with_name("phi-relay")
# Set to a path (docs/img/audit-report.png) to keep the rendered page.
SAVE_SCREENSHOT = os.environ.get("PHI_RELAY_SAVE_REPORT_SCREENSHOT", "")


async def send(r: RunningRelay, to: list[str], data: bytes, *, tls12: bool = False) -> int:
    context = r.pki.client_context()
    if tls12:
        context.maximum_version = ssl.TLSVersion.TLSv1_2
    client = aiosmtplib.SMTP(hostname="127.0.0.1", port=r.port, tls_context=context, timeout=15)
    await client.connect(start_tls=False)
    await client.starttls(server_hostname="localhost")
    try:
        await client.sendmail(SENDER, to, data)
        code = 250
    except aiosmtplib.SMTPDataError as exc:
        code = exc.code
    except aiosmtplib.SMTPSenderRefused as exc:
        code = exc.code
    if client.is_connected:
        await client.quit()
    return code


@dataclass
class Logs:
    directory: Path
    state: Path  # relay A's state directory: the audit key and the consent store
    started: datetime
    canaries: list[str]  # addresses and subject words that must not appear in a report
    hashes: list[str]  # recipient hashes from the audit records


async def generate(tmp: Path, pki: Pki, sink: Sink) -> Logs:
    audit = tmp / "audit"
    started = datetime.now(UTC) - timedelta(seconds=1)
    tag = uuid.uuid4().hex[:6]
    people = {k: f"{k}{tag}@example.org" for k in ("pat", "lee", "fan", "fan2", "stranger")}
    mrn, phone = (
        str(4_410_000 + uuid.uuid4().int % 9_999),
        f"555-201-{4000 + uuid.uuid4().int % 999}",
    )
    policies = tmp / "a" / "policies"
    shutil.copytree(ROOT / "policies", policies)
    policy = policies / "default.toml"
    policy.write_text(
        policy.read_text().replace(
            'default = "refuse"\n', 'default = "refuse"\nphone = "replace"\n', 1
        )
    )
    a = await start_relay(
        tmp / "a",
        pki,
        sink,
        policy_file=policy,
        audit={"file": str(audit / "relay-a.log"), "max_bytes": 5000},
    )
    try:
        assert await send(a, [people["pat"], people["lee"]], message("Parking update", [])) == 250
        assert await send(a, [people["pat"]], message("New hours", []), tls12=True) == 250
        assert await send(a, [people["pat"]], message(f"MRN {mrn} lab results", [])) == 550
        assert await send(a, [people["lee"]], message(f"Call {phone} about your visit", [])) == 250
        store = a.relay.services.store  # type: ignore[union-attr]
        await store.grant(people["fan"], "marketing", (), "form-1")
        await store.grant(people["fan2"], "marketing", (), "form-2")
        offer = message("Spring offers", [], "marketing")
        assert await send(a, [people["fan"], people["stranger"]], offer) == 250
        # One-click opt-out over HTTP, and one an administrator records.
        token = a.relay.services.codec.issue(people["fan2"], "marketing")  # type: ignore[union-attr]
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http,
            http.post(
                f"http://127.0.0.1:{a.relay.http_port}/u/{token}",
                data={"List-Unsubscribe": "One-Click"},
            ) as resp,
        ):
            assert resp.status == 200
        await store.add_optout(people["stranger"], "all", "admin")
        offer = message("Summer offers", [], "marketing")
        assert await send(a, [people["fan"], people["fan2"]], offer) == 250
        sink.faults.data_reply = "451 4.3.0 try again later"
        assert await send(a, [people["pat"]], message("Lot closed", [])) == 451
        sink.faults.data_reply = None
        sink.faults.reply_421_at = "MAIL"
        assert await send(a, [people["pat"]], message("Lot open", [])) == 421
        sink.faults.reply_421_at = None
    finally:
        await a.stop()
    # Relay B, a replica in monitor mode: the same audit key, its own chain.
    shutil.copytree(a.state / "keys", tmp / "b" / "state" / "keys")
    b = await start_relay(
        tmp / "b", pki, sink, server={"mode": "monitor"}, audit={"file": str(audit / "relay-b.log")}
    )
    try:
        assert await send(b, [people["pat"]], message(f"MRN {mrn} follow-up", [])) == 250
        assert await send(b, [people["lee"]], message("Flu shots", [])) == 250
    finally:
        await b.stop()
    hashes = []
    for path in audit.glob("relay-*.log*"):
        for line in path.read_text().splitlines():
            record = json.loads(line)
            if isinstance(record.get("recipients"), list):
                hashes += record["recipients"]
    canaries = [*people.values(), *(p.split("@")[0] for p in people.values()), mrn, phone]
    canaries += ["Parking", "Spring offers", "follow-up", "Elm Street", "127.0.0.1"]
    return Logs(audit, a.state, started, canaries, sorted(set(hashes)))


def report(logs: Logs, fmt: str, out: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    until = datetime.now(UTC) + timedelta(seconds=5)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PHI_RELAY_")}
    return subprocess.run(
        [
            str(PHI_RELAY), "audit", "report", str(logs.directory),
            "--state-dir", str(logs.state),
            "--since", logs.started.isoformat(), "--until", until.isoformat(),
            "--format", fmt, "--output", str(out), *extra,
        ],
        capture_output=True, text=True, timeout=120, check=False, env=env, cwd=out.parent,
    )  # fmt: skip


def rows(items: list[dict[str, Any]]) -> dict[tuple[Any, ...], int]:
    return {tuple(v for k, v in r.items() if k != "count"): r["count"] for r in items}


def chromium(*args: str, profile: Path) -> subprocess.CompletedProcess[str]:
    binary = shutil.which("chromium")
    assert binary, "chromium not found: apt-get install chromium (README, Run the tests)"
    return subprocess.run(
        [
            binary, "--headless", "--no-sandbox", "--disable-gpu",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            "--no-first-run", f"--user-data-dir={profile}", *args,
        ],
        capture_output=True, text=True, timeout=180, check=False,
    )  # fmt: skip


# Added to a copy of the page only: the report itself has no script. It writes each chart's
# laid-out size, and how many of its bars have a non-zero box, into the DOM.
MEASURE = """<script>
document.querySelectorAll('svg.chart').forEach(function (s) {
  var r = s.getBoundingClientRect(), n = 0;
  s.querySelectorAll('rect.bar').forEach(function (b) {
    var q = b.getBoundingClientRect(); if (q.width > 0 && q.height > 0) { n++; }
  });
  s.setAttribute('data-size', Math.round(r.width) + 'x' + Math.round(r.height));
  s.setAttribute('data-bars', n);
});
</script>"""


@pytest.fixture
async def logs(tmp_path: Path, pki: Pki, sink: Sink) -> Logs:
    return await generate(tmp_path, pki, sink)


def no_phi(text: str, logs: Logs) -> None:
    for word in [*logs.canaries, *logs.hashes]:
        assert word not in text, word


async def test_report_counts_what_the_traffic_did_and_holds_no_phi(logs: Logs) -> None:
    out = logs.directory.parent / "report.json"
    done = report(logs, "json", out)
    assert done.returncode == 0, done.stderr
    text = out.read_text()
    no_phi(text, logs)
    data = json.loads(text)

    v = data["verification"]
    assert v["ok"] is True
    chains = {Path(c["name"]).name: c for c in v["chains"]}
    assert set(chains) == {"relay-a.log", "relay-b.log"}
    assert len(chains["relay-a.log"]["files"]) >= 3, "relay A's chain should have rotated"
    assert all(c["ok"] and c["problem_count"] == 0 for c in chains.values())

    # Seven messages decided by relay A (the 421 at MAIL never reached DATA), two by B.
    assert data["totals"]["decisions"] == 9
    assert rows(data["messages"]) == {
        ("treatment", "pass"): 5,
        ("treatment", "reject"): 1,
        ("treatment", "modify"): 1,
        ("marketing", "modify"): 2,
    }
    assert rows(data["refusals"]) == {("subject-phi", "phi.subject"): 1}
    assert rows(data["refusals_by_phi_kind"])[("mrn",)] == 1
    # Replaced because the policy says so for phones, or because the detector was unsure.
    [(rule, reason)] = rows(data["replacements"])
    assert rule == "subject-phi" and reason.startswith("phi.subject.")
    assert rows(data["replacements_by_phi_kind"]) == {("phone",): 1}
    assert rows(data["recipients_suppressed"]) == {
        ("consent.no-authorization",): 1,
        ("optout.recipient",): 1,
    }
    assert rows(data["optouts_recorded"]) == {("marketing", "one-click"): 1, ("all", "admin"): 1}
    assert rows(data["tls_inbound"]) == {("TLSv1.3",): 8, ("TLSv1.2",): 1}
    assert rows(data["tls_upstream"]) == {("TLSv1.3",): data["totals"]["upstream_transactions"]}
    assert rows(data["upstream_failures"]) == {
        ("delivery", "deferred", "451"): 1,
        ("at mail", "deferred", "421"): 1,
    }
    assert data["monitor_mode"]["decisions"] == 2
    assert data["monitor_mode"]["would_have_refused"] == 1
    assert rows(data["monitor_mode"]["by_rule"]) == {("subject-phi", "phi.subject"): 1}

    csv_out = logs.directory.parent / "report.csv"
    done = report(logs, "csv", csv_out)
    assert done.returncode == 0, done.stderr
    csv_text = csv_out.read_text()
    no_phi(csv_text, logs)
    assert "refusals,subject-phi,phi.subject,,1\n" in csv_text
    assert "optouts_recorded,marketing,one-click,,1\n" in csv_text
    assert "monitor_mode,would_have_refused,,,1\n" in csv_text


def measured(dom: str) -> Iterator[tuple[int, int, int]]:
    for m in re.finditer(r'<svg class="chart"[^>]*>', dom):
        tag = m.group(0)
        size = re.search(r'data-size="(\d+)x(\d+)"', tag)
        bars = re.search(r'data-bars="(\d+)"', tag)
        assert size and bars, tag
        yield int(size.group(1)), int(size.group(2)), int(bars.group(1))


async def test_html_report_renders_its_charts_in_chromium(logs: Logs) -> None:
    page = logs.directory.parent / "report.html"
    done = report(logs, "html", page)
    assert done.returncode == 0, done.stderr
    text = page.read_text()
    no_phi(text, logs)
    # Self-contained: nothing to fetch, nothing to run.
    assert "<script" not in text and "<link" not in text and "src=" not in text
    assert not re.search(r"""(href|url)\s*[=(]\s*["']?https?:""", text)
    assert "Content-Security-Policy" in text and "default-src 'none'" in text
    assert "Verification passed: 2 chain(s)" in text
    charts = text.count('<svg class="chart"')
    bars = text.count('class="bar"')
    assert charts >= 7 and bars >= 15

    probe = page.with_name("measure.html")
    probe.write_text(
        text.replace(
            "default-src 'none'", "default-src 'none'; script-src 'unsafe-inline'", 1
        ).replace("</body>", MEASURE + "</body>", 1)
    )
    done = chromium("--dump-dom", probe.as_uri(), profile=page.with_name("profile-dom"))
    assert done.returncode == 0, done.stderr[-2000:]
    sizes = list(measured(done.stdout))
    assert len(sizes) == charts
    assert all(w > 100 and h > 20 for w, h, _ in sizes), sizes
    assert sum(n for _, _, n in sizes) == bars, "every bar has a laid-out box"

    shot = page.with_name("report.png")
    done = chromium(
        f"--screenshot={shot}", "--window-size=1200,2600", "--hide-scrollbars", page.as_uri(),
        profile=page.with_name("profile-shot"),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    png = shot.read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 30_000
    if SAVE_SCREENSHOT:
        shutil.copy(shot, SAVE_SCREENSHOT)


async def test_a_tampered_chain_makes_the_report_say_verification_failed(logs: Logs) -> None:
    rotated = logs.directory / "relay-a.log.1"
    lines = rotated.read_text().splitlines(keepends=True)
    index = next(i for i, line in enumerate(lines) if '"type":"decision"' in line)
    edited = lines[index].replace('"category":"treatment"', '"category":"operations"')
    edited = edited.replace('"category":"marketing"', '"category":"operations"')
    assert edited != lines[index]
    lines[index] = edited
    rotated.write_text("".join(lines))

    out = logs.directory.parent / "report.json"
    done = report(logs, "json", out)
    assert done.returncode == 1
    assert "verification FAILED" in done.stderr and "relay-a.log" in done.stderr
    data = json.loads(out.read_text())
    assert data["verification"]["ok"] is False
    chains = {Path(c["name"]).name: c for c in data["verification"]["chains"]}
    assert chains["relay-b.log"]["ok"] is True
    bad = chains["relay-a.log"]
    assert bad["ok"] is False and bad["problem_count"] >= 1
    assert any("relay-a.log.1" in p and "altered or forged" in p for p in bad["problems"])

    page = logs.directory.parent / "report.html"
    done = report(logs, "html", page)
    assert done.returncode == 1
    assert "Verification FAILED: 1 of 2 chain(s)" in page.read_text()


def test_report_errors_say_what_to_do(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PHI_RELAY_")}

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(PHI_RELAY), "audit", "report", *args],
            capture_output=True, text=True, timeout=60, check=False, env=env, cwd=tmp_path,
        )  # fmt: skip

    done = run(str(tmp_path / "nowhere"))
    assert done.returncode == 2 and "no such audit log file or directory" in done.stderr
    done = run("--since", "last tuesday")
    assert done.returncode == 2 and "expected 2026-11-01" in done.stderr
    done = run(str(tmp_path), "--since", "2026-12-02", "--until", "2026-12-01")
    assert done.returncode == 2 and "--since must be before --until" in done.stderr
    assert "Traceback" not in done.stderr
