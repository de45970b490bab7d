"""The detector and normaliser never raise, whatever text arrives (a raise would tempfail mail)."""

from __future__ import annotations

import random

from faker import Faker

from relay.phi import default_detector
from relay.phi.normalize import subject_text

_PIECES = [
    "=?UTF-8?B?",
    "=?utf-8?q?",
    "?=",
    "=C3",
    "=B3",
    "\r\n ",
    "\u200b",
    "\udcff",
    "\u0301",
    "Dr.",
    "Mr",
    "SSN",
    "MRN",
    "#",
    "-",
    "/",
    "(",
    ")",
    "+1",
    "+44",
    "0",
    "9",
    "123-45-6789",
    "Jane",
    "Okafor",
    "'s",
    ",",
    ":",
    "your",
    "results",
    "diabetes",
    "de",
    "Calle",
    "Apt",
    "ZZ 12 34 56 T",
    "E11.9",
    "\u0410",
    "\uff2d",
    "\t",
    " ",
    "@",
    "x",
    "ext",
    "DOB",
    "1/2",
]


def test_random_text_never_raises() -> None:
    rng = random.Random(20261123)
    fake = Faker(["en_US", "es_MX", "en_GB", "vi_VN", "ja_JP", "ar_AA"])
    fake.seed_instance(5)
    detector = default_detector()
    for i in range(3000):
        if i % 3 == 0:
            text = "".join(rng.choice(_PIECES) for _ in range(rng.randint(0, 30)))
        elif i % 3 == 1:
            text = "".join(chr(rng.randint(1, 0x2FFFF)) for _ in range(rng.randint(0, 40)))
        else:
            text = fake.sentence(nb_words=rng.randint(1, 12))
        normalised = subject_text(text)
        for finding in detector.scan(normalised):
            assert 0 <= finding.start < finding.end <= len(normalised)
        assert isinstance(detector.conditions(normalised), frozenset)
