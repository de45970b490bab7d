"""A throw-away PostgreSQL server on a free loopback port, as a session-scoped pytest fixture.

Uses the Debian `postgresql` package's binaries (/usr/lib/postgresql/*/bin), or
the directory in PG_BIN. PostgreSQL refuses to run as root, so under root the
cluster belongs to the `postgres` OS user and every server command runs through
`runuser`. The server listens on 127.0.0.1 only, its socket lives in the temp
directory, and it is stopped and deleted when the session ends.

Missing binaries fail the tests (CI must test PostgreSQL, not skip it), unless
PHI_RELAY_SKIP_POSTGRES=1 says this developer has chosen to skip them.
"""

from __future__ import annotations

import contextlib
import glob
import itertools
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

SKIP_ENV = "PHI_RELAY_SKIP_POSTGRES"
INSTALL_HINT = (
    "PostgreSQL server binaries (initdb, pg_ctl) not found: run `apt-get install postgresql`"
    f" (or set PG_BIN to their directory; {SKIP_ENV}=1 skips these tests on purpose)"
)
SUPERUSER = "phirelay"
COMMAND_TIMEOUT = 60


@dataclass(frozen=True)
class PostgresServer:
    host: str
    port: int
    user: str
    admin_database: str

    def url(self, database: str | None = None) -> str:
        return f"postgresql://{self.user}@{self.host}:{self.port}/{database or self.admin_database}"


_counter = itertools.count(1)


async def fresh_database(server: PostgresServer) -> str:
    """Create an empty database and return its URL: each test starts from no schema at all."""
    import asyncpg

    name = f"t{os.getpid()}_{next(_counter)}"
    conn = await asyncpg.connect(server.url(), timeout=10)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"', timeout=30)
    finally:
        await conn.close(timeout=10)
    return server.url(name)


def find_bin() -> Path | None:
    explicit = os.environ.get("PG_BIN")
    if explicit:
        return Path(explicit) if (Path(explicit) / "pg_ctl").exists() else None
    candidates = glob.glob("/usr/lib/postgresql/*/bin/pg_ctl")

    def version(path: str) -> float:
        try:
            return float(Path(path).parent.parent.name)
        except ValueError:
            return 0.0

    if candidates:
        return Path(max(candidates, key=version)).parent
    found = shutil.which("pg_ctl")
    return Path(found).parent if found else None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _runner() -> tuple[list[str], int | None, int | None]:
    """The command prefix for server commands and the owner for the files they use."""
    if os.geteuid() != 0:
        return [], None, None
    try:
        pw = pwd.getpwnam("postgres")
    except KeyError:
        pytest.fail("running as root needs the `postgres` OS user (apt-get install postgresql)")
    return ["runuser", "-u", "postgres", "--"], pw.pw_uid, pw.pw_gid


def _run(prefix: list[str], args: list[str], cwd: Path) -> None:
    proc = subprocess.run(
        [*prefix, *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=COMMAND_TIMEOUT,
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(
            f"{Path(args[0]).name} failed ({proc.returncode}): {proc.stdout}{proc.stderr}"
        )


@contextlib.contextmanager
def running_server() -> Iterator[PostgresServer]:
    """Start a cluster in a new temp directory; stop it and delete the directory afterwards."""
    bin_dir = find_bin()
    if bin_dir is None:
        if os.environ.get(SKIP_ENV) == "1":
            pytest.skip(f"{SKIP_ENV}=1: PostgreSQL tests skipped")
        pytest.fail(INSTALL_HINT)
    prefix, uid, gid = _runner()
    base = Path(tempfile.mkdtemp(prefix="phi-relay-pg-"))
    if uid is not None and gid is not None:
        os.chown(base, uid, gid)
    data = base / "data"
    started = False
    try:
        _run(
            prefix,
            [
                str(bin_dir / "initdb"),
                "-D",
                str(data),
                "-U",
                SUPERUSER,
                "-A",
                "trust",
                "-E",
                "UTF8",
                "--locale=C",
                "--no-sync",
            ],
            base,
        )
        # A port found free can be taken before the server binds it: try a few.
        for attempt in range(3):
            port = _free_port()
            options = (
                f"-c listen_addresses=127.0.0.1 -p {port} -c unix_socket_directories={base}"
                " -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
                " -c max_connections=50"
            )
            try:
                _run(
                    prefix,
                    [
                        str(bin_dir / "pg_ctl"),
                        "-D",
                        str(data),
                        "-o",
                        options,
                        "-l",
                        str(base / "server.log"),
                        "-w",
                        "-t",
                        "30",
                        "start",
                    ],
                    base,
                )
            except RuntimeError:
                if attempt == 2:
                    raise
                continue
            started = True
            break
        _run(
            prefix,
            [
                str(bin_dir / "createdb"),
                "-h",
                "127.0.0.1",
                "-p",
                str(port),
                "-U",
                SUPERUSER,
                "phi_relay",
            ],
            base,
        )
        yield PostgresServer("127.0.0.1", port, SUPERUSER, "phi_relay")
    finally:
        if started:
            with contextlib.suppress(RuntimeError, subprocess.TimeoutExpired):
                _run(
                    prefix,
                    [str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop"],
                    base,
                )
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """The session's PostgreSQL server; use `fresh_database()` for an empty database."""
    with running_server() as server:
        yield server


@pytest.fixture(scope="session")
def postgres_url(postgres_server: PostgresServer) -> str:
    """The URL of a database on the session's server (shared by every test that uses it)."""
    return postgres_server.url()
