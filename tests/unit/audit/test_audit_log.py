"""AuditLog: record content, no PHI, the chain, resume, rotation, fsync and failures."""

from __future__ import annotations

import errno
import hashlib
import hmac
import io
import itertools
import json
import os
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from audit_support import (
    DECISION_TIME,
    KEY,
    decision,
    delivery,
    lines,
    records,
    write_events,
)
from faker import Faker

import relay.audit.log as audit_log
from relay.audit import AuditError, AuditLog, recipient_hash, verify
from relay.audit.chain import GENESIS, chain_key, record_hash
from relay.audit.redact import redact
from relay.model import Action, Reply, Verdict


def h(address: str) -> str:
    return recipient_hash(KEY, address)


# --- what a record holds -------------------------------------------------------------------


def test_decision_record_holds_exactly_the_documented_fields(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    with AuditLog(path, key=KEY) as log:
        log.decision(
            decision(("a@example.org", "b@example.org"), dropped={"b@example.org": "optout"})
        )
    [rec] = records(path)
    assert rec == {
        "type": "decision",
        "ts": "2023-11-14T22:13:20.123Z",
        "decision_id": "dec-1",
        "session_id": "ses-1",
        "peer": "192.0.2.10",
        "tls_version": "TLSv1.3",
        "tls_cipher": "TLS_AES_256_GCM_SHA384",
        "auth_user": "clinic-app",
        "sender_domain": "clinic.example",
        "recipients": [h("a@example.org"), h("b@example.org")],
        "accepted": [h("a@example.org")],
        "dropped": {h("b@example.org"): "optout"},
        "category": "treatment",
        "mode": "enforce",
        "action": "reject",
        "enforced_action": "reject",
        "verdicts": [
            {"rule": "require-tls", "action": "pass", "reason": "", "kinds": []},
            {
                "rule": "subject-phi",
                "action": "reject",
                "reason": "phi.subject.mrn",
                "kinds": ["mrn", "date"],
            },
        ],
        "reply_code": 550,
        "reply_status": "5.7.1",
        "reply_text": "Subject line contains protected health information",
        "size": 2048,
        "seq": 0,
        "prev": GENESIS,
        "hash": rec["hash"],
    }


def test_delivery_record_redacts_addresses_the_upstream_echoes(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    refused = {"b@example.org": Reply(550, "5.1.1", "<b@example.org>: Recipient unknown")}
    reply = Reply(250, "2.0.0", "Ok: queued for a@example.org as 4F2A")
    with AuditLog(path, key=KEY, clock=lambda: DECISION_TIME + 1) as log:
        log.delivery(delivery(("a@example.org", "b@example.org"), reply=reply, refused=refused))
    [rec] = records(path)
    assert rec == {
        "type": "delivery",
        "ts": "2023-11-14T22:13:21.123Z",
        "decision_id": "dec-1",
        "upstream": "smtp.provider.example:587",
        "recipients": [h("a@example.org"), h("b@example.org")],
        "refused": {h("b@example.org"): 550},
        "reply_code": 250,
        "reply_status": "2.0.0",
        "reply_text": "Ok: queued for [address] as 4F2A",
        "duration_ms": 12.346,
        "tls_version": "TLSv1.3",
        "tls_cipher": "TLS_AES_256_GCM_SHA384",
        "outcome": "delivered",
        "attempt": 2,
        "seq": 0,
        "prev": GENESIS,
        "hash": rec["hash"],
    }


def test_event_record_carries_fields_and_redacts_addresses(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    with AuditLog(path, key=KEY, clock=lambda: DECISION_TIME) as log:
        log.event("auth-lockout", peer="192.0.2.7", user="ops@clinic.example", failures=5, x=None)
    [rec] = records(path)
    assert {k: v for k, v in rec.items() if k not in ("hash", "prev", "seq")} == {
        "type": "event",
        "ts": "2023-11-14T22:13:20.123Z",
        "event": "auth-lockout",
        "peer": "192.0.2.7",
        "user": "[address]",
        "failures": 5,
        "x": None,
    }


@pytest.mark.parametrize("name", ["seq", "prev", "hash", "type", "ts"])
def test_event_refuses_reserved_field_names(tmp_path: Path, name: str) -> None:
    with AuditLog(tmp_path / "audit.log", key=KEY) as log:
        with pytest.raises(AuditError, match=f"'{name}' is reserved"):
            log.event("x", **{name: "1"})
        assert log.next_seq == 0


def test_event_refuses_values_that_are_not_scalars(tmp_path: Path) -> None:
    with AuditLog(tmp_path / "audit.log", key=KEY) as log:
        bad: Any = ["a"]
        with pytest.raises(AuditError, match="'items' must be str, int, float, bool or None"):
            log.event("x", items=bad)
        with pytest.raises(AuditError, match="cannot be encoded: ValueError"):
            log.event("x", ratio=float("nan"))
    assert (tmp_path / "audit.log").read_bytes() == b""


def test_no_clear_address_or_subject_reaches_the_file(tmp_path: Path) -> None:
    fake = Faker()
    Faker.seed(5)
    addresses = [fake.unique.email() for _ in range(6)]
    mixed = [a.upper() if i % 2 else a for i, a in enumerate(addresses)]
    subject = f"Lab results for {fake.name()} MRN {fake.random_number(digits=8, fix_len=True)}"
    path = tmp_path / "audit.log"
    with AuditLog(path, key=KEY) as log:
        log.decision(decision(tuple(mixed), dropped={mixed[0]: "optout"}))
        log.delivery(
            delivery(
                tuple(mixed[1:]),
                reply=Reply(250, "2.0.0", f"queued for {mixed[1]}, {addresses[2]}"),
                refused={mixed[3]: Reply(550, "5.1.1", f"<{mixed[3]}> unknown: {subject}"[:40])},
            )
        )
        log.event("note", detail=f"from {addresses[4]} re {addresses[5].replace('@', '%40')}")
    data = path.read_bytes().lower()
    for address in addresses:
        local, _, domain = address.lower().partition("@")
        assert address.lower().encode() not in data
        assert f"{local}%40{domain}".encode() not in data
    assert subject.lower().encode() not in data
    assert b"mrn" not in data.replace(b"phi.subject.mrn", b"").replace(b'"mrn"', b"")
    # Every recipient is still findable by whoever holds the key.
    assert records(path)[0]["recipients"] == [h(a) for a in addresses]


# --- the chain -----------------------------------------------------------------------------


def test_records_form_a_keyed_chain(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    log = write_events(path, 4)
    log.close()
    recs = records(path)
    assert [r["seq"] for r in recs] == [0, 1, 2, 3]
    assert [r["prev"] for r in recs] == [GENESIS] + [r["hash"] for r in recs[:-1]]
    ckey = chain_key(KEY)
    assert [record_hash(ckey, r) for r in recs] == [r["hash"] for r in recs]
    assert log.last_hash == recs[-1]["hash"]
    # Unkeyed SHA-256 is not the chain: an editor without the key cannot recompute it.
    plain = hashlib.sha256(
        json.dumps(
            {k: v for k, v in recs[0].items() if k != "hash"}, sort_keys=True, separators=(",", ":")
        ).encode()
    ).hexdigest()
    assert recs[0]["hash"] != plain


def test_each_line_is_the_canonical_encoding(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    write_events(path, 2).close()
    for raw, rec in zip(lines(path), records(path), strict=True):
        assert raw == json.dumps(rec, sort_keys=True, separators=(",", ":")).encode() + b"\n"


def test_start_continues_the_chain_in_the_file(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    first = write_events(path, 3)
    first.close()
    second = write_events(path, 2)
    second.close()
    recs = records(path)
    assert [r["seq"] for r in recs] == [0, 1, 2, 3, 4]
    assert recs[3]["prev"] == recs[2]["hash"]
    assert verify([path], KEY).ok


def test_half_written_last_line_restarts_the_segment_with_a_signed_note(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    write_events(path, 3).close()
    good = records(path)
    with path.open("ab") as fh:
        fh.write(b'{"type":"decision","seq":3,')
    write_events(path, 1).close()
    raw = lines(path)
    assert raw[3] == b'{"type":"decision","seq":3,\n'
    restart = json.loads(raw[4])
    assert {k: restart[k] for k in ("event", "reason", "bad_line", "seq", "prev")} == {
        "event": "chain-restart",
        "reason": "truncated-write",
        "bad_line": 4,
        "seq": 3,
        "prev": good[2]["hash"],
    }
    assert json.loads(raw[5])["prev"] == restart["hash"]
    report = verify([path], KEY)
    assert report.problems == []
    assert report.records == 5
    assert report.notes[0] == (
        f"{path}:4: half-written record left by a crash or failed write, "
        "acknowledged by the chain-restart record at seq 3"
    )


def test_garbage_last_line_restarts_and_stays_a_problem(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    write_events(path, 2).close()
    with path.open("ab") as fh:
        fh.write(b"not json\n")
    write_events(path, 1).close()
    restart = records_after(path, 3)
    assert (restart["reason"], restart["bad_line"], restart["seq"]) == (
        "last-record-unreadable",
        3,
        2,
    )
    report = verify([path], KEY)
    assert [(p.line, p.seq) for p in report.problems] == [(3, None)]
    assert report.problems[0].message == (
        "not a valid record: line is not JSON; inserted: the chain skips this line"
    )


def records_after(path: Path, index: int) -> dict[str, Any]:
    return dict(json.loads(lines(path)[index]))


def test_last_record_under_another_key_is_noted_at_start(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    other = AuditLog(path, key=b"k" * 32)
    other.event("old")
    other.close()
    with AuditLog(path, key=KEY) as log:
        log.event("new")
    restart = records(path)[1]
    assert (restart["event"], restart["reason"], restart["bad_line"], restart["seq"]) == (
        "chain-restart",
        "last-record-hash-mismatch",
        1,
        1,
    )


# --- rotation and reopen -------------------------------------------------------------------


def test_rotation_keeps_the_chain_across_files(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    write_events(path, 30, max_bytes=1000, backups=50).close()
    files = sorted(
        tmp_path.iterdir(), key=lambda p: -int(p.suffix[1:]) if p.suffix[1:].isdigit() else 0
    )
    assert files[-1] == path
    assert len(files) > 3
    assert all(f.stat().st_size <= 1000 for f in files)
    chain = [rec for f in files for rec in records(f)]
    assert [r["seq"] for r in chain] == list(range(30))
    for older, newer in itertools.pairwise(files):
        assert records(newer)[0]["prev"] == records(older)[-1]["hash"]
    report = verify(files, KEY)
    assert (report.ok, report.records, report.first_seq, report.last_seq) == (True, 30, 0, 29)


def test_rotation_keeps_only_the_given_number_of_backups(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    write_events(path, 40, max_bytes=600, backups=2).close()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["audit.log", "audit.log.1", "audit.log.2"]
    files = [tmp_path / "audit.log.2", tmp_path / "audit.log.1", path]
    report = verify(files, KEY)
    assert report.ok
    assert report.last_seq == 39
    assert report.first_seq == records(files[0])[0]["seq"]
    assert report.notes[0].startswith(f"chain begins at seq {report.first_seq} ")


def test_reopen_after_external_rotation_keeps_the_chain(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    log = write_events(path, 3)
    moved = tmp_path / "audit.log-20261123"
    path.rename(moved)
    log.reopen()
    log.event("after")
    log.close()
    assert records(path)[0]["prev"] == records(moved)[-1]["hash"]
    assert verify([moved, path], KEY).ok


# --- durability and failure ----------------------------------------------------------------


@pytest.mark.parametrize(("fsync", "expected"), [(True, 4), (False, 0)])
def test_fsync_option_syncs_every_record(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fsync: bool, expected: int
) -> None:
    calls: list[int] = []
    real = os.fsync

    def counting(fd: int) -> None:
        calls.append(fd)
        real(fd)

    monkeypatch.setattr(audit_log.os, "fsync", counting)
    write_events(tmp_path / "audit.log", 3, fsync=fsync).close()
    # With fsync: one for the new file's directory entry, then one per record.
    assert len(calls) == expected


def test_path_under_a_file_raises_audit_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(
        AuditError, match=r"cannot open audit log .*/file/audit.log: Not a directory"
    ):
        AuditLog(blocker / "audit.log", key=KEY)


def test_directory_as_path_raises_audit_error(tmp_path: Path) -> None:
    with pytest.raises(AuditError, match="Is a directory"):
        AuditLog(tmp_path, key=KEY)


def test_full_disk_raises_and_does_not_advance_the_chain() -> None:
    log = AuditLog(Path("/dev/full"), key=KEY)
    with pytest.raises(AuditError, match=r"cannot write audit log /dev/full: No space left"):
        log.decision(decision(("secret.patient@example.org",)))
    assert (log.next_seq, log.last_hash) == (0, GENESIS)
    log.close()


def test_failed_write_is_repaired_on_the_next_record(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "audit.log"
    log = write_events(path, 2)
    real = os.write
    failures = [1]

    def half_then_fail(fd: int, data: Any) -> int:
        if failures:
            failures.pop()
            real(fd, bytes(data[: len(data) // 2]))
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(fd, data)

    monkeypatch.setattr(audit_log.os, "write", half_then_fail)
    with pytest.raises(AuditError, match="No space left on device"):
        log.event("lost")
    log.event("kept")
    log.close()
    recs = [json.loads(x) for x in lines(path) if x.endswith(b"}\n")]
    assert [(r["seq"], r.get("event"), r.get("reason")) for r in recs] == [
        (0, "test", None),
        (1, "test", None),
        (2, "chain-restart", "truncated-write"),
        (3, "kept", None),
    ]
    report = verify([path], KEY)
    assert (report.ok, report.records) == (True, 4)


def test_closed_log_refuses_records(tmp_path: Path) -> None:
    log = AuditLog(tmp_path / "audit.log", key=KEY)
    log.close()
    with pytest.raises(AuditError, match="audit log is closed"):
        log.event("late")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"path": None}, "needs a file, stdout, or both"),
        ({"key": b"short"}, "at least 16 bytes"),
        ({"max_bytes": 100, "backups": 0}, "backups must be at least 1"),
        ({"max_bytes": -1}, "max_bytes must be 0"),
    ],
)
def test_bad_settings_raise_audit_error(
    tmp_path: Path, kwargs: dict[str, Any], message: str
) -> None:
    args: dict[str, Any] = {"path": tmp_path / "audit.log", "key": KEY} | kwargs
    path = args.pop("path")
    with pytest.raises(AuditError, match=message):
        AuditLog(path, **args)


def test_stdout_gets_the_same_chained_lines(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "audit.log"
    write_events(path, 2, stdout=True).close()
    assert capsys.readouterr().out == path.read_text()


def test_stdout_only_log(capsys: pytest.CaptureFixture[str]) -> None:
    with AuditLog(None, key=KEY, stdout=True) as log:
        log.event("a")
        log.event("b")
    out = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert [(r["seq"], r["event"]) for r in out] == [(0, "a"), (1, "b")]
    assert out[1]["prev"] == out[0]["hash"]


def test_broken_stdout_raises_audit_error(monkeypatch: pytest.MonkeyPatch) -> None:
    closed = io.StringIO()
    closed.close()
    monkeypatch.setattr("sys.stdout", closed)
    log = AuditLog(None, key=KEY, stdout=True)
    with pytest.raises(AuditError, match="cannot write audit records to stdout: ValueError"):
        log.event("x")


# --- helpers -------------------------------------------------------------------------------


def test_recipient_hash_uses_the_canonical_address() -> None:
    expected = hmac.new(KEY, b"pat.doe@example.org", hashlib.sha256).hexdigest()
    assert recipient_hash(KEY, "<Pat.Doe@EXAMPLE.org>") == expected
    assert recipient_hash(KEY, "pat.doe@example.org") == expected
    raw = hmac.new(KEY, b"not an address", hashlib.sha256).hexdigest()
    assert recipient_hash(KEY, "not an address") == raw
    assert recipient_hash(b"x" * 32, "pat.doe@example.org") != expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("550 5.1.1 <pat@example.org>: unknown", "550 5.1.1 <[address]>: unknown"),
        ("queued for pat@example.org, x@y.example", "queued for [address], [address]"),
        ('rejected "pat doe"@example.org here', "rejected [address] here"),
        ("bounce pat%40example.org", "bounce [address]"),
        ("Ok: queued as 4F2A size=40", "Ok: queued as 4F2A size=40"),
        ("", ""),
    ],
)
def test_redact(text: str, expected: str) -> None:
    assert redact(text) == expected


def test_code_fields_holding_free_text_are_replaced(tmp_path: Path) -> None:
    """A category can come from a client header; free text there could be PHI."""
    path = tmp_path / "audit.log"
    odd = replace(
        decision(),
        category="Pat Doe diabetes",
        verdicts=(Verdict("category", Action.REJECT, "category.unknown", ("Pat Doe", "ok-1")),),
    )
    with AuditLog(path, key=KEY) as log:
        log.decision(odd)
    [rec] = records(path)
    assert (rec["category"], rec["verdicts"]) == (
        "(invalid)",
        [
            {
                "rule": "category",
                "action": "reject",
                "reason": "category.unknown",
                "kinds": ["(invalid)", "ok-1"],
            }
        ],
    )
    assert b"Pat Doe" not in path.read_bytes()


def test_missing_state_directory_is_created_private(tmp_path: Path) -> None:
    path = tmp_path / "state" / "audit.log"
    write_events(path, 1).close()
    assert (path.parent.stat().st_mode & 0o777, path.stat().st_mode & 0o777) == (0o700, 0o600)


def test_file_without_any_record_starts_a_new_chain(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    path.write_bytes(b"garbage one\ngarbage two\n   ")
    write_events(path, 1).close()
    restart, event = (json.loads(x) for x in lines(path)[3:])
    assert (restart["reason"], restart["bad_line"], restart["seq"], restart["prev"]) == (
        "truncated-write",
        3,
        0,
        GENESIS,
    )
    assert (event["seq"], event["prev"]) == (1, restart["hash"])
    assert [(p.line, p.message) for p in verify([path], KEY).problems] == [
        (1, "not a valid record: line is not JSON"),
        (2, "not a valid record: line is not JSON"),
    ]


@pytest.mark.parametrize(
    ("stdout", "fsync", "threaded"),
    [(False, False, False), (False, True, True), (True, False, True)],
)
async def test_only_writes_that_can_stall_leave_the_event_loop(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], stdout: bool, fsync: bool, threaded: bool
) -> None:
    """A file alone without fsync is written at once (a thread hand-off per record cost
    ~0.25 ms of CPU per message); an fsync or a stdout reader that may stop reading is
    still waited for on the writer thread, under `write_timeout`."""
    import threading

    path = tmp_path / "audit.log"
    with AuditLog(path, key=KEY, stdout=stdout, fsync=fsync) as log:
        await log.decision_async(decision())
        await log.delivery_async(delivery())
        await log.event_async("relay-stop", reason="test")
        writers = [t for t in threading.enumerate() if t.name.startswith("audit")]
        # Flushed to the kernel before each call returned, whichever way it went.
        types = [json.loads(line)["type"] for line in path.read_text().splitlines()]
        assert types == ["decision", "delivery", "event"]
    assert bool(writers) is threaded
    capsys.readouterr()


def test_redact_skips_the_search_only_where_it_could_not_match() -> None:
    import random

    from relay.audit.redact import _ADDRESS

    rng = random.Random(20261201)
    pieces = ["a", "@", "%4", "%40", "0", " ", '"', "<", ">", "x.y", "%", "4"]
    for _ in range(5000):
        text = "".join(rng.choice(pieces) for _ in range(rng.randint(0, 12)))
        assert redact(text) == _ADDRESS.sub("[address]", text), text
