"""The opt-in encrypted spool: an upstream that is down or tempfails gets the message later,
exactly once; a permanent failure or expiry sends an RFC 3464 DSN to the sender (never for
the null sender); the files on disk are AES-GCM, not the message; /readyz, metrics, the
queue CLI and the audit log (spooled, delivered, bounced) follow it."""

from __future__ import annotations

import asyncio
import json
import shutil
from collections.abc import AsyncIterator
from email.message import EmailMessage
from pathlib import Path

import aiohttp
import pytest
from faker import Faker

from relay.cli import main as cli_main
from relay.config import Config
from tests.support.pki import Pki
from tests.support.rawsmtp import RawSmtp
from tests.support.relay import RunningRelay, start_relay
from tests.support.upstream import Faults, Sink

fake = Faker()
Faker.seed(3464)
SENDER = "app@clinic.example"
BODY_WORDS = "Bring your insurance card on Saturday"
FAST = {"min_backoff": 0.2, "max_backoff": 0.4, "scan_interval": 0.1, "enabled": True}


def message(rcpt: str) -> bytes:
    msg = EmailMessage()
    msg["From"] = SENDER
    msg["To"] = rcpt
    msg["Subject"] = "Our new Saturday hours"
    msg["Message-ID"] = f"<{fake.uuid4()}@clinic.example>"
    msg.set_content(BODY_WORDS + ".\n")
    return msg.as_bytes(policy=msg.policy.clone(linesep="\r\n"))


async def send(r: RunningRelay, rcpt: str, sender: str = SENDER) -> str:
    conn = await RawSmtp.ready(r.port, r.pki.client_context())
    try:
        answer = await conn.cmd(f"MAIL FROM:<{sender}>")
        assert answer == "250 2.1.0 Sender OK", answer
        answer = await conn.cmd(f"RCPT TO:<{rcpt}>")
        assert answer == "250 2.1.5 Recipient OK", answer
        return await conn.data(message(rcpt) + b".\r\n")
    finally:
        await conn.close()


async def until(check, timeout: float = 10.0) -> None:  # type: ignore[no-untyped-def]
    deadline = asyncio.get_running_loop().time() + timeout
    while not check():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.05)


@pytest.fixture
async def down(pki: Pki) -> AsyncIterator[Sink]:
    """A sink that is not listening (yet): start() brings it up on the same port."""
    sink = await Sink(pki.server_context()).start()
    await sink.stop()
    yield sink
    await sink.stop()


async def spool_relay(tmp_path: Path, pki: Pki, sink: Sink, **spool: object) -> RunningRelay:
    return await start_relay(tmp_path, pki, sink, sections={"spool": {**FAST, **spool}})


def entries(r: RunningRelay) -> list[Path]:
    return sorted((r.state / "spool").glob("*.msg"))


def metas(r: RunningRelay) -> list[dict[str, object]]:
    """The metadata of every complete entry (payload and metadata both written)."""
    out = []
    for payload in entries(r):
        try:
            out.append(json.loads(payload.with_suffix(".json").read_text()))
        except (OSError, ValueError):
            continue
    return out


async def test_upstream_down_queues_encrypted_then_delivers_once(
    tmp_path: Path, pki: Pki, down: Sink
) -> None:
    r = await spool_relay(tmp_path, pki, down, min_backoff=0.5, max_backoff=0.5)
    try:
        rcpt = fake.email()
        answer = await send(r, rcpt)
        assert answer.startswith("250 2.0.0 Queued as "), answer
        assert "the upstream is unavailable; delivery will be retried" in answer
        [payload] = entries(r)
        sealed = payload.read_bytes()
        for secret in (BODY_WORDS.encode(), rcpt.encode(), b"Saturday hours"):
            assert secret not in sealed
        assert rcpt not in payload.with_suffix(".json").read_text()
        await down.start(down.port)
        await until(lambda: len(down.received) == 1 and not entries(r))
        await asyncio.sleep(0.5)  # several more scans: nothing is sent twice
        assert len(down.received) == 1 and down.received[0].rcpt_tos == [rcpt]
        assert BODY_WORDS.encode() in down.received[0].data
        async with aiohttp.ClientSession() as http:
            text = await (await http.get(f"http://127.0.0.1:{r.relay.http_port}/metrics")).text()
        assert "phi_relay_spool_messages 0.0" in text
    finally:
        await r.stop()
    outcomes = [d["outcome"] for d in r.deliveries()]
    assert outcomes[0] == "spooled" and outcomes[-1] == "delivered", outcomes
    [decision] = r.decisions()
    assert {d["decision_id"] for d in r.deliveries()} == {decision["decision_id"]}


