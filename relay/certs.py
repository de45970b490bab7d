"""TLS material: development certificates (a local CA and a server certificate) and contexts.

Development certificates are generated with the cryptography package into `certs/`
when missing, so `phi-relay serve` works on a fresh machine. Production deployments
point --tls-cert/--tls-key at real certificates.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import re
import socket
import ssl
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


@dataclass(frozen=True, slots=True)
class Issued:
    key: ec.EllipticCurvePrivateKey
    cert: x509.Certificate

    def cert_pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    def key_pem(self) -> bytes:
        return self.key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def make_ca(common_name: str = "phi-relay development CA", days: int = 825) -> Issued:
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(_name(common_name))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return Issued(key, cert)


def make_leaf(ca: Issued, names: Sequence[str], days: int = 397) -> Issued:
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    sans: list[x509.GeneralName] = []
    for n in names:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(n)))
        except ValueError:
            sans.append(x509.DNSName(n))
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(names[0]))
        .issuer_name(ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()), critical=False
        )
        .sign(ca.key, hashes.SHA256())
    )
    return Issued(key, cert)


def _write(path: Path, data: bytes, private: bool) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600 if private else 0o644)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)


_DNS_NAME = re.compile(
    r"^(?=.{1,253}$)[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$"
)


def dev_names(hostname: str) -> list[str]:
    """Names for a development certificate: the relay's and this machine's host names as DNS
    SANs (Postfix and most clients match the name they dialled, not an IP SAN), then loopback."""
    candidates = [hostname, socket.gethostname(), socket.getfqdn(), "localhost"]
    dns = [n.lower() for n in candidates if n and _DNS_NAME.match(n)]
    return list(dict.fromkeys([*dns, "127.0.0.1", "::1"]))


@dataclass(frozen=True, slots=True)
class DevCerts:
    ca: Path
    cert: Path
    key: Path


def init_dev_certs(folder: Path, hostname: str, force: bool = False) -> tuple[DevCerts, bool]:
    """Create certs/ca.crt, server.crt and server.key unless present. Returns (paths, created)."""
    paths = DevCerts(folder / "ca.crt", folder / "server.crt", folder / "server.key")
    if not force and paths.cert.exists() and paths.key.exists():
        return paths, False
    ca = make_ca()
    names = dev_names(hostname)
    leaf = make_leaf(ca, names)
    _write(paths.ca, ca.cert_pem(), private=False)
    _write(paths.cert, leaf.cert_pem() + ca.cert_pem(), private=False)
    _write(paths.key, leaf.key_pem(), private=True)
    return paths, True


def server_context(cert: Path, key: Path) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.verify_mode = ssl.CERT_NONE  # clients authenticate with AUTH, not certificates
    # Session resumption: a client that caches sessions (Postfix's smtp_tls_session_cache,
    # `session=` in Python) skips the full handshake. These are OpenSSL's defaults, stated
    # so they are not lost: stateless tickets, two per TLS 1.3 handshake. The ticket key is
    # per context, so one survives a reload (load_cert_chain on the same context).
    ctx.options &= ~ssl.OP_NO_TICKET
    ctx.num_tickets = 2
    ctx.load_cert_chain(str(cert), str(key))
    return ctx


def load_pair(ctx: ssl.SSLContext, cert: Path, key: Path) -> None:
    """Put the certificate and key into the live `ctx` (kept for its session ticket keys)
    only once they are known to load together; on any error `ctx` is untouched.

    OpenSSL changes a context step by step: a new leaf drops the key it does not match
    before the chain and the new key are read, so a failed `load_cert_chain` (a
    certificate copied before its key, a half-written chain) leaves a context no
    handshake can use. The files are read once, tried in a fresh context, and those same
    bytes then go into `ctx`, so a file changing in between cannot slip past the try."""
    with ExitStack() as stack:
        c = stack.enter_context(_private_copy(Path(cert).read_bytes()))
        k = stack.enter_context(_private_copy(Path(key).read_bytes()))
        server_context(c, k)
        ctx.load_cert_chain(str(c), str(k))


@contextmanager
def _private_copy(data: bytes) -> Iterator[Path]:
    """`data` as a file only this process can read: an anonymous memory file on Linux
    (the key never reaches a disk), else (no memfd, or no /proc to name it by, as in some
    sandboxes) a file in a private temporary folder."""
    if hasattr(os, "memfd_create") and Path("/proc/self/fd").is_dir():
        fd = os.memfd_create("phi-relay-tls", os.MFD_CLOEXEC)
        try:
            os.write(fd, data)
            yield Path(f"/proc/self/fd/{fd}")
        finally:
            os.close(fd)
        return
    with tempfile.TemporaryDirectory(prefix="phi-relay-tls-") as folder:
        path = Path(folder) / "pem"
        _write(path, data, private=True)
        yield path
