"""Secret keys in the state directory: made only by an explicit init, readable only by the owner.

Used for the audit log's recipient HMAC, the roster's keyed hashes, the dedup store and
unsubscribe tokens. An operator may supply a key through an environment variable
instead (base64, 32 bytes), which is how replicas share one. Loading never makes a
key: a silently new key would break every mailed unsubscribe link and make every old
audit record look forged.
"""

from __future__ import annotations

import base64
import binascii
import os
import secrets
import stat
from pathlib import Path

KEY_BYTES = 32
SERVE_KEYS = ("audit", "dedup", "unsubscribe")
SPOOL_KEY = "spool"  # AES-GCM key of the opt-in spool (relay/spool/store.py)
"""The keys `serve` needs; the roster key is made by `roster import`."""


class KeyError_(Exception):
    """A key file or variable that cannot be used; the message says which and why."""


def env_name(name: str) -> str:
    return f"PHI_RELAY_{name.upper().replace('-', '_')}_KEY"


def key_path(state_dir: Path, name: str) -> Path:
    return state_dir / "keys" / f"{name}.key"


def present(state_dir: Path, name: str) -> bool:
    """True if the key comes from its variable or its file exists (usable or not)."""
    return bool(os.environ.get(env_name(name))) or key_path(state_dir, name).exists()


def _decode(value: str, where: str) -> bytes:
    try:
        key = base64.b64decode(value.strip(), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise KeyError_(f"{where}: expected base64 of {KEY_BYTES} random bytes") from exc
    if len(key) < KEY_BYTES:
        raise KeyError_(f"{where}: expected at least {KEY_BYTES} bytes, got {len(key)}")
    return key


def _read(path: Path) -> str:
    """The key file's text, refused when missing, empty or readable by anyone else."""
    try:
        st = path.stat()
        if not stat.S_ISREG(st.st_mode):
            raise KeyError_(f"{path}: not a regular file")
        mode = stat.S_IMODE(st.st_mode)
        if mode & 0o077:
            raise KeyError_(
                f"{path}: readable by group or others (mode {mode:04o}); run chmod 600 {path}"
            )
        text = path.read_text(encoding="ascii")
    except FileNotFoundError as exc:
        raise KeyError_(
            f"{path}: missing; restore it from backup or run `phi-relay keys init`"
        ) from exc
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not ASCII text"
        raise KeyError_(f"{path}: cannot be read ({reason})") from exc
    if not text.strip():
        raise KeyError_(f"{path}: empty; restore it from backup (an empty key is never replaced)")
    return text


def load(state_dir: Path, name: str) -> bytes:
    """The key called `name`: from PHI_RELAY_<NAME>_KEY, else state_dir/keys/<name>.key."""
    env = os.environ.get(env_name(name))
    if env:
        return _decode(env, env_name(name))
    path = key_path(state_dir, name)
    return _decode(_read(path).splitlines()[0], str(path))


def load_list(state_dir: Path, name: str) -> list[bytes]:
    """A rotating key list, newest first: PHI_RELAY_<NAME>_KEY may hold several, comma-separated.

    Without the variable, state_dir/keys/<name>.key holds one key per line, newest first.
    """
    env = os.environ.get(env_name(name))
    if env:
        return [_decode(part, env_name(name)) for part in env.split(",") if part.strip()]
    path = key_path(state_dir, name)
    lines = [ln for ln in _read(path).splitlines() if ln.strip()]
    return [_decode(ln, str(path)) for ln in lines]


def init(state_dir: Path, names: tuple[str, ...] | list[str]) -> list[Path]:
    """Create each named key file that does not exist yet (0600, in a 0700 folder).

    Existing files are never touched. Returns the files created.
    """
    folder = state_dir / "keys"
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    created: list[Path] = []
    for name in names:
        path = key_path(state_dir, name)
        # O_EXCL: two processes starting together must not each write a different key.
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            continue
        with os.fdopen(fd, "w") as fh:
            fh.write(base64.b64encode(secrets.token_bytes(KEY_BYTES)).decode() + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        created.append(path)
    return created


def load_or_create(state_dir: Path, name: str) -> bytes:
    """For explicit set-up commands (`roster import`): the key, made first if it is missing."""
    if not present(state_dir, name):
        init(state_dir, [name])
    return load(state_dir, name)
