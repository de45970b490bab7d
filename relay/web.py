"""The relay's HTTP side: one-click unsubscribe pages, /healthz, /readyz and /metrics.

Unsubscribe (RFC 8058, docs/unsubscribe.md): GET only shows a page with a button,
because link scanners and mail previews fetch every URL in a message; POST records
the opt-out at once. Pages name the category but never the address, since a
forwarded message carries the same link. The token in the path is a pseudonymous
identifier, so the access log records the route pattern and status only.
"""

from __future__ import annotations

import asyncio
import html
import json
import logging
import socket
import ssl
import time
import traceback
from collections.abc import Awaitable, Callable, Mapping

import structlog
from aiohttp import web
from aiohttp.abc import AbstractAccessLogger
from aiohttp.typedefs import Handler
from aiohttp.web_request import BaseRequest
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from relay.consent.api import ConsentStore
from relay.httpguard import GuardedSite
from relay.metrics import Metrics
from relay.tokens import Claims, ExpiredToken, InvalidToken, TokenCodec

ReadinessCheck = Callable[[], Awaitable[None]]


class NotReady(Exception):
    """Raised by a readiness check with a reason for the operator (no PHI, no secrets)."""


# A one-click body is 26 bytes; nothing legitimate sends more than a small form.
MAX_BODY = 4096
STORE_TIMEOUT = 5.0
CHECK_TIMEOUT = 2.0
READINESS_TTL = 15.0
RETRY_AFTER = "120"
SOURCE = "one-click"

SECURITY_HEADERS = {
    # form-action does not fall back to default-src, so it is named explicitly.
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; "
        "frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
    "X-Frame-Options": "DENY",
    "X-Robots-Tag": "noindex, nofollow",
}

_STORE: web.AppKey[ConsentStore] = web.AppKey("store")
_CODEC: web.AppKey[TokenCodec] = web.AppKey("codec")
_METRICS: web.AppKey[Metrics] = web.AppKey("metrics")
_READINESS: web.AppKey[Mapping[str, CachedCheck]] = web.AppKey("readiness")
_ORGANISATION: web.AppKey[str] = web.AppKey("organisation")
_BODY_TIMEOUT: web.AppKey[float] = web.AppKey("body_timeout")

log = structlog.get_logger("relay.web")

_STYLE = (
    "body{font-family:system-ui,sans-serif;max-width:36em;margin:3em auto;padding:0 1em;"
    "line-height:1.5;color:#222}button{font-size:1.1em;padding:.5em 1.5em;cursor:pointer}"
)


def _route(request: BaseRequest) -> str:
    """The matched route pattern (`/u/{token}`), never the path that holds the token."""
    try:
        resource = request.match_info.route.resource  # type: ignore[attr-defined]
    except (AttributeError, AssertionError):
        # A BaseRequest (no routing) or a request refused while parsing: no route matched.
        return "unmatched"
    return resource.canonical if resource is not None else "unmatched"


class _RedactServerErrors(logging.Filter):
    """Keep aiohttp's error records but drop their messages.

    aiohttp logs a malformed request with its raw request line, which holds the token.
    The record keeps the exception's type and traceback frames (code, not data).
    """

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if exc is None:
            record.msg, record.args = "http server: %s", (record.levelname.lower(),)
        else:
            frames = "".join(traceback.format_tb(exc.__traceback__))
            record.msg, record.args = "http server error: %s\n%s", (type(exc).__name__, frames)
        record.exc_info = None
        record.exc_text = None
        return True


server_log = logging.getLogger("relay.web.server")
server_log.addFilter(_RedactServerErrors())


class AccessLog(AbstractAccessLogger):
    """Method, route pattern, status and duration: no path, query, peer or user agent."""

    def log(self, request: BaseRequest, response: web.StreamResponse, time: float) -> None:
        log.info(
            "http.request",
            method=request.method,
            route=_route(request),
            status=response.status,
            ms=round(time * 1000, 1),
        )


def _page(title: str, paragraphs: list[str], *, status: int, form: bool = False) -> web.Response:
    """A plain, self-contained HTML page. `paragraphs` are plain text and are escaped here."""
    body = "".join(f"<p>{html.escape(p)}</p>" for p in paragraphs)
    if form:
        # The hidden field makes the button's post the same as an RFC 8058 client's;
        # an empty action posts back to this very URL.
        body += (
            '<form method="post" action="">'
            '<input type="hidden" name="List-Unsubscribe" value="One-Click">'
            '<button type="submit">Unsubscribe</button></form>'
        )
    text = (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        '<meta name="robots" content="noindex, nofollow">'
        f"<title>{html.escape(title)}</title><style>{_STYLE}</style></head>"
        f"<body><h1>{html.escape(title)}</h1>{body}</body></html>"
    )
    return web.Response(text=text, status=status, content_type="text/html", charset="utf-8")


