"""The consent store's semantics, the same on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import sqlite3
import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import pytest
from faker import Faker

from relay.address import AddressError
from relay.consent import open_store, parse_sqlite
from relay.consent.api import Authorization, ConsentError, ConsentStore, OptOut, StoreError

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
fake = Faker()
Faker.seed(4)


def address() -> str:
    return str(fake.unique.email())


# --- authorizations ------------------------------------------------------------------------------


async def test_grant_is_current_until_revoked_and_history_is_kept(store: ConsentStore) -> None:
    rcpt = address()
    granted = await store.grant(rcpt, "marketing", ["Diabetes"], "form-17", at=T0)
    assert granted.conditions == frozenset({"diabetes"})

    found = await store.authorization(rcpt, "marketing", T0 + timedelta(days=1))
    assert found == Authorization(
        rcpt.lower(), "marketing", frozenset({"diabetes"}), T0, None, None, "form-17"
    )

    assert await store.revoke(rcpt, "marketing", at=T0 + timedelta(days=2)) == 1
    assert await store.revoke(rcpt, "marketing", at=T0 + timedelta(days=3)) == 0
    assert await store.authorization(rcpt, "marketing", T0 + timedelta(days=2)) is None
    # Before the revocation the grant was current: the history answers "was it allowed then?".
    assert await store.authorization(rcpt, "marketing", T0 + timedelta(days=1)) is not None
    rows = await store.list_authorizations(rcpt)
    assert [(r.form_ref, r.revoked) for r in rows] == [("form-17", T0 + timedelta(days=2))]


async def test_regrant_after_revoke_and_newest_grant_wins(store: ConsentStore) -> None:
    rcpt = address()
    await store.grant(rcpt, "marketing", ["diabetes", "asthma"], "form-1", at=T0)
    await store.revoke(rcpt, "marketing", at=T0 + timedelta(hours=1))
    await store.grant(rcpt, "marketing", ["asthma"], "form-2", at=T0 + timedelta(hours=2))
    later = T0 + timedelta(hours=3)

    found = await store.authorization(rcpt, "marketing", later)
    assert found is not None
    assert (found.form_ref, found.conditions) == ("form-2", frozenset({"asthma"}))

    # A further grant without revoking replaces the conditions of the one before.
    await store.grant(rcpt, "marketing", [], "form-3", at=T0 + timedelta(hours=4))
    found = await store.authorization(rcpt, "marketing", T0 + timedelta(hours=5))
    assert found is not None
    assert (found.form_ref, found.conditions) == ("form-3", frozenset())
    rows = await store.list_authorizations(rcpt)
    assert [r.form_ref for r in rows] == ["form-1", "form-2", "form-3"]


async def test_expiry_ends_the_authorization_at_that_instant(store: ConsentStore) -> None:
    rcpt = address()
    expires = T0 + timedelta(days=30)
    await store.grant(rcpt, "marketing", [], "form-1", expires=expires, at=T0)
    assert await store.authorization(rcpt, "marketing", expires - timedelta(seconds=1))
    assert await store.authorization(rcpt, "marketing", expires) is None
    assert await store.authorization(rcpt, "marketing", expires + timedelta(days=1)) is None
    # Not yet granted at an earlier time either.
    assert await store.authorization(rcpt, "marketing", T0 - timedelta(seconds=1)) is None


async def test_a_newer_expired_grant_is_not_rescued_by_an_older_one(store: ConsentStore) -> None:
    rcpt = address()
    await store.grant(rcpt, "marketing", [], "old", at=T0)
    await store.grant(
        rcpt, "marketing", [], "new", expires=T0 + timedelta(days=2), at=T0 + timedelta(days=1)
    )
    assert await store.authorization(rcpt, "marketing", T0 + timedelta(days=3)) is None


async def test_scopes_are_separate(store: ConsentStore) -> None:
    rcpt = address()
    await store.grant(rcpt, "research", [], "form-r", at=T0)
    assert await store.authorization(rcpt, "marketing", T0 + timedelta(hours=1)) is None
    found = await store.authorization(rcpt, "research", T0 + timedelta(hours=1))
    assert found is not None
    assert found.scope == "research"


async def test_addresses_are_canonical_on_write_and_look_up(store: ConsentStore) -> None:
    await store.grant("Jane.Doe@EXAMPLE.org", "marketing", [], "f", at=T0)
    found = await store.authorization(" <jane.doe@example.ORG> ", "marketing", T0)
    assert found is not None
    assert found.recipient == "jane.doe@example.org"

    # Internationalised domains match in either form: Unicode or IDNA (punycode).
    await store.grant("Kim@Bücher.example", "marketing", [], "f", at=T0)
    found = await store.authorization("kim@xn--bcher-kva.example", "marketing", T0)
    assert found is not None
    assert found.recipient == "kim@xn--bcher-kva.example"

    # Sub-addresses are distinct mailboxes.
    assert await store.authorization("jane.doe+news@example.org", "marketing", T0) is None


async def test_bad_values_are_refused_without_echoing_them(store: ConsentStore) -> None:
    with pytest.raises(AddressError) as bad_address:
        await store.grant("no-at-sign.example.org", "marketing", [], "f")
    assert "no-at-sign" not in str(bad_address.value)
    with pytest.raises(ConsentError, match=r"^scope: "):
        await store.grant(address(), "Marketing!", [], "f")
    with pytest.raises(ConsentError, match=r"^condition: "):
        await store.grant(address(), "marketing", ["diabetes;hiv"], "f")
    with pytest.raises(ConsentError, match=r"^form_ref: "):
        await store.grant(address(), "marketing", [], "  ")
    with pytest.raises(ConsentError, match=r"^at: expected a time with a time zone"):
        await store.authorization(address(), "marketing", datetime(2026, 1, 1))
    with pytest.raises(ConsentError, match=r"^expires: expected a time after the grant"):
        await store.grant(address(), "marketing", [], "f", expires=T0, at=T0)
    assert await store.list_authorizations() == []


# --- opt-outs ------------------------------------------------------------------------------------


async def test_optout_of_one_category_or_of_all(store: ConsentStore) -> None:
    one, every = address(), address()
    await store.add_optout(one, "marketing", "one-click")
    await store.add_optout(every.upper(), "all", "admin")

    assert await store.opted_out(one, "marketing") is True
    assert await store.opted_out(one, "fundraising") is False
    assert await store.opted_out(every, "marketing") is True
    assert await store.opted_out(every, "fundraising") is True
    assert await store.opted_out(address(), "marketing") is False


async def test_optout_add_is_idempotent_and_removal_keeps_history(store: ConsentStore) -> None:
    rcpt = address()
    await store.add_optout(rcpt, "all", "one-click")
    await store.add_optout(rcpt, "all", "one-click")
    await store.add_optout(rcpt, "fundraising", "admin")
    assert [(o.category, o.source) for o in await store.list_optouts(rcpt)] == [
        ("all", "one-click"),
        ("fundraising", "admin"),
    ]

    assert await store.remove_optout(rcpt, "all") == 1
    assert await store.opted_out(rcpt, "marketing") is False
    assert await store.opted_out(rcpt, "fundraising") is True
    assert await store.remove_optout(rcpt) == 1
    assert await store.remove_optout(rcpt) == 0
    assert await store.list_optouts(rcpt) == []

    await store.add_optout(rcpt, "all", "one-click")
    history = await store.list_optouts(rcpt, include_removed=True)
    assert [(o.category, o.removed is None) for o in history] == [
        ("all", False),
        ("all", True),
        ("fundraising", False),
    ]


async def test_optout_values_are_checked(store: ConsentStore) -> None:
    with pytest.raises(ConsentError, match=r"^source: expected one of one-click, admin, import$"):
        await store.add_optout(address(), "all", "web")
    with pytest.raises(ConsentError, match=r"^category: "):
        await store.add_optout(address(), "Marketing Mail", "admin")


async def test_lists_are_in_a_stable_order(store: ConsentStore) -> None:
    for rcpt in ("carol@example.net", "alice@example.net", "bob@example.net"):
        await store.add_optout(rcpt, "marketing", "admin")
        await store.grant(rcpt, "marketing", [], "f", at=T0)
    await store.add_optout("alice@example.net", "all", "admin")
    assert [(o.recipient, o.category) for o in await store.list_optouts()] == [
        ("alice@example.net", "all"),
        ("alice@example.net", "marketing"),
        ("bob@example.net", "marketing"),
        ("carol@example.net", "marketing"),
    ]
    assert [a.recipient for a in await store.list_authorizations()] == [
        "alice@example.net",
        "bob@example.net",
        "carol@example.net",
    ]


# --- imports -------------------------------------------------------------------------------------


async def test_import_checks_every_row_before_writing(store: ConsentStore) -> None:
    good = Authorization(address(), "marketing", frozenset(), T0, None, None, "f")
    bad = Authorization(address(), "no such scope", frozenset(), T0, None, None, "f")
    with pytest.raises(ConsentError):
        await store.import_authorizations([good, bad])
    assert await store.list_authorizations() == []
    assert await store.import_authorizations([good]) == 1


async def test_optout_import_counts_only_new_rows(store: ConsentStore) -> None:
    rcpt = address()
    await store.add_optout(rcpt, "all", "one-click")
    rows = [
        OptOut(rcpt, "all", T0, "import"),
        OptOut(rcpt.upper(), "marketing", T0, "import"),
        OptOut(address(), "all", T0, "import"),
    ]
    assert await store.import_optouts(rows) == 2
    assert len(await store.list_optouts()) == 3


async def _install_failing_trigger(url: str) -> None:
    """Make the database itself refuse one recipient, to prove the import is one transaction."""
    if url.startswith("sqlite:"):
        conn = sqlite3.connect(parse_sqlite(url))
        conn.executescript(
            """CREATE TRIGGER refuse BEFORE INSERT ON authorizations
               WHEN NEW.recipient = 'refused@example.com'
               BEGIN SELECT RAISE(ABORT, 'refused by test trigger'); END;
               CREATE TRIGGER refuse_o BEFORE INSERT ON optouts
               WHEN NEW.recipient = 'refused@example.com'
               BEGIN SELECT RAISE(ABORT, 'refused by test trigger'); END;"""
        )
        conn.close()
        return
    pg = await asyncpg.connect(url, timeout=10)
    try:
        await pg.execute(
            """CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS $$
               BEGIN
                 IF NEW.recipient = 'refused@example.com' THEN
                   RAISE EXCEPTION 'refused by test trigger';
                 END IF;
                 RETURN NEW;
               END $$;
               CREATE TRIGGER refuse BEFORE INSERT ON authorizations
                 FOR EACH ROW EXECUTE FUNCTION refuse();
               CREATE TRIGGER refuse_o BEFORE INSERT ON optouts
                 FOR EACH ROW EXECUTE FUNCTION refuse();"""
        )
    finally:
        await pg.close()


async def test_import_is_all_or_nothing_in_the_database(
    store: ConsentStore, store_url: str
) -> None:
    await _install_failing_trigger(store_url)
    auths = [
        Authorization(r, "marketing", frozenset(), T0, None, None, "f")
        for r in (address(), "refused@example.com", address())
    ]
    with pytest.raises(StoreError) as failed:
        await store.import_authorizations(auths)
    assert "refused@example.com" not in str(failed.value)
    assert await store.list_authorizations() == []

    optouts = [OptOut(r, "all", T0, "import") for r in (address(), "refused@example.com")]
    with pytest.raises(StoreError):
        await store.import_optouts(optouts)
    assert await store.list_optouts() == []
    # The store is still usable after the rolled-back transaction.
    await store.add_optout(address(), "all", "admin")
    assert len(await store.list_optouts()) == 1


# --- opening, schema and URLs --------------------------------------------------------------------


async def test_data_survives_reopening_and_schema_is_versioned(store_url: str) -> None:
    first = await open_store(store_url)
    rcpt = address()
    await first.grant(rcpt, "marketing", ["asthma"], "f", at=T0)
    await first.add_optout(rcpt, "fundraising", "admin")
    await first.close()

    second = await open_store(store_url)
    try:
        await second.ping()
        assert await second.opted_out(rcpt, "fundraising") is True
        assert [a.conditions for a in await second.list_authorizations()] == [frozenset({"asthma"})]
    finally:
        await second.close()
    assert await _schema_versions(store_url) == [1]


async def _schema_versions(url: str) -> list[int]:
    if url.startswith("sqlite:"):
        conn = sqlite3.connect(parse_sqlite(url))
        try:
            return [row[0] for row in conn.execute("SELECT version FROM schema_version")]
        finally:
            conn.close()
    pg = await asyncpg.connect(url, timeout=10)
    try:
        return [row[0] for row in await pg.fetch("SELECT version FROM schema_version")]
    finally:
        await pg.close()


async def test_a_newer_schema_is_refused(store_url: str) -> None:
    opened = await open_store(store_url)
    await opened.close()
    if store_url.startswith("sqlite:"):
        conn = sqlite3.connect(parse_sqlite(store_url))
        conn.execute("INSERT INTO schema_version (version) VALUES (99)")
        conn.commit()
        conn.close()
    else:
        pg = await asyncpg.connect(store_url, timeout=10)
        await pg.execute("INSERT INTO schema_version (version) VALUES (99)")
        await pg.close()
    with pytest.raises(StoreError, match="schema version 99 is newer than this phi-relay"):
        await open_store(store_url)


@pytest.mark.parametrize(
    "url",
    [
        "mysql://db/consent",
        "consent.db",
        "sqlite://relative.db",
        "sqlite:///",
        "sqlite:///:memory:",
        "sqlite:///state/",
        "sqlite:///consent.db?mode=ro",
    ],
)
async def test_bad_urls_say_what_is_expected(url: str) -> None:
    with pytest.raises(
        ValueError, match=r"expected sqlite:///relative/path.db, sqlite:////absolute"
    ):
        await open_store(url)


async def test_relative_sqlite_path_is_under_the_current_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    opened = await open_store("sqlite:///state/consent.db")
    await opened.close()
    db = tmp_path / "state" / "consent.db"
    # Owner-only: the file holds recipient addresses.
    assert stat.S_IMODE(db.stat().st_mode) == 0o600
    assert stat.S_IMODE(db.parent.stat().st_mode) == 0o700


async def test_unusable_sqlite_path_is_a_store_error(tmp_path: Path) -> None:
    target = tmp_path / "a-directory.db"
    target.mkdir()
    with pytest.raises(StoreError) as failed:
        await open_store(f"sqlite:///{target}")
    assert str(failed.value) == f"consent store {target}: Is a directory"


async def test_unreachable_postgresql_is_a_store_error_without_the_password() -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(StoreError) as failed:
        await open_store(f"postgresql://user:s3cret-pw@127.0.0.1:{port}/db")
    assert "s3cret-pw" not in str(failed.value)
    assert str(failed.value).startswith("consent store (postgresql) unreachable: ")


async def test_condition_tags_take_the_detectors_phrases(store: ConsentStore) -> None:
    rcpt = address()
    tags = ["Cushing's  Syndrome", "mature t/nk-cell lymphomas", "leprosy [hansen's disease]"]
    await store.grant(rcpt, "marketing", tags, "f", at=T0)
    found = await store.authorization(rcpt, "marketing", T0)
    assert found is not None
    assert found.conditions == frozenset(
        {"cushing's syndrome", "mature t/nk-cell lymphomas", "leprosy [hansen's disease]"}
    )
    for bad in ("a;b", "a,b", " ", "[x]", "x" * 101, "a\x01b"):
        with pytest.raises(ConsentError, match=r"^condition: "):
            await store.grant(rcpt, "marketing", [bad], "f")


async def test_concurrent_optouts_for_one_pair_keep_one_row(store: ConsentStore) -> None:
    rcpt = address()
    await asyncio.gather(*(store.add_optout(rcpt, "all", "one-click") for _ in range(20)))
    assert [(o.recipient, o.category) for o in await store.list_optouts(rcpt)] == [
        (rcpt.lower(), "all")
    ]
