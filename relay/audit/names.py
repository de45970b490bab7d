"""Where each worker's audit chain and chain head live, next to the configured audit file.

Worker 1 writes the configured file itself (`audit.log`), so a relay with one worker
and the commands that read that file work as before; worker N writes `audit.wN.log`
beside it (and keeps its head in `audit.wN.head`). `audit verify DIR` and `audit report`
read every `*.log` chain, and `chains_of()` finds them for the configured file.
"""

from __future__ import annotations

import re
from pathlib import Path

HEAD = "audit.head"


def chain_path(base: Path, worker: int) -> Path:
    """The chain file of `worker` (1-based; 0 means an unsupervised relay: `base`)."""
    if worker <= 1:
        return base
    return base.with_name(f"{base.stem}.w{worker}{base.suffix}")


def head_name(worker: int) -> str:
    """The chain head file's name in the state directory."""
    return HEAD if worker <= 1 else f"audit.w{worker}.head"


def chains_of(base: Path) -> list[Path]:
    """`base` and the other workers' chains beside it that exist, in worker order."""
    pattern = re.compile(re.escape(base.stem) + r"\.w([0-9]+)" + re.escape(base.suffix))
    found: list[tuple[int, Path]] = []
    if base.parent.is_dir():
        for entry in base.parent.iterdir():
            m = pattern.fullmatch(entry.name)
            if m and entry.is_file():
                found.append((int(m[1]), entry))
    return [base, *(p for _, p in sorted(found))]
