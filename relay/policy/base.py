"""What a policy is, what it may use, and how its settings are read with good errors."""

from __future__ import annotations

import builtins
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from relay.model import MessageContext, Verdict

if TYPE_CHECKING:
    from relay.consent.api import ConsentStore
    from relay.phi.api import Detector


class Policy(Protocol):
    """A small unit of policy. `name` is its rule id in audit records and replies."""

    @property
    def name(self) -> str: ...

    async def evaluate(self, ctx: MessageContext) -> Verdict: ...


class ConfigError(Exception):
    """A configuration problem, phrased so an operator can fix it: file, key, expectation."""

    def __init__(self, file: str | Path, key: str, expected: str) -> None:
        self.file = str(file)
        self.key = key
        self.expected = expected
        # "-" is the whole file (unreadable, not TOML): no key to name.
        where = f"{self.file}: " if key in ("", "-") else f"{self.file}: {key}: "
        super().__init__(where + expected)


@dataclass(frozen=True, slots=True)
class Organisation:
    name: str = "Example Health Clinic"
    postal_address: str = "100 Main Street, Springfield, ST 00000"


@dataclass(frozen=True, slots=True)
class PolicyDeps:
    """Shared services handed to policy builders. Optional ones are None when not configured."""

    policy_dir: Path
    state_dir: Path
    organisation: Organisation = field(default_factory=Organisation)
    detector: Detector | None = None
    store: ConsentStore | None = None
    categories: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Section:
    """One `[policy.NAME]` table with typed getters whose errors name file and key."""

    file: builtins.str
    prefix: builtins.str
    data: Mapping[str, Any]

    def _key(self, key: builtins.str) -> builtins.str:
        return f"{self.prefix}.{key}" if self.prefix else key

    def has(self, key: builtins.str) -> bool:
        return key in self.data

    def str(self, key: builtins.str, default: builtins.str | None = None) -> builtins.str:
        value = self.data.get(key, default)
        if not isinstance(value, builtins.str):
            raise ConfigError(self.file, self._key(key), "expected a string")
        return value

    def bool(self, key: builtins.str, default: builtins.bool) -> builtins.bool:
        value = self.data.get(key, default)
        if not isinstance(value, builtins.bool):
            raise ConfigError(self.file, self._key(key), "expected true or false")
        return value

    def number(self, key: builtins.str, default: float, minimum: float = 0.0) -> float:
        value = self.data.get(key, default)
        if (
            isinstance(value, builtins.bool)
            or not isinstance(value, int | float)
            or value < minimum
        ):
            raise ConfigError(self.file, self._key(key), f"expected a number >= {minimum}")
        return float(value)

    def strings(
        self, key: builtins.str, default: Sequence[builtins.str] = ()
    ) -> tuple[builtins.str, ...]:
        value = self.data.get(key, list(default))
        if not isinstance(value, list) or not all(isinstance(v, builtins.str) for v in value):
            raise ConfigError(self.file, self._key(key), "expected a list of strings")
        return tuple(value)

    def choice(
        self, key: builtins.str, choices: Sequence[builtins.str], default: builtins.str
    ) -> builtins.str:
        value = self.str(key, default)
        if value not in choices:
            raise ConfigError(self.file, self._key(key), f"expected one of {', '.join(choices)}")
        return value

    def table(self, key: builtins.str) -> Section:
        value = self.data.get(key, {})
        if not isinstance(value, dict):
            raise ConfigError(self.file, self._key(key), "expected a table")
        return Section(self.file, self._key(key), value)

    def keys(self) -> tuple[builtins.str, ...]:
        return tuple(self.data)

    def reject_unknown(self, allowed: Sequence[builtins.str]) -> None:
        for key in self.data:
            if key not in allowed:
                raise ConfigError(
                    self.file,
                    self._key(key),
                    f"unknown setting; expected one of {', '.join(allowed)}",
                )


Builder = Callable[[Section, PolicyDeps], Policy]
