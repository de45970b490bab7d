"""`serve --workers N`: one supervisor, the listeners bound once, N worker processes on them.

Like a mail server's master process, the supervisor holds the state directory's lock
(and every worker chain's), binds the SMTP, implicit-TLS and HTTP listeners once, and
forks N workers that serve those same listening sockets, each with
its own event loop (relay.server with a `WorkerSlot`). The kernel hands each new
connection to one worker waiting in accept(); a connection queued on the socket is
never lost with a worker.

It loads the serving stack before it forks (`preload`), so the workers share those pages,
and forks before it has started any thread or event loop, so each worker starts clean.
Once every worker listens it hands over to the lean supervisor (relay.overseer, the same
pid), which restarts a worker that dies, reloads every worker on SIGHUP and drains them
all on SIGTERM/SIGINT. A worker whose supervisor is gone (killed) sees its lifeline pipe
close and drains. `worker_main` is a worker the lean supervisor restarted.
"""

from __future__ import annotations

import contextlib
import gc
import json
import os
import pickle
import signal
import socket
import ssl
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import NoReturn

import structlog

import relay
from relay import config as config_mod
from relay import eventloop, logs, malloc, startup, ticketkeys
from relay.audit.names import chain_path
from relay.certs import server_context
from relay.config import Config, HostPort
from relay.overseer import (
    HELPER_TIMEOUT,
    LEAN_BOOT,
    SIGNALS,
    Overseer,
    Slot,
    drain_times,
    fork_worker,
    memfile,
    read_memfile,
)
from relay.policy.base import ConfigError
from relay.server import LISTEN_BACKLOG, Relay, StartupError, bind_error
from relay.server import run as run_relay
from relay.sharedlimits import SharedCounters
from relay.slot import LIMITS_DB, METRICS_DIR, WorkerSlot

log = structlog.get_logger("relay.supervisor")

START_TIMEOUT = 120.0  # for the first workers to import, load the rules and listen


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


