"""`malloc.trim()`, which the supervisor runs before it forks: free heap pages go back to
the system instead of staying resident (and being copied by a worker that allocates
there). Run in a fresh interpreter, whose heap holds only what the check puts there."""

from __future__ import annotations

import ctypes
import subprocess
import sys

import pytest

from tests.support.relay import ROOT

PROBE = """
from relay import malloc
def rss_mb():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
pinned, freed = [], []
for n in range(50_000):  # ~50 MB of heap blocks; every 100th stays, so the heap cannot shrink
    (pinned if n % 100 == 0 else freed).append(bytearray(1000))
del freed
before = rss_mb()
assert malloc.trim()
print(before - rss_mb())
"""


def test_trim_gives_free_heap_pages_back() -> None:
    if not hasattr(ctypes.CDLL(None), "malloc_trim"):
        pytest.skip("not glibc: relay/malloc.py's trim changes nothing here")
    done = subprocess.run(
        [sys.executable, "-c", PROBE], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert float(done.stdout) > 30  # of the ~50 MB freed but still resident
