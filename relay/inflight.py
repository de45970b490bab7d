"""The bytes of all messages in flight in this process (received, deciding or delivering).

Counted as the bytes arrive during DATA and given back when the message's delivery has
finished (or aiosmtpd refused it). The session refuses a new DATA with `452 4.3.1` while
the count is at or above `server.max_bytes_in_flight`: messages already admitted finish,
so the count can pass the cap by at most what those admitted together still send.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

FULL = "452 4.3.1 Too much mail in flight on this relay; try again later"


@dataclass
class InFlight:
    bytes: int = 0
    peak: int = 0
    refused: int = 0
    # Told the new count each time it moves (the `phi_relay_bytes_in_flight` gauge).
    report: Callable[[int], None] | None = field(default=None, repr=False, compare=False)

    def full(self, cap: int) -> bool:
        return self.bytes >= cap

    def add(self, size: int) -> None:
        self.bytes += size
        if self.bytes > self.peak:
            self.peak = self.bytes
        if self.report is not None:
            self.report(self.bytes)

    def release(self, size: int) -> None:
        self.bytes -= size
        if self.report is not None:
            self.report(self.bytes)