class Supervisor(Overseer):
    """Binds the listeners, loads the serving stack once, forks the first workers from it
    and, once they all listen, hands over to the lean supervisor (relay.overseer)."""

    def __init__(self, config: Config, sources: config_mod.Sources, workers: int) -> None:
        processors = structlog.get_config().get("processors", [])
        json_lines = any(isinstance(p, structlog.processors.JSONRenderer) for p in processors)
        super().__init__(workers, log_json=json_lines)
        self.running = config
        self.sources = sources
        self._lock: startup.StateLock | None = None
        self._smtp: tuple[socket.socket, ...] = ()
        self._implicit: tuple[socket.socket, ...] = ()
        self._http: tuple[socket.socket, ...] = ()
        self._tls: ssl.SSLContext | None = None

    # --- start ---------------------------------------------------------------------------

    def run(self) -> int:
        """Start every worker and supervise them until SIGTERM/SIGINT (from the handover
        on, as relay.overseer, which exits 0 once they have all drained). A worker that
        cannot start the first time is a `StartupError` carrying its own one-line reason."""
        try:
            # First: a SIGTERM from here on is a stop asked for, never a failed start
            # (nor, before the handlers, death by signal in the middle of the set-up).
            self.install_signals()
            self._prepare()
            preload()
            for n in range(1, self.workers + 1):
                self.slots[n] = Slot(n)
            # Worker 1 alone first: it makes the keys of a new state directory and opens
            # (or migrates) the stores exactly as a single relay does, and if it refuses
            # to start nothing else has touched the state. Then the others, side by side.
            if not self._stop_asked():
                self.spawn(self.slots[1])
            self._wait_for_start()
            for n in range(2, self.workers + 1):
                if self._stop_asked():
                    break
                if n == self.http_worker and self._http:
                    preload_http()  # for that worker alone (the others are forked)
                self.spawn(self.slots[n])
            self._wait_for_start()
            if not self.draining:
                self._announce()
                self._hand_over()
            # Where the handover could not exec, or a stop came during the start: the
            # workers that did start drain, and the supervisor exits 0 once they have.
            self.supervise()
        finally:
            self._cleanup()
        return 0

    def _prepare(self) -> None:
        cfg = self.running
        startup.private_dir(cfg.state_dir)
        base = cfg.audit.file
        chains = [chain_path(base, n) for n in range(2, self.workers + 1)] if base else []
        self._lock = startup.lock_state(cfg.state_dir, base, chains=chains)
        # Metrics files and shared counters live outside the state directory, for this
        # run only: a refused start leaves the state as it was.
        run_dir = Path(tempfile.mkdtemp(prefix="phi-relay-run-"))
        self.run_dir = str(run_dir)
        startup.private_dir(run_dir / METRICS_DIR)
        SharedCounters.create(run_dir / LIMITS_DB)
        s = cfg.server
        reuse = self.reuse_port = s.reuse_port
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
        self.smtp = [sock.fileno() for sock in self._smtp]
        self.implicit = [sock.fileno() for sock in self._implicit]
        self.http = [sock.fileno() for sock in self._http]
        # One server TLS context, made before the fork: each worker inherits its session
        # ticket keys, so a client's cached session resumes on any worker (and a worker
        # restarted later is handed the same keys). If it cannot be made, worker 1 says
        # why as a single relay would.
        with contextlib.suppress(OSError, ssl.SSLError):
            self._tls = server_context(s.tls_cert, s.tls_key)
            self.ticket_keys = ticketkeys.get(self._tls) or b""
        self.lifeline = os.pipe()
        self.config = pickle.dumps((cfg, self.sources))
        times = drain_times(cfg)
        self.grace, self.shutdown_timeout = times["grace"], times["shutdown_timeout"]

    def spawn(self, w: Slot) -> None:
        """A worker forked from this process: it shares everything `preload` loaded."""
        read_end, write_end = os.pipe()
        slot = WorkerSlot(
            worker=w.worker,
            workers=self.workers,
            smtp=self._smtp,
            implicit=self._implicit,
            http=self._http if w.worker == self.http_worker else (),
            run_dir=Path(self.run_dir),
            ready_fd=write_end,
            lifeline_fd=self.lifeline[0],
            previous_exit=w.previous_exit,
            restarts=w.restarts,
            tls_context=self._tls,
        )
        sys.stdout.flush()
        sys.stderr.flush()
        pid = fork_worker()
        if pid == 0:
            os.close(read_end)
            self._child(slot)
        os.close(write_end)
        self._track(w, pid, read_end)

    def _child(self, slot: WorkerSlot) -> NoReturn:
        signal.set_wakeup_fd(-1)
        for fd in (self.lifeline[1], *self.wake):
            os.close(fd)
        for other in self.slots.values():
            if other.status_fd >= 0:
                os.close(other.status_fd)
        serve_worker(self.running, self.sources, slot, reuse_port=self.reuse_port)

    def _stop_asked(self) -> bool:
        """SIGTERM or SIGINT came (handled or still to be), so no worker is started."""
        return self.draining or any(s in (signal.SIGTERM, signal.SIGINT) for s in self.signals)

    def _wait_for_start(self) -> None:
        """Until every worker started so far listens, or a stop was asked for (then
        `draining`: the ones started are told to drain, and ending is no failure)."""
        deadline = time.monotonic() + START_TIMEOUT
        if self.signals:
            self.step(timeout=0, starting=True)  # a stop noted before any worker started
        while not self.draining and not all(w.ready for w in self.slots.values() if w.started):
            failed = next((w for w in self.slots.values() if w.started and not w.pid), None)
            if failed is not None:
                self._stop_all()
                when = "during the start" if failed.ready else "before it was listening"
                raise StartupError(
                    failed.error
                    or f"worker {failed.worker} ended ({failed.previous_exit}) {when}; "
                    "see its log lines above"
                )
            if time.monotonic() > deadline:
                self._stop_all()
                raise StartupError(f"the workers did not start within {START_TIMEOUT:g} s")
            self.step(timeout=1.0, starting=True)

    def _announce(self) -> None:
        ports = [
            socks[0].getsockname()[1] if socks else 0
            for socks in (self._smtp, self._implicit, self._http)
        ]
        log.info(
            "supervisor running",
            workers=self.workers,
            pids=[w.pid for w in self.slots.values()],
            smtp_port=ports[0],
        )
        ready_file = os.environ.get("PHI_RELAY_READY_FILE")
        if ready_file:
            Path(ready_file).write_text(" ".join(map(str, ports)) + "\n")

    def _hand_over(self) -> None:
        """Become the lean supervisor: exec relay.overseer with this one's state.

        The signals are blocked across the exec (a SIGTERM in between would otherwise
        end the supervisor with its default action); the lean one unblocks them once its
        handlers are in place, and gets any noted here and not yet handled."""
        # A dead worker's release must be done before its successor starts (the lean one
        # restarts it); the job child answers here, not there.
        deadline = time.monotonic() + HELPER_TIMEOUT
        while self.helpers and time.monotonic() < deadline:
            self.step(timeout=0.2, starting=True)
        if self.draining:
            return  # a SIGTERM handled in that wait: this process drains the workers
        signal.pthread_sigmask(signal.SIG_BLOCK, SIGNALS)
        self._lock_fds()
        state = memfile("phi-relay-supervisor", json.dumps(self.state()).encode())
        for fd in (state, *self.fds()):
            os.set_inheritable(fd, True)
        here = str(Path(relay.__file__).resolve().parent.parent)
        # -S: no site (its .pth hooks cost a megabyte); our package and the workers'
        # path are given instead.
        argv = [sys.executable, "-S", "-c", LEAN_BOOT, str(state), here, *self.path]
        sys.stdout.flush()
        sys.stderr.flush()
        try:
            os.execv(sys.executable, argv)  # noqa: S606 - our interpreter, our code
        except OSError as exc:
            log.warning("cannot hand over to the lean supervisor", error=str(exc))
            os.close(state)
            for fd in self.fds():
                os.set_inheritable(fd, False)
            signal.pthread_sigmask(signal.SIG_UNBLOCK, SIGNALS)

    def _lock_fds(self) -> None:
        assert self._lock is not None
        self.locks = list(self._lock._fds)

    def _stop_all(self) -> None:
        """Start-up failed: end the workers that did start, and wait for them."""
        self.draining = True
        for w in self.slots.values():
            if w.pid:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(w.pid, signal.SIGTERM)
        deadline = time.monotonic() + 30
        while any(w.pid for w in self.slots.values()) and time.monotonic() < deadline:
            self.step(timeout=0.2, starting=True)
        for w in self.slots.values():
            if w.pid:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(w.pid, signal.SIGKILL)
                with contextlib.suppress(ChildProcessError):
                    os.waitpid(w.pid, 0)

    def _cleanup(self) -> None:
        # The sockets' descriptors are closed through their objects here; those a drain
        # closed already (by number, in Overseer.drain) are only let go of.
        still = {*self.smtp, *self.implicit, *self.http}
        for sock in (*self._smtp, *self._implicit, *self._http):
            if sock.fileno() in still:
                sock.close()
            else:
                sock.detach()
        self.smtp, self.implicit, self.http, self.locks = [], [], [], []
        super().cleanup()
        if self._lock is not None:
            self._lock.close()


