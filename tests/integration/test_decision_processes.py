"""Decision processes live only while messages need them: one idle for
`server.decision_idle_timeout` is stopped (its tens of MB go back), one kept busy is not,
and the next message that needs one starts it again and is decided as before."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

import pytest

from relay import config as config_mod
from relay.policy.base import ConfigError
from tests.adversarial.test_stalls import big_message, send
from tests.support.pki import Pki
from tests.support.relay import start_relay
from tests.support.upstream import Sink


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


async def test_an_idle_decision_process_is_stopped_and_started_again(
    tmp_path: Path, pki: Pki, sink: Sink
) -> None:
    r = await start_relay(
        tmp_path,
        pki,
        sink,
        # Every message to a decision process; one process, stopped after 1.5 s idle.
        server={"inline_max_bytes": 0, "decision_workers": 1, "decision_idle_timeout": 1.5},
    )
    try:
        pool = r.relay.services.decisions.pool  # type: ignore[union-attr]
        assert pool is not None
        answer, _ = await send(r, big_message(2000))
        assert answer.startswith("250 2.0.0 Delivered"), answer
        (first,) = pool.pids
        # Busy every 0.5 s for 3 s (twice the idle timeout): the same process throughout.
        until = time.monotonic() + 3
        while time.monotonic() < until:
            await asyncio.sleep(0.5)
            answer, _ = await send(r, big_message(2000))
            assert answer.startswith("250 2.0.0 Delivered"), answer
            assert pool.pids == [first]
        # Then idle: stopped and reaped within the timeout (plus a margin).
        for _ in range(60):
            if not pool.pids and not alive(first):
                break
            await asyncio.sleep(0.1)
        assert pool.pids == [] and not alive(first)
        # The next message starts a new one and is decided like the others.
        answer, _ = await send(r, big_message(2000, subject="Results for MRN 4451234"))
        assert answer.startswith("550 5.7.1 Subject line contains protected health"), answer
        (second,) = pool.pids
        assert second != first
        answer, _ = await send(r, big_message(2000))
        assert answer.startswith("250 2.0.0 Delivered"), answer
    finally:
        await r.stop()
    decisions = r.decisions()
    assert len(decisions) >= 9
    assert [d["reply_code"] // 100 for d in decisions[-2:]] == [5, 2], decisions[-2:]
    assert len(sink.received) == len(decisions) - 1


@pytest.mark.parametrize("value", ["0", "-1", "soon"])
def test_the_idle_timeout_is_validated(value: str) -> None:
    env = {"PHI_RELAY_SERVER_DECISION_IDLE_TIMEOUT": value}
    with pytest.raises(ConfigError) as err:
        config_mod.load(None, environ=env)
    assert "server.decision_idle_timeout" in str(err.value)
    assert "expected a number of seconds > 0" in str(err.value)


def test_the_default_is_five_minutes() -> None:
    assert config_mod.load(None, environ={}).server.decision_idle_timeout == 300.0
