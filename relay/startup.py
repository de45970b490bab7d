"""Start-up checks on the state directory: one writer, private modes, keys present; one line each.

Every refusal is a `StartupError` whose message names the path, what is wrong and
what to do, so `serve` prints one line and exits instead of a traceback.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import stat
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from relay import keys

LOCK_NAME = "relay.lock"

# What a relay leaves in its state directory. Any of it means "this directory has a
# history": keys may then only come from that history, never be made afresh.
STATE_ENTRIES = (
    "keys",
    "audit.log",
    "audit.head",
    "dedup.db",
    "consent.db",
    "roster.db",
    "captured",
)


class StartupError(Exception):
    """The relay cannot start as configured; the message says what to change."""


@dataclass
class StateLock:
    """flock()ed lock files: released by close() or, on a crash, by the kernel."""

    paths: list[Path] = field(default_factory=list)
    _fds: list[int] = field(default_factory=list)

    def close(self) -> None:
        fds, self._fds = self._fds, []
        for fd in fds:
            with contextlib.suppress(OSError):
                os.close(fd)


def private_dir(path: Path) -> None:
    """Create `path` as 0700, or tighten an existing directory to 0700."""
    try:
        path.mkdir(parents=True, exist_ok=True, mode=0o700)
        mode = stat.S_IMODE(path.stat().st_mode)
        if mode & 0o077:
            path.chmod(0o700)
    except OSError as exc:
        raise StartupError(
            f"state directory {path}: {exc.strerror or exc}; "
            "give a directory this user owns (--state-dir)"
        ) from exc


def _lock_one(path: Path, what: str) -> int:
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise StartupError(f"cannot create lock file {path}: {exc.strerror or exc}") from exc
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        holder = ""
        with contextlib.suppress(OSError, ValueError):
            holder = f" (pid {int(os.pread(fd, 32, 0).decode().strip())})"
        os.close(fd)
        raise StartupError(
            f"another phi-relay{holder} is already using {what}; stop it, "
            "or give this one its own --state-dir and --audit-log"
        ) from None
    # The pid is for the operator reading the message above; the lock is the flock.
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


def audit_lock_path(audit_file: Path) -> Path:
    return audit_file.with_name(f".{audit_file.name}.lock")


def lock_state(
    state_dir: Path, audit_file: Path | None, *, chains: Sequence[Path] = ()
) -> StateLock:
    """One writer per state directory and per audit log file; refuse a second one.

    `chains`: the other workers' audit files (relay.supervisor), locked the same way.
    """
    lock = StateLock()
    targets = [(state_dir / LOCK_NAME, f"state directory {state_dir}")]
    if audit_file is not None and audit_file.is_dir():
        raise StartupError(
            f"audit.file {audit_file} is a directory; give a file path (--audit-log)"
        )
    if audit_file is not None:
        # The log has a lock of its own: two relays with different state directories
        # must not both append to one chain either.
        try:
            audit_file.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        except OSError as exc:
            raise StartupError(
                f"audit.file {audit_file}: cannot create its folder ({exc.strerror or exc}); "
                "choose a writable --audit-log"
            ) from exc
        targets.append((audit_lock_path(audit_file), f"audit log {audit_file}"))
    targets += [(audit_lock_path(chain), f"audit log {chain}") for chain in chains]
    try:
        for path, what in targets:
            lock._fds.append(_lock_one(path, what))
            lock.paths.append(path)
    except StartupError:
        lock.close()
        raise
    return lock


def has_history(state_dir: Path, audit_file: Path | None) -> list[str]:
    """Names of the things in `state_dir` (and the audit log) a previous run left."""
    found = [name for name in STATE_ENTRIES if (state_dir / name).exists()]
    if audit_file is not None and audit_file.is_file() and audit_file.stat().st_size:
        name = str(audit_file)
        if audit_file.resolve().parent == state_dir.resolve():
            name = audit_file.name
        if name not in found:
            found.append(name)
    return found


def ensure_keys(state_dir: Path, names: tuple[str, ...], history: list[str]) -> list[Path]:
    """Make the keys only on an empty state directory; elsewhere a missing key is an error.

    `history` is `has_history()` taken before this run opened anything. Returns the key
    files created (empty when all existed or came from the environment).
    """
    missing = [n for n in names if not keys.present(state_dir, n)]
    if not missing:
        return []
    history = [h for h in history if h != "keys"]
    folder = state_dir / "keys"
    key_files = sorted(folder.glob("*.key")) if folder.is_dir() else []
    if history or key_files:
        held = ", ".join(history + [f"keys/{p.name}" for p in key_files])
        files = ", ".join(str(keys.key_path(state_dir, n)) for n in missing)
        raise StartupError(
            f"missing key {files} but {state_dir} already holds state ({held}): restore the "
            f"key from your backup (or set {keys.env_name(missing[0])}); only if it is lost "
            f"for good, run `phi-relay keys init --state-dir {state_dir}` (old unsubscribe "
            "links and audit records will no longer verify)"
        )
    try:
        return keys.init(state_dir, missing)
    except OSError as exc:
        raise StartupError(f"cannot create keys in {folder}: {exc.strerror or exc}") from exc
