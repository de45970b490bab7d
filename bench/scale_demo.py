"""Issue 12's "must show", as transcripts: two replicas behind HAProxy on one PostgreSQL,
a spool run through an upstream outage longer than the client retries, and a DKIM
verification of a delivered marketing message.

Everything runs on loopback (127.0.0.0/8) with real parts: the real relay (in process),
Debian's HAProxy (send-proxy-v2) and PostgreSQL (a throw-away cluster), the test upstream
sink over verified STARTTLS, SMTP clients on raw sockets. Bounded: a few messages, each
step with a timeout; about 15 s in all. Synthetic addresses only.

    .venv/bin/python bench/scale_demo.py | tee bench/results/scale_demo.txt
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from email.message import EmailMessage
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import aiohttp  # noqa: E402 - after the path is set
import dkim  # noqa: E402
from dkim.util import parse_tag_value  # noqa: E402

from relay.cli import main as cli_main  # noqa: E402
from tests.integration.test_dkim import dns, make_key  # noqa: E402
from tests.support.haproxy import Haproxy, Route  # noqa: E402
from tests.support.pki import Pki, make_pki  # noqa: E402
from tests.support.postgres import fresh_database, running_server  # noqa: E402
from tests.support.rawsmtp import RawSmtp  # noqa: E402
from tests.support.relay import RunningRelay, start_relay  # noqa: E402
from tests.support.upstream import Sink  # noqa: E402

CLIENT = "127.0.0.5"  # the client's own loopback address, as the relays see it via PROXY
BALANCER = "127.0.0.2"  # HAProxy's source address towards the relays
SENDER = "news@clinic.example"
STEP_TIMEOUT = 30.0


def made(folder: Path) -> Path:
    """`folder`, created (a few inodes on local disk: not worth a thread)."""
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def say(text: str = "") -> None:
    print(text, flush=True)


def message(category: str, to: list[str], subject: str, n: int) -> bytes:
    msg = EmailMessage()
    msg["From"] = f"Example Health Clinic <{SENDER}>"
    msg["To"] = ", ".join(to)
    msg["Subject"] = subject
    msg["Date"] = "Tue, 01 Dec 2026 09:00:00 +0000"
    msg["Message-ID"] = f"<demo-{n}@clinic.example>"
    msg["X-PHI-Category"] = category
    msg.set_content("Our spring classes start next week.\n")
    return msg.as_bytes(policy=msg.policy.clone(linesep="\r\n"))


async def transcript(
    port: int, pki: Pki, rcpts: list[str], data: bytes, *, who: str, local: str = CLIENT
) -> str:
    """One SMTP session, printed as C:/S: lines (EHLO answers folded); the DATA reply."""
    conn = await RawSmtp.connect(port, local=local)
    last = ""
    try:
        say(f"  [{who}] S: {conn.banner}")
        await conn.ehlo()
        say(f"  [{who}] C: EHLO client.test / STARTTLS / EHLO (verified TLS)")
        await conn.starttls(pki.client_context())
        await conn.ehlo()
        for line in [f"MAIL FROM:<{SENDER}>", *[f"RCPT TO:<{r}>" for r in rcpts]]:
            answer = await conn.cmd(line)
            say(f"  [{who}] C: {line}")
            say(f"  [{who}] S: {answer}")
            if not answer.startswith("250"):
                return answer
        say(f"  [{who}] C: DATA ... ({len(data)} bytes) .")
        last = await conn.data(data + b".\r\n")
        say(f"  [{who}] S: {last}")
        with contextlib.suppress(Exception):
            await conn.cmd("QUIT")
    finally:
        await conn.close()
    return last


def delivered(sink: Sink, since: int = 0) -> None:
    for got in sink.received[since:]:
        say(f"  upstream received: MAIL FROM {got.mail_from} RCPT {got.rcpt_tos}")


def outcomes(r: RunningRelay, name: str) -> None:
    """The relay's audit records, as an auditor reads them (no addresses: counts, codes)."""
    for rec in r.audit():
        where = f" replica={rec['replica']}" if rec.get("replica") else ""
        if rec["type"] == "decision":
            say(
                f"  audit[{name}] decision {rec['decision_id'][:8]}{where}"
                f" peer={rec['peer']} category={rec['category']}"
                f" action={rec['enforced_action']} reply={rec['reply_code']}"
            )
        elif rec["type"] == "delivery":
            say(
                f"  audit[{name}] delivery {rec['decision_id'][:8]}{where}"
                f" outcome={rec['outcome']} recipients={len(rec['recipients'])}"
                f" reply={rec['reply_code']} attempt={rec.get('attempt', 1)}"
            )


