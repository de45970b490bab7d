"""`phi-relay consent` and `phi-relay optout`: output, exit codes and all-or-nothing imports."""

from __future__ import annotations

import argparse
import asyncio
import re
import sys
from pathlib import Path

import pytest

from relay.cli import EXIT_OK, EXIT_REFUSED, EXIT_USAGE, CliError
from relay.cli import consent as consent_cli
from relay.cli import optout as optout_cli
from relay.consent import open_store
from relay.consent.api import Authorization, OptOut

Run = tuple[int, str, str]


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> Run:
    """What `relay.cli.main` does, with only the two command groups under test registered."""
    parser = argparse.ArgumentParser(prog="phi-relay")
    sub = parser.add_subparsers(dest="command", required=True)
    consent_cli.register(sub)
    optout_cli.register(sub)
    args = parser.parse_args(argv)
    try:
        code: int = args.func(args)
    except CliError as exc:
        print(f"phi-relay {args.command}: {exc}", file=sys.stderr)
        code = EXIT_USAGE
    out = capsys.readouterr()
    return code, out.out, out.err


def authorizations(url: str) -> list[Authorization]:
    async def main() -> list[Authorization]:
        store = await open_store(url)
        try:
            return await store.list_authorizations()
        finally:
            await store.close()

    return asyncio.run(main())


def optouts(url: str) -> list[OptOut]:
    async def main() -> list[OptOut]:
        store = await open_store(url)
        try:
            return await store.list_optouts()
        finally:
            await store.close()

    return asyncio.run(main())


@pytest.fixture
def url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'consent.db'}"


def test_grant_list_revoke(capsys: pytest.CaptureFixture[str], url: str) -> None:
    code, out, err = run(
        capsys,
        "consent", "grant", "Ann@Example.org", "--condition", "Diabetes", "--condition", "asthma",
        "--expires", "2099-01-01", "--form-ref", "scan-0042", "--store", url,
    )  # fmt: skip
    assert (code, out, err) == (
        EXIT_OK,
        "granted\tann@example.org\tmarketing\tasthma,diabetes\t2099-01-01T00:00:00Z\n",
        "",
    )
    run(capsys, "consent", "grant", "bo@example.org", "--form-ref", "f-2", "--store", url)
    assert run(capsys, "consent", "revoke", "ANN@example.org", "--store", url) == (
        EXIT_OK,
        "revoked\t1\n",
        "",
    )
    assert run(capsys, "consent", "revoke", "ann@example.org", "--store", url) == (
        EXIT_REFUSED,
        "",
        "no unrevoked marketing authorization for that address\n",
    )
    code, out, _ = run(capsys, "consent", "list", "--store", url)
    lines = [line.split("\t") for line in out.splitlines()]
    assert code == EXIT_OK
    assert [(f[0], f[1], f[2], f[4], f[6], f[7]) for f in lines] == [
        ("ann@example.org", "marketing", "asthma,diabetes", "2099-01-01T00:00:00Z", "revoked",
         "scan-0042"),
        ("bo@example.org", "marketing", "-", "-", "current", "f-2"),
    ]  # fmt: skip
    assert lines[0][5] != "-"
    assert lines[1][5] == "-"
    code, out, _ = run(capsys, "consent", "list", "bo@example.org", "--store", url)
    assert [line.split("\t")[0] for line in out.splitlines()] == ["bo@example.org"]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["not-an-address"], "phi-relay consent: address: expected local-part@domain\n"),
        (
            ["a@example.org", "--expires", "2020-01-01"],
            "phi-relay consent: --expires: expected a date in the future\n",
        ),
        (
            ["a@example.org", "--expires", "01/02/2099"],
            "phi-relay consent: --expires: expected YYYY-MM-DD or an ISO 8601 time with a zone\n",
        ),
        (
            ["a@example.org", "--condition", "a;b"],
            "phi-relay consent: condition: expected a lower-case name of up to 100 characters,"
            " starting with a letter or digit, without ';' or ','\n",
        ),
    ],
)
def test_grant_input_errors_are_one_line(
    capsys: pytest.CaptureFixture[str], url: str, argv: list[str], message: str
) -> None:
    code, out, err = run(capsys, "consent", "grant", *argv, "--form-ref", "f", "--store", url)
    assert (code, out, err) == (EXIT_USAGE, "", message)


