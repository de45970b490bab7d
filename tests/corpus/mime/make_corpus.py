"""Write the MIME sample messages the footer rewrite is tested against (CRLF, synthetic text).

Run `python tests/corpus/mime/make_corpus.py` to regenerate; the .eml files are
committed so a test never depends on this script's output changing silently.
Every name, address and sentence here is invented.
"""

from __future__ import annotations

import base64
import binascii
from pathlib import Path

HERE = Path(__file__).resolve().parent

HEAD = (
    "From: Clinic News <news@clinic.example>\n"
    "To: patient@example.net\n"
    "Subject: Our new Saturday hours\n"
    "Date: Mon, 23 Nov 2026 09:00:00 +0000\n"
    "Message-ID: <{name}@clinic.example>\n"
)
PDF = b"%PDF-1.4\n" + bytes(range(256)) * 12 + b"\n%%EOF\n"
PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(255, -1, -1)) * 4
SIGNATURE = bytes((i * 37) % 256 for i in range(300))


def b64(data: bytes) -> str:
    return base64.encodebytes(data).decode("ascii")


def qp(text: str, charset: str) -> str:
    return binascii.b2a_qp(text.replace("\n", "\r\n").encode(charset), istext=True).decode("ascii")


SAMPLES: dict[str, str | bytes] = {}

SAMPLES["plain_no_mime.eml"] = HEAD + "\nWe are now open on Saturdays from 9 to 1.\nSee you soon.\n"

SAMPLES["plain_latin1_qp.eml"] = (
    HEAD
    + "MIME-Version: 1.0\n"
    + "Content-Type: text/plain; charset=iso-8859-1\n"
    + "Content-Transfer-Encoding: quoted-printable\n\n"
    + qp("Caf\u00e9 et cr\u00e8me: our new Saturday hours start next week.\n", "iso-8859-1")
)

SAMPLES["plain_latin1_8bit.eml"] = (
    HEAD.encode("ascii")
    + b"MIME-Version: 1.0\n"
    + b'Content-Type: text/plain; charset="ISO-8859-1"\n'
    + b"Content-Transfer-Encoding: 8bit\n\n"
    + "Sch\u00f6ne Gr\u00fc\u00dfe from the front desk.\n".encode("iso-8859-1")
)

SAMPLES["plain_shift_jis_base64.eml"] = (
    HEAD
    + "MIME-Version: 1.0\n"
    + "Content-Type: text/plain; charset=Shift_JIS\n"
    + "Content-Transfer-Encoding: base64\n\n"
    + b64(
        "\u571f\u66dc\u65e5\u3082\u8a3a\u7642\u3057\u3066\u3044\u307e\u3059\u3002\r\n".encode(
            "shift_jis"
        )
    )
)

SAMPLES["plain_iso2022jp_7bit.eml"] = (
    HEAD.encode("ascii")
    + b"MIME-Version: 1.0\n"
    + b"Content-Type: text/plain; charset=ISO-2022-JP\n"
    + b"Content-Transfer-Encoding: 7bit\n\n"
    + "\u571f\u66dc\u65e5\u3082\u8a3a\u7642\u3057\u3066\u3044\u307e\u3059\u3002\n".encode(
        "iso-2022-jp"
    )
)

SAMPLES["plain_flowed.eml"] = (
    HEAD
    + "MIME-Version: 1.0\n"
    + "Content-Type: text/plain; charset=us-ascii; format=flowed; delsp=no\n"
    + "Content-Transfer-Encoding: 7bit\n\n"
    + "Our new Saturday hours start next week and we hope they make \n"
    + "it easier to see us. \n"
)

SAMPLES["alternative_utf8_qp.eml"] = (
    HEAD
    + "MIME-Version: 1.0\n"
    + 'Content-Type: multipart/alternative; boundary="alt-1"\n\n'
    + "This is a multi-part message in MIME format.\n"
    + "--alt-1\n"
    + "Content-Type: text/plain; charset=utf-8\n"
    + "Content-Transfer-Encoding: quoted-printable\n\n"
    + qp("Five tips for a healthy heart \u2764 this winter.\n", "utf-8")
    + "\n--alt-1\n"
    + "Content-Type: text/html; charset=utf-8\n"
    + "Content-Transfer-Encoding: quoted-printable\n\n"
    + qp("<HTML><BODY><p>Five tips for a healthy heart \u2764</p></BODY></HTML>\n", "utf-8")
    + "\n--alt-1--\n"
)

SAMPLES["html_without_body_base64.eml"] = (
    HEAD
    + "MIME-Version: 1.0\n"
    + "Content-Type: text/html; charset=utf-8\n"
    + "Content-Transfer-Encoding: base64\n\n"
    + b64(b"<p>Flu shots are available on Saturdays.</p>\n<p>No appointment needed.</p>\n")
)

