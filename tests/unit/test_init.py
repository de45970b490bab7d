"""`phi-relay init`: the written config loads, lists every setting, and its defaults are true."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from relay import config as config_mod
from relay import init
from relay.config_doc import UNDOCUMENTED, settings
from relay.resources import POLICY_DIR, POLICY_FILES

ROOT = Path(__file__).resolve().parents[2]


def test_written_config_points_at_the_written_policy(tmp_path: Path) -> None:
    init.write(tmp_path)
    cfg = config_mod.load(tmp_path / init.CONFIG_NAME, environ={})
    assert cfg.policy_file == tmp_path.resolve() / "policies" / "default.toml"
    assert cfg.state_dir == tmp_path.resolve() / "state"
    for name in POLICY_FILES:
        assert (tmp_path / "policies" / name).read_bytes() == (POLICY_DIR / name).read_bytes()


def test_every_setting_is_listed_and_its_commented_default_is_the_real_one(
    tmp_path: Path,
) -> None:
    init.write(tmp_path)
    text = (tmp_path / init.CONFIG_NAME).read_text()
    for s in settings():
        assert re.search(rf"^(# )?{s.name} = ", text, re.M), s.key
    # Uncommenting every setting must change nothing: the file tells the truth about defaults.
    uncommented = re.sub(r"^# (\w+ = )", r"\1", text, flags=re.M)
    (tmp_path / "all.toml").write_text(uncommented)
    written = config_mod.load(tmp_path / init.CONFIG_NAME, environ={})
    everything = config_mod.load(tmp_path / "all.toml", environ={})
    assert everything.server == written.server
    assert everything.upstream == written.upstream
    assert everything.audit == written.audit
    assert everything.http == written.http


def test_init_refuses_to_overwrite(tmp_path: Path) -> None:
    init.write(tmp_path)
    (tmp_path / "policies" / "default.toml").write_text("# edited\n")
    with pytest.raises(init.InitError, match="already exists; use --force"):
        init.write(tmp_path)
    assert (tmp_path / "policies" / "default.toml").read_text() == "# edited\n"
    init.write(tmp_path, force=True)
    assert (tmp_path / "policies" / "default.toml").read_bytes() == (
        POLICY_DIR / "default.toml"
    ).read_bytes()


def test_repository_policies_are_the_shipped_ones() -> None:
    # The package data links to policies/, so there is one copy to edit.
    assert (ROOT / "policies").resolve() == POLICY_DIR.resolve()


def test_every_setting_is_described() -> None:
    # relay/config_doc.py MEANINGS: a new setting needs one line there (then regenerate
    # docs/configuration.md with scripts/generate.py).
    undocumented = [s.key for s in settings() if s.meaning == UNDOCUMENTED]
    assert undocumented == [], f"describe these in relay/config_doc.py MEANINGS: {undocumented}"
