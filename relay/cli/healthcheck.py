"""`phi-relay healthcheck`: GET /healthz on the configured HTTP listener (container probes).

The port and scheme come from the same configuration `serve` reads (--config,
PHI_RELAY_CONFIG, PHI_RELAY_HTTP_LISTEN, PHI_RELAY_HTTP_TLS), so a Docker HEALTHCHECK
keeps working when they change. Over TLS the certificate is not verified: the probe
talks to its own container on loopback, with a certificate issued for other names.
"""

from __future__ import annotations

import argparse
import ssl
import sys
import urllib.error
import urllib.request
from typing import Any

from relay.cli import EXIT_OK, EXIT_REFUSED, CliError, loader

_WILDCARDS = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}  # noqa: S104 - mapped away


def register(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "healthcheck",
        help="exit 0 when the running relay's /healthz answers 200",
        description="GET /healthz on http.listen (a wildcard address is checked on loopback). "
        "Exit 0 healthy, 1 not, 2 configuration error.",
    )
    loader.add_config_argument(p)
    p.add_argument("--timeout", type=float, default=4.0, help="seconds (default 4)")
    p.set_defaults(func=run)


def url(host: str, port: int, tls: bool) -> str:
    host = _WILDCARDS.get(host, host)
    scheme = "https" if tls else "http"
    where = f"[{host}]" if ":" in host else host
    return f"{scheme}://{where}:{port}/healthz"


def run(args: argparse.Namespace) -> int:
    cfg = loader.load_admin(args, {})
    listen = cfg.http.listen
    if listen is None:
        raise CliError("http.listen is empty: there is no /healthz to check")
    target = url(listen.host, listen.port, cfg.http.tls)
    # Loopback to this container's own listener: liveness, not identity, is checked.
    context = ssl._create_unverified_context() if cfg.http.tls else None  # noqa: S323
    try:
        # Only the relay's own configured listener, never a user-supplied URL.
        with urllib.request.urlopen(target, timeout=args.timeout, context=context) as reply:  # noqa: S310
            status = int(reply.status)
    except urllib.error.HTTPError as exc:
        status = exc.code
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        print(f"unhealthy: {target}: {reason}", file=sys.stderr)
        return EXIT_REFUSED
    if status != 200:
        print(f"unhealthy: {target}: HTTP {status}", file=sys.stderr)
        return EXIT_REFUSED
    print(f"healthy: {target}")
    return EXIT_OK
