"""Fixtures shared by integration and adversarial tests: PKI, upstream sink, running relay."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Callable, Mapping
from pathlib import Path

import pytest
import uvloop

from tests.support.pki import Pki, make_pki
from tests.support.relay import RunningRelay, start_relay
from tests.support.upstream import Sink

LOOPS: dict[str, Callable[[], asyncio.AbstractEventLoop]] = {
    "asyncio": asyncio.new_event_loop,
    "uvloop": uvloop.new_event_loop,
}


def pytest_asyncio_loop_factories(
    config: pytest.Config, item: pytest.Item
) -> Mapping[str, Callable[[], asyncio.AbstractEventLoop]]:
    """The event loops an async test runs on: asyncio's, or the one PHI_RELAY_TEST_LOOP names
    (`PHI_RELAY_TEST_LOOP=uvloop pytest` runs the whole suite on serve's default loop);
    tests marked `both_loops` run on each (relay/eventloop.py)."""
    if item.get_closest_marker("both_loops") is not None:
        return LOOPS
    name = os.environ.get("PHI_RELAY_TEST_LOOP", "asyncio")
    return {name: LOOPS[name]}


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture
async def sink(pki: Pki) -> AsyncIterator[Sink]:
    s = await Sink(pki.server_context()).start()
    yield s
    await s.stop()


@pytest.fixture
async def relay(tmp_path: Path, pki: Pki, sink: Sink) -> AsyncIterator[RunningRelay]:
    r = await start_relay(tmp_path, pki, sink)
    yield r
    await r.stop()
