"""phi-relay against its anchors in one interleaved run: a bare TLS sink and Postfix with TLS.

Run from the repository root (root, so Postfix can be installed and run privately):

    .venv/bin/python bench/anchors.py                       # throughput table + memory
    .venv/bin/python bench/anchors.py --relay before=/work/wt/baseline --relay after=.

Targets, all on loopback, all fed by the same load generator (aiosmtplib clients doing
STARTTLS with certificate verification, from bench/load.py):

- `direct`: the sink itself (bench/sink.py, its own process), STARTTLS required;
- `postfix`: a private Postfix instance (bench/postfix.py) with smtpd STARTTLS, a
  regexp `header_checks`, relaying over plaintext to the sink's plaintext listener;
- one or more `phi-relay` checkouts (`--relay LABEL=PATH[,EXTRA_ARG...]`), each run as
  `python -m relay serve` with PYTHONPATH=PATH, STARTTLS inbound, verified STARTTLS to
  the sink, every shipped policy (policies/default.toml).

For each number of clients (`--clients`, default 1 10 50) and each mode (`new`: a new
connection per message; `reuse`: `--per-session` messages per connection) every target
runs for `--seconds`, target after target, for `--rounds` rounds; the table shows each
cell's median round. Per cell: messages/s accepted by the clients, p50/p99 latency of
MAIL..end of DATA, CPU ms per message of the target's process tree (Postfix: every
daemon, counting children that exited; measured until the sink has every message, so
Postfix's queue delivery is included) and of the sink, peak PSS of the target's tree
(sampled), errors and the ratios against Postfix and the direct sink.

The memory part (first, while every process is fresh; `--no-memory` skips it) holds
`--idle-sessions` (200) idle TLS sessions open against each target, then sends
`--big-clients` (50) concurrent messages of `--big-bytes` (5 MB), and prints the
targets' RSS, PSS and peak RSS (VmHWM summed over the tree after a reset). For it the
relays get PHI_RELAY_UPSTREAM_POOL_MAX_CONNECTIONS = `--big-clients`, so every big message
is in flight at once (the pool's bound would hold some at MAIL); the throughput part then
runs on fresh relay processes with their shipped settings.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import os
import signal
import ssl
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import aiosmtplib

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(BENCH))

from load import Pki, make_messages, make_pki, percentile, serve_args  # noqa: E402
from postfix import Postfix, ensure_installed  # noqa: E402

SENDER = "bench@clinic.example"
CLK = os.sysconf("SC_CLK_TCK")
MODES = ("new", "reuse", "resume")


class ResumingContext(ssl.SSLContext):
    """A client context that offers the last session it saw, as Postfix's smtp client does
    with its shared session cache (`smtp_tls_session_cache_database`). asyncio's start_tls
    cannot pass `session=`, but it calls `wrap_bio`, which can. One per target and cell, so
    a session is offered only to the server that issued it."""

    session: ssl.SSLSession | None = None

    def wrap_bio(  # type: ignore[override]
        self,
        incoming: ssl.MemoryBIO,
        outgoing: ssl.MemoryBIO,
        server_side: bool = False,
        server_hostname: str | None = None,
        session: ssl.SSLSession | None = None,
    ) -> ssl.SSLObject:
        return super().wrap_bio(
            incoming, outgoing, server_side, server_hostname, session=session or self.session
        )


def resuming_context(pki: Pki) -> ResumingContext:
    ctx = ResumingContext(ssl.PROTOCOL_TLS_CLIENT)  # verifies the certificate and the name
    ctx.load_verify_locations(str(pki.ca))
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    return ctx


# --- process trees: CPU and memory from /proc --------------------------------------------


def _children_map() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry.name}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rpartition(")")[2].split()[1])
        kids.setdefault(ppid, []).append(int(entry.name))
    return kids


def tree(pid: int) -> list[int]:
    kids = _children_map()
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(kids.get(p, []))
    return out


def tree_cpu(pid: int) -> float:
    """utime+stime+cutime+cstime over the tree: exited, reaped children still count."""
    total = 0
    for p in tree(pid):
        try:
            f = Path(f"/proc/{p}/stat").read_text().rpartition(")")[2].split()
        except OSError:
            continue
        total += int(f[11]) + int(f[12]) + int(f[13]) + int(f[14])
    return total / CLK


def _status_kb(pid: int, key: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def tree_rss_mb(pid: int) -> float:
    return sum(_status_kb(p, "VmRSS") for p in tree(pid)) / 1024


def tree_hwm_mb(pid: int) -> float:
    return sum(_status_kb(p, "VmHWM") for p in tree(pid)) / 1024


def tree_pss_mb(pid: int) -> float:
    total = 0
    for p in tree(pid):
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{p}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    total += int(line.split()[1])
                    break
    return total / 1024


def _role(pid: int, root: int) -> str:
    """What a process of a relay's tree is, from its command line."""
    if pid == root:
        return "root"
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return "gone"
    if b"resource_tracker" in cmdline:
        return "tracker"
    if b"multiprocessing" in cmdline or b"from relay.worker import main" in cmdline:
        return "decision"  # spawned by multiprocessing (before) or by relay/worker.py
    return "worker" if b"relay" in cmdline else "other"


