"""The MIME splitter: one pass over the bytes of a message, giving the tree of entities with
their byte offsets (stdlib ``email`` keeps none).

Boundaries are matched as Dovecot and RFC 2046 want: a line that starts with ``--`` and an
active boundary (the longest one when several match, the innermost when equal), ``--`` after
the boundary makes it a close delimiter, anything else on the line is ignored.  The line break
before a delimiter line belongs to the delimiter.  An outer boundary implicitly closes inner
multiparts; a multipart without its close delimiter runs to its parent's next boundary or to
the end of the data.  Nothing raises: any input gives a tree.
"""

from __future__ import annotations

import array
import bisect

from . import _headers as H

MAX_DEPTH = 100      # nesting deeper than this is an opaque application/octet-stream part
MAX_PARTS = 10000    # past this many parts, the rest of a multipart is its epilogue
# Past this many boundary comparisons (only crafted input gets near), no more boundaries are
# recognised: the parts still open run to the end of the data.
MAX_BOUNDARY_CHECKS = 200_000
# Up to this nesting depth each boundary is searched for directly (in C); deeper, the lines
# starting with "--" are listed once and checked against every open boundary.
SHALLOW = 3

_MESSAGE_SUBTYPES = ("rfc822", "global")


class Part:
    """One MIME entity.  Offsets are into the message bytes; sizes count line ends as CRLF.

    ``number``: IMAP part number ("" for the message itself; the root entity of an encapsulated
    message carries the number of its message/rfc822 part, its parts are numbered below it).
    ``ctype``/``subtype``/``encoding``: lowercased, defaults applied (text/plain, or
    message/rfc822 inside multipart/digest; 7bit).  ``params``: Content-Type parameters, names as
    sent, RFC 2231 joined and decoded (use ``param()`` for a case-insensitive lookup).
    ``disposition``: (type lowercased, params) or None.  ``lines``: LF count of the body;
    ``octets``: body size with every line end counted as CRLF.  ``children``: parts of a
    multipart.  ``message``: root entity of an encapsulated message/rfc822 or message/global.
    ``raw``: None, or the as-sent spellings BODYSTRUCTURE shows where they differ from the
    normalised fields (keys "type", "subtype", "encoding", "params", "dtype", "dparams").
    """

    __slots__ = ("number", "header_start", "header_end", "body_end", "ctype", "subtype", "params",
                 "id", "description", "encoding", "md5", "disposition", "language", "location",
                 "lines", "octets", "children", "message", "raw")

    def __init__(self, number: str = "", header_start: int = 0):
        self.number = number
        self.header_start = header_start
        self.header_end = header_start
        self.body_end = header_start
        self.ctype = "text"
        self.subtype = "plain"
        self.params: list[tuple[str, str]] = []
        self.id: str | None = None
        self.description: str | None = None
        self.encoding = "7bit"
        self.md5: str | None = None
        self.disposition: tuple[str, list[tuple[str, str]]] | None = None
        self.language: list[str] | None = None
        self.location: str | None = None
        self.lines = 0
        self.octets = 0
        self.children: list[Part] = []
        self.message: Part | None = None
        self.raw: dict | None = None

    @property
    def body_start(self) -> int:
        return self.header_end

    @property
    def is_multipart(self) -> bool:
        return self.ctype == "multipart"

    @property
    def is_message(self) -> bool:
        """True for message/rfc822 and message/global parts (with an encapsulated message)."""
        return self.message is not None

    def param(self, name: str, default: str | None = None) -> str | None:
        """Content-Type parameter by case-insensitive name (the RFC 2231 form wins)."""
        name = name.lower()
        found = default
        for k, v in self.params:
            if k.lower() == name:
                found = v
        return found

    @property
    def charset(self) -> str | None:
        """The charset parameter, or None."""
        return self.param("charset")

    def walk(self):
        """This part and every part below it (children and encapsulated messages), depth first."""
        yield self
        if self.message is not None:
            yield from self.message.walk()
        for child in self.children:
            yield from child.walk()

    def __repr__(self):
        return (f"Part({self.number!r}, {self.ctype}/{self.subtype}, header={self.header_start}:"
                f"{self.header_end}, body_end={self.body_end}, children={len(self.children)}, "
                f"message={self.message is not None})")

    # -- index cache form ---------------------------------------------------------------
    _FIELDS = ("number", "header_start", "header_end", "body_end", "ctype", "subtype", "params",
               "id", "description", "encoding", "md5", "disposition", "language", "location",
               "lines", "octets", "children", "message", "raw")
    _DEFAULTS = ("", 0, 0, 0, "text", "plain", [], None, None, "7bit", None, None, None, None,
                 0, 0, [], None, None)

    def to_json(self) -> list:
        """A compact JSON-serialisable form: the fields in ``__slots__`` order, params flattened,
        children and message nested, trailing defaults left out."""
        out = [self.number, self.header_start, self.header_end, self.body_end, self.ctype,
               self.subtype, [x for kv in self.params for x in kv], self.id, self.description,
               self.encoding, self.md5,
               None if self.disposition is None else
               [self.disposition[0], [x for kv in self.disposition[1] for x in kv]],
               self.language, self.location, self.lines, self.octets,
               [c.to_json() for c in self.children],
               None if self.message is None else self.message.to_json(), self.raw]
        defaults = self._DEFAULTS
        while out and out[-1] == defaults[len(out) - 1]:
            out.pop()
        return out

    @classmethod
    def from_json(cls, obj) -> "Part":
        """Rebuild a tree from ``to_json`` output."""
        vals = list(obj) + list(cls._DEFAULTS[len(obj):])
        p = cls.__new__(cls)
        (p.number, p.header_start, p.header_end, p.body_end, p.ctype, p.subtype, params,
         p.id, p.description, p.encoding, p.md5, disp, lang, p.location, p.lines, p.octets,
         children, message, raw) = vals
        p.params = list(zip(params[::2], params[1::2]))
        p.disposition = None if disp is None else (disp[0], list(zip(disp[1][::2], disp[1][1::2])))
        p.language = None if lang is None else list(lang)
        p.children = [cls.from_json(c) for c in children]
        p.message = None if message is None else cls.from_json(message)
        p.raw = None if raw is None else {k: ([tuple(x) for x in v] if isinstance(v, list) else v)
                                          for k, v in raw.items()}
        return p


