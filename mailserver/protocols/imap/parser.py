"""The one IMAP command parser: bytes in, complete commands (or protocol errors) out.

``CommandParser`` is incremental: ``feed`` appends what the transport delivered, ``next``
returns the next event once enough bytes are there:

  ``Command(tag, name, args, size)``  a whole command, literals included;
  ``CONTINUE``                        a synchronising literal ``{n}`` that fits the limits was
                                      announced: the server must send ``+`` now;
  ``ParseError(tag, text, code, fatal)``  the command was refused (the parser has already
                                      resynchronised: it skipped the rest of the command, or,
                                      when ``fatal``, the connection must be closed);
  ``None``                            more bytes are needed.

Tokens in ``args``: ``Atom`` (a str: atoms, numbers, flags, sequence sets, ``NIL``; a fetch
attribute such as ``BODY.PEEK[HEADER.FIELDS (A B)]<0.100>`` is one Atom, brackets included),
``String`` (bytes: a quoted string without its escapes; ``Literal``, a subclass, for a literal),
``Literal8`` (bytes, ``~{n}``), and Python lists for parenthesised lists.  ``Args`` reads them with typed accessors.

Bounds: the non-literal bytes of one command (``max_line_length``), each literal
(``max_literal_size``), the whole command (``max_command_size``) and list nesting
(``MAX_DEPTH``).  Synchronising literals that do not fit are refused before the client sends
them; a non-synchronising one that does not fit is fatal, since its bytes are already on the way
and must not be read as commands (RFC 7888 section 4).
"""

from __future__ import annotations

import re

MAX_DEPTH = 64                 # list nesting; SEARCH recursion follows it
MAX_LITERAL_DIGITS = 12

_TAG = re.compile(rb'[^\x00-\x20\x7f-\xff(){%*"\\+]+')
_NAME = re.compile(rb"[A-Za-z][A-Za-z0-9._\-]*")
_ATOM = re.compile(rb'[^\x00-\x20\x7f-\xff(){"]+')
_QUOTED = re.compile(rb'"((?:[^"\\\r\n\x00]|\\["\\])*)"')
_UNESCAPE = re.compile(rb'\\(["\\])')
_LITERAL_RE = re.compile(rb"(~?)\{([0-9]{1,%d})(\+?)\}\Z" % MAX_LITERAL_DIGITS)
_LITERAL_AT_END = re.compile(rb"(~?)\{([0-9]+)(\+?)\}\r?\Z")
_SECTION_ATT = re.compile(rb"(?i)(BODY|BODY\.PEEK|BINARY|BINARY\.PEEK|BINARY\.SIZE)\[")


class Atom(str):
    """An atom as the client sent it (case kept)."""

    __slots__ = ()


class String(bytes):
    """A quoted string (escapes removed) or a literal."""


class Literal(String):
    """A string that came as a literal ``{n}`` (APPEND tells the message from a date this way)."""


class Literal8(bytes):
    """A ``~{n}`` literal (RFC 3516 BINARY): may hold any octet."""


class Command:
    """A complete command.  ``name`` is upper-cased; ``size`` counts every byte it took."""

    __slots__ = ("tag", "name", "args", "size")

    def __init__(self, tag: str, name: str, args: list, size: int):
        self.tag, self.name, self.args, self.size = tag, name, args, size

    def __repr__(self) -> str:
        return f"Command({self.tag!r}, {self.name!r}, {self.args!r})"


class _Continue:
    __slots__ = ()

    def __repr__(self) -> str:
        return "CONTINUE"


CONTINUE = _Continue()


class ParseError:
    """A refused command.  ``tag`` is None when it could not be read (answer untagged).
    ``code`` is a response code (``TOOBIG``...) or None; ``status`` is ``BAD`` or ``NO``;
    ``fatal``: answer, then say BYE and close."""

    __slots__ = ("tag", "text", "code", "status", "fatal")

    def __init__(self, tag: str | None, text: str, code: str | None = None,
                 status: str = "BAD", fatal: bool = False):
        self.tag, self.text, self.code, self.status, self.fatal = tag, text, code, status, fatal

    def __repr__(self) -> str:
        return f"ParseError({self.tag!r}, {self.text!r}, code={self.code!r}, fatal={self.fatal})"