def tree_roles_hwm(pid: int) -> dict[str, list[float]]:
    """VmHWM (MB) of each process of the tree, by role (root, worker, decision, tracker)."""
    out: dict[str, list[float]] = {}
    for p in tree(pid):
        out.setdefault(_role(p, pid), []).append(_status_kb(p, "VmHWM") / 1024)
    return out


def _rollup_kb(pid: int) -> dict[str, int]:
    out: dict[str, int] = {}
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]:
            key, _, value = line.partition(":")
            out[key] = int(value.split()[0])
    return out


def tree_roles_now(pid: int) -> dict[str, list[tuple[float, float]]]:
    """(RSS, PSS) in MB of each process of the tree now, by role."""
    out: dict[str, list[tuple[float, float]]] = {}
    for p in tree(pid):
        kb = _rollup_kb(p)
        out.setdefault(_role(p, pid), []).append((kb.get("Rss", 0) / 1024, kb.get("Pss", 0) / 1024))
    return out


def reset_hwm(pid: int) -> None:
    for p in tree(pid):
        with contextlib.suppress(OSError):
            Path(f"/proc/{p}/clear_refs").write_text("5")


class PeakSampler:
    """Samples the tree's PSS every `interval` seconds while running."""

    def __init__(self, pid: int, interval: float = 0.25) -> None:
        self.pid, self.interval, self.peak = pid, interval, 0.0
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        while True:
            self.peak = max(self.peak, await asyncio.to_thread(tree_pss_mb, self.pid))
            await asyncio.sleep(self.interval)

    def __enter__(self) -> PeakSampler:
        self._task = asyncio.get_running_loop().create_task(self._run())
        return self

    def __exit__(self, *exc: object) -> None:
        if self._task is not None:
            self._task.cancel()


# --- the sink process ----------------------------------------------------------------------


