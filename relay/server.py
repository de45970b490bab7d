"""Assemble and run the relay: runtime, SMTP listeners, HTTP endpoint, signals, reload, shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import sqlite3
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import structlog

from relay import config as config_mod
from relay import earlystop, eventloop, keys, malloc, rules, startup, tlsbuffers
from relay.audit import AuditError, AuditLog
from relay.audit.names import chain_path, head_name
from relay.certs import load_pair, server_context
from relay.config import Config, HostPort
from relay.consent import open_store
from relay.consent.api import ConsentStore, StoreError
from relay.dedup import Dedup, DedupError, DedupStore
from relay.delivery import (
    CaptureUpstream,
    Connector,
    SmtpUpstream,
    UpstreamError,
    client_tls_context,
)
from relay.dkim import DkimError, Signer
from relay.flow import Runtime
from relay.links import make_link_maker
from relay.metrics import Metrics
from relay.phi import default_detector
from relay.phi.roster import Roster
from relay.policy.base import ConfigError, PolicyDeps
from relay.pool import Pool, PoolKey, PoolLimits
from relay.session import Shared, factory
from relay.sharedlimits import SharedCounters, shared_limits
from relay.slot import READY, WorkerSlot
from relay.spool.retry import Backoff, Retrier
from relay.spool.store import Spool, SpoolError
from relay.startup import StartupError as StartupError  # re-exported for the CLI
from relay.startup import StateLock
from relay.tokens import TokenCodec
from relay.users import Users, UsersFileError
from relay.worker import Decisions

log = structlog.get_logger("relay.server")
ReadinessMap = dict[str, Callable[[], Awaitable[None]]]

LISTEN_BACKLOG = 1024  # the kernel's queue of connections not yet accepted, per listener


def _key(cfg: Config, name: str) -> bytes:
    try:
        return keys.load(cfg.state_dir, name)
    except keys.KeyError_ as exc:
        raise StartupError(f"key: {exc}") from exc


def pool_key(cfg: Config) -> PoolKey:
    u = cfg.upstream
    if u.capture:
        return PoolKey("capture", 0, "local", str(cfg.capture_dir), "", "", "")
    password = str(u.password_file) if u.password_file else "env" if u.username else ""
    return PoolKey(
        u.host,
        u.port,
        u.tls,
        str(u.ca_file or ""),
        u.hostname or cfg.server.hostname,
        u.username,
        password,
    )


def make_connector(cfg: Config) -> Connector:
    u = cfg.upstream
    if u.capture:
        return CaptureUpstream(cfg.capture_dir)
    return SmtpUpstream(
        host=u.host,
        port=u.port,
        implicit_tls=u.tls == "implicit",
        tls_context=_upstream_tls(cfg),
        timeout=u.timeout,
        local_hostname=u.hostname or cfg.server.hostname,
        username=u.username,
        password=config_mod.upstream_password(u),
    )


def _upstream_tls(cfg: Config) -> ssl.SSLContext:
    try:
        return client_tls_context(cfg.upstream.ca_file)
    except (OSError, ssl.SSLError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise StartupError(
            f"upstream.ca_file {cfg.upstream.ca_file}: cannot be loaded ({reason}); "
            "give a PEM CA bundle (--upstream-ca) or leave it empty for the system CAs"
        ) from exc


def bind_error(exc: OSError, where: HostPort, key: str, flag: str) -> StartupError:
    reason = os.strerror(exc.errno) if exc.errno else str(exc)
    return StartupError(f"cannot listen on {where} ({key}): {reason}; choose another {flag}")


def _share(limit: int, workers: int) -> int:
    """One worker's part of a relay-wide connection limit (rounded up; 0 stays 0)."""
    return -(-limit // workers)


@dataclass
class Services:
    """Long-lived pieces that survive a reload: the store, keys, metrics, dedup, audit."""

    store: ConsentStore
    metrics: Metrics
    codec: TokenCodec
    audit: AuditLog
    dedup: DedupStore
    audit_key: bytes
    decisions: Decisions
    spool: Spool | None = None  # the opt-in spool (relay/spool); None: off
    # Worker processes sharing the upstream limits (relay.supervisor); each has a pool.
    workers: int = 1
    # Upstream connection pools by upstream and credentials: a reload that keeps the
    # upstream keeps its open connections.
    pools: dict[tuple[PoolKey, PoolLimits], Pool] = field(default_factory=dict)
    retiring: set[asyncio.Task[None]] = field(default_factory=set)

    def pool(self, cfg: Config) -> Pool:
        u = cfg.upstream
        # The connection limits are the relay's, not each worker's: a worker gets its share.
        limits = PoolLimits(
            _share(u.pool_size, self.workers),
            u.pool_idle_timeout,
            u.pool_check_after,
            _share(u.pool_max_connections, self.workers),
            u.pool_wait_timeout,
        )
        key = (pool_key(cfg), limits)
        pool = self.pools.get(key)
        if pool is None:
            pool = self.pools[key] = Pool(make_connector(cfg), limits, self.metrics)
        return pool

    async def retire_pools(self, keep: Pool | None) -> None:
        """Close the pools a reload left behind (in-flight leases finish on their own)."""
        for key, pool in list(self.pools.items()):
            if pool is not keep:
                del self.pools[key]
                await pool.close()


def build_runtime(cfg: Config, services: Services) -> Runtime:
    """Everything that a reload replaces: config, policies, upstream, links."""
    try:
        roster = Roster.load(cfg.state_dir)
    except keys.KeyError_ as exc:
        raise StartupError(f"roster key: {exc}") from exc
    except sqlite3.DatabaseError as exc:
        raise StartupError(
            f"{cfg.state_dir / 'roster.db'}: not a readable SQLite database ({exc}); "
            "move it aside and run `phi-relay roster import` again"
        ) from exc
    deps = PolicyDeps(
        policy_dir=cfg.policy_file.parent,
        state_dir=cfg.state_dir,
        detector=default_detector(roster),
        store=services.store,
    )
    ruleset = rules.load(cfg.policy_file, deps)
    try:
        signer = Signer.load(cfg.dkim.keys, cfg.dkim.stale_signature)
    except ValueError as exc:
        raise ConfigError(cfg.source, "dkim.keys", str(exc)) from exc
    except DkimError as exc:
        raise StartupError(f"dkim.keys: {exc}") from exc
    try:
        links = make_link_maker(services.codec, cfg.unsubscribe_base_url, None)
    except ValueError as exc:
        raise ConfigError(cfg.source, "http.base_url", str(exc)) from exc
    return Runtime(
        config=cfg,
        rules=ruleset,
        audit=services.audit,
        metrics=services.metrics,
        upstream=services.pool(cfg),
        links=links,
        dedup=services.dedup,
        detector=deps.detector,
        decisions=services.decisions,
        signer=signer,
        spool=services.spool,
    )


async def _open_dedup(cfg: Config) -> DedupStore:
    """With a PostgreSQL consent store the retry store is there too, shared by replicas."""
    if not cfg.store_url.startswith(("postgresql:", "postgres:")):
        return _dedup(cfg)
    # Imported only here: asyncpg costs every worker process ~4 MB that SQLite never uses.
    from relay.dedup_pg import PostgresDedup

    d = cfg.dedup
    try:
        return await PostgresDedup.open(
            cfg.store_url,
            _key(cfg, "dedup"),
            d.ttl,
            lease=d.claim_lease,
            timeout=d.busy_timeout + 5.0,
        )
    except DedupError as exc:
        raise StartupError(f"consent_store: {exc}; the retry store lives there too") from exc


def _dedup(cfg: Config) -> Dedup:
    path = cfg.state_dir / "dedup.db"
    try:
        d = cfg.dedup
        return Dedup(
            path,
            _key(cfg, "dedup"),
            d.ttl,
            lease=d.claim_lease,
            busy_timeout=d.busy_timeout,
        )
    except sqlite3.DatabaseError as exc:
        raise StartupError(
            f"{path}: not a readable SQLite database ({exc}); move it aside and start again "
            "(a new one is made; a message a client retries within the next days may then "
            "reach a recipient twice)"
        ) from exc
    except OSError as exc:
        raise StartupError(f"{path}: {exc.strerror or exc}") from exc


def _codec(cfg: Config) -> TokenCodec:
    try:
        return TokenCodec(keys.load_list(cfg.state_dir, "unsubscribe"))
    except keys.KeyError_ as exc:
        raise StartupError(f"key: {exc}") from exc
    except ValueError as exc:
        raise StartupError(f"key {keys.key_path(cfg.state_dir, 'unsubscribe')}: {exc}") from exc


def _load_users(cfg: Config) -> Users | None:
    if cfg.server.users_file is None:
        return None
    try:
        return Users.load(cfg.server.users_file)
    except UsersFileError as exc:
        raise StartupError(str(exc)) from exc


def preflight(
    cfg: Config, inherited: ssl.SSLContext | None = None
) -> tuple[ssl.SSLContext, Users | None]:
    """The start-up checks that create nothing: certificate, users file, upstream CA.
    `inherited`: the supervisor's TLS context (shared ticket keys), given this config's
    certificate (a worker restarted after a reload gets the reloaded one)."""
    try:
        if inherited is not None:
            load_pair(inherited, cfg.server.tls_cert, cfg.server.tls_key)
            tls_context = inherited
        else:
            tls_context = server_context(cfg.server.tls_cert, cfg.server.tls_key)
    except (OSError, ssl.SSLError) as exc:
        raise StartupError(
            f"TLS certificate {cfg.server.tls_cert} or key {cfg.server.tls_key} cannot be "
            f"loaded ({exc}); run `phi-relay certs init` or pass --tls-cert/--tls-key"
        ) from exc
    users = _load_users(cfg)
    if not cfg.upstream.capture:
        _upstream_tls(cfg)
    return tls_context, users


def reload_refusal(running: Config, new: Config) -> tuple[str, str] | None:
    """A reload that would quietly weaken a live relay is refused: (code, what and why)."""
    if not running.upstream.capture and new.upstream.capture:
        return (
            "upstream-to-capture",
            f"it would capture mail locally instead of sending it to the upstream "
            f"{running.upstream.host}:{running.upstream.port} (upstream.host is empty in "
            f"{new.source}); restart the relay to change this",
        )
    if (running.spool.enabled, running.spool_dir) != (new.spool.enabled, new.spool_dir):
        # The spool and its retry task are set up at start; a reload cannot move them.
        return (
            "spool-changed",
            f"spool.enabled or spool.dir differs in {new.source}; restart the relay to "
            "change the spool",
        )
    return None


@dataclass
class Relay:
    config: Config
    # Where `config` came from; a reload reads exactly these again.
    sources: config_mod.Sources = field(default_factory=config_mod.Sources)
    services: Services | None = None
    shared: Shared | None = None
    tls_context: ssl.SSLContext | None = None
    servers: list[asyncio.Server] = field(default_factory=list)
    http_runner: object | None = None
    smtp_port: int = 0
    implicit_port: int = 0
    http_port: int = 0
    lock: StateLock | None = None
    retrier: Retrier | None = None
    # Set in a worker process of a supervised relay (relay.supervisor): the supervisor
    # holds the locks and the listening sockets, and made the keys.
    slot: WorkerSlot | None = None
    _opened_store: ConsentStore | None = None
    _counters: SharedCounters | None = None

    async def start(self) -> None:
        # Before any TLS connection: they all read into one buffer (relay/tlsbuffers.py).
        tlsbuffers.install()
        malloc.tune()  # before the first message buffer (relay/malloc.py)
        startup.private_dir(self.config.state_dir)
        if self.slot is None:
            self.lock = startup.lock_state(self.config.state_dir, self.config.audit.file)
        try:
            await self._start()
        except BaseException:
            # A refused start leaves the state as it found it: a store closed cleanly
            # leaves no -wal/-shm files behind (a worker process ends without the
            # interpreter's clean-up that would otherwise close it).
            store, self._opened_store = self._opened_store, None
            if store is not None:
                with contextlib.suppress(Exception):
                    await store.close()
            self._unlock()
            raise

    def _unlock(self) -> None:
        lock, self.lock = self.lock, None
        if lock is not None:
            lock.close()

    async def _start(self) -> None:
        cfg = self.config
        # What earlier runs left, seen before this one opens (and so creates) anything.
        history = startup.has_history(cfg.state_dir, cfg.audit.file)
        # Checks that create nothing come first: a refused start leaves no keys behind.
        self.tls_context, users = preflight(cfg, self.slot.tls_context if self.slot else None)
        try:
            store = self._opened_store = await open_store(cfg.store_url)
        except (ValueError, StoreError) as exc:
            raise StartupError(f"consent_store: {exc}") from exc
        created = startup.ensure_keys(cfg.state_dir, keys.SERVE_KEYS, history)
        if created:
            log.info("created keys for a new state directory", files=[str(p) for p in created])
        spool = self._open_spool(cfg, fresh=bool(created))
        audit_key = _key(cfg, "audit")
        worker = self.slot.worker if self.slot is not None else 0
        workers = self.slot.workers if self.slot is not None else 1
        audit_file = chain_path(cfg.audit.file, worker) if cfg.audit.file else None
        try:
            audit = AuditLog(
                audit_file,
                key=audit_key,
                stdout=cfg.audit.stdout,
                fsync=cfg.audit.fsync,
                max_bytes=cfg.audit.max_bytes or None,
                head=cfg.state_dir / head_name(worker),
                replica=cfg.replica_id,
                worker=worker,
                write_timeout=cfg.audit.write_timeout,
            )
        except AuditError as exc:
            raise StartupError(f"audit.file: {exc}; choose a writable --audit-log") from exc
        self.services = Services(
            store=store,
            metrics=Metrics(shared_dir=self.slot.metrics_dir if self.slot else None),
            codec=_codec(cfg),
            audit=audit,
            dedup=await _open_dedup(cfg),
            audit_key=audit_key,
            # The relay's decision workers, shared out: with N worker processes each starts
            # its part (rounded up), not N times the configured number.
            decisions=Decisions(
                _share(cfg.server.decision_workers, workers),
                idle_timeout=cfg.server.decision_idle_timeout,
            ),
            spool=spool,
            workers=workers,
        )
        runtime = build_runtime(cfg, self.services)
        self.shared = Shared(runtime, users, self.tls_context)
        if self.slot is not None:
            # Sessions and AUTH failures count over every worker, not just this one.
            self._counters, self.shared.limiter, self.shared.throttle = shared_limits(
                self.slot.limits_db, self.slot.worker, cfg.server
            )
        s = cfg.server
        if self.slot is not None:
            await self._serve_slot(self.slot, runtime)
        else:
            await self._listen(runtime)
        self._announce(runtime)
        self._start_retrier()
        audit.event(
            "relay-start",
            mode=s.mode,
            policy_file=str(cfg.policy_file),
            upstream=runtime.upstream.name,
        )
        if self.slot is not None and self.slot.previous_exit:
            audit.event(
                "worker-restart",
                previous_exit=self.slot.previous_exit,
                restarts=self.slot.restarts,
            )

    async def _serve_slot(self, slot: WorkerSlot, runtime: Runtime) -> None:
        """A supervised worker: serve the listening sockets the supervisor bound."""
        assert self.shared is not None
        loop = asyncio.get_running_loop()
        s = self.config.server
        # On a listening socket all workers share, asyncio would accept up to `backlog`
        # queued connections per wake-up, so one worker took a whole burst; it accepts one
        # at a time then (asyncio reuses `backlog` for that batch), while the kernel's
        # queue keeps its full length (listen() again below).
        batch = LISTEN_BACKLOG if s.reuse_port else 1
        for sock in slot.smtp:
            self.servers.append(
                await loop.create_server(
                    factory(self.shared, implicit_tls=False, hostname=s.hostname),
                    sock=sock,
                    backlog=batch,
                )
            )
        proxied = bool(s.proxy_protocol_from)
        for sock in slot.implicit:
            self.servers.append(
                await loop.create_server(
                    factory(
                        self.shared,
                        implicit_tls=True,
                        hostname=s.hostname,
                        tls_after_accept=proxied,
                    ),
                    sock=sock,
                    ssl=None if proxied else self.tls_context,
                    ssl_handshake_timeout=None if proxied else s.client_timeout,
                    backlog=batch,
                )
            )
        for sock in (*slot.smtp, *slot.implicit):
            sock.listen(LISTEN_BACKLOG)
        self.smtp_port = slot.smtp[0].getsockname()[1]
        if slot.implicit:
            self.implicit_port = slot.implicit[0].getsockname()[1]
        if slot.http:
            await self._start_http(runtime, sock=slot.http[0])

    async def _listen(self, runtime: Runtime) -> None:
        assert self.shared is not None
        cfg = self.config
        loop = asyncio.get_running_loop()
        s = cfg.server
        try:
            smtp = await loop.create_server(
                factory(self.shared, implicit_tls=False, hostname=s.hostname),
                host=s.listen.host,
                port=s.listen.port,
                reuse_address=True,
            )
        except OSError as exc:
            raise bind_error(exc, s.listen, "server.listen", "--listen") from exc
        self.servers.append(smtp)
        self.smtp_port = smtp.sockets[0].getsockname()[1]
        if s.implicit_tls_listen is not None:
            # Behind a balancer the PROXY header precedes the TLS handshake: the session
            # reads it, then starts TLS itself.
            proxied = bool(s.proxy_protocol_from)
            try:
                implicit = await loop.create_server(
                    factory(
                        self.shared,
                        implicit_tls=True,
                        hostname=s.hostname,
                        tls_after_accept=proxied,
                    ),
                    host=s.implicit_tls_listen.host,
                    port=s.implicit_tls_listen.port,
                    ssl=None if proxied else self.tls_context,
                    reuse_address=True,
                    ssl_handshake_timeout=None if proxied else s.client_timeout,
                )
            except OSError as exc:
                raise bind_error(
                    exc,
                    s.implicit_tls_listen,
                    "server.implicit_tls_listen",
                    "--implicit-tls-listen",
                ) from exc
            self.servers.append(implicit)
            self.implicit_port = implicit.sockets[0].getsockname()[1]
        if cfg.http.listen is not None:
            try:
                await self._start_http(runtime)
            except OSError as exc:
                raise bind_error(exc, cfg.http.listen, "http.listen", "--http-listen") from exc

    def _open_spool(self, cfg: Config, *, fresh: bool) -> Spool | None:
        if not cfg.spool.enabled:
            return None
        if not keys.present(cfg.state_dir, keys.SPOOL_KEY):
            if not fresh:
                # Keys are made only on a new state directory or by an explicit command.
                raise StartupError(
                    f"spool.enabled needs the spool key {keys.key_path(cfg.state_dir, 'spool')}:"
                    f" run `phi-relay keys init --spool --state-dir {cfg.state_dir}` once"
                    f" (or set {keys.env_name(keys.SPOOL_KEY)})"
                )
            keys.init(cfg.state_dir, [keys.SPOOL_KEY])
        try:
            return Spool(cfg.spool_dir, _key(cfg, keys.SPOOL_KEY))
        except SpoolError as exc:
            raise StartupError(f"spool.dir: {exc}; choose a writable --spool-dir") from exc

    def _start_retrier(self) -> None:
        assert self.services is not None
        if self.services.spool is None:
            return
        sp = self.config.spool
        self.retrier = Retrier(
            self.services.spool,
            lambda: self.runtime,
            Backoff(sp.min_backoff, sp.max_backoff, sp.lifetime),
            sp.scan_interval,
        )
        self.retrier.start()

    async def _start_http(self, runtime: Runtime, sock: socket.socket | None = None) -> None:
        from relay.web import NotReady, bound_port, build_app, start_http

        assert self.services is not None and self.config.http.listen is not None

        async def upstream_ready() -> None:
            try:
                await self.runtime.upstream.ping()
            except UpstreamError as err:
                # Our own words for what failed; an upstream's reply text stays out.
                said = err.outcome in ("refused", "deferred")
                why = f"it answered {err.reply.code}" if said else err.reply.text
                raise NotReady(f"upstream {err.outcome} ({err.reply.status}): {why}") from err

        app = build_app(
            store=self.services.store,
            codec=self.services.codec,
            metrics=self.services.metrics,
            readiness=self._readiness(upstream_ready),
            organisation=runtime.rules.organisation.name,
            readiness_ttl=self.config.http.readiness_ttl,
        )
        listen = self.config.http.listen
        h = self.config.http
        runner = await start_http(
            app,
            listen.host,
            listen.port,
            max_connections=h.max_connections,
            header_timeout=h.header_timeout,
            # The SMTP listener's context: a reload's new certificate serves both.
            ssl_context=self.tls_context if h.tls else None,
            sock=sock,
        )
        self.http_runner = runner
        self.http_port = bound_port(runner)

    def _readiness(self, upstream_ready: Callable[[], Awaitable[None]]) -> ReadinessMap:
        from relay.web import NotReady

        assert self.services is not None
        checks: ReadinessMap = {"upstream": upstream_ready, "store": self.services.store.ping}
        spool = self.services.spool
        if spool is not None:
            # With the spool an upstream outage is what the spool is for: mail is still
            # taken (and queued), so readiness is the spool's room, not the upstream.
            del checks["upstream"]
            limit = self.config.spool.max_messages

            async def spool_ready() -> None:
                size, _ = await asyncio.to_thread(spool.stats)
                if size > limit:
                    raise NotReady(f"spool holds {size} messages (spool.max_messages {limit})")

            checks["spool"] = spool_ready
        return checks

    @property
    def runtime(self) -> Runtime:
        assert self.shared is not None
        return self.shared.runtime

    def _announce(self, runtime: Runtime) -> None:
        cfg = self.config
        log.info(
            "phi-relay listening",
            smtp=f"{cfg.server.listen.host}:{self.smtp_port}",
            implicit_tls=f"{cfg.server.implicit_tls_listen.host}:{self.implicit_port}"
            if cfg.server.implicit_tls_listen
            else None,
            http=f"{cfg.http.listen.host}:{self.http_port}"
            if cfg.http.listen and self.http_port
            else None,
            mode=cfg.server.mode,
            event_loop=eventloop.name(asyncio.get_running_loop()),
            policies=[p.name for p in runtime.rules.policies],
        )
        if cfg.upstream.capture:
            log.warning(
                "NO UPSTREAM CONFIGURED: delivered mail is CAPTURED to a local folder, not sent",
                folder=str(cfg.capture_dir.resolve()),
                fix="set --upstream HOST:PORT (or upstream.host) to relay to your provider",
            )
        for net in cfg.server.plaintext_networks:
            log.warning(
                "plaintext SMTP allowed from this network (no STARTTLS); it is trusted "
                "(may relay without AUTH)",
                network=str(net),
            )
        if cfg.server.mode == "monitor":
            log.warning("MONITOR MODE: policies are audited but only TLS rules are enforced")
        if not cfg.server.trusted_networks and cfg.server.users_file is None:
            log.warning(
                "no trusted networks and no users file: every client will be refused",
                fix="pass --trusted-network CIDR or --users-file FILE",
            )

    def reload(self) -> bool:
        """SIGHUP: re-read configuration and policies. On any error keep the running ones."""
        assert self.shared is not None and self.services is not None
        try:
            cfg = self.sources.load()
            refusal = reload_refusal(self.config, cfg)
            if refusal is not None:
                return self._refuse_reload(*refusal)
            runtime = build_runtime(cfg, self.services)
            users = _load_users(cfg)
            if self.tls_context is not None:
                # Into the live context (its ticket keys stay), only if the pair loads.
                load_pair(self.tls_context, cfg.server.tls_cert, cfg.server.tls_key)
        except (ConfigError, StartupError, OSError, ssl.SSLError, ValueError) as exc:
            log.error("reload failed; keeping the running configuration", error=str(exc))
            self.services.metrics.config_reload(False)
            self.services.audit.event("config-reload", ok=False, error=type(exc).__name__)
            return False
        self.shared.runtime = runtime
        # The old pool's leases finish on their connections; then those connections close.
        task = asyncio.get_running_loop().create_task(self.services.retire_pools(runtime.upstream))
        self.services.retiring.add(task)
        task.add_done_callback(self.services.retiring.discard)
        self.shared.users = users
        self.config = cfg
        self.services.audit.reopen()
        self.services.metrics.config_reload(True)
        self.services.audit.event("config-reload", ok=True, policy_file=str(cfg.policy_file))
        log.info("configuration reloaded", policies=[p.name for p in runtime.rules.policies])
        return True

    def _refuse_reload(self, code: str, message: str) -> bool:
        assert self.services is not None
        log.error(f"reload refused: {message}; keeping the running configuration")
        self.services.metrics.config_reload(False, refused=True)
        self.services.audit.event("config-reload", ok=False, error=code)
        return False

    async def _wait_for_deliveries(self) -> None:
        """A message already deciding or going upstream at the drain timeout keeps running
        (its client is gone); the audit log stays open until its record is written."""
        assert self.shared is not None
        tasks = set(self.shared.deliveries)
        if not tasks:
            return
        cfg = self.config
        grace = cfg.server.policy_timeout + 4 * cfg.upstream.timeout + 30  # as on_data's timer
        log.warning("waiting for deliveries under way", count=len(tasks), at_most_seconds=grace)
        await asyncio.wait(tasks, timeout=grace)

    async def stop(self) -> None:
        """Stop accepting, let transactions in flight finish (bounded), then close."""
        if self.shared is None:
            return
        self.shared.closing = True
        self.shared.closing_since = asyncio.get_running_loop().time()
        for srv in self.servers:
            srv.close()
        deadline = asyncio.get_running_loop().time() + self.config.server.shutdown_timeout
        # Only a session in flight (or not yet told 421) holds the stop: a TLS close waits
        # for the client's close_notify, which an idle pooled client never sends.
        while (
            any(s.in_flight or not s.closing for s in self.shared.sessions)
            and asyncio.get_running_loop().time() < deadline
        ):
            for sess in list(self.shared.sessions):
                await sess.shutdown()
            await asyncio.sleep(0.05)
        for sess in list(self.shared.sessions):
            await sess.shutdown(force=True)
        await self._wait_for_deliveries()
        for srv in self.servers:
            try:
                async with asyncio.timeout(2):
                    await srv.wait_closed()
            except TimeoutError:
                pass
        if self.retrier is not None:
            await self.retrier.stop()
        if self.http_runner is not None:
            await self.http_runner.cleanup()  # type: ignore[attr-defined]
        if self.services is not None:
            await self.services.retire_pools(None)
            try:
                self.services.audit.event("relay-stop")
            except AuditError as exc:
                # Stopping goes on: the stores below must still be closed cleanly.
                log.error("audit write failed at stop", error=str(exc))
            self.services.audit.close()
            self.services.dedup.close()
            await self.services.store.close()
            await self.services.decisions.close()
        if self._counters is not None:
            self._counters.close()
        self._unlock()


async def run(relay: Relay) -> None:
    """Run until SIGTERM/SIGINT; SIGHUP reloads."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    loop.add_signal_handler(signal.SIGHUP, relay.reload)
    if earlystop.taken():
        stop.set()  # asked before these handlers were set: start, then stop at once
    try:
        await relay.start()
    except (StartupError, ConfigError, OSError):
        raise
    except Exception as exc:
        # Whatever else start-up trips over is still one line for the operator.
        raise StartupError(f"cannot start: {type(exc).__name__}: {exc}") from exc
    if relay.slot is not None:
        # The supervisor writes the ready file once every worker is up, and a worker
        # drains when the supervisor is gone (its end of the lifeline pipe closed).
        os.write(relay.slot.ready_fd, READY)
        loop.add_reader(relay.slot.lifeline_fd, stop.set)
        ready_file = None
    else:
        ready_file = os.environ.get("PHI_RELAY_READY_FILE")
    if ready_file:
        # Lets a supervisor or a test learn the bound ports (useful with port 0).
        ports = f"{relay.smtp_port} {relay.implicit_port} {relay.http_port}\n"
        await asyncio.to_thread(Path(ready_file).write_text, ports)
    await stop.wait()
    log.info("shutting down", timeout=relay.config.server.shutdown_timeout)
    await relay.stop()
