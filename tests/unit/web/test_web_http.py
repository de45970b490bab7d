"""The unsubscribe, health, readiness and metrics endpoints over a real socket."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import time

import aiohttp
import pytest
import structlog
from faker import Faker
from web_support import Site

import relay.web
from relay.links import make_link_maker
from relay.tokens import TokenCodec
from relay.web import MAX_BODY, SECURITY_HEADERS

ONE_CLICK = {"List-Unsubscribe": "One-Click"}


async def optouts(site: Site) -> list[tuple[str, str, str]]:
    rows = await site.store.list_optouts()
    return [(o.recipient, o.category, o.source) for o in rows]


def unsubscribes(site: Site, category: str, result: str) -> float | None:
    return site.metrics.registry.get_sample_value(
        "phi_relay_unsubscribes_total", {"category": category, "result": result}
    )


async def test_get_shows_button_and_changes_nothing(site: Site, fake: Faker) -> None:
    address = fake.email()
    token = site.codec.issue(address, "marketing")
    async with site.client.get(site.url(token)) as resp:
        page = await resp.text()
        assert resp.status == 200
        assert resp.content_type == "text/html"
    assert '<form method="post" action="">' in page
    assert '<input type="hidden" name="List-Unsubscribe" value="One-Click">' in page
    assert "marketing email from Example Clinic" in page
    # A forwarded message carries the same link: the page must not reveal whose it is.
    assert address not in page
    assert address.split("@")[0] not in page
    assert "<script" not in page.lower()
    async with site.client.head(site.url(token)) as resp:
        assert resp.status == 200
    assert await optouts(site) == []
    assert unsubscribes(site, "marketing", "shown") == 2.0


async def test_one_click_post_records_optout_and_is_idempotent(site: Site, fake: Faker) -> None:
    address = fake.email()
    token = site.codec.issue(address.upper(), "fundraising")
    for _ in range(2):
        async with site.client.post(site.url(token), data=ONE_CLICK, allow_redirects=False) as resp:
            page = await resp.text()
            assert resp.status == 200
        assert "You are unsubscribed" in page
        assert "fundraising email from Example Clinic" in page
        assert address not in page
    assert await optouts(site) == [(address.lower(), "fundraising", "one-click")]
    assert await site.store.opted_out(address, "fundraising") is True
    assert await site.store.opted_out(address, "marketing") is False
    assert unsubscribes(site, "fundraising", "ok") == 2.0


async def test_button_post_multipart_and_empty_body_all_count(site: Site, fake: Faker) -> None:
    # RFC 8058 allows multipart/form-data too; a client sending nothing still meant it.
    first, second = fake.email(), fake.email()
    form = aiohttp.MultipartWriter("form-data")
    part = form.append("One-Click")
    part.set_content_disposition("form-data", name="List-Unsubscribe")
    async with site.client.post(site.url(site.codec.issue(first, "education")), data=form) as resp:
        assert resp.status == 200
    async with site.client.post(site.url(site.codec.issue(second, "education"))) as resp:
        assert resp.status == 200
    assert sorted(await optouts(site)) == sorted(
        [(first.lower(), "education", "one-click"), (second.lower(), "education", "one-click")]
    )


def tamper(token: str) -> str:
    i = len(token) // 2
    return token[:i] + ("A" if token[i] != "A" else "B") + token[i + 1 :]


@pytest.mark.parametrize("method", ["GET", "POST"])
async def test_bad_tokens_get_400_with_a_plain_page(site: Site, fake: Faker, method: str) -> None:
    address = fake.email()
    good = site.codec.issue(address, "marketing")
    foreign = TokenCodec([b"f" * 32]).issue(address, "marketing")
    cases = {
        "tampered": tamper(good),
        "truncated": good[:-6],
        "foreign key": foreign,
        "garbage": "not-a-token",
        "too long": "A" * 600,
    }
    for label, token in cases.items():
        async with site.client.request(method, site.url(token), data=ONE_CLICK) as resp:
            page = await resp.text()
            assert resp.status == 400, label
        assert "This unsubscribe link is not valid" in page, label
        assert "Nothing was changed" in page
    expired = site.codec.issue(address, "marketing", now=time.time() - site.codec.max_age - 60)
    async with site.client.request(method, site.url(expired), data=ONE_CLICK) as resp:
        page = await resp.text()
        assert resp.status == 400
    assert "This unsubscribe link has expired" in page
    assert await optouts(site) == []
    assert unsubscribes(site, "unknown", "invalid") == 5.0
    assert unsubscribes(site, "unknown", "expired") == 1.0
    assert site.flaky.calls == 0


async def test_store_failure_is_503_never_200(site: Site, fake: Faker) -> None:
    address = fake.email()
    token = site.codec.issue(address, "marketing")
    site.flaky.failing = True
    async with site.client.post(site.url(token), data=ONE_CLICK) as resp:
        page = await resp.text()
        assert resp.status == 503
        assert resp.headers["Retry-After"] == "120"
    assert "We could not record your request" in page
    assert await optouts(site) == []
    # The provider retries; once the store is back the same link works.
    site.flaky.failing = False
    async with site.client.post(site.url(token), data=ONE_CLICK) as resp:
        assert resp.status == 200
    assert await optouts(site) == [(address.lower(), "marketing", "one-click")]
    assert unsubscribes(site, "marketing", "store_error") == 1.0


async def test_oversized_body_is_refused_and_records_nothing(site: Site, fake: Faker) -> None:
    token = site.codec.issue(fake.email(), "marketing")
    async with site.client.post(site.url(token), data=b"x" * (MAX_BODY + 1)) as resp:
        assert resp.status == 413
    assert await optouts(site) == []


async def test_security_headers_on_every_response(site: Site, fake: Faker) -> None:
    token = site.codec.issue(fake.email(), "marketing")
    for method, path in [
        ("GET", f"/u/{token}"),
        ("POST", f"/u/{token}"),
        ("GET", "/u/bad"),
        ("GET", "/healthz"),
        ("GET", "/readyz"),
        ("GET", "/metrics"),
        ("GET", "/nowhere"),
    ]:
        async with site.client.request(method, site.base + path, data=ONE_CLICK) as resp:
            for name, value in SECURITY_HEADERS.items():
                assert resp.headers.get(name) == value, (path, name)
    assert SECURITY_HEADERS["Content-Security-Policy"].startswith("default-src 'none'; ")


async def test_healthz(site: Site) -> None:
    async with site.client.get(site.base + "/healthz") as resp:
        assert resp.status == 200
        assert await resp.text() == "ok\n"


async def test_readyz_ok_lists_every_check(site: Site) -> None:
    async with site.client.get(site.base + "/readyz") as resp:
        assert resp.status == 200
        assert json.loads(await resp.text()) == {
            "status": "ready",
            "checks": {"store": "ok", "upstream": "ok"},
            "age": {"store": 0.0, "upstream": 0.0},
        }


async def test_readyz_503_names_the_failing_check(site: Site) -> None:
    site.flaky.failing = True
    async with site.client.get(site.base + "/readyz") as resp:
        assert resp.status == 503
        assert json.loads(await resp.text()) == {
            "status": "not ready",
            "checks": {"store": "error: ConnectionError", "upstream": "ok"},
            "age": {"store": 0.0, "upstream": 0.0},
            "failing": ["store"],
            "reason": "store: error: ConnectionError",
        }


@pytest.fixture
def slow_upstream(
    readiness: dict[str, relay.web.ReadinessCheck], monkeypatch: pytest.MonkeyPatch
) -> None:
    async def hangs() -> None:
        await asyncio.sleep(5)

    readiness["upstream"] = hangs
    monkeypatch.setattr(relay.web, "CHECK_TIMEOUT", 0.1)


@pytest.mark.usefixtures("slow_upstream")
async def test_readyz_times_out_a_hanging_check(site: Site) -> None:
    started = time.monotonic()
    async with site.client.get(site.base + "/readyz") as resp:
        assert resp.status == 503
        body = json.loads(await resp.text())
    assert time.monotonic() - started < 2.0
    assert body["checks"] == {"store": "ok", "upstream": "timeout"}
    assert body["failing"] == ["upstream"]


async def test_metrics_endpoint_shows_counters(site: Site, fake: Faker) -> None:
    site.metrics.auth_failure()
    token = site.codec.issue(fake.email(), "marketing")
    async with site.client.post(site.url(token), data=ONE_CLICK) as resp:
        assert resp.status == 200
    async with site.client.get(site.base + "/metrics") as resp:
        assert resp.status == 200
        assert resp.content_type == "text/plain"
        text = await resp.text()
    lines = set(text.splitlines())
    assert 'phi_relay_unsubscribes_total{category="marketing",result="ok"} 1.0' in lines
    assert "phi_relay_auth_failures_total 1.0" in lines
    assert "phi_relay_config_last_reload_success 1.0" in lines
    assert "# TYPE phi_relay_decision_seconds histogram" in lines


async def test_tokens_and_addresses_never_reach_the_logs(
    site: Site, fake: Faker, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    caplog.set_level(logging.DEBUG)
    address = fake.email()
    token = site.codec.issue(address, "marketing")
    with structlog.testing.capture_logs() as events:
        async with site.client.get(site.url(token)) as resp:
            assert resp.status == 200
        async with site.client.post(site.url(token), data=ONE_CLICK) as resp:
            assert resp.status == 200
        site.flaky.failing = True
        async with site.client.post(site.url(token), data=ONE_CLICK) as resp:
            assert resp.status == 503
        async with site.client.get(site.url(tamper(token))) as resp:
            assert resp.status == 400
        # The access log line is written after the response; let the handlers finish.
        for _ in range(50):
            if sum(e["event"] == "http.request" for e in events) == 4:
                break
            await asyncio.sleep(0.02)
    access = [(e["method"], e["route"], e["status"]) for e in events if "route" in e]
    assert access == [
        ("GET", "/u/{token}", 200),
        ("POST", "/u/{token}", 200),
        ("POST", "/u/{token}", 503),
        ("GET", "/u/{token}", 400),
    ]
    everything = repr(events) + caplog.text + "".join(capsys.readouterr())
    for secret in (token, tamper(token), token[:20], address, address.split("@")[0]):
        assert secret not in everything


async def test_token_does_not_carry_the_address_in_clear(site: Site, fake: Faker) -> None:
    address = fake.email().lower()
    token = site.codec.issue(address, "marketing")
    raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
    for part in (address, address.split("@")[0], address.split("@")[1]):
        assert part.encode() not in raw
        assert part not in token


async def test_link_from_the_link_maker_unsubscribes(site: Site, fake: Faker) -> None:
    address = fake.email()
    # Links are https only (a TLS proxy in front of this plain test site): same path here.
    maker = make_link_maker(
        site.codec, "https://unsubscribe.example.org", "unsubscribe@example.org"
    )
    links = maker(address, "marketing")
    assert links.https.startswith("https://unsubscribe.example.org/u/")
    url = site.base + links.https.removeprefix("https://unsubscribe.example.org")
    async with site.client.get(url) as resp:
        assert resp.status == 200
    assert await site.store.opted_out(address, "marketing") is False
    async with site.client.post(url, data=ONE_CLICK) as resp:
        assert resp.status == 200
    assert await site.store.opted_out(address, "marketing") is True


async def test_malformed_requests_do_not_log_the_token(
    site: Site, fake: Faker, caplog: pytest.LogCaptureFixture
) -> None:
    # aiohttp reports a malformed request with its raw request line; ours drops the message.
    caplog.set_level(logging.DEBUG)
    token = site.codec.issue(fake.email(), "marketing")
    port = int(site.base.rsplit(":", 1)[1])
    requests = [
        f"GET /u/{token} HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n",
        f"GET /u/{token}\x01 HTTP/1.1\r\nHost: x\r\n\r\n",
    ]
    with structlog.testing.capture_logs() as events:
        for raw_request in requests:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(raw_request.encode())
            await writer.drain()
            status_line = (await asyncio.wait_for(reader.readline(), 5)).decode()
            writer.close()
            await writer.wait_closed()
            assert status_line.split()[1] == "400"
        for _ in range(50):
            if sum("route" in e for e in events) == 2:
                break
            await asyncio.sleep(0.02)
    assert [(e["route"], e["status"]) for e in events if "route" in e] == [
        ("unmatched", 400),
        ("unmatched", 400),
    ]
    server_errors = [
        r.getMessage().splitlines()[0] for r in caplog.records if r.name == "relay.web.server"
    ]
    assert server_errors == [
        "http server error: BadHttpMessage",
        "http server error: InvalidURLError",
    ]
    assert token not in caplog.text
    assert token not in repr(events)
