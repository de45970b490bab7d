"""Relay configuration: defaults < TOML file < PHI_RELAY_* environment < command-line flags.

The result is frozen and validated once; every error names the source (file,
variable or flag), the key and what is expected. Insecure combinations refuse to
start rather than run in a weaker mode.
"""

from __future__ import annotations

import ipaddress
import math
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from relay.policy.base import ConfigError
from relay.resources import DEFAULT_POLICY_FILE

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
ENV_PREFIX = "PHI_RELAY_"
MAX_WORKERS = 256
LOOPBACK: tuple[IPNetwork, ...] = (
    ipaddress.ip_network("127.0.0.0/8"),
    ipaddress.ip_network("::1/128"),
)


def cpu_count(cgroup: Path = Path("/sys/fs/cgroup")) -> int:
    """CPUs this process may use: its affinity, and a container's CPU limit if lower
    (cgroup v2 `cpu.max`, v1 `cpu.cfs_quota_us` / `cpu.cfs_period_us`), rounded up."""
    cpus = max(len(os.sched_getaffinity(0)), 1)
    quota: tuple[float, float] | None = None
    try:
        parts = (cgroup / "cpu.max").read_text().split()
        if len(parts) == 2 and parts[0] != "max":
            quota = float(parts[0]), float(parts[1])
    except (OSError, ValueError):
        try:
            q = float((cgroup / "cpu" / "cpu.cfs_quota_us").read_text())
            p = float((cgroup / "cpu" / "cpu.cfs_period_us").read_text())
            if q > 0:
                quota = q, p
        except (OSError, ValueError):
            pass
    if quota is not None and quota[1] > 0:
        cpus = min(cpus, max(math.ceil(quota[0] / quota[1]), 1))
    return cpus


@dataclass(frozen=True, slots=True)
class HostPort:
    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@dataclass(frozen=True, slots=True)
class ServerConfig:
    listen: HostPort = HostPort("127.0.0.1", 2525)
    implicit_tls_listen: HostPort | None = None
    hostname: str = "phi-relay.localdomain"
    tls_cert: Path = Path("certs/server.crt")
    tls_key: Path = Path("certs/server.key")
    users_file: Path | None = None
    trusted_networks: tuple[IPNetwork, ...] = ()
    plaintext_networks: tuple[IPNetwork, ...] = ()
    proxy_protocol_from: tuple[IPNetwork, ...] = ()
    proxy_protocol_timeout: float = 10.0
    max_message_size: int = 25 * 1024 * 1024
    max_bytes_in_flight: int = 256 * 1024 * 1024
    max_recipients: int = 100
    max_line_length: int = 998
    max_header_bytes: int = 64 * 1024
    max_mime_depth: int = 100
    max_received: int = 50
    bare_line_endings: str = "refuse"
    client_timeout: float = 300.0
    pre_auth_timeout: float = 60.0
    data_timeout: float = 600.0
    min_data_rate: int = 500
    max_sessions: int = 200
    max_sessions_per_client: int = 20
    reserved_sessions_percent: int = 10
    auth_failure_delay: float = 1.0
    auth_max_failures: int = 5
    auth_max_failures_per_account: int = 20
    auth_max_failures_per_address: int = 50
    auth_lockout: float = 900.0
    shutdown_timeout: float = 30.0
    shutdown_handshake_grace: float = 1.0
    policy_timeout: float = 10.0
    decision_timeout: float = 30.0
    decision_workers: int = 2
    decision_idle_timeout: float = 300.0
    reuse_port: bool = False
    inline_max_bytes: int = 32 * 1024
    event_loop: str = "uvloop"
    mode: str = "enforce"

    @property
    def reserved_sessions(self) -> int:
        """Of max_sessions, the slots only trusted and authenticated clients may take."""
        return self.max_sessions * self.reserved_sessions_percent // 100


