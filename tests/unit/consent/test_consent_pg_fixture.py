"""The PostgreSQL fixture fails loudly without server binaries, unless skipping was chosen."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.postgres import SKIP_ENV, running_server


def test_missing_binaries_fail_with_the_install_hint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PG_BIN", str(tmp_path))
    monkeypatch.delenv(SKIP_ENV, raising=False)
    with (
        pytest.raises(pytest.fail.Exception, match=r"run `apt-get install postgresql`"),
        running_server(),
    ):
        pass


def test_missing_binaries_skip_only_when_asked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PG_BIN", str(tmp_path))
    monkeypatch.setenv(SKIP_ENV, "1")
    with (
        pytest.raises(pytest.skip.Exception, match=f"{SKIP_ENV}=1: PostgreSQL tests skipped"),
        running_server(),
    ):
        pass