async def test_a_tempfail_at_data_is_queued_and_retried(
    tmp_path: Path, pki: Pki, sink: Sink
) -> None:
    sink.faults.data_reply = "451 4.3.0 Try again later"
    r = await spool_relay(tmp_path, pki, sink)
    try:
        answer = await send(r, fake.email())
        assert answer.startswith("250 2.0.0 Queued as "), answer
        await asyncio.sleep(0.5)
        assert sink.received == [] and len(entries(r)) == 1
        sink.faults.data_reply = None
        await until(lambda: len(sink.received) == 1 and not entries(r))
    finally:
        await r.stop()
    assert [d["outcome"] for d in r.deliveries()][-1] == "delivered"
    assert "deferred" in [d["outcome"] for d in r.deliveries()]


async def test_a_permanent_failure_bounces_a_dsn_to_the_sender(
    tmp_path: Path, pki: Pki, down: Sink
) -> None:
    r = await spool_relay(tmp_path, pki, down)
    rcpt = fake.email()
    try:
        assert (await send(r, rcpt)).startswith("250 2.0.0 Queued as ")
        down.faults.refuse_rcpt = {rcpt: "550 5.1.1 No such user"}
        await down.start(down.port)
        await until(lambda: len(down.received) == 1 and not entries(r))
    finally:
        await r.stop()
    [dsn] = down.received
    assert dsn.mail_from == "<>" and dsn.rcpt_tos == [SENDER]
    report = dsn.message
    assert report.get_content_type() == "multipart/report"
    assert report.get_param("report-type") == "delivery-status"
    text = dsn.data.decode()
    assert f"Final-Recipient: rfc822;{rcpt}" in text and "Status: 5.1.1" in text
    assert "Action: failed" in text and "Subject: Our new Saturday hours" in text
    assert BODY_WORDS not in text  # the original's header only, never its body
    assert [d["outcome"] for d in r.deliveries()] == ["spooled", "bounced"]


async def test_a_null_sender_message_that_fails_is_never_bounced(
    tmp_path: Path, pki: Pki, down: Sink
) -> None:
    r = await spool_relay(tmp_path, pki, down)
    rcpt = fake.email()
    try:
        assert (await send(r, rcpt, sender="")).startswith("250 2.0.0 Queued as ")
        down.faults.refuse_rcpt = {rcpt: "550 5.1.1 No such user"}
        await down.start(down.port)
        await until(lambda: not entries(r))
        await asyncio.sleep(0.5)
    finally:
        await r.stop()
    assert down.received == []
    assert [d["outcome"] for d in r.deliveries()] == ["spooled", "bounced"]


async def test_expiry_bounces_after_the_lifetime(tmp_path: Path, pki: Pki, sink: Sink) -> None:
    rcpt = fake.email()
    sink.faults.data_reply_for = {rcpt: "451 4.2.2 Mailbox full"}
    r = await spool_relay(tmp_path, pki, sink, lifetime=1.0)
    try:
        assert (await send(r, rcpt)).startswith("250 2.0.0 Queued as ")
        await until(lambda: len(sink.received) == 1 and not entries(r))
    finally:
        await r.stop()
    [dsn] = sink.received
    assert dsn.rcpt_tos == [SENDER] and b"queue lifetime ran out" in dsn.data
    assert b"Status: 4.2.2" in dsn.data
    assert [d["outcome"] for d in r.deliveries()][-1] == "bounced"


