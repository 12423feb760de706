"""A line-based server protocol with an in-order command queue, shared by POP3 and LMTP.

Input is buffered and handled one command at a time: a handler may be a coroutine (auth, storage),
and the next buffered command waits until it finished, so pipelined commands keep their order
and their replies come out in order.  When more than ``max_buffer`` bytes wait, the transport is
paused.  A line longer than ``max_line_length`` is answered with ``line_too_long()`` and skipped up
to its end; the connection stays usable.  A subclass may switch to raw mode (LMTP DATA) and then
gets the bytes themselves in ``raw_received``.  Idle connections are closed after ``idle_timeout``
seconds of silence (not while a command is running, unless the client stopped reading its output).
"""

from __future__ import annotations

import secrets
from typing import Coroutine

from twisted.internet import defer, protocol, tcp
from twisted.logger import Logger
from twisted.python.failure import Failure


def peer_address(transport) -> tuple[str, str]:
    """(``host:port`` of the client or the address type for other transports, host or "")."""
    try:
        peer = transport.getPeer()
    except Exception:
        return "unknown", ""
    host, port = getattr(peer, "host", None), getattr(peer, "port", None)
    if host is None:
        return type(peer).__name__, ""
    return (f"[{host}]:{port}" if ":" in host else f"{host}:{port}"), host


def write_now(transport, data: bytes) -> None:
    """``transport.write(data)``, but on a plain TCP connection with nothing queued the bytes go
    to the socket at once.  Twisted queues every write and asks epoll for writability, then
    sends and stops asking: two epoll changes and a loop turn per reply, each system call a
    chance for a pool thread to take the GIL (measured: 60 us each under LMTP load).  What the
    socket does not take is queued as usual."""
    if (type(transport) is tcp.Server and not transport.TLS    # after STARTTLS: through TLS
            and transport.connected and not transport.disconnecting
            and not transport._tempDataBuffer and transport.offset == len(transport.dataBuffer)):
        try:
            sent = transport.socket.send(data)
        except OSError:
            sent = 0            # EAGAIN, or an error the queued write will meet and report
        if sent == len(data):
            return
        data = data[sent:]
    transport.write(data)


