"""Apply a decision's modifications to the received bytes, changing nothing else.

Everything works on the raw message as received (CRLF line endings), not on a
re-serialised `email` object: a header edit splices the header block, a footer
re-encodes only the bytes of each text body part it touches. Every other byte
(attachments, preambles, boundaries, header folding) reaches the upstream as the
client sent it, which keeps signatures on untouched parts, attachment hashes and
the integration tests' "body unchanged" checks honest. The `email` package is
used only to read each part's headers, so both sides agree on what a part is.

See docs/footer.md for what happens to each MIME shape.
"""

from __future__ import annotations

import base64
import binascii
import codecs
import email.charset
import email.message
import email.policy
import html
import itertools
import re
import secrets
from collections.abc import Sequence
from dataclasses import dataclass, field
from email.errors import (
    CloseBoundaryNotFoundDefect,
    MultipartInvariantViolationDefect,
    StartBoundaryNotFoundDefect,
)
from email.header import Header
from email.message import EmailMessage
from email.parser import BytesHeaderParser

from relay.headers import LINEAR_POLICY
from relay.htmlspot import insertion_point
from relay.model import (
    AppendFooter,
    LinkMaker,
    ListUnsubscribe,
    Modification,
    PrependText,
    RemoveHeader,
    ReplaceSubject,
    SetHeader,
    UnsubscribeLinks,
)

CRLF = b"\r\n"
MAX_LINE = 998  # RFC 5322 2.1.1: a line may not exceed 998 octets without its CRLF
FOLD_AT = 78
# Deeper than server.max_mime_depth may be set (config enforces it), within Python's stack.
MAX_DEPTH = 250
# Content whose bytes are covered by a signature or are ciphertext. Kept in step with
# relay.policy.optout_footer.PROTECTED_TYPES (this module must not import a policy).
PROTECTED_TYPES = frozenset(
    {
        "multipart/signed",
        "multipart/encrypted",
        "application/pkcs7-mime",
        "application/x-pkcs7-mime",
    }
)
PLACEHOLDER_URL = "{unsubscribe_url}"
PLACEHOLDER_MAILTO = "{unsubscribe_mailto}"

_HEADER_PARSER = BytesHeaderParser(policy=LINEAR_POLICY)
_FIELD_NAME = re.compile(rb"^[!-9;-~]+$")
_HEADER_LINE = re.compile(rb"^(?:[!-9;-~]+:|[\t ])")
_TEXT_BODIES = frozenset({"text/plain", "text/html", "text/enriched"})
_PARAM_OPEN = re.compile(r"<param>", re.IGNORECASE)
_PARAM_CLOSE = re.compile(r"</param>", re.IGNORECASE)
_BODY_OPEN = re.compile(r"<body\b[^>]*>", re.IGNORECASE)
_BROKEN_MIME = (
    StartBoundaryNotFoundDefect,
    CloseBoundaryNotFoundDefect,
    MultipartInvariantViolationDefect,
)


# Reasons that come from the relay's own wiring rather than the message: a retry may work.
_TRANSIENT_REASONS = frozenset({"links.unavailable"})


