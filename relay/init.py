"""Write a starter configuration an operator edits: config file, policy file, footer templates.

The config file lists every setting with its default and meaning (from relay.config_doc),
commented out, so uncommenting one line changes one thing. Paths in it are absolute, so
`phi-relay serve --config DIR/phi-relay.toml` works from any working directory; that
includes the TLS certificate, so development certificates are made in DIR/certs here
rather than in whatever directory `serve` happens to start in.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from pathlib import Path

from relay import config as config_mod
from relay.certs import init_dev_certs
from relay.config_doc import Setting, settings
from relay.resources import POLICY_DIR, POLICY_FILES

CONFIG_NAME = "phi-relay.toml"


class InitError(Exception):
    """The target cannot be written; the message says which file and why."""


def _toml(value: object) -> str:
    # JSON strings, numbers, booleans and lists of strings are valid TOML values.
    return json.dumps(value, ensure_ascii=False)


def config_text(home: Path) -> str:
    """The config file for a directory `home` that holds policies/ and state/."""
    policy_file = home / "policies" / "default.toml"
    chosen: dict[str, object] = {
        "policy_file": str(policy_file),
        "state_dir": str(home / "state"),
        "audit.file": str(home / "state" / "audit.log"),
        "server.tls_cert": str(home / "certs" / "server.crt"),
        "server.tls_key": str(home / "certs" / "server.key"),
    }
    out = [
        "# phi-relay configuration, written by `phi-relay init`.",
        "# Precedence: defaults < this file < PHI_RELAY_* variables < serve flags.",
        "# Every setting is listed with its default; uncomment a line to change it.",
        "# docs/configuration.md describes each one; `phi-relay serve --config THIS_FILE`.",
    ]
    section = None
    for s in settings():
        if s.section != section:
            section = s.section
            if section:
                out += ["", f"[{section}]"]
            else:
                out.append("")
        out.append(_line(s, chosen))
    return "\n".join(out) + "\n"


def _line(s: Setting, chosen: dict[str, object]) -> str:
    comment = f"# {s.meaning}"
    if s.key in chosen:
        return f"{comment}\n{s.name} = {_toml(chosen[s.key])}"
    return f"{comment}\n# {s.name} = {_toml(s.default)}"


def write(home: Path, force: bool = False) -> Sequence[Path]:
    """Create home/phi-relay.toml and home/policies/*; refuses to overwrite unless `force`."""
    home = home.resolve()
    targets = [home / CONFIG_NAME] + [home / "policies" / name for name in POLICY_FILES]
    existing = [t for t in targets if t.exists()]
    if existing and not force:
        names = ", ".join(str(t) for t in existing)
        raise InitError(f"{names}: already exists; use --force to replace")
    try:
        (home / "policies").mkdir(parents=True, exist_ok=True)
        for name in POLICY_FILES:
            shutil.copyfile(POLICY_DIR / name, home / "policies" / name)
        (home / CONFIG_NAME).write_text(config_text(home), encoding="utf-8")
    except OSError as exc:
        raise InitError(f"{exc.filename or home}: cannot be written ({exc.strerror})") from exc
    return targets


def dev_certs(home: Path) -> tuple[Path, bool]:
    """Development certificates in home/certs for the config's tls_cert and tls_key; ones
    already there are kept (clients trust their CA). Returns (certificate, created)."""
    hostname = config_mod.ServerConfig().hostname
    try:
        paths, created = init_dev_certs(home.resolve() / "certs", hostname)
    except OSError as exc:
        raise InitError(f"{exc.filename or home}: cannot be written ({exc.strerror})") from exc
    return paths.cert, created
