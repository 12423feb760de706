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
        # ^ in MULTILINE mode (a line start) is checked faster than an alternation with "\n".
        rx = re.compile(rb"^" + re.escape(raw) + rb"[ \t]*:([^\n]*(?:\n[ \t][^\n]*)*)",
                        re.MULTILINE | re.IGNORECASE)
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


def header_text(values: list) -> str | None:
    """The values of a header field as ``Mailbox.search_header_texts`` gives them: casemapped,
    joined by TEXT_SEPARATOR; None for no value."""
    return TEXT_SEPARATOR.join(casemap(v) for v in values) if values else None


TEXT_SEPARATOR = "\0"


# --- column-wise evaluation ---------------------------------------------------------------------
# Keys on index metadata and on header fields are evaluated for all messages at once, as sets of
# positions in the columns of ``Mailbox.columns`` (and ``Mailbox.search_header_texts``); only the
# rest of a program (Body, Text, SENT* dates) looks at messages one by one, and only at the
# messages the column-wise keys left.

_COLUMN_OF = {Flag: "flags", Size: "vsize", Age: "internaldate", ModSeq: "modseq", EmailId: "guid"}


def _columnar(node: Node) -> bool:
    t = type(node)
    if t is And:
        return all(_columnar(i) for i in node.items)
    if t is Or:
        return _columnar(node.left) and _columnar(node.right)
    if t is Not:
        return _columnar(node.item)
    if t is Date:
        return node.field != "sent"
    if t is Header:
        return TEXT_SEPARATOR not in casemap(node.value)
    return t in (All, Recent, UidIn) or t in _COLUMN_OF


def _column_needs(node: Node, names: set, headers: set) -> None:
    for n in _walk(node):
        t = type(n)
        if t in _COLUMN_OF:
            names.add(_COLUMN_OF[t])
        elif t is Date:
            names.add("internaldate" if n.field == "internal" else "savedate")
        elif t is Header:
            headers.add(n.name.lower())


def _day_start(day: datetime.date) -> int:
    """The first second (UNIX time) whose local date (as ``_day_of``) is ``day`` or later."""
    lo = int(datetime.datetime.combine(day, datetime.time()).timestamp()) - 2 * 86400
    hi = lo + 4 * 86400
    while lo < hi:                      # exact even where a zone skips or repeats midnight
        mid = (lo + hi) // 2
        if _day_of(mid) >= day:
            hi = mid
        else:
            lo = mid + 1
    return lo


class _Columns:
    __slots__ = ("cols", "texts", "uids", "n", "recent_from", "now")

    def __init__(self, cols, texts, recent_from, now):
        self.cols = cols
        self.texts = texts
        self.uids = cols["uid"]
        self.n = len(self.uids)
        self.recent_from = recent_from
        self.now = now


def _match_columns(node: Node, c: _Columns) -> set:
    """Positions (in ``c.uids``, ascending UIDs) of the messages matching a columnar ``node``."""
    t = type(node)
    if t is All:
        return set(range(c.n))
    if t is And:
        result = None
        for item in node.items:
            got = _match_columns(item, c)
            result = got if result is None else result & got
            if not result:
                return set()
        return result if result is not None else set(range(c.n))
    if t is Or:
        return _match_columns(node.left, c) | _match_columns(node.right, c)
    if t is Not:
        return set(range(c.n)) - _match_columns(node.item, c)
    if t is Flag:
        flag = node.flag
        has = {}
        out = set()
        for k, fs in enumerate(c.cols["flags"]):
            hit = has.get(fs)
            if hit is None:
                hit = has[fs] = flag in fs
            if hit:
                out.add(k)
        return out
    if t is Recent:
        return set(range(bisect.bisect_left(c.uids, c.recent_from), c.n))
    if t is UidIn:
        out = set()
        for lo, hi in node.ranges:
            out.update(range(bisect.bisect_left(c.uids, lo), bisect.bisect_right(c.uids, hi)))
        return out
    if t is Size:
        size = node.size
        col = c.cols["vsize"]
        return {k for k, v in enumerate(col) if v > size} if node.larger else {k for k, v in enumerate(col) if v < size}
    if t is Date:
        col = c.cols["internaldate" if node.field == "internal" else "savedate"]
        start = _day_start(node.day)
        if node.op == "before":
            return {k for k, ts in enumerate(col) if ts < start}
        if node.op == "since":
            return {k for k, ts in enumerate(col) if ts >= start}
        end = _day_start(node.day + datetime.timedelta(days=1))
        return {k for k, ts in enumerate(col) if start <= ts < end}
    if t is Age:
        limit = c.now - node.seconds       # age > seconds  <=>  internaldate < now - seconds
        col = c.cols["internaldate"]
        return {k for k, ts in enumerate(col) if ts < limit} if node.older else {
            k for k, ts in enumerate(col) if ts >= limit}
    if t is ModSeq:
        least = node.modseq
        return {k for k, m in enumerate(c.cols["modseq"]) if m >= least}
    if t is EmailId:
        value = node.value
        return {k for k, g in enumerate(c.cols["guid"]) if g == value}
    if t is Header:
        texts = c.texts[node.name.lower()]
        if not node.value:
            return {k for k, text in enumerate(texts) if text is not None}
        wanted = casemap(node.value)
        return {k for k, text in enumerate(texts) if text is not None and wanted in text}
    raise TypeError(f"not a columnar search node {node!r}")


async def evaluate(mailbox, program: Node, uids, recent_from: int, now: int) -> list:
    """UIDs among ``uids`` (ascending) that match.  Keys on index metadata and header fields
    are evaluated column-wise (``Mailbox.columns``, ``Mailbox.search_header_texts``); the rest
    of the program goes through ``mailbox.fetch`` for the messages those keys left, which
    prefetches bodies when they are needed."""
    parts = list(program.items) if type(program) is And else [program]
    by_columns = [p for p in parts if _columnar(p)]
    rest = [p for p in parts if not _columnar(p)]
    if by_columns:
        names: set = set()
        headers: set = set()
        for p in by_columns:
            _column_needs(p, names, headers)
        cols = await mailbox.columns(list(uids), names)
        texts = {}
        for name in sorted(headers):
            texts[name] = await mailbox.search_header_texts(cols["uid"], name)
        c = _Columns(cols, texts, recent_from, now)
        found = _match_columns(by_columns[0] if len(by_columns) == 1 else And(tuple(by_columns)), c)
        uids = [c.uids[k] for k in sorted(found)]
        if not rest or not uids:
            return uids
    return await _evaluate_each(mailbox, rest[0] if len(rest) == 1 else And(tuple(rest)), uids,
                                recent_from, now)


async def _evaluate_each(mailbox, program: Node, uids, recent_from: int, now: int) -> list:
    """``evaluate`` one message at a time."""
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
