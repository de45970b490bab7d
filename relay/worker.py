"""Run message decisions and rewrites in worker processes, under deadlines that really end them.

`asyncio.timeout` cannot interrupt synchronous code: a PHI scan over a large body
held the event loop (and every other session) for seconds and then passed. Here the
work runs in a separate process:

- each policy runs under an alarm (SIGALRM, repeating) that raises inside the
  policy's own Python code once its `policy_timeout` is over, so a slow policy ends
  with `policy.timeout` at its deadline while the worker stays usable;
- the whole job runs under a deadline the parent enforces by killing the process
  (a stuck C call never reaches a Python bytecode boundary); a fresh worker replaces
  it on the next job.

Workers start lazily (a relay that only sees small messages never starts one) and stop
after `server.decision_idle_timeout` without a job; they are fresh interpreters (the
parent has threads, so no fork), load the same policy file, state directory and consent
store as the parent, and refuse a job whose policy file no longer matches what the
parent loaded (`Stale`): the parent's rules are the truth.

They are started with `subprocess`, talking over a socket pair with multiprocessing's
`Connection` (pickles, as before), not with multiprocessing's `spawn`: that starts a
resource-tracker process beside every relay process that uses it (~13 MB each, to
unlink named semaphores and shared memory this pool never makes).
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
import subprocess
import sys
import threading
import types
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import structlog

from relay import pipeline
from relay.decide import Decided, Request, Strikes, decide
from relay.message import ShapeLimits
from relay.model import Modification, UnsubscribeLinks

log = structlog.get_logger("relay.worker")

# How long a new worker may take to import and load the rules before it counts as broken.
START_TIMEOUT = 60.0
# After a policy's deadline, the alarm repeats this often until the policy has ended.
_ALARM_REPEAT = 0.05
# The decision process's command: `python -c _BOOT FD FORMAT SYS.PATH...`. The parent's
# sys.path comes first, as spawn would give it, so the child imports the same relay.
_BOOT = "import sys; sys.path[:] = sys.argv[3:]; from relay.worker import main; main()"


class WorkerError(Exception):
    """The job did not produce an answer. `reason` is a PHI-free code."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class JobTimeout(WorkerError):
    """The job ran past its deadline; the worker was killed."""

    def __init__(self) -> None:
        super().__init__("worker.timeout")


@dataclass(frozen=True, slots=True)
class Spec:
    """What a worker needs to load the parent's rules."""

    policy_file: Path
    policy_digest: str  # of the bytes the parent loaded; a mismatch is Stale
    state_dir: Path
    store_url: str
    limits: ShapeLimits
    policy_timeout: float
    mode: str


@dataclass(frozen=True, slots=True)
class RenderJob:
    raw: bytes
    mods: tuple[Modification, ...]
    category: str
    links: UnsubscribeLinks | None


# --- the worker process ----------------------------------------------------------------


def _policy_frame(frame: types.FrameType | None) -> bool:
    evaluate = pipeline._evaluate.__code__
    while frame is not None:
        if frame.f_code is evaluate:
            return True
        frame = frame.f_back
    return False


def _on_alarm(signum: int, frame: types.FrameType | None) -> None:
    # Only inside a policy's own code: an awaiting policy is ended by asyncio.timeout,
    # and an exception raised in the event loop itself would break the worker.
    if _policy_frame(frame):
        raise TimeoutError("policy deadline")


@contextlib.contextmanager
def _alarm(seconds: float) -> Iterator[None]:
    signal.setitimer(signal.ITIMER_REAL, max(seconds, 0.001), _ALARM_REPEAT)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)


class _Rules:
    """The rule set for one Spec, loaded in the worker; replaced when the Spec changes."""

    def __init__(self) -> None:
        self.spec: Spec | None = None
        self.rules: Any = None
        self.store: Any = None

    async def get(self, spec: Spec) -> Any:
        if spec == self.spec:
            return self.rules
        from relay import rules as rules_mod
        from relay.consent import open_store
        from relay.phi import default_detector
        from relay.phi.roster import Roster
        from relay.policy.base import PolicyDeps

        if self.store is not None:
            await self.store.close()
            self.spec = self.rules = self.store = None
        store = await open_store(spec.store_url)
        deps = PolicyDeps(
            policy_dir=spec.policy_file.parent,
            state_dir=spec.state_dir,
            detector=default_detector(Roster.load(spec.state_dir)),
            store=store,
        )
        loaded = rules_mod.load(spec.policy_file, deps)
        if loaded.digest != spec.policy_digest:
            await store.close()
            raise WorkerError("worker.stale")
        self.spec, self.rules, self.store = spec, loaded, store
        return loaded


