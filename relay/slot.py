"""What a supervised worker process is handed by the supervisor: its id, sockets and pipes.

The supervisor (relay.supervisor) binds the listeners once and forks the workers;
each worker serves the same listening sockets on its own event loop. Nothing here
does I/O: it is the contract between the two sides.
"""

from __future__ import annotations

import socket
import ssl
from dataclasses import dataclass
from pathlib import Path

READY = b"ready\n"
"""What a worker writes to `ready_fd` once it listens; `error <line>\\n` if it cannot."""

METRICS_DIR = "metrics"
LIMITS_DB = "limits.db"


@dataclass(frozen=True, slots=True)
class WorkerSlot:
    worker: int  # 1..workers; named in every audit record and in its chain's file name
    workers: int
    smtp: tuple[socket.socket, ...]
    implicit: tuple[socket.socket, ...] = ()
    http: tuple[socket.socket, ...] = ()
    # Per-run directory the supervisor empties at start: metrics files, shared limits.
    run_dir: Path = Path()
    ready_fd: int = -1
    # The read end of a pipe only the supervisor writes to: EOF means it is gone.
    lifeline_fd: int = -1
    # How the previous process in this slot ended ("" for the first one).
    previous_exit: str = ""
    restarts: int = 0
    # The server TLS context made before the fork: every worker holds the same session
    # ticket keys, so a session cached by a client resumes on any worker.
    tls_context: ssl.SSLContext | None = None

    @property
    def metrics_dir(self) -> Path:
        return self.run_dir / METRICS_DIR

    @property
    def limits_db(self) -> Path:
        return self.run_dir / LIMITS_DB
