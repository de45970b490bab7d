"""The service log: every line through structlog (JSON with --log-json), control characters
escaped, and no word a client sent, aiosmtpd's own records included (issue 9, item 19)."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

from tests.adversarial.service import start_service
from tests.support.pki import Pki
from tests.support.rawsmtp import RawSmtp
from tests.support.upstream import Sink


def canary() -> str:
    return f"QZ{uuid.uuid4().hex[:14].upper()}"


async def test_library_logs_are_json_escaped_and_hold_no_client_words(
    tmp_path: Path, pki: Pki, sink: Sink
) -> None:
    svc = await start_service(tmp_path, pki, sink, "--log-json")
    words = [canary() for _ in range(6)]
    try:
        conn = await RawSmtp.ready(svc.smtp_port, pki.client_context())
        # Unknown commands (aiosmtpd logs these itself): one with a raw CR inside the word,
        # one with a bare LF and a forged JSON record after it; an unknown AUTH mechanism.
        replies = [
            await conn.cmd(f"{words[0]}\r{words[1]} x"),
            await conn.cmd(f"{words[2]}\n" + '{"level":"error","event":"forged"}'),
            await conn.cmd(f"X{words[3]}"),
            await conn.cmd(f"AUTH {words[4]}"),
            await conn.cmd(f"Y{words[5]}"),
        ]
        await conn.cmd("QUIT")
        await conn.close()
    finally:
        assert await svc.stop() == 0
    assert replies[0] == "500 5.5.1 Command not recognized"
    raw = b"".join((tmp_path / name).read_bytes() for name in ("stdout", "stderr"))
    assert b"\r" not in raw
    lines = [line for line in raw.decode().splitlines() if line.strip()]
    assert lines, "the relay logged nothing"
    records = [json.loads(line) for line in lines]  # every line is one JSON record
    assert all("event" in r for r in records)
    assert any(r.get("logger") == "mail.log" for r in records), "aiosmtpd's records are routed"
    for word in words:
        assert word not in raw.decode(), word
        assert word.lower() not in raw.decode().lower()
        for reply in replies:
            assert word not in reply
    assert not any(r.get("event") == "forged" for r in records)