@dataclass(frozen=True, slots=True)
class UpstreamConfig:
    host: str = ""
    port: int = 587
    tls: str = "starttls"
    ca_file: Path | None = None
    timeout: float = 60.0
    username: str = ""
    password_file: Path | None = None
    hostname: str = ""
    pool_size: int = 20
    pool_idle_timeout: float = 30.0
    pool_check_after: float = 5.0
    # Postfix's default_destination_concurrency_limit: what upstreams are used to.
    pool_max_connections: int = 20
    pool_wait_timeout: float = 30.0

    @property
    def capture(self) -> bool:
        return not self.host


@dataclass(frozen=True, slots=True)
class AuditConfig:
    file: Path | None = Path("state/audit.log")
    stdout: bool = False
    fsync: bool = False
    max_bytes: int = 0
    write_timeout: float = 10.0


@dataclass(frozen=True, slots=True)
class DedupConfig:
    busy_timeout: float = 2.0
    ttl: float = 7 * 86400.0
    claim_lease: float = 900.0


@dataclass(frozen=True, slots=True)
class DkimConfig:
    keys: tuple[str, ...] = ()  # DOMAIN:SELECTOR:KEYFILE
    stale_signature: str = "remove"


@dataclass(frozen=True, slots=True)
class SpoolConfig:
    enabled: bool = False
    dir: Path | None = None  # default <state_dir>/spool
    min_backoff: float = 300.0
    max_backoff: float = 4000.0
    lifetime: float = 5 * 86400.0
    max_messages: int = 10000
    scan_interval: float = 10.0


@dataclass(frozen=True, slots=True)
class HttpConfig:
    listen: HostPort | None = HostPort("127.0.0.1", 8025)
    base_url: str = ""
    max_connections: int = 100
    header_timeout: float = 10.0
    # RFC 8058 links must be https: served here with the relay's certificate, or by a
    # TLS-terminating proxy in front, which then needs an https base_url.
    tls: bool = True
    readiness_ttl: float = 15.0


@dataclass(frozen=True, slots=True)
class Config:
    source: str = "defaults"
    server: ServerConfig = field(default_factory=ServerConfig)
    upstream: UpstreamConfig = field(default_factory=UpstreamConfig)
    audit: AuditConfig = field(default_factory=AuditConfig)
    http: HttpConfig = field(default_factory=HttpConfig)
    dedup: DedupConfig = field(default_factory=DedupConfig)
    dkim: DkimConfig = field(default_factory=DkimConfig)
    spool: SpoolConfig = field(default_factory=SpoolConfig)
    state_dir: Path = Path("state")
    policy_file: Path = DEFAULT_POLICY_FILE  # shipped in the package; `phi-relay init` copies it
    consent_store: str = ""
    replica_id: str = ""
    workers: int = 0  # worker processes; 0: one per CPU (relay.supervisor)

    @property
    def capture_dir(self) -> Path:
        return self.state_dir / "captured"

    @property
    def spool_dir(self) -> Path:
        return self.spool.dir or self.state_dir / "spool"

    @property
    def worker_count(self) -> int:
        """`workers`, with 0 meaning one per CPU this process may use (`cpu_count`)."""
        return self.workers or cpu_count()

    @property
    def store_url(self) -> str:
        return self.consent_store or f"sqlite:///{self.state_dir / 'consent.db'}"

    @property
    def unsubscribe_base_url(self) -> str:
        if self.http.base_url:
            return self.http.base_url.rstrip("/")
        listen = self.http.listen or HostPort("127.0.0.1", 8025)
        return f"{'https' if self.http.tls else 'http'}://{listen}"


# --- parsing of single values; each raises ConfigError naming where it came from ---------


def parse_hostport(
    where: str, key: str, value: object, default_port: int | None = None
) -> HostPort:
    if not isinstance(value, str) or not value:
        raise ConfigError(where, key, "expected HOST:PORT, e.g. 127.0.0.1:2525")
    text = value.strip()
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port_text = rest[1:] if rest.startswith(":") else ""
    elif text.count(":") == 1:
        host, _, port_text = text.partition(":")
    else:
        host, port_text = text, ""
    if not port_text:
        if default_port is None:
            raise ConfigError(where, key, "expected HOST:PORT, e.g. 127.0.0.1:2525")
        port_text = str(default_port)
    if not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ConfigError(where, key, "expected a port number between 0 and 65535")
    return HostPort(host or "0.0.0.0", int(port_text))  # noqa: S104 - an empty host means all


