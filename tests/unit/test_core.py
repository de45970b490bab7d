"""Table-driven tests of the SMTP core: config, pipeline, categories, replies, users."""

from __future__ import annotations

from pathlib import Path

import pytest

from relay import config as config_mod
from relay import pipeline, replies
from relay.category import CategoryTable, builtin
from relay.dedup import Dedup
from relay.delivery import reply_from_upstream
from relay.message import ShapeError, ShapeLimits, check_raw, has_bare_line_endings, parse
from relay.model import Action, Envelope, ReplaceSubject, Verdict
from relay.policy.base import ConfigError
from relay.rules import load as load_rules
from relay.users import Users, add_user, check_password, hash_password

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"server": {"listen": "nowhere"}}, "flag --listen: server.listen: expected HOST:PORT"),
        ({"server": {"listen": "1.2.3.4:99999"}}, "expected a port number between 0 and 65535"),
        ({"server": {"mode": "audit"}}, "server.mode: expected enforce or monitor"),
        ({"upstream": {"tls": "none"}}, "expected starttls or implicit (plaintext is never used)"),
        ({"server": {"max_line_length": 2000}}, "server.max_line_length: expected at most 998"),
        ({"server": {"max_recipients": 0}}, "server.max_recipients: expected a whole number >= 1"),
        ({"server": {"trusted_networks": ["10.0.0.0/33"]}}, "expected a CIDR network"),
        ({"server": {"client_timeout": -1}}, "expected a number of seconds > 0"),
    ],
)
def test_config_errors_name_source_key_and_expectation(
    overrides: dict[str, dict[str, object]], message: str
) -> None:
    with pytest.raises(ConfigError) as info:
        config_mod.load(None, environ={}, overrides=overrides)
    assert message in str(info.value)


def test_config_precedence_file_env_flag(tmp_path: Path) -> None:
    path = tmp_path / "relay.toml"
    path.write_text(
        '[server]\nmax_recipients = 10\nmax_sessions = 7\n[upstream]\nhost = "a.example"\n'
    )
    env = {"PHI_RELAY_SERVER_MAX_RECIPIENTS": "20", "PHI_RELAY_UPSTREAM_PORT": "2465"}
    cfg = config_mod.load(path, environ=env, overrides={"server": {"max_recipients": 30}})
    assert cfg.server.max_recipients == 30
    assert cfg.server.max_sessions == 7
    assert (cfg.upstream.host, cfg.upstream.port) == ("a.example", 2465)
    bad = tmp_path / "bad.toml"
    bad.write_text("[server]\nlisten_port = 25\n")
    with pytest.raises(ConfigError) as info:
        config_mod.load(bad, environ={})
    assert str(info.value).startswith(f"{bad}: server.listen_port: unknown setting")


def test_loopback_trusted_only_when_nothing_else_configured() -> None:
    assert [str(n) for n in config_mod.load(None, environ={}).server.trusted_networks] == [
        "127.0.0.0/8",
        "::1/128",
    ]
    cfg = config_mod.load(None, environ={}, overrides={"server": {"users_file": "users"}})
    assert cfg.server.trusted_networks == ()


def V(rule: str, action: Action = Action.PASS, reason: str = "", **kw: object) -> Verdict:
    return Verdict(rule=rule, action=action, reason=reason, **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("verdicts", "mode", "enforced", "deciding", "accepted"),
    [
        ([V("a"), V("b")], "enforce", Action.PASS, None, ("x", "y")),
        (
            [V("a", Action.REJECT, "r1"), V("b", Action.REJECT, "r2")],
            "enforce",
            Action.REJECT,
            "r1",
            ("x", "y"),
        ),
        (
            [V("a", Action.TEMPFAIL, "t"), V("b", Action.REJECT, "r")],
            "enforce",
            Action.REJECT,
            "r",
            ("x", "y"),
        ),
        ([V("a", Action.MODIFY, drop={"x": "d"})], "enforce", Action.MODIFY, None, ("y",)),
        (
            [V("a", Action.MODIFY, drop={"x": "d"}), V("b", Action.MODIFY, drop={"y": "e"})],
            "enforce",
            Action.REJECT,
            "recipients.none-left",
            (),
        ),
        (
            [V("subject-phi", Action.REJECT, "phi.subject")],
            "monitor",
            Action.PASS,
            None,
            ("x", "y"),
        ),
        (
            [V("require-tls", Action.REJECT, "tls.required")],
            "monitor",
            Action.REJECT,
            "tls.required",
            ("x", "y"),
        ),
        ([V("consent", Action.MODIFY, drop={"x": "d"})], "monitor", Action.PASS, None, ("x", "y")),
    ],
)
def test_combine(
    verdicts: list[Verdict],
    mode: str,
    enforced: Action,
    deciding: str | None,
    accepted: tuple[str, ...],
) -> None:
    out = pipeline.combine(verdicts, ("x", "y"), mode)
    assert out.enforced == enforced
    assert (out.deciding.reason if out.deciding else None) == deciding
    assert out.accepted == accepted


