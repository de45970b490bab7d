"""The supervisor once every worker listens: a lean process that restarts, reloads and drains.

relay.supervisor binds the listeners, loads the serving stack once and forks the first
workers from it, so they share those pages; then it replaces itself with this module
(`os.execv`: the same pid, so the workers stay its children, and the listening sockets,
pipes and lock files stay open). The preloaded pages stay shared by the workers, but the
supervisor no longer maps them: it imports os, signal, selectors and json only (~11 MB
RSS instead of ~75; bench/README.md, "The lean supervisor"). It:

- restarts a worker that dies, after a backoff that doubles while it keeps dying; the
  new worker is a fresh interpreter (relay.supervisor.worker_main) handed the listening
  sockets, the running configuration and the TLS session-ticket keys, so it serves as
  its predecessor did and resumes its clients' sessions;
- on SIGHUP has every worker reload, and re-reads the configuration that workers started
  later get (a reload the workers refuse is kept out of it);
- on SIGTERM or SIGINT has every worker drain and exits once they all have.

What needs the relay's own code (reading and judging a reloaded configuration, releasing
a dead worker's sessions and metrics) runs in a child forked for that job, so none of it
stays mapped here. Nothing of ours is imported at module level: keep it that way
(tests/unit/test_overseer.py).
"""

from __future__ import annotations

import contextlib
import json
import os
import selectors
import signal
import sys
import time
from collections.abc import Callable
from typing import Any

FIRST_BACKOFF = 0.25  # seconds before the first restart of a worker that died
MAX_BACKOFF = 30.0
STABLE_AFTER = 30.0  # a worker that ran this long starts its backoff afresh
HELPER_TIMEOUT = 60.0  # for a job child (a reload's check, a dead worker's release)
READY = b"ready\n"  # relay.slot.READY (not imported: it would load ssl and dataclasses here)
SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD)
# `python -S -c LEAN_BOOT FD SYS.PATH...`: the state handed over is in the file FD.
LEAN_BOOT = "import sys; sys.path[:] = sys.argv[2:]; from relay.overseer import main; main()"
# `python -c WORKER_BOOT FD SYS.PATH...`: a restarted worker's slot is in the file FD.
WORKER_BOOT = (
    "import sys; sys.path[:] = sys.argv[2:]; from relay.supervisor import worker_main; "
    "worker_main()"
)


def exit_text(status: int) -> str:
    """How a child ended, for the log and the audit: `exit 3` or `signal SIGKILL`."""
    if os.WIFSIGNALED(status):
        number = os.WTERMSIG(status)
        try:
            return f"signal {signal.Signals(number).name}"
        except ValueError:
            return f"signal {number}"
    return f"exit {os.waitstatus_to_exitcode(status)}"


class Log:
    """The service log's two line formats (relay.logs: structlog's JSON, or its console
    renderer), for the few lines written here without loading structlog (~10 MB)."""

    def __init__(self, json_lines: bool) -> None:
        self.json_lines = json_lines

    def __call__(self, level: str, event: str, **fields: object) -> None:
        now = time.time()
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now))
        stamp += f".{int(now % 1 * 1_000_000):06d}Z"
        if self.json_lines:
            line = json.dumps({**fields, "event": event, "level": level, "timestamp": stamp})
        else:
            pairs = " ".join(f"{k}={v!r}" for k, v in sorted(fields.items()))
            line = f"{stamp} [{level:<9}] {event:<30} {pairs}".rstrip()
        with contextlib.suppress(OSError):
            os.write(2, (line + "\n").encode("utf-8", "replace"))


class Slot:
    """One worker's place: the process in it now and how the ones before it ended."""

    __slots__ = (
        "buffer",
        "error",
        "generation",
        "pid",
        "previous_exit",
        "quick_deaths",
        "ready",
        "releasing",
        "restart_at",
        "restarts",
        "started",
        "status_fd",
        "worker",
    )

    def __init__(self, worker: int) -> None:
        self.worker = worker
        self.pid = 0
        self.status_fd = -1  # the supervisor's end of this worker's status pipe
        self.started = 0.0
        self.ready = False
        self.generation = 0  # of the configuration it started with
        self.restarts = 0
        self.quick_deaths = 0
        self.restart_at: float | None = None
        self.previous_exit = ""
        self.error = ""
        self.buffer = b""
        self.releasing = 0  # pid of the child releasing the dead one's sessions

    def state(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.__slots__ if name != "buffer"}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> Slot:
        slot = cls(int(state["worker"]))
        for name, value in state.items():
            setattr(slot, name, value)
        return slot