class RewriteError(Exception):
    """The message cannot be rewritten as asked. `reason` is a PHI-free code."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason

    @property
    def permanent(self) -> bool:
        """True when sending the same message again cannot succeed (a 5xx, not a 4xx)."""
        return self.reason not in _TRANSIENT_REASONS


def has_footer(mods: Sequence[Modification]) -> bool:
    return any(isinstance(m, AppendFooter) for m in mods)


def per_recipient(mods: Sequence[Modification]) -> bool:
    """True when the output differs per recipient (it carries that recipient's token)."""
    return any(isinstance(m, AppendFooter | ListUnsubscribe) for m in mods)


# --- header blocks ---------------------------------------------------------------


@dataclass(slots=True)
class _Headers:
    """One header block as a list of whole fields (first line plus continuation lines)."""

    fields: list[bytes]
    separator: bytes  # the empty line ending the block: CRLF, or b"" when it was missing

    @staticmethod
    def name_of(field_bytes: bytes) -> bytes:
        return field_bytes.split(b":", 1)[0].strip().lower()

    def index(self, name: str) -> int | None:
        key = name.lower().encode("ascii")
        for i, f in enumerate(self.fields):
            if self.name_of(f) == key:
                return i
        return None

    def remove(self, name: str) -> int | None:
        """Drop every field with this name; return where the first one was."""
        first = self.index(name)
        key = name.lower().encode("ascii")
        self.fields = [f for f in self.fields if self.name_of(f) != key]
        return first

    def put(self, name: str, folded: bytes, *, at_first: bool = False) -> None:
        """Replace all fields of this name by one: where the first was, or at the top."""
        where = self.remove(name)
        self.fields.insert(where if (at_first and where is not None) else 0, folded)

    def to_bytes(self) -> bytes:
        fields = [f if f.endswith(CRLF) else f + CRLF for f in self.fields]
        return b"".join(fields)


def _split_headers(data: bytes, start: int = 0, end: int | None = None) -> tuple[_Headers, int]:
    """Split the entity data[start:end] the way the email parser does: (headers, body offset)."""
    stop = len(data) if end is None else end
    fields: list[bytes] = []
    pos = start
    while pos < stop:
        nl = data.find(CRLF, pos, stop)
        line_end = stop if nl < 0 else nl + 2
        line = data[pos:line_end]
        if line == CRLF:
            return _Headers(fields, CRLF), line_end
        if line[:1] in (b" ", b"\t") and fields:
            fields[-1] += line
        elif _HEADER_LINE.match(line):
            fields.append(line)
        else:
            # No empty line: the parser starts the body here (a defect it records).
            return _Headers(fields, b""), pos
        pos = line_end
    return _Headers(fields, b""), stop


def _check_field(name: str, value: str) -> None:
    if not name.isascii() or not _FIELD_NAME.match(name.encode("ascii")):
        raise RewriteError("header.invalid-name")
    if "\r" in value or "\n" in value or "\0" in value:
        raise RewriteError("header.invalid-value")


def _fold_words(name: str, words: Sequence[str], joiner: str) -> bytes:
    """Fold ASCII words onto lines of at most 78 characters where whitespace allows it.

    `joiner` separates words on one line (" " or ", "); a fold replaces its trailing
    space with CRLF and one space, so the unfolded value is unchanged.
    """
    lines: list[str] = []
    current = f"{name}: {words[0] if words else ''}"
    for word in words[1:]:
        # Never fold before an empty word: a line of only whitespace is not a valid fold.
        if word and len(current) + len(joiner) + len(word) > FOLD_AT:
            lines.append(current + joiner.rstrip(" "))
            current = " " + word
        else:
            current += joiner + word
    lines.append(current)
    if any(len(line) > MAX_LINE for line in lines):
        raise RewriteError("header.too-long")
    return ("\r\n".join(lines) + "\r\n").encode("ascii")


def _fold(name: str, value: str) -> bytes:
    """A header field ready for the wire: folded, and RFC 2047-encoded when not ASCII."""
    _check_field(name, value)
    if value.isascii():
        # The email package would turn a long unbroken ASCII word (a URL, a token) into an
        # encoded-word; fold only at existing whitespace instead.
        words = value.split(" ")
        return _fold_words(name, words, " ")
    # email.policy's folder leaves a short non-ASCII value unencoded (8-bit on the wire);
    # Header always produces RFC 2047 encoded-words and folds them.
    encoded = Header(value, "utf-8", header_name=name).encode(linesep="\r\n")
    return f"{name}: {encoded}\r\n".encode("ascii")


def _apply_header_mods(
    headers: _Headers, mods: Sequence[Modification], links: UnsubscribeLinks | None, mailto: str
) -> None:
    for mod in mods:
        if isinstance(mod, SetHeader):
            headers.put(mod.name, _fold(mod.name, mod.value))
        elif isinstance(mod, RemoveHeader):
            _check_field(mod.name, "")
            headers.remove(mod.name)
        elif isinstance(mod, ReplaceSubject):
            headers.put("Subject", _fold("Subject", mod.subject), at_first=True)
        elif isinstance(mod, ListUnsubscribe):
            if links is None:
                raise RewriteError("links.unavailable")
            targets = [f"<{links.https}>"]
            if mailto:
                targets.append(f"<{mailto}>")
            for t in targets:
                _check_field("List-Unsubscribe", t)
                if not t.isascii() or " " in t:
                    raise RewriteError("links.invalid")
            # RFC 2369: a comma-separated list of angle-bracketed URLs, folded between them.
            headers.remove("List-Unsubscribe-Post")
            headers.put(
                "List-Unsubscribe-Post", b"List-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n"
            )
            headers.remove("List-Unsubscribe")
            headers.fields.insert(0, _fold_words("List-Unsubscribe", targets, ", "))


# --- the MIME tree, as byte ranges in the raw message ---------------------------------


@dataclass(slots=True)
class _Part:
    start: int  # first byte of the entity (its header block)
    end: int  # one past its last byte (the CRLF before the next delimiter is not in it)
    headers: _Headers
    body_start: int
    info: EmailMessage  # the parsed header block, for content type and parameters
    children: list[_Part] = field(default_factory=list)
    boundary: bytes = b""
    close_at: int = -1  # where the close-delimiter line starts, for multiparts

    @property
    def ctype(self) -> str:
        return self.info.get_content_type()

    @property
    def is_attachment(self) -> bool:
        disposition = self.info.get_content_disposition()
        return disposition == "attachment" or self.info.get_filename() is not None


def _parse_part(raw: bytes, start: int, end: int, default_type: str, depth: int) -> _Part:
    if depth > MAX_DEPTH:
        raise RewriteError("mime.too-deep")
    headers, body_start = _split_headers(raw, start, end)
    info = _HEADER_PARSER.parsebytes(headers.to_bytes() + CRLF)
    if default_type != "text/plain" and "content-type" not in info:
        info.set_default_type(default_type)
    part = _Part(start, end, headers, body_start, info)
    if info.get_content_maintype() == "multipart":
        _split_multipart(raw, part, depth)
    return part


def _split_multipart(raw: bytes, part: _Part, depth: int) -> None:
    boundary = part.info.get_boundary()
    if not boundary:
        raise RewriteError("mime.malformed")
    part.boundary = boundary.encode("ascii", "surrogateescape")
    delimiter = b"--" + part.boundary
    marks: list[tuple[int, int]] = []  # (line start, line end after CRLF)
    pos = part.body_start
    while True:
        # Jump between candidate delimiters rather than walking every line of the
        # (often large, base64) parts in between.
        found = raw.find(delimiter, pos, part.end)
        if found < 0:
            break
        nl = raw.find(CRLF, found, part.end)
        line_end = part.end if nl < 0 else nl + 2
        pos = line_end
        if found != part.body_start and raw[found - 2 : found] != CRLF:
            pos = found + 1
            continue  # not at the start of a line
        rest = raw[found + len(delimiter) : line_end].rstrip(b"\r\n")
        closing = rest.startswith(b"--")
        if not rest.removeprefix(b"--").strip(b" \t"):
            marks.append((found, line_end))
            if closing:
                part.close_at = found
                break
    if part.close_at < 0 or len(marks) < 1:
        raise RewriteError("mime.malformed")
    child_type = "message/rfc822" if part.ctype == "multipart/digest" else "text/plain"
    for (_, open_end), (next_start, _) in itertools.pairwise(marks):
        # The CRLF before a delimiter belongs to the delimiter (RFC 2046 5.1.1).
        child_end = max(open_end, next_start - 2)
        part.children.append(_parse_part(raw, open_end, child_end, child_type, depth + 1))


def _walk(part: _Part) -> list[_Part]:
    """Every entity, not descending into attached messages (their text is not ours)."""
    return [p for p, _ in _walk_with_parent(part, "")]


def _walk_with_parent(part: _Part, parent: str) -> list[tuple[_Part, str]]:
    out = [(part, parent)]
    for child in part.children:
        out.extend(_walk_with_parent(child, part.ctype))
    return out


def _displayed(part: _Part, parent: str) -> bool:
    """A text leaf a mail client shows as (part of) the message body.

    An explicit `attachment` never is. A file name does not make an attachment where
    the part is the message itself or one alternative of its body: clients show those
    as the body. Elsewhere (multipart/mixed) a named part is a file the recipient
    opens, and stays byte-identical.
    """
    disposition = part.info.get_content_disposition()
    if disposition == "attachment" or part.children or part.ctype not in _TEXT_BODIES:
        return False
    return part.info.get_filename() is None or parent in ("", "multipart/alternative")


def _footer_targets(root: _Part) -> list[_Part]:
    return [p for p, parent in _walk_with_parent(root, "") if _displayed(p, parent)]


# --- decoding and re-encoding one text part -------------------------------------------


def _codec(charset: str) -> str | None:
    name = email.charset.ALIASES.get(charset.lower(), charset.lower())
    try:
        return codecs.lookup(name).name
    except LookupError:
        return None


def _cte(info: EmailMessage) -> str:
    return str(info.get("content-transfer-encoding", "7bit")).strip().lower() or "7bit"


def _decode_cte(body: bytes, cte: str) -> bytes:
    if cte == "base64":
        compact = b"".join(body.split())
        try:
            return binascii.a2b_base64(compact + b"=" * (-len(compact) % 4))
        except binascii.Error as exc:
            raise RewriteError("encoding.invalid") from exc
    if cte == "quoted-printable":
        return binascii.a2b_qp(body)
    if cte in ("7bit", "8bit", "binary"):
        return body
    raise RewriteError("encoding.unknown")


def _encode_base64(data: bytes) -> bytes:
    return base64.encodebytes(data).replace(b"\n", CRLF)


def _needs_encoding(data: bytes) -> bool:
    return not data.isascii() or any(len(line) > MAX_LINE for line in data.split(CRLF))


@dataclass(frozen=True, slots=True)
class _Footer:
    text: str
    html: str
    top: bool = False  # PrependText: the block goes before the text, not after it


def _flowed_lines(lines: list[str]) -> list[str]:
    """Footer lines made safe for format=flowed (RFC 3676): fixed, and space-stuffed."""
    out = []
    for line in lines:
        if line != "-- ":
            line = line.rstrip(" ")
        if line.startswith((" ", ">", "From ")):
            line = " " + line
        out.append(line)
    return out


def _with_header_text(text: str, footer: _Footer, ctype: str, flowed: bool, eol: str) -> str:
    if ctype == "text/html":
        block = eol.join(footer.html.splitlines())
        opened = _BODY_OPEN.search(text)
        at = opened.end() if opened else 0
        return text[:at] + block + eol + text[at:]
    lines = footer.text.splitlines()
    if ctype == "text/enriched":
        # RFC 1896: '<' is written '<<', and n line breaks take n+1 CRLFs.
        return (eol + eol).join(line.replace("<", "<<") for line in lines) + eol * 3 + text
    if flowed:
        lines = _flowed_lines(lines)
    # An empty line keeps the added text apart from the message.
    return eol.join(lines) + eol + eol + text


def _with_footer(text: str, footer: _Footer, ctype: str, flowed: bool) -> str:
    eol = "\r\n" if ("\r\n" in text or "\n" not in text) else "\n"
    if footer.top:
        return _with_header_text(text, footer, ctype, flowed, eol)
    if ctype == "text/html":
        block = eol.join(footer.html.splitlines())
        at, prefix = insertion_point(text)
        if at < len(text):
            return text[:at] + prefix + block + eol + text[at:]
        if text and not text.endswith(("\n", "\r")) and not prefix:
            text += eol
        return text + prefix + block + eol
    if ctype == "text/enriched":
        return _enriched_footer(text, footer, eol)
    lines = footer.text.splitlines()
    if flowed:
        lines = _flowed_lines(lines)
        # A last line ending in a space would flow into the footer's first line.
        stripped = text.rstrip("\r\n")
        if stripped.endswith(" ") and not stripped.endswith("\n-- ") and stripped != "-- ":
            text = stripped.rstrip(" ") + text[len(stripped) :]
    if text and not text.endswith("\n"):
        text += eol
    if text:
        text += eol  # an empty line keeps the footer apart from the message
    return text + eol.join(lines) + eol


def _enriched_footer(text: str, footer: _Footer, eol: str) -> str:
    """RFC 1896: '<' is written '<<', and n line breaks take n+1 CRLFs."""
    prefix = ""
    if len(_PARAM_OPEN.findall(text)) > len(_PARAM_CLOSE.findall(text)):
        prefix = "</param>"  # a <param> argument is never displayed; close it first
    lines = [line.replace("<", "<<") for line in footer.text.splitlines()]
    if text and not text.endswith("\n"):
        text += eol
    return text + prefix + eol + (eol + eol).join(lines) + eol


def _rewrite_text_part(raw: bytes, part: _Part, footer: _Footer) -> bytes:
    """The new bytes of one text entity (header block and body) carrying the footer."""
    info = part.info
    cte = _cte(info)
    declared = info.get_param("charset")
    charset = (str(declared) if isinstance(declared, str) else "").strip() or "us-ascii"
    added = footer.html if part.ctype == "text/html" else footer.text
    codec = _codec(charset)
    if codec is None:
        if not added.isascii():
            raise RewriteError("charset.unknown")
        # Every charset Python does not know is, in practice, a superset of ASCII (the
        # ASCII-incompatible ones, UTF-16/32 and EBCDIC, are known). latin-1 maps each
        # byte to one character, so the original bytes come back unchanged.
        codec = "latin-1"
    data = _decode_cte(raw[part.body_start : part.end], cte)
    flowed = str(info.get_param("format", "")).lower() == "flowed"
    text = data.decode(codec, "surrogateescape")
    new_text = _with_footer(text, footer, part.ctype, flowed)
    new_charset = charset
    try:
        added.encode(codec)
        new_data = new_text.encode(codec, "surrogateescape")
    except UnicodeEncodeError:
        # The footer does not fit the part's charset: the whole part moves to UTF-8,
        # which is only lossless if the original text decoded cleanly.
        try:
            new_data = new_text.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise RewriteError("charset.undecodable") from exc
        new_charset = "utf-8"

    new_cte = cte
    if cte == "base64":
        body = _encode_base64(new_data)
    elif cte == "quoted-printable":
        body = binascii.b2a_qp(new_data, istext=True)
    elif cte == "7bit" and _needs_encoding(new_data):
        new_cte = "quoted-printable"
        body = binascii.b2a_qp(new_data, istext=True)
    else:
        body = new_data

    headers = _Headers(list(part.headers.fields), part.headers.separator or CRLF)
    if new_charset != charset:
        ct = email.message.Message()
        ct["Content-Type"] = str(info.get("content-type", part.ctype))
        ct.set_param("charset", new_charset)
        headers.put(
            "Content-Type", _fold_structured("Content-Type", str(ct["Content-Type"])), at_first=True
        )
    if new_cte != cte:
        headers.put(
            "Content-Transfer-Encoding",
            b"Content-Transfer-Encoding: " + new_cte.encode("ascii") + CRLF,
            at_first=True,
        )
    changed = new_charset != charset or new_cte != cte
    if changed and part.start == 0 and headers.index("MIME-Version") is None:
        # A plain RFC 5322 message that now needs MIME fields must say it is MIME.
        headers.fields.append(b"MIME-Version: 1.0\r\n")
    return headers.to_bytes() + headers.separator + body


def _fold_structured(name: str, value: str) -> bytes:
    _check_field(name, value)
    folded: str = email.policy.SMTP.fold(name, value)
    return folded.encode("ascii")


def _footer_part(footer: _Footer) -> bytes:
    """A standalone text/plain entity holding only the footer."""
    text = "\r\n".join(footer.text.splitlines()) + "\r\n"
    data = text.encode("utf-8")
    if text.isascii():
        head = b"Content-Type: text/plain; charset=us-ascii\r\nContent-Transfer-Encoding: 7bit\r\n"
        body = data
    else:
        head = (
            b"Content-Type: text/plain; charset=utf-8\r\n"
            b"Content-Transfer-Encoding: quoted-printable\r\n"
        )
        body = binascii.b2a_qp(data, istext=True)
    return head + b"Content-Disposition: inline\r\n\r\n" + body


def _new_boundary(raw: bytes) -> bytes:
    while True:
        candidate = b"=_phi-relay_" + secrets.token_hex(12).encode("ascii")
        if candidate not in raw:
            return candidate


def _add_footer_part(raw: bytes, root: _Part, footer: _Footer) -> tuple[_Headers, bytes]:
    """No text body to carry the footer: give the message one, as a text/plain part."""
    entity = _footer_part(footer)
    if root.ctype == "multipart/mixed":
        delimiter = b"--" + root.boundary
        if root.close_at == root.body_start:
            insert_at, piece = root.close_at, delimiter + CRLF + entity + CRLF
        else:
            insert_at, piece = root.close_at - 2, CRLF + delimiter + CRLF + entity
        return root.headers, raw[root.body_start : insert_at] + piece + raw[insert_at:]
    # Wrap: the original body, with its Content-* fields, becomes the first part.
    content = [f for f in root.headers.fields if _Headers.name_of(f).startswith(b"content-")]
    outer = [f for f in root.headers.fields if not _Headers.name_of(f).startswith(b"content-")]
    boundary = _new_boundary(raw)
    headers = _Headers(outer, CRLF)
    if headers.index("MIME-Version") is None:
        headers.fields.append(b"MIME-Version: 1.0\r\n")
    headers.fields.append(b'Content-Type: multipart/mixed; boundary="' + boundary + b'"\r\n')
    inner = _Headers(content, CRLF).to_bytes() + CRLF + raw[root.body_start :]
    delimiter = b"--" + boundary
    body = (
        delimiter
        + CRLF
        + inner
        + CRLF
        + delimiter
        + CRLF
        + entity
        + CRLF
        + delimiter
        + b"--"
        + CRLF
    )
    return headers, body


def _render_footer(mod: AppendFooter, links: UnsubscribeLinks | None, mailto: str) -> _Footer:
    needs_links = any(PLACEHOLDER_URL in t or PLACEHOLDER_MAILTO in t for t in (mod.text, mod.html))
    if needs_links and links is None:
        raise RewriteError("links.unavailable")
    url = links.https if links is not None else ""

    def fill(template: str, escape: bool) -> str:
        lines = template.splitlines()
        if not mailto:
            # A sentence about the unsubscribe mailbox makes no sense without one.
            lines = [line for line in lines if PLACEHOLDER_MAILTO not in line]
        out = "\n".join(lines)
        for key, value in ((PLACEHOLDER_URL, url), (PLACEHOLDER_MAILTO, mailto)):
            out = out.replace(key, html.escape(value, quote=True) if escape else value)
        return out

    return _Footer(text=fill(mod.text, escape=False), html=fill(mod.html, escape=True))


def _mailto(mods: Sequence[Modification], links: UnsubscribeLinks | None) -> str:
    """The mailto link: the link maker's (it carries a token), else the policy's mailbox."""
    if links is not None and links.mailto:
        return links.mailto
    for mod in mods:
        if isinstance(mod, ListUnsubscribe) and mod.mailto:
            return f"mailto:{mod.mailto}?subject=unsubscribe"
    return ""


def render(
    raw: bytes,
    message: EmailMessage | None,
    mods: Sequence[Modification],
    *,
    recipient: str | None,
    category: str,
    links: LinkMaker | None,
) -> bytes:
    """The message to send upstream: `raw` with `mods` applied, CRLF line endings.

    With no modifications `raw` itself is returned. Header modifications leave the
    body byte-identical. Raises RewriteError (reason code, no PHI) when the message
    cannot carry a change, e.g. a footer on signed or encrypted content. `message`, the
    parsed form of `raw`, adds a check for MIME defects the byte splitter tolerates.
    """
    if not mods:
        return raw
    if (
        message is not None
        and any(isinstance(m, AppendFooter) for m in mods)
        and any(isinstance(d, _BROKEN_MIME) for p in message.walk() for d in p.defects)
    ):
        raise RewriteError("mime.malformed")
    return render_with(raw, mods, links_for(mods, recipient, category, links))


def links_for(
    mods: Sequence[Modification], recipient: str | None, category: str, links: LinkMaker | None
) -> UnsubscribeLinks | None:
    """This recipient's unsubscribe links, when the modifications need them."""
    if not (per_recipient(mods) and links is not None and recipient is not None):
        return None
    unsub_category = next((m.category for m in mods if isinstance(m, ListUnsubscribe)), category)
    return links(recipient, unsub_category)


def render_with(raw: bytes, mods: Sequence[Modification], made: UnsubscribeLinks | None) -> bytes:
    """`render` with the recipient's links already made (what a worker process runs)."""
    if not mods:
        return raw
    mailto = _mailto(mods, made)
    footers = [m for m in mods if isinstance(m, AppendFooter | PrependText)]

    if not footers:
        headers, body_at = _split_headers(raw)
        before = list(headers.fields)
        _apply_header_mods(headers, mods, made, mailto)
        if headers.fields == before:
            return raw
        return headers.to_bytes() + headers.separator + raw[body_at:]

    root = _parse_part(raw, 0, len(raw), "text/plain", 0)
    if any(p.ctype in PROTECTED_TYPES for p in _walk(root)):
        raise RewriteError("footer.protected-message")
    out = raw
    for mod in footers:
        if isinstance(mod, PrependText):
            footer = _Footer(mod.text, f"<p>{html.escape(mod.text)}</p>", top=True)
        else:
            footer = _render_footer(mod, made, mailto)
        root = _parse_part(out, 0, len(out), "text/plain", 0) if out is not raw else root
        out = _append_footer(out, root, footer)
    headers, body_at = _split_headers(out)
    _apply_header_mods(headers, mods, made, mailto)
    return headers.to_bytes() + headers.separator + out[body_at:]


def _append_footer(raw: bytes, root: _Part, footer: _Footer) -> bytes:
    targets = _footer_targets(root)
    if not targets:
        headers, body = _add_footer_part(raw, root, footer)
        return headers.to_bytes() + headers.separator + body
    pieces: list[bytes] = []
    pos = 0
    for part in targets:  # document order, so the splices do not overlap
        pieces.append(raw[pos : part.start])
        pieces.append(_rewrite_text_part(raw, part, footer))
        pos = part.end
    pieces.append(raw[pos:])
    return b"".join(pieces)
