"""What the index cache keeps of a message, computed once when it is saved."""

from __future__ import annotations

import dataclasses

from . import _headers as H
from .imap import body_and_bodystructure, envelope_from_fields
from .parser import Part, _Parser
from .sections import crlf
from .text import preview

# Fields clients fetch with HEADER.FIELDS when listing a mailbox (Thunderbird, Apple Mail,
# K-9, Roundcube, Outlook...), and that SEARCH/SORT look at.  Kept raw in the cache so those
# fetches need no body read.
CACHED_HEADER_FIELDS = frozenset((
    "from", "to", "cc", "bcc", "subject", "date", "message-id", "in-reply-to", "references",
    "reply-to", "sender", "content-type", "priority", "x-priority", "importance",
    "list-id", "list-unsubscribe", "list-post", "newsgroups", "disposition-notification-to",
    "return-receipt-to", "mime-version", "x-mailer", "user-agent", "chat-version",
    "x-uniform-type-identifier", "x-universally-unique-identifier",
    "bimi-indicator", "bimi-location", "x-bimi-indicator-hash", "x-k9mail-identity",
    "x-spam-flag", "x-original-to", "delivered-to", "return-path",
))
# A field larger than this, or past this total, is left out (its name then is not covered).
MAX_CACHED_FIELD = 2048
MAX_CACHED_TOTAL = 8192


@dataclasses.dataclass
class Analysis:
    """Everything computed once at save time for the index cache.

    ``envelope``/``bodystructure``/``body``: IMAP syntax strings.  ``parts``: the part tree.
    ``header_size``: bytes of the header including its blank line (as stored).  ``vsize``:
    size with CRLF line ends.  ``cached_headers``: the raw fields (CRLF line ends) of every
    name in ``cached_header_names``: for those names, ``header_fields(cached_headers, names)``
    equals ``header_fields`` on the full header."""

    envelope: str
    bodystructure: str
    body: str
    parts: Part
    header_size: int
    vsize: int
    cached_headers: bytes
    cached_header_names: frozenset
    preview: str = ""              # RFC 8970 PREVIEW text


def cache_fields(header: bytes, fields) -> tuple[bytes, frozenset]:
    """(cached_headers, cached_header_names) from a header and its ``_headers.fields``."""
    picked: dict[str, list[bytes]] = {}
    for name, _, start, end in fields:
        if name in CACHED_HEADER_FIELDS:
            picked.setdefault(name, []).append(header[start:end])
    dropped = set()
    total = 0
    for name, raws in picked.items():
        size = sum(len(r) for r in raws)
        if size > MAX_CACHED_FIELD or total + size > MAX_CACHED_TOTAL:
            dropped.add(name)
        else:
            total += size
    out = []
    for name, _, start, end in fields:
        if name in picked and name not in dropped:
            raw = header[start:end]
            out.append(raw if raw.endswith(b"\n") else raw + b"\r\n")
    return crlf(b"".join(out)), CACHED_HEADER_FIELDS - dropped


def analyze(data: bytes) -> Analysis:
    """Parse a message once: part tree, ENVELOPE, BODY, BODYSTRUCTURE, sizes, cached headers."""
    data = bytes(data)
    parser = _Parser(data)
    root = parser.entity(0, "", False, 0, ())[0]
    header = data[root.header_start:root.header_end]
    fields = H.fields(header)
    body, structure = body_and_bodystructure(root, data)
    cached, names = cache_fields(header, fields)
    return Analysis(envelope=envelope_from_fields(fields), bodystructure=structure, body=body,
                    parts=root, header_size=len(header), vsize=parser.vsize,
                    cached_headers=cached, cached_header_names=names, preview=preview(data, root))
