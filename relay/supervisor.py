"""`serve --workers N`: one supervisor, the listeners bound once, N worker processes on them.

Like a mail server's master process, the supervisor holds the state directory's lock
(and every worker chain's), binds the SMTP, implicit-TLS and HTTP listeners once, and
forks N workers that serve those same listening sockets, each with
its own event loop (relay.server with a `WorkerSlot`). The kernel hands each new
connection to one worker waiting in accept(); a connection queued on the socket is
never lost with a worker. The supervisor:

- restarts a worker that dies, after a backoff that doubles while it keeps dying
  (logged here; the new worker writes a `worker-restart` audit event in its chain);
- on SIGHUP re-reads the configuration (the one later workers start with) and has
  every worker reload; a worker refuses a weakening reload itself, as one relay does;
- on SIGTERM or SIGINT has every worker drain (a DATA under way finishes) and exits
  once they all have.

It forks before it has started any thread or event loop, so each worker starts clean.
A worker whose supervisor is gone (killed) sees its lifeline pipe close and drains.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import selectors
import shutil
import signal
import socket
import sqlite3
import ssl
import sys
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import NoReturn

import structlog

from relay import config as config_mod
from relay import malloc, startup
from relay.audit.names import chain_path
from relay.certs import server_context
from relay.config import Config, HostPort
from relay.metrics import worker_gone
from relay.policy.base import ConfigError
from relay.server import (
    LISTEN_BACKLOG,
    Relay,
    StartupError,
    bind_error,
    reload_refusal,
)
from relay.server import run as run_relay
from relay.sharedlimits import SharedCounters
from relay.slot import LIMITS_DB, METRICS_DIR, READY, WorkerSlot

log = structlog.get_logger("relay.supervisor")

FIRST_BACKOFF = 0.25  # seconds before the first restart of a worker that died
MAX_BACKOFF = 30.0
STABLE_AFTER = 30.0  # a worker that ran this long starts its backoff afresh
START_TIMEOUT = 120.0  # for the first workers to import, load the rules and listen


def exit_text(status: int) -> str:
    """How a child ended, for the log and the audit: `exit 3` or `signal SIGKILL`."""
    if os.WIFSIGNALED(status):
        number = os.WTERMSIG(status)
        try:
            return f"signal {signal.Signals(number).name}"
        except ValueError:
            return f"signal {number}"
    return f"exit {os.waitstatus_to_exitcode(status)}"


def bind(
    where: HostPort, key: str, flag: str, *, reuse_port: bool = False
) -> tuple[socket.socket, ...]:
    """Listening sockets for every address `where.host` names, as asyncio would bind them.

    With `reuse_port` the sockets are bound with SO_REUSEPORT but do not listen: they
    only hold the port (a port 0 becomes a real one) for the workers' own sockets
    (`rebind`), among which the kernel spreads new connections.
    """
    try:
        infos = socket.getaddrinfo(
            where.host or None, where.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
    except socket.gaierror as exc:
        raise StartupError(
            f"cannot listen on {where} ({key}): {exc.strerror}; choose another {flag}"
        ) from exc
    socks: list[socket.socket] = []
    seen: set[tuple[int, object]] = set()
    try:
        for family, kind, proto, _, address in infos:
            if (family, address) in seen:
                continue
            seen.add((family, address))
            sock = socket.socket(family, kind, proto)
            socks.append(sock)
            _options(sock, reuse_port=reuse_port)
            sock.bind(address)
            if not reuse_port:
                sock.listen(LISTEN_BACKLOG)
            sock.setblocking(False)
    except OSError as exc:
        for sock in socks:
            sock.close()
        raise bind_error(exc, where, key, flag) from exc
    return tuple(socks)


def _options(sock: socket.socket, *, reuse_port: bool) -> None:
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    if sock.family == socket.AF_INET6:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)


def rebind(held: tuple[socket.socket, ...]) -> tuple[socket.socket, ...]:
    """A worker's own listening sockets on the ports `held` (see `bind`) keeps."""
    out = []
    for placeholder in held:
        sock = socket.socket(placeholder.family, placeholder.type, placeholder.proto)
        _options(sock, reuse_port=True)
        sock.bind(placeholder.getsockname())
        sock.listen(LISTEN_BACKLOG)
        sock.setblocking(False)
        out.append(sock)
    return tuple(out)


