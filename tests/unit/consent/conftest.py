"""Fixtures for the consent tests: every store test runs against SQLite and PostgreSQL."""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

# tests/support is not a package on sys.path by default; make the repository root importable.
_ROOT = Path(__file__).resolve().parents[3]
if str(_ROOT) not in sys.path:
    sys.path.insert(0, str(_ROOT))

from relay.consent import open_store  # noqa: E402
from relay.consent.api import ConsentStore  # noqa: E402
from tests.support.postgres import PostgresServer, fresh_database, postgres_server  # noqa: E402

__all__ = ["postgres_server"]


@pytest.fixture(params=["sqlite", "postgresql"])
async def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A URL of an empty store: a new SQLite file, or a new database on the test server."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'consent.db'}"
    server: PostgresServer = request.getfixturevalue("postgres_server")
    return await fresh_database(server)


@pytest.fixture
async def store(store_url: str) -> AsyncIterator[ConsentStore]:
    opened = await open_store(store_url)
    try:
        yield opened
    finally:
        await opened.close()