class Helper:
    """A child forked for one job; its answer is one JSON object written to a pipe."""

    __slots__ = ("buffer", "deadline", "done", "fd", "pid")

    def __init__(self, pid: int, fd: int, done: Callable[[dict[str, Any]], None]) -> None:
        self.pid, self.fd, self.buffer, self.done = pid, fd, b"", done
        self.deadline = time.monotonic() + HELPER_TIMEOUT


class Overseer:
    """The supervising loop; relay.supervisor runs it until the handover, then main() here."""

    def __init__(self, workers: int, *, log_json: bool) -> None:
        self.workers = workers
        self.log = Log(log_json)
        self.slots: dict[int, Slot] = {}
        self.by_pid: dict[int, Slot] = {}
        self.signals: list[int] = []
        self.generation = 0  # SIGHUPs so far
        self.config_generation = 0  # the SIGHUP whose configuration `config` holds
        self.draining = False
        self.hup_pending = False
        self.drain_deadline = 0.0
        # What a worker started from here on is handed (relay.supervisor.worker_main):
        self.config = b""  # the running configuration and its sources, pickled
        self.grace = 60.0  # seconds the slowest worker may take to drain
        self.shutdown_timeout = 30.0
        self.ticket_keys = b""
        self.reuse_port = False
        self.path: list[str] = list(sys.path)  # the workers' sys.path
        self.run_dir = ""
        self.smtp: list[int] = []
        self.implicit: list[int] = []
        self.http: list[int] = []
        self.lifeline = (-1, -1)
        self.locks: list[int] = []
        self.helpers: dict[int, Helper] = {}
        self.checking: Helper | None = None  # the reload being checked
        self.check_again = False
        self.wake = os.pipe()
        for fd in self.wake:
            os.set_blocking(fd, False)
        self.selector = selectors.DefaultSelector()
        self.selector.register(self.wake[0], selectors.EVENT_READ)

    @property
    def http_worker(self) -> int:
        """The one worker that serves the HTTP listener (unsubscribe, health, and the
        metrics of them all): the others never load aiohttp (~9 MB a process). The last
        one, so the supervisor loads aiohttp only after forking the others. While it
        restarts, HTTP clients wait in the listening socket's queue (kept open here)."""
        return self.workers

    # --- handover ------------------------------------------------------------------------

    def state(self) -> dict[str, Any]:
        return {
            "workers": self.workers,
            "log_json": self.log.json_lines,
            "slots": [s.state() for s in self.slots.values()],
            "signals": self.signals + ([signal.SIGHUP] if self.hup_pending else []),
            "generation": self.generation,
            "config_generation": self.config_generation,
            "draining": self.draining,  # a SIGTERM during the start
            "drain_deadline": self.drain_deadline,  # monotonic: the same clock after exec
            "config": self.config.hex(),
            "grace": self.grace,
            "shutdown_timeout": self.shutdown_timeout,
            "ticket_keys": self.ticket_keys.hex(),
            "reuse_port": self.reuse_port,
            "path": self.path,
            "run_dir": self.run_dir,
            "smtp": self.smtp,
            "implicit": self.implicit,
            "http": self.http,
            "lifeline": list(self.lifeline),
            "locks": self.locks,
        }

    def fds(self) -> list[int]:
        """Every descriptor the next process (this one after exec) must keep open."""
        status = [s.status_fd for s in self.slots.values() if s.status_fd >= 0]
        return [*self.smtp, *self.implicit, *self.http, *self.lifeline, *self.locks, *status]

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> Overseer:
        o = cls(int(state["workers"]), log_json=bool(state["log_json"]))
        for s in state["slots"]:
            slot = Slot.from_state(s)
            o.slots[slot.worker] = slot
            if slot.pid:
                o.by_pid[slot.pid] = slot
            if slot.status_fd >= 0:
                os.set_inheritable(slot.status_fd, False)
                o.selector.register(slot.status_fd, selectors.EVENT_READ, slot)
        o.signals = list(state["signals"])
        o.generation = int(state["generation"])
        o.config_generation = int(state["config_generation"])
        o.draining = bool(state["draining"])
        o.drain_deadline = float(state["drain_deadline"])
        o.config = bytes.fromhex(str(state["config"]))
        o.grace = float(state["grace"])
        o.shutdown_timeout = float(state["shutdown_timeout"])
        o.ticket_keys = bytes.fromhex(str(state["ticket_keys"]))
        o.reuse_port = bool(state["reuse_port"])
        o.path = list(state["path"])
        o.run_dir = str(state["run_dir"])
        o.smtp = list(state["smtp"])
        o.implicit = list(state["implicit"])
        o.http = list(state["http"])
        o.lifeline = (int(state["lifeline"][0]), int(state["lifeline"][1]))
        o.locks = list(state["locks"])
        for fd in o.fds():
            os.set_inheritable(fd, False)
        return o

    # --- signals -------------------------------------------------------------------------

    def install_signals(self) -> None:
        def note(signum: int, _frame: object) -> None:
            self.signals.append(signum)

        for sig in SIGNALS:
            signal.signal(sig, note)
        early = sys.modules.get("relay.earlystop")  # not imported: the lean one has none
        if early is not None:
            self.signals.extend(early.taken())  # a stop that came before these handlers
        signal.set_wakeup_fd(self.wake[1], warn_on_full_buffer=False)
        # A mask inherited from whoever started us (or blocked across the handover) must
        # not leave the supervisor, or the workers it starts, deaf to SIGTERM or SIGHUP.
        signal.pthread_sigmask(signal.SIG_UNBLOCK, SIGNALS)

    # --- supervise -----------------------------------------------------------------------

    def supervise(self) -> None:
        if self.hup_pending:
            self.hup_pending = False
            self.reload()
        while True:
            alive = [w for w in self.slots.values() if w.pid]
            if self.draining and not alive:
                self.log("info", "all workers stopped; supervisor exits")
                return
            now = time.monotonic()
            timeout = 1.0
            for w in self.slots.values():
                if w.restart_at is not None:
                    if w.restart_at <= now and not self.draining and not w.releasing:
                        self.restart(w)
                    else:
                        timeout = min(timeout, max(w.restart_at - now, 0.05))
            for h in list(self.helpers.values()):
                if now > h.deadline:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(h.pid, signal.SIGKILL)
                    self._helper_done(h)
            if self.draining and now > self.drain_deadline:
                for w in alive:
                    self.log("error", "worker did not drain in time; killing it", worker=w.worker)
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(w.pid, signal.SIGKILL)
                self.drain_deadline = now + 5.0
            self.step(timeout=timeout, starting=False)

    def step(self, *, timeout: float, starting: bool) -> None:
        for key, _ in self.selector.select(timeout):
            if key.data is None:
                with contextlib.suppress(BlockingIOError):
                    while os.read(self.wake[0], 512):
                        pass
            elif isinstance(key.data, Helper):
                self._read_helper(key.data)
            else:
                self.read_status(key.data)
        signals, self.signals = self.signals, []
        for signum in signals:
            if signum == signal.SIGCHLD:
                self.reap(starting=starting)
            elif signum == signal.SIGHUP:
                if starting:
                    self.hup_pending = True  # reloaded once every worker listens
                else:
                    self.reload()
            elif signum in (signal.SIGTERM, signal.SIGINT):
                self.drain()
        if signal.SIGCHLD not in signals:
            self.reap(starting=starting)  # a SIGCHLD may have come in before the handler

    def read_status(self, w: Slot) -> None:
        try:
            data = os.read(w.status_fd, 4096)
        except BlockingIOError:
            return
        if not data:
            self.close_status(w)
            return
        w.buffer += data
        while b"\n" in w.buffer:
            line, w.buffer = w.buffer.split(b"\n", 1)
            if line + b"\n" == READY:
                self._ready(w)
            elif line.startswith(b"error "):
                w.error = line[6:].decode("utf-8", "replace")

    def _ready(self, w: Slot) -> None:
        w.ready = True
        if w.restarts:
            self.log(
                "info",
                "worker restarted",
                worker=w.worker,
                pid=w.pid,
                restarts=w.restarts,
                seconds_to_listen=round(time.monotonic() - w.started, 2),
            )
        if w.generation != self.generation:
            # Started before the latest SIGHUP's configuration was read: it reloads itself.
            with contextlib.suppress(ProcessLookupError):
                os.kill(w.pid, signal.SIGHUP)

    def close_status(self, w: Slot) -> None:
        if w.status_fd >= 0:
            self.selector.unregister(w.status_fd)
            os.close(w.status_fd)
            w.status_fd = -1

    def reap(self, *, starting: bool) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            w = self.by_pid.pop(pid, None)
            if w is None:
                continue  # a helper: its pipe tells when it is done
            if w.status_fd >= 0:
                self.read_status(w)  # its last words, if any
                self.close_status(w)
            self.gone(w, pid, exit_text(status), starting=starting)

    def gone(self, w: Slot, pid: int, how: str, *, starting: bool) -> None:
        lived = time.monotonic() - w.started
        w.pid, w.previous_exit = 0, how
        if self.draining:
            self.log("info", "worker stopped", worker=w.worker, pid=pid, exit=how)
            return
        self.release(w, pid)
        if starting and not w.ready:
            return  # the start reports it
        w.quick_deaths = 0 if lived >= STABLE_AFTER else w.quick_deaths + 1
        delay = min(FIRST_BACKOFF * 2 ** (w.quick_deaths - 1), MAX_BACKOFF)
        if w.quick_deaths == 0:
            delay = FIRST_BACKOFF
        w.restart_at = time.monotonic() + delay
        self.log(
            "warning",
            "worker died; restarting it",
            worker=w.worker,
            pid=pid,
            exit=how,
            error=w.error or None,
            restart_in_seconds=round(delay, 2),
        )

    def release(self, w: Slot, pid: int) -> None:
        """Free a dead worker's sessions and live metrics, in a child (sqlite and
        prometheus-client are not loaded here); its successor starts once that is done."""

        def done(answer: dict[str, Any]) -> None:
            w.releasing = 0
            if answer.get("error"):
                # Its slots stay taken: new sessions are refused sooner, never let past.
                self.log(
                    "error",
                    "cannot release a dead worker's sessions",
                    worker=w.worker,
                    error=answer["error"],
                )

        run_dir, worker = self.run_dir, w.worker
        w.releasing = self.helper(lambda: _release(run_dir, worker, pid), done)

    def restart(self, w: Slot) -> None:
        w.restarts += 1
        self.spawn(w)

    def spawn(self, w: Slot) -> None:
        """A fresh worker interpreter in slot `w` on the same listeners."""
        status_read, status_write = os.pipe()
        http = self.http if w.worker == self.http_worker else []
        slot = {
            "worker": w.worker,
            "workers": self.workers,
            "smtp": self.smtp,
            "implicit": self.implicit,
            "http": http,
            "run_dir": self.run_dir,
            "ready_fd": status_write,
            "lifeline_fd": self.lifeline[0],
            "previous_exit": w.previous_exit,
            "restarts": w.restarts,
            "reuse_port": self.reuse_port,
            "log_json": self.log.json_lines,
            "config": self.config.hex(),
            "ticket_keys": self.ticket_keys.hex(),
        }
        spec = memfile("phi-relay-worker", json.dumps(slot).encode())
        passed = (spec, status_write, self.lifeline[0], *self.smtp, *self.implicit, *http)
        pid = fork_worker()
        if pid == 0:
            try:
                _child_signals(reload=signal.SIG_IGN)  # until the relay handles SIGHUP
                for fd in passed:
                    os.set_inheritable(fd, True)
                argv = [sys.executable, "-c", WORKER_BOOT, str(spec), *self.path]
                os.execv(sys.executable, argv)  # noqa: S606 - our interpreter, our code
            finally:
                os._exit(70)
        os.close(spec)
        os.close(status_write)
        self._track(w, pid, status_read)

    def _track(self, w: Slot, pid: int, status_fd: int) -> None:
        os.set_blocking(status_fd, False)
        w.pid, w.status_fd, w.started, w.ready = pid, status_fd, time.monotonic(), False
        w.generation, w.restart_at, w.error, w.buffer = self.config_generation, None, "", b""
        self.by_pid[pid] = w
        self.selector.register(status_fd, selectors.EVENT_READ, w)

    # --- jobs in children ------------------------------------------------------------------

    def helper(
        self, job: Callable[[], dict[str, Any]], done: Callable[[dict[str, Any]], None]
    ) -> int:
        """Run `job` in a forked child; `done` gets its answer (or an error) here."""
        read_end, write_end = os.pipe()
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                _child_signals(reload=signal.SIG_DFL)
                os.close(read_end)
                try:
                    answer = job()
                except Exception as exc:  # a job's own failure, told without its text
                    answer = {"error": f"{type(exc).__name__}"}
                data = json.dumps(answer).encode()
                while data:
                    data = data[os.write(write_end, data) :]
                code = 0
            finally:
                os._exit(code)
        os.close(write_end)
        os.set_blocking(read_end, False)
        h = Helper(pid, read_end, done)
        self.helpers[pid] = h
        self.selector.register(read_end, selectors.EVENT_READ, h)
        return pid

    def _read_helper(self, h: Helper) -> None:
        try:
            data = os.read(h.fd, 65536)
        except BlockingIOError:
            return
        if data:
            h.buffer += data
        else:
            self._helper_done(h)

    def _helper_done(self, h: Helper) -> None:
        if self.helpers.pop(h.pid, None) is None:
            return
        self.selector.unregister(h.fd)
        os.close(h.fd)
        try:
            answer = json.loads(h.buffer)
        except ValueError:  # killed at its deadline, or died: no (whole) answer
            answer = {"error": "the check ended without an answer", "crashed": True}
        h.done(answer)

    # --- reload and drain ----------------------------------------------------------------

    def reload(self) -> None:
        """Have every worker reload (each refuses, logs and audits a reload it must not
        take), and read the configuration for workers started from now on."""
        self.generation += 1
        for w in self.slots.values():
            if w.pid and w.ready:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(w.pid, signal.SIGHUP)
        self._check_reload()

    def _check_reload(self) -> None:
        if self.checking is not None:
            self.check_again = True  # once this check answers
            return
        generation, running, workers = self.generation, self.config, self.workers

        def done(answer: dict[str, Any]) -> None:
            self.checking = None
            if answer.get("error"):
                self.log(
                    "error",
                    "reload failed; keeping the running configuration",
                    error=answer["error"],
                )
            if answer.get("workers"):
                self.log(
                    "warning",
                    "the number of workers changes only on restart",
                    running=self.workers,
                    configured=answer["workers"],
                )
            if answer.get("config"):
                self.log("info", "configuration re-read for workers started from now on")
                self.config = bytes.fromhex(str(answer["config"]))
                self.grace = float(answer["grace"])
                self.shutdown_timeout = float(answer["shutdown_timeout"])
            if "crashed" not in answer:
                self.config_generation = generation
            if self.check_again:
                self.check_again = False
                self._check_reload()

        pid = self.helper(lambda: check_reload(running, workers), done)
        self.checking = self.helpers[pid]

    def drain(self) -> None:
        if self.draining:
            return
        self.draining = True
        self.drain_deadline = time.monotonic() + self.grace
        self.log("info", "draining every worker", timeout=self.shutdown_timeout)
        # No worker will accept again: while the supervisor held its copy of a shared
        # listening socket, new clients would wait in its queue until the drain ended.
        for fd in (*self.smtp, *self.implicit):
            with contextlib.suppress(OSError):
                os.close(fd)
        self.smtp, self.implicit = [], []
        for w in self.slots.values():
            w.restart_at = None
            if w.pid:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(w.pid, signal.SIGTERM)

    def cleanup(self) -> None:
        with contextlib.suppress(ValueError):
            signal.set_wakeup_fd(-1)
        for w in self.slots.values():
            self.close_status(w)
        for fd in (*self.smtp, *self.implicit, *self.http, *self.lifeline, *self.wake):
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self.smtp = self.implicit = self.http = []
        self.lifeline = self.wake = (-1, -1)
        self.selector.close()
        if self.run_dir:
            _remove_tree(self.run_dir)
        for fd in self.locks:
            with contextlib.suppress(OSError):
                os.close(fd)
        self.locks = []
        # A reload asked for while exiting is moot; it must not end the exit with SIGHUP
        # (at interpreter shutdown Python gives signals their default action back).
        signal.signal(signal.SIGHUP, signal.SIG_IGN)


