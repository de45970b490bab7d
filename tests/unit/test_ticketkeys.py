"""relay.ticketkeys: a server context handed another's ticket keys resumes that one's sessions."""

from __future__ import annotations

import socket
import ssl
import threading

from relay import ticketkeys
from relay.certs import server_context
from tests.support.pki import Pki


def _handshake(
    server: ssl.SSLContext, client: ssl.SSLContext, session: ssl.SSLSession | None
) -> tuple[ssl.SSLSession | None, bool]:
    a, b = socket.socketpair()

    def serve() -> None:
        with server.wrap_socket(a, server_side=True) as tls:
            tls.sendall(b"x")
            tls.recv(1)

    t = threading.Thread(target=serve)
    t.start()
    with client.wrap_socket(b, server_hostname="localhost", session=session) as tls:
        tls.recv(1)  # the TLS 1.3 ticket comes with the first data
        tls.sendall(b"y")
        out = tls.session, tls.session_reused
    t.join(10)
    return out


def test_keys_read_from_one_context_make_another_resume_its_sessions(pki: Pki) -> None:
    first = server_context(pki.cert, pki.key)
    second = server_context(pki.cert, pki.key)
    client = pki.client_context()
    session, reused = _handshake(first, client, None)
    assert reused is False and session is not None
    assert _handshake(second, client, session)[1] is False  # keys of its own
    keys = ticketkeys.get(first)
    assert keys is not None and len(keys) == ticketkeys.KEY_BYTES
    assert ticketkeys.get(second) != keys
    assert ticketkeys.put(second, keys)
    assert ticketkeys.get(second) == keys
    assert _handshake(second, client, session)[1] is True


def test_keys_of_the_wrong_size_are_refused(pki: Pki) -> None:
    ctx = server_context(pki.cert, pki.key)
    before = ticketkeys.get(ctx)
    assert ticketkeys.put(ctx, b"short") is False
    assert ticketkeys.get(ctx) == before