async def test_readyz_queue_cli_and_the_default_without_spool(
    tmp_path: Path, pki: Pki, down: Sink, capsys: pytest.CaptureFixture[str]
) -> None:
    r = await spool_relay(tmp_path, pki, down, max_messages=0, min_backoff=300.0, max_backoff=600.0)
    try:
        assert (await send(r, fake.email())).startswith("250 2.0.0 Queued as ")
        async with aiohttp.ClientSession() as http:
            ready = await http.get(f"http://127.0.0.1:{r.relay.http_port}/readyz")
            body = json.loads(await ready.text())
        assert ready.status == 503 and "spool" in body["failing"]
        args = ["--state-dir", str(r.state)]
        assert cli_main(["queue", "list", *args]) == 0
        listing = capsys.readouterr().out
        [entry_id] = [p.stem for p in entries(r)]
        assert entry_id in listing and "1 queued" in listing and "@" not in listing
        assert f"decision {r.decisions()[0]['decision_id']}" in listing
        assert cli_main(["queue", "flush", *args]) == 0
        assert "1 made due now" in capsys.readouterr().out
        assert cli_main(["queue", "delete", entry_id, *args]) == 0
        assert entries(r) == []
        assert cli_main(["queue", "delete", entry_id, *args]) == 1
    finally:
        await r.stop()
    # Without spool.enabled the same outage is a 451: 250 means the upstream accepted it.
    plain = await start_relay(tmp_path / "plain", pki, down)
    try:
        conn = await RawSmtp.ready(plain.port, pki.client_context())
        assert (await conn.cmd(f"MAIL FROM:<{SENDER}>")).startswith("451 4.4.1")
        await conn.close()
    finally:
        await plain.stop()


async def test_kill_9_mid_traffic_loses_nothing_and_duplicates_nothing(
    tmp_path: Path, pki: Pki, down: Sink
) -> None:
    """A real `phi-relay serve --spool` killed with SIGKILL while clients are sending: every
    message it answered 250 is delivered after the restart, and none twice."""
    from tests.adversarial.service import start_service

    fast = {
        "PHI_RELAY_SPOOL_MIN_BACKOFF": "0.2",
        "PHI_RELAY_SPOOL_MAX_BACKOFF": "0.5",
        "PHI_RELAY_SPOOL_SCAN_INTERVAL": "0.1",
    }
    first = tmp_path / "first"
    first.mkdir()
    svc = await start_service(first, pki, down, "--spool", env=fast)
    acked: list[str] = []
    sent: list[str] = []

    async def client(worker: int) -> None:
        for i in range(40):
            msgid = f"<kill9-{worker}-{i}@clinic.example>"
            data = message(f"p{worker}-{i}@example.org").replace(
                b"Message-ID: <", f"Message-ID: {msgid}\r\nX-Old-Id: <".encode(), 1
            )
            conn: RawSmtp | None = None
            try:
                reader, writer = await asyncio.wait_for(
                    asyncio.open_connection("127.0.0.1", svc.smtp_port), 10
                )
                conn = RawSmtp(reader, writer)  # closed below, whatever the kill interrupts
                assert (await conn.reply()).startswith("220 ")
                await conn.ehlo()
                await conn.starttls(pki.client_context())
                await conn.ehlo()
                assert await conn.cmd(f"MAIL FROM:<{SENDER}>") == "250 2.1.0 Sender OK"
                assert (await conn.cmd(f"RCPT TO:<p{worker}-{i}@example.org>")).startswith("250")
                sent.append(msgid)
                answer = await conn.data(data + b".\r\n")
            except Exception:  # killed under us: no answer, the client would retry
                return
            finally:
                if conn is not None:
                    await conn.close()
            if answer.startswith("250 2.0.0 Queued as "):
                acked.append(msgid)

    clients = [asyncio.create_task(client(w)) for w in range(3)]
    await until(lambda: len(acked) >= 12, timeout=30)
    svc.proc.kill()  # SIGKILL, mid-traffic
    await svc.proc.wait()
    await asyncio.gather(*clients)
    assert acked and len(sent) > len(acked) - 1

    await down.start(down.port)
    second = tmp_path / "second"
    second.mkdir()
    state = first / "state"
    svc = await start_service(
        second,
        pki,
        down,
        "--spool",
        "--state-dir",
        str(state),
        "--audit-log",
        str(state / "audit.log"),
        env=fast,
    )
    try:
        await until(lambda: not list((state / "spool").glob("*.msg")), timeout=30)
        await asyncio.sleep(0.5)
    finally:
        assert await svc.stop() == 0
    got = [str(m.message["Message-ID"]) for m in down.received]
    print(f"kill -9: {len(sent)} sent, {len(acked)} answered 250 queued, {len(got)} delivered")
    assert len(got) == len(set(got)), "a message was delivered twice"
    missing = set(acked) - set(got)
    assert not missing, f"acknowledged but never delivered: {sorted(missing)}"
    assert set(got) <= set(sent)


# --- the spool in flow's delivery and the pool's transaction --------------------------