def parse_network(where: str, key: str, value: object) -> IPNetwork:
    if not isinstance(value, str):
        raise ConfigError(where, key, "expected a CIDR network such as 10.0.0.0/8")
    try:
        return ipaddress.ip_network(value.strip(), strict=False)
    except ValueError as exc:
        raise ConfigError(where, key, "expected a CIDR network such as 10.0.0.0/8") from exc


def _convert(where: str, key: str, kind: str, value: object) -> object:
    """Turn a TOML/env/flag value into the field's type, or explain what was expected."""
    from_env = isinstance(value, str)
    if kind == "bool":
        if isinstance(value, bool):
            return value
        if from_env and str(value).lower() in {"1", "true", "yes", "on", "0", "false", "no", "off"}:
            return str(value).lower() in {"1", "true", "yes", "on"}
        raise ConfigError(where, key, "expected true or false")
    if kind == "int":
        if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
            return value
        if from_env and str(value).isdigit():
            return int(str(value))
        raise ConfigError(where, key, "expected a whole number >= 0")
    if kind == "float":
        try:
            number = float(value) if isinstance(value, int | float | str) else -1.0
        except ValueError:
            number = -1.0
        if isinstance(value, bool) or number <= 0:
            raise ConfigError(where, key, "expected a number of seconds > 0")
        return number
    if kind == "path":
        if not isinstance(value, str) or not value:
            raise ConfigError(where, key, "expected a file path")
        return Path(value)
    if kind == "opt_path":
        if not isinstance(value, str):
            raise ConfigError(where, key, "expected a file path (empty to disable)")
        return Path(value) if value else None
    if kind == "hostport":
        return parse_hostport(where, key, value)
    if kind == "opt_hostport":
        if value in ("", None):
            return None
        return parse_hostport(where, key, value)
    if kind == "networks":
        items = value.split(",") if isinstance(value, str) else value
        if not isinstance(items, list | tuple):
            raise ConfigError(where, key, "expected a list of CIDR networks")
        return tuple(parse_network(where, key, v) for v in items if str(v).strip())
    if kind == "strs":
        items = value.split(",") if isinstance(value, str) else value
        if not isinstance(items, list | tuple) or not all(isinstance(v, str) for v in items):
            raise ConfigError(where, key, "expected a list of strings")
        return tuple(v.strip() for v in items if v.strip())
    if kind == "str":
        if not isinstance(value, str):
            raise ConfigError(where, key, "expected a string")
        return value
    raise AssertionError(kind)


