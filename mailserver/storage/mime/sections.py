"""BODY[section] and BINARY[section] contents (RFC 3501 6.4.5, RFC 3516), and sizes.

What goes to the wire has CRLF line ends: bare LFs in the stored bytes become CRLF, so the
lengths agree with RFC822.SIZE (``vsize``) and with the sizes in BODYSTRUCTURE.
"""

from __future__ import annotations

import binascii
import dataclasses
import re

from . import _headers as H
from .parser import Part, count_lf, find_part


@dataclasses.dataclass(frozen=True)
class Section:
    """An IMAP BODY[...] / BINARY[...] section, built by the IMAP parser.

    ``part``: (1, 2) for "1.2"; () for the whole message.  ``text``: "", "HEADER",
    "HEADER.FIELDS", "HEADER.FIELDS.NOT", "TEXT" or "MIME" (uppercase).  ``fields``: the field
    names of HEADER.FIELDS[.NOT]."""

    part: tuple[int, ...] = ()
    text: str = ""
    fields: tuple[str, ...] = ()


class UnknownEncoding(ValueError):
    """The part's Content-Transfer-Encoding is not one we can decode (IMAP: [UNKNOWN-CTE])."""

    def __init__(self, encoding: str):
        super().__init__(encoding)
        self.encoding = encoding


_BARE_LF = re.compile(rb"(?<!\r)\n")


def crlf(data: bytes) -> bytes:
    """``data`` with every bare LF turned into CRLF."""
    if count_lf(data) == data.count(b"\r\n"):
        return data
    return _BARE_LF.sub(b"\r\n", data)


def vsize(data: bytes) -> int:
    """Size of ``data`` with every line end counted as CRLF (RFC822.SIZE)."""
    return len(data) + count_lf(data) - data.count(b"\r\n")


def _without_blank_line(header: bytes) -> bytes:
    """``header`` without the blank line that ends it (if it has one)."""
    if header in (b"\r\n", b"\n"):
        return b""
    if header.endswith(b"\n\r\n"):
        return header[:-2]
    if header.endswith(b"\n\n"):
        return header[:-1]
    return header


def header_fields(header: bytes, names, exclude: bool = False) -> bytes:
    """HEADER.FIELDS (or .NOT with ``exclude``): the fields of ``header`` whose names are (not)
    in ``names`` (case-insensitive), with their continuation lines, in order, followed by the
    blank line.  Lines that are not fields count as not matching (.NOT keeps them, as Dovecot
    does).  CRLF line ends."""
    wanted = {(n.decode("ascii", "replace") if isinstance(n, bytes) else n).lower() for n in names}
    header = _without_blank_line(header)
    out = []
    if exclude:
        pos = 0
        for name, _, start, end in H.fields(header):
            if name in wanted:
                out.append(header[pos:start])
                pos = end
        out.append(header[pos:])
    else:
        for name, _, start, end in H.fields(header):
            if name in wanted:
                out.append(header[start:end])
    text = b"".join(out)
    if text and not text.endswith(b"\n"):
        text += b"\r\n"
    return crlf(text + b"\r\n")


def _message_section(data: bytes, msg: Part, section: Section) -> bytes | None:
    """HEADER, HEADER.FIELDS[.NOT] or TEXT of the message whose root entity is ``msg``."""
    text = section.text
    if text == "HEADER":
        return crlf(data[msg.header_start:msg.header_end])
    if text == "TEXT":
        return crlf(data[msg.header_end:msg.body_end])
    if text == "HEADER.FIELDS":
        return header_fields(data[msg.header_start:msg.header_end], section.fields)
    if text == "HEADER.FIELDS.NOT":
        return header_fields(data[msg.header_start:msg.header_end], section.fields, exclude=True)
    return None


def get_section(data: bytes, root: Part, section: Section) -> bytes | None:
    """The bytes of BODY[section] (before any <partial>): CRLF line ends, and NUL bytes (not
    allowed in an IMAP literal) sent as 0x80 like Dovecot does.

    None when the part does not exist or the section text is not valid there (MIME of the
    whole message).  HEADER/TEXT of a part that is not message/rfc822 (or message/global) give
    b"", as Dovecot does."""
    out = _section(data, root, section)
    if out is not None and b"\x00" in out:
        out = out.replace(b"\x00", b"\x80")
    return out


def _section(data: bytes, root: Part, section: Section) -> bytes | None:
    if not section.part:
        if section.text == "":
            return crlf(data)
        return _message_section(data, root, section)
    node = find_part(root, section.part)
    if node is None:
        return None
    text = section.text
    if text == "":
        return crlf(data[node.header_end:node.body_end])
    if text == "MIME":
        return crlf(data[node.header_start:node.header_end])
    if node.message is None:
        if text in ("HEADER", "TEXT", "HEADER.FIELDS", "HEADER.FIELDS.NOT"):
            return b""
        return None
    return _message_section(data, node.message, section)


_B64_JUNK = bytes(c for c in range(256)
                  if not (48 <= c <= 57 or 65 <= c <= 90 or 97 <= c <= 122 or c in b"+/="))


def decode_base64(body: bytes) -> bytes:
    """Lenient base64: junk characters ignored, missing padding tolerated, and concatenated
    padded chunks decoded one after the other."""
    clean = body.translate(None, _B64_JUNK)
    chunks = [clean]
    stripped = clean.rstrip(b"=")
    if b"=" in stripped:
        chunks = [c for c in re.findall(rb"[^=]*=*", clean) if c]
    out = []
    for chunk in chunks:
        chunk = chunk.rstrip(b"=")
        extra = len(chunk) % 4
        if extra == 1:
            chunk = chunk[:-1]  # a lone sextet carries no whole byte
        elif extra:
            chunk += b"=" * (4 - extra)
        try:
            out.append(binascii.a2b_base64(chunk))
        except binascii.Error:
            pass
    return b"".join(out)


_QP_TRAILING_WS = re.compile(rb"[ \t]+(?=\r?\n|\Z)")


def decode_qp(body: bytes) -> bytes:
    """Quoted-printable: soft line breaks joined, trailing whitespace (added in transport)
    removed, hard line breaks as CRLF."""
    if b" \n" in body or b"\t\n" in body or b" \r" in body or b"\t\r" in body or body[-1:] in b" \t":
        body = _QP_TRAILING_WS.sub(b"", body)
    return crlf(binascii.a2b_qp(body))


def decode_body(data: bytes, part: Part) -> bytes:
    """The body of ``part`` without its Content-Transfer-Encoding (BINARY[]): base64 and
    quoted-printable decoded, 7bit/8bit with CRLF line ends, binary as stored.
    Raises UnknownEncoding for any other encoding."""
    body = data[part.header_end:part.body_end]
    enc = part.encoding
    if enc in ("7bit", "8bit"):
        return crlf(body)
    if enc == "base64":
        return decode_base64(body)
    if enc == "quoted-printable":
        return decode_qp(body)
    if enc == "binary":
        return body
    raise UnknownEncoding(enc)
