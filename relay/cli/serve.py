"""`phi-relay serve`: run the relay with defaults that work on a fresh machine."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from relay import config as config_mod
from relay import eventloop
from relay.certs import init_dev_certs
from relay.cli import EXIT_OK, CliError, loader
from relay.config_doc import variables
from relay.logs import configure
from relay.policy.base import ConfigError

# flag -> (section, key); values are parsed by relay.config so errors read the same everywhere.
FLAGS: dict[str, tuple[str, str, str]] = {
    "--listen": ("server", "listen", "HOST:PORT for SMTP with STARTTLS (default 127.0.0.1:2525)"),
    "--implicit-tls-listen": ("server", "implicit_tls_listen", "HOST:PORT for implicit TLS"),
    "--tls-cert": ("server", "tls_cert", "server certificate chain (PEM)"),
    "--tls-key": ("server", "tls_key", "server private key (PEM)"),
    "--users-file": ("server", "users_file", "AUTH users file (phi-relay user add)"),
    "--upstream": ("upstream", "host", "upstream HOST:PORT (default: capture to a folder)"),
    "--upstream-tls": ("upstream", "tls", "starttls or implicit"),
    "--upstream-ca": ("upstream", "ca_file", "CA bundle to verify the upstream with"),
    "--client-timeout": ("server", "client_timeout", "seconds a client may stay idle"),
    "--max-bytes-in-flight": (
        "server",
        "max_bytes_in_flight",
        "bytes of all messages in flight at once; above it DATA gets 452 4.3.1",
    ),
    "--upstream-timeout": ("upstream", "timeout", "seconds for each upstream step"),
    "--audit-log": ("audit", "file", "audit log file"),
    "--state-dir": ("", "state_dir", "directory for keys, consent store, captured mail"),
    "--http-listen": ("http", "listen", "HOST:PORT for unsubscribe, health and metrics"),
    "--mode": ("server", "mode", "enforce or monitor"),
    "--policy-file": ("", "policy_file", "policy file (default policies/default.toml)"),
    "--consent-store": (
        "",
        "consent_store",
        "sqlite:///PATH or postgresql://... (the retry store follows it)",
    ),
    "--replica-id": ("", "replica_id", "name of this replica, written in every audit record"),
    "--spool-dir": ("spool", "dir", "spool directory (default STATE_DIR/spool)"),
    "--workers": ("", "workers", "worker processes on the same listeners (default: one per CPU)"),
}
LIST_FLAGS = {
    "--trusted-network": ("server", "trusted_networks", "CIDR that may relay without AUTH"),
    "--plaintext-network": ("server", "plaintext_networks", "CIDR that may also skip STARTTLS"),
    "--dkim": ("dkim", "keys", "DOMAIN:SELECTOR:KEYFILE: sign mail From that domain"),
    "--proxy-protocol-from": (
        "server",
        "proxy_protocol_from",
        "load balancer CIDR whose connections start with a PROXY v1/v2 header",
    ),
}


def register(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "serve",
        help="run the relay",
        description="Run the relay. Settings: defaults < --config FILE < PHI_RELAY_* env < flags.",
        epilog=variables_help(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    loader.add_config_argument(p)
    for flag, (_, _, help_text) in FLAGS.items():
        p.add_argument(flag, dest=flag[2:].replace("-", "_"), help=help_text)
    for flag, (_, _, help_text) in LIST_FLAGS.items():
        p.add_argument(flag, dest=flag[2:].replace("-", "_"), action="append", help=help_text)
    p.add_argument(
        "--spool",
        action="store_true",
        default=None,
        help="queue mail the upstream cannot take now (encrypted spool; docs/spool.md)",
    )
    p.add_argument("--log-json", action="store_true", help="service log as JSON lines")
    p.set_defaults(func=run)


def variables_help() -> str:
    """The environment variables, one a line, for `serve --help` (docs/configuration.md)."""
    lines = ["environment variables (docs/configuration.md has defaults and meanings):"]
    lines += [f"  {name}" for name in variables()]
    return "\n".join(lines)


def overrides(args: argparse.Namespace) -> dict[str, dict[str, object]]:
    out: dict[str, dict[str, object]] = {}
    for flag, (section, key, _) in FLAGS.items():
        value = getattr(args, flag[2:].replace("-", "_"), None)
        if value is None:
            continue
        if flag == "--upstream":
            hp = config_mod.parse_hostport("flag --upstream", "upstream", value, default_port=587)
            out.setdefault("upstream", {}).update({"host": hp.host, "port": hp.port})
            continue
        out.setdefault(section, {})[key] = value
    for flag, (section, key, _) in LIST_FLAGS.items():
        values = getattr(args, flag[2:].replace("-", "_"), None)
        if values:
            out.setdefault(section, {})[key] = list(values)
    if getattr(args, "spool", None):
        out.setdefault("spool", {})["enabled"] = True
    return out


def flag_names() -> dict[str, str]:
    """ "section.key" -> the flag that sets it, so errors name what the user typed."""
    names = {(f"{s}.{k}" if s else k): flag for flag, (s, k, _) in {**FLAGS, **LIST_FLAGS}.items()}
    names["upstream.port"] = "--upstream"
    names["spool.enabled"] = "--spool"
    return names


def load_config(args: argparse.Namespace) -> loader.Loaded:
    try:
        given = overrides(args)
    except ConfigError as exc:  # --upstream HOST:PORT is parsed here, before the loader
        raise CliError(str(exc)) from exc
    return loader.load(args, given, flag_names(), need_policy=True)


def run(args: argparse.Namespace) -> int:
    from relay.server import Relay, StartupError
    from relay.server import run as run_relay

    configure(json=True if args.log_json else None)
    loaded = load_config(args)
    cfg = loaded.config
    default_cert = Path("certs/server.crt")
    if cfg.server.tls_cert == default_cert and not cfg.server.tls_cert.exists():
        try:
            paths, _ = init_dev_certs(default_cert.parent, cfg.server.hostname)
        except OSError as exc:
            raise CliError(
                f"cannot create development certificates in {default_cert.parent}: "
                f"{exc.strerror or exc}; make that folder writable or pass --tls-cert/--tls-key"
            ) from exc
        where = paths.cert.parent
        print(f"phi-relay: generated development certificates in {where}/ (not for production)")
    # Everything made from here on (keys, stores, captured mail, audit log) is owner-only.
    os.umask(0o077)
    try:
        if cfg.worker_count > 1:
            from relay.supervisor import Supervisor

            return Supervisor(cfg, loaded.sources, cfg.worker_count).run()
        eventloop.run(run_relay(Relay(cfg, sources=loaded.sources)), cfg.server.event_loop)
    except StartupError as exc:
        raise CliError(str(exc)) from exc
    except ConfigError as exc:
        raise CliError(str(exc)) from exc
    except OSError as exc:
        raise CliError(f"cannot listen: {exc.strerror} ({exc}); choose another --listen") from exc
    return EXIT_OK
