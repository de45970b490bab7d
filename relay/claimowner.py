"""Who holds a dedup claim, so a claim whose process has died can be taken over at once.

A claim names its owner as `host/boot/pid-namespace:pid:decision`. Another process of the
same host, boot and PID namespace can then tell that the owner is gone (a worker killed
mid-send, which the supervisor replaces) and take the claim over as stale, as the lease
would after 15 minutes: the client's retry goes out now instead of being told "being
delivered in another session" until then. Where the owner cannot be proven dead (another
host, another container, a PID reused, an owner written before this format), the lease
still decides: nothing is taken from a process that may be alive.
"""

from __future__ import annotations

import os
import socket
from functools import cache
from pathlib import Path


@cache
def _here() -> str:
    """This host, this boot and this PID namespace (no ':' in it)."""
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        boot = "?"
    try:
        pidns = str(os.stat("/proc/self/ns/pid").st_ino)
    except OSError:
        pidns = "?"
    return "/".join(part.replace(":", "_") for part in (socket.gethostname(), boot, pidns))


def owner(decision_id: str) -> str:
    """The owner string of a claim this process makes for `decision_id`."""
    return f"{_here()}:{os.getpid()}:{decision_id}"


def abandoned(holder: str) -> bool:
    """True only when `holder` was a process of this host, boot and PID namespace that no
    longer exists (not when it is this process, or cannot be told)."""
    place, sep, rest = holder.partition(":")
    pid_text, sep2, _decision = rest.partition(":")
    if not (sep and sep2 and pid_text.isdigit()) or place != _here() or "?" in place:
        return False
    pid = int(pid_text)
    if pid == os.getpid() or pid <= 1:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:  # alive, another user's (or unknowable): not ours to take
        return False
    return False
