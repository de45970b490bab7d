"""`serve --workers N`: a real supervisor and real worker processes on the same listeners.

MTA-like clients send over STARTTLS to the real `phi-relay serve --workers 2` in front of a
real upstream sink. What must hold: both workers serve, each writes its own audit chain
(a worker id in every record) and `audit verify` checks them all; a worker killed with
SIGKILL is restarted and nothing a client got 250 for is lost; SIGHUP reloads every
worker; SIGTERM drains every worker (a DATA under way finishes) and the supervisor exits.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from tests.adversarial.service import PHI_RELAY, Service, start_service
from tests.adversarial.test_restart_under_traffic import Tally, build, client, copies
from tests.support.pki import Pki
from tests.support.rawsmtp import Closed, RawSmtp
from tests.support.upstream import Sink, hold_accepts

MESSAGES = 60
CLIENTS = 8


def workers_of(service: Service) -> list[int]:
    """The supervisor's worker processes, from /proc: its children but the short-lived
    ones it forks for a job (checking a reload, releasing a dead worker's sessions),
    which run its own command line (relay.overseer), nor such a child that has exited
    and is not reaped yet (a zombie: its command line is empty)."""
    pid = service.proc.pid
    text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    out = []
    for kid in map(int, text.split()):
        with contextlib.suppress(OSError):
            cmdline = Path(f"/proc/{kid}/cmdline").read_bytes()
            if cmdline and b"relay.overseer" not in cmdline:
                out.append(kid)
    return sorted(out)


def is_lean(service: Service) -> bool:
    """Whether the supervisor has handed over to the lean one (relay/overseer.py)."""
    return b"relay.overseer" in Path(f"/proc/{service.proc.pid}/cmdline").read_bytes()


def maps_aiohttp(pid: int) -> bool:
    """Whether process `pid` has aiohttp (its C parts) mapped."""
    return "aiohttp" in Path(f"/proc/{pid}/maps").read_text()


def log_events(service: Service) -> list[dict[str, Any]]:
    out = []
    for line in service.log_text().splitlines():
        if line.startswith("{"):
            out.append(json.loads(line))
    return out


def chains(state: Path) -> dict[str, list[dict[str, Any]]]:
    out = {}
    for path in sorted(state.glob("audit*.log")):
        out[path.name] = [json.loads(line) for line in path.read_text().splitlines() if line]
    return out


async def wait_for(what: str, check: Any, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, what
        await asyncio.sleep(0.05)


async def audit_cli(*args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        str(PHI_RELAY), "audit", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def send_all(
    service: Service, pki: Pki, count: int, clients: int = CLIENTS, *, first: int = 0
) -> Tally:
    """`count` messages from `clients` MTA-like clients, a new connection per message (as
    the benchmark's load), so the workers' share of connections shows."""
    queue: asyncio.Queue[int] = asyncio.Queue()
    for n in range(first, first + count):
        queue.put_nowait(n)
    tally = Tally()

    async def one_each() -> None:
        while not queue.empty():
            single: asyncio.Queue[int] = asyncio.Queue()
            single.put_nowait(queue.get_nowait())
            await client(service.smtp_port, pki, single, tally)

    await asyncio.wait_for(asyncio.gather(*(one_each() for _ in range(clients))), 120)
    return tally


async def two_workers(
    tmp_path: Path, pki: Pki, sink: Sink, *extra: str, reuse_port: bool = False
) -> Service:
    return await start_service(
        tmp_path,
        pki,
        sink,
        *extra,
        workers=2,
        env={
            "PHI_RELAY_SERVER_MAX_SESSIONS_PER_CLIENT": "50",
            "PHI_RELAY_SERVER_REUSE_PORT": str(reuse_port).lower(),
        },
    )


@pytest.mark.parametrize("reuse_port", [False, True], ids=["shared-socket", "reuseport"])
async def test_two_workers_deliver_under_load_and_each_chain_verifies(
    tmp_path: Path, pki: Pki, sink: Sink, reuse_port: bool
) -> None:
    service = await two_workers(tmp_path, pki, sink, reuse_port=reuse_port)
    try:
        assert len(workers_of(service)) == 2
        tally = await send_all(service, pki, MESSAGES)
    finally:
        assert await service.stop() == 0, service.log_text()
    every = {(mid, r) for mid, rcpts, _ in map(build, range(MESSAGES)) for r in rcpts}
    assert tally.five == [] and tally.gave_up == []
    assert tally.acknowledged == every
    assert Counter(copies(sink)) == Counter(dict.fromkeys(every, 1))

    state = tmp_path / "state"
    found = chains(state)
    assert sorted(found) == ["audit.log", "audit.w2.log"]
    for name, worker in (("audit.log", 1), ("audit.w2.log", 2)):
        records = found[name]
        assert {r["worker"] for r in records} == {worker}, name
        assert [r["seq"] for r in records] == list(range(len(records)))
        assert records[0]["event"] == "relay-start" and records[-1]["event"] == "relay-stop"
        # Both workers took connections from the listeners.
        assert any(r["type"] == "decision" for r in records), name
    decided = sum(r["type"] == "decision" for rs in found.values() for r in rs)
    assert decided == MESSAGES

    # `audit verify` with the configuration (no FILE) and with the directory: every chain.
    code, out, err = await audit_cli("verify", str(state), "--state-dir", str(state))
    assert code == 0, (out, err)
    assert out.splitlines() == [
        f"OK: {state / name}: {len(found[name])} records, chain intact" for name in sorted(found)
    ]
    env_cfg = tmp_path / "relay.toml"
    env_cfg.write_text(f'state_dir = "{state}"\n[audit]\nfile = "{state / "audit.log"}"\n')
    code, out, err = await audit_cli("verify", "--config", str(env_cfg))
    assert code == 0, (out, err)
    assert len(out.splitlines()) == 2 and all(line.startswith("OK: ") for line in out.splitlines())
    code, out, err = await audit_cli(
        "report", "--config", str(env_cfg), "--format", "json", "--no-optouts"
    )
    assert code == 0, err
    report = json.loads(out)
    assert report["totals"]["decisions"] == MESSAGES, report["totals"]
    assert report["verification"]["ok"] is True
    assert len(report["verification"]["chains"]) == 2


async def test_a_killed_worker_is_restarted_and_nothing_acknowledged_is_lost(
    tmp_path: Path, pki: Pki, sink: Sink
) -> None:
    service = await two_workers(tmp_path, pki, sink)
    try:
        before = workers_of(service)
        queue: asyncio.Queue[int] = asyncio.Queue()
        for n in range(MESSAGES):
            queue.put_nowait(n)
        tally = Tally()
        clients = asyncio.gather(
            *(client(service.smtp_port, pki, queue, tally) for _ in range(CLIENTS))
        )
        await wait_for("a third delivered", lambda: len(sink.received) >= MESSAGES // 3)
        os.kill(before[1], signal.SIGKILL)
        await asyncio.wait_for(clients, 120)
        state = tmp_path / "state"

        def restarted() -> bool:
            return any(
                r.get("event") == "worker-restart" for rs in chains(state).values() for r in rs
            )

        # Written once the new worker listens.
        await wait_for("the new worker listening", restarted, timeout=60)
        after = workers_of(service)
        assert before[0] in after and before[1] not in after
        # The restarted worker takes its share of new sessions.
        more = await send_all(service, pki, 20, first=MESSAGES)
        assert more.five == [] and more.gave_up == []
    finally:
        assert await service.stop() == 0, service.log_text()
    got = copies(sink)
    every = {(mid, r) for mid, rcpts, _ in map(build, range(MESSAGES)) for r in rcpts}
    assert tally.five == [], tally.five
    assert not tally.acknowledged - set(got), "acknowledged but never delivered"
    assert tally.gave_up == [] and tally.acknowledged == every, tally.replies

    died = [e for e in log_events(service) if e.get("event") == "worker died; restarting it"]
    assert [(e["pid"], e["exit"]) for e in died] == [(before[1], "signal SIGKILL")]
    killed = died[0]["worker"]
    records = chains(state)["audit.log" if killed == 1 else "audit.w2.log"]
    assert sum(r["type"] == "decision" for r in records[-25:]) > 0, "restarted, never served"
    restart = [r for r in records if r.get("event") == "worker-restart"]
    assert [(r["previous_exit"], r["restarts"], r["worker"]) for r in restart] == [
        ("signal SIGKILL", 1, killed)
    ]
    # The killed worker's chain goes on in its successor: one chain, still intact.
    code, out, err = await audit_cli("verify", str(state), "--state-dir", str(state))
    assert code == 0, (out, err)


async def test_a_retry_after_a_worker_died_mid_send_goes_out_at_once(
    tmp_path: Path, pki: Pki, sink: Sink
) -> None:
    # The default lease (15 minutes): a claim left by a killed worker is taken over because
    # its owner is proven dead, not because the lease ran out.
    service = await start_service(tmp_path, pki, sink, workers=2)
    release = hold_accepts(sink)
    message = b"From: app@clinic.example\r\nSubject: Parking update\r\n\r\nThe lot closes.\r\n"

    async def send(conn: RawSmtp) -> None:
        assert (await conn.cmd("MAIL FROM:<app@clinic.example>")).startswith("250 ")
        assert (await conn.cmd("RCPT TO:<member@example.org>")).startswith("250 ")
        assert (await conn.cmd("DATA")).startswith("354 ")
        await conn.send(message + b".\r\n")

    try:
        first = await RawSmtp.ready(service.smtp_port, pki.client_context())
        await send(first)
        await wait_for("the upstream holding it", lambda: len(sink.received) == 1)
        before = workers_of(service)
        for pid in before:  # whichever took it, it dies mid-send
            os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(Closed, ConnectionError, TimeoutError):
            await first.reply(timeout=5)  # the connection dies with its worker
        sink.faults.on_accept = None
        release.set()
        await wait_for(
            "both workers replaced",
            lambda: len(workers_of(service)) == 2 and not set(workers_of(service)) & set(before),
            timeout=60,
        )
        retry = await RawSmtp.ready(service.smtp_port, pki.client_context())
        await send(retry)
        assert (await retry.reply()).startswith("250 ")
        await retry.close()
    finally:
        assert await service.stop() == 0, service.log_text()
    # The upstream had the first copy before its reply was lost: the retry is the second
    # (the outcome of the first was unknown, so it is sent and said to be so).
    assert [m.rcpt_tos for m in sink.received] == [["member@example.org"]] * 2
    events = [r.get("event") for rs in chains(tmp_path / "state").values() for r in rs]
    assert "dedup-stale-claim" in events


async def test_sighup_reloads_every_worker_and_a_bad_reload_is_refused_by_all(
    tmp_path: Path, pki: Pki, sink: Sink
) -> None:
    service = await two_workers(tmp_path, pki, sink)
    state = tmp_path / "state"

    def reloads() -> list[tuple[int, bool]]:
        return sorted(
            (r["worker"], r["ok"])
            for rs in chains(state).values()
            for r in rs
            if r.get("event") == "config-reload"
        )

    try:
        # After the handover: the lean supervisor (relay/overseer.py) takes the SIGHUP.
        await wait_for("the lean supervisor", lambda: is_lean(service))
        service.signal(signal.SIGHUP)
        await wait_for("both reloaded", lambda: reloads() == [(1, True), (2, True)])
        policy = service.policy_file.read_text()
        service.policy_file.write_text(policy + "\n[[nonsense\n")
        service.signal(signal.SIGHUP)
        await wait_for(
            "both refused", lambda: reloads() == [(1, False), (1, True), (2, False), (2, True)]
        )
        await service.wait_metric("phi_relay_config_last_reload_success", 0)
        # Still serving, with the configuration that was running.
        tally = await send_all(service, pki, 6, clients=2)
        assert tally.five == [] and tally.gave_up == []
        assert len(workers_of(service)) == 2
    finally:
        assert await service.stop() == 0, service.log_text()


async def test_one_worker_serves_http_and_the_others_never_load_aiohttp(
    tmp_path: Path, pki: Pki, sink: Sink
) -> None:
    """The HTTP listener (unsubscribe, health, the metrics of every worker) is served by
    one worker, the last forked; the others never map aiohttp (~9 MB a process). Killed,
    it is restarted, and an HTTP client that connects meanwhile waits in the listening
    socket's queue (the supervisor keeps it open) and is answered by its successor."""
    service = await two_workers(tmp_path, pki, sink)

    def loading_aiohttp() -> dict[int, bool]:
        return {pid: maps_aiohttp(pid) for pid in workers_of(service)}

    try:
        first = loading_aiohttp()
        assert sorted(first.values()) == [False, True], first
        for _ in range(6):
            assert (await service.http_get("/healthz")).strip()
        http_worker = next(pid for pid, loaded in first.items() if loaded)
        os.kill(http_worker, signal.SIGKILL)
        # Asked at once: answered once the successor listens (http_get waits up to 10 s).
        assert (await service.http_get("/healthz")).strip()
        assert await service.metric("phi_relay_config_last_reload_success") == 1
        after = loading_aiohttp()
        assert http_worker not in after and sorted(after.values()) == [False, True], after
        tally = await send_all(service, pki, 6, clients=2)
        assert tally.five == [] and tally.gave_up == []
    finally:
        assert await service.stop() == 0, service.log_text()


async def test_sigterm_drains_every_worker_and_a_data_under_way_finishes(
    tmp_path: Path, pki: Pki, sink: Sink
) -> None:
    service = await two_workers(tmp_path, pki, sink)
    try:
        conn = await RawSmtp.ready(service.smtp_port, pki.client_context())
        assert (await conn.cmd("MAIL FROM:<app@clinic.example>")).startswith("250")
        assert (await conn.cmd("RCPT TO:<member@example.org>")).startswith("250")
        assert (await conn.cmd("DATA")).startswith("354")
        await conn.send(b"From: app@clinic.example\r\nSubject: Parking update\r\n\r\nThe lot")
        service.signal(signal.SIGTERM)
        await asyncio.sleep(0.5)
        await conn.send(b" closes on Friday.\r\n.\r\n")
        reply = await conn.reply()
        assert reply.startswith("250 "), reply
        await conn.close()
        code = await asyncio.wait_for(service.proc.wait(), 60)
    finally:
        if service.proc.returncode is None:
            service.proc.kill()
            await service.proc.wait()
    assert code == 0, service.log_text()
    assert [m.rcpt_tos for m in sink.received] == [["member@example.org"]]
    for name, records in chains(tmp_path / "state").items():
        assert records[-1]["event"] == "relay-stop", name
    assert '"event": "all workers stopped; supervisor exits"' in service.log_text()


async def test_a_second_supervisor_on_the_same_state_is_refused(
    tmp_path: Path, pki: Pki, sink: Sink
) -> None:
    (tmp_path / "a").mkdir()
    first = await two_workers(tmp_path / "a", pki, sink)
    try:
        proc = await asyncio.create_subprocess_exec(
            str(PHI_RELAY), "serve", "--workers", "2", "--listen", "127.0.0.1:0",
        "--http-listen", "127.0.0.1:0",
            "--tls-cert", str(pki.cert), "--tls-key", str(pki.key),
            "--state-dir", str(tmp_path / "a" / "state"),
            "--audit-log", str(tmp_path / "b.log"),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        out, err = await asyncio.wait_for(proc.communicate(), 60)
    finally:
        assert await first.stop() == 0
    assert proc.returncode == 2, (out, err)
    assert f"another phi-relay (pid {first.proc.pid}) is already using state directory" in (
        err.decode()
    )
    assert "Traceback" not in err.decode()


async def test_a_worker_that_cannot_start_stops_the_supervisor_with_its_reason(
    tmp_path: Path, pki: Pki, sink: Sink
) -> None:
    (tmp_path / "policies").mkdir()
    proc = await asyncio.create_subprocess_exec(
        str(PHI_RELAY), "serve", "--workers", "2", "--listen", "127.0.0.1:0",
        "--http-listen", "127.0.0.1:0",
        "--tls-cert", str(pki.cert), "--tls-key", str(pki.key),
        "--state-dir", str(tmp_path / "state"),
        "--audit-log", str(tmp_path / "state" / "audit.log"),
        "--users-file", str(tmp_path / "missing-users"),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    text = err.decode()
    assert proc.returncode == 2, (out, err)
    assert "missing-users" in text and "Traceback" not in text, text
    # Refused before anything was made: no keys left behind.
    assert not (tmp_path / "state" / "keys").exists()


async def test_two_workers_write_the_retry_store_at_once_and_nothing_doubles(
    tmp_path: Path, pki: Pki, sink: Sink
) -> None:
    """Each message sent twice at the same moment, on connections the two workers take:
    both write the SQLite retry store (WAL, busy timeout) and each recipient gets one copy."""
    service = await two_workers(tmp_path, pki, sink)
    count = 12
    try:

        async def send(n: int) -> str:
            _, rcpts, data = build(n)
            conn = await RawSmtp.ready(service.smtp_port, pki.client_context())
            try:
                assert (await conn.cmd("MAIL FROM:<app@clinic.example>")).startswith("250")
                for rcpt in rcpts:
                    assert (await conn.cmd(f"RCPT TO:<{rcpt}>")).startswith("250")
                assert (await conn.cmd("DATA")).startswith("354")
                await conn.send(data + b".\r\n")
                return await conn.reply()
            finally:
                await conn.close()

        first = await asyncio.gather(*(send(n) for n in range(count) for _ in range(2)))
        # One of each pair delivers; the other is delivered already, or still in flight.
        assert all(r.startswith(("250 ", "451 ")) for r in first), first
        again = await asyncio.gather(*(send(n) for n in range(count)))
        assert all(r.startswith("250 ") for r in again), again
    finally:
        assert await service.stop() == 0, service.log_text()
    every = {(mid, r) for mid, rcpts, _ in map(build, range(count)) for r in rcpts}
    assert Counter(copies(sink)) == Counter(dict.fromkeys(every, 1))
    found = chains(tmp_path / "state")
    assert all(any(r["type"] == "decision" for r in rs) for rs in found.values()), found.keys()
    assert "dedup_error" not in service.log_text() and "database is locked" not in (
        service.log_text()
    )


async def test_the_upstream_connection_limit_is_the_relays_not_each_workers(
    tmp_path: Path, pki: Pki, sink: Sink
) -> None:
    """`upstream.pool_max_connections = 2` with two workers: one connection each, so the
    upstream never sees more than two, however many clients send at once."""
    service = await start_service(
        tmp_path, pki, sink, workers=2,
        env={
            "PHI_RELAY_SERVER_MAX_SESSIONS_PER_CLIENT": "50",
            "PHI_RELAY_UPSTREAM_POOL_MAX_CONNECTIONS": "2",
        },
    )  # fmt: skip
    try:
        tally = await send_all(service, pki, 30)
    finally:
        assert await service.stop() == 0, service.log_text()
    assert tally.five == [] and tally.gave_up == []
    assert len(sink.received) == 30
    found = chains(tmp_path / "state")
    assert all(any(r["type"] == "decision" for r in rs) for rs in found.values())
    assert sink.connections <= 2, sink.connections


async def test_a_refused_reload_stays_refused_in_workers_started_after_it(
    tmp_path: Path, pki: Pki, sink: Sink
) -> None:
    """A reload that would switch the real upstream to the capture folder is refused by
    every worker, and a worker restarted after it starts with the running configuration,
    not the refused one: its mail still goes to the upstream."""
    config = tmp_path / "relay.toml"
    upstream = (
        f'[upstream]\nhost = "localhost"\nport = {sink.port}\nca_file = "{pki.ca}"\ntimeout = 2\n'
    )
    config.write_text(upstream)
    service = await start_service(
        tmp_path, pki, sink, "--config", str(config), workers=2, upstream_flags=False,
        env={"PHI_RELAY_SERVER_MAX_SESSIONS_PER_CLIENT": "50"},
    )  # fmt: skip
    state = tmp_path / "state"

    def reloads() -> list[tuple[int, bool, str]]:
        return sorted(
            (r["worker"], r["ok"], r.get("error", ""))
            for rs in chains(state).values()
            for r in rs
            if r.get("event") == "config-reload"
        )

    try:
        config.write_text("# upstream removed\n")
        service.signal(signal.SIGHUP)
        refused = [(1, False, "upstream-to-capture"), (2, False, "upstream-to-capture")]
        await wait_for("both refused", lambda: reloads() == refused)
        os.kill(workers_of(service)[1], signal.SIGKILL)

        def restarted() -> bool:
            return any(
                r.get("event") == "worker-restart" for rs in chains(state).values() for r in rs
            )

        await wait_for("restarted", restarted, timeout=60)
        tally = await send_all(service, pki, 12, clients=4)
        assert tally.five == [] and tally.gave_up == []
    finally:
        assert await service.stop() == 0, service.log_text()
    assert len(sink.received) == 12
    assert not (state / "captured").exists()
    assert all(any(r["type"] == "decision" for r in rs) for rs in chains(state).values())


async def test_a_worker_restarted_after_a_reload_starts_with_the_reloaded_configuration(
    tmp_path: Path, pki: Pki, sink: Sink
) -> None:
    """The lean supervisor reads a reloaded configuration in a child and hands it to the
    workers it starts from then on: killed after a SIGHUP, both workers come back with the
    new `server.max_message_size` (EHLO's SIZE), without reloading it themselves."""
    import smtplib

    config = tmp_path / "relay.toml"
    config.write_text("[server]\nmax_message_size = 1000000\n")
    service = await start_service(
        tmp_path,
        pki,
        sink,
        "--config",
        str(config),
        workers=2,
        env={"PHI_RELAY_SERVER_MAX_SESSIONS_PER_CLIENT": "50"},
    )
    state = tmp_path / "state"

    def events(name: str) -> list[dict[str, Any]]:
        return [r for rs in chains(state).values() for r in rs if r.get("event") == name]

    def sizes() -> set[str]:
        seen = set()
        for _ in range(8):
            with smtplib.SMTP("127.0.0.1", service.smtp_port, timeout=10) as smtp:
                smtp.ehlo("client.test")
                seen.add(smtp.esmtp_features["size"])
        return seen

    try:
        assert await asyncio.to_thread(sizes) == {"1000000"}
        config.write_text("[server]\nmax_message_size = 2000000\n")
        service.signal(signal.SIGHUP)
        await wait_for("both reloaded", lambda: len(events("config-reload")) == 2)
        await wait_for(
            "the supervisor read it",
            lambda: "configuration re-read for workers started from now on" in service.log_text(),
        )
        for pid in workers_of(service):
            os.kill(pid, signal.SIGKILL)
        await wait_for("both restarted", lambda: len(events("worker-restart")) == 2, timeout=60)
        assert await asyncio.to_thread(sizes) == {"2000000"}
    finally:
        assert await service.stop() == 0, service.log_text()
    assert [r["ok"] for r in events("config-reload")] == [True, True]  # none after restart


def children(worker: int) -> dict[int, bytes]:
    """A worker's child processes and their command lines (a child started from a thread
    is listed under that thread's task); a child that has exited and is not reaped yet (a
    zombie, such as a decision process just killed: its command line is empty) is left
    out, as in `workers_of`."""
    kids = [
        int(k)
        for t in Path(f"/proc/{worker}/task").iterdir()
        for k in (t / "children").read_text().split()
    ]
    out = {}
    for kid in kids:
        with contextlib.suppress(OSError):
            cmdline = Path(f"/proc/{kid}/cmdline").read_bytes()
            if cmdline:
                out[kid] = cmdline
    return out


def decision_processes(worker: int) -> list[int]:
    """A worker's decision processes (relay/worker.py's `_BOOT`)."""
    return [k for k, cmd in children(worker).items() if b"from relay.worker import main" in cmd]


async def test_the_decision_workers_are_the_relays_not_each_workers(
    tmp_path: Path, pki: Pki, sink: Sink
) -> None:
    """`server.decision_workers = 2` with two workers: one decision process each (each
    ~90 MB at its peak with a 5 MB message), however many messages go to them at once."""
    service = await start_service(
        tmp_path, pki, sink, workers=2,
        env={
            "PHI_RELAY_SERVER_MAX_SESSIONS_PER_CLIENT": "50",
            "PHI_RELAY_SERVER_DECISION_WORKERS": "2",
            "PHI_RELAY_SERVER_INLINE_MAX_BYTES": "0",  # every message to a decision process
        },
    )  # fmt: skip
    try:
        tally = await send_all(service, pki, 30)
        per_worker = {w: decision_processes(w) for w in workers_of(service)}
    finally:
        assert await service.stop() == 0, service.log_text()
    assert tally.five == [] and tally.gave_up == []
    assert len(sink.received) == 30
    assert sum(len(d) for d in per_worker.values()) >= 1, per_worker
    assert all(len(d) <= 1 for d in per_worker.values()), per_worker


async def test_a_worker_that_decided_in_processes_has_no_helper_process(
    tmp_path: Path, pki: Pki, sink: Sink
) -> None:
    """A worker's only children are its decision processes: multiprocessing's spawn
    started a resource tracker beside each worker that used one (~13 MB, for named
    semaphores the pool never makes), and a killed decision process is replaced alone."""
    service = await start_service(
        tmp_path, pki, sink, workers=2,
        env={
            "PHI_RELAY_SERVER_MAX_SESSIONS_PER_CLIENT": "50",
            "PHI_RELAY_SERVER_INLINE_MAX_BYTES": "0",  # every message to a decision process
        },
    )  # fmt: skip
    try:
        tally = await send_all(service, pki, 20)
        kids = {w: children(w) for w in workers_of(service)}
        deciding = {w: decision_processes(w) for w in kids}
        for pids in deciding.values():
            for pid in pids:
                os.kill(pid, signal.SIGKILL)
        again = await send_all(service, pki, 10, first=20)
        after = {w: children(w) for w in workers_of(service)}
    finally:
        assert await service.stop() == 0, service.log_text()
    assert tally.five == [] and tally.gave_up == [] and again.five == [] and again.gave_up == []
    assert len(sink.received) == 30
    assert sum(len(d) for d in deciding.values()) >= 1, kids
    for worker, procs in (*kids.items(), *after.items()):
        helpers = [cmd for pid, cmd in procs.items() if b"from relay.worker import main" not in cmd]
        assert helpers == [], (worker, helpers)


def smaps_kb(pid: int) -> dict[str, int]:
    out = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]:
        key, _, value = line.partition(":")
        out[key] = int(value.split()[0])
    return out


async def test_workers_share_what_the_supervisor_loaded_before_the_fork(
    tmp_path: Path, pki: Pki, sink: Sink
) -> None:
    """The supervisor loads the HTTP side, the PHI vocabularies and the scorer's weights
    before it forks (and freezes them out of the collector's reach), so most of each
    worker's memory is pages it shares: after ten messages about a quarter of a worker's
    resident memory is its own (17 of 70 MB; 21 before the scorer was preloaded, half
    before any preloading). Then the supervisor hands over to the lean one
    (relay/overseer.py): the workers keep those pages, and the supervisor maps none of
    them (~11 MB instead of ~75 MB)."""
    service = await two_workers(tmp_path, pki, sink)
    try:
        tally = await send_all(service, pki, 10)
        maps = await asyncio.to_thread(Path(f"/proc/{service.proc.pid}/maps").read_text)
        supervisor = smaps_kb(service.proc.pid)
        usage = {w: smaps_kb(w) for w in workers_of(service)}
        regions = {w: own_regions_kb(w) for w in workers_of(service)}
        http = {w for w in usage if maps_aiohttp(w)}
    finally:
        assert await service.stop() == 0, service.log_text()
    assert tally.five == [] and tally.gave_up == []
    for library in ("aiohttp", "libcrypto", "libssl", "_rust", "libsqlite"):
        assert library not in maps, library
    assert supervisor["Rss"] < 20 * 1024, supervisor
    assert len(http) == 1, http
    for worker, kb in usage.items():
        own = kb["Private_Clean"] + kb["Private_Dirty"]
        assert own < 0.4 * kb["Rss"], (worker, own, kb["Rss"])
        if worker in http:
            continue  # aiohttp, loaded for it alone, is its own memory (not a copy)
        # No table of megabytes built by each worker for itself (the scorer's 4 MiB was):
        # a region wholly its own. (Regions partly its own are pages the supervisor
        # changed loading aiohttp after forking this worker: this one keeps the old ones.)
        tables = [own for own, rss in regions[worker] if own >= 3072 and own > 0.9 * rss]
        assert tables == [], (worker, tables)


def own_regions_kb(pid: int) -> list[tuple[int, int]]:
    """(private, resident) KiB of each anonymous mapping of `pid` but the heap: memory
    glibc mapped for a block of its own (128 KiB or more, relay/malloc.py) or for Python."""
    out, own, rss, anonymous = [], 0, 0, False
    for line in Path(f"/proc/{pid}/smaps").read_text().splitlines():
        head = line.split()
        if "-" in head[0] and not head[0].endswith(":"):
            if anonymous:
                out.append((own, rss))
            anonymous = len(head) < 6
            own = rss = 0
        elif head[0] in ("Private_Clean:", "Private_Dirty:"):
            own += int(head[1])
        elif head[0] == "Rss:":
            rss += int(head[1])
    if anonymous:
        out.append((own, rss))
    return out
