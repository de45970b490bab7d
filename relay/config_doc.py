"""What every configuration setting means, joined with the key, variable and default that
relay.config derives, for docs/configuration.md, `phi-relay init` and `serve --help`.

Keys, types and defaults come from the dataclasses in relay.config; only the meaning is
written here. A setting added there without a line here shows up as undocumented, and the
test that compares docs/configuration.md with this module fails until it is described.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator
from dataclasses import dataclass, fields
from pathlib import Path

from relay import config as config_mod
from relay import keys
from relay.resources import DEFAULT_POLICY_FILE

UNDOCUMENTED = "(not yet described)"

MEANINGS: dict[str, str] = {
    "state_dir": "Directory for keys, the SQLite consent store, dedup records and captured mail.",
    "policy_file": "The policy pipeline (docs/policies.md). Its footer templates are read from "
    "the same directory.",
    "consent_store": "Consent and opt-out store URL (`--consent-store`): empty means "
    "`sqlite:///<state_dir>/consent.db`; `postgresql://...` when several replicas run, "
    "and then the retry store (who already got a message) lives there too.",
    "replica_id": "Name of this replica (`--replica-id`), written as `replica` in every audit "
    "record; give each replica its own (docs/scaling.md). Empty: not written.",
    "workers": "Worker processes (`--workers`), each with its own event loop on the same "
    "listeners, under one supervisor that restarts a worker that dies (docs/scaling.md); "
    "`0`: one per CPU the process may use (its affinity, or a container's CPU limit "
    "when lower); `1`: one process, no supervisor.",
    "server.listen": "Address for SMTP with STARTTLS.",
    "server.implicit_tls_listen": "Optional address for implicit TLS (port-465 style); empty: off.",
    "server.hostname": "Name in the greeting and EHLO reply, and the first DNS name of "
    "generated development certificates.",
    "server.tls_cert": "Server certificate chain (PEM). The default path gets development "
    "certificates on first start.",
    "server.tls_key": "Server private key (PEM).",
    "server.users_file": "AUTH users file (`phi-relay user add`); empty: no AUTH offered.",
    "server.trusted_networks": "Networks that may relay without AUTH (TLS still required). "
    "Empty and no users file: loopback only.",
    "server.plaintext_networks": "Networks that are trusted and may also skip STARTTLS "
    "(they cannot AUTH without TLS; warned at start).",
    "server.proxy_protocol_from": "Load balancer networks whose connections must start with a "
    "PROXY v1/v2 header giving the real client address (`--proxy-protocol-from`, repeatable); "
    "a header from any other address is refused with `554 5.7.0`.",
    "server.proxy_protocol_timeout": "Seconds a listed balancer has to send its PROXY header "
    "(then `554 5.5.0` and the connection closes).",
    "server.max_message_size": "Largest message in bytes; above it `552 5.3.4`.",
    "server.max_bytes_in_flight": "Bytes of all messages being received, decided or delivered "
    "at once in each worker process (with `--workers N` the relay holds up to N times this); "
    "while at or above it a new `DATA` gets `452 4.3.1` (the client retries later; messages "
    "already being received finish).",
    "server.max_recipients": "Recipients per message; above it `452 4.5.3`.",
    "server.max_line_length": "Longest line in bytes (at most 998, RFC 5322); above it "
    "`500 5.5.2`.",
    "server.max_header_bytes": "Largest header section in bytes; above it `552 5.3.4`.",
    "server.max_mime_depth": "Deepest MIME nesting; deeper is refused with `550 5.6.0`.",
    "server.max_received": "Most Received headers a message may carry (a mail loop); above "
    "it `554 5.4.6`.",
    "server.bare_line_endings": "`refuse` a bare CR or LF in DATA with `550 5.6.0`, or "
    "`normalise` it to CRLF.",
    "server.client_timeout": "Seconds a client may stay idle between commands, and between "
    "chunks inside DATA.",
    "server.pre_auth_timeout": "Idle seconds before AUTH for clients outside the trusted networks.",
    "server.data_timeout": "Seconds for a whole DATA transfer.",
    "server.min_data_rate": "Bytes per second inside DATA, as Postfix `smtpd_min_data_rate`: "
    "each chunk buys size/rate seconds, never more than `client_timeout` ahead; 0: off.",
    "server.reserved_sessions_percent": "Percent of `max_sessions` that only trusted or "
    "authenticated clients may use (at most 90).",
    "server.max_sessions": "Concurrent SMTP sessions; above it `421 4.7.0`.",
    "server.max_sessions_per_client": "Concurrent sessions from one client address.",
    "server.auth_failure_delay": "Seconds before answering a failed AUTH.",
    "server.auth_max_failures": "Failed AUTH attempts for one account from one address "
    "before that pair is locked out. Attempts still being checked count too, so parallel "
    "guesses cannot pass it; a login held up only by those waits for them (up to "
    "pre_auth_timeout) instead of being refused.",
    "server.auth_max_failures_per_account": "Failed AUTH attempts for one account from all "
    "addresses before it is locked out (not for a pair that logged in recently).",
    "server.auth_max_failures_per_address": "Failed AUTH attempts from one address over all "
    "accounts before the address is locked out (at least `auth_max_failures`).",
    "server.auth_lockout": "Seconds failures are remembered: the lockout (`454 4.7.0`) window.",
    "server.shutdown_timeout": "Seconds SIGTERM waits for transactions in flight.",
    "server.shutdown_handshake_grace": "Seconds SIGTERM lets a STARTTLS handshake under way "
    "finish, so its client gets 421 over TLS instead of a dropped connection; a client that "
    "never starts its handshake is closed after it (at most shutdown_timeout).",
    "server.policy_timeout": "Seconds all policies together may take for one message "
    "(then `451`, fail closed).",
    "server.decision_timeout": "Seconds a whole decision may take in a worker process; then "
    "the worker is killed and the client gets `451 4.3.0` (`554 5.6.0` if the same message "
    "times out again).",
    "server.reuse_port": "With several `workers`: each worker listens on its own socket "
    "(SO_REUSEPORT) and the kernel spreads new connections evenly by address and port; "
    "`false`: the workers share one listening socket and the idlest one takes each "
    "connection (bench/README.md compares them).",
    "server.decision_workers": "Processes that decide large or unusual messages, for the "
    "whole relay: with `workers` > 1 each worker process starts its share (rounded up).",
    "server.decision_idle_timeout": "Seconds a decision process may wait for its next "
    "message before it is stopped (~50 MB each, up to ~90 MB after a 5 MB message); the "
    "next message that needs one starts it again (~0.5 s). Read at start.",
    "server.inline_max_bytes": "Ordinary messages up to this many bytes are decided in the "
    "event loop; larger or unusual ones in a worker process under `decision_timeout`.",
    "server.event_loop": "`uvloop` (compiled; ~5% less CPU per message, bench/README.md) or "
    "`asyncio` (the standard library's event loop). Read at start.",
    "server.mode": "`enforce`, or `monitor`: audit every verdict, enforce only TLS.",
    "upstream.host": "Upstream provider host; empty: capture to `<state_dir>/captured` "
    "(development only).",
    "upstream.port": "Upstream port.",
    "upstream.tls": "`starttls` or `implicit`; plaintext is never used.",
    "upstream.ca_file": "CA bundle to verify the upstream with; empty: system CAs.",
    "upstream.timeout": "Seconds for each upstream step (connect, each command, DATA).",
    "upstream.username": "Upstream AUTH user; needs `upstream.password_file` or "
    "`PHI_RELAY_UPSTREAM_PASSWORD`.",
    "upstream.password_file": "File holding the upstream AUTH password, read at each "
    "connection so a rotated secret is picked up.",
    "upstream.hostname": "Name the relay gives in EHLO to the upstream; empty: `server.hostname`.",
    "upstream.pool_size": "Idle upstream connections kept open for reuse (verified TLS, `RSET` "
    "between transactions); 0: a new connection for every transaction. With several "
    "`workers`, each keeps its share (rounded up).",
    "upstream.pool_idle_timeout": "Seconds an idle upstream connection is kept before it is "
    "closed.",
    "upstream.pool_check_after": "Idle seconds after which a pooled connection is asked `NOOP` "
    "before it is used again.",
    "upstream.pool_max_connections": "Upstream connections open at once (in use, idle or being "
    "opened); a transaction that finds all in use waits for one at MAIL, in order. With "
    "several `workers`, the relay's total: each worker gets its share (rounded up).",
    "upstream.pool_wait_timeout": "Seconds a transaction waits at MAIL for a free upstream "
    "connection when `upstream.pool_max_connections` are in use; then `451 4.4.5`.",
    "audit.file": "Audit log file (hash-chained JSON lines); empty: none.",
    "audit.stdout": "Also write audit records to standard output for a log pipeline.",
    "audit.fsync": "fsync after every audit record.",
    "audit.max_bytes": "Rotate the audit file above this size, keeping the chain; 0: never.",
    "audit.write_timeout": "Seconds a decision or delivery record may take to write (a slow "
    "disk, a stalled stdout consumer); then that message gets `451`, the others go on.",
    "dedup.busy_timeout": "Seconds a dedup read or write may wait for the SQLite lock (then "
    "`451` before sending, or `250` with the failure recorded after the upstream accepted).",
    "dedup.ttl": "Seconds a delivered recipient is remembered (longer than any client's "
    "retry schedule).",
    "dedup.claim_lease": "Seconds a recipient claimed for sending stays taken; a claim older "
    "than this was left by a crash and is taken over (at once, whatever its age, when the "
    "process that made it on this host is gone).",
    "dkim.keys": "DKIM signing keys, `DOMAIN:SELECTOR:KEYFILE` each (`--dkim`, repeatable): "
    "mail whose From is in DOMAIN is signed after every change (docs/dkim.md).",
    "dkim.stale_signature": "A DKIM-Signature that came with a message the relay then "
    "changes: `remove` it, `keep` it, or `refuse` the message (`550 5.7.0`).",
    "spool.enabled": "Queue mail the upstream cannot take now (down, 4xx) in an encrypted "
    "on-disk spool and answer `250 ... Queued` (`--spool`); off: 250 means the upstream "
    "accepted it (docs/spool.md).",
    "spool.dir": "Spool directory (`--spool-dir`); empty: `<state_dir>/spool`.",
    "spool.min_backoff": "Seconds before the first retry; doubled each attempt.",
    "spool.max_backoff": "Longest wait between retries, in seconds.",
    "spool.lifetime": "Seconds a message may stay queued; then a DSN goes to the sender.",
    "spool.max_messages": "Queued messages above which `/readyz` reports not ready.",
    "spool.scan_interval": "Seconds between scans of the spool for messages due.",
    "http.listen": "Address for unsubscribe, `/healthz`, `/readyz` and `/metrics`; empty: off.",
    "http.base_url": "Public base URL of unsubscribe links (https only, RFC 8058); empty: "
    "`https://<http.listen>`.",
    "http.tls": "Serve the HTTP listener over TLS with `server.tls_cert`/`server.tls_key`; "
    "`false` only behind a TLS-terminating proxy, with an https `http.base_url`.",
    "http.max_connections": "Concurrent HTTP connections, TLS handshakes included; more get "
    "`503` (plain) or are closed.",
    "http.header_timeout": "Seconds for a TLS handshake, for each request's headers (from "
    "connect or the previous response), for a POST body, and keep-alive idle time.",
    "http.readiness_ttl": "Seconds `/readyz` keeps each check's result (the upstream check "
    "is a whole SMTP login), so probes do not log in to the provider every time.",
}

# Variables that are not settings but that the relay reads.
OTHER_VARIABLES: dict[str, str] = {
    "PHI_RELAY_CONFIG": "TOML configuration file, when no `--config` is given.",
    "PHI_RELAY_UPSTREAM_PASSWORD": "Upstream AUTH password (instead of `upstream.password_file`).",
    "PHI_RELAY_READY_FILE": "`serve` writes the bound SMTP, implicit-TLS and HTTP ports here "
    "once listening (for supervisors and tests).",
    keys.env_name("audit"): "Audit HMAC key, base64 of 32 bytes (instead of "
    "`<state_dir>/keys/audit.key`); replicas share it.",
    keys.env_name("unsubscribe"): "Unsubscribe token keys, base64, newest first, "
    "comma-separated (rotation); replicas share them.",
    keys.env_name("dedup"): "Key for the records of recipients that already got a message.",
    keys.env_name("roster"): "Key for the roster's hashes of patient names and MRNs.",
    keys.env_name(keys.SPOOL_KEY): "AES-256-GCM key of the spool (`spool.enabled`), base64 of "
    "32 bytes (instead of `<state_dir>/keys/spool.key`); kept per host with its spool.",
}


@dataclass(frozen=True, slots=True)
class Setting:
    key: str  # as in the TOML file: "server.listen", or "state_dir" at the top
    variable: str
    kind: str
    default: object  # a TOML value
    meaning: str

    @property
    def section(self) -> str:
        return self.key.partition(".")[0] if "." in self.key else ""

    @property
    def name(self) -> str:
        return self.key.rpartition(".")[2]


def variable(section: str, key: str) -> str:
    return config_mod.ENV_PREFIX + (f"{section}_{key}" if section else key).upper()


def toml_value(value: object) -> object:
    """A default as it would be written in the TOML file."""
    if value is None:
        return ""
    if isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, Path):
        return "(shipped default policy)" if value == DEFAULT_POLICY_FILE else str(value)
    if isinstance(value, config_mod.HostPort):
        return str(value)
    if isinstance(value, ipaddress.IPv4Network | ipaddress.IPv6Network):
        return str(value)
    if isinstance(value, tuple):
        return [toml_value(v) for v in value]
    raise TypeError(f"no TOML form for {type(value).__name__}")


def settings() -> Iterator[Setting]:
    """Every setting in file order: top-level keys, then each section."""
    defaults = config_mod.Config()
    kinds = config_mod.settings_kinds()
    for section, names in kinds.items():
        holder = getattr(defaults, section) if section else defaults
        declared = {f.name for f in fields(holder)}
        for name, kind in names.items():
            if name not in declared:
                continue
            key = f"{section}.{name}" if section else name
            yield Setting(
                key,
                variable(section, name),
                kind,
                toml_value(getattr(holder, name)),
                MEANINGS.get(key, UNDOCUMENTED),
            )


def variables() -> dict[str, str]:
    """Every PHI_RELAY_* variable the relay reads, with its meaning."""
    out = {s.variable: s.meaning for s in settings()}
    out.update(OTHER_VARIABLES)
    return out


def _cell(value: object) -> str:
    if value == "" or value == []:
        return "(empty)"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, list):
        return "`" + ", ".join(str(v) for v in value) + "`"
    return f"`{value}`"


def markdown(flags: dict[str, str]) -> str:
    """docs/configuration.md: every setting with its variable, flag, default and meaning.

    `flags` maps "section.key" to the `serve` flag that sets it (relay.cli.serve).
    """
    out = [
        "# Configuration",
        "",
        "<!-- Generated by scripts/generate.py from relay/config.py and relay/config_doc.py;",
        "     do not edit by hand (a test compares this file with the code). -->",
        "",
        "Sources, lowest first: defaults < the TOML file (`--config FILE`, else",
        "`$PHI_RELAY_CONFIG`) < `PHI_RELAY_*` variables < `serve` flags. Admin commands",
        "(`consent`, `optout`, `roster`, `audit`, `user`, `keys`) read the same sources.",
        "A `PHI_RELAY_*` variable that is not listed here is refused at start.",
        "`phi-relay init DIR` writes a file with every setting below, commented out.",
        "Relative paths are relative to the working directory of the process.",
        "",
    ]
    section: str | None = None
    for s in settings():
        if s.section != section:
            section = s.section
            title = f"`[{section}]`" if section else "Top level"
            out += ["", f"## {title}", ""]
            out += ["| key | variable | flag | default | meaning |", "|---|---|---|---|---|"]
        flag = f"`{flags[s.key]}`" if s.key in flags else ""
        out.append(f"| `{s.name}` | `{s.variable}` | {flag} | {_cell(s.default)} | {s.meaning} |")
    out += ["", "## Other variables", "", "| variable | meaning |", "|---|---|"]
    out += [f"| `{name}` | {meaning} |" for name, meaning in OTHER_VARIABLES.items()]
    return "\n".join(out) + "\n"
