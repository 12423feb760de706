"""COMPRESS=DEFLATE (RFC 4978): raw deflate both ways once the tagged OK has been sent.

``Deflate`` sits between the connection and its transport.  Output: every chunk the
``ResponseWriter`` hands over is compressed and flushed with Z_SYNC_FLUSH, so the client can
decode each response as soon as it arrives; the writer stays registered as the push producer of
the real transport, so back-pressure (pause, drain) works as before.  Input: compressed bytes are
inflated in bounded steps (at most ``INFLATE_STEP`` bytes of output at a time) and only while the
connection is reading, so a small compressed burst cannot expand into unbounded memory: what is
not inflated yet stays compressed until the parser has room again.
"""

from __future__ import annotations

import zlib

from .commands import AUTH, Sync, command
from .errors import bad, no
from .parser import Args

INFLATE_STEP = 64 * 1024
LEVEL = 6


class TransportWrapper:
    """The transport as the protocol sees it after COMPRESS: ``write`` compresses; everything
    else (producers, pause/resume, loseConnection, addresses) is the real transport's."""

    def __init__(self, transport, compressor):
        self._transport = transport
        self._compressor = compressor

    def write(self, data: bytes) -> None:
        if data:
            c = self._compressor
            self._transport.write(c.compress(data) + c.flush(zlib.Z_SYNC_FLUSH))

    def writeSequence(self, seq) -> None:
        self.write(b"".join(seq))

    def __getattr__(self, name):
        return getattr(self._transport, name)


class Deflate:
    """The compression state of one connection (``proto``: an ``IMAPServerProtocol``)."""

    def __init__(self, proto):
        self.proto = proto
        self.raw_transport = proto.transport
        self._inflater = zlib.decompressobj(-zlib.MAX_WBITS)
        self._pending = b""            # compressed input not inflated yet
        self._busy = False
        self.transport = TransportWrapper(self.raw_transport,
                                          zlib.compressobj(LEVEL, zlib.DEFLATED, -zlib.MAX_WBITS))

    def start(self, already_received: bytes) -> None:
        """Switch the connection over; ``already_received``: bytes the client sent after the
        COMPRESS command (compressed already)."""
        proto = self.proto
        proto.transport = self.transport
        proto.writer.transport = self.transport
        proto.compression = self
        if already_received:
            self.received(already_received)

    def received(self, data: bytes) -> None:
        """Compressed bytes from the client."""
        self._pending += data
        self.resume()

    def resume(self) -> None:
        """Inflate pending input while the connection reads (called again when it resumes)."""
        if self._busy:
            return
        self._busy = True
        proto = self.proto
        try:
            while self._pending and not proto.reading_paused and not proto.closed:
                try:
                    out = self._inflater.decompress(self._pending, INFLATE_STEP)
                except zlib.error as e:
                    proto.warn("COMPRESS: invalid deflate data from the client: {error}", error=str(e))
                    self._pending = b""
                    proto._close(b"* BYE Invalid compressed data\r\n")
                    return
                self._pending = self._inflater.unconsumed_tail
                if out:
                    proto.plain_received(out)
                elif not self._pending:
                    break
        finally:
            self._busy = False


@command("COMPRESS", AUTH, sync=Sync.NONE, takes_input=True)
async def compress(session, tag: str, args: Args):
    """RFC 4978.  ``takes_input`` stops the parser behind this command: whatever the client sent
    after it is compressed and goes through the inflater once the OK is out."""
    mechanism = args.atom("compression mechanism").upper()
    args.end()
    if session.compression is not None:
        raise no("DEFLATE is already active", "COMPRESSIONACTIVE")
    if mechanism != "DEFLATE":
        raise bad("Unknown compression mechanism")

    def start():
        if not session.closed:
            Deflate(session).start(session.parser.take_buffer())

    session.after_reply(start)
    session.info("COMPRESS=DEFLATE active")
    return "DEFLATE active"