class LineTooLong(Exception):
    """``read_line``: no line end within the limit."""


class _Refuse(Exception):
    def __init__(self, text: str, code: str | None = None, status: str = "BAD", fatal: bool = False):
        super().__init__(text)
        self.text, self.code, self.status, self.fatal = text, code, status, fatal


# Parser states
_S_LINE, _S_LITERAL, _S_SKIP_LINE, _S_SKIP_LITERAL = range(4)


class CommandParser:
    """Incremental parser of client commands (see the module docstring)."""

    def __init__(self, max_line_length: int = 65536, max_literal_size: int = 50 * 1024 * 1024,
                 max_command_size: int | None = None, max_nonsync_literal: int | None = None):
        self.max_line_length = max_line_length
        self.max_literal_size = max_literal_size
        # LITERAL- (RFC 7888): larger non-synchronising literals are refused (None: LITERAL+)
        self.max_nonsync_literal = max_nonsync_literal
        self.max_command_size = max_command_size or (max_literal_size + max_line_length)
        self._buf = bytearray()
        self._scan_from = 0          # where to resume looking for a line end
        self._state = _S_LINE
        self._need = 0               # literal bytes still expected (LITERAL, SKIP_LITERAL)
        self._literal8 = False
        self._skip_tail = b""        # last bytes of a line being skipped (to see a literal marker)
        self._reset()

    def _reset(self) -> None:
        self._tag: str | None = None
        self._name: str | None = None
        self._stack: list[list] = [[]]
        self._line_used = 0
        self._size = 0

    # --- input --------------------------------------------------------------------------------
    def feed(self, data: bytes) -> None:
        """Append bytes received from the client."""
        self._buf += data

    @property
    def buffered(self) -> int:
        """Bytes received and not consumed yet."""
        return len(self._buf)

    @property
    def in_command(self) -> bool:
        """True while a command has started but is not complete (e.g. waiting for a literal)."""
        return self._tag is not None or self._state != _S_LINE or bool(self._buf)

    def read_line(self) -> bytes | None:
        """The next raw line without its line end (AUTHENTICATE responses, IDLE's DONE), or
        None if it has not arrived.  Only valid between commands.  Raises LineTooLong."""
        nl = self._buf.find(b"\n", self._scan_from)
        if nl < 0:
            self._scan_from = len(self._buf)
            if len(self._buf) > self.max_line_length:
                raise LineTooLong()
            return None
        if nl > self.max_line_length:
            raise LineTooLong()
        line = bytes(self._buf[:nl])
        del self._buf[:nl + 1]
        self._scan_from = 0
        return line[:-1] if line.endswith(b"\r") else line

    def take_buffer(self) -> bytes:
        """Every buffered byte, removed (COMPRESS: what follows the command is compressed).
        Only valid between commands."""
        data = bytes(self._buf)
        self.discard_buffer()
        return data

    def discard_buffer(self) -> int:
        """Drop every buffered byte (STARTTLS must not run commands sent before it); returns how many."""
        n = len(self._buf)
        self._buf.clear()
        self._scan_from = 0
        self._state = _S_LINE
        self._reset()
        return n

    # --- events -------------------------------------------------------------------------------
    def next(self):
        """The next event (Command, CONTINUE, ParseError) or None when more bytes are needed."""
        while True:
            state = self._state
            if state == _S_LINE:
                nl = self._buf.find(b"\n", self._scan_from)
                if nl < 0:
                    self._scan_from = len(self._buf)
                    if self._line_used + len(self._buf) > self.max_line_length:
                        return self._line_too_long()
                    return None
                if self._line_used + nl > self.max_line_length:
                    return self._line_too_long()
                segment = bytes(self._buf[:nl])
                del self._buf[:nl + 1]
                self._scan_from = 0
                self._size += nl + 1
                if segment.endswith(b"\r"):
                    segment = segment[:-1]
                event = self._segment(segment)
                if event is not None:
                    return event
            elif state == _S_LITERAL:
                if len(self._buf) < self._need:
                    return None
                data = bytes(self._buf[:self._need])
                del self._buf[:self._need]
                self._size += self._need
                self._stack[-1].append(Literal8(data) if self._literal8 else Literal(data))
                self._state = _S_LINE
            elif state == _S_SKIP_LITERAL:
                take = min(self._need, len(self._buf))
                del self._buf[:take]
                self._need -= take
                if self._need:
                    return None
                self._state = _S_SKIP_LINE
            else:  # _S_SKIP_LINE
                nl = self._buf.find(b"\n")
                if nl < 0:
                    self._skip_tail = (self._skip_tail + bytes(self._buf))[-32:]
                    self._buf.clear()
                    self._scan_from = 0
                    return None
                tail = (self._skip_tail + bytes(self._buf[:nl]))[-32:]
                del self._buf[:nl + 1]
                self._skip_tail = b""
                self._scan_from = 0
                self._after_skipped_line(tail)

    def _after_skipped_line(self, tail: bytes) -> None:
        """A skipped line ended: a non-synchronising literal at its end is skipped too (its
        bytes are on the way); after a synchronising one the client waits for ``+`` that will
        not come, so the next bytes start a new command."""
        m = _LITERAL_AT_END.search(tail)
        if m and m.group(3) == b"+":
            self._need = int(m.group(2))
            self._state = _S_SKIP_LITERAL
        else:
            self._state = _S_LINE

    def _line_too_long(self) -> ParseError:
        tag = self._tag
        if tag is None:
            m = _TAG.match(self._buf)
            if m and self._buf[m.end():m.end() + 1] == b" ":
                tag = m.group().decode("ascii")
        nl = self._buf.find(b"\n")
        if nl >= 0:
            tail = bytes(self._buf[max(0, nl - 32):nl])
            del self._buf[:nl + 1]
            self._reset()
            self._scan_from = 0
            self._after_skipped_line(tail)
        else:
            self._skip_tail = bytes(self._buf[-32:])
            self._buf.clear()
            self._scan_from = 0
            self._reset()
            self._state = _S_SKIP_LINE
        return ParseError(tag, "Command line too long", "TOOBIG")

    # --- one line segment ---------------------------------------------------------------------
    def _segment(self, seg: bytes):
        """Tokenize a line segment (a whole line, or the part between two literals)."""
        self._line_used += len(seg)
        pos = 0
        if self._tag is None:
            if not seg.strip():
                self._reset()
                return None        # stray empty line between commands: ignore
            m = _TAG.match(seg)
            if not m or seg[m.end():m.end() + 1] != b" ":
                return self._refuse_segment(seg, None, _Refuse("Invalid tag" if not m or m.end() < len(seg)
                                                               else "Missing command"))
            tag = m.group().decode("ascii")
            n = _NAME.match(seg, m.end() + 1)
            if not n or (n.end() < len(seg) and seg[n.end()] != 0x20):
                return self._refuse_segment(seg, tag, _Refuse("Invalid command name" if n or m.end() + 1 < len(seg)
                                                               else "Missing command"))
            self._tag = tag
            self._name = n.group().decode("ascii").upper()
            pos = n.end()
        try:
            literal = tokenize(seg, pos, self._stack)
        except _Refuse as e:
            return self._refuse_segment(seg, self._tag, e)
        if literal is None:
            if len(self._stack) != 1:
                return self._refuse_segment(seg, self._tag, _Refuse("Unclosed parenthesis"))
            cmd = Command(self._tag, self._name, self._stack[0], self._size)
            self._reset()
            return cmd
        size, sync, lit8 = literal
        total = self._size + size
        if (not sync and self.max_nonsync_literal is not None and size > self.max_nonsync_literal
                and size <= self.max_literal_size and total <= self.max_command_size):
            # RFC 7888 section 5: BAD [TOOBIG]; the literal is on the way, so skip it and the rest
            # of the command, then go on.
            tag = self._tag
            self._reset()
            self._need = size
            self._state = _S_SKIP_LITERAL
            return ParseError(tag, "Non-synchronising literals above %d bytes are not allowed (LITERAL-)"
                              % self.max_nonsync_literal, "TOOBIG")
        if size > self.max_literal_size or total > self.max_command_size:
            tag = self._tag
            self._reset()
            if sync:
                self._state = _S_LINE
                return ParseError(tag, "Literal too big", "TOOBIG", status="NO")
            # Its bytes are already on the way: a caller that does not close skips them.
            self._need = size
            self._state = _S_SKIP_LITERAL
            return ParseError(tag, "Non-synchronising literal too big", "TOOBIG", fatal=True)
        self._need = size
        self._literal8 = lit8
        self._state = _S_LITERAL
        return CONTINUE if sync else None

    def _refuse_segment(self, seg: bytes, tag: str | None, error: _Refuse) -> ParseError:
        """Refuse the command being read and resynchronise past it."""
        self._reset()
        self._after_skipped_line(seg[-32:])
        return ParseError(tag, error.text, error.code, error.status, error.fatal)


