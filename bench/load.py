"""Load benchmark: the same STARTTLS load sent straight to a sink, then through phi-relay to it.

Run from the repository root:

    .venv/bin/python bench/load.py --messages 2000 --concurrency 100 --per-session 10

Everything stays on loopback. Certificates are generated with relay.certs into a temporary
directory; the relay runs as a `phi-relay serve` subprocess (its own process, so its own
core), learns nothing but flags and PHI_RELAY_* variables, and reports its ports through
PHI_RELAY_READY_FILE. Exit code: 0 if the relay run had no errors and the sink received
every message, 1 otherwise, 2 on a usage error.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import shutil
import signal
import ssl
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from email.message import EmailMessage
from pathlib import Path

import aiosmtplib
from aiosmtpd.smtp import SMTP, Envelope, Session
from faker import Faker

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # so `python bench/load.py` finds the relay package

from relay.certs import make_ca, make_leaf  # noqa: E402

SENDER = "bench@clinic.example"


# --- the upstream sink -------------------------------------------------------------------


class _CountingHandler:
    """Accepts everything and counts it; keeps no message content (memory stays flat)."""

    def __init__(self, sink: Sink) -> None:
        self.sink = sink

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        self.sink.messages += 1
        self.sink.recipients += len(envelope.rcpt_tos)
        self.sink.bytes += len(envelope.original_content or b"")
        return "250 2.0.0 queued"


class Sink:
    """An aiosmtpd server on loopback requiring STARTTLS, counting what it receives."""

    def __init__(self, tls: ssl.SSLContext) -> None:
        self.tls = tls
        self.messages = 0
        self.recipients = 0
        self.bytes = 0
        self.sessions = 0
        self.server: asyncio.Server | None = None
        self.port = 0

    def _factory(self) -> SMTP:
        self.sessions += 1
        return SMTP(
            _CountingHandler(self),
            hostname="sink.bench",
            tls_context=self.tls,
            require_starttls=True,
            data_size_limit=50 * 1024 * 1024,
        )

    async def start(self) -> Sink:
        loop = asyncio.get_running_loop()
        self.server = await loop.create_server(self._factory, host="127.0.0.1", port=0, backlog=512)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    def reset(self) -> None:
        self.messages = self.recipients = self.bytes = self.sessions = 0

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            if hasattr(self.server, "close_clients"):  # Python >= 3.13
                self.server.close_clients()
            await self.server.wait_closed()


# --- certificates ------------------------------------------------------------------------


@dataclass(frozen=True)
class Pki:
    ca: Path
    cert: Path
    key: Path

    def server_context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(self.cert, self.key)
        return ctx

    def client_context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=str(self.ca))
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        return ctx


def make_pki(folder: Path) -> Pki:
    ca = make_ca("bench CA")
    leaf = make_leaf(ca, ["localhost", "127.0.0.1"])
    pki = Pki(folder / "ca.crt", folder / "server.crt", folder / "server.key")
    pki.ca.write_bytes(ca.cert_pem())
    pki.cert.write_bytes(leaf.cert_pem() + ca.cert_pem())
    pki.key.write_bytes(leaf.key_pem())
    return pki


# --- messages ----------------------------------------------------------------------------


def make_messages(count: int, body_bytes: int, seed: int) -> list[tuple[str, bytes]]:
    """Synthetic, PHI-free messages: office-news subjects and lorem bodies of ~body_bytes."""
    fake = Faker()
    Faker.seed(seed)
    out: list[tuple[str, bytes]] = []
    for _ in range(count):
        rcpt = f"user{fake.random_number(digits=8)}@example.org"
        msg = EmailMessage()
        msg["From"] = SENDER
        msg["To"] = rcpt
        # Catch phrases are corporate filler ("Upgradable modular interface"): no names,
        # dates or conditions, so the subject-phi policy accepts them. Not one with digits:
        # the detector reads "24/7" as a member number (a 550 in every run).
        phrase = fake.catch_phrase()
        while any(c.isdigit() for c in phrase):
            phrase = fake.catch_phrase()
        msg["Subject"] = f"Clinic news: {phrase}"
        msg["Message-ID"] = f"<{fake.uuid4()}@clinic.example>"
        paragraphs: list[str] = []
        size = 0
        while size < body_bytes:
            p = fake.paragraph(nb_sentences=6)
            paragraphs.append(p)
            size += len(p) + 2
        msg.set_content("\n\n".join(paragraphs) + "\n")
        out.append((rcpt, msg.as_bytes(policy=msg.policy.clone(linesep="\r\n"))))
    return out


# --- the load generator ------------------------------------------------------------------


@dataclass
class Result:
    label: str
    seconds: float = 0.0
    sent: int = 0
    latencies: list[float] = field(default_factory=list)  # per message: MAIL..end of DATA
    session_setup: list[float] = field(default_factory=list)  # connect+EHLO+STARTTLS+EHLO
    errors: dict[str, int] = field(default_factory=dict)
    peak_sessions: int = 0

    first_reply: dict[str, str] = field(default_factory=dict)  # error kind -> first reply

    def error(self, kind: str, exc: BaseException | None = None) -> None:
        self.errors[kind] = self.errors.get(kind, 0) + 1
        # Server replies carry no message content (the relay keeps PHI out of them).
        if exc is not None and kind not in self.first_reply:
            self.first_reply[kind] = str(getattr(exc, "message", exc))[:200]

    @property
    def error_count(self) -> int:
        return sum(self.errors.values())

    @property
    def rate(self) -> float:
        return self.sent / self.seconds if self.seconds else 0.0


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1]


def _error_kind(exc: BaseException) -> str:
    code = getattr(exc, "code", None)
    return f"{type(exc).__name__}({code})" if code is not None else type(exc).__name__


async def run_load(
    label: str,
    port: int,
    messages: list[tuple[str, bytes]],
    *,
    concurrency: int,
    per_session: int,
    tls: ssl.SSLContext,
    deadline: float,
    timeout: float,
) -> Result:
    result = Result(label)
    batches: asyncio.Queue[list[tuple[str, bytes]]] = asyncio.Queue()
    for i in range(0, len(messages), per_session):
        batches.put_nowait(messages[i : i + per_session])
    open_sessions = 0
    # Every worker opens its session before any sends, so the peak is the real concurrency.
    all_connected = asyncio.Event()
    connected = 0
    workers = min(concurrency, batches.qsize())

    async def session(batch: list[tuple[str, bytes]], first: bool) -> None:
        nonlocal open_sessions, connected
        client = aiosmtplib.SMTP(
            hostname="127.0.0.1", port=port, start_tls=False, tls_context=tls, timeout=timeout
        )
        t0 = time.perf_counter()
        opened = False
        try:
            await client.connect()
            opened = True
            open_sessions += 1
            result.peak_sessions = max(result.peak_sessions, open_sessions)
            await client.ehlo()
            await client.starttls(server_hostname="localhost")
            await client.ehlo()
        except (aiosmtplib.SMTPException, OSError) as exc:
            result.error("session:" + _error_kind(exc), exc)
            client.close()
            if opened:
                open_sessions -= 1
            return
        finally:
            if first:
                connected += 1
                if connected == workers:
                    all_connected.set()
        result.session_setup.append(time.perf_counter() - t0)
        if first:
            await all_connected.wait()
        try:
            for rcpt, data in batch:
                if time.monotonic() > deadline:
                    result.error("deadline")
                    continue
                t = time.perf_counter()
                try:
                    errors, _ = await client.sendmail(SENDER, [rcpt], data)
                except aiosmtplib.SMTPResponseException as exc:
                    result.error("send:" + _error_kind(exc), exc)
                    await client.rset()
                    continue
                result.latencies.append(time.perf_counter() - t)
                if errors:
                    result.error("rcpt-refused")
                else:
                    result.sent += 1
            await client.quit()
        except (aiosmtplib.SMTPException, OSError) as exc:
            result.error("session:" + _error_kind(exc), exc)
            client.close()
        finally:
            open_sessions -= 1

    async def worker() -> None:
        first = True
        while not batches.empty():
            batch = batches.get_nowait()
            await session(batch, first)
            first = False

    start = time.perf_counter()
    remaining = max(0.1, deadline - time.monotonic())
    try:
        await asyncio.wait_for(asyncio.gather(*(worker() for _ in range(workers))), remaining + 5)
    except TimeoutError:
        result.error("deadline")
    result.seconds = time.perf_counter() - start
    return result


# --- the relay subprocess ----------------------------------------------------------------


def serve_args(pki: Pki, sink_port: int, state: Path, policy_file: Path) -> list[str]:
    """`-m relay serve ...` on free loopback ports, relaying to the sink over verified TLS;
    bench/anchors.py starts its checkouts with these too."""
    return [
        "-m",
        "relay",
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--http-listen",
        "127.0.0.1:0",
        "--tls-cert",
        str(pki.cert),
        "--tls-key",
        str(pki.key),
        "--upstream",
        f"localhost:{sink_port}",
        "--upstream-ca",
        str(pki.ca),
        "--trusted-network",
        "127.0.0.1/32",
        "--state-dir",
        str(state),
        "--audit-log",
        str(state / "audit.log"),
        "--policy-file",
        str(policy_file),
    ]


async def start_relay(
    tmp: Path,
    pki: Pki,
    sink_port: int,
    concurrency: int,
    profile: Path | None,
    workers: int | None = None,
) -> tuple[asyncio.subprocess.Process, int, int, Path]:
    ready = tmp / "ready"
    state = tmp / "state"
    env = dict(os.environ)
    env.update(
        {
            "PHI_RELAY_READY_FILE": str(ready),
            # All bench clients come from 127.0.0.1: lift the per-client cap above the load.
            "PHI_RELAY_SERVER_MAX_SESSIONS_PER_CLIENT": str(concurrency + 10),
            "PHI_RELAY_SERVER_MAX_SESSIONS": str(max(200, concurrency + 10)),
            "PHI_RELAY_SERVER_HOSTNAME": "relay.bench",
        }
    )
    env.pop("PHI_RELAY_CONFIG", None)
    cmd = [sys.executable]
    if profile is not None:
        cmd += ["-m", "cProfile", "-o", str(profile)]
    cmd += serve_args(pki, sink_port, state, ROOT / "policies" / "default.toml")
    if workers is not None:
        cmd += ["--workers", str(workers)]
    log = (tmp / "relay.log").open("wb")
    proc = await asyncio.create_subprocess_exec(
        *cmd, cwd=tmp, env=env, stdout=log, stderr=asyncio.subprocess.STDOUT
    )
    log.close()
    for _ in range(300):  # 30 s: the relay loads its policies and the detector vocabulary
        if proc.returncode is not None:
            break
        if ready.exists():
            text = ready.read_text()
            if text.endswith("\n"):
                smtp, _, http = text.split()[:3]
                return proc, int(smtp), int(http), state / "audit.log"
        await asyncio.sleep(0.1)
    if proc.returncode is None:
        proc.kill()
        await proc.wait()
    tail = (tmp / "relay.log").read_text(errors="replace")[-2000:]
    raise SystemExit(f"phi-relay serve did not become ready; its log ends:\n{tail}")


async def stop_relay(proc: asyncio.subprocess.Process) -> int:
    if proc.returncode is None:
        proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), 40)
        except TimeoutError:
            proc.kill()
            await proc.wait()
    return proc.returncode if proc.returncode is not None else -1


# --- report ------------------------------------------------------------------------------


def proc_stats() -> dict[int, list[str]]:
    """pid -> the fields of /proc/PID/stat after the command name (Linux; {} elsewhere)."""
    stats: dict[int, list[str]] = {}
    with contextlib.suppress(OSError):
        for entry in os.scandir("/proc"):
            if entry.name.isdigit():
                with contextlib.suppress(OSError):
                    text = Path(f"/proc/{entry.name}/stat").read_text()
                    stats[int(entry.name)] = text.rpartition(")")[2].split()
    return stats


def process_cpu(pid: int | None = None) -> float:
    """User+system CPU seconds of this process, or of `pid` and its descendants (the
    supervisor's workers, decision workers; Linux /proc; 0.0 elsewhere)."""
    if pid is None:
        t = os.times()
        return t.user + t.system
    stats = proc_stats()
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        fields = stats.get(p)
        if fields is None:
            continue
        # Fields 14 and 15 (utime, stime) counted from 1; index 11/12 after the ")".
        total += int(fields[11]) + int(fields[12])
        todo.extend(q for q, f in stats.items() if int(f[1]) == p)
    return total / os.sysconf("SC_CLK_TCK")


_LINE = re.compile(r":\d+\)$")


async def start_py_spy(pid: int, out: Path, every_thread: bool) -> asyncio.subprocess.Process:
    exe = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    # Default: only samples holding the GIL, the event loop's CPU time, which bounds
    # throughput (without it, idle thread-pool workers blocked in queue.get show up as
    # hot). `every_thread`: every thread on a CPU with its C frames, so work done with the
    # GIL released (TLS handshakes and records in OpenSSL, SQLite, writes) shows too.
    which = ["--native"] if every_thread else ["--gil"]
    return await asyncio.create_subprocess_exec(
        exe,
        "record",
        "--pid",
        str(pid),
        "--rate",
        "250",
        *which,
        "--format",
        "raw",
        "--output",
        str(out),
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )


def hot_spots(collapsed: Path, top: int = 15) -> str:
    """Self time per function and inclusive time per relay/ function, from py-spy's raw output."""
    own: dict[str, int] = {}
    inclusive: dict[str, int] = {}
    total = 0
    for line in collapsed.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        # "func (file.py:123)" -> "func (file.py)": one entry per function, not per line.
        frames = [_LINE.sub(")", f) for f in stack.split(";")]
        total += count
        own[frames[-1]] = own.get(frames[-1], 0) + count
        for frame in set(frames):
            if "relay/" in frame:
                inclusive[frame] = inclusive.get(frame, 0) + count
    if not total:
        return "py-spy recorded no samples"
    lines = [f"relay hot spots ({total} samples); self time:"]
    for frame, n in sorted(own.items(), key=lambda kv: -kv[1])[:top]:
        lines.append(f"  {100 * n / total:5.1f}%  {frame}")
    lines.append("inclusive time in relay/ functions:")
    for frame, n in sorted(inclusive.items(), key=lambda kv: -kv[1])[:top]:
        lines.append(f"  {100 * n / total:5.1f}%  {frame}")
    return "\n".join(lines)


def upstream_counts(http_port: int, tls: ssl.SSLContext) -> dict[str, float]:
    """The relay's upstream pool counters from its /metrics (HTTPS with the relay's
    certificate; 0 for a checkout without them)."""
    import urllib.request

    url = f"https://localhost:{http_port}/metrics"
    with urllib.request.urlopen(url, timeout=10, context=tls) as r:
        text = r.read().decode()
    counts = {"opened": 0.0, "reused": 0.0, "replaced": 0.0, "waits": 0.0}
    for line in text.splitlines():
        m = re.match(r'phi_relay_upstream_connections_total\{event="(\w+)"\} (\S+)', line)
        if m and m.group(1) in counts:
            counts[m.group(1)] = float(m.group(2))
        elif line.startswith("phi_relay_upstream_pool_waits_total "):
            counts["waits"] = float(line.split()[1])
    return counts


def count_decisions(audit: Path) -> int:
    """Decision records in every worker's chain (audit.log, audit.w2.log, ...)."""
    from relay.audit.names import chains_of

    lines = (line for chain in chains_of(audit) for line in chain.read_text().splitlines())
    return sum(1 for line in lines if line and json.loads(line).get("type") == "decision")


def describe(r: Result) -> str:
    ms = [x * 1000 for x in r.latencies]
    setup = [x * 1000 for x in r.session_setup]
    errors = ", ".join(f"{k}={v}" for k, v in sorted(r.errors.items())) or "none"
    return (
        f"{r.label:<8} {r.sent:>6} msgs in {r.seconds:7.2f} s = {r.rate:8.1f} msgs/s | "
        f"latency p50 {percentile(ms, 50):7.1f} ms p99 {percentile(ms, 99):7.1f} ms | "
        f"session setup p50 {percentile(setup, 50):6.1f} ms | "
        f"peak sessions {r.peak_sessions} | errors {r.error_count} ({errors})"
    ) + "".join(f"\n         first {k}: {v}" for k, v in sorted(r.first_reply.items()))


async def main_async(args: argparse.Namespace) -> int:
    messages = make_messages(args.messages, args.body_bytes, args.seed)
    deadline_total = time.monotonic() + args.max_seconds
    with tempfile.TemporaryDirectory(prefix="phi-relay-bench-") as tmp_name:
        tmp = Path(tmp_name)
        pki = make_pki(tmp)
        sink = await Sink(pki.server_context()).start()
        client_tls = pki.client_context()
        try:
            print(
                f"phi-relay load: {args.messages} messages of ~{len(messages[0][1])} bytes, "
                f"{args.concurrency} concurrent sessions, {args.per_session} per session, "
                f"STARTTLS everywhere, loopback only",
                flush=True,
            )
            # Each phase gets half of what is left of the budget.
            half = (deadline_total - time.monotonic()) / 2
            cpu0 = process_cpu()
            direct = await run_load(
                "direct",
                sink.port,
                messages,
                concurrency=args.concurrency,
                per_session=args.per_session,
                tls=client_tls,
                deadline=time.monotonic() + half,
                timeout=args.timeout,
            )
            direct_received, direct_upstream_sessions = sink.messages, sink.sessions
            direct_cpu = process_cpu() - cpu0
            print(describe(direct), flush=True)
            sink.reset()
            proc, relay_port, http_port, audit = await start_relay(
                tmp, pki, sink.port, args.concurrency, args.profile, args.workers
            )
            spy = (
                await start_py_spy(proc.pid, args.py_spy, args.py_spy_native)
                if args.py_spy
                else None
            )
            cpu0, relay_cpu0 = process_cpu(), process_cpu(proc.pid)
            try:
                relayed = await run_load(
                    "relay",
                    relay_port,
                    messages,
                    concurrency=args.concurrency,
                    per_session=args.per_session,
                    tls=client_tls,
                    deadline=deadline_total,
                    timeout=args.timeout,
                )
                bench_cpu = process_cpu() - cpu0
                relay_cpu = process_cpu(proc.pid) - relay_cpu0
                pool = await asyncio.to_thread(upstream_counts, http_port, client_tls)
            finally:
                rc = await stop_relay(proc)
                if spy is not None:
                    await asyncio.wait_for(spy.wait(), 60)  # py-spy ends with the relay
            relay_received, relay_upstream_sessions = sink.messages, sink.sessions
            print(describe(relayed), flush=True)
        finally:
            await sink.stop()
        decisions = count_decisions(audit)
        ratio = relayed.rate / direct.rate if direct.rate else 0.0
        p50d = percentile(direct.latencies, 50)
        p50r = percentile(relayed.latencies, 50)
        print(
            f"ratio relay/direct throughput {ratio:.3f} ({1 / ratio if ratio else 0:.1f}x slower); "
            f"p50 latency {p50r / p50d if p50d else 0:.1f}x",
            flush=True,
        )
        print(
            f"sink received: direct {direct_received}/{args.messages}, "
            f"relay {relay_received}/{args.messages}; relay audit decisions {decisions}; "
            f"relay exit code {rc}",
            flush=True,
        )
        print(
            f"cpu seconds: direct run {direct_cpu:.2f} (load generator and sink, one process); "
            f"relay run: load generator and sink {bench_cpu:.2f}, relay {relay_cpu:.2f} "
            f"of {relayed.seconds:.2f} s ({os.cpu_count()} cores); relay "
            f"{1000 * relay_cpu / max(relayed.sent, 1):.2f} ms CPU per message",
            flush=True,
        )
        print(
            f"sink sessions: direct {direct_upstream_sessions}, "
            f"from the relay {relay_upstream_sessions}",
            flush=True,
        )
        print(
            "relay upstream pool (/metrics): connections "
            + ", ".join(f"{k} {v:g}" for k, v in pool.items())
            + " (each one opened resolved the upstream's name once)",
            flush=True,
        )
        if args.profile is not None:
            print(f"relay profile written to {args.profile}", flush=True)
        if args.py_spy is not None:
            print(f"relay samples written to {args.py_spy}", flush=True)
            print(hot_spots(args.py_spy), flush=True)
        ok = (
            relayed.error_count == 0
            and direct.error_count == 0
            and relay_received == args.messages
            and relayed.peak_sessions
            >= min(args.concurrency, -(-args.messages // args.per_session))
        )
        print("OK" if ok else "FAILED", flush=True)
        return 0 if ok else 1


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--messages", type=positive_int, default=2000, help="total messages (2000)")
    p.add_argument("--concurrency", type=positive_int, default=100, help="sessions at once (100)")
    p.add_argument("--per-session", type=positive_int, default=10, help="messages per session")
    p.add_argument("--body-bytes", type=positive_int, default=3000, help="body size (~3000)")
    p.add_argument("--max-seconds", type=float, default=300.0, help="time budget for both runs")
    p.add_argument("--timeout", type=float, default=60.0, help="per SMTP command, seconds")
    p.add_argument("--seed", type=int, default=20261123, help="faker seed")
    p.add_argument(
        "--py-spy-native",
        action="store_true",
        help="with --py-spy: every thread on a CPU, with C frames (TLS, SQLite), not only the "
        "GIL holder",
    )
    p.add_argument(
        "--workers",
        type=positive_int,
        help="the relay's --workers (default: its own, one per CPU); 1 to profile one process",
    )
    p.add_argument(
        "--profile", type=Path, help="run the relay under cProfile and write the stats here"
    )
    p.add_argument(
        "--py-spy",
        type=Path,
        help="sample the relay with py-spy (pip install py-spy), write collapsed stacks here "
        "and print the hot spots",
    )
    args = p.parse_args(argv)
    if args.profile is not None:
        args.profile = args.profile.resolve()
    if args.py_spy is not None:
        if shutil.which("py-spy") is None and not (Path(sys.executable).parent / "py-spy").exists():
            p.error("--py-spy needs py-spy: .venv/bin/pip install py-spy")
        args.py_spy = args.py_spy.resolve()
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    return asyncio.run(main_async(args))


if __name__ == "__main__":
    raise SystemExit(main())