def _serve(conn: Connection, log_json: bool) -> None:
    """The worker's main loop: one job at a time, answers ("ok", value) or ("error", reason)."""
    from relay import logs, malloc

    malloc.tune()  # a spawned process starts with glibc's defaults: big messages come here
    logs.configure(json=log_json)  # the parent's format: a spawned process starts blank
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when we stop
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGALRM, _on_alarm)
    loop = asyncio.new_event_loop()
    cache = _Rules()
    # Warm the detector's vocabularies before saying ready, not during the first job.
    from relay.phi import default_detector

    default_detector().scan("warm up")
    conn.send(("ready", None))
    while True:
        try:
            kind, payload = conn.recv()
        except (EOFError, OSError):
            break
        try:
            if kind == "decide":
                spec, request = payload
                rules = loop.run_until_complete(cache.get(spec))
                value: Any = loop.run_until_complete(
                    decide(
                        request,
                        rules,
                        spec.limits,
                        policy_timeout=spec.policy_timeout,
                        mode=spec.mode,
                        guard=_alarm,
                    )
                )
            elif kind == "render":
                value = _render(payload)
            else:
                raise WorkerError("worker.unknown-job")
            answer: tuple[str, Any] = ("ok", value)
            if isinstance(value, Decided) and _left_running(value):
                # A policy that timed out while awaiting a thread left that thread running;
                # it cannot be stopped, so this worker retires after answering.
                answer = ("retire", value)
        except WorkerError as err:
            answer = ("error", err.reason)
        except Exception as exc:
            # The type only: exception text could quote message content.
            answer = ("error", f"worker.{type(exc).__name__}")
        try:
            conn.send(answer)
        except (EOFError, OSError):
            break
        if answer[0] == "retire":
            break
    loop.close()


def main() -> None:
    """A decision process's entry point (`_BOOT`): serve jobs on the inherited socket."""
    fd, renderer = int(sys.argv[1]), sys.argv[2]
    _serve(Connection(fd), renderer == "json")


def _left_running(decided: Decided) -> bool:
    return any(v.reason == "policy.timeout" for v in decided.outcome.verdicts) and any(
        t is not threading.main_thread() and t.is_alive() for t in threading.enumerate()
    )


def _render(job: RenderJob) -> bytes | tuple[str, bool]:
    """The rewritten bytes, or (reason, permanent) when the message cannot take the change."""
    from relay.rewrite import RewriteError, render_with

    try:
        return render_with(job.raw, job.mods, job.links)
    except RewriteError as err:
        return err.reason, err.permanent


# --- the parent's side ----------------------------------------------------------------


@dataclass(slots=True)
class _Worker:
    proc: subprocess.Popen[bytes]
    conn: Connection
    idle_since: float = 0.0  # loop time it last became idle


def _start(log_json: bool) -> tuple[subprocess.Popen[bytes], Connection]:
    """A decision process and the parent's end of its socket (blocking: run in a thread)."""
    ours, theirs = socket.socketpair()
    try:
        fd = theirs.fileno()
        renderer = "json" if log_json else "console"
        proc = subprocess.Popen(  # noqa: S603 - our own interpreter and code, no shell
            [sys.executable, "-c", _BOOT, str(fd), renderer, *sys.path],
            stdin=subprocess.DEVNULL,
            pass_fds=(fd,),
        )
    except BaseException:
        ours.close()
        raise
    finally:
        theirs.close()
    return proc, Connection(ours.detach())


