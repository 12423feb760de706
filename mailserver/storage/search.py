"""Search programs: the storage-level form of IMAP SEARCH (and of anything else that filters mail).

The IMAP layer turns its parsed SEARCH keys into a tree of these nodes (sequence sets become
UID sets, NEW becomes And(Recent, Not(Seen)), ...); ``Mailbox.search`` evaluates it.  Keys that
need only metadata are answered from the index and cache; Body/Text read bodies.
"""

from __future__ import annotations

import bisect
import dataclasses
import datetime
import re

from mailserver.storage.collation import casemap


class Node:
    """Base class of search nodes."""

    __slots__ = ()


@dataclasses.dataclass(frozen=True)
class All(Node):
    """Every message."""


@dataclasses.dataclass(frozen=True)
class And(Node):
    items: tuple


@dataclasses.dataclass(frozen=True)
class Or(Node):
    left: Node
    right: Node


@dataclasses.dataclass(frozen=True)
class Not(Node):
    item: Node


@dataclasses.dataclass(frozen=True)
class Flag(Node):
    """A system flag (``\\Seen``...) or keyword is set."""

    flag: str


@dataclasses.dataclass(frozen=True)
class Recent(Node):
    """The message is \\Recent in this session."""


@dataclasses.dataclass(frozen=True)
class UidIn(Node):
    """UID within a set of inclusive ranges ((lo, hi), ...), ascending and disjoint."""

    ranges: tuple


@dataclasses.dataclass(frozen=True)
class Size(Node):
    """RFC822.SIZE larger (``larger`` True) or smaller than ``size``."""

    larger: bool
    size: int


@dataclasses.dataclass(frozen=True)
class Date(Node):
    """``field``: "internal" (INTERNALDATE), "sent" (Date: header) or "save" (SAVEDATE).
    ``op``: "before", "on" or "since"; compared by calendar day as RFC 3501 says."""

    field: str
    op: str
    day: datetime.date


@dataclasses.dataclass(frozen=True)
class Age(Node):
    """WITHIN (RFC 5032): internal date older (``older`` True) or younger than ``seconds``."""

    older: bool
    seconds: int


@dataclasses.dataclass(frozen=True)
class Header(Node):
    """Header field ``name`` contains ``value`` (decoded, case-insensitive); "" tests presence."""

    name: str
    value: str


@dataclasses.dataclass(frozen=True)
class Body(Node):
    """The decoded body text contains ``value`` (i;unicode-casemap, ``collation.casemap``)."""

    value: str


@dataclasses.dataclass(frozen=True)
class Text(Node):
    """The decoded header or body contains ``value`` (case-insensitive)."""

    value: str


@dataclasses.dataclass(frozen=True)
class ModSeq(Node):
    """CONDSTORE MODSEQ: the message's modseq is at least ``modseq``."""

    modseq: int


@dataclasses.dataclass(frozen=True)
class EmailId(Node):
    """OBJECTID EMAILID: the mail GUID equals ``value``."""

    value: str


# --- evaluation ---------------------------------------------------------------------------------

def _walk(node):
    yield node
    if isinstance(node, And):
        for item in node.items:
            yield from _walk(item)
    elif isinstance(node, Or):
        yield from _walk(node.left)
        yield from _walk(node.right)
    elif isinstance(node, Not):
        yield from _walk(node.item)


def needed_items(program: Node) -> set:
    """The FetchItems a program needs beyond index metadata (empty: index only)."""
    from mailserver.storage import mime
    from mailserver.storage.api import FetchItem
    items = set()
    for name in header_names(program):
        items.add(FetchItem.CACHED_HEADERS if name in mime.CACHED_HEADER_FIELDS else FetchItem.HEADER)
    for node in _walk(program):
        if isinstance(node, (Body, Text)):
            items.update((FetchItem.DATA, FetchItem.PARTS))
        if isinstance(node, Text):
            items.add(FetchItem.HEADER)
    return items


def header_names(program: Node) -> set:
    """Lowercased header fields a program looks at (the Date field for SENT* keys)."""
    names = set()
    for node in _walk(program):
        if isinstance(node, Header):
            names.add(node.name.lower())
        elif isinstance(node, Date) and node.field == "sent":
            names.add("date")
    return names


class _Context:
    """Per-message lazily computed values shared by the nodes of one program."""

    __slots__ = ("mail", "recent_from", "now", "_body", "_header")

    def __init__(self, mail, recent_from, now):
        self.mail = mail
        self.recent_from = recent_from
        self.now = now
        self._body = None
        self._header = None

    def header_bytes(self, name: str) -> bytes:
        m = self.mail
        if m.cached_header_names is not None and name.lower() in m.cached_header_names:
            return m.cached_headers or b""
        if m.header is not None:
            return m.header
        if m.data is not None:
            from mailserver.storage import mime
            root = m.parts or mime.parse(m.data)
            return m.data[:root.header_end]
        return m.cached_headers or b""

    def full_header(self) -> bytes:
        if self._header is None:
            self._header = self.header_bytes("\0not-cached")
        return self._header

    def body_text(self) -> str:
        if self._body is None:
            from mailserver.storage import mime
            m = self.mail
            if m.data is None:
                self._body = ""
            else:
                root = m.parts or mime.parse(m.data)
                self._body = casemap("\n".join(mime.search_text(m.data, root)))
        return self._body