def test_modifications_apply_in_pipeline_order_and_not_when_refused() -> None:
    a, b = ReplaceSubject("one"), ReplaceSubject("two")
    out = pipeline.combine(
        [V("p", Action.MODIFY, modifications=(a,)), V("q", Action.MODIFY, modifications=(b,))],
        ("x",),
        "enforce",
    )
    assert out.modifications == (a, b)
    out = pipeline.combine(
        [V("p", Action.MODIFY, modifications=(a,)), V("q", Action.REJECT, "r")], ("x",), "enforce"
    )
    assert out.modifications == ()


class Boom:
    name = "boom"

    async def evaluate(self, ctx: object) -> Verdict:
        raise RuntimeError("Jane Doe MRN 1234567")  # text must never reach a reply or log


class Slow:
    name = "slow"

    async def evaluate(self, ctx: object) -> Verdict:
        import asyncio

        await asyncio.sleep(5)
        return Verdict.ok(self.name)


@pytest.mark.parametrize(
    ("policy", "reason"), [(Boom(), "policy.error"), (Slow(), "policy.timeout")]
)
async def test_policy_failure_fails_closed(policy: object, reason: str) -> None:
    from types import SimpleNamespace

    ctx = SimpleNamespace(envelope=Envelope("a@b.c", ("x@y.z",)), decision_id="d")
    out = await pipeline.run([policy], ctx, timeout=0.1, mode="enforce")  # type: ignore[list-item, arg-type]
    assert out.enforced == Action.TEMPFAIL
    assert out.deciding is not None and out.deciding.reason == reason
    reply = replies.for_verdict(out.deciding)
    assert reply.code == 451 and "Jane" not in reply.text
    # Monitor mode records the failure (the audit shows it) but, like every policy
    # there, does not hold mail back: that is what a safe rollout means.
    out = await pipeline.run([policy], ctx, timeout=0.1, mode="monitor")  # type: ignore[list-item, arg-type]
    assert out.enforced == Action.PASS and out.action == Action.TEMPFAIL
    assert out.verdicts[0].reason == reason


def test_category_resolution_order() -> None:
    table = CategoryTable(
        builtin(),
        "treatment",
        {"news@c.example": "education", "@mkt.example": "marketing"},
        {"app": "fundraising"},
    )

    def resolve(values: list[str], sender: str, user: str | None) -> tuple[str, str, str]:
        got = table.resolve(values, sender, user)
        return got.name, got.source, got.refusal

    # The mapping is authoritative: the header cannot shed the mapped category's duties.
    assert resolve(["Marketing "], "news@c.example", "app") == (
        "education",
        "sender",
        "category.not-allowed",
    )
    assert resolve(["education"], "news@c.example", None) == ("education", "header", "")
    # From a category with no obligations, the header may only add some.
    assert resolve(["Marketing "], "x@other.example", None) == ("marketing", "header", "")
    assert resolve(["newsletter"], "x@other.example", None) == (
        "treatment",
        "default",
        "category.unknown",
    )
    assert resolve([], "News@C.example", "app") == ("education", "sender", "")
    assert resolve([], "x@mkt.example", "app") == ("marketing", "sender-domain", "")
    assert resolve([], "x@other.example", "app") == ("fundraising", "user", "")
    assert resolve([], "x@other.example", None) == ("treatment", "default", "")
    assert table.get("newsletter") is None
    granted = CategoryTable(
        builtin(),
        "treatment",
        {"@mkt.example": "marketing"},
        {},
        {"@mkt.example": frozenset({"education"})},
        {"app": frozenset({"treatment"})},
    )
    assert granted.resolve(["education"], "a@mkt.example", None).refusal == ""
    assert granted.resolve(["treatment"], "a@mkt.example", None).refusal == "category.not-allowed"
    assert granted.resolve(["treatment"], "a@mkt.example", "app").name == "treatment"


def test_policy_file_refuses_switching_off_a_required_footer(tmp_path: Path) -> None:
    from relay.policy.base import PolicyDeps

    path = tmp_path / "p.toml"
    path.write_text('pipeline = ["require-tls"]\n[categories.footer]\nmarketing = false\n')
    with pytest.raises(ConfigError) as info:
        load_rules(path, PolicyDeps(policy_dir=tmp_path, state_dir=tmp_path))
    assert "categories.footer.marketing: true (an opt-out footer is required" in str(info.value)
    path.write_text('pipeline = ["require-tls", "no-such-policy"]\n')
    with pytest.raises(ConfigError) as info:
        load_rules(path, PolicyDeps(policy_dir=tmp_path, state_dir=tmp_path))
    assert "unknown policy 'no-such-policy'" in str(info.value)


