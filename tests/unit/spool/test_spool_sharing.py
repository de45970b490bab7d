"""Processes sharing one spool directory: one storing while another scans and updates.

Workers of one host (and relays on a shared volume) run their own `Spool` on the same
folder. A scanner must never see an entry before its metadata is written, and two
writers must never collide on a temporary file, or a message that was stored is
refused with 451 (and may be sent by the other process meanwhile).
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

from relay.spool.store import Entry, Spool, SpoolError

KEY = bytes(range(32))


def entry(n: int) -> Entry:
    return Entry("app@clinic.example", (f"p{n}@example.org",), (), {}, b"Subject: x\r\n\r\nhi\r\n")


def test_a_scanner_never_sees_an_entry_before_its_metadata(tmp_path: Path) -> None:
    writer, scanner = Spool(tmp_path, KEY), Spool(tmp_path, KEY)
    errors: list[str] = []
    seen_without_meta: list[str] = []
    stop = threading.Event()

    def scan() -> None:
        while not stop.is_set():
            try:
                for meta in scanner.metas():
                    if not meta.decision_id:
                        seen_without_meta.append(meta.id)
                    lock = scanner.lock(meta.id)
                    if lock is not None:
                        # What a delivery attempt does: note the try, then let go.
                        scanner.update(meta)
                        lock.close()
            except SpoolError as exc:
                errors.append(f"scanner: {exc}")

    thread = threading.Thread(target=scan)
    thread.start()
    stored: list[str] = []
    try:
        deadline = time.monotonic() + 3.0
        n = 0
        while time.monotonic() < deadline and n < 300:
            try:
                stored.append(writer.put(entry(n), f"d{n}", next_at=0.0).id)
            except SpoolError as exc:
                errors.append(f"writer: {exc}")
            n += 1
    finally:
        stop.set()
        thread.join(10)
    assert errors == []
    assert seen_without_meta == []
    assert len(stored) == n and n > 20
    assert sorted(m.id for m in writer.metas()) == sorted(stored)
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".tmp")]