async def until(check: Callable[[], bool], seconds: float = STEP_TIMEOUT) -> None:
    async with asyncio.timeout(seconds):
        while not check():  # noqa: ASYNC110 - polling state the relay owns
            await asyncio.sleep(0.05)


@contextlib.contextmanager
def captured() -> Iterator[list[str]]:
    """stdout of a CLI call, as lines (printed by the caller, indented)."""
    import io

    buffer, old = io.StringIO(), sys.stdout
    sys.stdout = buffer
    lines: list[str] = []
    try:
        yield lines
    finally:
        sys.stdout = old
        lines.extend(buffer.getvalue().splitlines())


# --- (a) two replicas --------------------------------------------------------------------


async def two_replicas(tmp: Path, pki: Pki, url: str) -> dict[str, float]:
    made(tmp)
    say("== (a) Two replicas on one PostgreSQL behind HAProxy (send-proxy-v2) ==")
    sink = await Sink(pki.server_context()).start()

    async def replica(name: str) -> RunningRelay:
        folder = tmp / name
        folder.mkdir(parents=True, exist_ok=True)
        return await start_relay(
            folder,
            pki,
            sink,
            top={"consent_store": url, "replica_id": name},
            server={
                "proxy_protocol_from": [f"{BALANCER}/32"],
                "trusted_networks": [f"{CLIENT}/32"],
            },
        )

    a = await replica("a")
    shutil.copytree(a.state / "keys", tmp / "b" / "state" / "keys")  # shared keys
    b = await replica("b")
    lb = Haproxy(
        tmp, [Route("to_a", (a.port,), "send-proxy-v2"), Route("to_b", (b.port,), "send-proxy-v2")]
    ).start()
    say(f"  replica a :{a.port}, replica b :{b.port}; HAProxy frontends {lb.ports}")
    say(f"  consent + retry store: {url.split('@')[1]} (PostgreSQL)")
    times: dict[str, float] = {}
    try:
        say("-- 1. education mail to two recipients via A; the upstream defers the second copy")
        first, second = "ada@example.org", "grace@example.org"
        data = message("education", [first, second], "Flu shots now available", 1)
        sink.faults.data_reply_for = {second: "451 4.3.0 Try again later"}
        started = time.monotonic()
        await transcript(lb.ports["to_a"], pki, [first, second], data, who="client->A")
        times["partial failure on A"] = time.monotonic() - started
        delivered(sink)
        sink.faults.data_reply_for = {}
        say("-- 2. the client retries the same bytes; the balancer sends it to B")
        seen = len(sink.received)
        started = time.monotonic()
        await transcript(lb.ports["to_b"], pki, [first, second], data, who="client->B")
        times["retry completed on B"] = time.monotonic() - started
        delivered(sink, seen)
        say(f"  copies at the upstream: {[m.rcpt_tos for m in sink.received]} (one each)")

        say("-- 3. marketing via B, the one-click opt-out POSTed to A, marketing via B again")
        patient = "linus@example.org"
        assert a.relay.services is not None
        await a.relay.services.store.grant(patient, "marketing", (), "form-2026-204")
        say("  consent grant (on A's store = the shared PostgreSQL): done")
        mk = message("marketing", [patient], "Spring offers", 2)
        await transcript(lb.ports["to_b"], pki, [patient], mk, who="client->B")
        header = str(sink.received[-1].message["List-Unsubscribe"])
        token = re.search(r"/u/([^>]+)>", header)
        assert token is not None
        async with aiohttp.ClientSession() as http:
            post = await http.post(
                f"http://127.0.0.1:{a.relay.http_port}/u/{token.group(1)}",
                data={"List-Unsubscribe": "One-Click"},
            )
            say(f"  POST A:/u/<token> List-Unsubscribe=One-Click -> HTTP {post.status}")
        seen = len(sink.received)
        started = time.monotonic()
        mk2 = message("marketing", [patient], "Summer offers", 3)
        await transcript(lb.ports["to_b"], pki, [patient], mk2, who="client->B")
        times["opt-out honoured on B"] = time.monotonic() - started
        say(f"  new copies at the upstream: {len(sink.received) - seen}")
    finally:
        lb.stop()
        await a.stop()
        await b.stop()
        await sink.stop()
    outcomes(a, "a")
    outcomes(b, "b")
    chains = tmp / "chains"
    chains.mkdir()
    shutil.copy(a.audit_path, chains / "a.log")
    shutil.copy(b.audit_path, chains / "b.log")
    say(f"$ phi-relay audit verify --state-dir STATE {chains.name}/")
    with captured() as lines:
        code = cli_main(["audit", "verify", "--state-dir", str(a.state), str(chains)])
    for line in lines:
        say("  " + line.replace(str(tmp) + "/", ""))
    say(f"  exit {code}")
    report = tmp / "report.json"
    with captured():
        code = cli_main(
            [
                "audit", "report", str(chains), "--format", "json", "-o", str(report),
                "--no-optouts", "--state-dir", str(a.state),
            ]
        )  # fmt: skip
    data = json.loads(report.read_text())
    say(f"$ phi-relay audit report {chains.name}/ --format json   (exit {code})")
    for c in data["verification"]["chains"]:
        name, replicas = Path(c["name"]).name, c["replicas"]
        say(f"  chain {name}: replica {replicas}, {c['records']} records, ok={c['ok']}")
    say(f"  totals: {data['totals']}")
    say("  timings (s): " + ", ".join(f"{k} {v:.3f}" for k, v in times.items()))
    return times


