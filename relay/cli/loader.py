"""The one way every command finds its configuration, exactly as `serve` does.

Sources, lowest first: defaults < `--config FILE` (else `PHI_RELAY_CONFIG`) < PHI_RELAY_*
variables < flags. Errors name the source the user actually gave: the file, the variable
or the flag. A PHI_RELAY_* variable that the relay does not read is refused at start, so a
misspelt setting never silently falls back to its default.
"""

from __future__ import annotations

import argparse
import difflib
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from relay import config as config_mod
from relay.cli import CliError
from relay.config import Config
from relay.config_doc import variable, variables
from relay.policy.base import ConfigError

CONFIG_ENV = config_mod.CONFIG_ENV
# Read by the test suite, not by the relay; tolerated so test runs can pass it through.
_TEST_VARIABLES = frozenset({"PHI_RELAY_SKIP_POSTGRES"})

Overrides = dict[str, dict[str, object]]


def add_config_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config",
        type=Path,
        metavar="FILE",
        help=f"TOML configuration file (default: ${CONFIG_ENV}, else none)",
    )


def check_variables(environ: Mapping[str, str]) -> None:
    """Refuse PHI_RELAY_* names the relay does not read, suggesting the nearest known one."""
    known = variables()
    known_names = [*known, CONFIG_ENV]
    for name in sorted(environ):
        if not name.startswith(config_mod.ENV_PREFIX) or name in _TEST_VARIABLES:
            continue
        if name in known or name == CONFIG_ENV:
            continue
        close = difflib.get_close_matches(name, known_names, n=1, cutoff=0.75)
        hint = f"did you mean {close[0]}? " if close else ""
        raise CliError(
            f"environment {name}: unknown variable; {hint}`phi-relay serve --help` lists them"
        )


@dataclass(frozen=True, slots=True)
class Loaded:
    config: Config
    sources: config_mod.Sources  # what a reload reads again

    @property
    def path(self) -> Path | None:
        """The configuration file, from --config or PHI_RELAY_CONFIG."""
        return self.sources.path


def _named_by(args: argparse.Namespace) -> str:
    """How the user named the configuration file (for error messages)."""
    if getattr(args, "config", None) is not None:
        return "flag --config"
    return f"environment {CONFIG_ENV}"


def _origin(
    key: str,
    overrides: Mapping[str, Mapping[str, object]],
    flags: Mapping[str, str],
    environ: Mapping[str, str],
) -> str | None:
    """Where the effective value of `key` ("section.key") came from, when not the file."""
    section, _, name = key.rpartition(".")
    if name in overrides.get(section, {}):
        return f"flag {flags.get(key, '--' + name.replace('_', '-'))}"
    if variable(section, name) in environ:
        return f"environment {variable(section, name)}"
    return None


def load(
    args: argparse.Namespace,
    overrides: Overrides | None = None,
    flags: Mapping[str, str] | None = None,
    environ: Mapping[str, str] | None = None,
    need_policy: bool = False,
) -> Loaded:
    """Load and validate the configuration; every problem becomes a one-line CliError."""
    env = os.environ if environ is None else environ
    ov = overrides or {}
    names = flags or {}
    check_variables(env)
    src = config_mod.sources(getattr(args, "config", None), env, ov)
    path = src.path
    if path is not None and not path.is_file():
        raise CliError(f"{_named_by(args)}: {path}: no such configuration file")
    try:
        cfg = config_mod.load(path, environ=src.environ, overrides=ov, flags=names)
    except ConfigError as exc:
        origin = _origin(exc.key, ov, names, env) if exc.file == _source(path) else None
        if origin is not None:
            raise CliError(f"{origin}: {exc.key}: {exc.expected}") from exc
        raise CliError(str(exc)) from exc
    if need_policy and not cfg.policy_file.is_file():
        origin = _origin("policy_file", ov, names, env) or (str(path) if path else "defaults")
        raise CliError(f"{origin}: policy_file: {cfg.policy_file}: no such policy file")
    return Loaded(cfg, src)


def _source(path: Path | None) -> str:
    """What relay.config names as the source of cross-field checks."""
    return str(path) if path is not None else "defaults"


def add_state_dir_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--state-dir",
        type=Path,
        metavar="DIR",
        default=None,
        help="state directory (default: state_dir from --config, $PHI_RELAY_STATE_DIR, ./state)",
    )


def load_admin(args: argparse.Namespace, given: Mapping[str, tuple[str, object]]) -> Config:
    """The configuration `serve` would load, for an admin command.

    `given` maps "section.key" to (the command's flag, its value or None), so a command's
    own flags (--store, --state-dir, --users-file) override exactly as serve's flags do.
    """
    overrides: Overrides = {}
    flags: dict[str, str] = {}
    for key, (flag, value) in given.items():
        flags[key] = flag
        if value is not None:
            section, _, name = key.rpartition(".")
            overrides.setdefault(section, {})[name] = str(value)
    return load(args, overrides, flags).config
