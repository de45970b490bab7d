"""Find where in an HTML body a footer will be rendered, in one linear pass.

Appending after the last `</body>` is not enough: that tag may sit inside a comment or
a `<script>`, the document may end inside an unclosed `<!--`, `<style>`, tag or
attribute, or inside an element the sender hid (`display:none`, `hidden`, `<template>`).
A footer there is sent but never seen. This tokenizer follows the HTML states that
hide text (comments, raw-text elements, tags) and a stack of open elements, and
answers an offset plus the text that must come first to get back to rendered body
content (closing a comment, a raw-text element, a tag, or the hidden elements).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

# Elements whose content is not rendered as markup (HTML "raw text"/"RCDATA" states,
# and those whose content only shows when a feature is off).
_RAW = frozenset(
    {"script", "style", "textarea", "title", "xmp", "iframe", "noembed", "noframes", "noscript"}
)
_VOID = frozenset(
    {
        "area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta",
        "param", "source", "track", "wbr", "basefont", "bgsound", "frame", "keygen",
    }
)  # fmt: skip
_TAG = re.compile(r"<(/?)([A-Za-z][^\s/>]*)")
# The rest of a tag up to its '>', quotes respected; possessive, so never backtracks.
_ATTRS = re.compile(r"""(?:[^>"']++|"[^"]*+"|'[^']*+')*+""")
_HIDING = re.compile(
    r"display\s*:\s*none|visibility\s*:\s*hidden|mso-hide\s*:\s*all|opacity\s*:\s*0(?![.\d])"
    r"|font-size\s*:\s*0(?![.\d])|max-height\s*:\s*0(?![.\d])|(?:^|\s)hidden(?:[\s=/]|$)",
    re.IGNORECASE,
)


@dataclass(slots=True)
class _Open:
    stack: list[tuple[str, bool]] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)
    hidden: int = 0

    def push(self, tag: str, hides: bool) -> None:
        self.stack.append((tag, hides))
        self.counts[tag] = self.counts.get(tag, 0) + 1
        self.hidden += hides

    def close(self, tag: str) -> None:
        # Pop to the matching element; each element is popped once (linear overall).
        # </body> and </html> close nothing: content after them still goes into the
        # element that was open (HTML "after body" mode reprocesses it "in body").
        if tag in ("body", "html") or not self.counts.get(tag):
            return
        while self.stack:
            name, hides = self.stack.pop()
            self.counts[name] -= 1
            self.hidden -= hides
            if name == tag:
                return

    def closers(self) -> str:
        """End tags that leave every hidden element (innermost first)."""
        if not self.hidden:
            return ""
        outer = next(i for i, (_, hides) in enumerate(self.stack) if hides)
        return "".join(f"</{name}>" for name, _ in reversed(self.stack[outer:]))


def insertion_point(markup: str) -> tuple[int, str]:
    """(offset, prefix): insert `prefix + footer` at `offset` for the footer to be rendered."""
    n = len(markup)
    spot = -1  # the last </body> (else </html>) met in rendered body content
    spot_is_body = False
    open_ = _Open()
    raw_end: dict[str, re.Pattern[str]] = {}

    def at_end(prefix: str) -> tuple[int, str]:
        if spot >= 0:
            return spot, ""
        return n, prefix + open_.closers()

    i = 0
    while True:
        lt = markup.find("<", i)
        if lt < 0:
            return at_end("")
        if markup.startswith("<!--", lt):
            end = markup.find("-->", lt + 4)
            if end < 0:
                return at_end("-->")
            i = end + 3
            continue
        if markup.startswith(("<!", "<?"), lt):  # doctype, CDATA outside SVG, bogus comment
            end = markup.find(">", lt + 2)
            if end < 0:
                return at_end(">")
            i = end + 1
            continue
        m = _TAG.match(markup, lt)
        if m is None:
            i = lt + 1  # a '<' that is text
            continue
        attrs = _ATTRS.match(markup, m.end())
        after = attrs.end() if attrs is not None else m.end()
        if after >= n or markup[after] != ">":
            return at_end(_open_quote(markup[m.end() :]) + ">")
        tag, closing = m.group(2).lower(), m.group(1) == "/"
        i = after + 1
        if closing:
            if (
                tag in ("body", "html")
                and not open_.hidden
                and not (spot_is_body and tag == "html")
            ):
                spot, spot_is_body = lt, tag == "body"
            open_.close(tag)
            continue
        if tag == "plaintext":
            return lt, open_.closers()  # everything after it is shown as text
        if tag in _RAW:
            pattern = raw_end.setdefault(tag, re.compile(rf"</{tag}[\s/>]", re.IGNORECASE))
            found = pattern.search(markup, i)
            if found is None:
                return at_end(f"</{tag}>")
            i = found.start()
            continue
        body = markup[m.end() : after]
        if tag in _VOID or body.rstrip().endswith("/"):
            continue
        open_.push(tag, tag == "template" or bool(_HIDING.search(body)))


def _open_quote(rest: str) -> str:
    """The quote character left open at the end of an unfinished tag, if any."""
    quote = ""
    for ch in rest:
        if quote:
            if ch == quote:
                quote = ""
        elif ch in "\"'":
            quote = ch
    return quote
