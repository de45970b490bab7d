"""A real S/MIME signature still verifies after a headers-only rewrite (checked with openssl)."""

from __future__ import annotations

import datetime
import shutil
import subprocess
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import pkcs7
from cryptography.x509.oid import NameOID
from rewrite_support import RECIPIENT, Links, parse

from relay.model import AppendFooter, ListUnsubscribe, RemoveHeader
from relay.policy.optout_footer import is_protected
from relay.rewrite import RewriteError, render

OPENSSL = shutil.which("openssl")


def _signed_message(tmp_path: Path) -> bytes:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "news@clinic.example")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    (tmp_path / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    content = (
        b"Content-Type: text/plain; charset=us-ascii\r\n\r\n"
        b"Our new Saturday hours start next week.\r\n"
    )
    signed = (
        pkcs7.PKCS7SignatureBuilder()
        .set_data(content)
        .add_signer(cert, key, hashes.SHA256())
        .sign(serialization.Encoding.SMIME, [pkcs7.PKCS7Options.DetachedSignature])
    )
    head = (
        b"From: news@clinic.example\r\nTo: patient@example.net\r\n"
        b"Subject: Our new Saturday hours\r\nX-PHI-Category: education\r\n"
    )
    return head + signed.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


def _verifies(path: Path, tmp_path: Path) -> bool:
    assert OPENSSL is not None
    result = subprocess.run(
        [OPENSSL, "smime", "-verify", "-in", str(path), "-CAfile", str(tmp_path / "cert.pem")],
        capture_output=True,
        timeout=30,
        check=False,
    )
    return result.returncode == 0


@pytest.mark.skipif(OPENSSL is None, reason="openssl command not installed")
def test_headers_only_keeps_the_signature_and_a_footer_is_refused(tmp_path: Path) -> None:
    raw = _signed_message(tmp_path)
    msg = parse(raw)
    assert is_protected(msg)
    (tmp_path / "in.eml").write_bytes(raw)
    assert _verifies(tmp_path / "in.eml", tmp_path)

    out = render(
        raw,
        msg,
        (RemoveHeader("X-PHI-Category"), ListUnsubscribe("education")),
        recipient=RECIPIENT,
        category="education",
        links=Links(),
    )
    assert out.startswith(b"List-Unsubscribe: <")
    assert b"X-PHI-Category" not in out
    (tmp_path / "out.eml").write_bytes(out)
    assert _verifies(tmp_path / "out.eml", tmp_path)

    # The check above can fail: changing one byte of the signed text breaks it.
    tampered = out.replace(b"Saturday hours start", b"Saturday hours begin")
    (tmp_path / "bad.eml").write_bytes(tampered)
    assert not _verifies(tmp_path / "bad.eml", tmp_path)

    with pytest.raises(RewriteError) as caught:
        render(
            raw,
            msg,
            (AppendFooter("{unsubscribe_url}", "{unsubscribe_url}"),),
            recipient=RECIPIENT,
            category="education",
            links=Links(),
        )
    assert caught.value.reason == "footer.protected-message"
