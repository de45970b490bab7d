"""Integration fixtures: a consent store URL for each backend (SQLite file, PostgreSQL database)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.postgres import PostgresServer, fresh_database, postgres_server

__all__ = ["postgres_server"]


@pytest.fixture(params=["sqlite", "postgresql"])
async def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'consent.db'}"
    server: PostgresServer = request.getfixturevalue("postgres_server")
    return await fresh_database(server)
