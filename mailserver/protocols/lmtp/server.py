"""LMTP server (RFC 2033 over RFC 5321's commands): delivers into each recipient's INBOX (or
detail mailbox).

Extensions: PIPELINING, 8BITMIME, ENHANCEDSTATUSCODES, SIZE, SMTPUTF8 (RFC 6531), CHUNKING and
BINARYMIME (RFC 3030, BDAT), and XCLIENT (Postfix's, from ``[lmtp] trusted_networks`` only).
One reply per accepted recipient after DATA or BDAT LAST, in RCPT order, each sent once that
recipient's save has committed (deliveries run in parallel, see delivery.py).  Pipelined commands
are handled in order by the line-protocol base, including the asynchronous RCPT lookups.
"""

from __future__ import annotations

import ipaddress
import time

from twisted.logger import Logger

from mailserver import tls
from mailserver.auth import AuthUnavailable
from mailserver.protocols.linebased import LineServerFactory, LineServerProtocol
from mailserver.protocols.lmtp.delivery import Recipient, deliver, quota_reply
from mailserver.protocols.lmtp.message import (ChunkReader, DataReader, PathError, body_problem, normalize_crlf,
                                               parse_path, recipient_username, trace_headers, xtext_decode)
from mailserver.storage.errors import ErrorKind, StorageError

log = Logger(namespace="mailserver.lmtp")

_BODY_TYPES = ("7BIT", "8BITMIME", "BINARYMIME")
# Postfix's XCLIENT attributes that we take (others are refused with 501).
_XCLIENT_ATTRS = ("ADDR", "HELO", "LOGIN", "NAME", "PORT", "PROTO")
_MAX_CHUNK_DIGITS = 20