SAMPLES["mixed_attachments.eml"] = (
    HEAD
    + "MIME-Version: 1.0\n"
    + 'Content-Type: multipart/mixed; boundary="mix-1"\n\n'
    + "--mix-1\n"
    + 'Content-Type: multipart/alternative; boundary="mix-1-alt"\n\n'
    + "--mix-1-alt\n"
    + "Content-Type: text/plain; charset=us-ascii\n\n"
    + "Please find our new brochure attached.\n"
    + "--mix-1-alt\n"
    + "Content-Type: text/html; charset=us-ascii\n\n"
    + "<html><body><p>Please find our new brochure attached.</p></body></html>\n"
    + "--mix-1-alt--\n"
    + "\n--mix-1\n"
    + 'Content-Type: application/pdf; name="brochure.pdf"\n'
    + 'Content-Disposition: attachment; filename="brochure.pdf"\n'
    + "Content-Transfer-Encoding: base64\n\n"
    + b64(PDF)
    + "--mix-1\n"
    + "Content-Type: text/plain; charset=us-ascii\n"
    + 'Content-Disposition: attachment; filename="hours.txt"\n\n'
    + "Mon-Fri 8-6, Sat 9-1\n"
    + "--mix-1\n"
    + "Content-Type: text/html; charset=us-ascii\n"
    + 'Content-Disposition: inline; filename="map.html"\n\n'
    + "<html><body><p>Map</p></body></html>\n"
    + "--mix-1\n"
    + "Content-Type: text/plain; charset=us-ascii\n"
    + "Content-Disposition: inline\n\n"
    + "A second inline note.\n"
    + "--mix-1--\n"
    + "epilogue text\n"
)

SAMPLES["related_nested.eml"] = (
    HEAD
    + "MIME-Version: 1.0\n"
    + 'Content-Type: multipart/mixed; boundary="outer"\n\n'
    + "--outer\n"
    + 'Content-Type: multipart/related; boundary="rel"; type="multipart/alternative"\n\n'
    + "--rel\n"
    + 'Content-Type: multipart/alternative; boundary="alt"\n\n'
    + "--alt\n"
    + "Content-Type: text/plain; charset=windows-1252\n"
    + "Content-Transfer-Encoding: quoted-printable\n\n"
    + qp("Our clinic \u2013 now with parking.\n", "windows-1252")
    + "\n--alt\n"
    + "Content-Type: text/html; charset=windows-1252\n"
    + "Content-Transfer-Encoding: quoted-printable\n\n"
    + qp(
        '<html><body><img src="cid:logo@clinic"> Our clinic \u2013 now with parking.'
        "</body></html>\n",
        "windows-1252",
    )
    + "\n--alt--\n"
    + "\n--rel\n"
    + "Content-Type: image/png\n"
    + "Content-ID: <logo@clinic>\n"
    + "Content-Disposition: inline\n"
    + "Content-Transfer-Encoding: base64\n\n"
    + b64(PNG)
    + "--rel--\n"
    + "\n--outer\n"
    + 'Content-Type: application/octet-stream; name="data.bin"\n'
    + 'Content-Disposition: attachment; filename="data.bin"\n'
    + "Content-Transfer-Encoding: base64\n\n"
    + b64(PDF[::-1])
    + "--outer--\n"
)

SAMPLES["signed_multipart.eml"] = (
    HEAD
    + "MIME-Version: 1.0\n"
    + 'Content-Type: multipart/signed; protocol="application/pkcs7-signature"; '
    + 'micalg=sha-256; boundary="sig"\n\n'
    + "--sig\n"
    + "Content-Type: text/plain; charset=us-ascii\n\n"
    + "This text is covered by a signature.\n"
    + "--sig\n"
    + 'Content-Type: application/pkcs7-signature; name="smime.p7s"\n'
    + "Content-Transfer-Encoding: base64\n"
    + 'Content-Disposition: attachment; filename="smime.p7s"\n\n'
    + b64(SIGNATURE)
    + "--sig--\n"
)

SAMPLES["pkcs7_mime.eml"] = (
    HEAD
    + "MIME-Version: 1.0\n"
    + 'Content-Type: application/pkcs7-mime; smime-type=enveloped-data; name="smime.p7m"\n'
    + 'Content-Disposition: attachment; filename="smime.p7m"\n'
    + "Content-Transfer-Encoding: base64\n\n"
    + b64(SIGNATURE * 2)
)

SAMPLES["encrypted_pgp_in_mixed.eml"] = (
    HEAD
    + "MIME-Version: 1.0\n"
    + 'Content-Type: multipart/mixed; boundary="m"\n\n'
    + "--m\n"
    + "Content-Type: text/plain\n\n"
    + "Cover note.\n"
    + "--m\n"
    + 'Content-Type: multipart/encrypted; protocol="application/pgp-encrypted"; boundary="e"\n\n'
    + "--e\n"
    + "Content-Type: application/pgp-encrypted\n\n"
    + "Version: 1\n"
    + "--e\n"
    + "Content-Type: application/octet-stream\n\n"
    + "-----BEGIN PGP MESSAGE-----\n\nhQEMAzZ0\n-----END PGP MESSAGE-----\n"
    + "--e--\n"
    + "--m--\n"
)