def test_store_comes_from_the_environment_or_the_default(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv(consent_cli.STORE_ENV, raising=False)
    run(capsys, "optout", "add", "ann@example.org")
    assert [o.recipient for o in optouts("sqlite:///state/consent.db")] == ["ann@example.org"]

    monkeypatch.setenv(consent_cli.STORE_ENV, "sqlite:///other.db")
    run(capsys, "optout", "add", "bo@example.org")
    assert [o.recipient for o in optouts("sqlite:///other.db")] == ["bo@example.org"]

    monkeypatch.setenv(consent_cli.STORE_ENV, "redis://cache")
    code, _, err = run(capsys, "optout", "list")
    assert code == EXIT_USAGE
    assert err.startswith("phi-relay optout: consent store URL: unknown scheme; expected sqlite")


def test_consent_import(capsys: pytest.CaptureFixture[str], tmp_path: Path, url: str) -> None:
    csv = tmp_path / "grants.csv"
    csv.write_text(
        "\ufeffRecipient,form_ref,scope,conditions,granted,expires\n"
        "ann@example.org,f-1,,diabetes; Asthma,2026-01-15,2099-12-31\n"
        "\n"
        "bo@example.org,f-2,research,,2026-02-01T10:30:00+02:00,\n",
        encoding="utf-8",
    )
    assert run(capsys, "consent", "import", str(csv), "--store", url) == (
        EXIT_OK,
        "imported\t2\n",
        "",
    )
    rows = authorizations(url)
    assert [(r.recipient, r.scope, r.conditions, r.granted.isoformat()) for r in rows] == [
        ("ann@example.org", "marketing", frozenset({"diabetes", "asthma"}),
         "2026-01-15T00:00:00+00:00"),
        ("bo@example.org", "research", frozenset(), "2026-02-01T08:30:00+00:00"),
    ]  # fmt: skip


def test_a_bad_row_imports_nothing_and_names_the_line(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, url: str
) -> None:
    csv = tmp_path / "grants.csv"
    csv.write_text(
        "recipient,form_ref,expires\n"
        "ann@example.org,f-1,\n"
        'carol.secret-name@,"f-2",\n'
        "dee@example.org,,\n"
        "eve@example.org,f-4,31/12/2099\n"
        "fay@example.org,f-5\n",
        encoding="utf-8",
    )
    code, out, err = run(capsys, "consent", "import", str(csv), "--store", url)
    assert (code, out) == (EXIT_REFUSED, "")
    assert err.splitlines() == [
        f"{csv}:3: column recipient: expected local-part@domain",
        f"{csv}:4: column form_ref: a value is required",
        f"{csv}:5: column expires: expected YYYY-MM-DD or an ISO 8601 time with a zone",
        f"{csv}:6: expected 3 fields, found 2",
        "nothing imported",
    ]
    assert "carol" not in err
    assert authorizations(url) == []


def test_a_bad_header_is_line_one(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, url: str
) -> None:
    csv = tmp_path / "optouts.csv"
    csv.write_text("email,category\nann@example.org,all\n", encoding="utf-8")
    code, _, err = run(capsys, "optout", "import", str(csv), "--store", url)
    assert code == EXIT_REFUSED
    assert err.splitlines() == [
        f"{csv}:1: unknown column 'email'; expected recipient, category, when",
        f"{csv}:1: missing column 'recipient'",
        "nothing imported",
    ]


def test_import_of_a_missing_or_non_utf8_file(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, url: str
) -> None:
    assert run(capsys, "optout", "import", str(tmp_path / "nope.csv"), "--store", url) == (
        EXIT_USAGE,
        "",
        f"phi-relay optout: {tmp_path / 'nope.csv'}: no such file\n",
    )
    latin = tmp_path / "latin1.csv"
    latin.write_bytes("recipient\nj\xf6rg@example.org\n".encode("latin-1"))
    code, _, err = run(capsys, "optout", "import", str(latin), "--store", url)
    assert code == EXIT_REFUSED
    assert err.splitlines()[0] == f"{latin}: not UTF-8 text; save the file as UTF-8 CSV"


def test_optout_commands(capsys: pytest.CaptureFixture[str], tmp_path: Path, url: str) -> None:
    assert run(capsys, "optout", "add", "Ann@Example.org", "--store", url) == (
        EXIT_OK,
        "opted-out\tall\n",
        "",
    )
    run(capsys, "optout", "add", "ann@example.org", "--category", "fundraising", "--store", url)
    code, _, err = run(
        capsys, "optout", "add", "a@example.org", "--category", "news", "--store", url
    )
    assert code == EXIT_USAGE
    assert err.startswith("phi-relay optout: --category: expected all or one of appointment-")

    csv = tmp_path / "optouts.csv"
    csv.write_text(
        "recipient,category,when\n"
        "ann@example.org,all,2026-01-01\n"
        "bo@example.org,Marketing,\n"
        "cy@example.org,,2026-02-02T00:00:00Z\n",
        encoding="utf-8",
    )
    assert run(capsys, "optout", "import", str(csv), "--store", url) == (
        EXIT_OK,
        "imported\t2\t(already opted out: 1)\n",
        "",
    )
    code, out, _ = run(capsys, "optout", "list", "--store", url)
    rows = [line.split("\t") for line in out.splitlines()]
    assert [(r[0], r[1], r[3], r[4]) for r in rows] == [
        ("ann@example.org", "all", "admin", "-"),
        ("ann@example.org", "fundraising", "admin", "-"),
        ("bo@example.org", "marketing", "import", "-"),
        ("cy@example.org", "all", "import", "-"),
    ]
    # The import's `when` is kept; rows without one get the time of the import.
    assert [r[2] for r in rows][3] == "2026-02-02T00:00:00Z"
    assert all(re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", r[2]) for r in rows)

    assert run(capsys, "optout", "remove", "ann@example.org", "--category", "all",
               "--store", url) == (EXIT_OK, "removed\t1\n", "")  # fmt: skip
    assert run(capsys, "optout", "remove", "ann@example.org", "--store", url) == (
        EXIT_OK,
        "removed\t1\n",
        "",
    )
    assert run(capsys, "optout", "remove", "ann@example.org", "--store", url) == (
        EXIT_REFUSED,
        "",
        "no active opt-out for that address\n",
    )
    _, out, _ = run(capsys, "optout", "list", "ann@example.org", "--all", "--store", url)
    assert [line.split("\t")[1] for line in out.splitlines()] == ["all", "fundraising"]
    assert all(line.split("\t")[4] != "-" for line in out.splitlines())


def test_optout_import_against_both_backends(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, store_url: str
) -> None:
    csv = tmp_path / "optouts.csv"
    csv.write_text(
        "recipient,category\nann@example.org,all\nbo@example.org,no-such-category\n",
        encoding="utf-8",
    )
    code, _, err = run(capsys, "optout", "import", str(csv), "--store", store_url)
    assert code == EXIT_REFUSED
    assert err.splitlines()[0].startswith(f"{csv}:3: column category: expected all or one of ")
    assert optouts(store_url) == []
    csv.write_text("recipient,category\nann@example.org,all\n", encoding="utf-8")
    assert run(capsys, "optout", "import", str(csv), "--store", store_url)[0] == EXIT_OK
    assert [(o.recipient, o.source) for o in optouts(store_url)] == [("ann@example.org", "import")]
