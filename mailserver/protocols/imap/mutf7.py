"""Modified UTF-7 (RFC 3501 section 5.1.3), the IMAP4rev1 encoding of mailbox names.

Printable US-ASCII except ``&`` stands for itself, ``&`` is ``&-``, and every other run of
characters is ``&`` + base64 of its UTF-16BE form (``,`` instead of ``/``, no padding) + ``-``.

``decode`` is strict: it accepts only the one canonical encoding of a name (what ``encode``
produces), so a name read from a client and written back in LIST is byte-for-byte the same,
and two spellings can never name one mailbox.
"""

from __future__ import annotations

import base64
import binascii


class InvalidMUTF7(ValueError):
    """The input is not valid modified UTF-7; the message says why (safe to show a client)."""


def _is_direct(ch: str) -> bool:
    return "\x20" <= ch <= "\x7e"


def encode(name: str) -> str:
    """The modified UTF-7 form of a Unicode mailbox name (pure ASCII)."""
    out: list[str] = []
    pending: list[str] = []

    def flush() -> None:
        if pending:
            raw = "".join(pending).encode("utf-16-be", "surrogatepass")
            out.append("&" + base64.b64encode(raw).decode("ascii").rstrip("=").replace("/", ",") + "-")
            pending.clear()

    for ch in name:
        if _is_direct(ch):
            flush()
            out.append("&-" if ch == "&" else ch)
        else:
            pending.append(ch)
    flush()
    return "".join(out)


def decode(data: bytes | str) -> str:
    """The Unicode mailbox name a modified UTF-7 string stands for.

    Raises InvalidMUTF7 for 8-bit or control characters, an unterminated or malformed ``&...-``
    sequence, invalid UTF-16, and any non-canonical spelling (an ASCII character encoded in
    base64, two adjacent encoded runs, non-zero padding bits).
    """
    if isinstance(data, bytes):
        try:
            text = data.decode("ascii")
        except UnicodeDecodeError:
            raise InvalidMUTF7("8-bit characters are not allowed in a modified UTF-7 name") from None
    else:
        text = data
    out: list[str] = []
    i, n = 0, len(text)
    while i < n:
        ch = text[i]
        if ch != "&":
            if not _is_direct(ch):
                raise InvalidMUTF7("control or non-ASCII character in a modified UTF-7 name")
            out.append(ch)
            i += 1
            continue
        end = text.find("-", i + 1)
        if end < 0:
            raise InvalidMUTF7("unterminated &...- sequence")
        if end == i + 1:
            out.append("&")
            i = end + 1
            continue
        chunk = text[i + 1:end]
        if not all(c.isascii() and (c.isalnum() or c in "+,") for c in chunk):
            raise InvalidMUTF7("invalid character inside &...- sequence")
        b64 = chunk.replace(",", "/")
        b64 += "=" * (-len(b64) % 4)
        try:
            raw = base64.b64decode(b64, validate=True)
        except (binascii.Error, ValueError):
            raise InvalidMUTF7("malformed base64 inside &...- sequence") from None
        if not raw or len(raw) % 2:
            raise InvalidMUTF7("&...- sequence is not whole UTF-16 characters")
        try:
            out.append(raw.decode("utf-16-be"))
        except UnicodeDecodeError:
            raise InvalidMUTF7("&...- sequence is not valid UTF-16") from None
        i = end + 1
    name = "".join(out)
    if encode(name) != text:
        raise InvalidMUTF7("not the canonical modified UTF-7 spelling of the name")
    return name