class LMTPServer(LineServerProtocol):
    """One LMTP connection.  Limits come from ``[lmtp]`` through the factory."""

    log = log
    cork_replies = True
    max_message_size = 50 * 1024 * 1024
    max_recipients = 1000
    recipient_delimiter = "+"
    hostname = "localhost"
    save_to_detail_mailbox = False
    add_received_header = True
    max_body_line_length = 1000
    trusted_networks: tuple = ()
    quota_enabled = False               # [quota] enabled: RCPT checks a SIZE= against the quota
    quota_tempfail = False              # [quota] full_tempfail: 452 4.2.2 instead of 552 5.2.2

    def __init__(self, ctx=None):
        super().__init__(ctx)
        self.lhlo = ""
        self.trusted = False            # may use XCLIENT (decided on the real peer address)
        self.xclient: dict = {}         # attributes an MTA proxy sent with XCLIENT
        self._reset()

    def _reset(self) -> None:
        self.sender: str | None = None
        self.body_type = "7BIT"
        self.smtputf8 = False
        self.size_hint: int | None = None   # MAIL FROM SIZE=, checked against quota at RCPT
        self.recipients: list[Recipient] = []
        self.reader: DataReader | None = None
        self.chunks: ChunkReader | None = None

    def connectionMade(self):
        super().connectionMade()
        self.trusted = _is_trusted(self.peer_host, self.trusted_networks)

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
        if self.reader is not None or self.chunks is not None:
            log.info("connection lost during DATA or BDAT, nothing delivered", **self.event())
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
        caps = [self.hostname] + self.capabilities()
        self.write("".join(f"250-{c}\r\n" for c in caps[:-1]).encode() + f"250 {caps[-1]}\r\n".encode())

    def capabilities(self) -> list[str]:
        """LHLO keywords for this connection (STARTTLS while plaintext and [tls] is set; XCLIENT only
        to trusted peers, as Dovecot)."""
        caps = ["8BITMIME", "BINARYMIME", "CHUNKING", "ENHANCEDSTATUSCODES", "PIPELINING",
                f"SIZE {self.max_message_size}", "SMTPUTF8"]
        if tls.starttls_available(self.ctx, self.transport):
            caps.append("STARTTLS")
        if self.trusted:
            caps.append("XCLIENT " + " ".join(_XCLIENT_ATTRS))
        return caps

    def cmd_STARTTLS(self, arg: str):
        """RFC 3207.  Commands pipelined after STARTTLS in plaintext are dropped, and the session
        starts over (the client must send LHLO again)."""
        if arg.strip():
            self.send("501 5.5.4 STARTTLS takes no parameters")
            return
        if not tls.starttls_available(self.ctx, self.transport):
            self.send("503 5.5.1 TLS already active" if tls.is_secure(self.transport)
                      else "454 4.7.0 TLS not available")
            return
        if self._buffer:
            log.warn("discarded {n} bytes pipelined after STARTTLS", n=len(self._buffer), **self.event())
            self._buffer.clear()
        self.lhlo = ""
        self._reset()
        self.send("220 2.0.0 Ready to start TLS")
        self.flush()                    # in the clear, before the handshake
        tls.start_tls(self.transport, self.ctx.tls)

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
        body_type, smtputf8, size_hint = "7BIT", False, None
        for key, value in params.items():
            if key == "SIZE":
                if not value.isdigit() or len(value) > 20:
                    self.send("501 5.5.4 Invalid SIZE parameter")
                    return
                if int(value) > self.max_message_size:
                    self.send("552 5.3.4 Message size exceeds fixed maximum message size")
                    return
                size_hint = int(value)
            elif key == "BODY":
                if value.upper() not in _BODY_TYPES:
                    self.send("501 5.5.4 Unsupported BODY parameter")
                    return
                body_type = value.upper()
            elif key == "SMTPUTF8":
                if value:
                    self.send("501 5.5.4 SMTPUTF8 takes no value")
                    return
                smtputf8 = True
            else:
                self.send(f"555 5.5.4 Unsupported parameter {key}")
                return
        if not smtputf8 and not sender.isascii():
            self.send("553 5.6.7 Non-ASCII address needs the SMTPUTF8 parameter")
            return
        self.sender, self.body_type, self.smtputf8 = sender, body_type, smtputf8
        self.size_hint = size_hint
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
        if not self.smtputf8 and not address.isascii():
            self.send(f"553 5.6.7 <{address}> Non-ASCII address needs the SMTPUTF8 parameter")
            return
        if self.chunks is not None:
            self.send("503 5.5.1 RCPT not allowed after BDAT")
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
        if self.quota_enabled and self.size_hint and not await self._fits(address, record.username):
            return
        self.recipients.append(Recipient(address, record.username, detail))
        self.send("250 2.1.5 OK")

    async def _fits(self, address: str, username: str) -> bool:
        """RCPT after MAIL FROM with SIZE=: refuse a recipient now when a message of that size
        cannot fit into its INBOX (the MTA then keeps the message instead of sending it).
        Other storage trouble is left for the delivery to answer."""
        try:
            user = await self.ctx.storage.open_user(username)
            try:
                await user.check_quota("INBOX", self.size_hint)
            finally:
                await user.close()
        except StorageError as e:
            if e.kind is not ErrorKind.OVER_QUOTA:
                log.warn("RCPT {address}: quota check failed: {detail}", address=address, detail=e.detail,
                         **self.event())
                return True
            log.info("RCPT {address}: over quota for {size} bytes: {detail}", address=address,
                     size=self.size_hint, detail=e.detail, **self.event())
            code, text = quota_reply(self.quota_tempfail)
            self.send(f"{code} <{address}> {text}")
            return False
        return True

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
        if self.chunks is not None:
            self.send("503 5.5.1 DATA not allowed after BDAT")
            return
        if self.body_type == "BINARYMIME":
            self.send("503 5.5.1 BODY=BINARYMIME needs BDAT, not DATA")
            return
        if self._stopping():
            return
        self.send("354 OK")
        self.reader = DataReader(self.max_message_size)
        self.raw_mode = True

    def cmd_BDAT(self, arg: str):
        """RFC 3030: ``BDAT <size> [LAST]``, then exactly ``size`` bytes.  The bytes are read even
        when the command is refused, so the connection stays in step."""
        parts = arg.split()
        if not 1 <= len(parts) <= 2 or not parts[0].isdigit() or len(parts[0]) > _MAX_CHUNK_DIGITS or \
                (len(parts) == 2 and parts[1].upper() != "LAST"):
            self.send("501 5.5.4 Syntax: BDAT <size> [LAST]")
            return None
        size, last = int(parts[0]), len(parts) == 2
        if self.chunks is None:
            self.chunks = ChunkReader(self.max_message_size)
        self.chunks.start(size, last)
        if size == 0:
            return self._chunk_done()
        self.raw_mode = True
        return None

    def _chunk_done(self):
        """A whole chunk was read: refuse it, acknowledge it, or (LAST) deliver."""
        chunks = self.chunks
        problem = None
        if self.sender is None:
            problem = "503 5.5.1 MAIL needed first"
        elif not self.recipients:
            problem = "503 5.5.1 No valid recipients"
        elif chunks.failed:
            problem = "503 5.5.1 Previous data chunk failed, issue RSET first"
        elif self._stopping():
            return True
        if problem is not None:
            # Without a transaction there is nothing to keep; with one, only RSET clears it.
            if self.sender is None or not self.recipients:
                self.chunks = None
            else:
                chunks.failed = True
            self.send(problem)
            return True
        if chunks.too_big and not chunks.last:
            chunks.failed = True
            log.info("BDAT message from <{sender}> over {limit} bytes refused", sender=self.sender,
                     limit=self.max_message_size, **self.event())
            self.send("552 5.3.4 Message too big for system")
            return True
        if not chunks.last:
            self.send(f"250 2.0.0 Added {chunks.chunk_size} octets")
            return True
        return self._deliver_all()

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
        self.send("214 2.0.0 Commands: LHLO MAIL RCPT DATA BDAT RSET NOOP QUIT VRFY HELP STARTTLS XCLIENT")

    def cmd_XCLIENT(self, arg: str):
        """Postfix's XCLIENT from a trusted proxy: the client's address, HELO name and login for
        the Received header and logs.  Answered with a new greeting (the client sends LHLO again)."""
        if not self.trusted:
            log.warn("XCLIENT refused: {peer} is not in trusted_networks", **self.event())
            self.send("550 5.7.0 You are not from trusted IP")
            return
        if self.sender is not None:
            self.send("503 5.5.1 Mail transaction in progress")
            return
        attrs = {}
        for item in arg.split():
            name, eq, value = item.partition("=")
            name = name.upper()
            if not eq or name not in _XCLIENT_ATTRS:
                self.send(f"501 5.5.4 Unsupported XCLIENT attribute {name[:20]}")
                return
            try:
                value = xtext_decode(value)
            except ValueError:
                self.send(f"501 5.5.4 Invalid XCLIENT {name} value")
                return
            if value.upper() in ("[UNAVAILABLE]", "[TEMPUNAVAIL]"):
                value = ""
            if name == "ADDR" and value:
                if value.upper().startswith("IPV6:"):
                    value = value[5:]
                try:
                    value = str(ipaddress.ip_address(value))
                except ValueError:
                    self.send("501 5.5.4 Invalid XCLIENT ADDR value")
                    return
            if name == "PORT" and value and not (value.isdigit() and int(value) <= 65535):
                self.send("501 5.5.4 Invalid XCLIENT PORT value")
                return
            attrs[name] = value
        if not attrs:
            self.send("501 5.5.4 Syntax: XCLIENT attribute=value ...")
            return
        log.info("XCLIENT from {peer}: {attrs}", attrs=" ".join(f"{k}={v}" for k, v in attrs.items()),
                 **self.event())
        self.xclient.update(attrs)
        if attrs.get("ADDR"):
            addr, port = attrs["ADDR"], attrs.get("PORT") or "0"
            self.peer_host = addr
            self.peer = f"[{addr}]:{port}" if ":" in addr else f"{addr}:{port}"
        self.lhlo = ""
        self._reset()
        self.greet()

    # --- DATA and delivery -------------------------------------------------------------------------

    def raw_received(self, buffer: bytearray):
        if self.chunks is not None:
            if not self.chunks.feed(buffer):
                return None
            self.raw_mode = False
            return self._chunk_done()
        rest = self.reader.feed(buffer)
        if rest is None:
            return None
        self.raw_mode = False
        buffer[:0] = rest               # pipelined commands after the final dot
        return self._deliver_all()

    def _received_body(self) -> tuple[bytes | None, bool]:
        """The message of the finished DATA or BDAT (None if too big) and whether it is binary."""
        if self.chunks is not None:
            binary = self.body_type == "BINARYMIME"
            if self.chunks.too_big:
                return None, binary
            body = bytes(self.chunks.data)
            return (body if binary else normalize_crlf(body)), binary
        body = self.reader.message()
        return (None if self.reader.too_big else body), False

    async def _deliver_all(self):
        recipients, sender, utf8 = self.recipients, self.sender, self.smtputf8
        body, binary = self._received_body()
        self._reset()
        if body is None:
            log.info("message from <{sender}> over {limit} bytes refused", sender=sender,
                     limit=self.max_message_size, **self.event())
            self.write("".join(f"552 5.3.4 <{r.address}> Message too big for system\r\n"
                               for r in recipients).encode("utf-8"))
            return
        problem = None if binary else body_problem(body, self.max_body_line_length)
        if problem is not None:
            log.info("message from <{sender}> refused: {problem}", sender=sender, problem=problem, **self.event())
            self.write("".join(f"554 5.6.0 <{r.address}> {problem}\r\n"
                               for r in recipients).encode("utf-8"))
            return
        helo = self.xclient.get("HELO") or self.lhlo
        data = trace_headers(sender, [r.address for r in recipients], helo, self.peer_host,
                             self.hostname, self.session, received=self.add_received_header, utf8=utf8) + body
        replies = deliver(self.ctx.storage, recipients, data, int(time.time()), session=self.session,
                          event=self.event(), to_detail_mailbox=self.save_to_detail_mailbox,
                          quota_tempfail=self.quota_tempfail)
        ready = []                  # replies already known leave together
        for reply in replies:
            if ready and not reply.called:
                self.write("".join(ready).encode("utf-8"))
                ready = []
            ready.append(await reply + "\r\n")
        self.write("".join(ready).encode("utf-8"))


def _is_trusted(host: str, networks) -> bool:
    """Peers in ``networks`` are trusted; so are non-IP transports (UNIX sockets: the file's
    permissions decide who connects)."""
    if not host:
        return True
    try:
        addr = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return False
    if addr.version == 6 and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    return any(addr in net for net in networks)


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
        proto.save_to_detail_mailbox = c.lmtp.save_to_detail_mailbox
        proto.add_received_header = c.lmtp.add_received_header
        proto.max_body_line_length = c.lmtp.max_body_line_length
        proto.trusted_networks = self.trusted_networks
        proto.quota_enabled = c.quota.enabled
        proto.quota_tempfail = c.quota.full_tempfail

    @property
    def trusted_networks(self) -> tuple:
        nets = getattr(self, "_trusted_networks", None)
        if nets is None:
            nets = self._trusted_networks = tuple(ipaddress.ip_network(n, strict=False)
                                                  for n in self.ctx.config.lmtp.trusted_networks)
        return nets
