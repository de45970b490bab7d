"""Unsubscribe tokens: round trip, tampering, expiry, rotation, and no address in clear."""

from __future__ import annotations

import base64
import secrets
from pathlib import Path

import pytest
from faker import Faker

from relay.keys import KeyError_, env_name, init
from relay.tokens import (
    DEFAULT_MAX_AGE,
    Claims,
    ExpiredToken,
    InvalidToken,
    TokenCodec,
)

NOW = 1_790_000_000.0


def raw(token: str) -> bytes:
    return base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))


def flip(token: str, i: int) -> str:
    return token[:i] + ("A" if token[i] != "A" else "B") + token[i + 1 :]


def test_round_trip_canonicalises_the_recipient(codec: TokenCodec) -> None:
    token = codec.issue("<Jane.Doe+News@Example.ORG>", "marketing", now=NOW)
    assert codec.open(token, now=NOW + 10) == Claims(
        recipient="jane.doe+news@example.org", category="marketing", issued=NOW
    )


def test_international_domain_is_idna(codec: TokenCodec) -> None:
    token = codec.issue("pat@bücher.example", "education", now=NOW)
    assert codec.open(token, now=NOW).recipient == "pat@xn--bcher-kva.example"


def test_typical_token_is_87_url_safe_characters(codec: TokenCodec) -> None:
    token = codec.issue("jane.doe@example.com", "marketing", now=NOW)
    # 3 header + 12 nonce + 4 time + 1 + 9 category + 20 address + 16 tag = 65 bytes.
    assert len(raw(token)) == 65
    assert len(token) == 87
    assert set(token) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")


def test_fresh_nonce_each_time(codec: TokenCodec) -> None:
    a = codec.issue("jane@example.com", "marketing", now=NOW)
    b = codec.issue("jane@example.com", "marketing", now=NOW)
    assert a != b
    assert codec.open(a, now=NOW) == codec.open(b, now=NOW)


def test_no_address_or_category_in_clear(codec: TokenCodec, fake: Faker) -> None:
    for _ in range(20):
        address = fake.email().lower()
        token = codec.issue(address, "fundraising", now=NOW)
        decoded = raw(token)
        local, domain = address.split("@")
        for part in (address, local, domain, "fundraising"):
            assert part.encode() not in decoded
            assert part not in token


def test_every_single_character_change_is_refused(codec: TokenCodec) -> None:
    token = codec.issue("jane@example.com", "marketing", now=NOW)
    # The last character also carries padding bits that decode to nothing, so stop before it.
    for i in range(len(token) - 1):
        with pytest.raises(InvalidToken):
            codec.open(flip(token, i), now=NOW)


@pytest.mark.parametrize(
    "garbage",
    ["", "A", "AAAA", "not a token", "abc$def", "=" * 8, "A" * 513, "🙂" * 10, "AAAAA"],
)
def test_garbage_is_invalid(codec: TokenCodec, garbage: str) -> None:
    with pytest.raises(InvalidToken) as info:
        codec.open(garbage, now=NOW)
    assert type(info.value) is InvalidToken


def test_truncated_is_invalid(codec: TokenCodec) -> None:
    token = codec.issue("jane@example.com", "marketing", now=NOW)
    for cut in (1, 4, 22, 40, len(token) - 4):
        with pytest.raises(InvalidToken):
            codec.open(token[:-cut], now=NOW)


def test_foreign_key_is_invalid(codec: TokenCodec) -> None:
    other = TokenCodec([secrets.token_bytes(32)])
    token = other.issue("jane@example.com", "marketing", now=NOW)
    with pytest.raises(InvalidToken) as info:
        codec.open(token, now=NOW)
    assert type(info.value) is InvalidToken


def test_expiry_boundary(codec: TokenCodec) -> None:
    token = codec.issue("jane@example.com", "marketing", now=NOW)
    assert codec.open(token, now=NOW + DEFAULT_MAX_AGE).issued == NOW
    with pytest.raises(ExpiredToken):
        codec.open(token, now=NOW + DEFAULT_MAX_AGE + 1)
    short = TokenCodec([b"k" * 32], max_age=60)
    with pytest.raises(ExpiredToken):
        short.open(short.issue("jane@example.com", "marketing", now=NOW), now=NOW + 61)


def test_issued_far_in_the_future_is_invalid(codec: TokenCodec) -> None:
    token = codec.issue("jane@example.com", "marketing", now=NOW + 3 * 86400)
    with pytest.raises(InvalidToken) as info:
        codec.open(token, now=NOW)
    assert type(info.value) is InvalidToken


def test_rotation_new_key_prepended_old_tokens_still_open() -> None:
    old, new = secrets.token_bytes(32), secrets.token_bytes(32)
    before = TokenCodec([old])
    old_token = before.issue("jane@example.com", "marketing", now=NOW)
    after = TokenCodec([new, old])
    assert after.open(old_token, now=NOW).recipient == "jane@example.com"
    new_token = after.issue("jane@example.com", "marketing", now=NOW)
    # The newest key encrypts: the old-only codec cannot open the new token.
    with pytest.raises(InvalidToken):
        before.open(new_token, now=NOW)
    retired = TokenCodec([new])
    assert retired.open(new_token, now=NOW).category == "marketing"
    with pytest.raises(InvalidToken):
        retired.open(old_token, now=NOW)


def test_keys_from_state_dir_and_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(env_name("unsubscribe"), raising=False)
    # Loading never makes a key (every mailed link would break); only init does.
    with pytest.raises(KeyError_, match=r"unsubscribe\.key: missing"):
        TokenCodec.from_state_dir(tmp_path)
    init(tmp_path, ["unsubscribe"])
    first = TokenCodec.from_state_dir(tmp_path)
    token = first.issue("jane@example.com", "marketing", now=NOW)
    key_file = tmp_path / "keys" / "unsubscribe.key"
    assert key_file.stat().st_mode & 0o777 == 0o600
    # Rotation on disk: prepend a new line; the old key stays below it.
    newer = base64.b64encode(secrets.token_bytes(32)).decode()
    key_file.write_text(newer + "\n" + key_file.read_text())
    rotated = TokenCodec.from_state_dir(tmp_path)
    assert rotated.open(token, now=NOW).recipient == "jane@example.com"
    with pytest.raises(InvalidToken):
        first.open(rotated.issue("jane@example.com", "marketing", now=NOW), now=NOW)
    # The environment variable wins and holds the list comma-separated, newest first.
    old_line = key_file.read_text().splitlines()[1]
    monkeypatch.setenv(env_name("unsubscribe"), f"{newer},{old_line}")
    assert TokenCodec.from_state_dir(tmp_path).open(token, now=NOW).category == "marketing"


@pytest.mark.parametrize("category", ["", "Marketing", "mark eting", "x" * 41, "ünsub"])
def test_bad_category_is_refused_at_issue(codec: TokenCodec, category: str) -> None:
    with pytest.raises(ValueError, match="category must be"):
        codec.issue("jane@example.com", category)


def test_bad_recipient_is_refused_at_issue(codec: TokenCodec) -> None:
    with pytest.raises(ValueError, match="expected local-part@domain"):
        codec.issue("not-an-address", "marketing")


def test_codec_refuses_short_or_missing_keys() -> None:
    with pytest.raises(ValueError, match="at least one unsubscribe key"):
        TokenCodec([])
    with pytest.raises(ValueError, match="need at least 32 bytes"):
        TokenCodec([b"short"])
    with pytest.raises(ValueError, match="max_age must be positive"):
        TokenCodec([b"k" * 32], max_age=0)
