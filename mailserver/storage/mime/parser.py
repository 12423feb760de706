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

from . import _headers as H

MAX_DEPTH = 100      # nesting deeper than this is an opaque application/octet-stream part
MAX_PARTS = 10000    # past this many parts, the rest of a multipart is its epilogue

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
    __slots__ = ("data", "n", "crlf_only", "vsize", "count", "_memo", "close_end")

    def __init__(self, data: bytes):
        self.data = data
        self.n = len(data)
        bare = count_lf(data) - data.count(b"\r\n")
        self.crlf_only = bare == 0
        self.vsize = self.n + bare
        self.count = 0
        self._memo = None
        self.close_end = -1  # just after the last close-delimiter line seen

    # A found boundary line: (offset of its "--", index of its boundary in the stack, is close).

    def next_boundary(self, pos: int, stack: tuple) -> tuple | None:
        """The first line at or after ``pos`` (a line start) that is a delimiter of one of the
        boundaries in ``stack``; None if there is none."""
        if not stack:
            return None
        memo = self._memo
        if memo is not None and memo[0] == pos and memo[1] is stack:
            return memo[2]
        data = self.data
        find = data.find
        startswith = data.startswith
        top = len(stack) - 1
        i = pos - 1 if pos > 0 else 0
        if pos == 0 and startswith(b"--"):
            i = -1  # a boundary on the very first line
        result = None
        while True:
            if i >= 0:
                j = find(b"\n--", i)
                if j < 0:
                    break
                bol = j + 1
            else:
                bol = 0
            best = -1
            blen = 0
            for level in range(top, -1, -1):
                b = stack[level]
                if len(b) > blen and startswith(b, bol + 2):
                    best, blen = level, len(b)
            if best >= 0:
                result = (bol, best, startswith(b"--", bol + 2 + blen))
                break
            i = bol + 1
        self._memo = (pos, stack, result)
        return result

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
        or None at the end of the data)."""
        self.count += 1
        part = Part(number, hs)
        stop = self.next_boundary(hs, stack)
        limit = stop[0] if stop is not None else self.n
        he = self.header_end(hs, limit)
        blank_end = he
        if stop is not None and (he < 0 or he == limit):
            # the header runs into a delimiter line: the line break before it is the
            # delimiter's, even when it ends the blank line (Dovecot reads it the same way)
            he = self.end_before(limit, hs)
        elif he < 0:
            he = limit
        part.header_end = he
        if in_digest:
            part.ctype, part.subtype = "message", "rfc822"
        if he > hs:
            self.content_headers(part, hs, he)
        ctype = part.ctype
        if blank_end == limit and ctype == "multipart" and stop is not None:
            # ... unless that line is this multipart's own first delimiter, matching a longer
            # boundary than the parent's (the innermost wins a tie)
            own = (part.param("boundary") or "").encode("utf-8")
            if own and len(own) >= len(stack[stop[1]]) and self.data.startswith(own, limit + 2):
                he = part.header_end = blank_end
        if ctype == "multipart" or (ctype == "message" and part.subtype in _MESSAGE_SUBTYPES):
            if depth >= MAX_DEPTH or self.count >= MAX_PARTS:
                _make_opaque(part)
            elif ctype == "multipart":
                boundary = part.param("boundary")
                if boundary:
                    # RFC 2046 boundaries are ASCII; 8-bit ones were UTF-8 if anything
                    stop = self.multipart(part, boundary.encode("utf-8"), depth, stack)
            else:
                part.message, stop = self.entity(he, number, False, depth + 1, stack)
        part.body_end = self.end_before(stop[0], he) if stop is not None else self.n
        data = self.data
        be = part.body_end
        # (counting "\r\n" is several times faster than counting "\n" in CPython)
        if self.crlf_only:
            part.octets = be - he
            if ctype == "text" or part.message is not None:
                part.lines = data.count(b"\r\n", he, be)
        else:
            lf = count_lf(data, he, be)
            part.octets = be - he + lf - data.count(b"\r\n", he, be)
            if ctype == "text" or part.message is not None:
                part.lines = lf
        return part, stop

    def multipart(self, part: Part, boundary: bytes, depth: int, stack: tuple):
        """Split a multipart body into children; returns the boundary that ended the multipart."""
        level = len(stack)
        inner = stack + (boundary,)
        prefix = part.number + "." if part.number else ""
        digest = part.subtype == "digest"
        children = part.children
        found = self.next_boundary(part.header_end, inner)
        while found is not None and found[1] == level and not found[2]:
            start = self.line_after(found[0])
            if self.count >= MAX_PARTS:
                return self.next_boundary(start, stack)
            child, found = self.entity(start, prefix + str(len(children) + 1), digest, depth + 1, inner)
            children.append(child)
        if found is None:
            return None
        if found[1] == level:  # close delimiter: the epilogue runs to the parent's next boundary
            self.close_end = self.line_after(found[0])
            return self.next_boundary(self.close_end, stack)
        return found  # a parent's boundary closes this multipart too

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
                parsed = H.parse_content_type(H.unfold(value))
                if parsed is None:
                    continue
                t, st, params, raw_params = parsed
                part.ctype, part.subtype = t.lower(), st.lower()
                part.params = params
                if t != part.ctype or st != part.subtype or raw_params is not None:
                    raw = raw or {}
                    if t != part.ctype:
                        raw["type"] = t
                    if st != part.subtype:
                        raw["subtype"] = st
                    if raw_params is not None:
                        raw["params"] = raw_params
            elif name == b"transfer-encoding":
                enc = H.first_token(H.unfold(value))
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
                parsed = H.parse_disposition(H.unfold(value))
                if parsed is None:
                    continue
                dtype, dparams, raw_dparams = parsed
                part.disposition = (dtype.lower(), dparams)
                if dtype != part.disposition[0] or raw_dparams is not None:
                    raw = raw or {}
                    if dtype != part.disposition[0]:
                        raw["dtype"] = dtype
                    if raw_dparams is not None:
                        raw["dparams"] = raw_dparams
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


def parse(data: bytes) -> Part:
    """The root entity (number "") of the message in ``data``.  Never raises on bad input."""
    parser = _Parser(bytes(data))
    root, _ = parser.entity(0, "", False, 0, ())
    return root


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