class SinkProc:
    def __init__(self, proc: asyncio.subprocess.Process, ports: dict[str, int]) -> None:
        self.proc, self.tls_port, self.plain_port = proc, ports["tls"], ports["plain"]

    @classmethod
    async def start(cls, pki: Pki) -> SinkProc:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            str(BENCH / "sink.py"),
            "--cert",
            str(pki.cert),
            "--key",
            str(pki.key),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
        )
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), 30)
        return cls(proc, json.loads(line))

    @property
    def pid(self) -> int:
        return self.proc.pid

    async def ask(self, command: str) -> dict[str, object]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(command.encode() + b"\n")
        await self.proc.stdin.drain()
        return dict(json.loads(await asyncio.wait_for(self.proc.stdout.readline(), 30)))

    async def messages(self) -> int:
        return int(str((await self.ask("stats"))["messages"]))

    async def sessions(self) -> int:
        s = (await self.ask("stats"))["sessions"]
        assert isinstance(s, dict)
        return sum(int(v) for v in s.values())

    async def stop(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        try:
            await asyncio.wait_for(self.proc.wait(), 10)
        except TimeoutError:
            self.proc.kill()
            await self.proc.wait()


# --- targets -------------------------------------------------------------------------------


@dataclass
class Target:
    label: str
    port: int
    pid: int  # root of the process tree that is measured


async def start_relay(
    label: str,
    checkout: Path,
    extra: list[str],
    tmp: Path,
    pki: Pki,
    sink_port: int,
    settings: dict[str, str] | None = None,
) -> tuple[Target, asyncio.subprocess.Process]:
    work = tmp / f"relay-{label}"
    if work.exists():  # a fresh process after the memory part: a fresh state too
        import shutil

        shutil.rmtree(work)
    work.mkdir()
    ready = work / "ready"
    state = work / "state"
    checkout = await asyncio.to_thread(checkout.resolve)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PHI_RELAY_")}
    config_code = (checkout / "relay" / "config.py").read_text()
    # A checkout refuses variables it does not know: only the settings it has.
    settings = {
        k: v
        for k, v in (settings or {}).items()
        if k.removeprefix("PHI_RELAY_").split("_", 1)[1].lower() in config_code
    }
    env.update(
        {
            "PYTHONPATH": str(checkout),
            "PHI_RELAY_READY_FILE": str(ready),
            # Every bench client is 127.0.0.1; the idle-session test holds 200 at once.
            "PHI_RELAY_SERVER_MAX_SESSIONS_PER_CLIENT": "400",
            "PHI_RELAY_SERVER_MAX_SESSIONS": "500",
            "PHI_RELAY_SERVER_HOSTNAME": "relay.bench",
            **(settings or {}),
        }
    )
    policies = checkout / "policies" / "default.toml"
    cmd = [sys.executable, *serve_args(pki, sink_port, state, policies), *extra]
    log = (work / "relay.log").open("wb")
    proc = await asyncio.create_subprocess_exec(
        *cmd, cwd=work, env=env, stdout=log, stderr=asyncio.subprocess.STDOUT
    )
    log.close()
    for _ in range(600):
        if proc.returncode is not None:
            break
        if ready.exists() and ready.read_text().endswith("\n"):
            return Target(label, int(ready.read_text().split()[0]), proc.pid), proc
        await asyncio.sleep(0.1)
    with contextlib.suppress(ProcessLookupError):
        proc.kill()
    await proc.wait()
    tail = (work / "relay.log").read_text(errors="replace")[-2000:]
    raise SystemExit(f"{label}: phi-relay serve did not become ready; its log ends:\n{tail}")


async def stop_relay(proc: asyncio.subprocess.Process) -> None:
    if proc.returncode is None:
        proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), 40)
        except TimeoutError:
            proc.kill()
            await proc.wait()


# --- the load generator (time-bounded) -----------------------------------------------------


@dataclass
class Cell:
    target: str
    clients: int
    mode: str
    seconds: float = 0.0
    sent: int = 0
    latencies: list[float] = field(default_factory=list)
    errors: dict[str, int] = field(default_factory=dict)
    first_error: dict[str, str] = field(default_factory=dict)
    cpu: float = 0.0  # target tree CPU seconds, until the sink had every message
    sink_cpu: float = 0.0
    drain: float = 0.0  # seconds after the last reply until the sink had every message
    peak_pss: float = 0.0
    upstream_sessions: int = 0
    handshakes: int = 0
    resumed: int = 0  # of those handshakes, how many resumed a session

    @property
    def rate(self) -> float:
        return self.sent / self.seconds if self.seconds else 0.0

    def p(self, q: float) -> float:
        return percentile([x * 1000 for x in self.latencies], q)

    @property
    def cpu_ms(self) -> float:
        return 1000 * self.cpu / self.sent if self.sent else float("nan")

    @property
    def sink_cpu_ms(self) -> float:
        return 1000 * self.sink_cpu / self.sent if self.sent else float("nan")

    def error(self, kind: str, exc: BaseException) -> None:
        self.errors[kind] = self.errors.get(kind, 0) + 1
        self.first_error.setdefault(kind, str(getattr(exc, "message", exc))[:160])


