"""verify(): every kind of tampering is found and named by file, line and seq."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from audit_support import KEY, lines, write_events

from relay.audit import verify
from relay.audit.chain import canonical, chain_key, record_hash


def six(tmp_path: Path, name: str = "audit.log") -> tuple[Path, list[bytes]]:
    """A log of six records: line N holds seq N-1."""
    path = tmp_path / name
    write_events(path, 6).close()
    return path, lines(path)


def found(path: Path) -> list[tuple[int, int | None, str]]:
    return [(p.line, p.seq, p.message) for p in verify([path], KEY).problems]


def test_intact_log_verifies(tmp_path: Path) -> None:
    path, _ = six(tmp_path)
    report = verify([path], KEY)
    assert (report.ok, report.records, report.first_seq, report.last_seq) == (True, 6, 0, 5)
    assert report.notes == [
        f"last record: seq 5 at 2023-11-14T22:13:20.123Z ({path}:6); records cut from the "
        "end leave no trace in the chain, compare with a copy shipped elsewhere"
    ]


def test_edited_record_is_named(tmp_path: Path) -> None:
    path, raw = six(tmp_path)
    raw[2] = raw[2].replace(b'"n":2', b'"n":7')
    path.write_bytes(b"".join(raw))
    assert found(path) == [(3, 2, "record altered or forged: its hash does not match its content")]


def test_edit_with_recomputed_plain_hashes_is_still_found(tmp_path: Path) -> None:
    """An editor without the key who redoes an unkeyed SHA-256 chain gets nowhere."""
    path, raw = six(tmp_path)
    recs = [json.loads(x) for x in raw]
    recs[2]["n"] = 7
    for i in range(2, 6):
        if i > 2:
            recs[i]["prev"] = recs[i - 1]["hash"]
        body = canonical({k: v for k, v in recs[i].items() if k != "hash"})
        recs[i]["hash"] = hashlib.sha256(body).hexdigest()
    path.write_bytes(b"".join(canonical(r) + b"\n" for r in recs))
    message = "record altered or forged: its hash does not match its content"
    assert found(path) == [(3, 2, message), (4, 3, message), (5, 4, message), (6, 5, message)]


def test_deleted_record_is_named(tmp_path: Path) -> None:
    path, raw = six(tmp_path)
    del raw[2]
    path.write_bytes(b"".join(raw))
    assert found(path) == [(3, 3, "1 record(s) missing before this line (seq 2): deleted")]


def test_deleted_run_of_records_is_named(tmp_path: Path) -> None:
    path, raw = six(tmp_path)
    del raw[1:4]
    path.write_bytes(b"".join(raw))
    assert found(path) == [(2, 4, "3 record(s) missing before this line (seq 1-3): deleted")]


def test_inserted_forged_record_is_named(tmp_path: Path) -> None:
    path, raw = six(tmp_path)
    forged = json.loads(raw[1])
    forged["n"] = 99
    raw.insert(2, canonical(forged) + b"\n")
    path.write_bytes(b"".join(raw))
    assert found(path) == [
        (
            3,
            1,
            "record altered or forged: its hash does not match its content; "
            "inserted: the chain skips this line",
        )
    ]


def test_inserted_copy_of_a_record_is_named(tmp_path: Path) -> None:
    path, raw = six(tmp_path)
    raw.insert(4, raw[1])
    path.write_bytes(b"".join(raw))
    assert found(path) == [(5, 1, f"repeats the record at {path}:2 (duplicated)")]


def test_reordered_records_are_named(tmp_path: Path) -> None:
    path, raw = six(tmp_path)
    raw[2], raw[3] = raw[3], raw[2]
    path.write_bytes(b"".join(raw))
    assert found(path) == [
        (3, 3, f"seq 2 should come before this line but is out of place (seq 2 at {path}:4)"),
        (4, 2, "out of order: seq 2 comes after seq 3"),
    ]


def test_truncated_last_line_is_named(tmp_path: Path) -> None:
    path, raw = six(tmp_path)
    raw[5] = raw[5][:40]
    path.write_bytes(b"".join(raw))
    assert found(path) == [
        (6, None, "not a valid record: line is not JSON; truncated (no newline at end of file)")
    ]


def test_blank_line_is_named(tmp_path: Path) -> None:
    path, raw = six(tmp_path)
    raw.insert(3, b"\n")
    path.write_bytes(b"".join(raw))
    assert found(path) == [
        (4, None, "blank line (not written by the relay); inserted: the chain skips this line")
    ]


def test_duplicate_json_key_is_not_a_record(tmp_path: Path) -> None:
    path, raw = six(tmp_path)
    raw[1] = raw[1].replace(b'"n":1,', b'"n":1,"n":1,')
    path.write_bytes(b"".join(raw))
    assert found(path) == [(2, None, "not a valid record: duplicate key in record")]


def test_cut_tail_is_not_a_problem_but_the_last_seq_is_reported(tmp_path: Path) -> None:
    path, raw = six(tmp_path)
    path.write_bytes(b"".join(raw[:4]))
    report = verify([path], KEY)
    assert (report.ok, report.last_seq) == (True, 3)


def test_wrong_key_fails_every_record(tmp_path: Path) -> None:
    path, _ = six(tmp_path)
    report = verify([path], b"w" * 32)
    assert [(p.line, p.seq) for p in report.problems] == [(n, n - 1) for n in range(1, 7)]


def test_without_a_key_only_links_are_checked(tmp_path: Path) -> None:
    path, raw = six(tmp_path)
    edited = raw.copy()
    edited[2] = edited[2].replace(b'"n":2', b'"n":7')
    path.write_bytes(b"".join(edited))
    report = verify([path], None)
    assert (report.ok, report.keyed) == (True, False)
    assert report.notes[-1] == "no key given: links between records checked, their content not"
    del raw[2]
    path.write_bytes(b"".join(raw))
    assert [(p.line, p.seq) for p in verify([path], None).problems] == [(3, 3)]


def test_two_chains_in_one_file_are_a_break(tmp_path: Path) -> None:
    first, raw1 = six(tmp_path, "one.log")
    _, raw2 = six(tmp_path, "two.log")
    first.write_bytes(b"".join(raw1 + raw2[:2]))
    assert found(first) == [
        (
            7,
            0,
            f"a new chain starts here; the previous one ended at seq 5 ({first}:6): "
            "the log was reset or files were mixed",
        )
    ]


# --- across files --------------------------------------------------------------------------


@pytest.fixture
def rotated(tmp_path: Path) -> list[Path]:
    path = tmp_path / "audit.log"
    write_events(path, 12, max_bytes=800, backups=9).close()
    count = len(list(tmp_path.iterdir()))
    files = [tmp_path / f"audit.log.{i}" for i in range(count - 1, 0, -1)] + [path]
    assert count >= 4
    assert verify(files, KEY).ok
    return files


def test_missing_middle_file_is_named(rotated: list[Path]) -> None:
    given = rotated[:1] + rotated[2:]
    gone = [json.loads(x)["seq"] for x in lines(rotated[1])]
    first_of_next = json.loads(lines(rotated[2])[0])["seq"]
    problems = verify(given, KEY).problems
    assert [(p.file, p.line, p.seq, p.message) for p in problems] == [
        (
            rotated[2],
            1,
            first_of_next,
            f"first record of this file: {len(gone)} record(s) missing before this line "
            f"(seq {gone[0]}-{gone[-1]}): deleted, or a file between these two is missing",
        )
    ]


def test_files_in_the_wrong_order_are_named(rotated: list[Path]) -> None:
    given = [rotated[0], rotated[2], rotated[1], *rotated[3:]]
    moved = [json.loads(x)["seq"] for x in lines(rotated[1])]
    report = verify(given, KEY)
    assert [(p.file, p.line) for p in report.problems] == [(rotated[2], 1), (rotated[1], 1)]
    assert report.problems[0].message.startswith(
        f"first record of this file: seq {moved[0]}-{moved[-1]} should come before this "
        f"line but is out of place (seq {moved[0]} at {rotated[1]}:1"
    )
    assert report.problems[1].message == (
        f"first record of this file: out of order: seq {moved[0]} comes after seq "
        f"{moved[-1] + len(lines(rotated[2]))}; so are the next {len(moved) - 1} record(s) after it"
    )


def test_genesis_file_given_late_is_a_break(rotated: list[Path]) -> None:
    given = [rotated[1], rotated[0], *rotated[2:]]
    report = verify(given, KEY)
    assert [(p.file, p.line) for p in report.problems] == [(rotated[0], 1), (rotated[2], 1)]
    assert "a new chain starts here" in report.problems[0].message


def test_edit_in_an_old_file_names_that_file(rotated: list[Path]) -> None:
    raw = lines(rotated[1])
    raw[1] = raw[1].replace(b'"event":"test"', b'"event":"tset"')
    rotated[1].write_bytes(b"".join(raw))
    [problem] = verify(rotated, KEY).problems
    assert (problem.file, problem.line) == (rotated[1], 2)
    assert str(problem) == (
        f"{rotated[1]}:2: seq {problem.seq}: "
        "record altered or forged: its hash does not match its content"
    )


def test_unreadable_file_raises_os_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        verify([tmp_path / "missing.log"], KEY)


def test_record_spliced_from_another_chain_under_the_same_key(tmp_path: Path) -> None:
    path, raw = six(tmp_path)
    other = tmp_path / "other.log"
    log = write_events(other, 0)
    for i in range(6):
        log.event("other", n=i)
    log.close()
    raw[3] = lines(other)[3]
    path.write_bytes(b"".join(raw))
    assert found(path) == [
        (
            4,
            3,
            f"does not link to the record before it ({path}:3): taken from another chain; "
            "it replaced the original record",
        ),
    ]


def test_chain_start_must_link_to_genesis(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    rec = {"type": "event", "event": "x", "seq": 0, "prev": "1" * 64}
    rec["hash"] = record_hash(chain_key(KEY), rec)
    path.write_bytes(canonical(rec) + b"\n")
    assert found(path) == [(1, 0, "chain start does not link to the genesis value")]
