"""Load the operator's policy file (policies/*.toml) into a validated, frozen rule set."""

from __future__ import annotations

import hashlib
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from relay.category import FOOTER_REQUIRED, CategoryTable, builtin, with_footer_switches
from relay.policy import REGISTRY
from relay.policy.base import ConfigError, Organisation, Policy, PolicyDeps, Section

_TOP_KEYS = ("pipeline", "organisation", "categories", "policy")
DEFAULT_PIPELINE = ("require-tls", "subject-phi", "optout-footer")


@dataclass(frozen=True, slots=True)
class RuleSet:
    file: Path
    organisation: Organisation
    categories: CategoryTable
    policies: tuple[Policy, ...]
    digest: str = ""  # sha256 of the policy file's bytes as loaded


def _read(path: Path) -> tuple[dict[str, Any], str]:
    """The parsed file and a digest of its bytes (workers check they load the same file)."""
    try:
        data = path.read_bytes()
    except FileNotFoundError as exc:
        raise ConfigError(path, "-", "policy file not found; check --config policy_file") from exc
    try:
        return tomllib.loads(data.decode("utf-8")), hashlib.sha256(data).hexdigest()
    except UnicodeDecodeError as exc:
        raise ConfigError(path, "-", "not valid TOML (the file is not UTF-8)") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(path, "-", f"not valid TOML ({exc})") from exc


def _categories(root: Section) -> CategoryTable:
    cats = root.table("categories")
    cats.reject_unknown(
        ("default", "by_sender", "by_user", "may_choose_by_sender", "may_choose_by_user", "footer")
    )
    known = builtin()
    names = ", ".join(sorted(known))

    def check(key: str, value: object) -> str:
        if not isinstance(value, str) or value not in known:
            raise ConfigError(root.file, key, f"expected one of {names}")
        return value

    default = check("categories.default", cats.data.get("default", "treatment"))
    by_sender = {
        k.strip().lower(): check(f"categories.by_sender.{k}", v)
        for k, v in cats.table("by_sender").data.items()
    }
    by_user = {
        k: check(f"categories.by_user.{k}", v) for k, v in cats.table("by_user").data.items()
    }

    def choices(table: str, fold: bool) -> dict[str, frozenset[str]]:
        out: dict[str, frozenset[str]] = {}
        for key, value in cats.table(table).data.items():
            where = f"categories.{table}.{key}"
            if not isinstance(value, list) or not value:
                raise ConfigError(root.file, where, f"expected a list of categories ({names})")
            out[key.strip().lower() if fold else key] = frozenset(check(where, v) for v in value)
        return out

    may_sender = choices("may_choose_by_sender", True)
    may_user = choices("may_choose_by_user", False)
    switches: dict[str, bool] = {}
    footer = cats.table("footer")
    for name in footer.keys():  # noqa: SIM118 - Section is not a dict
        check(f"categories.footer.{name}", name)
        switches[name] = footer.bool(name, True)
        if name in FOOTER_REQUIRED and not switches[name]:
            raise ConfigError(
                root.file,
                f"categories.footer.{name}",
                "true (an opt-out footer is required for this category)",
            )
    return CategoryTable(
        with_footer_switches(known, switches), default, by_sender, by_user, may_sender, may_user
    )


def load(path: Path, deps: PolicyDeps) -> RuleSet:
    """Parse and build every policy. Raises ConfigError naming file, key and expectation."""
    data, digest = _read(path)
    root = Section(str(path), "", data)
    root.reject_unknown(_TOP_KEYS)
    org = root.table("organisation")
    org.reject_unknown(("name", "postal_address"))
    fallback = Organisation()
    organisation = Organisation(
        name=org.str("name", fallback.name),
        postal_address=org.str("postal_address", fallback.postal_address),
    )
    categories = _categories(root)
    pipeline = root.strings("pipeline", DEFAULT_PIPELINE)
    known = ", ".join(sorted(REGISTRY))
    sections = root.table("policy")
    for name in sections.keys():  # noqa: SIM118 - Section is not a dict
        if name not in REGISTRY:
            raise ConfigError(path, f"policy.{name}", f"unknown policy; expected one of {known}")
    if len(set(pipeline)) != len(pipeline):
        raise ConfigError(path, "pipeline", "each policy at most once")
    deps = PolicyDeps(
        policy_dir=path.parent,
        state_dir=deps.state_dir,
        organisation=organisation,
        detector=deps.detector,
        store=deps.store,
        categories=categories.categories,
    )
    built: list[Policy] = []
    for name in pipeline:
        builder = REGISTRY.get(name)
        if builder is None:
            raise ConfigError(path, "pipeline", f"unknown policy {name!r}; expected one of {known}")
        built.append(builder(sections.table(name), deps))
    return RuleSet(path, organisation, categories, tuple(built), digest)


def policy_names(data: Mapping[str, Any]) -> tuple[str, ...]:
    pipeline = data.get("pipeline", DEFAULT_PIPELINE)
    return tuple(pipeline) if isinstance(pipeline, list) else ()