def _kind(exc: BaseException) -> str:
    code = getattr(exc, "code", None)
    return f"{type(exc).__name__}({code})" if code is not None else type(exc).__name__


async def drive(
    cell: Cell,
    port: int,
    messages: list[tuple[str, bytes]],
    per_session: int,
    tls: object,
    seconds: float,
    timeout: float,
    counter: Iterator[int],
) -> None:
    stop_at = time.monotonic() + seconds

    async def worker() -> None:
        while time.monotonic() < stop_at:
            client = aiosmtplib.SMTP(
                hostname="127.0.0.1",
                port=port,
                start_tls=False,
                tls_context=tls,  # type: ignore[arg-type]
                timeout=timeout,
            )
            try:
                await client.connect()
                await client.ehlo()
                await client.starttls(server_hostname="localhost")
                await client.ehlo()
            except (aiosmtplib.SMTPException, OSError) as exc:
                cell.error("session:" + _kind(exc), exc)
                client.close()
                await asyncio.sleep(0.05)
                continue
            tls_object = client.transport.get_extra_info("ssl_object") if client.transport else None
            if tls_object is not None:
                cell.handshakes += 1
                cell.resumed += bool(tls_object.session_reused)
                if isinstance(tls, ResumingContext):
                    # After the EHLO reply: a TLS 1.3 ticket has arrived by now.
                    tls.session = tls_object.session
            try:
                for _ in range(per_session):
                    if time.monotonic() >= stop_at:
                        break
                    n = next(counter)
                    rcpt, data = messages[n % len(messages)]
                    # Unique per send: the relay suppresses a message it already delivered.
                    data = data.replace(b"@clinic.example>", b".%d@clinic.example>" % n, 1)
                    t = time.perf_counter()
                    try:
                        await client.sendmail(SENDER, [rcpt], data)
                    except aiosmtplib.SMTPResponseException as exc:
                        cell.error("send:" + _kind(exc), exc)
                        await client.rset()
                        continue
                    cell.latencies.append(time.perf_counter() - t)
                    cell.sent += 1
                await client.quit()
            except (aiosmtplib.SMTPException, OSError) as exc:
                cell.error("session:" + _kind(exc), exc)
                client.close()

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(cell.clients)))
    cell.seconds = time.perf_counter() - start


async def run_cell(
    target: Target,
    sink: SinkProc,
    clients: int,
    mode: str,
    args: argparse.Namespace,
    messages: list[tuple[str, bytes]],
    tls: object,
    counter: Iterator[int],
) -> Cell:
    cell = Cell(target.label, clients, mode)
    per_session = args.per_session if mode == "reuse" else 1
    if mode == "resume":
        tls = resuming_context(args.pki)
    await sink.ask("reset")
    cpu0, sink0 = tree_cpu(target.pid), tree_cpu(sink.pid)
    with PeakSampler(target.pid) as sampler:
        await drive(
            cell, target.port, messages, per_session, tls, args.seconds, args.timeout, counter
        )
        done = time.monotonic()
        # Postfix queues: the cell is over when the sink has every accepted message.
        while await sink.messages() < cell.sent and time.monotonic() < done + 120:  # noqa: ASYNC110
            await asyncio.sleep(0.05)
        cell.drain = time.monotonic() - done
    cell.cpu = tree_cpu(target.pid) - cpu0
    cell.sink_cpu = tree_cpu(sink.pid) - sink0
    cell.peak_pss = sampler.peak
    cell.upstream_sessions = await sink.sessions()
    got = await sink.messages()
    if got < cell.sent:
        cell.errors["sink-missing"] = cell.sent - got
    return cell


