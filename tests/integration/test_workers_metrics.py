"""`/metrics`, `/healthz` and `/readyz` of `serve --workers 2`: every worker answers, and the
metrics are the sums over all workers (prometheus-client's multiprocess mode), whichever
worker serves the scrape."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

from tests.adversarial.service import Service, start_service
from tests.integration.test_workers import chains, send_all, workers_of
from tests.support.pki import Pki
from tests.support.upstream import Sink

MESSAGES = 30


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(pid)


async def scrape(service: Service) -> dict[str, float]:
    out: dict[str, float] = {}
    for line in (await service.http_get("/metrics")).splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            out[name] = float(value)
    return out


async def test_metrics_are_summed_over_workers(tmp_path: Path, pki: Pki, sink: Sink) -> None:
    service = await start_service(
        tmp_path, pki, sink, workers=2, env={"PHI_RELAY_SERVER_MAX_SESSIONS_PER_CLIENT": "50"}
    )
    try:
        tally = await send_all(service, pki, MESSAGES)
        assert tally.five == [] and tally.gave_up == []
        per_worker = {
            name: sum(r["type"] == "decision" for r in records)
            for name, records in chains(tmp_path / "state").items()
        }
        assert all(per_worker.values()), per_worker  # both workers decided some
        # Every scrape (any worker may answer it) counts every worker's messages.
        for _ in range(6):
            m = await scrape(service)
            decided = sum(v for k, v in m.items() if k.startswith("phi_relay_messages_total{"))
            assert decided == MESSAGES, m
            assert m["phi_relay_sessions_total"] == MESSAGES
            assert m["phi_relay_sessions_active"] == 0
            assert m['phi_relay_deliveries_total{outcome="delivered",reply_class="2xx"}'] == (
                MESSAGES
            )
            assert m["phi_relay_upstream_seconds_count"] == MESSAGES
            assert m["phi_relay_config_last_reload_success"] == 1
            assert not [k for k in m if k.endswith("_created")]
            # Every message leased an upstream connection, new or reused, in some worker;
            # each worker keeps its idle ones open, and no message is in flight now.
            leased = sum(
                m.get(f'phi_relay_upstream_connections_total{{event="{e}"}}', 0.0)
                for e in ("opened", "reused")
            )
            assert leased >= MESSAGES, m
            assert m['phi_relay_upstream_connections_total{event="opened"}'] >= 2  # both
            assert m["phi_relay_upstream_connections_open"] >= 2
            assert m["phi_relay_bytes_in_flight"] == 0
        # process_* describe the relay as a whole: the supervisor and both workers.
        rss = [rss_bytes(pid) for pid in (service.proc.pid, *workers_of(service))]
        resident = m["process_resident_memory_bytes"]
        assert 0.8 * sum(rss) <= resident <= 1.5 * sum(rss), (resident, rss)
        assert m["process_open_fds"] > 2 * 10
        assert (await service.http_get("/healthz")).strip()
        assert (await service.http_get("/readyz")).strip()

        # A killed worker's counts stay in the sums; its open sessions leave the gauge.
        os.kill(workers_of(service)[1], signal.SIGKILL)
        for _ in range(600):
            if any(r.get("event") == "worker-restart" for r in service.audit_records()):
                break
            await asyncio.sleep(0.1)
        before = m["phi_relay_upstream_connections_open"]
        m = await scrape(service)
        decided = sum(v for k, v in m.items() if k.startswith("phi_relay_messages_total{"))
        assert decided == MESSAGES
        assert m["phi_relay_sessions_active"] == 0
        # The dead worker's upstream connections left the gauge (the new one has none yet).
        assert m["phi_relay_upstream_connections_open"] < before
    finally:
        assert await service.stop() == 0, service.log_text()