# --- the jobs (in a child, where loading the relay's code costs nothing that lasts) -------


def check_reload(running: bytes, workers: int) -> dict[str, Any]:
    """Read the configuration again from where the running one came from; the answer
    carries it (pickled, hex) unless a worker would refuse it or it cannot be read."""
    import pickle

    from relay.policy.base import ConfigError
    from relay.server import reload_refusal

    config, sources = pickle.loads(running)  # noqa: S301 - our own bytes, from our parent
    try:
        new = sources.load()
    except (ConfigError, OSError, ValueError) as exc:
        return {"error": str(exc)}
    if reload_refusal(config, new) is not None:
        return {}
    answer: dict[str, Any] = {"config": pickle.dumps((new, sources)).hex()}
    answer.update(drain_times(new))
    if new.worker_count != workers:
        answer["workers"] = new.worker_count
    return answer


def drain_times(cfg: Any) -> dict[str, float]:
    """How long the supervisor lets the slowest worker drain: its sessions, then its
    deliveries (`cfg` is a relay.config.Config)."""
    s, upstream = cfg.server, cfg.upstream
    grace = s.shutdown_timeout + s.policy_timeout + 4 * upstream.timeout + 60
    return {"grace": float(grace), "shutdown_timeout": float(s.shutdown_timeout)}


