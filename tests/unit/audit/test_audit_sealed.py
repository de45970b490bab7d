"""`chain.sealed` gives byte for byte what encoding the record with its hash gives."""

from __future__ import annotations

import random

import pytest

from relay.audit.chain import GENESIS, canonical, chain_key, parse, record_hash, sealed

KEY = chain_key(b"k" * 32)


def _value(rng: random.Random, depth: int = 0) -> object:
    kind = rng.randrange(8 if depth < 2 else 5)
    if kind == 0:
        return rng.randrange(-5, 10**6)
    if kind == 1:
        return rng.choice([None, True, False, 0.5, 1e-7])
    if kind in (2, 3, 4):
        # Quotes, backslashes, control and non-ASCII characters, and the splice's own words.
        return "".join(
            rng.choice(['"hash":"', "\\", "\x00", "é", "\u2028", "a", "{}", ","])
            for _ in range(rng.randrange(6))
        )
    if kind in (5, 6):
        return [_value(rng, depth + 1) for _ in range(rng.randrange(3))]
    return {rng.choice(["hash", "a", "z", "rule"]): _value(rng, depth + 1) for _ in range(2)}


@pytest.mark.parametrize("ckey", [KEY, None], ids=["keyed", "plain"])
def test_sealed_equals_the_record_encoded_with_its_hash(ckey: bytes | None) -> None:
    rng = random.Random(77)
    names = [
        "accepted",
        "action",
        "a",
        "h",
        "has",
        "hasi",
        "hat",
        "i",
        "prev",
        "seq",
        "type",
        "z",
        "é",
    ]
    for _ in range(2000):
        record = {n: _value(rng) for n in rng.sample(names, rng.randrange(len(names) + 1))}
        line, digest = sealed(ckey, record)
        assert digest == record_hash(ckey, record)
        assert line == canonical({**record, "hash": digest})


def test_sealed_record_parses_and_verifies() -> None:
    record = {
        "type": "event",
        "ts": "2026-12-01T00:00:00.000Z",
        "event": "x",
        "seq": 0,
        "prev": GENESIS,
    }
    line, digest = sealed(KEY, record)
    parsed = parse(line)
    assert parsed["hash"] == digest == record_hash(KEY, parsed)