# --- memory ------------------------------------------------------------------------------


@dataclass
class Memory:
    target: str
    idle_before_rss: float = 0.0
    idle_rss: float = 0.0
    idle_pss: float = 0.0
    idle_open: int = 0
    big_before_rss: float = 0.0
    big_before_pss: float = 0.0
    big_hwm: float = 0.0
    big_pss: float = 0.0
    big_sent: int = 0
    big_errors: int = 0
    big_first_error: str = ""
    roles: dict[str, list[float]] = field(default_factory=dict)  # peak MB per process
    # (RSS, PSS) MB per process: before the idle sessions, and with them open
    idle_roles_before: dict[str, list[tuple[float, float]]] = field(default_factory=dict)
    idle_roles: dict[str, list[tuple[float, float]]] = field(default_factory=dict)


async def open_session(port: int, tls: object, timeout: float) -> aiosmtplib.SMTP:
    client = aiosmtplib.SMTP(
        hostname="127.0.0.1",
        port=port,
        start_tls=False,
        tls_context=tls,  # type: ignore[arg-type]
        timeout=timeout,
    )
    await client.connect()
    await client.ehlo()
    await client.starttls(server_hostname="localhost")
    await client.ehlo()
    return client


async def memory(target: Target, args: argparse.Namespace, tls: object, big: bytes) -> Memory:
    m = Memory(target.label)
    await asyncio.sleep(1)
    m.idle_before_rss = tree_rss_mb(target.pid)
    m.idle_roles_before = tree_roles_now(target.pid)
    sem = asyncio.Semaphore(20)

    async def one() -> aiosmtplib.SMTP | None:
        async with sem:
            try:
                return await open_session(target.port, tls, args.timeout)
            except (aiosmtplib.SMTPException, OSError):
                return None

    sessions = [s for s in await asyncio.gather(*(one() for _ in range(args.idle_sessions))) if s]
    m.idle_open = len(sessions)
    await asyncio.sleep(2)
    m.idle_rss, m.idle_pss = tree_rss_mb(target.pid), tree_pss_mb(target.pid)
    m.idle_roles = tree_roles_now(target.pid)
    for s in sessions:
        s.close()
    await asyncio.sleep(2)

    m.big_before_rss, m.big_before_pss = tree_rss_mb(target.pid), tree_pss_mb(target.pid)
    reset_hwm(target.pid)
    clients = [
        c for c in await asyncio.gather(*(one() for _ in range(args.big_clients))) if c
    ]  # every session is open before the first byte of a message is sent

    async def send(i: int, client: aiosmtplib.SMTP) -> None:
        try:
            await client.sendmail(SENDER, [f"big{i}@example.org"], big)
            m.big_sent += 1
            await client.quit()
        except (aiosmtplib.SMTPException, OSError) as exc:
            m.big_errors += 1
            m.big_first_error = m.big_first_error or str(getattr(exc, "message", exc))[:160]
            client.close()

    with PeakSampler(target.pid, interval=0.1) as sampler:
        await asyncio.gather(*(send(i, c) for i, c in enumerate(clients)))
        await asyncio.sleep(0.5)
    m.big_hwm, m.big_pss = tree_hwm_mb(target.pid), sampler.peak
    m.roles = tree_roles_hwm(target.pid)
    return m