_KINDS: dict[str, dict[str, str]] = {
    "server": {
        "listen": "hostport",
        "implicit_tls_listen": "opt_hostport",
        "hostname": "str",
        "tls_cert": "path",
        "tls_key": "path",
        "users_file": "opt_path",
        "trusted_networks": "networks",
        "plaintext_networks": "networks",
        "proxy_protocol_from": "networks",
        "proxy_protocol_timeout": "float",
        "max_message_size": "int",
        "max_bytes_in_flight": "int",
        "max_recipients": "int",
        "max_line_length": "int",
        "max_header_bytes": "int",
        "max_mime_depth": "int",
        "max_received": "int",
        "bare_line_endings": "str",
        "client_timeout": "float",
        "pre_auth_timeout": "float",
        "data_timeout": "float",
        "min_data_rate": "int",
        "max_sessions": "int",
        "max_sessions_per_client": "int",
        "reserved_sessions_percent": "int",
        "auth_failure_delay": "float",
        "auth_max_failures": "int",
        "auth_max_failures_per_account": "int",
        "auth_max_failures_per_address": "int",
        "auth_lockout": "float",
        "shutdown_timeout": "float",
        "shutdown_handshake_grace": "float",
        "policy_timeout": "float",
        "decision_timeout": "float",
        "decision_workers": "int",
        "decision_idle_timeout": "float",
        "reuse_port": "bool",
        "inline_max_bytes": "int",
        "event_loop": "str",
        "mode": "str",
    },
    "upstream": {
        "host": "str",
        "port": "int",
        "tls": "str",
        "ca_file": "opt_path",
        "timeout": "float",
        "username": "str",
        "password_file": "opt_path",
        "hostname": "str",
        "pool_size": "int",
        "pool_idle_timeout": "float",
        "pool_check_after": "float",
        "pool_max_connections": "int",
        "pool_wait_timeout": "float",
    },
    "audit": {
        "file": "opt_path",
        "stdout": "bool",
        "fsync": "bool",
        "max_bytes": "int",
        "write_timeout": "float",
    },
    "http": {
        "listen": "opt_hostport",
        "base_url": "str",
        "max_connections": "int",
        "header_timeout": "float",
        "tls": "bool",
        "readiness_ttl": "float",
    },
    "dedup": {"busy_timeout": "float", "ttl": "float", "claim_lease": "float"},
    "dkim": {"keys": "strs", "stale_signature": "str"},
    "spool": {
        "enabled": "bool",
        "dir": "opt_path",
        "min_backoff": "float",
        "max_backoff": "float",
        "lifetime": "float",
        "max_messages": "int",
        "scan_interval": "float",
    },
    "": {
        "state_dir": "path",
        "policy_file": "path",
        "consent_store": "str",
        "replica_id": "str",
        "workers": "int",
    },
}
_SECTION_TYPES: dict[str, type[Any]] = {
    "server": ServerConfig,
    "upstream": UpstreamConfig,
    "audit": AuditConfig,
    "http": HttpConfig,
    "dedup": DedupConfig,
    "dkim": DkimConfig,
    "spool": SpoolConfig,
}


def _apply(cfg: Config, where: str, section: str, values: Mapping[str, object]) -> Config:
    kinds = _KINDS[section]
    converted: dict[str, object] = {}
    for key, raw in values.items():
        full = f"{section}.{key}" if section else key
        if key not in kinds:
            raise ConfigError(where, full, f"unknown setting; expected one of {', '.join(kinds)}")
        converted[key] = _convert(where, full, kinds[key], raw)
    if not converted:
        return cfg
    if section:
        return replace(cfg, **{section: replace(getattr(cfg, section), **converted)})
    return replace(cfg, **converted)  # type: ignore[arg-type]


def load_file(cfg: Config, path: Path) -> Config:
    try:
        with path.open("rb") as fh:
            data = tomllib.load(fh)
    except FileNotFoundError as exc:
        raise ConfigError(path, "-", "file not found; pass an existing --config FILE") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(path, "-", f"not valid TOML ({exc})") from exc
    where = str(path)
    top: dict[str, object] = {}
    for key, value in data.items():
        if key in _SECTION_TYPES:
            if not isinstance(value, dict):
                raise ConfigError(where, key, "expected a table")
            cfg = _apply(cfg, where, key, value)
        else:
            top[key] = value
    cfg = _apply(cfg, where, "", top)
    return replace(cfg, source=where)


def load_env(cfg: Config, environ: Mapping[str, str]) -> Config:
    """PHI_RELAY_<SECTION>_<KEY> (e.g. PHI_RELAY_SERVER_LISTEN) and PHI_RELAY_<KEY> for top keys."""
    for section, kinds in _KINDS.items():
        values: dict[str, object] = {}
        for key in kinds:
            name = ENV_PREFIX + (f"{section}_{key}" if section else key).upper()
            if name in environ:
                values[key] = environ[name]
        if values:
            for key, value in values.items():
                name = ENV_PREFIX + (f"{section}_{key}" if section else key).upper()
                cfg = _apply(cfg, f"environment {name}", section, {key: value})
    return cfg


