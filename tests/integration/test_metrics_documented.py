"""Every metric docs/metrics.md lists is really emitted, with the labels and values it names.

Real traffic through the real relay (AUTH over STARTTLS, a real upstream sink, real
faults: a locked dedup store, a closed audit pipeline, a broken consent store) makes each
documented metric move; a scrape of /metrics over HTTP is then compared with the tables
in docs/metrics.md, both ways, so the documentation and the code cannot drift apart.
"""

from __future__ import annotations

import base64
import io
import re
import sqlite3
import sys
from collections import defaultdict
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import aiosmtplib
import pytest
import structlog
from prometheus_client.parser import text_string_to_metric_families

from relay.users import add_user
from tests.support.mail import SENDER, message
from tests.support.pki import Pki
from tests.support.rawsmtp import RawSmtp
from tests.support.relay import ROOT, RunningRelay, start_relay
from tests.support.upstream import Sink

DOC = ROOT / "docs" / "metrics.md"
USER, PASSWORD = "clinic-app", "correct horse battery staple"
_ROW = re.compile(r"^\|\s*`(phi_relay_[a-z_]+)`\s*\|\s*(\w+)\s*\|([^|]*)\|")
_PLAIN_VALUE = re.compile(r"^[a-z0-9x.-]+$")


def documented() -> dict[str, tuple[str, dict[str, set[str] | None]]]:
    """name -> (type, {label: documented value set, or None when the doc gives no set})."""
    out: dict[str, tuple[str, dict[str, set[str] | None]]] = {}
    for line in DOC.read_text().splitlines():
        m = _ROW.match(line)
        if not m:
            continue
        name, kind, column = m.groups()
        labels: dict[str, set[str] | None] = {}
        for label, paren in re.findall(r"`([a-z_]+)`\s*(?:\(([^)]*)\))?", column):
            values = [v.strip() for v in paren.split(",")] if paren else []
            plain = len(values) > 1 and all(_PLAIN_VALUE.match(v) for v in values)
            labels[label] = set(values) if plain else None
        out[name] = (kind, labels)
    return out


async def send(client: aiosmtplib.SMTP, to: list[str], data: bytes) -> int:
    """The reply code the relay gave for this message."""
    try:
        await client.sendmail(SENDER, to, data)
    except aiosmtplib.SMTPDataError as exc:
        return exc.code
    except aiosmtplib.SMTPRecipientsRefused as exc:
        return exc.recipients[0].code
    return 250


Samples = dict[str, list[tuple[dict[str, str], float]]]


async def scrape(r: RunningRelay) -> Samples:
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http,
        http.get(f"http://127.0.0.1:{r.relay.http_port}/metrics") as resp,
    ):
        assert resp.status == 200
        text = await resp.text()
    samples: Samples = defaultdict(list)
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples[s.name].append((dict(s.labels), s.value))
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return sum(v for got, v in samples.get(name, []) if labels.items() <= got.items())


@pytest.fixture
async def relay(tmp_path: Path, pki: Pki, sink: Sink) -> AsyncIterator[RunningRelay]:
    users = tmp_path / "users"
    add_user(users, USER, PASSWORD)
    r = await start_relay(
        tmp_path,
        pki,
        sink,
        server={"users_file": str(users), "trusted_networks": []},
        audit={"stdout": True},
        # One upstream connection: a transaction holding it makes the next one wait.
        upstream_cfg={"pool_max_connections": 1, "pool_wait_timeout": 0.5},
        sections={"dedup": {"busy_timeout": 0.2}},
    )
    yield r
    await r.stop()


async def test_every_documented_metric_is_emitted_with_its_labels(
    relay: RunningRelay, sink: Sink, monkeypatch: pytest.MonkeyPatch
) -> None:
    r = relay
    # The audit records also go to stdout (a log pipeline); the test owns that stream, and
    # the service log is captured so that closing stdout breaks only the audit pipeline.
    monkeypatch.setattr(sys, "stdout", io.StringIO())
    http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10))
    base = f"http://127.0.0.1:{r.relay.http_port}"
    with structlog.testing.capture_logs():
        samples = await traffic(r, sink, http, base, monkeypatch)
    await http.close()
    check(samples)


