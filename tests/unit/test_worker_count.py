"""`workers = 0` means one per CPU the relay may use: its affinity, or a container's CPU
limit (cgroup v2 `cpu.max`, v1 CFS quota) when that is lower; a file it cannot read
counts as no limit."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from relay import config as config_mod
from relay.config import cpu_count

AFFINITY = len(os.sched_getaffinity(0))


@pytest.mark.parametrize(
    ("files", "expected"),
    [
        ({}, AFFINITY),
        ({"cpu.max": "max 100000\n"}, AFFINITY),
        ({"cpu.max": "100000 100000\n"}, 1),
        ({"cpu.max": "50000 100000\n"}, 1),  # half a CPU still gets a worker
        ({"cpu.max": "150000 100000\n"}, min(2, AFFINITY)),
        ({"cpu.max": "6400000 100000\n"}, AFFINITY),  # a limit above the machine
        ({"cpu.max": "garbage\n"}, AFFINITY),
        ({"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"}, AFFINITY),
        ({"cpu/cpu.cfs_quota_us": "100000\n", "cpu/cpu.cfs_period_us": "100000\n"}, 1),
    ],
    ids=["none", "v2-max", "v2-one", "v2-half", "v2-one-and-a-half", "v2-above", "v2-garbage",
         "v1-unlimited", "v1-one"],
)  # fmt: skip
def test_cpu_count_follows_the_container_limit(
    tmp_path: Path, files: dict[str, str], expected: int
) -> None:
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    assert cpu_count(tmp_path) == expected


def test_workers_setting_is_checked_and_zero_means_per_cpu() -> None:
    assert config_mod.load(None, environ={}).worker_count == cpu_count()
    assert config_mod.load(None, environ={"PHI_RELAY_WORKERS": "3"}).worker_count == 3
    for bad in ("-1", "257", "many"):
        with pytest.raises(config_mod.ConfigError) as info:
            config_mod.load(None, environ={"PHI_RELAY_WORKERS": bad})
        assert "workers: expected a whole number" in str(info.value), info.value