def apply_overrides(
    cfg: Config,
    overrides: Mapping[str, Mapping[str, object]],
    flags: Mapping[str, str] | None = None,
) -> Config:
    """Command-line flags: {section: {key: value}}, already named as in the file.

    `flags` maps "section.key" to the flag the user typed, so an error names that flag.
    """
    for section, values in overrides.items():
        for key, value in values.items():
            full = f"{section}.{key}" if section else key
            flag = (flags or {}).get(full) or "--" + key.replace("_", "-")
            cfg = _apply(cfg, f"flag {flag}", section, {key: value})
    return cfg


def validate(cfg: Config) -> Config:
    """Cross-field checks. Insecure or impossible combinations refuse to start."""
    s, u = cfg.server, cfg.upstream
    where = cfg.source
    if s.mode not in ("enforce", "monitor"):
        raise ConfigError(where, "server.mode", "expected enforce or monitor")
    if s.event_loop not in ("uvloop", "asyncio"):
        raise ConfigError(where, "server.event_loop", "expected uvloop or asyncio")
    if s.bare_line_endings not in ("refuse", "normalise"):
        raise ConfigError(where, "server.bare_line_endings", "expected refuse or normalise")
    if u.tls not in ("starttls", "implicit"):
        raise ConfigError(
            where, "upstream.tls", "expected starttls or implicit (plaintext is never used)"
        )
    for key, minimum in (
        ("max_message_size", 1024),
        ("max_bytes_in_flight", 1024),
        ("max_recipients", 1),
        ("max_line_length", 78),
        ("max_sessions", 1),
        ("max_sessions_per_client", 1),
        ("max_header_bytes", 1024),
        ("max_mime_depth", 1),
        ("auth_max_failures", 1),
        ("auth_max_failures_per_account", 1),
        ("max_received", 1),
        ("decision_workers", 0),
        ("inline_max_bytes", 0),
    ):
        if getattr(s, key) < minimum:
            raise ConfigError(where, f"server.{key}", f"expected a whole number >= {minimum}")
    if s.max_mime_depth > 250:
        # The parsers recurse once or twice per level; Python's stack allows about 500.
        raise ConfigError(where, "server.max_mime_depth", "expected at most 250")
    if not cfg.unsubscribe_base_url.startswith("https://"):
        # Gmail and Yahoo ignore a List-Unsubscribe that is not https (RFC 8058).
        raise ConfigError(
            where,
            "http.base_url",
            "unsubscribe links must be https: keep http.tls = true (the listener then uses "
            "the relay's certificate), or, when TLS is terminated in front of the relay, set "
            "http.base_url to the public https URL",
        )
    if cfg.http.max_connections < 1:
        raise ConfigError(where, "http.max_connections", "expected a whole number >= 1")
    if s.auth_max_failures_per_address < s.auth_max_failures:
        # The address ceiling sits above the per-account limit, or one app locks out its host.
        raise ConfigError(
            where,
            "server.auth_max_failures_per_address",
            f"expected a whole number >= server.auth_max_failures ({s.auth_max_failures})",
        )
    if s.reserved_sessions_percent > 90:
        # Someone who has not authenticated yet must still be able to connect to do so.
        raise ConfigError(where, "server.reserved_sessions_percent", "expected at most 90")
    if s.max_line_length > 998:
        # RFC 5322 2.1.1: longer lines are not valid mail, and upstreams refuse them.
        raise ConfigError(where, "server.max_line_length", "expected at most 998 (RFC 5322)")
    if u.username and not (u.password_file or os.environ.get(ENV_PREFIX + "UPSTREAM_PASSWORD")):
        raise ConfigError(
            where,
            "upstream.username",
            "set upstream.password_file or PHI_RELAY_UPSTREAM_PASSWORD for upstream AUTH",
        )
    if u.pool_size < 0:
        raise ConfigError(where, "upstream.pool_size", "expected a whole number >= 0")
    if u.pool_max_connections < 1:
        raise ConfigError(where, "upstream.pool_max_connections", "expected a whole number >= 1")
    for key in ("pool_idle_timeout", "pool_check_after", "pool_wait_timeout"):
        if getattr(u, key) <= 0:
            raise ConfigError(where, f"upstream.{key}", "expected a number of seconds > 0")
    if cfg.replica_id and not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}", cfg.replica_id):
        raise ConfigError(
            where, "replica_id", "expected a name of letters, digits, . _ - (at most 64)"
        )
    if not 0 <= cfg.workers <= MAX_WORKERS:
        raise ConfigError(
            where,
            "workers",
            f"expected a whole number from 1 to {MAX_WORKERS}, or 0 for one per CPU",
        )
    if cfg.spool.max_backoff < cfg.spool.min_backoff:
        raise ConfigError(
            where,
            "spool.max_backoff",
            f"expected at least spool.min_backoff ({cfg.spool.min_backoff})",
        )
    if cfg.dkim.stale_signature not in ("remove", "keep", "refuse"):
        raise ConfigError(where, "dkim.stale_signature", "expected remove, keep or refuse")
    for spec in cfg.dkim.keys:
        parts = spec.split(":", 2)
        if len(parts) != 3 or not all(p.strip() for p in parts):
            raise ConfigError(
                where, "dkim.keys", "expected DOMAIN:SELECTOR:KEYFILE, e.g. clinic.example:s1:k.pem"
            )
    if s.max_message_size > 2**31:
        raise ConfigError(where, "server.max_message_size", "expected at most 2 GiB")
    return cfg