# --- (b) the spool through an outage ----------------------------------------------------


async def retrying_client(
    port: int, pki: Pki, rcpt: str, data: bytes, tries: int, gap: float
) -> str:
    """A client with a short retry budget: `tries` attempts `gap` seconds apart."""
    answer = ""
    for attempt in range(1, tries + 1):
        say(f"  client attempt {attempt}/{tries}:")
        answer = await transcript(port, pki, [rcpt], data, who="client", local="127.0.0.1")
        if answer.startswith(("250", "5")) or not answer:
            return answer
        if attempt < tries:
            await asyncio.sleep(gap)
    say("  client gives up (its retry budget is spent)")
    return answer


async def spool_run(tmp: Path, pki: Pki) -> None:
    made(tmp)
    say("== (b) Upstream stopped longer than the client retries ==")
    sink = await Sink(pki.server_context()).start()
    await sink.stop()  # down, on a known port
    rcpt = "margaret@example.org"
    data = message("appointment-reminder", [rcpt], "Your appointment is confirmed", 4)
    tries, gap = 3, 0.5
    say(f"-- without the spool: the client tries {tries} times, {gap} s apart")
    plain = await start_relay(tmp / "plain", pki, sink)
    try:
        await retrying_client(plain.port, pki, rcpt, data, tries, gap)
    finally:
        await plain.stop()
    say("-- with --spool: the same client, the same outage")
    fast = {"enabled": True, "min_backoff": 1.0, "max_backoff": 2.0, "scan_interval": 0.2}
    r = await start_relay(tmp / "spool", pki, sink, sections={"spool": fast})
    outage = tries * gap + 2.0
    try:
        down_since = time.monotonic()
        await retrying_client(r.port, pki, rcpt, data, tries, gap)
        say("$ phi-relay queue list")
        with captured() as lines:
            cli_main(["queue", "list", "--state-dir", str(r.state)])
        for line in lines:
            say("  " + line)
        payload = next((r.state / "spool").glob("*.msg"))
        clear = [w for w in (b"margaret", b"appointment", b"spring") if w in payload.read_bytes()]
        say(f"  on disk: {payload.name} ({payload.stat().st_size} bytes AES-GCM; "
            f"plain words found in it: {clear or 'none'})")  # fmt: skip
        await asyncio.sleep(max(0.0, outage - (time.monotonic() - down_since)))
        say(f"-- upstream back after {time.monotonic() - down_since:.1f} s "
            f"(the client's retries spanned {(tries - 1) * gap:.1f} s)")  # fmt: skip
        await sink.start(sink.port)
        await until(lambda: len(sink.received) >= 1 and not list((r.state / "spool").glob("*.msg")))
        back = time.monotonic()
        await asyncio.sleep(1.0)  # a few more scans: nothing is sent twice
        say(f"  delivered {len(sink.received)} time(s) to {sink.received[0].rcpt_tos}, "
            f"{back - down_since:.1f} s after the client's 250")  # fmt: skip
        with captured() as lines:
            cli_main(["queue", "list", "--state-dir", str(r.state)])
        say("$ phi-relay queue list")
        for line in lines:
            say("  " + line)
    finally:
        await r.stop()
        await sink.stop()
    outcomes(r, "spool")


