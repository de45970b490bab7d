"""A stop (SIGTERM, SIGINT) that comes while `serve` is still starting, kept for it.

Until the supervisor or the relay sets its own handlers (after the CLI has loaded its
commands, read the configuration and preloaded the serving stack), a SIGTERM had the
default action: death by signal midway through the set-up, or, for a process that is
PID 1 in a container (the image's entrypoint execs `serve`), nothing at all, since the
kernel drops a signal PID 1 has no handler for, so `docker stop` waited for its SIGKILL.
`arm()` notes such a signal from the first line of the CLI; `serve` takes it over
(`taken()`) and stops as soon as it can; any other command gets the default action back
(`disarm()`), a signal noted meanwhile included.
"""

from __future__ import annotations

import os
import signal

STOPS = (signal.SIGTERM, signal.SIGINT)
_noted: list[int] = []


def _note(signum: int, _frame: object) -> None:
    _noted.append(signum)


def arm() -> None:
    for sig in STOPS:
        signal.signal(sig, _note)


def taken() -> list[int]:
    """The stops noted so far (once: a second call returns only newer ones)."""
    out = list(_noted)
    del _noted[: len(out)]
    return out


def disarm() -> None:
    """The default actions back; a stop noted meanwhile is delivered again."""
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    for sig in taken()[:1]:
        os.kill(os.getpid(), sig)