class Pool:
    """Up to `size` worker processes; jobs wait for a free one (within their deadline).

    A worker idle for `idle_timeout` seconds is stopped: its memory (tens of MB, more after
    a big message) goes back, and the next job that finds none idle starts one again.
    The most recently used idle worker takes the next job, so a light load keeps one.
    """

    def __init__(self, size: int, idle_timeout: float = 300.0) -> None:
        self.size = size
        self.idle_timeout = idle_timeout
        self._idle: list[_Worker] = []
        self._expiry: asyncio.TimerHandle | None = None
        self._retiring: set[asyncio.Task[None]] = set()
        self._count = 0
        self._free = asyncio.Condition()
        self._closed = False
        # Pipe I/O blocks; it gets threads of its own so AUTH's scrypt never waits for it.
        self._io = ThreadPoolExecutor(max_workers=2 * size + 1, thread_name_prefix="worker-io")
        processors = structlog.get_config().get("processors", [])
        self._log_json = any(isinstance(p, structlog.processors.JSONRenderer) for p in processors)

    @property
    def pids(self) -> list[int]:
        return [w.proc.pid for w in self._idle]

    async def _io_call(self, fn: Any, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._io, fn, *args)

    async def _spawn(self) -> _Worker:
        try:
            proc, parent = await self._io_call(_start, self._log_json)
        except Exception as exc:
            log.error("decision worker did not start", error=type(exc).__name__)
            raise WorkerError("worker.start-failed") from exc
        worker = _Worker(proc, parent)
        try:
            async with asyncio.timeout(START_TIMEOUT):
                kind, _ = await self._io_call(parent.recv)
        except Exception as exc:
            # EOF, a reset, a timeout or garbage: a worker that cannot start is not used.
            log.error("decision worker did not start", error=type(exc).__name__)
            await self._kill(worker)
            raise WorkerError("worker.start-failed") from exc
        if kind != "ready":
            await self._kill(worker)
            raise WorkerError("worker.start-failed")
        log.info("decision worker started", pid=proc.pid)
        return worker

    async def _acquire(self, timeout: float) -> _Worker:
        try:
            async with asyncio.timeout(timeout), self._free:
                while not self._idle and self._count >= self.size:
                    await self._free.wait()
                if self._idle:
                    return self._idle.pop()
                self._count += 1
        except TimeoutError:
            raise WorkerError("worker.busy") from None
        # Starting a worker is bounded by START_TIMEOUT, not by the job's deadline.
        try:
            return await self._spawn()
        except BaseException:
            await self._gone()
            raise

    async def _gone(self) -> None:
        async with self._free:
            self._count -= 1
            self._free.notify()

    async def _release(self, worker: _Worker) -> None:
        if self._closed:
            # A job that finished after close(): its worker is not kept.
            await self._kill(worker)
            await self._gone()
            return
        async with self._free:
            worker.idle_since = asyncio.get_running_loop().time()
            self._idle.append(worker)
            self._free.notify()
        self._schedule_expiry()

    def _schedule_expiry(self) -> None:
        if self._expiry is not None or not self._idle or self._closed:
            return
        oldest = min(w.idle_since for w in self._idle)
        loop = asyncio.get_running_loop()
        self._expiry = loop.call_at(oldest + self.idle_timeout, self._expire)

    def _expire(self) -> None:
        """Stop the workers idle for `idle_timeout` (a timer callback on the loop)."""
        self._expiry = None
        if self._closed:
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() - self.idle_timeout
        expired = [w for w in self._idle if w.idle_since <= deadline]
        self._idle = [w for w in self._idle if w.idle_since > deadline]
        for worker in expired:
            task = loop.create_task(self._retire(worker))
            self._retiring.add(task)
            task.add_done_callback(self._retiring.discard)
        self._schedule_expiry()

    async def _retire(self, worker: _Worker) -> None:
        log.info("decision worker idle; stopping it", pid=worker.proc.pid)
        await self._kill(worker)
        await self._gone()

    async def _kill(self, worker: _Worker) -> None:
        with contextlib.suppress(OSError):
            worker.proc.kill()
        with contextlib.suppress(OSError):
            worker.conn.close()
        with contextlib.suppress(subprocess.TimeoutExpired):
            await self._io_call(worker.proc.wait, 5)

    async def _run(self, job: tuple[str, Any], timeout: float) -> Any:
        if self._closed:
            raise WorkerError("worker.closed")
        worker = await self._acquire(timeout)
        try:
            async with asyncio.timeout(timeout):
                await self._io_call(worker.conn.send, job)
                kind, value = await self._io_call(worker.conn.recv)
        except TimeoutError:
            log.error("worker job timed out; killing the worker", pid=worker.proc.pid, job=job[0])
            await self._kill(worker)
            await self._gone()
            raise JobTimeout() from None
        except (EOFError, OSError) as exc:
            log.error("worker died", pid=worker.proc.pid, job=job[0])
            await self._kill(worker)
            await self._gone()
            raise WorkerError("worker.died") from exc
        except BaseException:
            # Cancelled mid-job (client gone, shutdown): the worker's state is unknown.
            await self._kill(worker)
            await self._gone()
            raise
        if kind == "retire":
            await self._kill(worker)
            await self._gone()
            return value
        await self._release(worker)
        if kind != "ok":
            raise WorkerError(str(value))
        return value

    async def decide(self, spec: Spec, request: Request, timeout: float) -> Decided:
        value = await self._run(("decide", (spec, request)), timeout)
        assert isinstance(value, Decided)
        return value

    async def render(self, job: RenderJob, timeout: float) -> bytes | tuple[str, bool]:
        value = await self._run(("render", job), timeout)
        assert isinstance(value, bytes | tuple)
        return value

    async def close(self) -> None:
        self._closed = True
        if self._expiry is not None:
            self._expiry.cancel()
            self._expiry = None
        idle, self._idle = self._idle, []
        for worker in idle:
            await self._kill(worker)
        await asyncio.gather(*self._retiring, return_exceptions=True)
        self._io.shutdown(wait=False)


class Decisions:
    """The relay's decision workers and its record of messages that timed out once.

    Lives as long as the relay (across reloads); `workers = 0` keeps every decision
    inline, as before.
    """

    def __init__(self, workers: int, idle_timeout: float = 300.0) -> None:
        self.pool = Pool(workers, idle_timeout) if workers > 0 else None
        self.strikes = Strikes()

    async def close(self) -> None:
        if self.pool is not None:
            await self.pool.close()
