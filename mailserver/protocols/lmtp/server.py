"""LMTP server (RFC 2033 over RFC 5321's commands): delivers into each recipient's INBOX.

One reply per accepted recipient after DATA, in RCPT order, each sent once that recipient's save
has committed (deliveries run in parallel).  Pipelined commands are handled in order by the
line-protocol base, including the asynchronous RCPT lookups.
"""

from __future__ import annotations

import time

from twisted.internet import defer
from twisted.logger import Logger

from mailserver.auth import AuthUnavailable
from mailserver.protocols.linebased import LineServerFactory, LineServerProtocol
from mailserver.protocols.lmtp.message import DataReader, PathError, parse_path, recipient_username, trace_headers
from mailserver.storage.errors import ErrorKind, StorageError

log = Logger(namespace="mailserver.lmtp")

_BODY_TYPES = ("7BIT", "8BITMIME")


class Recipient:
    __slots__ = ("address", "username", "detail")

    def __init__(self, address: str, username: str, detail: str):
        self.address = address
        self.username = username        # normalised, known to the passdb
        self.detail = detail


class LMTPServer(LineServerProtocol):
    """One LMTP connection.  Limits come from ``[lmtp]`` through the factory."""

    log = log
    max_message_size = 50 * 1024 * 1024
    max_recipients = 1000
    recipient_delimiter = "+"
    hostname = "localhost"

    def __init__(self, ctx=None):
        super().__init__(ctx)
        self.lhlo = ""
        self._reset()

    def _reset(self) -> None:
        self.sender: str | None = None
        self.recipients: list[Recipient] = []
        self.reader: DataReader | None = None

    # --- framing ------------------------------------------------------------------------------------

    def greet(self):
        self.send(f"220 {self.hostname} LMTP ready")

    def refuse_stopping(self):
        self.send(f"421 4.3.2 {self.hostname} Server shutting down")
        self.close()

    def shutdown(self):
        """Called by the server at shutdown (after in-flight writes finished)."""
        if not self.closing:
            self.send(f"421 4.3.2 {self.hostname} Server shutting down")
            self.close()

    def idle_timeout_reached(self):
        self.send(f"421 4.4.2 {self.hostname} Disconnected for inactivity")

    def line_too_long(self):
        self.send("500 5.5.2 Line too long")

    def internal_error(self):
        self.send("451 4.3.0 Internal error")

    def connection_closed(self):
        if self.reader is not None:
            log.info("connection lost during DATA, nothing delivered", **self.event())
        self._reset()

    # --- commands -----------------------------------------------------------------------------------

    def line_received(self, line: bytes):
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError:
            self.send("501 5.5.4 Command is not valid UTF-8")
            return None
        verb, _, arg = text.partition(" ")
        handler = getattr(self, "cmd_" + verb.upper(), None) if verb.isalpha() and verb.isascii() else None
        if handler is None:
            self.send("500 5.5.1 Unknown command")
            return None
        return handler(arg)

    def cmd_LHLO(self, arg: str):
        name = arg.strip()
        if not name or " " in name or any(ord(c) < 0x21 or ord(c) == 0x7F for c in name):
            self.send("501 5.5.4 Invalid LHLO parameter")
            return
        self.lhlo = name
        self._reset()
        self.transport.write(
            f"250-{self.hostname}\r\n250-8BITMIME\r\n250-ENHANCEDSTATUSCODES\r\n250-PIPELINING\r\n"
            f"250 SIZE {self.max_message_size}\r\n".encode())

    def _stopping(self) -> bool:
        """Refuse new transactions while the server shuts down (in-flight ones finish)."""
        if self.ctx is not None and self.ctx.stopping:
            self.shutdown()
            return True
        return False

    def cmd_MAIL(self, arg: str):
        if self._stopping():
            return
        if not self.lhlo:
            self.send("503 5.5.1 Send LHLO first")
            return
        if self.sender is not None:
            self.send("503 5.5.1 MAIL already given")
            return
        if not arg[:5].upper() == "FROM:":
            self.send("501 5.5.4 Syntax: MAIL FROM:<address> [parameters]")
            return
        try:
            sender, params = parse_path(arg[5:], allow_null=True)
        except PathError as e:
            self.send(f"501 5.5.4 Invalid FROM: {e}")
            return
        for key, value in params.items():
            if key == "SIZE":
                if not value.isdigit() or len(value) > 20:
                    self.send("501 5.5.4 Invalid SIZE parameter")
                    return
                if int(value) > self.max_message_size:
                    self.send("552 5.3.4 Message size exceeds fixed maximum message size")
                    return
            elif key == "BODY":
                if value.upper() not in _BODY_TYPES:
                    self.send("501 5.5.4 Unsupported BODY parameter")
                    return
            else:
                self.send(f"555 5.5.4 Unsupported parameter {key}")
                return
        self.sender = sender
        self.send("250 2.1.0 OK")

    async def cmd_RCPT(self, arg: str):
        if self.sender is None:
            self.send("503 5.5.1 MAIL needed first")
            return
        if not arg[:3].upper() == "TO:":
            self.send("501 5.5.4 Syntax: RCPT TO:<address>")
            return
        try:
            address, params = parse_path(arg[3:], allow_null=False)
        except PathError as e:
            self.send(f"501 5.5.4 Invalid TO: {e}")
            return
        if params:
            self.send(f"555 5.5.4 Unsupported parameter {next(iter(params))}")
            return
        if len(self.recipients) >= self.max_recipients:
            self.send("452 4.5.3 Too many recipients")
            return
        name, detail = recipient_username(address, self.recipient_delimiter)
        try:
            record = await self.ctx.auth.lookup(name)
        except AuthUnavailable as e:
            log.error("RCPT {address}: user lookup failed: {error}", address=address, error=str(e),
                      **self.event())
            self.send(f"451 4.3.0 <{address}> Temporary internal error")
            return
        if record is None:
            log.info("RCPT {address}: unknown user {name}", address=address, name=name, **self.event())
            self.send(f"550 5.1.1 <{address}> User doesn't exist: {name}")
            return
        self.recipients.append(Recipient(address, record.username, detail))
        self.send("250 2.1.5 OK")

    def cmd_DATA(self, arg: str):
        if self.sender is None:
            self.send("503 5.5.1 MAIL needed first")
            return
        if not self.recipients:
            self.send("503 5.5.1 No valid recipients")
            return
        if arg.strip():
            self.send("501 5.5.4 DATA takes no parameters")
            return
        if self._stopping():
            return
        self.send("354 OK")
        self.reader = DataReader(self.max_message_size)
        self.raw_mode = True

    def cmd_RSET(self, arg: str):
        self._reset()
        self.send("250 2.0.0 OK")

    def cmd_NOOP(self, arg: str):
        self.send("250 2.0.0 OK")

    def cmd_QUIT(self, arg: str):
        self.send(f"221 2.0.0 {self.hostname} Bye")
        self.close()

    def cmd_VRFY(self, arg: str):
        self.send("252 2.3.3 Try RCPT instead")

    def cmd_HELP(self, arg: str):
        self.send("214 2.0.0 Commands: LHLO MAIL RCPT DATA RSET NOOP QUIT VRFY HELP")

    # --- DATA and delivery -------------------------------------------------------------------------

    def raw_received(self, buffer: bytearray):
        rest = self.reader.feed(buffer)
        if rest is None:
            return None
        self.raw_mode = False
        buffer[:0] = rest               # pipelined commands after the final dot
        return self._deliver_all()

    async def _deliver_all(self):
        reader, recipients, sender = self.reader, self.recipients, self.sender
        self._reset()
        body = reader.message()
        if reader.too_big:
            log.info("message from <{sender}> over {limit} bytes refused", sender=sender,
                     limit=self.max_message_size, **self.event())
            for rcpt in recipients:
                self.send(f"552 5.3.4 <{rcpt.address}> Message too big for system")
            return
        data = trace_headers(sender, [r.address for r in recipients], self.lhlo, self.peer_host,
                             self.hostname, self.session) + body
        now = int(time.time())
        pending = [defer.Deferred.fromCoroutine(self._deliver(rcpt, data, now)) for rcpt in recipients]
        for rcpt, d in zip(recipients, pending):
            self.send(await d)

    async def _deliver(self, rcpt: Recipient, data: bytes, internaldate: int) -> str:
        """Save into one recipient's INBOX; the reply line for that recipient."""
        event = self.event(recipient=rcpt.address, rcpt_user=rcpt.username, size=len(data))
        try:
            user = await self.ctx.storage.open_user(rcpt.username)
            try:
                tx = user.begin_save("INBOX")
                try:
                    await tx.add(data, flags=(), internaldate=internaldate)
                    result = await tx.commit()
                except BaseException:
                    await _rollback(tx, event)
                    raise
            finally:
                await user.close()
        except StorageError as e:
            return self._storage_failure(rcpt, e, event)
        except Exception:
            log.failure("delivery to {recipient} failed", **event)
            return f"451 4.3.0 <{rcpt.address}> Temporary internal error"
        log.info("saved mail to {rcpt_user} INBOX uid {uid} ({size} bytes)",
                 uid=result.uids[0] if result.uids else "?", **event)
        return f"250 2.0.0 <{rcpt.address}> {self.session} Saved"

    def _storage_failure(self, rcpt: Recipient, e: StorageError, event: dict) -> str:
        if e.kind is ErrorKind.OVER_QUOTA:
            log.info("delivery to {recipient}: over quota: {detail}", detail=e.detail, **event)
            return f"552 5.2.2 <{rcpt.address}> Quota exceeded (mailbox for user is full)"
        if e.kind is ErrorKind.TOO_BIG:
            log.info("delivery to {recipient}: too big: {detail}", detail=e.detail, **event)
            return f"552 5.3.4 <{rcpt.address}> Message too big for system"
        if e.kind is ErrorKind.TEMPORARY:
            log.warn("delivery to {recipient}: temporary failure: {detail}", detail=e.detail, **event)
        else:
            log.error("delivery to {recipient} failed ({kind}): {detail}", kind=e.kind.value,
                      detail=e.detail, **event)
        return f"451 4.3.0 <{rcpt.address}> Temporary internal error"


async def _rollback(tx, event: dict) -> None:
    try:
        await tx.rollback()
    except Exception:
        log.failure("rollback after a failed delivery failed", **event)


class LMTPFactory(LineServerFactory):
    protocol_class = LMTPServer

    def configure(self, proto: LMTPServer) -> None:
        c = self.ctx.config
        proto.max_line_length = c.lmtp.max_line_length
        proto.idle_timeout = c.lmtp.idle_timeout
        proto.max_message_size = c.lmtp.max_message_size
        proto.max_recipients = c.lmtp.max_recipients
        proto.recipient_delimiter = c.lmtp.recipient_delimiter
        proto.hostname = c.server.hostname