@dataclass
class _Worker:
    worker: int
    pid: int = 0
    ready_fd: int = -1  # the supervisor's end of this worker's status pipe
    started: float = 0.0
    ready: bool = False
    generation: int = 0  # of the configuration it started with
    restarts: int = 0
    quick_deaths: int = 0
    restart_at: float | None = None
    previous_exit: str = ""
    error: str = ""
    buffer: bytes = b""


@dataclass
class Supervisor:
    config: Config
    sources: config_mod.Sources
    workers: int
    _slots: dict[int, _Worker] = field(default_factory=dict)
    _by_pid: dict[int, _Worker] = field(default_factory=dict)
    _signals: list[int] = field(default_factory=list)
    _generation: int = 0
    _draining: bool = False
    _hup_pending: bool = False
    _drain_deadline: float = 0.0
    _lock: startup.StateLock | None = None
    _smtp: tuple[socket.socket, ...] = ()
    _implicit: tuple[socket.socket, ...] = ()
    _http: tuple[socket.socket, ...] = ()
    _run_dir: Path | None = None
    _lifeline: tuple[int, int] = (-1, -1)
    _wake: tuple[int, int] = (-1, -1)
    _selector: selectors.BaseSelector | None = None
    _tls: ssl.SSLContext | None = None

    @property
    def run_dir(self) -> Path:
        assert self._run_dir is not None
        return self._run_dir

    # --- start ---------------------------------------------------------------------------

    def run(self) -> int:
        """Start every worker, supervise them until SIGTERM/SIGINT, and return 0 once
        they have all drained. A worker that cannot start the first time is a
        `StartupError` carrying that worker's own one-line reason."""
        try:
            self._prepare()
            preload()
            self._install_signals()
            for n in range(1, self.workers + 1):
                self._slots[n] = _Worker(n)
            # Worker 1 alone first: it makes the keys of a new state directory and opens
            # (or migrates) the stores exactly as a single relay does, and if it refuses
            # to start nothing else has touched the state. Then the others, side by side.
            self._spawn(self._slots[1])
            self._wait_for_start()
            for n in range(2, self.workers + 1):
                self._spawn(self._slots[n])
            self._wait_for_start()
            self._announce()
            self._supervise()
        finally:
            self._cleanup()
        return 0

    def _prepare(self) -> None:
        cfg = self.config
        startup.private_dir(cfg.state_dir)
        base = cfg.audit.file
        chains = [chain_path(base, n) for n in range(2, self.workers + 1)] if base else []
        self._lock = startup.lock_state(cfg.state_dir, base, chains=chains)
        # Metrics files and shared counters live outside the state directory, for this
        # run only: a refused start leaves the state as it was.
        self._run_dir = Path(tempfile.mkdtemp(prefix="phi-relay-run-"))
        startup.private_dir(self._run_dir / METRICS_DIR)
        SharedCounters.create(self._run_dir / LIMITS_DB)
        s = cfg.server
        reuse = s.reuse_port
        self._smtp = bind(s.listen, "server.listen", "--listen", reuse_port=reuse)
        if s.implicit_tls_listen is not None:
            self._implicit = bind(
                s.implicit_tls_listen,
                "server.implicit_tls_listen",
                "--implicit-tls-listen",
                reuse_port=reuse,
            )
        if cfg.http.listen is not None:
            self._http = bind(cfg.http.listen, "http.listen", "--http-listen", reuse_port=reuse)
        # One server TLS context, made before the fork: each worker inherits its session
        # ticket keys, so a client's cached session resumes on any worker (and on one
        # restarted later). If it cannot be made, worker 1 says why as a single relay would.
        with contextlib.suppress(OSError, ssl.SSLError):
            self._tls = server_context(s.tls_cert, s.tls_key)
        self._lifeline = os.pipe()
        self._wake = os.pipe()
        os.set_blocking(self._wake[0], False)
        os.set_blocking(self._wake[1], False)
        self._selector = selectors.DefaultSelector()
        self._selector.register(self._wake[0], selectors.EVENT_READ)

    def _install_signals(self) -> None:
        def note(signum: int, _frame: object) -> None:
            self._signals.append(signum)

        ours = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD)
        for sig in ours:
            signal.signal(sig, note)
        signal.set_wakeup_fd(self._wake[1], warn_on_full_buffer=False)
        # A mask inherited from whoever started us must not leave the supervisor (or the
        # workers it forks) deaf to SIGTERM or SIGHUP.
        signal.pthread_sigmask(signal.SIG_UNBLOCK, ours)

    def _spawn(self, w: _Worker) -> None:
        read_end, write_end = os.pipe()
        slot = WorkerSlot(
            worker=w.worker,
            workers=self.workers,
            smtp=self._smtp,
            implicit=self._implicit,
            http=self._http,
            run_dir=self.run_dir,
            ready_fd=write_end,
            lifeline_fd=self._lifeline[0],
            previous_exit=w.previous_exit,
            restarts=w.restarts,
            tls_context=self._tls,
        )
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            os.close(read_end)
            self._child(slot)
        os.close(write_end)
        os.set_blocking(read_end, False)
        w.pid, w.ready_fd, w.started, w.ready = pid, read_end, time.monotonic(), False
        w.generation, w.restart_at, w.error, w.buffer = self._generation, None, "", b""
        self._by_pid[pid] = w
        assert self._selector is not None
        self._selector.register(read_end, selectors.EVENT_READ, w)

    def _child(self, slot: WorkerSlot) -> NoReturn:
        """The worker process: a relay on the inherited sockets; never returns."""
        code = 70
        try:
            signal.set_wakeup_fd(-1)
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGCHLD):
                signal.signal(sig, signal.SIG_DFL)
            # Until the relay handles SIGHUP, a reload must not end a starting worker.
            signal.signal(signal.SIGHUP, signal.SIG_IGN)
            for fd in (self._lifeline[1], *self._wake):
                os.close(fd)
            for other in self._slots.values():
                if other.ready_fd >= 0:
                    os.close(other.ready_fd)
            self._selector = None
            structlog.contextvars.bind_contextvars(worker=slot.worker)
            if self.config.server.reuse_port:
                slot = replace(
                    slot,
                    smtp=rebind(slot.smtp),
                    implicit=rebind(slot.implicit),
                    http=rebind(slot.http),
                )
            relay = Relay(self.config, sources=self.sources, slot=slot)
            asyncio.run(run_relay(relay))
            code = 0
        except (StartupError, ConfigError) as exc:
            _tell(slot.ready_fd, str(exc))
            code = 2
        except OSError as exc:
            _tell(slot.ready_fd, f"cannot start: {exc.strerror or exc}")
            code = 2
        except BaseException as exc:  # a worker's last word, then it is gone
            _tell(slot.ready_fd, f"cannot start: {type(exc).__name__}: {exc}")
        finally:
            with contextlib.suppress(Exception):
                sys.stdout.flush()
                sys.stderr.flush()
            os._exit(code)

    def _wait_for_start(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while not all(w.ready for w in self._slots.values() if w.started):
            failed = next((w for w in self._slots.values() if w.started and not w.pid), None)
            if failed is not None:
                self._stop_all()
                raise StartupError(
                    failed.error
                    or f"worker {failed.worker} ended ({failed.previous_exit}) "
                    "before it was listening; see its log lines above"
                )
            if time.monotonic() > deadline:
                self._stop_all()
                raise StartupError(f"the workers did not start within {START_TIMEOUT:g} s")
            self._step(timeout=1.0, starting=True)

    def _announce(self) -> None:
        ports = [
            socks[0].getsockname()[1] if socks else 0
            for socks in (self._smtp, self._implicit, self._http)
        ]
        log.info(
            "supervisor running",
            workers=self.workers,
            pids=[w.pid for w in self._slots.values()],
            smtp_port=ports[0],
        )
        ready_file = os.environ.get("PHI_RELAY_READY_FILE")
        if ready_file:
            Path(ready_file).write_text(" ".join(map(str, ports)) + "\n")

    # --- supervise -------------------------------------------------------------------------

    def _supervise(self) -> None:
        if self._hup_pending:
            self._hup_pending = False
            self._reload()
        while True:
            alive = [w for w in self._slots.values() if w.pid]
            if self._draining and not alive:
                log.info("all workers stopped; supervisor exits")
                return
            now = time.monotonic()
            timeout = 1.0
            for w in self._slots.values():
                if w.restart_at is not None:
                    if w.restart_at <= now and not self._draining:
                        self._restart(w)
                    else:
                        timeout = min(timeout, max(w.restart_at - now, 0.0))
            if self._draining and now > self._drain_deadline:
                for w in alive:
                    log.error("worker did not drain in time; killing it", worker=w.worker)
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(w.pid, signal.SIGKILL)
                self._drain_deadline = now + 5.0
            self._step(timeout=timeout, starting=False)

    def _step(self, *, timeout: float, starting: bool) -> None:
        assert self._selector is not None
        for key, _ in self._selector.select(timeout):
            if key.data is None:
                with contextlib.suppress(BlockingIOError):
                    while os.read(self._wake[0], 512):
                        pass
            else:
                self._read_status(key.data)
        signals, self._signals = self._signals, []
        for signum in signals:
            if signum == signal.SIGCHLD:
                self._reap(starting=starting)
            elif signum == signal.SIGHUP:
                if starting:
                    self._hup_pending = True  # reloaded once every worker listens
                else:
                    self._reload()
            elif signum in (signal.SIGTERM, signal.SIGINT):
                self._drain()
        if signal.SIGCHLD not in signals:
            self._reap(starting=starting)  # a SIGCHLD may have come in before the handler

    def _read_status(self, w: _Worker) -> None:
        try:
            data = os.read(w.ready_fd, 4096)
        except BlockingIOError:
            return
        if not data:
            self._close_status(w)
            return
        w.buffer += data
        while b"\n" in w.buffer:
            line, w.buffer = w.buffer.split(b"\n", 1)
            if line + b"\n" == READY:
                self._ready(w)
            elif line.startswith(b"error "):
                w.error = line[6:].decode("utf-8", "replace")

    def _ready(self, w: _Worker) -> None:
        w.ready = True
        if w.restarts:
            log.info("worker restarted", worker=w.worker, pid=w.pid, restarts=w.restarts)
        if w.generation != self._generation:
            # Started before the latest SIGHUP, with the configuration before it.
            with contextlib.suppress(ProcessLookupError):
                os.kill(w.pid, signal.SIGHUP)

    def _close_status(self, w: _Worker) -> None:
        if w.ready_fd >= 0:
            assert self._selector is not None
            self._selector.unregister(w.ready_fd)
            os.close(w.ready_fd)
            w.ready_fd = -1

    def _reap(self, *, starting: bool) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            w = self._by_pid.pop(pid, None)
            if w is None:
                continue
            if w.ready_fd >= 0:
                self._read_status(w)  # its last words, if any
                self._close_status(w)
            self._gone(w, pid, exit_text(status), starting=starting)

    def _gone(self, w: _Worker, pid: int, how: str, *, starting: bool) -> None:
        worker_gone(self.run_dir / METRICS_DIR, pid)
        try:
            SharedCounters.forget_worker(self.run_dir / LIMITS_DB, w.worker)
        except sqlite3.Error as exc:
            # Its slots stay taken: new sessions are refused sooner, never let past.
            log.error("cannot release a dead worker's sessions", worker=w.worker, error=str(exc))
        lived = time.monotonic() - w.started
        w.pid, w.previous_exit = 0, how
        if self._draining:
            log.info("worker stopped", worker=w.worker, pid=pid, exit=how)
            return
        if starting and not w.ready:
            return  # _wait_for_start reports it
        w.quick_deaths = 0 if lived >= STABLE_AFTER else w.quick_deaths + 1
        delay = min(FIRST_BACKOFF * 2 ** (w.quick_deaths - 1), MAX_BACKOFF)
        if w.quick_deaths == 0:
            delay = FIRST_BACKOFF
        w.restart_at = time.monotonic() + delay
        log.warning(
            "worker died; restarting it",
            worker=w.worker,
            pid=pid,
            exit=how,
            error=w.error or None,
            restart_in_seconds=round(delay, 2),
        )

    def _restart(self, w: _Worker) -> None:
        w.restarts += 1
        self._spawn(w)

    def _reload(self) -> None:
        """Re-read the configuration for workers started from now on, and have every
        worker reload (each refuses, logs and audits a reload it must not take)."""
        self._generation += 1
        try:
            cfg = self.sources.load()
        except (ConfigError, OSError, ValueError) as exc:
            log.error("reload failed; keeping the running configuration", error=str(exc))
        else:
            if reload_refusal(self.config, cfg) is None:
                if cfg.worker_count != self.workers:
                    log.warning(
                        "the number of workers changes only on restart",
                        running=self.workers,
                        configured=cfg.worker_count,
                    )
                self.config = cfg
        for w in self._slots.values():
            if w.pid and w.ready:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(w.pid, signal.SIGHUP)

    def _drain(self) -> None:
        if self._draining:
            return
        self._draining = True
        s = self.config.server
        # As long as the slowest worker may take: its sessions, then its deliveries.
        grace = s.shutdown_timeout + s.policy_timeout + 4 * self.config.upstream.timeout + 60
        self._drain_deadline = time.monotonic() + grace
        log.info("draining every worker", timeout=s.shutdown_timeout)
        # No worker will accept again: while the supervisor held its copy of a shared
        # listening socket, new clients would wait in its queue until the drain ended.
        for sock in (*self._smtp, *self._implicit):
            sock.close()
        for w in self._slots.values():
            w.restart_at = None
            if w.pid:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(w.pid, signal.SIGTERM)

    def _stop_all(self) -> None:
        """Start-up failed: end the workers that did start, and wait for them."""
        self._draining = True
        for w in self._slots.values():
            if w.pid:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(w.pid, signal.SIGTERM)
        deadline = time.monotonic() + 30
        while any(w.pid for w in self._slots.values()) and time.monotonic() < deadline:
            self._step(timeout=0.2, starting=True)
        for w in self._slots.values():
            if w.pid:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(w.pid, signal.SIGKILL)
                with contextlib.suppress(ChildProcessError):
                    os.waitpid(w.pid, 0)

    def _cleanup(self) -> None:
        with contextlib.suppress(ValueError):
            signal.set_wakeup_fd(-1)
        for sock in (*self._smtp, *self._implicit, *self._http):
            sock.close()
        for w in self._slots.values():
            self._close_status(w)
        for fd in (*self._lifeline, *self._wake):
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)
        if self._selector is not None:
            self._selector.close()
        if self._run_dir is not None:
            shutil.rmtree(self._run_dir, ignore_errors=True)
        if self._lock is not None:
            self._lock.close()
        # A reload asked for while exiting is moot; it must not end the exit with SIGHUP
        # (at interpreter shutdown Python gives signals their default action back).
        signal.signal(signal.SIGHUP, signal.SIG_IGN)


def preload() -> None:
    """Load here, once, what every worker would load after the fork, then freeze it.

    Forked workers share the supervisor's memory page by page until one writes to a page.
    The HTTP side (aiohttp), the PHI detector's vocabularies (~7 MB), its scorer's
    weights (4.3 MB, one table per process that every detector reads) and the modules a
    worker imports as it starts were loaded by each worker on its own: ~25 MB a worker.
    `gc.freeze()` moves everything made so far out of the collector's reach, so a
    worker's collections do not write to (and so copy) the pages it shares; `trim()`
    hands back the free heap pages, which a worker would otherwise copy to allocate in.
    """
    import relay.consent.sqlite
    import relay.httpguard
    import relay.web  # noqa: F401
    from relay.phi.detector import vocabulary
    from relay.phi.scorer import default_scorer

    vocabulary()
    default_scorer()
    gc.collect()
    gc.freeze()
    malloc.trim()


def _tell(fd: int, message: str) -> None:
    line = "error " + " ".join(message.split()) + "\n"
    with contextlib.suppress(OSError):
        os.write(fd, line.encode("utf-8", "replace"))