def load(
    path: Path | None,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Mapping[str, object]] | None = None,
    flags: Mapping[str, str] | None = None,
) -> Config:
    cfg = Config()
    if path is not None:
        cfg = load_file(cfg, path)
    cfg = load_env(cfg, os.environ if environ is None else environ)
    if overrides:
        cfg = apply_overrides(cfg, overrides, flags)
    if not cfg.server.trusted_networks and cfg.server.users_file is None:
        # A first try needs someone allowed to send: loopback, and still only over TLS.
        cfg = replace(cfg, server=replace(cfg.server, trusted_networks=LOOPBACK))
    return validate(cfg)


CONFIG_ENV = ENV_PREFIX + "CONFIG"


@dataclass(frozen=True, slots=True)
class Sources:
    """Where a configuration comes from, kept so that a reload reads exactly the same places.

    `path` is the TOML file (None: defaults only), `environ` the PHI_RELAY_* variables as
    the process started with them, `overrides` the command-line flags.
    """

    path: Path | None = None
    environ: Mapping[str, str] = field(default_factory=dict)
    overrides: Mapping[str, Mapping[str, object]] = field(default_factory=dict)

    def load(self) -> Config:
        return load(self.path, self.environ, self.overrides)


def sources(
    config_flag: Path | None,
    environ: Mapping[str, str],
    overrides: Mapping[str, Mapping[str, object]] | None = None,
) -> Sources:
    """The one answer to "which file?": `--config FILE`, else $PHI_RELAY_CONFIG, else none."""
    path = config_flag
    if path is None and environ.get(CONFIG_ENV):
        path = Path(environ[CONFIG_ENV])
    env = {k: v for k, v in environ.items() if k.startswith(ENV_PREFIX)}
    return Sources(path, env, dict(overrides or {}))


def upstream_password(cfg: UpstreamConfig) -> str | None:
    """The upstream AUTH password, read at connect time so a rotated secret file is picked up."""
    if cfg.password_file is not None:
        try:
            return cfg.password_file.read_text().strip()
        except OSError as exc:
            raise ConfigError(
                str(cfg.password_file), "upstream.password_file", "file cannot be read"
            ) from exc
    return os.environ.get(ENV_PREFIX + "UPSTREAM_PASSWORD")


def setting_names() -> list[str]:
    """Every file key, for documentation and `--help` text."""
    names = []
    for section, cls in _SECTION_TYPES.items():
        names += [f"{section}.{f.name}" for f in fields(cls)]
    return names + list(_KINDS[""])


def settings_kinds() -> dict[str, dict[str, str]]:
    """Every key and its value kind, top-level keys ("" section) first, then each section."""
    return {"": dict(_KINDS[""]), **{s: dict(k) for s, k in _KINDS.items() if s}}
