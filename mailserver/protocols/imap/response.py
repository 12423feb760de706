"""Writing IMAP responses: value formatting and the connection's buffered writer.

Everything is built as bytes and joined; the ``ResponseWriter`` gathers a command's output and
hands it to the transport in big chunks (at 64 KB and when the command ends), and it is the
transport's push producer, so a long FETCH can wait (``drain``) while the client is slow to read.
"""

from __future__ import annotations

import re
import time

from twisted.internet import defer
from twisted.internet.interfaces import IPushProducer
from zope.interface import implementer

CRLF = b"\r\n"
FLUSH_AT = 64 * 1024

_ATOM_SAFE = re.compile(rb'[^\x00-\x20\x7f-\xff(){%*"\\\]]+\Z')
_QUOTE_SAFE = re.compile(rb'[^\x00\r\n\x80-\xff]*\Z')
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


def literal(data: bytes) -> bytes:
    """``{n}`` CRLF data."""
    return b"{%d}\r\n%s" % (len(data), data)


def string(data: bytes | str) -> bytes:
    """A quoted string when possible, else a literal."""
    if isinstance(data, str):
        data = data.encode("utf-8")
    if len(data) < 1024 and _QUOTE_SAFE.match(data):
        return b'"' + data.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'
    return literal(data)


def astring(data: bytes | str) -> bytes:
    """An atom when the value is one (and not ``NIL``), else a string."""
    if isinstance(data, str):
        data = data.encode("utf-8")
    if data and _ATOM_SAFE.match(data) and data.upper() != b"NIL":
        return data
    return string(data)


def nstring(data: bytes | str | None) -> bytes:
    return b"NIL" if data is None else string(data)


def flag_list(flags) -> bytes:
    """``(\\Seen $Label)``: system flags first in a fixed order, then keywords sorted."""
    return b"(" + " ".join(sorted(flags, key=_flag_order)).encode("utf-8") + b")"


def _flag_order(flag: str):
    return (0, flag) if flag.startswith("\\") else (1, flag)


def date_time(seconds: int) -> bytes:
    """INTERNALDATE form, in UTC: ``"17-Jul-1996 09:44:25 +0000"``."""
    t = time.gmtime(seconds)
    return b'"%02d-%s-%04d %02d:%02d:%02d +0000"' % (
        t.tm_mday, _MONTHS[t.tm_mon - 1].encode(), t.tm_year, t.tm_hour, t.tm_min, t.tm_sec)


def status_line(tag: str | bytes, status: str, text: str, code: str | None = None) -> bytes:
    """``tag STATUS [CODE] text`` with CRLF.  ``tag`` is ``*`` for untagged responses."""
    if isinstance(tag, str):
        tag = tag.encode("ascii")
    parts = [tag, b" ", status.encode("ascii"), b" "]
    if code:
        parts += [b"[", code.encode("utf-8"), b"] "]
    parts += [text.encode("utf-8"), CRLF]
    return b"".join(parts)


@implementer(IPushProducer)
class ResponseWriter:
    """Buffers responses and writes them to the transport in big chunks.

    Registered as the transport's streaming producer: ``paused`` is true while the transport's
    send buffer is full; ``drain`` flushes and waits until it is not (or the connection is gone).
    Callers append whole responses only, so a flush (or a ``+`` continuation written between
    two of them) never splits one.
    """

    def __init__(self, transport):
        self.transport = transport
        self._chunks: list[bytes] = []
        self._size = 0
        self._pieces = False       # chunks include big pieces from write_pieces
        self.paused = False
        self.closed = False
        self._waiters: list[defer.Deferred] = []
        transport.registerProducer(self, True)

    def write(self, data: bytes) -> None:
        """Queue bytes (whole responses); flushes at 64 KB."""
        self._chunks.append(data)
        self._size += len(data)
        if self._size >= FLUSH_AT:
            self.flush()

    def write_pieces(self, pieces: list) -> None:
        """Queue one whole response given in pieces (big literals apart: they are handed to the
        transport as they are, not copied into a joined buffer)."""
        self._chunks.extend(pieces)
        self._size += sum(map(len, pieces))
        self._pieces = True
        if self._size >= FLUSH_AT:
            self.flush()

    def untagged(self, text: str | bytes) -> None:
        """``* text`` CRLF."""
        if isinstance(text, str):
            text = text.encode("utf-8")
        self.write(b"* " + text + CRLF)

    def flush(self) -> None:
        """Hand everything queued to the transport."""
        chunks = self._chunks
        if not chunks:
            return
        self._chunks = []
        self._size = 0
        pieces, self._pieces = self._pieces, False
        if self.closed:
            return
        if len(chunks) == 1:
            self.transport.write(chunks[0])
        elif not pieces:
            self.transport.write(b"".join(chunks))
        else:
            # Join runs of small chunks (one write each for TLS and COMPRESS), pass big ones as is.
            seq, run = [], []
            for c in chunks:
                if len(c) < FLUSH_AT // 4:
                    run.append(c)
                    continue
                if run:
                    seq.append(b"".join(run))
                    run = []
                seq.append(c)
            if run:
                seq.append(b"".join(run))
            self.transport.writeSequence(seq)

    @property
    def buffered(self) -> int:
        return self._size

    async def drain(self) -> None:
        """Flush, then wait while the transport asks us to pause."""
        self.flush()
        while self.paused and not self.closed:
            d = defer.Deferred()
            self._waiters.append(d)
            await d

    def _wake(self) -> None:
        waiters, self._waiters = self._waiters, []
        for d in waiters:
            d.callback(None)

    # IPushProducer, called by the transport
    def pauseProducing(self) -> None:
        self.paused = True

    def resumeProducing(self) -> None:
        self.paused = False
        self._wake()

    def stopProducing(self) -> None:
        self.closed = True
        self._chunks = []
        self._size = 0
        self._wake()
