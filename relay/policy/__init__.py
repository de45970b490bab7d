"""Policy registry: maps the names used in the policy file to their builders."""

from __future__ import annotations

from relay.policy.base import Builder

REGISTRY: dict[str, Builder] = {}


def register(name: str, builder: Builder) -> None:
    REGISTRY[name] = builder


def _load_builtins() -> None:
    # Each policy module registers itself on import; import order is irrelevant.
    import importlib
    import pkgutil

    for mod in pkgutil.iter_modules(__path__):
        if mod.name not in {"base", "pipeline_config"}:
            importlib.import_module(f"{__name__}.{mod.name}")


_load_builtins()