SAMPLES["attachment_only.eml"] = (
    HEAD
    + "MIME-Version: 1.0\n"
    + 'Content-Type: application/pdf; name="brochure.pdf"\n'
    + 'Content-Disposition: attachment; filename="brochure.pdf"\n'
    + "Content-Transfer-Encoding: base64\n\n"
    + b64(PDF)
)

SAMPLES["calendar_only.eml"] = (
    HEAD
    + "MIME-Version: 1.0\n"
    + "Content-Type: text/calendar; method=PUBLISH; charset=utf-8\n\n"
    + "BEGIN:VCALENDAR\nVERSION:2.0\nPRODID:-//Clinic//EN\nBEGIN:VEVENT\n"
    + "UID:open-day@clinic.example\nDTSTART:20261205T090000Z\nSUMMARY:Open day\n"
    + "END:VEVENT\nEND:VCALENDAR\n"
)

SAMPLES["mixed_attachment_only.eml"] = (
    HEAD
    + "MIME-Version: 1.0\n"
    + 'Content-Type: multipart/mixed; boundary="only"\n\n'
    + "--only\n"
    + 'Content-Type: application/pdf; name="brochure.pdf"\n'
    + 'Content-Disposition: attachment; filename="brochure.pdf"\n'
    + "Content-Transfer-Encoding: base64\n\n"
    + b64(PDF)
    + "--only--\n"
)

SAMPLES["empty_parts.eml"] = (
    HEAD
    + "MIME-Version: 1.0\n"
    + 'Content-Type: multipart/alternative; boundary="empty"\n\n'
    + "--empty\n"
    + "Content-Type: text/plain; charset=us-ascii\n\n"
    + "\n--empty\n"
    + "Content-Type: text/html; charset=us-ascii\n"
    + "--empty--\n"
)

SAMPLES["forwarded_rfc822.eml"] = (
    HEAD
    + "MIME-Version: 1.0\n"
    + 'Content-Type: multipart/mixed; boundary="fwd"\n\n'
    + "--fwd\n"
    + "Content-Type: text/plain; charset=us-ascii\n\n"
    + "Forwarding the notice below.\n"
    + "--fwd\n"
    + "Content-Type: message/rfc822\n\n"
    + "From: office@clinic.example\nTo: news@clinic.example\nSubject: Notice\n"
    + "Content-Type: text/plain; charset=us-ascii\n\n"
    + "The original notice.\n"
    + "--fwd--\n"
)

SAMPLES["invalid_utf8_8bit.eml"] = (
    HEAD.encode("ascii")
    + b"MIME-Version: 1.0\n"
    + b"Content-Type: text/plain; charset=utf-8\n"
    + b"Content-Transfer-Encoding: 8bit\n\n"
    + b"Broken byte here: \xff\xfe and valid \xc3\xa9.\n"
)

SAMPLES["unknown_charset.eml"] = (
    HEAD
    + "MIME-Version: 1.0\n"
    + "Content-Type: text/plain; charset=x-no-such-charset\n\n"
    + "Hello.\n"
)

SAMPLES["malformed_no_close_boundary.eml"] = (
    HEAD
    + "MIME-Version: 1.0\n"
    + 'Content-Type: multipart/mixed; boundary="never-closed"\n\n'
    + "--never-closed\n"
    + "Content-Type: text/plain\n\n"
    + "The closing delimiter is missing.\n"
)

SAMPLES["malformed_no_separator.eml"] = (
    HEAD
    + "MIME-Version: 1.0\n"
    + "Content-Type: text/plain; charset=us-ascii\n"
    + "This line is not a header and there was no empty line.\n"
)

SAMPLES["folded_headers.eml"] = (
    "From: Clinic News <news@clinic.example>\n"
    "X-PHI-Category: marketing\n"
    "To: patient@example.net\n"
    "Subject: A subject that is long enough\n"
    " to be folded onto a second line\n"
    "x-phi-category: education,\n"
    "\tstill the same field\n"
    "List-Unsubscribe: <https://old.example/unsub>\n"
    "List-Unsubscribe-Post: List-Unsubscribe=One-Click\n"
    "MIME-Version: 1.0\n"
    "Content-Type: text/plain; charset=us-ascii\n\n"
    "Body line one.\n"
    "X-PHI-Category: this is body text, not a header\n"
)


def main() -> None:
    for name, content in SAMPLES.items():
        data = content.encode("ascii") if isinstance(content, str) else content
        data = data.replace(b"{name}", name.removesuffix(".eml").encode("ascii"))
        # SMTP carries CRLF; the relay sees nothing else (message.py refuses bare LF).
        data = data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
        (HERE / name).write_bytes(data)


if __name__ == "__main__":
    main()