async def session(r: RunningRelay, mail: str, rcpts: list[str], data: bytes) -> list[str]:
    conn = await RawSmtp.ready(r.port, r.pki.client_context())
    try:
        answers = [await conn.cmd(mail)]
        answers += [await conn.cmd(rcpt) for rcpt in rcpts]
        if all(a.startswith("250") for a in answers):
            answers.append(await conn.data(data + b".\r\n"))
        return answers
    finally:
        await conn.close()


@pytest.fixture
async def down_dsn(pki: Pki) -> AsyncIterator[Sink]:
    """As `down`, but the sink advertises DSN and records MAIL and RCPT parameters."""
    sink = await Sink(pki.server_context(), extensions=("DSN",)).start()
    await sink.stop()
    yield sink
    await sink.stop()


async def test_a_retry_carries_the_clients_dsn_parameters_and_the_exact_size(
    tmp_path: Path, pki: Pki, down_dsn: Sink
) -> None:
    r = await spool_relay(tmp_path, pki, down_dsn)
    rcpt = fake.email()
    try:
        answers = await session(
            r,
            f"MAIL FROM:<{SENDER}> RET=HDRS ENVID=Q+2B42 SIZE=200",
            [f"RCPT TO:<{rcpt}> NOTIFY=FAILURE,DELAY ORCPT=rfc822;{rcpt}"],
            message(rcpt),
        )
        assert answers[-1].startswith("250 2.0.0 Queued as "), answers
        await down_dsn.start(down_dsn.port)
        await until(lambda: len(down_dsn.received) == 1 and not entries(r))
    finally:
        await r.stop()
    [got] = down_dsn.received
    assert got.mail_params.split() == ["RET=HDRS", "ENVID=Q+2B42", f"SIZE={len(got.data)}"]
    assert got.rcpt_params == [f"NOTIFY=FAILURE,DELAY ORCPT=rfc822;{rcpt}"]


async def test_the_dsn_names_envid_and_orcpt_and_notify_never_gets_none(
    tmp_path: Path, pki: Pki, down_dsn: Sink
) -> None:
    r = await spool_relay(tmp_path, pki, down_dsn)
    wants, never, success_only = fake.email(), fake.email(), fake.email()
    try:
        answers = await session(
            r,
            f"MAIL FROM:<{SENDER}> ENVID=batch-7",
            [
                f"RCPT TO:<{wants}> ORCPT=rfc822;{wants}",
                f"RCPT TO:<{never}> NOTIFY=NEVER",
                f"RCPT TO:<{success_only}> NOTIFY=SUCCESS",
            ],
            message(wants),
        )
        assert answers[-1].startswith("250 2.0.0 Queued as "), answers
        refuse = "550 5.1.1 No such user"
        down_dsn.faults.refuse_rcpt = {wants: refuse, never: refuse, success_only: refuse}
        await down_dsn.start(down_dsn.port)
        await until(lambda: len(down_dsn.received) == 1 and not entries(r))
        await asyncio.sleep(0.3)
    finally:
        await r.stop()
    [dsn] = down_dsn.received  # one DSN, for the one recipient that asked for it
    text = dsn.data.decode()
    assert "Original-Envelope-Id: batch-7" in text
    assert f"Original-Recipient: rfc822;{wants}\r\nFinal-Recipient: rfc822;{wants}" in text
    assert never not in text and success_only not in text
    events = [e["event"] for e in r.audit() if e.get("type") == "event"]
    assert events.count("dsn-sent") == 1


async def test_one_recipient_deferred_on_retry_is_kept_alone_and_sent_once(
    tmp_path: Path, pki: Pki, down: Sink
) -> None:
    r = await spool_relay(tmp_path, pki, down)
    first, second = fake.email(), fake.email()
    try:
        answers = await session(
            r,
            f"MAIL FROM:<{SENDER}>",
            [f"RCPT TO:<{first}>", f"RCPT TO:<{second}>"],
            message(first),
        )
        assert answers[-1].startswith("250 2.0.0 Queued as "), answers
        down.faults.refuse_rcpt = {second: "450 4.2.1 Mailbox busy"}
        await down.start(down.port)
        # The rest is written as a new entry before the old one goes: wait for that.
        await until(lambda: [m["recipients"] for m in metas(r)] == [1])
        assert down.all_rcpts() == [first]
        assert all(int(str(m["attempts"])) >= 1 for m in metas(r))  # attempts carry over
        down.faults.refuse_rcpt = {}
        await until(lambda: not entries(r))
        await asyncio.sleep(0.5)
    finally:
        await r.stop()
    assert sorted(down.all_rcpts()) == sorted([first, second])
    outcomes = [d["outcome"] for d in r.deliveries()]
    assert outcomes[0] == "spooled" and outcomes.count("delivered") == 2, outcomes
    assert "deferred" in outcomes