def _describe(category: str, organisation: str) -> str:
    what = f"{category.replace('-', ' ')} email"
    return f"{what} from {organisation}" if organisation else what


_CARE_NOT_AFFECTED = "Messages about your care, such as appointment reminders, are not affected."


def _invalid_page() -> web.Response:
    return _page(
        "This unsubscribe link is not valid",
        [
            "The link may have been cut short or changed when it was copied, "
            "or it belongs to an older sender configuration. Nothing was changed.",
            "Open the unsubscribe link from the email again, or use the link in a more "
            "recent email. If that does not work, contact the sender and ask to be removed.",
        ],
        status=400,
    )


def _expired_page() -> web.Response:
    return _page(
        "This unsubscribe link has expired",
        [
            "Unsubscribe links stay valid for a limited time. Nothing was changed.",
            "Use the unsubscribe link in a more recent email from the sender, "
            "or contact them and ask to be removed.",
        ],
        status=400,
    )


def _open(request: web.Request) -> Claims | str:
    """The token's claims, or "expired" / "invalid"."""
    try:
        return request.app[_CODEC].open(request.match_info["token"])
    except ExpiredToken:
        return "expired"
    except InvalidToken:
        return "invalid"


def _refused(request: web.Request, result: str) -> web.Response:
    request.app[_METRICS].unsubscribe("unknown", result)
    return _expired_page() if result == "expired" else _invalid_page()


async def unsubscribe_page(request: web.Request) -> web.Response:
    """GET: explain and offer the button. Changes nothing."""
    metrics = request.app[_METRICS]
    claims = _open(request)
    if isinstance(claims, str):
        return _refused(request, claims)
    metrics.unsubscribe(claims.category, "shown")
    what = _describe(claims.category, request.app[_ORGANISATION])
    return _page(
        "Unsubscribe",
        [
            f"Press the button to stop receiving {what}.",
            "Nothing changes until you press it.",
            _CARE_NOT_AFFECTED,
        ],
        status=200,
        form=True,
    )


async def unsubscribe(request: web.Request) -> web.Response:
    """POST (RFC 8058 one-click, or the page's button): record the opt-out now."""
    metrics = request.app[_METRICS]
    claims = _open(request)
    if isinstance(claims, str):
        return _refused(request, claims)
    # The POST itself is the request: RFC 8058 clients send List-Unsubscribe=One-Click
    # and so does the button, but a client that sends something else still meant it.
    # Reading the body enforces the size limit (413 above MAX_BODY).
    try:
        async with asyncio.timeout(request.app.get(_BODY_TIMEOUT, STORE_TIMEOUT)):
            await request.read()
    except TimeoutError:
        # Headers came, the body never did: a slow client must not hold the connection.
        raise web.HTTPRequestTimeout() from None
    store = request.app[_STORE]
    try:
        async with asyncio.timeout(STORE_TIMEOUT):
            await store.add_optout(claims.recipient, claims.category, SOURCE)
    except Exception as exc:
        # Never 200 unless it is recorded: a 503 makes the mail provider retry later.
        log.warning("unsubscribe.store_failed", error=type(exc).__name__)
        metrics.unsubscribe(claims.category, "store_error")
        response = _page(
            "We could not record your request",
            [
                "Something went wrong on our side and nothing was changed.",
                "Please try again in a few minutes.",
            ],
            status=503,
        )
        response.headers["Retry-After"] = RETRY_AFTER
        return response
    metrics.unsubscribe(claims.category, "ok")
    what = _describe(claims.category, request.app[_ORGANISATION])
    return _page(
        "You are unsubscribed",
        [f"You will no longer receive {what}. This took effect immediately.", _CARE_NOT_AFFECTED],
        status=200,
    )


async def healthz(request: web.Request) -> web.Response:
    return web.Response(text="ok\n")


async def _run_check(check: ReadinessCheck) -> str:
    try:
        async with asyncio.timeout(CHECK_TIMEOUT):
            await check()
    except TimeoutError:
        return "timeout"
    except NotReady as exc:
        return f"error: {exc}"
    except Exception as exc:
        # The class name only: a message could hold a host name or worse.
        return f"error: {type(exc).__name__}"
    return "ok"


