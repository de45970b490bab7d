"""certs.load_pair on both of its ways to hand OpenSSL the bytes it read (an anonymous
memory file, or a private temporary folder where there is no memfd or no /proc): a good
pair is served, a bad one leaves the live context serving the running pair, and no copy
of the key is left behind. Real handshakes over memory BIOs."""

from __future__ import annotations

import contextlib
import os
import ssl
import tempfile
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.serialization import Encoding

from relay.certs import Issued, load_pair, make_ca, make_leaf, server_context


def served(server: ssl.SSLContext, ca: Issued) -> bytes:
    """The leaf `server` presents in a real TLS handshake."""
    client = ssl.create_default_context(cadata=ca.cert_pem().decode())
    c_in, c_out, s_in, s_out = (ssl.MemoryBIO() for _ in range(4))
    c = client.wrap_bio(c_in, c_out, server_hostname="localhost")
    s = server.wrap_bio(s_in, s_out, server_side=True)
    for _ in range(10):
        for side in (c, s):
            with contextlib.suppress(ssl.SSLWantReadError):
                side.do_handshake()
        s_in.write(c_out.read())
        c_in.write(s_out.read())
    cert = c.getpeercert(binary_form=True)
    assert cert is not None
    return cert


def write_pair(folder: Path, leaf: Issued) -> tuple[Path, Path]:
    folder.mkdir()
    (folder / "server.crt").write_bytes(leaf.cert_pem())
    (folder / "server.key").write_bytes(leaf.key_pem())
    return folder / "server.crt", folder / "server.key"


@pytest.mark.parametrize("way", ["memfd", "private-folder"])
def test_load_pair_serves_a_good_pair_and_ignores_a_bad_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, way: str
) -> None:
    if way == "private-folder":
        monkeypatch.delattr(os, "memfd_create", raising=False)
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    ca = make_ca("test CA")
    first, second, other = (make_leaf(ca, ["localhost"]) for _ in range(3))
    live = server_context(*write_pair(tmp_path / "first", first))
    cert, key = write_pair(tmp_path / "second", second)
    load_pair(live, cert, key)
    assert served(live, ca) == second.cert.public_bytes(Encoding.DER)
    cert.write_bytes(other.cert_pem())  # a certificate whose key is not there yet
    with pytest.raises(ssl.SSLError):
        load_pair(live, cert, key)
    assert served(live, ca) == second.cert.public_bytes(Encoding.DER)
    assert list(scratch.iterdir()) == []  # no copy of the key left on disk