def tokenize(seg: bytes, pos: int, stack: list[list]):
    """Tokenize ``seg[pos:]`` into ``stack[-1]`` (pushing/popping lists on ``stack``).

    Returns None at the end of the line, or ``(size, synchronising, literal8)`` when the line
    ends with a literal announcement.  Raises _Refuse on a syntax error.
    """
    n = len(seg)
    i = pos
    while i < n:
        c = seg[i]
        if c == 0x20:                                  # SP
            i += 1
            continue
        if c == 0x28:                                  # (
            if len(stack) > MAX_DEPTH:
                raise _Refuse("Too deeply nested")
            item: list = []
            stack[-1].append(item)
            stack.append(item)
            i += 1
            continue
        if c == 0x29:                                  # )
            if len(stack) == 1:
                raise _Refuse("Unexpected )")
            stack.pop()
            i += 1
        elif c == 0x22:                                # "
            m = _QUOTED.match(seg, i)
            if not m:
                raise _Refuse("Invalid quoted string")
            body = m.group(1)
            stack[-1].append(String(_UNESCAPE.sub(rb"\1", body) if b"\\" in body else body))
            i = m.end()
        elif c == 0x7B or (c == 0x7E and seg[i + 1:i + 2] == b"{"):   # { or ~{
            m = _LITERAL_RE.match(seg, i)
            if not m:
                raise _Refuse("Invalid literal" if seg.endswith(b"}") else "Unexpected {")
            return int(m.group(2)), m.group(3) != b"+", m.group(1) == b"~"
        else:
            m = _ATOM.match(seg, i)
            if not m:
                raise _Refuse("Invalid characters in command")
            end = m.end()
            if _SECTION_ATT.match(seg, i) and b"]" not in seg[seg.index(b"[", i):end]:
                end = _section_end(seg, end)
            stack[-1].append(Atom(seg[i:end].decode("ascii")))
            i = end
        if i < n and seg[i] not in (0x20, 0x29):
            bad = seg[i] < 0x20 or seg[i] >= 0x7F
            raise _Refuse("Invalid characters in command" if bad else "Missing space between arguments")
    return None


