"""The relay does not load what it never uses: structlog's rich tracebacks.

rich is installed in the test environment (import-linter needs it), as it is in many a
user's, so a fresh interpreter here shows whether `relay` keeps it out.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

_PROBE = """
import sys
import relay.server, relay.logs
loaded = 'rich' in sys.modules
import structlog.dev
renderer_rich = structlog.dev.rich is not None
import rich.console  # still importable by anyone else
print(loaded, renderer_rich, 'rich.console' in sys.modules)
"""


def test_serving_code_does_not_load_rich_and_rich_stays_importable() -> None:
    pytest.importorskip("rich")
    out = subprocess.run(
        [sys.executable, "-c", _PROBE], capture_output=True, text=True, timeout=60, check=True
    )
    assert out.stdout.split() == ["False", "False", "True"]


def test_console_logs_render_an_exception_without_rich() -> None:
    probe = (
        "import relay, structlog\n"
        "r = structlog.dev.ConsoleRenderer(colors=False)\n"
        "try:\n    1/0\nexcept ZeroDivisionError:\n"
        "    import sys; print(r(None, 'error', {'event': 'x', 'exc_info': sys.exc_info()}))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True
    )
    assert "ZeroDivisionError" in out.stdout
