"""Service logging (not the audit log): structlog to stderr, JSON in containers, plain on a tty.

Libraries log through the standard `logging` module; those records are routed through
the same structlog chain, so `--log-json` holds for every line. A library record keeps
only its message template, never its arguments: aiosmtpd's arguments are what the client
sent (command words, addresses, whole lines), and the client's words are never logged.
Control characters in any value are escaped, so no line can be split or forged.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import MutableMapping
from typing import Any

import structlog

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_PLACEHOLDER = re.compile(r"%(?:\([^)]*\))?[-#0 +]*\d*(?:\.\d+)?[a-zA-Z%]")
# Our own loggers build their arguments from values we chose (see relay.web.server_log).
_OURS = "relay"


def _escape(text: str) -> str:
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", text)


def escape_control(
    logger: Any, method: str, event: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """structlog processor: a CR, LF or other control character becomes a visible escape."""
    for key, value in event.items():
        if isinstance(value, str) and _CONTROL.search(value):
            event[key] = _escape(value)
    return event


class ToStructlog(logging.Handler):
    """Hands standard-library records to structlog: template only for other libraries."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            ours = record.name == _OURS or record.name.startswith(_OURS + ".")
            # A library's template says what happened; its arguments may be the client's words.
            text = record.getMessage() if ours else _PLACEHOLDER.sub("…", str(record.msg))
            fields: dict[str, object] = {"logger": record.name}
            if record.exc_info and record.exc_info[1] is not None:
                fields["error"] = type(record.exc_info[1]).__name__
            structlog.get_logger(record.name).log(record.levelno, text, **fields)
        except Exception:  # pragma: no cover - logging must never take the relay down
            self.handleError(record)


def configure(json: bool | None = None, level: str = "INFO") -> None:
    if json is None:
        json = not sys.stderr.isatty()
    renderer: structlog.types.Processor = (
        structlog.processors.JSONRenderer() if json else structlog.dev.ConsoleRenderer(colors=False)
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            escape_control,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(getattr(logging, level.upper())),
        # One write() per line (print() makes two): the workers of a supervised relay
        # share stderr, and two lines written at once must not run into each other.
        logger_factory=structlog.WriteLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=False,
    )
    root = logging.getLogger()
    for handler in list(root.handlers):
        if isinstance(handler, ToStructlog):
            root.removeHandler(handler)
    root.addHandler(ToStructlog())
    root.setLevel(logging.WARNING)
    # aiosmtpd logs every command line at INFO, addresses included: keep it to warnings.
    logging.getLogger("mail.log").setLevel(logging.WARNING)