def serve_worker(
    config: Config, sources: config_mod.Sources, slot: WorkerSlot, *, reuse_port: bool
) -> NoReturn:
    """A worker process: a relay on the inherited sockets; never returns."""
    code = 70
    try:
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGCHLD):
            signal.signal(sig, signal.SIG_DFL)
        # Until the relay handles SIGHUP, a reload must not end a starting worker.
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, SIGNALS)
        structlog.contextvars.bind_contextvars(worker=slot.worker)
        if reuse_port:
            slot = replace(
                slot,
                smtp=rebind(slot.smtp),
                implicit=rebind(slot.implicit),
                http=rebind(slot.http),
            )
        relay_ = Relay(config, sources=sources, slot=slot)
        eventloop.run(run_relay(relay_), config.server.event_loop)
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


def worker_main() -> NoReturn:
    """A worker the lean supervisor restarted (`WORKER_BOOT`): a fresh interpreter given
    its slot, the listening sockets, the running configuration and the ticket keys."""
    spec = json.loads(read_memfile(int(sys.argv[1])))
    config, sources = pickle.loads(bytes.fromhex(spec["config"]))  # noqa: S301 - our parent's
    logs.configure(json=spec["log_json"])
    tls: ssl.SSLContext | None = None
    with contextlib.suppress(OSError, ssl.SSLError):
        tls = server_context(config.server.tls_cert, config.server.tls_key)
        keys = bytes.fromhex(spec["ticket_keys"])
        if keys and not ticketkeys.put(tls, keys):
            log.warning("cannot take the other workers' TLS ticket keys; issuing its own")
    slot = WorkerSlot(
        worker=spec["worker"],
        workers=spec["workers"],
        smtp=tuple(socket.socket(fileno=fd) for fd in spec["smtp"]),
        implicit=tuple(socket.socket(fileno=fd) for fd in spec["implicit"]),
        http=tuple(socket.socket(fileno=fd) for fd in spec["http"]),
        run_dir=Path(spec["run_dir"]),
        ready_fd=spec["ready_fd"],
        lifeline_fd=spec["lifeline_fd"],
        previous_exit=spec["previous_exit"],
        restarts=spec["restarts"],
        tls_context=tls,
    )
    for fd in (slot.ready_fd, slot.lifeline_fd):
        os.set_inheritable(fd, False)
    for sock in (*slot.smtp, *slot.implicit, *slot.http):
        sock.set_inheritable(False)
    serve_worker(config, sources, slot, reuse_port=spec["reuse_port"])