async def traffic(
    r: RunningRelay,
    sink: Sink,
    http: aiohttp.ClientSession,
    base: str,
    monkeypatch: pytest.MonkeyPatch,
) -> Samples:
    # Refused before a message: MAIL before STARTTLS, MAIL before AUTH, a wrong password.
    plain = await RawSmtp.connect(r.port)
    await plain.ehlo()
    assert await plain.cmd(f"MAIL FROM:<{SENDER}>") == (
        "530 5.7.0 Must issue a STARTTLS command first"
    )
    await plain.close()
    tls = await RawSmtp.ready(r.port, r.pki.client_context())
    assert await tls.cmd(f"MAIL FROM:<{SENDER}>") == "530 5.7.0 Authentication required"
    await tls.close()
    client = await r.client()
    with pytest.raises(aiosmtplib.SMTPAuthenticationError):
        await client.auth_plain(USER, "not the password at all")
    await client.quit()

    client = await r.client(login=(USER, PASSWORD))
    # Delivered (2xx), refused for PHI, deferred (4xx) and refused (5xx) upstream.
    assert await send(client, ["pat@example.org"], message("Parking update", ["x@y.z"])) == 250
    phi = message("MRN 4451234 lab results", ["x@y.z"])
    assert await send(client, ["pat@example.org"], phi) == 550
    sink.faults.data_reply = "451 4.3.0 try again later"
    assert await send(client, ["pat@example.org"], message("Hours", ["x@y.z"])) == 451
    sink.faults.data_reply = "554 5.7.1 refused by policy"
    assert await send(client, ["pat@example.org"], message("Hours 2", ["x@y.z"])) == 554
    sink.faults.data_reply = None

    # Marketing to one authorized and one unknown recipient: one dropped.
    store = r.relay.services.store  # type: ignore[union-attr]
    await store.grant("fan@example.org", "marketing", (), "form-2026-7")
    offer = message("Spring offers", ["fan@example.org"], "marketing")
    assert await send(client, ["fan@example.org", "stranger@example.org"], offer) == 250

    # The dedup store locked by another process: 451 before anything is sent.
    locker = sqlite3.connect(r.state / "dedup.db", isolation_level=None)
    locker.execute("BEGIN EXCLUSIVE")
    try:
        assert await send(client, ["pat@example.org"], message("Lot", ["x@y.z"])) == 451
    finally:
        locker.execute("ROLLBACK")
        locker.close()

    # The audit pipeline (stdout) closed: 451, and the relay recovers once it is back.
    broken = io.StringIO()
    broken.close()
    monkeypatch.setattr(sys, "stdout", broken)
    assert await send(client, ["pat@example.org"], message("Lot 2", ["x@y.z"])) == 451
    monkeypatch.setattr(sys, "stdout", io.StringIO())

    # Unsubscribe: the page, the one-click POST, a token that does not open.
    token = r.relay.services.codec.issue("fan@example.org", "marketing")  # type: ignore[union-attr]
    async with http.get(f"{base}/u/{token}") as resp:
        assert resp.status == 200
    async with http.post(f"{base}/u/{token}", data={"List-Unsubscribe": "One-Click"}) as resp:
        assert resp.status == 200
    async with http.get(f"{base}/u/not-a-token") as resp:
        assert resp.status == 400

    # Reloads: a broken policy file (kept the running one), then a good one.
    good = r.policy_file.read_text()
    r.policy_file.write_text("pipeline = [\n")
    assert r.relay.reload() is False
    r.policy_file.write_text(good)
    assert r.relay.reload() is True

    # Last, the consent store breaks: the consent policy fails closed (451) and an
    # opt-out cannot be recorded (503).
    await store.close()
    offer = message("Summer offers", ["fan@example.org"], "marketing")
    assert await send(client, ["fan@example.org"], offer) == 451
    async with http.post(f"{base}/u/{token}", data={"List-Unsubscribe": "One-Click"}) as resp:
        assert resp.status == 503

    # A message half sent holds the one upstream connection (leased at MAIL) and its
    # bytes are in flight; another transaction waits for the connection and gives up.
    held = await RawSmtp.ready(r.port, r.pki.client_context())
    login = base64.b64encode(f"\0{USER}\0{PASSWORD}".encode()).decode()
    assert (await held.cmd(f"AUTH PLAIN {login}")).startswith("235 ")
    assert (await held.cmd(f"MAIL FROM:<{SENDER}>")).startswith("250 ")
    assert (await held.cmd("RCPT TO:<pat@example.org>")).startswith("250 ")
    assert (await held.cmd("DATA")).startswith("354 ")
    body = message("Parking update 2", ["x@y.z"])
    held.writer.write(body[: len(body) // 2])
    await held.writer.drain()
    with pytest.raises(aiosmtplib.SMTPSenderRefused) as busy:
        await client.sendmail(SENDER, ["pat@example.org"], message("Lot 3", ["x@y.z"]))
    assert busy.value.code == 451 and "upstream.pool_max_connections" in busy.value.message
    await client.rset()

    samples = await scrape(r)  # `client` and `held` are connected: two active sessions
    held.writer.write(body[len(body) // 2 :] + b".\r\n")
    assert (await held.reply()).startswith("250 2.0.0")
    await held.close()
    await client.quit()
    return samples


def check(samples: Samples) -> None:
    docs = documented()
    assert len(docs) >= 15, "docs/metrics.md tables were not found"
    for name, (kind, labels) in docs.items():
        base_name = name.removesuffix("_total")
        series = {
            "counter": f"{base_name}_total",
            "histogram": f"{name}_count",
            "gauge": name,
        }[kind]
        assert series in samples, f"{name} is documented but not emitted"
        for got, _ in samples[series]:
            assert set(got) == set(labels), (name, got, labels)
            for label, allowed in labels.items():
                if allowed is not None:
                    assert got[label] in allowed, (name, label, got[label], allowed)
        assert value(samples, series) > 0, f"{name} never moved under the test's traffic"

    # And the other way: nothing is emitted that the page does not describe.
    emitted = {
        re.sub(r"(_total|_created|_count|_sum|_bucket)$", "", s)
        for s in samples
        if s.startswith("phi_relay_")
    }
    documented_names = {n.removesuffix("_total") for n in docs}
    assert emitted <= documented_names, emitted - documented_names

    # The values the traffic above must have produced, exactly.
    assert value(samples, "phi_relay_sessions_refused_total", reason="tls.required") == 1
    assert value(samples, "phi_relay_sessions_refused_total", reason="auth.required") == 1
    assert value(samples, "phi_relay_auth_failures_total") == 1
    assert value(samples, "phi_relay_messages_total", decision="reject", category="treatment") == 1
    assert value(samples, "phi_relay_policy_errors_total", policy="consent") == 1
    assert value(samples, "phi_relay_messages_total", decision="tempfail") == 1
    assert value(samples, "phi_relay_audit_errors_total") == 1
    assert value(samples, "phi_relay_dedup_errors_total", stage="claim") == 1
    reason = "consent.no-authorization"
    assert value(samples, "phi_relay_recipients_dropped_total", reason=reason) == 1
    assert value(samples, "phi_relay_deliveries_total", reply_class="2xx") == 2
    assert value(samples, "phi_relay_deliveries_total", reply_class="4xx") == 1
    assert value(samples, "phi_relay_deliveries_total", reply_class="5xx") == 1
    for result, count in (("shown", 1), ("ok", 1), ("invalid", 1), ("store_error", 1)):
        assert value(samples, "phi_relay_unsubscribes_total", result=result) == count, result
    assert value(samples, "phi_relay_config_reloads_total", result="error") == 1
    assert value(samples, "phi_relay_config_reloads_total", result="ok") == 1
    assert value(samples, "phi_relay_config_last_reload_success") == 1
    assert value(samples, "phi_relay_sessions_active") == 2
    assert value(samples, "phi_relay_upstream_connections_total", event="opened") == 1
    assert value(samples, "phi_relay_upstream_connections_total", event="reused") >= 5
    # Waited at least once (the held one; a lease may also wait for a connection's RSET).
    assert value(samples, "phi_relay_upstream_pool_waits_total") >= 1
    assert value(samples, "phi_relay_upstream_pool_wait_timeouts_total") == 1
    assert value(samples, "phi_relay_upstream_connections_open") == 1
    # The half message: what of it has arrived (some of it may still be on its way).
    assert (
        0
        < value(samples, "phi_relay_bytes_in_flight")
        <= len(message("Parking update 2", ["x@y.z"]))
    )
    # Eight messages; the one whose audit record could not be written was never decided.
    assert value(samples, "phi_relay_decision_seconds_count") == 7
    assert value(samples, "phi_relay_upstream_seconds_count") == 4