async def test_the_upstream_lost_at_rcpt_spools_the_whole_transaction(
    tmp_path: Path, pki: Pki, sink: Sink
) -> None:
    # The pool's envelope dies at RCPT (the first upstream session only): the client still
    # hears 250 at RCPT and 250 Queued at DATA; the retry delivers it once.
    first = Faults(reset_at="RCPT")
    sink.session_faults = lambda: first if sink.connections == 1 else None
    r = await spool_relay(tmp_path, pki, sink)
    a, b = fake.email(), fake.email()
    try:
        answers = await session(
            r, f"MAIL FROM:<{SENDER}>", [f"RCPT TO:<{a}>", f"RCPT TO:<{b}>"], message(a)
        )
        ok = "250 2.1.5 Recipient OK"
        assert answers[:3] == ["250 2.1.0 Sender OK", ok, ok]
        assert answers[-1].startswith("250 2.0.0 Queued as "), answers
        await until(lambda: len(sink.received) == 1 and not entries(r))
    finally:
        await r.stop()
    assert sorted(sink.received[0].rcpt_tos) == sorted([a, b])
    events = [e for e in r.audit() if e.get("event") == "upstream-unavailable"]
    assert [e["stage"] for e in events] == ["rcpt"]


async def test_requiretls_mail_is_never_queued(tmp_path: Path, pki: Pki, down: Sink) -> None:
    r = await spool_relay(tmp_path, pki, down)
    try:
        conn = await RawSmtp.ready(r.port, pki.client_context())
        answer = await conn.cmd(f"MAIL FROM:<{SENDER}> REQUIRETLS")
        await conn.close()
    finally:
        await r.stop()
    assert answer.startswith("451 4.4.1"), answer
    assert entries(r) == []


async def test_readyz_stays_ready_while_the_spool_covers_an_upstream_outage(
    tmp_path: Path, pki: Pki, down: Sink
) -> None:
    r = await spool_relay(tmp_path, pki, down)
    try:
        assert (await send(r, fake.email())).startswith("250 2.0.0 Queued as ")
        async with aiohttp.ClientSession() as http:
            ready = await http.get(f"http://127.0.0.1:{r.relay.http_port}/readyz")
            body = json.loads(await ready.text())
    finally:
        await r.stop()
    assert ready.status == 200, body
    assert "upstream" not in body.get("checks", {}) and "spool" in body.get("checks", {}), body


async def test_two_relays_sharing_one_spool_send_each_entry_once(
    tmp_path: Path, pki: Pki, down: Sink
) -> None:
    # Worker processes of one host share its spool directory: each entry is sent by the
    # one that holds its lock.
    shared = tmp_path / "shared-spool"
    fast = {**FAST, "min_backoff": 0.05, "max_backoff": 0.05, "scan_interval": 0.02}
    a = await start_relay(
        tmp_path / "a", pki, down, sections={"spool": {**fast, "dir": str(shared)}}
    )
    # The same keys on both, as workers of one host have.
    shutil.copytree(a.state / "keys", tmp_path / "b" / "state" / "keys")
    b = await start_relay(
        tmp_path / "b", pki, down, sections={"spool": {**fast, "dir": str(shared)}}
    )
    rcpts = [f"p{i}@example.org" for i in range(12)]
    try:
        for rcpt in rcpts:
            assert (await send(a, rcpt)).startswith("250 2.0.0 Queued as ")
        await down.start(down.port)
        await until(lambda: not list(shared.glob("*.msg")), timeout=20)
        await asyncio.sleep(0.3)
    finally:
        await a.stop()
        await b.stop()
    assert sorted(down.all_rcpts()) == sorted(rcpts)
    delivered = [d for r in (a, b) for d in r.deliveries() if d["outcome"] == "delivered"]
    assert len(delivered) == len(rcpts)


