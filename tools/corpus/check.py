"""Format check for a writer's corpus TSV (tools/corpus/BRIEF.md): python3 check.py FILE.

Checks the columns, ids, languages, forms, labels and rule ids, that no subject holds a
control character, and that each RFC 2047 raw value decodes (email.policy.default) to
its subject; prints each problem, then OK or the count of problems.
"""

from __future__ import annotations

import re
import sys
from email import policy
from email.parser import HeaderParser
from pathlib import Path

HEADER = "id\twriter\tlang\tform\tlabel\trule\tsubject\traw"
LANGS = frozenset(["en", "es", "pt", "fr", "vi", "zh", "tl", "ht", "ru", "ar", "ko"])
FORMS = frozenset({"plain", "obfuscated", "rfc2047"})
RULE = re.compile(r"^(R1\.\d+|R2\.\d+|R3\.\d+|B([1-9]|1[0-2]))$")
CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def on_the_wire(raw: str) -> str:
    """`\\r\\n` and a space or `\\t` are a fold (the brief's escape)."""
    return raw.replace("\\r\\n\\t", "\r\n\t").replace("\\r\\n", "\r\n")


def decoded(raw: str) -> str:
    header = "Subject: " + on_the_wire(raw) + "\r\n\r\n"
    return str(HeaderParser(policy=policy.default).parsestr(header)["subject"])


def row_problems(cols: list[str]) -> list[str]:
    if len(cols) != 8:
        return [f"{len(cols)} columns, need 8"]
    ident, writer, lang, form, label, rule, subject, raw = cols
    out = []
    if not ident.startswith(writer + "-"):
        out.append("id must start with the writer")
    if lang not in LANGS:
        out.append(f"lang {lang!r}")
    if form not in FORMS:
        out.append(f"form {form!r}")
    if label not in ("phi", "clean"):
        out.append(f"label {label!r}")
    if not RULE.match(rule):
        out.append(f"rule {rule!r}")
    if not subject.strip():
        out.append("empty subject")
    if CONTROL.search(subject):
        out.append("control character in the subject")
    if form == "rfc2047":
        if not raw:
            out.append("an rfc2047 row needs raw")
        elif (got := decoded(raw)) != subject:
            out.append(f"raw decodes to {got!r}, subject is {subject!r}")
    elif raw:
        out.append("raw must be empty unless the form is rfc2047")
    return out


def main(path: Path) -> int:
    lines = path.read_text(encoding="utf-8").split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    problems = [] if lines[:1] == [HEADER] else ["line 1: the header must be: " + HEADER]
    ids: set[str] = set()
    seen: set[tuple[str, str]] = set()
    for n, line in enumerate(lines[1:], 2):
        cols = line.split("\t")
        problems += [f"line {n}: {p}" for p in row_problems(cols)]
        if len(cols) != 8:
            continue
        if cols[0] in ids:
            problems.append(f"line {n}: duplicate id {cols[0]}")
        if (cols[6], cols[3]) in seen:
            problems.append(f"line {n}: duplicate subject and form")
        ids.add(cols[0])
        seen.add((cols[6], cols[3]))
    for p in problems[:200]:
        print(p)
    print("OK" if not problems else f"{len(problems)} problems", f"({len(lines) - 1} rows)")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1])))
