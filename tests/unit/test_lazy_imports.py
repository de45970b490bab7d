"""The serving stack loads what a relay not configured for it never uses only when asked:
asyncpg (a PostgreSQL store) and dkimpy with dnspython (DKIM keys or signed mail), ~10 MB
in every worker process otherwise."""

from __future__ import annotations

import subprocess
import sys

LAZY = ("asyncpg", "dkim", "dns")


def _loaded(code: str) -> set[str]:
    out = subprocess.run(
        [sys.executable, "-c", f"{code}\nimport sys\nprint(' '.join(sys.modules))"],
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout.split()
    return {name.split(".")[0] for name in out}


def test_serving_modules_do_not_load_asyncpg_or_dkimpy() -> None:
    loaded = _loaded("import relay.server, relay.supervisor, relay.web, relay.cli.serve")
    assert "aiosmtpd" in loaded  # the serving stack is there
    assert not loaded & set(LAZY), loaded & set(LAZY)


def test_they_load_when_used() -> None:
    loaded = _loaded(
        "from relay import dkim\n"
        "assert dkim.stale_signatures(b'a: b\\r\\n\\r\\nx', b'a: c\\r\\n\\r\\nx') == []\n"
        "assert dkim.stale_signatures(b'DKIM-Signature: v=1; bh=x; h=a\\r\\na: b\\r\\n\\r\\nx',"
        " b'DKIM-Signature: v=1; bh=x; h=a\\r\\na: c\\r\\n\\r\\nx') == [0]\n"
        "import relay.dedup_pg"
    )
    assert {"asyncpg", "dkim", "dns"} <= loaded