@pytest.mark.parametrize(
    ("raw", "smtputf8", "reason"),
    [
        (b"Subject: a\r\n\r\nline\nsmuggled\r\n", False, "message.bare-line-ending"),
        (b"Subject: a\r\n\r\nline\rsmuggled\r\n", False, "message.bare-line-ending"),
        ("Subject: caf\u00e9\r\n\r\nbody\r\n".encode(), False, "message.header-8bit"),
        (b"Subject: a\r\n\r\nnul\x00\r\n", False, "message.nul"),
        (
            b"Subject: a\r\nX-Big: " + b"x" * 5000 + b"\r\n\r\nbody\r\n",
            False,
            "message.header-too-large",
        ),
    ],
)
def test_shape_refusals(raw: bytes, smtputf8: bool, reason: str) -> None:
    with pytest.raises(ShapeError) as info:
        check_raw(raw, Envelope("a@b.c", ("d@e.f",), (), smtputf8), ShapeLimits(4096, 5, "refuse"))
    assert info.value.reason == reason


def test_shape_normalise_and_mime_depth() -> None:
    limits = ShapeLimits(65536, 3, "normalise")
    out = check_raw(b"Subject: a\r\n\r\nx\ny\r\n", Envelope("a@b.c", ()), limits)
    assert out == b"Subject: a\r\n\r\nx\r\ny\r\n" and not has_bare_line_endings(out)
    inner = b"Content-Type: text/plain\r\n\r\nx\r\n"
    for i in range(4):
        inner = (
            f'Content-Type: multipart/mixed; boundary="b{i}"\r\n\r\n--b{i}\r\n'.encode()
            + inner
            + f"--b{i}--\r\n".encode()
        )
    nested = b"Subject: a\r\n" + inner
    assert parse(nested, ShapeLimits(65536, 5, "refuse")).message.is_multipart()
    with pytest.raises(ShapeError) as info:
        parse(nested, limits)
    assert info.value.reason == "message.mime-too-deep"
    with pytest.raises(ShapeError) as info:
        parse(b"From: a@b.c\r\nFrom: d@e.f\r\nSubject: a\r\n\r\nx\r\n", limits)
    assert info.value.reason == "message.from.multiple"


@pytest.mark.parametrize(
    ("code", "text", "expected"),
    [
        (550, "5.1.1 <x@y.z>: no such user", "550 5.1.1 Upstream: <address>: no such user"),
        (451, "try later", "451 4.0.0 Upstream: try later"),
        (550, "4.1.1 mismatched", "550 5.0.0 Upstream: 4.1.1 mismatched"),
        (354, "odd", "451 4.5.0 Upstream answered unexpectedly (354)"),
        (250, "2.0.0 queued\nas 123", "250 2.0.0 Upstream: queued as 123"),
    ],
)
def test_upstream_replies(code: int, text: str, expected: str) -> None:
    assert str(reply_from_upstream(code, text)) == expected


def test_users_file_and_passwords(tmp_path: Path) -> None:
    stored = hash_password("correct horse battery")
    assert check_password(stored, "correct horse battery")
    assert not check_password(stored, "correct horse batterY")
    assert not check_password("scrypt$garbage", "x")
    path = tmp_path / "users"
    assert add_user(path, "app", "correct horse battery") is False
    assert add_user(path, "app", "another long password") is True
    users = Users.load(path)
    assert list(users.entries) == ["app"]
    path.write_text("app:plaintext\n")
    with pytest.raises(Exception, match=r"users:1: expected NAME:scrypt"):
        Users.load(path)


async def test_users_verify_unknown_user_costs_the_same(tmp_path: Path) -> None:
    path = tmp_path / "users"
    add_user(path, "app", "correct horse battery")
    users = Users.load(path)
    assert await users.verify("app", "correct horse battery")
    assert not await users.verify("nobody", "correct horse battery")


async def test_dedup_remembers_recipients_per_message(tmp_path: Path) -> None:
    d = Dedup(tmp_path / "dedup.db", b"k" * 32)
    fp = d.fingerprint("a@b.c", b"message bytes")
    assert fp != d.fingerprint("a@b.c", b"message bytes!")
    first = await d.claim(fp, ["X@Example.org"], "t1")
    await d.confirm(first, ["X@Example.org"])
    second = await d.claim(fp, ["x@example.org", "y@example.org"], "t2")
    assert (second.done, second.mine) == (("x@example.org",), ("y@example.org",))
    d.close()
    again = Dedup(tmp_path / "dedup.db", b"k" * 32)
    assert (await again.claim(fp, ["x@example.org"], "t3")).done == ("x@example.org",)
    again.close()
