"""Fixtures shared by integration and adversarial tests: PKI, upstream sink, running relay."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.support.pki import Pki, make_pki
from tests.support.relay import RunningRelay, start_relay
from tests.support.upstream import Sink


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
