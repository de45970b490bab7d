"""Secret keys kept in the state directory: created once, readable only by the owner.

Used for the audit log's recipient HMAC, the roster's keyed hashes and unsubscribe
tokens. An operator may supply a key through an environment variable instead
(base64, 32 bytes), which is how replicas share one.
"""

from __future__ import annotations

import base64
import binascii
import os
import secrets
from pathlib import Path

KEY_BYTES = 32


class KeyError_(Exception):
    """A key file or variable that cannot be used; the message says which and why."""


def env_name(name: str) -> str:
    return f"PHI_RELAY_{name.upper().replace('-', '_')}_KEY"


def _decode(value: str, where: str) -> bytes:
    try:
        key = base64.b64decode(value.strip(), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise KeyError_(f"{where}: expected base64 of {KEY_BYTES} random bytes") from exc
    if len(key) < KEY_BYTES:
        raise KeyError_(f"{where}: expected at least {KEY_BYTES} bytes, got {len(key)}")
    return key


def load_or_create(state_dir: Path, name: str) -> bytes:
    """The key called `name`: from PHI_RELAY_<NAME>_KEY, else state_dir/keys/<name>.key."""
    env = os.environ.get(env_name(name))
    if env:
        return _decode(env, env_name(name))
    path = state_dir / "keys" / f"{name}.key"
    if path.exists():
        return _decode(path.read_text(), str(path))
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    key = secrets.token_bytes(KEY_BYTES)
    # O_EXCL: two processes starting together must not each write a different key.
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return _decode(path.read_text(), str(path))
    with os.fdopen(fd, "w") as fh:
        fh.write(base64.b64encode(key).decode() + "\n")
    return key


def load_list(state_dir: Path, name: str) -> list[bytes]:
    """A rotating key list, newest first: PHI_RELAY_<NAME>_KEY may hold several, comma-separated.

    Without the variable, state_dir/keys/<name>.key holds one key per line, newest first.
    """
    env = os.environ.get(env_name(name))
    if env:
        return [_decode(part, env_name(name)) for part in env.split(",") if part.strip()]
    path = state_dir / "keys" / f"{name}.key"
    if not path.exists():
        load_or_create(state_dir, name)
    lines = [ln for ln in path.read_text().splitlines() if ln.strip()]
    return [_decode(ln, str(path)) for ln in lines]