def big_message(size: int) -> bytes:
    line = b"Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod.\r\n"
    head = (
        f"From: {SENDER}\r\nTo: big@example.org\r\nSubject: Clinic news: quarterly report\r\n"
        "Message-ID: <big@clinic.example>\r\nMIME-Version: 1.0\r\n"
        "Content-Type: text/plain; charset=us-ascii\r\n\r\n"
    ).encode()
    return head + line * ((size - len(head)) // len(line))


# --- report ------------------------------------------------------------------------------


def table(cells: dict[tuple[str, int, str], list[Cell]], labels: list[str]) -> str:
    relays = [label for label in labels if label not in ("direct", "postfix")]
    lines = [
        f"{'mode':<5} {'cl':>3} {'target':<14} {'msgs/s':>8} {'p50 ms':>7} {'p99 ms':>7} "
        f"{'cpu ms/msg':>10} {'sink cpu':>8} {'peak MB':>8} {'up sess':>7} {'drain s':>7} "
        f"{'err':>4}  {'x postfix':>9} {'x direct':>8} {'resumed':>7}"
    ]
    order = {m: i for i, m in enumerate(MODES)}
    for mode, clients in sorted(
        {(k[2], k[1]) for k in cells}, key=lambda mc: (order[mc[0]], mc[1])
    ):
        med: dict[str, Cell] = {}
        for label in labels:
            runs = cells.get((label, clients, mode), [])
            if runs:
                runs = sorted(runs, key=lambda c: c.rate)
                med[label] = runs[len(runs) // 2]
        pf, direct = med.get("postfix"), med.get("direct")
        for label in labels:
            c = med.get(label)
            if c is None:
                continue
            xp = f"{c.rate / pf.rate:9.2f}" if pf and pf.rate and label in relays else " " * 9
            xd = f"{c.rate / direct.rate:8.2f}" if direct and direct.rate else " " * 8
            errs = sum(c.errors.values())
            lines.append(
                f"{mode:<5} {clients:>3} {label:<14} {c.rate:8.1f} {c.p(50):7.1f} {c.p(99):7.1f} "
                f"{c.cpu_ms:10.2f} {c.sink_cpu_ms:8.2f} {c.peak_pss:8.0f} "
                f"{c.upstream_sessions:>7} {c.drain:7.2f} {errs:>4}  {xp} {xd} "
                f"{100 * c.resumed / c.handshakes if c.handshakes else 0:6.0f}%"
            )
        if direct is not None:
            for label in relays:
                c = med.get(label)
                if c is not None and clients == 1:
                    lines.append(
                        f"{'':<5} {'':>3} {label:<14} p50 added over direct: "
                        f"{c.p(50) - direct.p(50):.1f} ms"
                    )
    errors = [
        f"  {c.target} {c.mode} {c.clients}: {k}={v} (first: {c.first_error.get(k, '')})"
        for runs in cells.values()
        for c in runs
        for k, v in c.errors.items()
    ]
    if errors:
        lines.append("errors:")
        lines.extend(errors)
    return "\n".join(lines)


def memory_table(rows: list[Memory], args: argparse.Namespace) -> str:
    in_flight = args.big_clients * args.big_bytes / 2**20
    lines = [
        f"memory: {args.idle_sessions} idle TLS sessions; then {args.big_clients} concurrent "
        f"messages of {args.big_bytes / 2**20:.1f} MB ({in_flight:.0f} MB in flight)",
        f"{'target':<14} {'rss before':>10} {'rss idle':>9} {'pss idle':>9} {'open':>5} "
        f"{'rss before':>10} {'peak rss':>9} {'peak pss':>9} {'peak/in flight':>14} "
        f"{'pss/in flight':>13} {'sent':>5} {'err':>4}",
    ]
    for m in rows:
        lines.append(
            f"{m.target:<14} {m.idle_before_rss:10.0f} {m.idle_rss:9.0f} {m.idle_pss:9.0f} "
            f"{m.idle_open:>5} {m.big_before_rss:10.0f} {m.big_hwm:9.0f} {m.big_pss:9.0f} "
            f"{(m.big_hwm - m.big_before_rss) / in_flight:14.2f} "
            f"{(m.big_pss - m.big_before_pss) / in_flight:13.2f} {m.big_sent:>5} "
            f"{m.big_errors:>4}" + (f"  first error: {m.big_first_error}" if m.big_errors else "")
        )
    # Where a relay's memory is, process by process (the root is the supervisor with
    # --workers > 1); the sink and Postfix are left out. Summed RSS counts a page shared
    # by N processes N times; PSS counts 1/N of it in each, so PSS sums to what they use.
    roles = ("root", "worker", "decision", "tracker", "other")
    for m in rows:
        if m.target in ("direct", "postfix"):
            continue
        for name, by_role in (("before sessions", m.idle_roles_before), ("idle", m.idle_roles)):
            if not by_role:
                continue
            parts = [
                f"{role} "
                + " + ".join(f"{r:.0f}/{p:.0f}" for r, p in sorted(by_role[role], reverse=True))
                for role in roles
                if role in by_role
            ]
            rss = sum(r for procs in by_role.values() for r, _ in procs)
            pss = sum(p for procs in by_role.values() for _, p in procs)
            lines.append(
                f"  {m.target:<12} {name + ' rss/pss (MB):':<29} "
                + "; ".join(parts)
                + f"; sum {rss:.0f}/{pss:.0f}"
            )
    for m in rows:
        if m.target in ("direct", "postfix") or not m.roles:
            continue
        parts = [
            f"{role} {' + '.join(f'{mb:.0f}' for mb in sorted(m.roles[role], reverse=True))}"
            for role in roles
            if role in m.roles
        ]
        lines.append(f"  {m.target:<12} {'peak rss by process (MB):':<29} " + "; ".join(parts))
    return "\n".join(lines)


# --- main --------------------------------------------------------------------------------


async def main_async(args: argparse.Namespace) -> int:
    ensure_installed()
    messages = make_messages(2000, args.body_bytes, 20261201)
    counter = itertools.count()
    procs: list[asyncio.subprocess.Process] = []
    postfix: Postfix | None = None
    tmp = Path(tempfile.mkdtemp(prefix="phi-relay-anchors-"))
    try:
        pki = args.pki = make_pki(tmp)
        tls = pki.client_context()
        sink = await SinkProc.start(pki)
        targets = [Target("direct", sink.tls_port, sink.pid)]
        if not args.no_postfix:
            postfix = Postfix(tmp / "postfix", pki.cert, pki.key, relay_port=sink.plain_port)
            await asyncio.to_thread(postfix.start)
            targets.append(Target("postfix", postfix.port, postfix.master_pid()))
        specs = []
        for spec in args.relay:
            label, _, rest = spec.partition("=")
            path, *extra = rest.split(",")
            specs.append((label, Path(path), extra))

        async def start_relays(settings: dict[str, str] | None = None) -> list[Target]:
            started = []
            for label, path, extra in specs:
                target, proc = await start_relay(
                    label, path, extra, tmp, pki, sink.tls_port, settings
                )
                started.append(target)
                procs.append(proc)
            return started

        async def stop_relays() -> None:
            while procs:
                await stop_relay(procs.pop())

        anchors = list(targets)
        # The memory part lets every one of the big messages have an upstream connection
        # at once (a checkout without the setting has no bound): otherwise the pool's bound
        # would hold some at MAIL and fewer bytes would be in flight than the figure says.
        pool_for_all = {"PHI_RELAY_UPSTREAM_POOL_MAX_CONNECTIONS": str(args.big_clients)}
        targets = anchors + await start_relays(pool_for_all if args.memory else None)
        labels = [t.label for t in targets]
        print(
            f"anchors: messages of {len(messages[0][1])} bytes, {args.seconds:g} s per cell, "
            f"{args.rounds} round(s), clients {args.clients}, modes {' / '.join(args.modes)} "
            f"({args.per_session} per session), {os.cpu_count()} cores, loopback only",
            flush=True,
        )
        if args.memory:
            # First, while every process is fresh: idle sessions must not hide in memory
            # that earlier load made the allocator keep.
            big = big_message(args.big_bytes)
            rows = [await memory(t, args, tls, big) for t in targets]
            print(memory_table(rows, args), flush=True)
        cells: dict[tuple[str, int, str], list[Cell]] = {}
        if not args.throughput:
            return 0
        if args.memory:  # fresh relays with their shipped settings for the throughput part
            await stop_relays()
            targets = anchors + await start_relays()
        for t in targets:  # warm-up: lazy imports, first handshakes, Postfix's processes
            warm = Cell(t.label, 4, "warm")
            await drive(warm, t.port, messages, 5, tls, 1.5, args.timeout, counter)
            if warm.errors:
                print(f"warm-up {t.label}: errors {warm.errors} {warm.first_error}", flush=True)
        for rnd in range(args.rounds):
            for clients in args.clients:
                for mode in args.modes:
                    order = targets if rnd % 2 == 0 else targets[::-1]
                    for t in order:
                        c = await run_cell(t, sink, clients, mode, args, messages, tls, counter)
                        cells.setdefault((t.label, clients, mode), []).append(c)
                        print(
                            f"  round {rnd + 1} {mode:<5} {clients:>3} {t.label:<14} "
                            f"{c.rate:8.1f} msgs/s cpu {c.cpu_ms:.2f} ms/msg "
                            f"errors {sum(c.errors.values())}",
                            flush=True,
                        )
        print(table(cells, labels), flush=True)
        failed = any(sum(c.errors.values()) for runs in cells.values() for c in runs)
        return 1 if failed else 0
    finally:
        for proc in procs:
            await stop_relay(proc)
        if postfix is not None:
            await asyncio.to_thread(postfix.stop)
        with contextlib.suppress(NameError):
            await sink.stop()
        if args.keep:
            print(f"kept {tmp}", flush=True)
        else:
            import shutil

            shutil.rmtree(tmp, ignore_errors=True)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument(
        "--relay",
        action="append",
        help="LABEL=CHECKOUT[,EXTRA_SERVE_ARG...] (repeatable; default phi-relay=.)",
    )
    p.add_argument("--clients", type=int, nargs="+", default=[1, 10, 50])
    p.add_argument(
        "--modes",
        nargs="+",
        choices=MODES,
        default=list(MODES),
        help="new: a new connection per message; reuse: --per-session per connection; "
        "resume: a new connection per message resuming the last TLS session (default: all)",
    )
    p.add_argument("--seconds", type=float, default=6.0, help="per cell (6)")
    p.add_argument("--rounds", type=int, default=1, help="interleaved rounds (1)")
    p.add_argument("--per-session", type=int, default=20, help="messages per reused session")
    p.add_argument("--body-bytes", type=int, default=4600, help="body size (~5,000-byte messages)")
    p.add_argument("--timeout", type=float, default=60.0)
    p.add_argument("--no-postfix", action="store_true")
    p.add_argument("--no-memory", dest="memory", action="store_false")
    p.add_argument(
        "--memory-only", dest="throughput", action="store_false", help="skip the throughput table"
    )
    p.add_argument("--idle-sessions", type=int, default=200)
    p.add_argument("--big-clients", type=int, default=50)
    p.add_argument("--big-bytes", type=int, default=5 * 1024 * 1024)
    p.add_argument("--keep", action="store_true", help="keep the temporary folder (logs)")
    args = p.parse_args(argv)
    args.relay = args.relay or [f"phi-relay={ROOT}"]
    return args


def main(argv: list[str] | None = None) -> int:
    return asyncio.run(main_async(parse_args(argv)))


if __name__ == "__main__":
    raise SystemExit(main())
