"""The AUTH users file: one `name:scrypt$N$r$p$salt$hash` line per user, never a clear password.

scrypt is in the standard library (hashlib) and memory-hard, so no extra dependency.
Verification runs in a thread so a burst of logins does not stall other sessions.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import os
import re
import secrets
from dataclasses import dataclass
from pathlib import Path

N, R, P = 2**14, 8, 1
_NAME = re.compile(r"^[A-Za-z0-9._@+-]{1,128}$")
_DUMMY = "$".join(
    [
        "scrypt",
        str(N),
        str(R),
        str(P),
        base64.b64encode(b"0" * 16).decode(),
        base64.b64encode(b"0" * 32).decode(),
    ]
)


class UsersFileError(Exception):
    """The users file or a name in it is unusable; the message names the file and line."""


def hash_password(password: str) -> str:
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, n=N, r=R, p=P, dklen=32)
    return (
        f"scrypt${N}${R}${P}${base64.b64encode(salt).decode()}${base64.b64encode(digest).decode()}"
    )


def check_password(stored: str, password: str) -> bool:
    try:
        scheme, n, r, p, salt, digest = stored.split("$")
        if scheme != "scrypt":
            return False
        got = hashlib.scrypt(
            password.encode("utf-8", "surrogateescape"),
            salt=base64.b64decode(salt),
            n=int(n),
            r=int(r),
            p=int(p),
            dklen=32,
            maxmem=256 * 1024 * 1024,
        )
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(got, base64.b64decode(digest))


@dataclass(frozen=True, slots=True)
class Users:
    entries: dict[str, str]

    @classmethod
    def load(cls, path: Path) -> Users:
        try:
            text = path.read_text()
        except OSError as exc:
            raise UsersFileError(f"{path}: cannot be read ({exc.strerror})") from exc
        entries: dict[str, str] = {}
        for lineno, line in enumerate(text.splitlines(), 1):
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            name, sep, stored = line.partition(":")
            if not sep or not _NAME.match(name) or not stored.startswith("scrypt$"):
                raise UsersFileError(
                    f"{path}:{lineno}: expected NAME:scrypt$... (use phi-relay user add)"
                )
            entries[name] = stored
        return cls(entries)

    def known(self, name: str) -> bool:
        return name in self.entries

    async def verify(self, name: str, password: str) -> bool:
        # Unknown users still cost one scrypt, so timing does not reveal which names exist.
        stored = self.entries.get(name, _DUMMY)
        ok = await asyncio.to_thread(check_password, stored, password)
        return ok and name in self.entries


def add_user(path: Path, name: str, password: str) -> bool:
    """Add or replace a user. Returns True if it replaced an existing one."""
    if not _NAME.match(name):
        raise UsersFileError("user name must be 1-128 characters of letters, digits and ._@+-")
    if len(password) < 12:
        raise UsersFileError("password must be at least 12 characters")
    lines: list[str] = []
    replaced = False
    if path.exists():
        for line in path.read_text().splitlines():
            if line.partition(":")[0] == name:
                replaced = True
                continue
            lines.append(line)
    lines.append(f"{name}:{hash_password(password)}")
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write("\n".join(lines) + "\n")
    tmp.replace(path)
    return replaced