class CachedCheck:
    """A readiness check whose result is kept for `ttl` seconds.

    Orchestrators probe every few seconds, and the upstream check is a whole SMTP login:
    without the cache every probe of every replica would log in to the provider. Probes
    that arrive while a check runs wait for that one check instead of starting their own.
    """

    def __init__(
        self,
        check: ReadinessCheck,
        ttl: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.check = check
        self.ttl = ttl
        self.clock = clock
        self.state = ""
        self.checked_at = float("-inf")
        self.runs = 0
        self._lock = asyncio.Lock()

    async def result(self) -> tuple[str, float]:
        """The state ("ok", "timeout", "error: why") and its age in seconds."""
        async with self._lock:
            if self.clock() - self.checked_at >= self.ttl:
                self.runs += 1
                self.state = await _run_check(self.check)
                self.checked_at = self.clock()
            return self.state, self.clock() - self.checked_at


async def readyz(request: web.Request) -> web.Response:
    """200 when every named check passes, else 503 naming the failures and why.

    Each check's result is cached (http.readiness_ttl); `age` says how old each one is.
    """
    checks = request.app[_READINESS]
    names = sorted(checks)
    results = await asyncio.gather(*(checks[n].result() for n in names))
    states = {n: state for n, (state, _) in zip(names, results, strict=True)}
    ages = {n: round(age, 1) for n, (_, age) in zip(names, results, strict=True)}
    failing = [n for n in names if states[n] != "ok"]
    if failing:
        log.warning("readiness.failed", checks={n: states[n] for n in failing})
    body: dict[str, object] = {
        "status": "not ready" if failing else "ready",
        "checks": states,
        "age": ages,
    }
    if failing:
        body["failing"] = failing
        body["reason"] = "; ".join(f"{n}: {states[n]}" for n in failing)
    return web.Response(
        text=json.dumps(body, sort_keys=True) + "\n",
        status=503 if failing else 200,
        content_type="application/json",
    )


async def metrics_page(request: web.Request) -> web.Response:
    payload = generate_latest(request.app[_METRICS].registry)
    return web.Response(body=payload, headers={"Content-Type": CONTENT_TYPE_LATEST})


@web.middleware
async def _contain_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Unexpected errors become a plain 500 with a log line that holds no path or message."""
    try:
        return await handler(request)
    except web.HTTPException:
        raise
    except Exception as exc:
        log.error("http.error", route=_route(request), error=type(exc).__name__)
        return _page(
            "Something went wrong",
            ["Nothing was changed. Please try again in a few minutes."],
            status=500,
        )


async def _security_headers(request: web.Request, response: web.StreamResponse) -> None:
    response.headers.update(SECURITY_HEADERS)


def build_app(
    *,
    store: ConsentStore,
    codec: TokenCodec,
    metrics: Metrics,
    readiness: Mapping[str, ReadinessCheck],
    organisation: str = "",
    readiness_ttl: float = READINESS_TTL,
) -> web.Application:
    """The application; `readiness` maps a check's name ("upstream", "store") to a probe,
    whose result is kept for `readiness_ttl` seconds."""
    app = web.Application(client_max_size=MAX_BODY, middlewares=[_contain_errors])
    app[_STORE] = store
    app[_CODEC] = codec
    app[_METRICS] = metrics
    app[_READINESS] = {name: CachedCheck(c, readiness_ttl) for name, c in readiness.items()}
    app[_ORGANISATION] = organisation
    app.on_response_prepare.append(_security_headers)
    app.router.add_get("/u/{token}", unsubscribe_page)
    app.router.add_post("/u/{token}", unsubscribe)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics_page)
    return app


async def start_http(
    app: web.Application,
    host: str,
    port: int,
    *,
    max_connections: int = 100,
    header_timeout: float = 10.0,
    ssl_context: ssl.SSLContext | None = None,
    sock: socket.socket | None = None,
) -> web.AppRunner:
    """Serve `app` on host:port (0: a free port, see bound_port); stop with runner.cleanup().

    `sock`: a listening socket to serve on instead (a supervised worker's, bound once).

    At most `max_connections` at once; each gets `header_timeout` seconds for its TLS
    handshake, for each request's headers, and as keep-alive idle time between requests.
    """
    app[_BODY_TIMEOUT] = header_timeout
    runner = web.AppRunner(
        app,
        access_log_class=AccessLog,
        logger=server_log,
        shutdown_timeout=5.0,
        # aiohttp starts this timer when a connection opens and after every response, and
        # closes a connection still waiting for a whole request when it fires.
        keepalive_timeout=header_timeout,
    )
    await runner.setup()
    site = GuardedSite(
        runner,
        host,
        port,
        max_connections=max_connections,
        handshake_timeout=header_timeout,
        ssl_context=ssl_context,
        sock=sock,
    )
    try:
        await site.start()
    except BaseException:
        await runner.cleanup()
        raise
    log.info("http.listening", host=host, port=bound_port(runner))
    return runner


def bound_port(runner: web.AppRunner) -> int:
    """The port the first listening socket is bound to."""
    address = runner.addresses[0]
    return int(address[1])
