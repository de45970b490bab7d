"""Docs that must follow the code: one page per policy, reason codes that exist, settings listed."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest

from relay.policy import REGISTRY

ROOT = Path(__file__).resolve().parents[2]
PAGES = ROOT / "docs" / "policies"
SOURCE = "\n".join(p.read_text() for p in (ROOT / "relay").rglob("*.py"))


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_one_page_per_policy(name: str) -> None:
    page = PAGES / f"{name}.md"
    assert page.is_file(), f"docs/policies/{name}.md is missing"
    text = page.read_text()
    assert text.startswith(f"# `{name}`\n")
    assert f"docs/policies/{name}.md" in (ROOT / "docs" / "policies.md").read_text()
    shipped = tomllib.loads((ROOT / "policies" / "default.toml").read_text())
    for key, value in shipped.get("policy", {}).get(name, {}).items():
        if not isinstance(value, dict):
            assert f"`{key}`" in text, f"{name}: setting {key} is not documented"
    # Every reason code a page names is one the code can give.
    for code in re.findall(
        r"`((?:tls|phi|message|consent|optout|segmentation|footer)\.[a-z.-]+)`", text
    ):
        assert f'"{code}"' in SOURCE, f"{name}: reason {code} does not exist in relay/"


def test_no_page_for_a_policy_that_does_not_exist() -> None:
    assert {p.stem for p in PAGES.glob("*.md")} == set(REGISTRY)