class LineServerProtocol(protocol.Protocol):
    """Subclasses implement ``line_received(line: bytes)`` (returning None, a Deferred or a
    coroutine), ``line_too_long()``, ``internal_error()``, ``idle_timeout_reached()`` and
    ``greet()``; they may override ``raw_received`` and set ``self.raw_mode``."""

    log = Logger()
    max_line_length = 1024
    idle_timeout = 600.0
    cork_replies = False            # see ``write``
    max_buffer = 256 * 1024
    clock = None                # the reactor; set by the factory (a task.Clock in tests)

    def __init__(self, ctx=None):
        self.ctx = ctx
        self.session = secrets.token_urlsafe(9)
        self.peer = "unknown"
        self.peer_host = ""
        self.user = ""
        self.raw_mode = False
        self.closing = False            # no more input is handled
        self._buffer = bytearray()
        self._corked: list[bytes] | None = None     # output held while a batch of input is handled
        self._busy = False
        self._pumping = False
        self._paused = False
        self._skipping = False          # discarding the rest of an over-long line
        self._last_input = 0.0
        self.streaming = False          # a response is being streamed (see note_progress)
        self._idle_call = None

    # --- connection ---------------------------------------------------------------------------------

    def connectionMade(self):
        self.peer, self.peer_host = peer_address(self.transport)
        try:
            self.transport.setTcpNoDelay(True)
        except (AttributeError, OSError):
            pass                        # not TCP (UNIX socket, test transport)
        if self.ctx is not None:
            self.ctx.connections.add(self)
        self._last_input = self.clock.seconds()
        self._idle_call = self.clock.callLater(self.idle_timeout, self._check_idle)
        if self.ctx is not None and self.ctx.stopping:
            self.refuse_stopping()
            return
        self.greet()

    def connectionLost(self, reason=protocol.connectionDone):
        self.closing = True
        if self._idle_call is not None and self._idle_call.active():
            self._idle_call.cancel()
        self._idle_call = None
        if self.ctx is not None:
            self.ctx.connections.discard(self)
        self.connection_closed()

    def connection_closed(self) -> None:
        """Release what the session holds (subclasses)."""

    def send(self, line: str | bytes) -> None:
        """Write one reply line (CRLF added)."""
        if isinstance(line, str):
            line = line.encode("utf-8")
        self.write(line + b"\r\n")

    def write(self, data: bytes) -> None:
        """Write output in order with ``send``.  With ``cork_replies``, the replies to a batch of
        pipelined input leave in one write when the batch is done (or waits for more input),
        also across commands that went asynchronous (an RCPT's user lookup): a pipelined MAIL,
        RCPT and DATA get one packet, not three system calls (each a chance for a pool thread
        to take the GIL from the reactor)."""
        if self._corked is not None:
            self._corked.append(data)
        else:
            write_now(self.transport, data)

    def flush(self) -> None:
        """Write what is held now, and hold nothing more until the next batch of input: before
        the transport changes (STARTTLS) or closes."""
        out, self._corked = self._corked, None
        if out:
            write_now(self.transport, b"".join(out))

    def close(self) -> None:
        """Stop reading and close once pending output is written."""
        self.closing = True
        self._buffer.clear()
        self.flush()
        self.transport.loseConnection()

    def event(self, **kw) -> dict:
        """Fields every log line of this session carries."""
        return dict(session=self.session, peer=self.peer, user=self.user, **kw)

    # --- idle timeout -------------------------------------------------------------------------------

    def _check_idle(self):
        self._idle_call = None
        if self.closing:
            return
        now = self.clock.seconds()
        remaining = self._last_input + self.idle_timeout - now
        # A running command (storage, auth) postpones the timeout; a client that stopped reading
        # a streamed response does not.
        if remaining > 0 or (self._busy and not self.streaming):
            self._idle_call = self.clock.callLater(max(remaining, 1.0), self._check_idle)
            return
        self.log.info("{peer} disconnected for inactivity", **self.event())
        self.idle_timeout_reached()
        if self.streaming:
            # Its output will never drain: a graceful close would wait for it forever.
            self.closing = True
            self.transport.abortConnection()
        else:
            self.close()

    def note_progress(self) -> None:
        """The client is still there (it read part of a streamed response)."""
        self._last_input = self.clock.seconds()

    # --- input --------------------------------------------------------------------------------------

    def dataReceived(self, data: bytes):
        if self.closing:
            return
        self._last_input = self.clock.seconds()
        self._buffer += data
        self._pump()

    def _pump(self) -> None:
        """Handle buffered input until a command goes asynchronous or input runs out."""
        if self._pumping:
            return
        self._pumping = True
        if self.cork_replies and self._corked is None:
            self._corked = []
        try:
            while not self._busy and not self.closing and self._buffer:
                if self.raw_mode:
                    result = self._call(self.raw_received, self._buffer)
                    if result is None and self.raw_mode:
                        break           # raw_received wants more bytes
                    continue
                if not self._next_line():
                    break
        finally:
            self._pumping = False
            if not (self._busy and self._buffer):
                self.flush()        # replies are held only while more pipelined input waits
        self._flow_control()

    def _next_line(self) -> bool:
        """Take one line off the buffer and handle it; False when no full line is buffered."""
        buf = self._buffer
        end = buf.find(b"\n")
        if self._skipping:
            if end < 0:
                buf.clear()
                return False
            del buf[:end + 1]
            self._skipping = False
            return True
        if end < 0:
            if len(buf) > self.max_line_length:
                buf.clear()
                self._skipping = True
                self._call(self.line_too_long)
            return False
        line = bytes(buf[:end])
        del buf[:end + 1]
        if line.endswith(b"\r"):
            line = line[:-1]
        if len(line) > self.max_line_length:
            self._call(self.line_too_long)
            return True
        self._call(self.line_received, line)
        return True

    def _call(self, fn, *args):
        """Run a handler; when it returns a coroutine or Deferred, hold further input until done.
        Returns what the handler returned (None for a plain synchronous handler)."""
        try:
            result = fn(*args)
        except Exception:
            self._failed(Failure())
            return True
        if isinstance(result, Coroutine):
            result = defer.Deferred.fromCoroutine(result)
        if isinstance(result, defer.Deferred):
            self._busy = True
            result.addErrback(self._failed)
            result.addBoth(self._command_done)
        return result

    def _command_done(self, _):
        self._busy = False
        if not self._pumping:        # finished later, from the reactor: carry on with the queue
            self._pump()

    def _failed(self, failure: Failure):
        self.log.failure("internal error in {peer} session {session}", failure, **self.event())
        if self.closing:
            return
        in_raw_mode, self.raw_mode = self.raw_mode, False
        try:
            self.internal_error()
        except Exception:
            self.log.failure("internal error reply failed", **self.event())
            in_raw_mode = True
        if in_raw_mode:
            # What follows in the buffer is message data, not commands: never run it.
            self.close()

    def _flow_control(self) -> None:
        """Pause reading while too much input waits; resume when it drained."""
        if self.closing or self.transport is None:
            return
        waiting = len(self._buffer) > self.max_buffer
        if waiting and not self._paused:
            self._paused = True
            self.transport.pauseProducing()
        elif not waiting and self._paused:
            self._paused = False
            self.transport.resumeProducing()

    # --- for subclasses -------------------------------------------------------------------------

    def raw_received(self, buffer: bytearray):
        """Raw mode: consume bytes from ``buffer`` (delete what was used).  Return None when more
        bytes are needed, True when raw mode ended synchronously, or a Deferred/coroutine."""
        raise NotImplementedError

    def greet(self) -> None:
        raise NotImplementedError

    def refuse_stopping(self) -> None:
        """A connection arrived while the server is stopping."""
        self.close()

    def line_received(self, line: bytes):
        raise NotImplementedError

    def line_too_long(self) -> None:
        raise NotImplementedError

    def internal_error(self) -> None:
        raise NotImplementedError

    def idle_timeout_reached(self) -> None:
        """Send the goodbye line (the connection is closed afterwards)."""


class LineServerFactory(protocol.Factory):
    """Builds protocols with the server context and the reactor."""

    protocol_class: type = LineServerProtocol
    noisy = False               # no "starting on port" lines: the server logs its listeners

    def __init__(self, ctx, clock=None):
        self.ctx = ctx
        if clock is None:
            from twisted.internet import reactor as clock
        self.clock = clock

    def buildProtocol(self, addr):
        p = self.protocol_class(self.ctx)
        p.factory = self
        p.clock = self.clock
        self.configure(p)
        return p

    def configure(self, proto) -> None:
        """Set per-protocol limits from the configuration (subclasses)."""
