"""Two replicas on one PostgreSQL behind HAProxy (send-proxy-v2): a client's retry after a
partial failure on replica A, completed through replica B, delivers only the missing copy;
an opt-out posted to A suppresses marketing sent through B; every audit record names its
replica, and `audit verify DIR` checks both chains."""

from __future__ import annotations

import asyncio
import re
import shutil
import time
from email.message import EmailMessage
from pathlib import Path

import aiohttp
import aiosmtplib
import pytest
from faker import Faker

from relay.cli import main as cli_main
from tests.support.haproxy import Haproxy, Route
from tests.support.pki import Pki
from tests.support.postgres import PostgresServer, fresh_database
from tests.support.relay import RunningRelay, start_relay
from tests.support.upstream import Sink

fake = Faker()
Faker.seed(1204)
SENDER = "news@clinic.example"
CLIENT = "127.0.0.5"


def message(category: str, to: list[str], subject: str) -> bytes:
    msg = EmailMessage()
    msg["From"] = SENDER
    msg["To"] = ", ".join(to)
    msg["Subject"] = subject
    msg["Message-ID"] = f"<{fake.uuid4()}@clinic.example>"
    msg["X-PHI-Category"] = category
    msg.set_content("Our spring classes start next week.\n")
    return msg.as_bytes(policy=msg.policy.clone(linesep="\r\n"))


async def replica(tmp_path: Path, pki: Pki, sink: Sink, name: str, url: str) -> RunningRelay:
    folder = tmp_path / name
    folder.mkdir(exist_ok=True)
    return await start_relay(
        folder,
        pki,
        sink,
        top={"consent_store": url, "replica_id": name},
        server={
            "proxy_protocol_from": ["127.0.0.2/32"],
            "trusted_networks": [f"{CLIENT}/32"],
        },
    )


async def send(port: int, pki: Pki, to: list[str], data: bytes) -> tuple[int, str]:
    client = aiosmtplib.SMTP(
        hostname="127.0.0.1",
        port=port,
        start_tls=False,
        tls_context=pki.client_context(),
        timeout=15,
        source_address=(CLIENT, 0),
    )
    await client.connect()
    try:
        await client.starttls(server_hostname="localhost")
        _, text = await client.sendmail(SENDER, to, data)
        return 250, text
    except aiosmtplib.SMTPResponseException as exc:
        return exc.code, exc.message
    finally:
        await client.quit()


async def test_two_replicas_share_retry_state_and_opt_outs(
    tmp_path: Path, pki: Pki, sink: Sink, postgres_server: PostgresServer
) -> None:
    url = await fresh_database(postgres_server)
    a = await replica(tmp_path, pki, sink, "a", url)
    # Shared keys (docs/scaling.md): B starts with A's unsubscribe, dedup and audit keys.
    shutil.copytree(a.state / "keys", tmp_path / "b" / "state" / "keys")
    b = await replica(tmp_path, pki, sink, "b", url)
    lb = Haproxy(
        tmp_path,
        [Route("to_a", (a.port,), "send-proxy-v2"), Route("to_b", (b.port,), "send-proxy-v2")],
    ).start()
    timings: dict[str, float] = {}
    try:
        # 1. Education mail (a footer per recipient) to two; the upstream defers one on A.
        first, second = fake.unique.email(), fake.unique.email()
        data = message("education", [first, second], "Flu shots now available")
        sink.faults.data_reply_for = {second: "451 4.3.0 Try again later"}
        started = time.monotonic()
        code, text = await send(lb.ports["to_a"], pki, [first, second], data)
        timings["partial on A"] = time.monotonic() - started
        assert (code, text) == (
            451,
            "4.3.0 Upstream: Try again later (delivered to 1 of 2 recipients)",
        )
        sink.faults.data_reply_for = {}
        # The client's retry (same bytes) reaches B: only the missing copy goes out.
        started = time.monotonic()
        code, text = await send(lb.ports["to_b"], pki, [first, second], data)
        timings["retry on B"] = time.monotonic() - started
        assert code == 250, text
        assert [m.rcpt_tos for m in sink.received] == [[first], [second]]

        # 2. Marketing through B, the opt-out POSTed to A, marketing through B again.
        patient = fake.unique.email()
        assert a.relay.services is not None
        await a.relay.services.store.grant(patient, "marketing", (), "form-2026-204")
        code, _ = await send(
            lb.ports["to_b"], pki, [patient], message("marketing", [patient], "Spring offers")
        )
        assert code == 250
        header = sink.received[-1].message["List-Unsubscribe"]
        token = re.search(r"/u/([^>]+)>", header)
        assert token is not None
        async with aiohttp.ClientSession() as http:
            post = await http.post(
                f"http://127.0.0.1:{a.relay.http_port}/u/{token.group(1)}",
                data={"List-Unsubscribe": "One-Click"},
            )
            assert post.status == 200
        started = time.monotonic()
        code, text = await send(
            lb.ports["to_b"], pki, [patient], message("marketing", [patient], "Summer offers")
        )
        timings["suppressed on B"] = time.monotonic() - started
        assert (code, text) == (
            550,
            "5.7.1 Every recipient has opted out of this kind of message; it was not sent",
        )
        assert len(sink.received) == 3
    finally:
        lb.stop()
        await a.stop()
        await b.stop()
    print("two-replica timings (s):", {k: round(v, 3) for k, v in timings.items()})

    records = {name: r.audit() for name, r in (("a", a), ("b", b))}
    for name, chain in records.items():
        assert chain and all(rec.get("replica") == name for rec in chain), name
    assert {d["peer"] for n in "ab" for d in records[n] if d["type"] == "decision"} == {CLIENT}
    b_deliveries = [d for d in records["b"] if d["type"] == "delivery"]
    assert b_deliveries[0]["outcome"] == "delivered" and len(b_deliveries[0]["recipients"]) == 1

    # One directory holding both replicas' chains: `audit verify DIR` checks each.
    chains = tmp_path / "chains"
    chains.mkdir()
    shutil.copy(a.audit_path, chains / "a.log")
    shutil.copy(b.audit_path, chains / "b.log")
    assert cli_main(["audit", "verify", "--state-dir", str(a.state), str(chains)]) == 0