def _section_end(seg: bytes, start: int) -> int:
    """End of a fetch attribute whose ``[section]`` holds spaces or parentheses, such as
    ``BODY[HEADER.FIELDS (DATE FROM)]<0.100>``: past the ``]`` and the partial that follows."""
    j, n = start, len(seg)
    while j < n:
        ch = seg[j]
        if ch == 0x5D:                                 # ]
            m = _ATOM.match(seg, j + 1)
            return m.end() if m else j + 1
        if ch == 0x22:
            m = _QUOTED.match(seg, j)
            if not m:
                raise _Refuse("Invalid quoted string in section")
            j = m.end()
            continue
        if ch < 0x20 or ch >= 0x7F or ch in (0x7B, 0x5B):
            raise _Refuse("Invalid character in section")
        j += 1
    raise _Refuse("Missing ] in section")


def parse_tokens(data: bytes) -> list:
    """Tokens of one literal-free line fragment (the inside of a ``[section]``...).  Raises
    ValueError with a client-safe message."""
    stack: list[list] = [[]]
    try:
        if tokenize(data, 0, stack) is not None:
            raise ValueError("Literal not allowed here")
    except _Refuse as e:
        raise ValueError(e.text) from None
    if len(stack) != 1:
        raise ValueError("Unclosed parenthesis")
    return stack[0]


