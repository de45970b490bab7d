"""The TLS session-ticket keys of a server context, read and set through OpenSSL itself.

Python's ssl has no API for them. Every worker forked by the supervisor inherits the one
context it made, and so its ticket keys: a session one worker issued resumes on another.
A worker the supervisor restarts later is a fresh interpreter with a context of its own;
it is handed the same keys (`get` in the supervisor before it hands over, `put` in the
new worker), or its clients' cached sessions would all need a full handshake there.

OpenSSL's SSL_CTX is reached through CPython's `_ssl` object, whose first field after
the object header is that pointer (Modules/_ssl.c, unchanged since Python 3.0); the
pointer is checked against the context's own options before it is used. Anything
unexpected gives None / False, and the worker then simply issues tickets of its own.
"""

from __future__ import annotations

import ctypes
import ssl

KEY_BYTES = 80  # name 16 + HMAC secret 32 + AES key 32 (OpenSSL 1.1 and 3)
_GET_KEYS = 58  # SSL_CTRL_GET_TLSEXT_TICKET_KEYS
_SET_KEYS = 59  # SSL_CTRL_SET_TLSEXT_TICKET_KEYS


def _ctx_pointer(ctx: ssl.SSLContext) -> tuple[ctypes.CDLL, int] | None:
    try:
        import _ssl

        lib = ctypes.CDLL(_ssl.__file__)
        get_options = lib.SSL_CTX_get_options
    except (OSError, AttributeError, ImportError):
        return None
    get_options.argtypes = [ctypes.c_void_p]
    get_options.restype = ctypes.c_uint64
    pointer = ctypes.c_void_p.from_address(id(ctx) + object.__basicsize__).value
    if not pointer or get_options(pointer) != ctx.options:
        return None
    lib.SSL_CTX_ctrl.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_long, ctypes.c_void_p]
    lib.SSL_CTX_ctrl.restype = ctypes.c_long
    return lib, pointer


def get(ctx: ssl.SSLContext) -> bytes | None:
    """The context's current ticket keys (80 bytes), or None where they cannot be read."""
    found = _ctx_pointer(ctx)
    if found is None:
        return None
    lib, pointer = found
    buf = ctypes.create_string_buffer(KEY_BYTES)
    if lib.SSL_CTX_ctrl(pointer, _GET_KEYS, KEY_BYTES, buf) != 1:
        return None
    return buf.raw


def put(ctx: ssl.SSLContext, keys: bytes) -> bool:
    """Make `keys` (from `get`) the context's ticket keys; False where that cannot be done."""
    if len(keys) != KEY_BYTES:
        return False
    found = _ctx_pointer(ctx)
    if found is None:
        return False
    lib, pointer = found
    buf = ctypes.create_string_buffer(keys, KEY_BYTES)
    return bool(lib.SSL_CTX_ctrl(pointer, _SET_KEYS, KEY_BYTES, buf) == 1)