def preload() -> None:
    """Load here, once, what every worker would load after the fork, then freeze it.

    Forked workers share the supervisor's memory page by page until one writes to a page.
    The PHI detector's vocabularies (~7 MB), its scorer's weights (4.3 MB, one table per
    process that every detector reads) and the modules a worker imports as it starts
    were loaded by each worker on its own: ~25 MB a worker. Not the HTTP side (aiohttp):
    one worker serves it (`preload_http`).
    `gc.freeze()` moves everything made so far out of the collector's reach, so a
    worker's collections do not write to (and so copy) the pages it shares; `trim()`
    hands back the free heap pages, which a worker would otherwise copy to allocate in.
    """
    import relay.consent.sqlite  # noqa: F401
    from relay.phi import normalize
    from relay.phi.detector import vocabulary
    from relay.phi.scorer import default_scorer

    vocabulary()
    default_scorer()
    normalize.warm()  # the canonicaliser's names and common words (~6 MB)
    gc.collect()
    gc.freeze()
    malloc.trim()


def preload_http() -> None:
    """The HTTP side (aiohttp, ~9 MB), loaded before forking the one worker that serves
    it (`Overseer.http_worker`): once this process hands over, those pages are that
    worker's alone, with none of the copies an import after the fork makes."""
    import relay.httpguard
    import relay.web  # noqa: F401

    gc.collect()
    gc.freeze()
    malloc.trim()


def _tell(fd: int, message: str) -> None:
    line = "error " + " ".join(message.split()) + "\n"
    with contextlib.suppress(OSError):
        os.write(fd, line.encode("utf-8", "replace"))
