"""Certificates generated for each test session: a trusted CA, and an untrusted one."""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path

from relay.certs import make_ca, make_leaf


@dataclass(frozen=True)
class Pki:
    ca: Path
    cert: Path
    key: Path
    rogue_cert: Path
    rogue_key: Path

    def server_context(self, rogue: bool = False) -> ssl.SSLContext:
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        if rogue:
            ctx.load_cert_chain(self.rogue_cert, self.rogue_key)
        else:
            ctx.load_cert_chain(self.cert, self.key)
        return ctx

    def client_context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=str(self.ca))
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        return ctx


def make_pki(folder: Path) -> Pki:
    folder.mkdir(parents=True, exist_ok=True)
    ca = make_ca("test CA")
    leaf = make_leaf(ca, ["localhost", "127.0.0.1", "::1"])
    rogue_ca = make_ca("rogue CA")
    rogue = make_leaf(rogue_ca, ["localhost", "127.0.0.1"])
    paths = Pki(
        folder / "ca.crt",
        folder / "server.crt",
        folder / "server.key",
        folder / "rogue.crt",
        folder / "rogue.key",
    )
    paths.ca.write_bytes(ca.cert_pem())
    paths.cert.write_bytes(leaf.cert_pem() + ca.cert_pem())
    paths.key.write_bytes(leaf.key_pem())
    paths.rogue_cert.write_bytes(rogue.cert_pem())
    paths.rogue_key.write_bytes(rogue.key_pem())
    return paths
