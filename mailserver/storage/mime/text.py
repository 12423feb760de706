"""Decoded text for SEARCH and SORT: RFC 2047 header words and text/* bodies."""

from __future__ import annotations

import binascii
import re
from typing import Iterator

from . import _headers as H
from ._charsets import guess, to_text
from .parser import Part
from .sections import UnknownEncoding, decode_base64, decode_body

# An encoded word (RFC 2047 2, with the RFC 2231 "*language" suffix).  Lenient like most
# readers: also inside words and with empty text.
_ENCODED_WORD = re.compile(rb"=\?([^?\s*]+)(?:\*[^?\s]*)?\?([QqBb])\?([^?\s]*)\?=")
_WSP_ONLY = re.compile(rb"[ \t\r\n]*\Z")


def _decode_word(enc: bytes, text: bytes) -> bytes:
    if enc in b"Bb":
        return decode_base64(text)
    return binascii.a2b_qp(text, header=True)


def decode_words(value: bytes) -> str:
    """Unfolded header text with RFC 2047 encoded words decoded; whitespace between adjacent
    encoded words dropped; adjacent words in the same charset decoded together (a character may
    be split across them); 8-bit bytes outside words read as UTF-8 or windows-1252."""
    if b"=?" not in value:
        return value.decode("ascii") if value.isascii() else guess(value)
    out: list[str] = []
    pending: list[bytes] = []  # decoded bytes of adjacent words in one charset
    pending_charset = None

    def flush():
        if pending:
            out.append(to_text(b"".join(pending), pending_charset))
            pending.clear()

    pos = 0
    for m in _ENCODED_WORD.finditer(value):
        between = value[pos:m.start()]
        if between and not (pending and _WSP_ONLY.match(between)):
            flush()
            out.append(between.decode("ascii") if between.isascii() else guess(between))
        charset = m.group(1).decode("ascii", "replace").lower()
        if charset != pending_charset:
            flush()
            pending_charset = charset
        pending.append(_decode_word(m.group(2), m.group(3)))
        pos = m.end()
    flush()
    rest = value[pos:]
    if rest:
        out.append(rest.decode("ascii") if rest.isascii() else guess(rest))
    return "".join(out)


def decoded_headers(header: bytes, name: str) -> list[str]:
    """Every value of field ``name`` (case-insensitive) in ``header``, unfolded, trimmed and
    RFC 2047 decoded (for SEARCH HEADER/FROM/SUBJECT..., SORT)."""
    lname = name.lower()
    return [decode_words(H.unfold(value).strip(b" \t"))
            for fname, value, _, _ in H.fields(header) if fname == lname]


def part_text(data: bytes, part: Part) -> str:
    """The decoded text of one part: transfer encoding removed (an unknown encoding leaves
    the bytes as they are), then the charset parameter applied."""
    try:
        body = decode_body(data, part)
    except UnknownEncoding:
        body = data[part.header_end:part.body_end]
    return to_text(body, part.charset)


def search_text(data: bytes, root: Part) -> Iterator[str]:
    """The decoded text of every text/* part of the message, encapsulated messages included,
    in order (HTML is left as HTML)."""
    for part in root.walk():
        if part.ctype == "text" and not part.children:
            yield part_text(data, part)


PREVIEW_CHARS = 256
_TAGS = re.compile(r"<(script|style)\b.*?</\1\s*>|<[^>]*>", re.S | re.I)


def preview(data: bytes, root: Part) -> str:
    """RFC 8970 PREVIEW text: the first text/plain part (else the first text/html part, tags
    removed), whitespace collapsed, at most 256 characters."""
    chosen = None
    for part in root.walk():
        if part.ctype == "text" and not part.children:
            if part.subtype == "plain":
                chosen = part
                break
            if part.subtype == "html" and chosen is None:
                chosen = part
    if chosen is None:
        return ""
    text = part_text(data, chosen)
    if chosen.subtype == "html":
        import html
        text = html.unescape(_TAGS.sub(" ", text))
    return " ".join(text.split())[:PREVIEW_CHARS]
