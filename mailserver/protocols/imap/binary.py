"""FETCH BINARY[part]<partial>, BINARY.PEEK and BINARY.SIZE (RFC 3516).

A BINARY section names a part by number only (``BINARY[]`` is the whole message); its content
is the part's body with the Content-Transfer-Encoding removed (``mime.decode_body``).  An
encoding the server does not know fails the FETCH with ``NO [UNKNOWN-CTE]``.  Content holding
NUL goes out as a literal8 (``~{n}``); anything else as an ordinary literal.
"""

from __future__ import annotations

import re

from mailserver.storage import mime

from .errors import bad, no

KINDS = ("BINARY", "BINARY.SIZE")
_ATT = re.compile(r"(BINARY|BINARY\.PEEK|BINARY\.SIZE)\[([^\]]*)\](?:<([0-9]+)\.([0-9]+)>)?\Z", re.I)
_PART = re.compile(r"[1-9][0-9]{0,8}(?:\.[1-9][0-9]{0,8})*\Z")
MAX_PART_DEPTH = 64


def parse(item: str) -> tuple:
    """``(kind, label, part, partial, peek)`` of a BINARY attribute, or raise BadSyntax-like
    CommandError (BAD).  ``kind`` is BINARY or BINARY.SIZE; ``part`` a tuple of numbers."""
    m = _ATT.match(item)
    if not m:
        raise bad(f"Invalid BINARY attribute {item[:40]}")
    name, spec = m.group(1).upper(), m.group(2)
    if spec and not _PART.match(spec):
        raise bad("BINARY sections are part numbers only")
    part = tuple(int(n) for n in spec.split(".")) if spec else ()
    if len(part) > MAX_PART_DEPTH:
        raise bad("Section part number too deep")
    kind = "BINARY.SIZE" if name == "BINARY.SIZE" else "BINARY"
    label = (b"BINARY.SIZE[" if kind == "BINARY.SIZE" else b"BINARY[") + spec.encode() + b"]"
    partial = None
    if m.group(3) is not None:
        if kind == "BINARY.SIZE":
            raise bad("BINARY.SIZE takes no partial range")
        offset, length = int(m.group(3)), int(m.group(4))
        if length == 0 or offset > 2 ** 32 or length > 2 ** 32:
            raise bad("Invalid partial range")
        partial = (offset, length)
        label += b"<%d>" % offset
    return kind, label, part, partial, name == "BINARY.PEEK"


def content(part: tuple, mail) -> bytes | None:
    """The decoded content of ``part`` (``()``: the whole message) or None if there is no such
    part.  Raises CommandError NO [UNKNOWN-CTE] for an unknown transfer encoding."""
    data = mail.data
    if not part:
        return mime.crlf(data)
    root = mail.parts if mail.parts is not None else mime.parse(data)
    node = mime.find_part(root, part)
    if node is None:
        return None
    try:
        return mime.decode_body(data, node)
    except mime.UnknownEncoding as e:
        raise no(f"Unknown Content-Transfer-Encoding {e.encoding[:40]!r} in part "
                 f"{'.'.join(map(str, part))}", "UNKNOWN-CTE") from None


def response(kind: str, label: bytes, part: tuple, partial, mail) -> bytes:
    """The ``BINARY[...] ~{n}...`` / ``BINARY.SIZE[...] n`` piece of a FETCH response."""
    data = content(part, mail)
    if kind == "BINARY.SIZE":
        return label + b" %d" % (len(data) if data is not None else 0)
    if data is None:
        return label + b" NIL"
    if partial is not None:
        offset, length = partial
        data = data[offset:offset + length]
    prefix = b"~{%d}\r\n" if b"\x00" in data else b"{%d}\r\n"
    return label + b" " + prefix % len(data) + data