# --- (c) DKIM --------------------------------------------------------------------------


async def dkim_check(tmp: Path, pki: Pki) -> None:
    made(tmp)
    say("== (c) DKIM: a delivered marketing message, verified by dkimpy ==")
    sink = await Sink(pki.server_context()).start()
    key, record = make_key(tmp, "clinic")
    records = {"s2026._domainkey.clinic.example": record}
    r = await start_relay(
        tmp / "dkim", pki, sink, sections={"dkim": {"keys": [f"clinic.example:s2026:{key}"]}}
    )
    rcpt = "katherine@example.org"
    try:
        assert r.relay.services is not None
        await r.relay.services.store.grant(rcpt, "marketing", (), "form-2026-114")
        data = message("marketing", [rcpt], "Spring wellness offers", 5)
        await transcript(r.port, pki, [rcpt], data, who="client", local="127.0.0.1")
    finally:
        await r.stop()
        await sink.stop()
    got = sink.received[0].data
    head = got.partition(b"\r\n\r\n")[0].decode()
    for name in ("List-Unsubscribe", "List-Unsubscribe-Post"):
        value = re.search(rf"^{name}: (.*)$", head, re.MULTILINE)
        shown = value.group(1) if value else "(missing)"
        shown = re.sub(r"/u/[^>]+>", "/u/<token>>", shown)
        say(f"  delivered header {name}: {shown}")
    sigs = [v for n, v in dkim.rfc822_parse(got)[0] if n.lower() == b"dkim-signature"]
    tags: dict[bytes, bytes] = parse_tag_value(b"".join(sigs[0].split()))
    say(f"  DKIM-Signature d={tags[b'd'].decode()} s={tags[b's'].decode()} a={tags[b'a'].decode()}")
    say(f"  h={tags[b'h'].decode()}")
    ok = dkim.verify(got, dnsfunc=dns(records))
    say(f"  dkim.verify(delivered bytes) -> {ok}")
    tampered = got.replace(
        b"List-Unsubscribe-Post: List-Unsubscribe=One-Click", b"List-Unsubscribe-Post: x", 1
    )
    broken = dkim.verify(tampered, dnsfunc=dns(records))
    say(f"  dkim.verify(List-Unsubscribe-Post changed) -> {broken}")


async def main() -> int:
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="phi-scale-demo-") as folder:
        tmp = Path(folder)
        pki = make_pki(tmp / "pki")
        say(f"phi-relay scale demo, {time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime())}")
        say("loopback only; real relay, HAProxy, PostgreSQL, TLS; synthetic addresses")
        say()
        with running_server() as pg:
            url = await fresh_database(pg)
            await asyncio.wait_for(two_replicas(tmp / "replicas", pki, url), 120)
        say()
        await asyncio.wait_for(spool_run(tmp / "spool", pki), 120)
        say()
        await asyncio.wait_for(dkim_check(tmp / "dkim", pki), 60)
    say()
    say(f"done in {time.monotonic() - started:.1f} s")
    return 0


if __name__ == "__main__":
    from relay.logs import configure

    # The relays' service log goes to stderr (warnings only): stdout is the transcript.
    configure(json=True, level="WARNING")
    sys.exit(asyncio.run(main()))
