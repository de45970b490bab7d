"""SIGHUP reloads policies; an invalid file keeps the running ones; SIGTERM exits 0."""

from __future__ import annotations

import signal
from pathlib import Path

from faker import Faker

from tests.adversarial.service import start_service
from tests.support.pki import Pki
from tests.support.rawsmtp import RawSmtp
from tests.support.upstream import Sink

fake = Faker()
Faker.seed(5054)
SENDER = "app@clinic.example"
RELOAD_OK = "phi_relay_config_last_reload_success"
REFUSED = (
    "550 5.7.1 Subject line contains protected health information (medical record number); "
    "put details in the message body"
)


def phi_message() -> bytes:
    mrn = fake.random_number(digits=7, fix_len=True)
    return (
        f"From: {SENDER}\r\nTo: someone@example.org\r\nSubject: MRN {mrn} follow-up\r\n"
        f"Message-ID: <{fake.uuid4()}@clinic.example>\r\n\r\nSee you soon.\r\n"
    ).encode()


async def send(port: int, pki: Pki) -> str:
    conn = await RawSmtp.ready(port, pki.client_context())
    try:
        return await conn.mail(SENDER, [fake.email()], phi_message())
    finally:
        await conn.cmd("QUIT")
        await conn.close()


async def test_sighup_reload_invalid_kept_then_valid_applied_sigterm_exits_0(
    tmp_path: Path, pki: Pki, sink: Sink
) -> None:
    svc = await start_service(tmp_path, pki, sink)
    try:
        assert await send(svc.smtp_port, pki) == REFUSED
        original = svc.policy_file.read_text()

        # An invalid file: the running policies stay, the log and the metric say so.
        svc.policy_file.write_text(original.replace('"subject-phi",', '"no-such-policy",'))
        svc.signal(signal.SIGHUP)
        await svc.wait_metric(RELOAD_OK, 0.0)
        assert await send(svc.smtp_port, pki) == REFUSED
        assert "reload failed; keeping the running configuration" in svc.log_text()
        assert len(sink.received) == 0

        # A valid file without subject-phi: new behaviour, no restart.
        svc.policy_file.write_text(original.replace('"subject-phi",', ""))
        svc.signal(signal.SIGHUP)
        await svc.wait_metric(RELOAD_OK, 1.0)
        assert (await send(svc.smtp_port, pki)).startswith("250 2.0.0 Delivered to upstream as ")
        assert len(sink.received) == 1
        assert "configuration reloaded" in svc.log_text()
        metrics = await svc.http_get("/metrics")
        assert 'phi_relay_config_reloads_total{result="error"} 1.0' in metrics
        assert 'phi_relay_config_reloads_total{result="ok"} 1.0' in metrics
    finally:
        code = await svc.stop()
    assert code == 0
    assert "Traceback" not in svc.log_text()