_FIELD_PATTERNS: dict = {}


def _field_pattern(name: str):
    """A regex finding the values of one header field (name case-insensitive, at a line start)."""
    rx = _FIELD_PATTERNS.get(name)
    if rx is None:
        raw = name.encode("ascii", "replace")
        pat = b"".join(b"[%s%s]" % (bytes([c]).lower(), bytes([c]).upper()) if bytes([c]).isalpha()
                       else re.escape(bytes([c])) for c in raw)
        rx = re.compile(rb"(?:^|\n)" + pat + rb"[ \t]*:([^\n]*(?:\n[ \t][^\n]*)*)")
        if len(_FIELD_PATTERNS) < 512:
            _FIELD_PATTERNS[name] = rx
    return rx


def field_values(header: bytes, name: str) -> list:
    """Decoded values of field ``name`` in ``header`` (as ``mime.decoded_headers``, without
    splitting every other field of the header first)."""
    from mailserver.storage import mime
    from mailserver.storage.mime import _headers as H
    return [mime.decode_words(H.unfold(v).strip(b" \t")) for v in _field_pattern(name).findall(header)]


def _sent_date(ctx: _Context):
    from email.utils import parsedate_to_datetime
    values = field_values(ctx.header_bytes("date"), "date")
    if not values:
        return None
    try:
        return parsedate_to_datetime(values[0]).date()
    except (TypeError, ValueError, IndexError):
        return None


def _compare_day(op: str, day: datetime.date | None, wanted: datetime.date) -> bool:
    if day is None:
        return False
    return day < wanted if op == "before" else day == wanted if op == "on" else day >= wanted


def _day_of(ts: int) -> datetime.date:
    return datetime.datetime.fromtimestamp(ts).date()


_MAX_UID = 2 ** 63


def matches(node: Node, info, ctx: _Context) -> bool:
    """Does one message (``info``: MessageInfo) match ``node``?"""
    t = type(node)
    if t is All:
        return True
    if t is And:
        return all(matches(n, info, ctx) for n in node.items)
    if t is Or:
        return matches(node.left, info, ctx) or matches(node.right, info, ctx)
    if t is Not:
        return not matches(node.item, info, ctx)
    if t is Flag:
        return node.flag in info.flags
    if t is Recent:
        return info.uid >= ctx.recent_from
    if t is UidIn:
        ranges = node.ranges
        if len(ranges) > 8:   # sorted, disjoint (seqset.uid_ranges): one bisection, not a scan
            i = bisect.bisect_right(ranges, (info.uid, _MAX_UID)) - 1
            return i >= 0 and ranges[i][0] <= info.uid <= ranges[i][1]
        return any(lo <= info.uid <= hi for lo, hi in ranges)
    if t is Size:
        return info.vsize > node.size if node.larger else info.vsize < node.size
    if t is Date:
        if node.field == "internal":
            return _compare_day(node.op, _day_of(info.internaldate), node.day)
        if node.field == "save":
            return _compare_day(node.op, _day_of(info.savedate), node.day)
        return _compare_day(node.op, _sent_date(ctx), node.day)
    if t is Age:
        age = ctx.now - info.internaldate
        return age > node.seconds if node.older else age <= node.seconds
    if t is ModSeq:
        return info.modseq >= node.modseq
    if t is EmailId:
        return info.guid == node.value
    if t is Header:
        values = field_values(ctx.header_bytes(node.name), node.name)
        if not node.value:
            return bool(values)
        wanted = casemap(node.value)
        return any(wanted in casemap(v) for v in values)
    if t is Body:
        return casemap(node.value) in ctx.body_text()
    if t is Text:
        from mailserver.storage import mime
        wanted = casemap(node.value)
        header = ctx.full_header()
        if wanted in casemap(header.decode("utf-8", "replace")):
            return True
        names = {line.split(b":", 1)[0].strip().decode("ascii", "replace")
                 for line in header.split(b"\n") if b":" in line and line[:1] not in (b" ", b"\t")}
        if any(wanted in casemap(v) for n in names for v in mime.decoded_headers(header, n)):
            return True
        return wanted in ctx.body_text()
    raise TypeError(f"unknown search node {node!r}")


async def evaluate(mailbox, program: Node, uids, recent_from: int, now: int) -> list:
    """UIDs among ``uids`` (ascending) that match.  Index-only programs read nothing else;
    others go through ``mailbox.fetch``, which prefetches bodies when they are needed."""
    from mailserver.storage.api import FetchItem
    items = needed_items(program)
    out = []
    if not items:
        for uid in uids:
            info = mailbox.info(uid)
            if info is not None and matches(program, info, _Context(None, recent_from, now)):
                out.append(uid)
        return out
    names = header_names(program)
    async for mail in mailbox.fetch(list(uids), items):
        if (mail.header is None and mail.cached_header_names is not None
                and not names <= mail.cached_header_names):
            # A field too long to be cached for this message: read its header after all.
            async for full in mailbox.fetch([mail.info.uid], items | {FetchItem.HEADER}):
                mail = full
        if matches(program, mail.info, _Context(mail, recent_from, now)):
            out.append(mail.info.uid)
    return out
