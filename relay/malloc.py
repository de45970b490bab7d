"""glibc malloc tuned for many large messages at once: big buffers mapped alone, freed at once.

Also `trim()`: the supervisor gives its free heap pages back before it forks, so a worker
allocating there starts from a fresh page instead of copying one the supervisor keeps.

glibc maps a buffer of its own (given back to the system when freed) only above a threshold
that starts at 128 KiB and rises to the largest buffer freed so far (up to 32 MiB). After the
first 5 MB message every message buffer came from the heap, where 50 of them growing side by
side are moved and leave holes: measured (bench/README.md, "After the memory work"), one
relay process peaked at 1.32x the bytes in flight and kept that memory afterwards, against
1.12x and given back with the threshold fixed. `mallopt(M_MMAP_THRESHOLD)` fixes it (and
stops the rise), as the MALLOC_MMAP_THRESHOLD_ environment variable would; an operator who
set that variable keeps their own value.
"""

from __future__ import annotations

import ctypes
import os

M_MMAP_THRESHOLD = -3  # glibc malloc.h
THRESHOLD = 128 * 1024  # glibc's starting value, kept fixed
ENV = "MALLOC_MMAP_THRESHOLD_"


def tune() -> bool:
    """Fix the mmap threshold in this process; False where there is no glibc mallopt (musl)
    or the operator set MALLOC_MMAP_THRESHOLD_ themselves."""
    if ENV in os.environ:
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return bool(mallopt(M_MMAP_THRESHOLD, THRESHOLD))


def trim() -> bool:
    """Give the heap's free pages back to the system (`malloc_trim(0)`); False without glibc.

    Before a fork: a free chunk the parent still holds resident is copied into every child
    that allocates in it, and the parent's copy then stays, used by no one (~5 MB in the
    supervisor of two workers, bench/README.md "Supervisor and workers: process by process").
    """
    try:
        malloc_trim = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return False
    malloc_trim.argtypes = [ctypes.c_size_t]
    malloc_trim.restype = ctypes.c_int
    malloc_trim(0)
    return True
