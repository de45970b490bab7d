"""Apps: a Django project sends through the relay with its SMTP backend (STARTTLS + AUTH).

The project (tests/integration/apps/django_send.py) runs as its own process with the
settings docs/apps.md gives; the relay and the upstream sink run here on loopback.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from relay.users import add_user
from tests.support.pki import Pki
from tests.support.relay import RunningRelay, start_relay
from tests.support.upstream import Sink

ROOT = Path(__file__).resolve().parents[2]
APP = Path(__file__).with_name("apps") / "django_send.py"
USER, PASSWORD = "django-app", "a synthetic django passphrase"
RECIPE_BACKEND = "tests.integration.apps.django_send.RelayEmailBackend"


@pytest.fixture
async def auth_relay(tmp_path: Path, pki: Pki, sink: Sink) -> AsyncIterator[RunningRelay]:
    users = tmp_path / "users"
    add_user(users, USER, PASSWORD)
    r = await start_relay(
        tmp_path, pki, sink, server={"users_file": str(users), "trusted_networks": []}
    )
    yield r
    await r.stop()


async def django_send(relay: RunningRelay, subject: str, **env: str) -> dict[str, Any]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("RELAY_", "SSL_CERT"))}
    settings = {
        "RELAY_HOST": "localhost",
        "RELAY_PORT": str(relay.port),
        "RELAY_USER": USER,
        "RELAY_PASSWORD": PASSWORD,
        "RELAY_SUBJECT": subject,
        "RELAY_TO": "patient@example.org",
        "PYTHONPATH": str(ROOT),
        **env,
    }
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        str(APP),
        env={**base, **settings},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert b"Traceback" not in err, err.decode()
    result: dict[str, Any] = json.loads(out)
    return result


async def test_stock_backend_with_the_ca_in_ssl_cert_file(
    auth_relay: RunningRelay, sink: Sink, pki: Pki
) -> None:
    got = await django_send(auth_relay, "Our new Saturday hours", SSL_CERT_FILE=str(pki.ca))
    assert got == {"sent": 1}
    (msg,) = sink.received
    assert msg.rcpt_tos == ["patient@example.org"]
    assert auth_relay.decisions()[0]["auth_user"] == USER


async def test_recipe_backend_with_the_ca_in_settings(
    auth_relay: RunningRelay, sink: Sink, pki: Pki
) -> None:
    got = await django_send(
        auth_relay,
        "Our new Saturday hours",
        RELAY_BACKEND=RECIPE_BACKEND,
        RELAY_CA_FILE=str(pki.ca),
    )
    assert got == {"sent": 1}
    assert len(sink.received) == 1


async def test_what_the_app_sees_on_a_refusal(
    auth_relay: RunningRelay, sink: Sink, pki: Pki
) -> None:
    got = await django_send(auth_relay, "MRN 4451234 lab results", SSL_CERT_FILE=str(pki.ca))
    assert got["error"] == "SMTPDataError" and got["code"] == 550
    assert got["text"].startswith(
        "5.7.1 Subject line contains protected health information (medical record number"
    )
    unconsented = await django_send(
        auth_relay, "Spring wellness offers", SSL_CERT_FILE=str(pki.ca), RELAY_CATEGORY="marketing"
    )
    assert unconsented["error"] == "SMTPDataError" and unconsented["code"] == 550
    assert unconsented["text"].startswith("5.7.1")
    assert sink.received == []


async def test_an_untrusted_relay_certificate_fails_and_sends_nothing(
    auth_relay: RunningRelay, sink: Sink
) -> None:
    got = await django_send(auth_relay, "Our new Saturday hours")  # test CA not trusted
    assert got["error"] == "SSLCertVerificationError"
    assert sink.received == []
    assert auth_relay.decisions() == []


def test_docs_show_the_tested_recipe() -> None:
    docs = (ROOT / "docs" / "apps.md").read_text()
    source = APP.read_text()
    start = source.index("# --- recipe")
    recipe = source[source.index("\n", start) + 1 : source.index("# --- end recipe")].strip()
    assert recipe in docs, "docs/apps.md must show RelayEmailBackend as tested"
    for line in ("EMAIL_USE_TLS = True", "EMAIL_PORT = 2525", "X-PHI-Category"):
        assert line in docs