def count_lf(data: bytes, start: int = 0, end: int | None = None) -> int:
    """Number of LF bytes in ``data[start:end]``.  (bytes.count of one byte is a plain loop in
    CPython; deleting with replace uses memchr and is about four times faster.)"""
    if start or end is not None:
        data = data[start:end]
    return len(data) - len(data.replace(b"\n", b""))


class _Parser:
    """One parse of one message.  Entities are parsed top-down; each part's extent comes from
    the first delimiter line of an enclosing multipart after it.  Lines starting with "--"
    are found once (``cands``) and every search walks that list, so deep or unterminated
    nesting does not rescan the bytes."""

    __slots__ = ("data", "n", "crlf_only", "vsize", "count", "checks", "_memo", "close_end",
                 "cands", "scanned", "_found")

    def __init__(self, data: bytes):
        self.data = data
        self.n = len(data)
        bare = count_lf(data) - data.count(b"\r\n")
        self.crlf_only = bare == 0
        self.vsize = self.n + bare
        self.count = 0    # parts made
        self.checks = 0   # boundary comparisons made (bounded by MAX_BOUNDARY_CHECKS)
        self._memo = None
        self.close_end = -1  # just after the last close-delimiter line seen
        # Offsets of the lines starting with "--", ascending; complete from cands[0] (or the
        # offset the list was started at) up to ``scanned``.  Used under deep nesting.
        self.cands = array.array("Q")
        self.scanned = -1
        # Shallow nesting: boundary -> (searched from, offset of its next line or -1).
        self._found: dict[bytes, tuple[int, int]] = {}

    # A found boundary line is (offset of its "--", index of its boundary in the stack, is close).

    def more_candidates(self) -> bool:
        """Append the next line starting with "--" to ``cands``; False at the end of the data."""
        if self.scanned >= self.n:
            return False
        j = self.data.find(b"\n--", self.scanned - 1 if self.scanned else 0)
        if j < 0:
            self.scanned = self.n
            return False
        self.cands.append(j + 1)
        self.scanned = j + 2
        return True

    def first_candidate(self, pos: int) -> int:
        """Index in ``cands`` of the first line starting with "--" at or after ``pos``."""
        start = self.cands[0] if self.cands else self.scanned
        if pos < start or pos > self.scanned:
            # (re)start the list at ``pos``: parsing moves forward, so this is rare
            del self.cands[:]
            self.scanned = pos
            if pos == 0 and self.data.startswith(b"--"):
                self.cands.append(0)
                self.scanned = 1
        while self.scanned <= pos and self.more_candidates():
            pass
        return bisect.bisect_left(self.cands, pos)

    def candidate(self, i: int) -> int:
        """The ``i``-th line starting with "--" (found on demand), or -1 past the last one."""
        cands = self.cands
        while i >= len(cands):
            if not self.more_candidates():
                return -1
        return cands[i]

    def match(self, bol: int, stack: tuple) -> tuple | None:
        """The boundary line at ``bol`` (a line starting with "--") for ``stack``, or None."""
        top = len(stack) - 1
        self.checks += top + 1
        if self.checks > MAX_BOUNDARY_CHECKS:
            return None  # pathological input: stop recognising boundaries
        startswith = self.data.startswith
        best = -1
        blen = 0
        for level in range(top, -1, -1):
            b = stack[level]
            if len(b) > blen and startswith(b, bol + 2):
                best, blen = level, len(b)
        if best < 0:
            return None
        return bol, best, startswith(b"--", bol + 2 + blen)

    def next_boundary(self, pos: int, stack: tuple) -> tuple | None:
        """The first line at or after ``pos`` (a line start) that is a delimiter of one of the
        boundaries in ``stack``; None if there is none."""
        if not stack:
            return None
        memo = self._memo
        if memo is not None and memo[0] == pos and memo[1] is stack:
            return memo[2]
        if len(stack) <= SHALLOW:
            result = self._next_boundary_direct(pos, stack)
            self._memo = (pos, stack, result)
            return result
        if self.checks > MAX_BOUNDARY_CHECKS:
            return None
        i = self.first_candidate(pos)
        result = None
        while True:
            bol = self.candidate(i)
            if bol < 0:
                break
            i += 1
            result = self.match(bol, stack)
            if result is not None or self.checks > MAX_BOUNDARY_CHECKS:
                break
        self._memo = (pos, stack, result)
        return result

    def _next_boundary_direct(self, pos: int, stack: tuple) -> tuple | None:
        """``next_boundary`` by searching each boundary's line in C (few boundaries)."""
        data = self.data
        found = self._found
        first = -1
        for b in stack:
            known = found.get(b)
            if known is not None and known[0] <= pos and (known[1] < 0 or known[1] >= pos):
                bol = known[1]
            else:
                if pos == 0 and data.startswith(b"--" + b):
                    bol = 0
                else:
                    j = data.find(b"\n--" + b, pos - 1 if pos else 0)
                    bol = j + 1 if j >= 0 else -1
                found[b] = (pos, bol)
            if bol >= 0 and (first < 0 or bol < first):
                first = bol
        if first < 0:
            return None
        return self.match(first, stack)

    def header_end(self, hs: int, limit: int) -> int:
        """Offset just after the blank line ending the header at ``hs``, searched before
        ``limit``; -1 if there is none."""
        data = self.data
        if data.startswith(b"\n", hs):
            return hs + 1
        if data.startswith(b"\r\n", hs):
            return hs + 2
        p = data.find(b"\n\r\n", hs, limit)
        q = data.find(b"\n\n", hs, p + 2 if p >= 0 else limit)
        if q >= 0:
            return q + 2
        if p >= 0:
            return p + 3
        return -1

    def scan_header(self, hs: int, stack: tuple) -> tuple[int, tuple | None]:
        """(end of the header at ``hs``, None), or (offset of a delimiter line met before any
        blank line, that boundary).  -1 as end: no blank line before the end of the data.
        Only the lines of the header itself are looked at."""
        if not stack:
            return self.header_end(hs, self.n), None
        if len(stack) <= SHALLOW:
            stop = self.next_boundary(hs, stack)
            he = self.header_end(hs, stop[0] if stop is not None else self.n)
            if he < 0 and stop is not None:
                return stop[0], stop
            if he >= 0:
                self._memo = (he, stack, stop)  # nothing between the header and ``stop``
            return he, None
        i = self.first_candidate(hs)
        pos = hs
        while True:
            bol = self.candidate(i) if self.checks <= MAX_BOUNDARY_CHECKS else -1
            if bol < 0:
                he = self.header_end(pos, self.n) if pos == hs else self._blank_in(pos, self.n)
                return he, None
            he = self.header_end(pos, bol) if pos == hs else self._blank_in(pos, bol)
            if he >= 0:
                return he, None
            found = self.match(bol, stack)
            if found is not None:
                return bol, found
            pos = bol
            i += 1

    def _blank_in(self, start: int, limit: int) -> int:
        """Like ``header_end`` for a stretch of a header that does not start the header."""
        data = self.data
        p = data.find(b"\n\r\n", start, limit)
        q = data.find(b"\n\n", start, p + 2 if p >= 0 else limit)
        if q >= 0:
            return q + 2
        if p >= 0:
            return p + 3
        return -1

    def end_before(self, bol: int, floor: int) -> int:
        """Where a body ends when the delimiter line at ``bol`` follows: before its line break,
        unless that line break ends a close-delimiter line (an empty epilogue), which keeps it
        (Dovecot does the same)."""
        if bol == self.close_end:
            return bol if bol > floor else floor
        e = bol - 1
        if e > floor and self.data[e - 1] == 13:  # "\r"
            e -= 1
        return e if e > floor else floor

    def line_after(self, bol: int) -> int:
        """Offset of the line after the one starting at ``bol``."""
        j = self.data.find(b"\n", bol)
        return j + 1 if j >= 0 else self.n

    def entity(self, hs: int, number: str, in_digest: bool, depth: int, stack: tuple):
        """Parse the entity whose header starts at ``hs``; returns (part, boundary that ended it
        or None at the end of the data, LF count of its body, CRLF count of its body)."""
        self.count += 1
        part = Part(number, hs)
        he, cut = self.scan_header(hs, stack)
        at_body = None  # a delimiter line right after the header's blank line
        if cut is not None:
            # the header runs into a delimiter line; the line break before it is the delimiter's
            he = self.end_before(cut[0], hs)
        elif he < 0:
            he = self.n
        elif stack and self.data.startswith(b"--", he):
            at_body = self.match(he, stack)
        part.header_end = he
        if in_digest:
            part.ctype, part.subtype = "message", "rfc822"
        if he > hs:
            self.content_headers(part, hs, he)
        ctype = part.ctype
        is_message = ctype == "message" and part.subtype in _MESSAGE_SUBTYPES
        if at_body is not None:
            # The blank line's line break belongs to that delimiter too (as Dovecot reads it)...
            own = (part.param("boundary") or "").encode("utf-8") if ctype == "multipart" else b""
            if not (own and len(own) >= len(stack[at_body[1]]) and self.data.startswith(own, he + 2)):
                # ... unless it is this multipart's own first delimiter (innermost wins a tie)
                he = part.header_end = self.end_before(he, hs)
        stop = cut
        inner_counts = None  # (LF, CRLF) counts of what is inside the body
        child_counts = None
        if (ctype == "multipart" or is_message) and cut is None:
            if depth >= MAX_DEPTH or self.count >= MAX_PARTS:
                _make_opaque(part)
                stop = at_body if at_body is not None else self.next_boundary(he, stack)
            elif ctype == "multipart":
                boundary = part.param("boundary")
                if boundary:
                    # RFC 2046 boundaries are ASCII; 8-bit ones were UTF-8 if anything
                    stop, child_counts = self.multipart(part, boundary.encode("utf-8"), depth, stack)
                else:
                    stop = at_body if at_body is not None else self.next_boundary(he, stack)
            else:
                inner, stop, lf, crlf = self.entity(he, number, False, depth + 1, stack)
                part.message = inner
                inner_counts = (lf, crlf, inner.header_end, inner.body_end)
        elif cut is None:
            stop = at_body if at_body is not None else self.next_boundary(he, stack)
        be = part.body_end = self.end_before(stop[0], he) if stop is not None else self.n
        # Line counts are summed from the parts inside, so nested parts are not recounted.
        if child_counts:
            lf = crlf = 0
            pos = he
            for child, (clf, ccrlf) in zip(part.children, child_counts):
                a, b = self.counts(pos, child.header_end)
                lf += a + clf
                crlf += b + ccrlf
                pos = child.body_end
            a, b = self.counts(pos, be)
            lf, crlf = lf + a, crlf + b
        elif inner_counts is not None:
            lf, crlf, ihe, ibe = inner_counts
            a, b = self.counts(he, ihe)
            c, d = self.counts(ibe, be)
            lf, crlf = lf + a + c, crlf + b + d
        else:
            lf, crlf = self.counts(he, be)
        part.octets = be - he + lf - crlf
        if ctype == "text" or part.message is not None:
            part.lines = lf
        return part, stop, lf, crlf

    def counts(self, start: int, end: int) -> tuple[int, int]:
        """(LF count, CRLF count) of ``data[start:end]``.  (Counting the two-byte CRLF is
        several times faster than counting LF in CPython; without bare LFs they are equal.)"""
        if end <= start:
            return 0, 0
        crlf = self.data.count(b"\r\n", start, end)
        return (crlf if self.crlf_only else count_lf(self.data, start, end)), crlf

    def multipart(self, part: Part, boundary: bytes, depth: int, stack: tuple):
        """Split a multipart body into children; returns (the boundary that ended the multipart,
        the (LF, CRLF) counts of each child's body)."""
        level = len(stack)
        inner = stack + (boundary,)
        prefix = part.number + "." if part.number else ""
        digest = part.subtype == "digest"
        children = part.children
        counts = []
        found = self.next_boundary(part.header_end, inner)
        while found is not None and found[1] == level and not found[2]:
            start = self.line_after(found[0])
            if self.count >= MAX_PARTS:
                return self.next_boundary(start, stack), counts
            child, found, lf, crlf = self.entity(
                start, prefix + str(len(children) + 1), digest, depth + 1, inner)
            children.append(child)
            counts.append((lf, crlf))
        if found is None:
            return None, counts
        if found[1] == level:  # close delimiter: the epilogue runs to the parent's next boundary
            self.close_end = self.line_after(found[0])
            return self.next_boundary(self.close_end, stack), counts
        return found, counts  # a parent's boundary closes this multipart too

    def content_headers(self, part: Part, hs: int, he: int) -> None:
        """Fill the MIME fields of ``part`` from the Content-* fields of its header."""
        seen = set()
        raw = None
        for name, value in H.content_fields(self.data, hs, he):
            name = name.lower()
            if name in seen:
                continue  # the first occurrence counts
            seen.add(name)
            if name == b"type":
                parsed = H.content_type(value)
                if parsed is None:
                    continue
                t, st, params, raw_params = parsed
                part.ctype, part.subtype = t.lower(), st.lower()
                part.params = list(params)
                if t != part.ctype or st != part.subtype or raw_params is not None:
                    raw = raw or {}
                    if t != part.ctype:
                        raw["type"] = t
                    if st != part.subtype:
                        raw["subtype"] = st
                    if raw_params is not None:
                        raw["params"] = list(raw_params)
            elif name == b"transfer-encoding":
                enc = H.transfer_encoding(value)
                if enc:
                    part.encoding = enc.lower()
                    if enc != part.encoding:
                        raw = raw or {}
                        raw["encoding"] = H.as_text(enc)
            elif name == b"id":
                part.id = _nstring(value)
            elif name == b"description":
                part.description = _nstring(value)
            elif name == b"md5":
                part.md5 = _nstring(value)
            elif name == b"location":
                part.location = _nstring(value)
            elif name == b"language":
                part.language = H.parse_language(H.unfold(value))
            elif name == b"disposition":
                parsed = H.disposition(value)
                if parsed is None:
                    continue
                dtype, dparams, raw_dparams = parsed
                part.disposition = (dtype.lower(), list(dparams))
                if dtype != part.disposition[0] or raw_dparams is not None:
                    raw = raw or {}
                    if dtype != part.disposition[0]:
                        raw["dtype"] = dtype
                    if raw_dparams is not None:
                        raw["dparams"] = list(raw_dparams)
        part.raw = raw