async def test_stopping_lets_the_send_in_progress_finish_so_a_restart_sends_nothing_again(
    tmp_path: Path, pki: Pki, down: Sink
) -> None:
    r = await spool_relay(tmp_path, pki, down)
    rcpt = fake.email()
    assert (await send(r, rcpt)).startswith("250 2.0.0 Queued as ")

    async def slow_250() -> None:
        await asyncio.sleep(1.0)  # the upstream has the message; its 250 is on the way

    down.faults.on_accept = slow_250
    await down.start(down.port)
    await until(lambda: len(down.received) == 1)
    await r.stop()  # SIGTERM's path: mid-send
    assert entries(r) == [], "the entry must go once the upstream's 250 is in"
    assert [d["outcome"] for d in r.deliveries()][-1] == "delivered"
    down.faults.on_accept = None
    again = await spool_relay(tmp_path, pki, down)
    try:
        await asyncio.sleep(0.5)  # several scans
    finally:
        await again.stop()
    assert len(down.received) == 1


@pytest.mark.parametrize(
    "change", [{"enabled": False}, {"dir": "elsewhere"}], ids=["turned-off", "moved"]
)
def test_a_reload_that_would_turn_off_or_move_the_spool_is_refused(
    tmp_path: Path, change: dict[str, object]
) -> None:
    from relay.config import load
    from relay.server import reload_refusal

    def cfg(spool: dict[str, object]) -> Config:
        return load(None, environ={}, overrides={"": {"state_dir": str(tmp_path)}, "spool": spool})

    running = cfg({"enabled": True})
    assert reload_refusal(running, cfg({"enabled": True})) is None
    refusal = reload_refusal(running, cfg({"enabled": True, **change}))
    assert refusal is not None and refusal[0] == "spool-changed"
    assert "restart the relay to change the spool" in refusal[1]


def test_spool_flags_toml_keys_and_variables_agree(tmp_path: Path) -> None:
    from relay.cli import build_parser
    from relay.cli.serve import overrides
    from relay.config import load

    queue = tmp_path / "queue"
    args = build_parser().parse_args(["serve", "--spool", "--spool-dir", str(queue)])
    by_flags = load(None, environ={}, overrides=overrides(args))
    by_env = load(
        None, environ={"PHI_RELAY_SPOOL_ENABLED": "true", "PHI_RELAY_SPOOL_DIR": str(queue)}
    )
    toml = tmp_path / "relay.toml"
    toml.write_text(f'[spool]\nenabled = true\ndir = "{queue}"\n')
    by_file = load(toml, environ={})
    for cfg in (by_flags, by_env, by_file):
        assert cfg.spool.enabled and cfg.spool_dir == queue
    assert not load(None, environ={}).spool.enabled  # the default: 250 means upstream took it


async def test_workers_of_one_supervisor_share_the_spool_and_send_each_message_once(
    tmp_path: Path, pki: Pki, down: Sink
) -> None:
    """`serve --workers 2 --spool`: both workers take mail into one spool and both scan
    it; every queued message reaches the upstream once, and /metrics shows one queue."""
    from tests.adversarial.service import start_service

    fast = {
        "PHI_RELAY_SPOOL_MIN_BACKOFF": "0.2",
        "PHI_RELAY_SPOOL_MAX_BACKOFF": "0.3",
        "PHI_RELAY_SPOOL_SCAN_INTERVAL": "0.01",
    }
    svc = await start_service(tmp_path, pki, down, "--spool", env=fast, workers=2)
    rcpts = [f"w{i}@example.org" for i in range(12)]
    try:
        for rcpt in rcpts:
            conn = await RawSmtp.ready(svc.smtp_port, pki.client_context())
            try:
                assert await conn.cmd(f"MAIL FROM:<{SENDER}>") == "250 2.1.0 Sender OK"
                assert await conn.cmd(f"RCPT TO:<{rcpt}>") == "250 2.1.5 Recipient OK"
                answer = await conn.data(message(rcpt) + b".\r\n")
            finally:
                await conn.close()
            assert answer.startswith("250 2.0.0 Queued as "), answer
        await svc.wait_metric("phi_relay_spool_messages", float(len(rcpts)))
        await down.start(down.port)
        spool = tmp_path / "state" / "spool"
        await until(lambda: not list(spool.glob("*.msg")), timeout=30)
        await svc.wait_metric("phi_relay_spool_messages", 0.0)
        await asyncio.sleep(0.5)  # many more scans by both workers: nothing twice
    finally:
        assert await svc.stop() == 0
    assert sorted(down.all_rcpts()) == sorted(rcpts)
