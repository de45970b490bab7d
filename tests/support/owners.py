"""Claim owners for the dedup takeover tests: a process that has exited, one that runs,
and owners this host cannot judge (relay.claimowner)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager

from relay import claimowner


def dead_owner() -> str:
    """The owner string a process of this host made before it exited (reaped, so gone)."""
    proc = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    return claimowner.owner("decision").replace(f":{os.getpid()}:", f":{int(proc.stdout)}:")


@contextmanager
def live_owner() -> Iterator[str]:
    """The owner string of another process of this host that is still running."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        yield claimowner.owner("decision").replace(f":{os.getpid()}:", f":{proc.pid}:")
    finally:
        proc.kill()
        proc.wait()


# Owners nobody here can prove dead: the lease decides for them.
UNJUDGED = [
    "0123456789abcdef0123456789abcdef",  # an owner written before the host was named
    "other-host/boot/4026531836:4242:decision",  # another host (or container)
]
