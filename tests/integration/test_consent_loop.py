"""Issue 4's whole loop through real sockets: categories, authorizations, one-click opt-out."""

from __future__ import annotations

import re
from email.message import EmailMessage
from pathlib import Path

import aiohttp
import aiosmtplib
import pytest
from faker import Faker

from relay.consent import open_store
from tests.support.pki import Pki
from tests.support.relay import RunningRelay, start_relay
from tests.support.upstream import Sink

fake = Faker()


def message(category: str, subject: str, to: list[str], body: str = "Hello.\n") -> bytes:
    msg = EmailMessage()
    msg["From"] = "news@clinic.example"
    msg["To"] = ", ".join(to)
    msg["Subject"] = subject
    msg["X-PHI-Category"] = category
    msg.set_content(body)
    msg.add_alternative(f"<html><body><p>{body}</p></body></html>\n", subtype="html")
    return msg.as_bytes(policy=msg.policy.clone(linesep="\r\n"))


async def send(r: RunningRelay, to: list[str], data: bytes) -> tuple[dict, str]:
    client = await r.client()
    try:
        return await client.sendmail("news@clinic.example", to, data)
    finally:
        await client.quit()


@pytest.fixture
async def loop_relay(tmp_path: Path, pki: Pki, sink: Sink, store_url: str):  # type: ignore[no-untyped-def]
    r = await start_relay(tmp_path, pki, sink, top={"consent_store": store_url})
    yield r
    await r.stop()


async def test_marketing_authorization_optout_and_segmentation(
    loop_relay: RunningRelay, sink: Sink, store_url: str
) -> None:
    r = loop_relay
    authorized, stranger = fake.unique.email(), fake.unique.email()
    store = await open_store(store_url)
    try:
        await store.grant(authorized, "marketing", (), "form-2026-001")
    finally:
        await store.close()

    # 1. Marketing to two recipients, one authorized: only that one receives it.
    errors, _ = await send(
        r,
        [authorized, stranger],
        message("marketing", "Spring wellness offers", [authorized, stranger]),
    )
    assert errors == {}
    [got] = sink.received
    assert got.rcpt_tos == [authorized]
    out = got.message
    assert "X-PHI-Category" not in out
    assert out["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    text = out.get_body(("plain",))
    html = out.get_body(("html",))
    assert text is not None and html is not None
    assert "100 Main Street" in text.get_content() and "100 Main Street" in html.get_content()
    [decision] = r.decisions()
    assert decision["category"] == "marketing"
    assert list(decision["dropped"].values()) == ["consent.no-authorization"]
    assert authorized not in r.audit_path.read_text()

    # 2. POST the one-click URL taken from the delivered message.
    url = re.search(r"<(https?://[^>]+/u/[^>]+)>", out["List-Unsubscribe"])
    assert url is not None
    token_path = url.group(1).split("/u/", 1)[1]
    assert authorized not in url.group(1)
    async with aiohttp.ClientSession() as http:
        page = await http.get(f"http://127.0.0.1:{r.relay.http_port}/u/{token_path}")
        assert page.status == 200  # the GET only shows a button
        post = await http.post(
            f"http://127.0.0.1:{r.relay.http_port}/u/{token_path}",
            data={"List-Unsubscribe": "One-Click"},
        )
        assert post.status == 200

    # 3. The next marketing message to that address is suppressed...
    with pytest.raises(aiosmtplib.SMTPDataError) as info:
        await send(r, [authorized], message("marketing", "Summer wellness offers", [authorized]))
    assert (info.value.code, info.value.message) == (
        550,
        "5.7.1 Every recipient has opted out of this kind of message; it was not sent",
    )
    assert len(sink.received) == 1
    # ...while an appointment reminder still arrives, with no footer.
    errors, _ = await send(
        r,
        [authorized],
        message("appointment-reminder", "Your appointment is confirmed", [authorized]),
    )
    assert errors == {}
    assert len(sink.received) == 2
    assert sink.received[1].rcpt_tos == [authorized]
    assert "List-Unsubscribe" not in sink.received[1].message

    # 4. Condition-based marketing needs an authorization scoped to the condition.
    general, scoped = fake.unique.email(), fake.unique.email()
    store = await open_store(store_url)
    try:
        await store.grant(general, "marketing", (), "form-2026-002")
        await store.grant(scoped, "marketing", ("diabetes",), "form-2026-003")
    finally:
        await store.close()
    subject = "New program for people living with diabetes"
    with pytest.raises(aiosmtplib.SMTPDataError) as info:
        await send(r, [general], message("marketing", subject, [general]))
    assert info.value.code == 550
    assert info.value.message.startswith("5.7.1 Message refers to a health condition")
    errors, _ = await send(r, [general, scoped], message("marketing", subject, [general, scoped]))
    assert errors == {}
    assert sink.received[-1].rcpt_tos == [scoped]


async def test_unknown_category_names_the_allowed_ones(relay: RunningRelay, sink: Sink) -> None:
    rcpt = fake.email()
    with pytest.raises(aiosmtplib.SMTPDataError) as info:
        await send(relay, [rcpt], message("newsletter", "Our new Saturday hours", [rcpt]))
    assert info.value.code == 550
    # The client's value is never echoed (it could carry anything); the known ones are listed.
    assert info.value.message.startswith(
        "5.7.1 X-PHI-Category names no known message category; use one of: "
    )
    assert "newsletter" not in info.value.message
    assert "marketing" in info.value.message and "treatment" in info.value.message
    assert sink.received == []