@pytest.mark.parametrize("tampered", ["a.log"])
async def test_audit_verify_of_a_directory_names_the_broken_chain(
    tmp_path: Path, pki: Pki, sink: Sink, tampered: str, capsys: pytest.CaptureFixture[str]
) -> None:
    r = await start_relay(tmp_path, pki, sink, top={"replica_id": "a"})
    await r.stop()
    chains = tmp_path / "chains"
    chains.mkdir()
    shutil.copy(r.audit_path, chains / "a.log")
    shutil.copy(r.audit_path, chains / "b.log")
    text = (chains / tampered).read_text().replace('"relay-start"', '"relay-stop"', 1)
    (chains / tampered).write_text(text)
    assert cli_main(["audit", "verify", "--state-dir", str(r.state), str(chains)]) == 1
    out = capsys.readouterr().out
    assert f"{chains / 'a.log'}:" in out and f"OK: {chains / 'b.log'}" in out


async def test_a_message_queued_on_one_replica_is_not_sent_again_by_another(
    tmp_path: Path, pki: Pki, postgres_server: PostgresServer
) -> None:
    # Replica A queues the message (upstream down, spool on); its 250 never reaches the
    # client, who retries through replica B once the upstream is back: the shared retry
    # store already holds the recipient as served, and A's spool delivers the one copy.
    url = await fresh_database(postgres_server)
    sink = await Sink(pki.server_context()).start()
    await sink.stop()
    fast = {"enabled": True, "min_backoff": 0.2, "max_backoff": 0.4, "scan_interval": 0.1}
    a = await start_relay(
        tmp_path / "a",
        pki,
        sink,
        top={"consent_store": url, "replica_id": "a"},
        sections={"spool": fast},
    )
    shutil.copytree(a.state / "keys", tmp_path / "b" / "state" / "keys")
    b = await start_relay(tmp_path / "b", pki, sink, top={"consent_store": url, "replica_id": "b"})
    rcpt = fake.unique.email()
    data = message("appointment-reminder", [rcpt], "Your visit is confirmed")
    try:
        code, text = await send_direct(a, pki, [rcpt], data)
        assert code == 250 and text.startswith("2.0.0 Queued as "), text
        await sink.start(sink.port)
        code, text = await send_direct(b, pki, [rcpt], data)
        assert (code, text) == (
            250,
            "2.0.0 Already delivered to every recipient; not sent again",
        )
        deadline = time.monotonic() + 10
        while sink.received == [] or list((a.state / "spool").glob("*.msg")):
            assert time.monotonic() < deadline, "A's spool did not deliver"
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.3)
    finally:
        await a.stop()
        await b.stop()
        await sink.stop()
    assert [m.rcpt_tos for m in sink.received] == [[rcpt]]
    outcomes = [d["outcome"] for d in a.deliveries()]
    assert (outcomes[0], outcomes[-1], outcomes.count("delivered")) == ("spooled", "delivered", 1)
    assert [d["outcome"] for d in b.deliveries()] == ["duplicate-suppressed"]


async def send_direct(r: RunningRelay, pki: Pki, to: list[str], data: bytes) -> tuple[int, str]:
    client = await r.client()
    try:
        _, text = await client.sendmail(SENDER, to, data)
        return 250, text
    except aiosmtplib.SMTPResponseException as exc:
        return exc.code, exc.message
    finally:
        await client.quit()
