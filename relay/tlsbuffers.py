"""One TLS read buffer per thread for all of the process's asyncio TLS connections.

asyncio's SSLProtocol (Python 3.11+, asyncio/sslproto.py) gives every connection its
own `bytearray(256 KiB)` to read the socket into: 200 idle TLS sessions held 50 MB of
buffers. The buffer is only used between the transport's `recv_into` and
`buffer_updated`, which copies it into the TLS object's memory BIO before anything else
runs (selector_events `_read_ready__get_buffer`, protocols `_feed_data_to_buffered_proto`:
no await in between), so one buffer per thread, the event loop's, serves every
connection. A recv still takes up to 256 KiB at once, as before.

`install()` makes asyncio build this class for every TLS transport in the process: the
inbound STARTTLS (aiosmtpd), implicit TLS, the upstream connections (aiosmtplib's
`loop.start_tls`) and HTTPS, which all look up `asyncio.sslproto.SSLProtocol` when they
make one. The relay calls it as it starts.
"""

from __future__ import annotations

import threading
from asyncio import sslproto
from typing import Any

READ_SIZE = 256 * 1024  # as asyncio's own buffer: the most one recv_into takes
# What one SSL_read returns at most: one record's plaintext (2**14, RFC 8446 5.1). asyncio
# reads the TLS object in chunks of max_size; a larger chunk only allocates more to trim.
RECORD_SIZE = 16 * 1024

_local = threading.local()
_ASYNCIO = sslproto.SSLProtocol  # asyncio's own, before install() replaces the name


def _shared() -> tuple[bytearray, memoryview]:
    pair: tuple[bytearray, memoryview] | None = getattr(_local, "pair", None)
    if pair is None:
        buf = bytearray(READ_SIZE)
        pair = _local.pair = (buf, memoryview(buf))
    return pair


class SharedBufferSSLProtocol(_ASYNCIO):
    """asyncio's SSLProtocol reading into its thread's one buffer instead of its own."""

    max_size = RECORD_SIZE

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # The parent's get_buffer and buffer_updated use these; the 16 KiB it made is freed.
        self._ssl_buffer, self._ssl_buffer_view = _shared()


def supported() -> bool:
    """asyncio's SSLProtocol reads through `_ssl_buffer`/`_ssl_buffer_view` (3.11's rewrite)."""
    names: set[str] = set()
    for method in (_ASYNCIO.get_buffer, _ASYNCIO.buffer_updated):
        code = getattr(method, "__code__", None)
        names.update(code.co_names if code is not None else ())
    return {"_ssl_buffer", "_ssl_buffer_view"} <= names


def install() -> bool:
    """Make every new asyncio TLS connection in this process use the shared buffer.

    Returns False (and changes nothing) on a Python whose SSLProtocol reads differently.
    """
    if sslproto.SSLProtocol is SharedBufferSSLProtocol:
        return True
    if not supported():
        return False
    sslproto.SSLProtocol = SharedBufferSSLProtocol  # type: ignore[misc]
    return True
