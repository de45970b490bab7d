"""Fixtures for the HTTP side: a real aiohttp server on 127.0.0.1 and a real client."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from faker import Faker
from web_support import FlakyStore, Site

from relay.consent import open_store
from relay.consent.api import ConsentStore
from relay.metrics import Metrics
from relay.tokens import TokenCodec
from relay.web import ReadinessCheck, bound_port, build_app, start_http


@pytest.fixture
def fake() -> Faker:
    f = Faker()
    f.seed_instance(4)
    return f


@pytest.fixture
def key() -> bytes:
    return secrets.token_bytes(32)


@pytest.fixture
def codec(key: bytes) -> TokenCodec:
    return TokenCodec([key])


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[ConsentStore]:
    s = await open_store(f"sqlite:///{tmp_path / 'consent.db'}")
    yield s
    await s.close()


@pytest.fixture
def readiness() -> dict[str, ReadinessCheck]:
    """Tests replace entries to make a check fail; by default everything is ready."""

    async def upstream_ok() -> None:
        return None

    return {"upstream": upstream_ok}


@pytest.fixture
async def site(
    store: ConsentStore, codec: TokenCodec, readiness: dict[str, ReadinessCheck]
) -> AsyncIterator[Site]:
    flaky = FlakyStore(store)
    metrics = Metrics()
    checks: dict[str, ReadinessCheck] = {"store": flaky.ping, **readiness}
    app = build_app(
        store=flaky,  # type: ignore[arg-type]  # only add_optout and ping are used
        codec=codec,
        metrics=metrics,
        readiness=checks,
        organisation="Example Clinic",
    )
    runner = await start_http(app, "127.0.0.1", 0)
    timeout = aiohttp.ClientTimeout(total=10)
    try:
        async with aiohttp.ClientSession(timeout=timeout) as client:
            yield Site(
                base=f"http://127.0.0.1:{bound_port(runner)}",
                client=client,
                store=store,
                flaky=flaky,
                codec=codec,
                metrics=metrics,
            )
    finally:
        await runner.cleanup()