def _nstring(value: bytes) -> str:
    return H.as_text(H.field_value(value).decode("latin-1"))


def _make_opaque(part: Part) -> None:
    """Too deep or too many parts: keep the bytes, describe them as application/octet-stream."""
    part.ctype, part.subtype = "application", "octet-stream"
    part.params = []
    if part.raw:
        for key in ("type", "subtype", "params"):
            part.raw.pop(key, None)
        part.raw = part.raw or None


def parse(data: bytes) -> Part:
    """The root entity (number "") of the message in ``data``.  Never raises on bad input."""
    parser = _Parser(bytes(data))
    return parser.entity(0, "", False, 0, ())[0]


def find_part(root: Part, part: tuple[int, ...]) -> Part | None:
    """The part that IMAP part number ``part`` (e.g. (1, 2) for "1.2") names, RFC 3501 6.4.5.

    () is the message itself.  In a message (the root or an encapsulated one) that is not
    multipart, part 1 is the message's own body, i.e. the message entity again; the parts of a
    message/rfc822 part are those of its encapsulated message.  Like Dovecot, "1" right below
    a single part of a multipart names that part again.  None if there is no such part."""
    node = root
    as_message = True  # ``node`` is a message whose parts the next number selects
    fresh = False      # ``node`` was just picked from a multipart
    for n in part:
        if n < 1:
            return None
        if not as_message and node.message is not None:
            node, as_message = node.message, True
        if as_message or node.children:
            if node.children:
                if n > len(node.children):
                    return None
                node, fresh = node.children[n - 1], True
            elif node.ctype == "multipart" or n != 1:
                return None
            else:
                fresh = False  # part 1 of a single-part message: its body, the same entity
            as_message = False
        elif fresh and n == 1 and node.ctype != "multipart":
            fresh = False
        else:
            return None
    return node
