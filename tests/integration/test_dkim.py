"""DKIM after the footer: what the upstream receives verifies with dkimpy's own verifier (the
public key handed over through dnsfunc, no DNS), covers List-Unsubscribe and
List-Unsubscribe-Post, and a signature the relay's changes broke is removed, kept or refused
as dkim.stale_signature says."""

from __future__ import annotations

import base64
from collections.abc import Callable
from email.message import EmailMessage
from pathlib import Path

import dkim
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from faker import Faker

from relay.config import load as load_config
from relay.policy.base import ConfigError
from tests.support.pki import Pki
from tests.support.relay import RunningRelay, start_relay
from tests.support.upstream import Sink

fake = Faker()
Faker.seed(8058)
SELECTOR = "s2026"
COVERED = {
    "from",
    "to",
    "subject",
    "date",
    "message-id",
    "mime-version",
    "content-type",
    "list-unsubscribe",
    "list-unsubscribe-post",
}


def make_key(folder: Path, name: str) -> tuple[Path, bytes]:
    """A PEM private key file and its DKIM TXT record."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    path = folder / f"{name}.pem"
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        )
    )
    spki = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return path, b"v=DKIM1; k=rsa; p=" + base64.b64encode(spki)


def dns(records: dict[str, bytes]) -> Callable[..., bytes | None]:
    def lookup(name: bytes, timeout: int = 5) -> bytes | None:
        return records.get(name.decode().rstrip("."))

    return lookup


def message(category: str, to: str, *, sender: str = "news@clinic.example") -> bytes:
    msg = EmailMessage()
    msg["From"] = f"Example Health Clinic <{sender}>"
    msg["To"] = to
    msg["Subject"] = "Spring wellness offers"
    msg["Date"] = "Tue, 01 Dec 2026 09:00:00 +0000"
    msg["Message-ID"] = f"<{fake.uuid4()}@clinic.example>"
    msg["X-PHI-Category"] = category
    msg.set_content("Our spring classes start next week.\n")
    msg.add_alternative("<html><body><p>Our spring classes start.</p></body></html>\n", "html")
    return msg.as_bytes(policy=msg.policy.clone(linesep="\r\n"))


def signature_tags(data: bytes, index: int = 0) -> dict[bytes, bytes]:
    from dkim.util import parse_tag_value

    sigs = [v for n, v in dkim.rfc822_parse(data)[0] if n.lower() == b"dkim-signature"]
    return parse_tag_value(b"".join(sigs[index].split()))


async def send(r: RunningRelay, to: str, data: bytes, sender: str) -> tuple[int, str]:
    client = await r.client()
    try:
        _, text = await client.sendmail(sender, [to], data)
        return 250, text
    except Exception as exc:  # the relay's refusal, with its code
        code = getattr(exc, "code", 0)
        return code, getattr(exc, "message", str(exc))
    finally:
        await client.quit()


async def dkim_relay(
    tmp_path: Path, pki: Pki, sink: Sink, stale: str = "remove"
) -> tuple[RunningRelay, dict[str, bytes]]:
    path, record = make_key(tmp_path, "clinic")
    r = await start_relay(
        tmp_path,
        pki,
        sink,
        sections={
            "dkim": {"keys": [f"clinic.example:{SELECTOR}:{path}"], "stale_signature": stale}
        },
    )
    return r, {f"{SELECTOR}._domainkey.clinic.example": record}


async def test_a_delivered_marketing_message_verifies_and_covers_list_unsubscribe(
    tmp_path: Path, pki: Pki, sink: Sink
) -> None:
    r, records = await dkim_relay(tmp_path, pki, sink)
    rcpt = fake.email()
    try:
        assert r.relay.services is not None
        await r.relay.services.store.grant(rcpt, "marketing", (), "form-2026-114")
        code, _ = await send(r, rcpt, message("marketing", rcpt), "news@clinic.example")
        assert code == 250
    finally:
        await r.stop()
    [got] = sink.received
    delivered = got.data
    assert b"List-Unsubscribe-Post: List-Unsubscribe=One-Click" in delivered
    assert b"Example Health Clinic" in delivered.partition(b"\r\n\r\n")[2]  # the footer
    assert dkim.verify(delivered, dnsfunc=dns(records)), "the relay's signature must verify"
    tags = signature_tags(delivered)
    assert (tags[b"d"], tags[b"s"], tags[b"a"]) == (b"clinic.example", b"s2026", b"rsa-sha256")
    signed = [h.decode().lower() for h in tags[b"h"].split(b":")]
    assert set(signed) >= COVERED, COVERED - set(signed)
    # Signed once more than present: a second List-Unsubscribe added later breaks it.
    assert signed.count("list-unsubscribe") == 2
    tampered = delivered.replace(b"Our spring classes", b"Our autumn classes", 1)
    assert not dkim.verify(tampered, dnsfunc=dns(records))
    added = delivered.replace(
        b"\r\n\r\n", b"\r\nList-Unsubscribe: <https://attacker.example/u>\r\n\r\n", 1
    )
    assert not dkim.verify(added, dnsfunc=dns(records))


async def test_mail_from_a_domain_without_a_key_is_not_signed(
    tmp_path: Path, pki: Pki, sink: Sink
) -> None:
    r, _ = await dkim_relay(tmp_path, pki, sink)
    try:
        code, _ = await send(
            r,
            fake.email(),
            message("education", fake.email(), sender="a@other.example"),
            "a@other.example",
        )
        assert code == 250
    finally:
        await r.stop()
    assert b"DKIM-Signature" not in sink.received[0].data


@pytest.mark.parametrize("stale", ["remove", "keep", "refuse"])
async def test_a_signature_the_footer_broke_is_handled_as_configured(
    tmp_path: Path, pki: Pki, sink: Sink, stale: str
) -> None:
    r, records = await dkim_relay(tmp_path, pki, sink, stale)
    old_path, old_record = make_key(tmp_path, "partner")
    records["old._domainkey.partner.example"] = old_record
    rcpt = fake.email()
    original = message("education", rcpt)
    presigned = (
        dkim.sign(
            original,
            b"old",
            b"partner.example",
            old_path.read_bytes(),
            include_headers=[b"from", b"subject", b"to"],
        )
        + original
    )
    assert dkim.verify(presigned, dnsfunc=dns(records))
    try:
        code, text = await send(r, rcpt, presigned, "news@clinic.example")
    finally:
        await r.stop()
    if stale == "refuse":
        assert code == 550, text
        assert text.startswith("5.7.0 Message is DKIM-signed and the relay must change it")
        assert sink.received == []
        [delivery] = r.deliveries()
        assert delivery["outcome"] == "dkim-refused"
        return
    assert code == 250, text
    delivered = sink.received[0].data
    domains = [
        signature_tags(delivered, i)[b"d"] for i in range(delivered.count(b"DKIM-Signature:"))
    ]
    assert dkim.verify(delivered, dnsfunc=dns(records))  # ours, on top
    if stale == "remove":
        assert domains == [b"clinic.example"]
    else:
        assert domains == [b"clinic.example", b"partner.example"]
        d = dkim.DKIM(delivered)
        with pytest.raises(dkim.ValidationError, match="body hash mismatch"):
            d.verify(idx=1, dnsfunc=dns(records))  # the kept one is indeed broken


async def test_a_signature_the_relay_did_not_break_is_kept_even_under_refuse(
    tmp_path: Path, pki: Pki, sink: Sink
) -> None:
    # Treatment mail gets no footer; X-PHI-Category is removed, but it was not signed.
    r, records = await dkim_relay(tmp_path, pki, sink, "refuse")
    old_path, old_record = make_key(tmp_path, "partner")
    records["old._domainkey.partner.example"] = old_record
    rcpt = fake.email()
    original = message("treatment", rcpt).replace(
        b"Spring wellness offers", b"Our new Saturday hours", 1
    )
    presigned = dkim.sign(original, b"old", b"partner.example", old_path.read_bytes()) + original
    try:
        code, text = await send(r, rcpt, presigned, "news@clinic.example")
    finally:
        await r.stop()
    assert code == 250, text
    delivered = sink.received[0].data
    d = dkim.DKIM(delivered)
    assert d.verify(idx=0, dnsfunc=dns(records)) and d.verify(idx=1, dnsfunc=dns(records))


@pytest.mark.parametrize(
    ("keys", "stale", "expected"),
    [
        (["clinic.example:s1"], "remove", "expected DOMAIN:SELECTOR:KEYFILE"),
        (["clinic.example:s1:k.pem"], "strip", "expected remove, keep or refuse"),
    ],
)
def test_bad_dkim_settings_refuse_to_start(keys: list[str], stale: str, expected: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(None, environ={}, overrides={"dkim": {"keys": keys, "stale_signature": stale}})
    assert expected in str(err.value)


async def test_an_unreadable_key_file_stops_start_up(tmp_path: Path, pki: Pki, sink: Sink) -> None:
    from relay.server import StartupError

    bad = tmp_path / "bad.pem"
    bad.write_text("not a key\n")
    with pytest.raises(StartupError, match="not a PEM RSA private key"):
        await start_relay(
            tmp_path, pki, sink, sections={"dkim": {"keys": [f"clinic.example:s1:{bad}"]}}
        )
