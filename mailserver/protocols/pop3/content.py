"""POP3 message output: CRLF line endings, dot-stuffing, TOP, UIDL strings, and a pull producer
that streams big responses with the transport's back-pressure."""

from __future__ import annotations

import re

from twisted.internet import defer
from twisted.internet.interfaces import IPullProducer
from zope.interface import implementer

_BARE_LF = re.compile(rb"(?<!\r)\n")
_UIDL_VAR = re.compile(r"%(0?)(\d*)(X?)([uvg%])|%")

CHUNK = 64 * 1024


def crlf(data: bytes) -> bytes:
    """Every line ending CRLF (bare LF becomes CRLF; bare CR is kept)."""
    if data.count(b"\n") != data.count(b"\r\n"):
        data = _BARE_LF.sub(b"\r\n", data)
    return data


def dot_stuff(data: bytes) -> bytes:
    """A multi-line response body for ``data``: CRLF line endings, a ``.`` doubled at the start of
    every line, a final CRLF if the message lacks one, then the terminating ``.CRLF``.
    Done on the whole message at once, so no chunk boundary can split a line start."""
    data = crlf(data)
    if data.startswith(b"."):
        data = b"." + data
    data = data.replace(b"\r\n.", b"\r\n..")
    if data and not data.endswith(b"\r\n"):
        data += b"\r\n"
    return data + b".\r\n"


def top(data: bytes, lines: int) -> bytes:
    """The header, the blank line and the first ``lines`` lines of the body (CRLF endings)."""
    data = crlf(data)
    if data.startswith(b"\r\n"):
        head_end = 2
    else:
        sep = data.find(b"\r\n\r\n")
        if sep < 0:
            return data                 # no body: the whole message is header
        head_end = sep + 4
    pos = head_end
    for _ in range(lines):
        nl = data.find(b"\r\n", pos)
        if nl < 0:
            return data
        pos = nl + 2
    return data[:pos]


def check_uidl_format(fmt: str) -> str | None:
    """Why a ``[pop3] uidl_format`` is unusable, or None."""
    if not fmt:
        return "must not be empty"
    if not any(m.group(4) in ("u", "g") for m in _UIDL_VAR.finditer(fmt) if m.group(4)):
        return "must contain %u or %g (messages need distinct UIDLs)"
    for m in _UIDL_VAR.finditer(fmt):
        if m.group(4) is None:
            return f"unknown variable at {fmt[m.start():m.start() + 3]!r} (known: %u %v %g %%)"
    sample = uidl(fmt, 4294967295, 4294967295, "f" * 32)
    if not valid_uidl(sample):
        return "expands to more than 70 characters or to characters outside 0x21-0x7E (RFC 1939)"
    return None


def valid_uidl(value: str) -> bool:
    """RFC 1939: 1 to 70 characters in 0x21-0x7E."""
    return 0 < len(value) <= 70 and all(0x21 <= ord(c) <= 0x7E for c in value)


def uidl(fmt: str, uid: int, uidvalidity: int, guid: str) -> str:
    """Expand a Dovecot-style pop3_uidl_format: ``%u`` UID, ``%v`` UIDVALIDITY, ``%g`` mail GUID,
    with an optional zero-padded width and ``X`` for upper-case hex (``%08Xu%08Xv``)."""
    def expand(m: re.Match) -> str:
        zero, width, hexa, var = m.groups()
        if var is None or var == "%":
            return "%"
        if var == "g":
            value = guid
        else:
            number = uid if var == "u" else uidvalidity
            value = format(number, "X") if hexa else str(number)
        if width:
            value = value.rjust(int(width), "0" if zero else " ")
        return value
    return _UIDL_VAR.sub(expand, fmt)


@implementer(IPullProducer)
class ChunkProducer:
    """Writes ``data`` in chunks as the transport asks for more; ``done`` fires at the end or when
    the connection goes away (then with False)."""

    def __init__(self, transport, data: bytes, chunk: int = CHUNK, on_progress=None):
        self.transport = transport
        self.on_progress = on_progress
        self.view = memoryview(data)
        self.pos = 0
        self.chunk = chunk
        self.done: defer.Deferred = defer.Deferred()

    def start(self) -> defer.Deferred:
        self.transport.registerProducer(self, False)
        return self.done

    def resumeProducing(self):
        if self.done.called:
            return
        end = self.pos + self.chunk
        self.transport.write(bytes(self.view[self.pos:end]))
        self.pos = end
        if self.on_progress is not None:
            self.on_progress()
        if self.pos >= len(self.view):
            self.transport.unregisterProducer()
            self.done.callback(True)

    def stopProducing(self):
        if not self.done.called:
            self.done.callback(False)
