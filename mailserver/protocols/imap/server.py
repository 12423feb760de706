"""The IMAP connection: input parsing, the per-connection command queue, states, timeouts.

Bytes from the transport go to the one ``CommandParser``; complete commands are queued and run
strictly one after the other (the next starts when the previous tagged answer is written) while
the parser keeps reading, up to ``max_pipelined_commands`` queued commands, after which reading
pauses.  AUTHENTICATE and IDLE read client lines themselves, so parsing stops behind them until
they finish.  A handler's unexpected exception is logged with its traceback and answered
``NO [SERVERBUG]``; the connection goes on.
"""

from __future__ import annotations

import collections
import secrets

from twisted.internet import defer
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure

from mailserver import tls
from mailserver.storage.errors import ErrorKind, StorageError

from . import commands
from .commands import Done, State, Sync
from .commands.quota import capabilities as quota_capabilities
from .extensions import EXTENSIONS_A
from .errors import CommandError, is_server_fault, storage_answer
from .parser import CONTINUE, Args, BadSyntax, Command, CommandParser, LineTooLong, ParseError
from .response import ResponseWriter, status_line

log = Logger(namespace="mailserver.imap")

_READ_SLACK = 64 * 1024
SEND_BUFFER = 256 * 1024     # bytes queued in the transport before the response writer pauses


