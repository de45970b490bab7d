"""Open the consent store named by a URL: `sqlite:///path` or `postgresql://...`.

SQLite URLs follow the SQLAlchemy convention: three slashes then the path, so
`sqlite:///state/consent.db` is relative to the current directory and
`sqlite:////var/lib/phi-relay/consent.db` (four slashes) is absolute.
"""

from __future__ import annotations

from pathlib import Path

from relay.consent.api import ConsentStore

EXPECTED = (
    "expected sqlite:///relative/path.db, sqlite:////absolute/path.db"
    " or postgresql://user@host:port/database"
)


def parse_sqlite(url: str) -> Path:
    """The file a `sqlite:` URL names; ValueError (saying what is expected) otherwise."""
    prefix = "sqlite:///"
    if not url.startswith(prefix):
        raise ValueError(f"consent store URL: {EXPECTED}")
    path = url[len(prefix) :]
    if not path or path.endswith("/") or "?" in path or "#" in path or path == ":memory:":
        # In-memory databases are refused: each process would see its own empty store.
        raise ValueError(f"consent store URL: a file path is needed; {EXPECTED}")
    return Path(path)


async def open_store(url: str) -> ConsentStore:
    """Open (creating or migrating the schema as needed) the store `url` names."""
    scheme, sep, _ = url.partition("://")
    if not sep:
        raise ValueError(f"consent store URL: {EXPECTED}")
    scheme = scheme.lower()
    if scheme == "sqlite":
        from relay.consent.sqlite import SqliteStore

        return await SqliteStore.open(parse_sqlite(url))
    if scheme in ("postgresql", "postgres"):
        # Imported here so that SQLite users do not need asyncpg to start.
        from relay.consent.postgres import PostgresStore

        return await PostgresStore.open(url)
    raise ValueError(f"consent store URL: unknown scheme; {EXPECTED}")