def _release(run_dir: str, worker: int, pid: int) -> dict[str, Any]:
    import sqlite3
    from pathlib import Path

    from relay.metrics import worker_gone
    from relay.sharedlimits import SharedCounters
    from relay.slot import LIMITS_DB, METRICS_DIR

    worker_gone(Path(run_dir) / METRICS_DIR, pid)
    try:
        SharedCounters.forget_worker(Path(run_dir) / LIMITS_DB, worker)
    except sqlite3.Error as exc:
        return {"error": str(exc)}
    return {}


# --- helpers ---------------------------------------------------------------------------


def fork_worker() -> int:
    """os.fork() with our signals blocked across it. A SIGTERM that reached the child
    before it reset its handlers would run this process's handler there, noted in a list
    the child never reads: a drain that came as a worker started would be lost, and that
    worker would serve on. Blocked, it waits until the worker has the default action back
    (relay.supervisor.serve_worker unblocks them; the mask outlives an exec)."""
    signal.pthread_sigmask(signal.SIG_BLOCK, SIGNALS)
    pid = os.fork()
    if pid:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, SIGNALS)
    return pid


def _child_signals(*, reload: signal.Handlers) -> None:
    """In a child forked here: the default actions back, the wake-up pipe not ours."""
    signal.set_wakeup_fd(-1)
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGCHLD):
        signal.signal(sig, signal.SIG_DFL)
    signal.signal(signal.SIGHUP, reload)


def memfile(name: str, data: bytes) -> int:
    """An anonymous file holding `data` (not inheritable until a child says so)."""
    fd = os.memfd_create(name)
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]
    return fd


def read_memfile(fd: int) -> bytes:
    """What `memfile` wrote, read from its start; the descriptor is closed."""
    try:
        size = os.fstat(fd).st_size
        return os.pread(fd, size, 0)
    finally:
        os.close(fd)


def _remove_tree(path: str) -> None:
    for root, dirs, files in os.walk(path, topdown=False):
        for name in files:
            with contextlib.suppress(OSError):
                os.unlink(os.path.join(root, name))
        for name in dirs:
            with contextlib.suppress(OSError):
                os.rmdir(os.path.join(root, name))
    with contextlib.suppress(OSError):
        os.rmdir(path)


def main() -> None:
    """The supervisor after the handover (`LEAN_BOOT`): supervise until every worker has
    drained, then exit 0."""
    state = json.loads(read_memfile(int(sys.argv[1])))
    overseer = Overseer.from_state(state)
    try:
        overseer.install_signals()
        overseer.supervise()
    finally:
        overseer.cleanup()
    sys.exit(0)