def _peer_text(addr) -> str:
    host = getattr(addr, "host", None)
    port = getattr(addr, "port", None)
    if host is None:
        return str(addr)
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class IMAPServerProtocol(Protocol):
    """One IMAP connection (and its session state, used by the command handlers):

    ``state``, ``username``, ``user`` (storage ``User``), ``selected`` (``Selected`` or None),
    ``writer`` (``ResponseWriter``), ``ctx``, ``config`` (the ``[imap]`` section), ``utf8``.
    """

    def __init__(self, ctx, clock=None):
        if clock is None:
            from twisted.internet import reactor as clock
        self.ctx = ctx
        self.config = ctx.config.imap
        self.clock = clock
        self.commands = commands.load()
        self.parser = CommandParser(self.config.max_line_length, self.config.max_literal_size,
                                    max_nonsync_literal=None if self.config.literal_plus else 4096)
        self.session_id = secrets.token_urlsafe(9)
        self.state = State.NOT_AUTHENTICATED
        self.username: str | None = None
        self.user = None
        self.selected = None
        self.utf8 = False
        self.enabled: set[str] = set()      # ENABLEd extensions (CONDSTORE, QRESYNC, IMAP4REV2...)
        self.notify = None                  # active NOTIFY SET (commands/notify.py)
        self.idling = False                 # in IDLE (counted against [imap] max_idle_per_user)
        self.compression = None             # compress.Deflate once COMPRESS=DEFLATE is active
        self._after_reply: list = []        # run once the tagged answer is handed to the transport
        self.auth_failures = 0
        self.peer = ""
        self.writer: ResponseWriter | None = None
        # bytes: close once the command is answered, after writing them (LOGOUT, auth failures)
        self.close_after_reply: bytes | None = None
        self._waiting_input = False         # a command waits for the client (IDLE, AUTHENTICATE)
        self._queue: collections.deque = collections.deque()
        self._running = False
        self._input_owner = None            # command that reads input itself / stops parsing
        self._waiter: defer.Deferred | None = None
        self._woken = False                 # a wake came while nobody was waiting
        self._reading_paused = False
        self._closing = False               # decided to close: ignore further input
        self._closed = False                # connection lost
        self._timer = None

    # --- logging --------------------------------------------------------------------------------
    def log_fields(self) -> dict:
        return {"session": self.session_id, "user": self.username or "-", "peer": self.peer}

    def debug(self, fmt: str, **kw) -> None:
        log.debug("imap session={session} user={user} peer={peer}: " + fmt, **self.log_fields(), **kw)

    def info(self, fmt: str, **kw) -> None:
        log.info("imap session={session} user={user} peer={peer}: " + fmt, **self.log_fields(), **kw)

    def warn(self, fmt: str, **kw) -> None:
        log.warn("imap session={session} user={user} peer={peer}: " + fmt, **self.log_fields(), **kw)

    # --- capabilities ---------------------------------------------------------------------------
    def capabilities(self) -> list[str]:
        """What this server implements, for CAPABILITY and the greeting/LOGIN response codes."""
        caps = ["IMAP4rev1", "LITERAL+" if self.config.literal_plus else "LITERAL-", "SASL-IR", "ID",
                "ENABLE", "IDLE", "NAMESPACE", "UNSELECT",
                "UIDPLUS", "CHILDREN", "SPECIAL-USE", "MOVE", "MULTIAPPEND", "STATUS=SIZE",
                f"APPENDLIMIT={self.config.max_literal_size}"]
        caps += EXTENSIONS_A
        caps += ["BINARY", "CATENATE", "REPLACE", "UTF8=ACCEPT", "OBJECTID", "SAVEDATE", "PREVIEW"]
        if self.state is State.NOT_AUTHENTICATED:
            caps += tls.auth_capabilities(self.ctx, self.transport, self.peer,
                                          starttls=self.compression is None)
        else:
            caps += ["COMPRESS=DEFLATE", "UNAUTHENTICATE"]
            if self.ctx.dict is not None:
                caps += ["URLAUTH", "METADATA"]
            # Post-login only, as Dovecot's imap_quota plugin adds them.
            caps += quota_capabilities(self.ctx.config.quota.enabled)
        return caps

    @property
    def plaintext_ok(self) -> bool:
        """May this client send a password in the clear (TLS, or a plaintext_networks peer)?"""
        return tls.plaintext_ok(self.ctx, self.transport, self.peer)

    # --- connection -----------------------------------------------------------------------------
    def connectionMade(self) -> None:
        set_nodelay = getattr(self.transport, "setTcpNoDelay", None)
        if set_nodelay is not None:
            try:
                set_nodelay(True)
            except OSError:
                pass
        self.peer = _peer_text(self.transport.getPeer())
        if isinstance(getattr(self.transport, "bufferSize", None), int):
            # Twisted pauses the writer each time this much is queued: at its 64 KB default a
            # big FETCH spends its time in pause/resume rounds instead of writing.
            self.transport.bufferSize = max(self.transport.bufferSize, SEND_BUFFER)
        self.writer = ResponseWriter(self.transport)
        self.ctx.connections.add(self)
        if self.ctx.stopping:
            self._close(b"* BYE Server shutting down\r\n")
            return
        self.writer.write(status_line("*", "OK", "Server ready", "CAPABILITY " + " ".join(self.capabilities())))
        self.writer.flush()
        self._timer = self.clock.callLater(self.config.idle_timeout, self._timed_out)

    def dataReceived(self, data: bytes) -> None:
        if self._closing:
            return
        if self._timer is not None and self._timer.active():
            self._timer.reset(self.config.idle_timeout)
        if self.compression is not None:
            self.compression.received(data)     # inflated, then handed to plain_received
            return
        self.plain_received(data)

    def plain_received(self, data: bytes) -> None:
        """Client bytes as the protocol sees them (after COMPRESS inflation)."""
        if self._closing:
            return
        self.parser.feed(data)
        self._wake()
        self._pump()

    def connectionLost(self, reason=None) -> None:
        self._closed = True
        if self.writer is not None:
            self.writer.closed = True
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        self.ctx.connections.discard(self)
        if self.parser.in_command and not self._closing:
            self.info("client disconnected in the middle of a command ({n} bytes unread)",
                      n=self.parser.buffered)
        if not self._closing:
            self.info("disconnected")
        self._wake()
        if not self._running:
            self._release()

    def shutdown(self) -> None:
        """Server shutdown: say BYE and close (called by mailserver.server)."""
        if not self._closed:
            self._close(b"* BYE Server shutting down\r\n")

    def _close(self, last: bytes = b"") -> None:
        """Write ``last``, flush and close; nothing more is read or run."""
        if self._closing:
            return
        self._closing = True
        self._queue.clear()
        if self.writer is not None:
            if last:
                self.writer.write(last)
            self.writer.flush()
        self.transport.loseConnection()

    def _timed_out(self) -> None:
        self._timer = None
        if self._running and not self._waiting_input:
            # A long command is running and the client is waiting for it: not idle.
            self._timer = self.clock.callLater(self.config.idle_timeout, self._timed_out)
            return
        self.info("idle timeout")
        self._close(b"* BYE Disconnecting for inactivity\r\n")

    def _release(self) -> None:
        """Give back the selected mailbox and the user's storage (after the connection ended)."""
        selected, user, notify = self.selected, self.user, self.notify
        self.selected = self.user = self.notify = None
        if notify is not None:
            defer.Deferred.fromCoroutine(notify.stop()).addErrback(
                lambda f: log.failure("imap session={session}: stopping NOTIFY failed", f,
                                      session=self.session_id))

        async def release():
            if selected is not None:
                await selected.close()
            if user is not None:
                await user.close()

        if selected is not None or user is not None:
            defer.Deferred.fromCoroutine(release()).addErrback(
                lambda f: log.failure("imap session={session}: releasing storage failed", f,
                                      session=self.session_id))

    # --- input ----------------------------------------------------------------------------------
    def _pump(self) -> None:
        """Parse queued bytes into commands (bounded), then make sure the runner runs."""
        if self._closing or self._closed:
            return
        limit = self.config.max_pipelined_commands
        while self._input_owner is None and len(self._queue) < limit:
            event = self.parser.next()
            if event is None:
                break
            if event is CONTINUE:
                # Between two whole responses: the writer never holds half of one.
                self.writer.write(b"+ OK\r\n")
                self.writer.flush()
                continue
            self._queue.append(event)
            if isinstance(event, ParseError):
                if event.fatal:
                    self._input_owner = event
            else:
                spec = self.commands.get(event.name)
                if event.name == "LOGOUT" or (spec is not None and spec.takes_input):
                    self._input_owner = event
        self._flow_control()
        if self._queue and not self._running:
            self._running = True
            defer.Deferred.fromCoroutine(self._run()).addErrback(self._runner_failed)

    def _flow_control(self) -> None:
        """Stop reading while the queue is full or unparsed input piles up; resume after."""
        if self._closed:
            return
        if self._input_owner is not None:
            limit = self.config.max_line_length + _READ_SLACK
        else:
            limit = self.parser.max_command_size + _READ_SLACK
        full = len(self._queue) >= self.config.max_pipelined_commands or self.parser.buffered > limit
        if full and not self._reading_paused:
            self._reading_paused = True
            self.transport.pauseProducing()
        elif not full and self._reading_paused:
            self._reading_paused = False
            self.transport.resumeProducing()
            if self.compression is not None:
                self.compression.resume()       # inflate what arrived before the pause

    @property
    def reading_paused(self) -> bool:
        return self._reading_paused

    def _wake(self) -> None:
        """Input arrived, the connection ended, or the selected mailbox changed."""
        waiter, self._waiter = self._waiter, None
        if waiter is not None:
            waiter.callback(None)
        else:
            self._woken = True      # nobody waits now: the next wait_event returns at once

    async def wait_event(self, timeout: float | None = None) -> None:
        """Wait for input, a change of the selected mailbox, the end of the connection, or
        ``timeout`` seconds."""
        if self._closed or self._woken:
            self._woken = False
            return
        d = defer.Deferred()
        self._waiter = d
        call = None
        if timeout is not None:
            call = self.clock.callLater(timeout, self._wake)
        self._waiting_input = True
        try:
            await d
        finally:
            self._waiting_input = False
            if call is not None and call.active():
                call.cancel()

    def try_read_line(self) -> bytes | None:
        """A raw client line if one is buffered (for AUTHENTICATE and IDLE).
        Raises CommandError (BAD [TOOBIG]) when the line is too long."""
        try:
            line = self.parser.read_line()
        except LineTooLong:
            raise CommandError("BAD", "Line too long", "TOOBIG") from None
        self._flow_control()
        return line

    async def read_line(self) -> bytes | None:
        """The next raw client line; None if the connection ended first."""
        while True:
            line = self.try_read_line()
            if line is not None:
                return line
            if self._closed or self._closing:
                return None
            await self.wait_event()

    @property
    def closed(self) -> bool:
        return self._closed or self._closing

    # --- running commands -----------------------------------------------------------------------
    async def _run(self) -> None:
        try:
            while self._queue and not self._closing and not self._closed:
                item = self._queue.popleft()
                if isinstance(item, ParseError):
                    self._answer_parse_error(item)
                else:
                    await self._execute(item)
                if item is self._input_owner:
                    self._input_owner = None
                if self.close_after_reply is not None and not self._closing:
                    self._close(self.close_after_reply)
                    break
                if self.writer.paused:
                    await self.writer.drain()
                self.writer.flush()
                if self._after_reply:
                    hooks, self._after_reply = self._after_reply, []
                    for hook in hooks:
                        hook()
                self._pump()
        finally:
            self._running = False
            if self._closed:
                self._release()

    def _runner_failed(self, failure: Failure) -> None:
        log.failure("imap session={session}: command runner failed", failure, session=self.session_id)
        self._close(b"* BYE Internal server error\r\n")

    def _answer_parse_error(self, error: ParseError) -> None:
        self.info("refused command: {text}", text=error.text)
        self.writer.write(status_line(error.tag or "*", error.status, error.text, error.code))
        if error.fatal:
            self._close(b"* BYE " + (b"[%s] " % error.code.encode() if error.code else b"")
                        + error.text.encode() + b"\r\n")

    async def _execute(self, cmd: Command) -> None:
        args = Args(cmd.args)
        name = cmd.name
        kwargs = {}
        spec = self.commands.get(name)
        if name == "UID":
            sub = args.peek_atom()
            spec = self.commands.get(sub) if sub else None
            if spec is None or not spec.uid:
                self.writer.write(status_line(cmd.tag, "BAD", "Unknown UID command" if sub else "Missing UID command"))
                return
            args.next("UID command")
            name = "UID " + sub
            kwargs["uid"] = True
        elif spec is not None and spec.uid:
            kwargs["uid"] = False
        if spec is None:
            self.writer.write(status_line(cmd.tag, "BAD", "Unknown command"))
            return
        if self.state not in spec.states:
            self.writer.write(status_line(cmd.tag, "BAD", self._state_error(spec)))
            return
        status, code, text = "OK", None, f"{spec.name} completed"
        try:
            result = await spec.handler(self, cmd.tag, args, **kwargs)
            if isinstance(result, Done):
                code, text = result.code, result.text
            elif isinstance(result, str):
                text = result
        except BadSyntax as e:
            status, text = "BAD", f"Error in IMAP command {name}: {e.text}"
        except CommandError as e:
            status, code, text = e.status, e.code, e.text
            if isinstance(e.__cause__, StorageError):
                self._log_storage_error(name, e.__cause__)
        except StorageError as e:
            answer = storage_answer(e)
            status, code, text = answer.status, answer.code, answer.text
            self._log_storage_error(name, e)
        except Exception:
            log.failure("imap session={session} user={user} peer={peer}: {command} failed",
                        Failure(), command=name, **self.log_fields())
            status, code, text = "NO", "SERVERBUG", "Internal server error; the administrator was told"
        self.idling = False
        if self._closed:
            return
        if self.selected is not None and spec.sync is not Sync.NONE:
            await self._sync(spec.sync)
        if not self._closing:
            self.writer.write(status_line(cmd.tag, status, text, code))

    def _log_storage_error(self, command: str, error: StorageError) -> None:
        """The detail of a storage error goes to the log (the client got a response code)."""
        (self.warn if is_server_fault(error) else self.info)(
            "{command}: storage error {kind}: {detail}", command=command, kind=error.kind.value,
            detail=error.detail)

    async def _sync(self, mode: Sync) -> None:
        """Report changes of the selected mailbox as the command allows."""
        try:
            await self.selected.sync(self.writer, expunges=mode is not Sync.NO_EXPUNGE,
                                     force=mode is Sync.FORCE)
        except StorageError as e:
            if e.kind is ErrorKind.NOT_FOUND:
                self.info("selected mailbox disappeared: {detail}", detail=e.detail)
                self._close(b"* BYE Selected mailbox was deleted, have to disconnect\r\n")
            else:
                self.warn("refresh failed: storage error {kind}: {detail}", kind=e.kind.value, detail=e.detail)
        except Exception:
            log.failure("imap session={session}: refresh failed", Failure(), session=self.session_id)

    def _state_error(self, spec) -> str:
        if self.state is State.NOT_AUTHENTICATED:
            return "Not logged in"
        if State.NOT_AUTHENTICATED in spec.states:
            return "Already logged in"
        if self.state is State.AUTHENTICATED and State.SELECTED in spec.states:
            return "No mailbox selected"
        return "Command not valid in this state"

    # --- session changes used by handlers -------------------------------------------------------
    async def unselect(self) -> None:
        """Leave the selected state (the mailbox view is released)."""
        selected, self.selected = self.selected, None
        if self.state is State.SELECTED:
            self.state = State.AUTHENTICATED
        if selected is not None:
            await selected.close()

    def wake(self) -> None:
        """Called when the selected mailbox changed (IDLE reports it at once; so does NOTIFY
        when no command is running)."""
        self._wake()
        if self.notify is not None:
            self.notify.selected_changed()

    @property
    def busy(self) -> bool:
        """A command is running or queued (unsolicited updates must wait for its end)."""
        return self._running or bool(self._queue)

    def after_reply(self, hook) -> None:
        """Run ``hook()`` once the current command's tagged answer has been handed to the
        transport (COMPRESS starts compressing only after its OK)."""
        self._after_reply.append(hook)

    async def unauthenticate(self) -> None:
        """RFC 8437: back to the not-authenticated state, as after the greeting (TLS and
        COMPRESS stay; the user's storage and every ENABLEd extension are released)."""
        await self.unselect()
        notify, self.notify = self.notify, None
        if notify is not None:
            await notify.stop()
        user, self.user = self.user, None
        self.username = None
        self.state = State.NOT_AUTHENTICATED
        self.utf8 = False
        enabled = getattr(self, "enabled", None)
        if isinstance(enabled, set):
            enabled.clear()
        if user is not None:
            await user.close()


class IMAPServerFactory(Factory):
    """Builds an ``IMAPServerProtocol`` per connection; ``clock`` is the reactor (a
    ``task.Clock`` in tests)."""

    def __init__(self, ctx, clock=None):
        self.ctx = ctx
        self.clock = clock
        commands.load()     # import every command module now, not on the first connection

    def buildProtocol(self, addr):
        proto = IMAPServerProtocol(self.ctx, self.clock)
        proto.factory = self
        return proto
