"""A SIGHUP reload whose certificate and key do not load together (a half-done rotation:
the certificate copied before its key, a key for another certificate, a half-written or
missing file) is refused and leaves TLS serving the running pair; a complete rotation
serves the new one. The relay reloads into its live TLS context (to keep the session
ticket keys), so a failed load must not be able to touch that context."""

from __future__ import annotations

import asyncio
import shutil
import smtplib
import ssl
from collections.abc import Callable
from pathlib import Path

import pytest

from relay.certs import make_ca, make_leaf
from tests.support.pki import Pki
from tests.support.relay import start_relay
from tests.support.upstream import Sink

SENDER = "app@clinic.example"


def send(port: int, ctx: ssl.SSLContext, n: int) -> tuple[bytes, int, bytes]:
    """One message over STARTTLS: (the certificate served, DATA reply code, its text)."""
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as s:
        s.starttls(context=ctx)
        assert isinstance(s.sock, ssl.SSLSocket)
        served = s.sock.getpeercert(binary_form=True)
        assert served is not None
        s.ehlo("client.test")
        s.mail(SENDER)
        s.rcpt("a@example.org")
        code, text = s.data(
            f"From: {SENDER}\r\nTo: a@example.org\r\nSubject: Parking update {n}\r\n"
            f"Message-ID: <rotate-{n}@clinic.example>\r\n\r\nThe lot closes on Friday.\r\n"
        )
        return served, code, text


def der(pem_file: Path) -> bytes:
    """The first certificate of a PEM file (the leaf; the CA follows it)."""
    end = "-----END CERTIFICATE-----"
    return ssl.PEM_cert_to_DER_cert(pem_file.read_text().split(end)[0] + end + "\n")


def _other_cert(cert: Path, key: Path, pki: Pki) -> None:
    cert.write_bytes(pki.rogue_cert.read_bytes())  # copied first; its key not yet


def _other_key(cert: Path, key: Path, pki: Pki) -> None:
    key.write_bytes(pki.rogue_key.read_bytes())  # the key first; its certificate not yet


def _garbage_key(cert: Path, key: Path, pki: Pki) -> None:
    key.write_text("not a key\n")


def _half_cert(cert: Path, key: Path, pki: Pki) -> None:
    data = pki.rogue_cert.read_bytes()
    cert.write_bytes(data[: len(data) // 2])


def _no_cert(cert: Path, key: Path, pki: Pki) -> None:
    cert.unlink()


def _chain_half_written(cert: Path, key: Path, pki: Pki) -> None:
    # A whole new pair, but the CA after the leaf is cut off: OpenSSL takes the leaf
    # before it fails on the chain.
    ca = make_ca("rotated CA")
    leaf = make_leaf(ca, ["localhost", "127.0.0.1"])
    key.write_bytes(leaf.key_pem())
    chain = ca.cert_pem()
    cert.write_bytes(leaf.cert_pem() + chain[: len(chain) // 2])


def own_pair(certs: Path, pki: Pki) -> tuple[Path, Path]:
    """A copy of the test's server certificate and key that a rotation may overwrite."""
    certs.mkdir()
    cert, key = certs / "server.crt", certs / "server.key"
    shutil.copyfile(pki.cert, cert)
    shutil.copyfile(pki.key, key)
    return cert, key


BAD: dict[str, Callable[[Path, Path, Pki], None]] = {
    "certificate-for-another-key": _other_cert,
    "key-for-another-certificate": _other_key,
    "key-not-pem": _garbage_key,
    "certificate-half-written": _half_cert,
    "certificate-missing": _no_cert,
    "chain-half-written": _chain_half_written,
}


@pytest.mark.parametrize("rotation", list(BAD))
async def test_a_reload_with_a_pair_that_does_not_load_keeps_serving_the_running_pair(
    tmp_path: Path, pki: Pki, sink: Sink, rotation: str
) -> None:
    cert, key = own_pair(tmp_path / "certs", pki)
    r = await start_relay(tmp_path, pki, sink, server={"tls_cert": str(cert), "tls_key": str(key)})
    ctx = pki.client_context()
    try:
        before = await asyncio.to_thread(send, r.port, ctx, 1)
        BAD[rotation](cert, key, pki)
        reloaded = r.relay.reload()
        after = [await asyncio.to_thread(send, r.port, ctx, n) for n in (2, 3)]
    finally:
        await r.stop()
    assert reloaded is False
    assert [rec["ok"] for rec in r.audit() if rec.get("event") == "config-reload"] == [False]
    assert before[0] == der(pki.cert)
    for served, code, text in after:
        assert served == der(pki.cert)  # the running certificate, with its key
        assert code == 250, text
        assert text.startswith(b"2.0.0 Delivered to upstream as ")
    assert [m.message["Subject"] for m in sink.received] == [
        f"Parking update {n}" for n in (1, 2, 3)
    ]


async def test_a_reload_with_a_complete_new_pair_serves_it(
    tmp_path: Path, pki: Pki, sink: Sink
) -> None:
    cert, key = own_pair(tmp_path / "certs", pki)
    new_ca = make_ca("rotated CA")
    new_leaf = make_leaf(new_ca, ["localhost", "127.0.0.1"])
    r = await start_relay(tmp_path, pki, sink, server={"tls_cert": str(cert), "tls_key": str(key)})
    ctx = pki.client_context()
    ctx.load_verify_locations(cadata=new_ca.cert_pem().decode())
    try:
        before = await asyncio.to_thread(send, r.port, ctx, 1)
        key.write_bytes(new_leaf.key_pem())
        cert.write_bytes(new_leaf.cert_pem())
        reloaded = r.relay.reload()
        after = await asyncio.to_thread(send, r.port, ctx, 2)
    finally:
        await r.stop()
    assert reloaded is True
    assert before[0] == der(pki.cert)
    assert after[0] == ssl.PEM_cert_to_DER_cert(new_leaf.cert_pem().decode())
    assert after[1] == 250, after[2]
    assert len(sink.received) == 2


async def test_every_worker_keeps_serving_after_a_refused_certificate_reload(
    tmp_path: Path, pki: Pki, sink: Sink
) -> None:
    """`serve --workers 2`: each worker reloads into the context made before the fork; a
    certificate copied before its key is refused by both, and both keep handshaking."""
    import signal

    from tests.adversarial.service import start_service

    cert, key = own_pair(tmp_path / "certs", pki)
    mine = Pki(pki.ca, cert, key, pki.rogue_cert, pki.rogue_key)
    svc = await start_service(tmp_path / "home", mine, sink, workers=2)
    ctx = pki.client_context()
    try:
        _other_cert(mine.cert, mine.key, pki)
        svc.signal(signal.SIGHUP)
        for _ in range(200):
            refused = [r for r in svc.audit_records() if r.get("event") == "config-reload"]
            if len(refused) == 2:
                break
            await asyncio.sleep(0.05)
        sent = [await asyncio.to_thread(send, svc.smtp_port, ctx, n) for n in range(20)]
    finally:
        assert await svc.stop() == 0
    assert sorted((r["worker"], r["ok"]) for r in refused) == [(1, False), (2, False)]
    assert all(served == der(pki.cert) and code == 250 for served, code, _ in sent)
    workers = {r["worker"] for r in svc.audit_records() if r["type"] == "decision"}
    assert workers == {1, 2}  # both workers handshook with the running pair
    assert len(sink.received) == 20
