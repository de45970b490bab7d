"""Shared test helpers for tests/unit/web (imported by name: tests/ holds no packages)."""

from __future__ import annotations

from dataclasses import dataclass

import aiohttp

from relay.consent.api import ConsentStore
from relay.metrics import Metrics
from relay.tokens import TokenCodec


class FlakyStore:
    """Wraps the real store; while `failing` is set every call raises like a dead backend."""

    def __init__(self, inner: ConsentStore) -> None:
        self.inner = inner
        self.failing = False
        self.calls = 0

    async def add_optout(self, recipient: str, category: str, source: str) -> None:
        self.calls += 1
        if self.failing:
            raise ConnectionError("backend unreachable")
        await self.inner.add_optout(recipient, category, source)

    async def ping(self) -> None:
        if self.failing:
            raise ConnectionError("backend unreachable")
        await self.inner.ping()


@dataclass
class Site:
    base: str
    client: aiohttp.ClientSession
    store: ConsentStore
    flaky: FlakyStore
    codec: TokenCodec
    metrics: Metrics

    def url(self, token: str) -> str:
        return f"{self.base}/u/{token}"
