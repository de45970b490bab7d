"""/readyz keeps its upstream check for http.readiness_ttl and says why it is not ready.

The upstream check is a whole SMTP session (TLS, login): a probe every few seconds from
every replica must not become a login every few seconds at the provider. The real relay,
a real upstream sink that counts its connections, real HTTP.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import aiohttp

from tests.support.pki import Pki
from tests.support.relay import RunningRelay, start_relay
from tests.support.upstream import Sink


async def probe(r: RunningRelay) -> tuple[int, dict[str, Any]]:
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http,
        http.get(f"http://127.0.0.1:{r.relay.http_port}/readyz") as resp,
    ):
        return resp.status, json.loads(await resp.text())


async def test_probes_within_the_ttl_share_one_upstream_check(
    tmp_path: Path, pki: Pki, sink: Sink
) -> None:
    # A TTL far longer than the probes take, even on a loaded machine.
    r = await start_relay(tmp_path, pki, sink, sections={"http": {"readiness_ttl": 60}})
    try:
        assert sink.connections == 0
        # Concurrent probes, then a few more in a row: one upstream session in all.
        results = await asyncio.gather(*(probe(r) for _ in range(5)))
        results += [await probe(r) for _ in range(3)]
        assert {status for status, _ in results} == {200}
        assert all(body["checks"] == {"store": "ok", "upstream": "ok"} for _, body in results)
        assert sink.connections == 1
        assert results[-1][1]["age"]["upstream"] < 60
    finally:
        await r.stop()


async def test_not_ready_says_why_and_checks_again_after_the_ttl(
    tmp_path: Path, pki: Pki, sink: Sink
) -> None:
    r = await start_relay(tmp_path, pki, sink, sections={"http": {"readiness_ttl": 0.3}})
    try:
        await sink.stop()  # the provider is down
        status, body = await probe(r)
        assert status == 503
        why = "upstream unreachable (4.4.1): Upstream unreachable; try again later"
        assert body["checks"] == {"store": "ok", "upstream": f"error: {why}"}
        assert body["failing"] == ["upstream"]
        assert body["reason"] == f"upstream: error: {why}"
        # Still cached: the same answer, and how old it is.
        status, again = await probe(r)
        assert status == 503 and again["checks"] == body["checks"]
        assert again["age"]["upstream"] >= 0.0
        # After the TTL the next probe checks again: a fresh result.
        await asyncio.sleep(0.4)
        status, later = await probe(r)
        assert status == 503 and later["age"]["upstream"] == 0.0
    finally:
        await r.stop()


async def test_an_upstream_certificate_that_fails_is_named(tmp_path: Path, pki: Pki) -> None:
    rogue = await Sink(pki.server_context(rogue=True)).start()
    r = await start_relay(tmp_path, pki, rogue)
    try:
        status, body = await probe(r)
        assert status == 503
        assert body["checks"]["upstream"] == (
            "error: upstream tls-verify-failed (4.7.5): "
            "Upstream TLS certificate could not be verified; not sent"
        )
    finally:
        await r.stop()
        await rogue.stop()