# --- reading arguments ---------------------------------------------------------------------------

class BadSyntax(Exception):
    """Arguments that do not fit the command's grammar; the text is safe to show a client."""

    def __init__(self, text: str):
        super().__init__(text)
        self.text = text


class Args:
    """A cursor over a command's (or a list's) tokens with typed accessors.

    Every accessor names what it reads (``what``) so the BAD text can say what was wrong.
    """

    __slots__ = ("items", "pos")

    def __init__(self, items: list, pos: int = 0):
        self.items = items
        self.pos = pos

    def more(self) -> bool:
        return self.pos < len(self.items)

    def peek(self):
        """The next token, or None at the end."""
        return self.items[self.pos] if self.pos < len(self.items) else None

    def next(self, what: str):
        if self.pos >= len(self.items):
            raise BadSyntax(f"Missing {what}")
        item = self.items[self.pos]
        self.pos += 1
        return item

    def peek_atom(self) -> str | None:
        """The next token upper-cased if it is an atom (without consuming it), else None."""
        item = self.peek()
        return item.upper() if isinstance(item, Atom) else None

    def atom(self, what: str) -> str:
        item = self.next(what)
        if not isinstance(item, Atom):
            raise BadSyntax(f"Expected an atom for {what}")
        return item

    def keyword(self, what: str) -> str:
        """An atom, upper-cased."""
        return self.atom(what).upper()

    def astring(self, what: str) -> bytes:
        """An atom or a string, as bytes."""
        item = self.next(what)
        if isinstance(item, Atom):
            return item.encode("ascii")
        if isinstance(item, String):
            return bytes(item)
        raise BadSyntax(f"Expected a string for {what}")

    def string(self, what: str) -> bytes:
        item = self.next(what)
        if not isinstance(item, String):
            raise BadSyntax(f"Expected a quoted string or literal for {what}")
        return bytes(item)

    def nstring(self, what: str) -> bytes | None:
        item = self.next(what)
        if isinstance(item, Atom) and item.upper() == "NIL":
            return None
        if not isinstance(item, String):
            raise BadSyntax(f"Expected a string or NIL for {what}")
        return bytes(item)

    def number(self, what: str, nonzero: bool = False, maximum: int = 0xFFFFFFFF) -> int:
        item = self.next(what)
        if not isinstance(item, Atom) or not item.isdigit() or not item.isascii() or len(item) > 20:
            raise BadSyntax(f"Expected a number for {what}")
        value = int(item)
        if value > maximum or (nonzero and value == 0):
            raise BadSyntax(f"Number out of range for {what}")
        return value

    def list(self, what: str) -> "Args":
        item = self.next(what)
        if not isinstance(item, list):
            raise BadSyntax(f"Expected a parenthesised list for {what}")
        return Args(item)

    def list_or_one(self, what: str) -> "Args":
        """A parenthesised list, or a single token read as a list of one."""
        item = self.next(what)
        return Args(item if isinstance(item, list) else [item])

    def end(self) -> None:
        if self.pos < len(self.items):
            raise BadSyntax("Unexpected extra arguments")
