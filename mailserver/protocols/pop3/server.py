"""POP3 server (RFC 1939, CAPA and response codes from RFC 2449, SASL from RFC 5034).

The session's message list is INBOX as it was at login (one ``refresh`` then); deletions are
kept in the session and applied at QUIT (the UPDATE state): ``\\Deleted`` is stored and exactly
those messages are expunged.  Retrieved messages get ``\\Seen`` at QUIT only; a client that goes
away without QUIT changes nothing, and RSET also forgets what was retrieved (Dovecot 2.3 does both).  One POP3 session per user at a time: the lock is per process
(a second server process does not see it).
"""

from __future__ import annotations

import base64
import binascii

from twisted.internet import defer
from twisted.logger import Logger

from mailserver.auth import AuthResult, sasl
from mailserver.protocols.linebased import LineServerFactory, LineServerProtocol
from mailserver.protocols.pop3.content import ChunkProducer, dot_stuff, top, uidl
from mailserver.storage.api import DELETED, SEEN, FetchItem, StoreMode
from mailserver.storage.errors import ErrorKind, StorageError

log = Logger(namespace="mailserver.pop3")

MAX_BAD_COMMANDS = 20
STREAM_THRESHOLD = 256 * 1024   # bigger responses go out through a producer

# Users with a POP3 session in this process.
_locked_users: set[str] = set()


class Message:
    __slots__ = ("uid", "size", "uidl", "deleted", "retrieved", "seen")

    def __init__(self, uid: int, size: int, uidl_: str, seen: bool):
        self.uid = uid
        self.size = size
        self.uidl = uidl_
        self.deleted = False
        self.retrieved = False
        self.seen = seen


class POP3Server(LineServerProtocol):
    log = log
    max_auth_failures = 3
    uidl_format = "%g"
    hostname = "localhost"

    def __init__(self, ctx=None):
        super().__init__(ctx)
        self.state = "auth"
        self.messages: list[Message] = []
        self._pending_user: str | None = None
        self._sasl: sasl.Mechanism | None = None
        self._auth_failures = 0
        self._bad_commands = 0
        self._locked = ""
        self._storage_user = None
        self._box = None
        self._released = False

    # --- framing ------------------------------------------------------------------------------------

    def greet(self):
        self.send("+OK POP3 server ready.")

    def refuse_stopping(self):
        self.send("-ERR [SYS/TEMP] Server shutting down.")
        self.close()

    def shutdown(self):
        """Server shutdown (storage already stopped): no UPDATE state."""
        if not self.closing:
            self.send("-ERR [SYS/TEMP] Server shutting down.")
            self.close()

    def idle_timeout_reached(self):
        self.send("-ERR Disconnected for inactivity.")

    def line_too_long(self):
        self.send("-ERR Input line too long.")
        self._bad()

    def internal_error(self):
        self.send("-ERR [SYS/TEMP] Internal error occurred. Refer to server log for more information.")

    def connection_closed(self):
        if self.state == "trans" and not self._released:
            d = defer.Deferred.fromCoroutine(self._release())
            d.addErrback(lambda f: log.failure("closing the POP3 session", f, **self.event()))

    def _bad(self) -> None:
        self._bad_commands += 1
        if self._bad_commands >= MAX_BAD_COMMANDS:
            self.send("-ERR Too many bad commands.")
            self.close()

    # --- dispatch -----------------------------------------------------------------------------------

    def line_received(self, line: bytes):
        if self._sasl is not None:
            return self._sasl_response(line)
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError:
            self.send("-ERR Command is not valid UTF-8.")
            self._bad()
            return None
        verb, _, arg = text.partition(" ")
        verb = verb.upper()
        handler = None
        if verb.isalpha() and verb.isascii():
            handler = getattr(self, f"{self.state}_{verb}", None) or getattr(self, f"any_{verb}", None)
        if handler is None:
            if verb.isalpha() and (getattr(self, f"trans_{verb}", None) or getattr(self, f"auth_{verb}", None)):
                self.send("-ERR Command not valid in this state.")
            else:
                self.send("-ERR Unknown command.")
            self._bad()
            return None
        return handler(arg)

    # --- any state ----------------------------------------------------------------------------------

    def any_CAPA(self, arg: str):
        caps = ["CAPA", "TOP", "UIDL", "RESP-CODES", "AUTH-RESP-CODE", "PIPELINING"]
        if self.state == "auth":
            caps += ["USER", "SASL " + " ".join(sasl.names())]
        caps.append("IMPLEMENTATION mailserver")
        self.transport.write(("+OK\r\n" + "".join(c + "\r\n" for c in caps) + ".\r\n").encode())

    def any_NOOP(self, arg: str):
        self.send("+OK")

    # --- AUTHORIZATION ------------------------------------------------------------------------------

    def auth_QUIT(self, arg: str):
        self.send("+OK Logging out.")
        self.close()

    def auth_USER(self, arg: str):
        if not arg:
            self.send("-ERR No username given.")
            self._bad()
            return
        self._pending_user = arg
        self.send("+OK")

    def auth_PASS(self, arg: str):
        if self._pending_user is None:
            self.send("-ERR No username given.")
            self._bad()
            return None
        username, self._pending_user = self._pending_user, None
        return self._authenticate(username, arg, "USER")

    async def _authenticate(self, username: str, password: str, mechanism: str):
        result = await self.ctx.auth.authenticate(username, password, service="pop3", peer=self.peer,
                                                  mechanism=mechanism)
        await self._auth_done(result)

    def auth_AUTH(self, arg: str):
        name, _, initial = arg.strip().partition(" ")
        if not name:
            self.transport.write(("+OK\r\n" + "".join(m + "\r\n" for m in sasl.names()) + ".\r\n").encode())
            return None
        mech = sasl.start(name, self.ctx.auth, service="pop3", peer=self.peer)
        if mech is None:
            self.send("-ERR [AUTH] Unsupported authentication mechanism.")
            self._bad()
            return None
        response = None
        if initial:
            response = self._decode_sasl(initial)
            if response is None:
                return None
        return self._sasl_step(mech, response)

    def _decode_sasl(self, text: str) -> bytes | None:
        if text == "=":
            return b""
        try:
            return base64.b64decode(text.strip(), validate=True)
        except (binascii.Error, ValueError):
            self._sasl = None
            self.send("-ERR [AUTH] Invalid base64 data.")
            self._bad()
            return None

    async def _sasl_step(self, mech: sasl.Mechanism, response: bytes | None):
        step = await mech.step(response)
        if step.result is None:
            self._sasl = mech
            self.send(b"+ " + base64.b64encode(step.challenge or b""))
            return
        self._sasl = None
        await self._auth_done(step.result)

    def _sasl_response(self, line: bytes):
        mech, self._sasl = self._sasl, None
        if line.strip() == b"*":
            self.send("-ERR Authentication aborted by client.")
            return None
        response = self._decode_sasl(line.decode("ascii", "replace"))
        if response is None:
            return None
        self._sasl = mech
        return self._sasl_step(mech, response)

    async def _auth_done(self, result: AuthResult) -> None:
        if not result.ok:
            if result.temporary:
                self.send("-ERR [SYS/TEMP] Temporary authentication failure.")
                return
            self._auth_failures += 1
            self.send("-ERR [AUTH] Authentication failed.")
            if self._auth_failures >= self.max_auth_failures:
                log.info("too many authentication failures", **self.event())
                self.close()
            return
        await self._open(result.username)

    async def _open(self, username: str) -> None:
        if self.ctx.stopping:
            self.shutdown()
            return
        if username in _locked_users:
            log.info("POP3 login refused: mailbox of {name} in use", name=username, **self.event())
            self.send("-ERR [IN-USE] Mailbox is locked by another POP3 session.")
            return
        _locked_users.add(username)
        self._locked = username
        try:
            self._storage_user = await self.ctx.storage.open_user(username)
            self._box = await self._storage_user.open_mailbox("INBOX")
            await self._box.refresh()
        except StorageError as e:
            self.send(self._storage_reply(e, "opening INBOX"))
            await self._close_storage()
            return
        box = self._box
        self.messages = [Message(i.uid, i.vsize, uidl(self.uidl_format, i.uid, box.uidvalidity, i.guid),
                                 SEEN in i.flags)
                         for i in box.all_info() if i is not None]
        self.user = username
        self.state = "trans"
        if self.closing:            # the client left while we were opening
            await self._release()
            return
        log.info("POP3 session opened: {count} messages", count=len(self.messages), **self.event())
        self.send("+OK Logged in.")

    # --- TRANSACTION --------------------------------------------------------------------------------

    def _message(self, arg: str) -> tuple[int, Message] | None:
        """(number, message) for ``arg`` (1-based), or None after sending the -ERR."""
        arg = arg.strip()
        if not arg.isdigit() or len(arg) > 10:
            self.send("-ERR Invalid message number.")
            self._bad()
            return None
        n = int(arg)
        if not 1 <= n <= len(self.messages):
            self.send(f"-ERR There's no message {n}.")
            return None
        msg = self.messages[n - 1]
        if msg.deleted:
            self.send("-ERR Message is deleted.")
            return None
        return n, msg

    def _live(self):
        return [(n, m) for n, m in enumerate(self.messages, 1) if not m.deleted]

    def trans_STAT(self, arg: str):
        live = self._live()
        self.send(f"+OK {len(live)} {sum(m.size for _, m in live)}")

    def trans_LIST(self, arg: str):
        if arg.strip():
            found = self._message(arg)
            if found is not None:
                self.send(f"+OK {found[0]} {found[1].size}")
            return
        live = self._live()
        lines = [f"+OK {len(live)} messages:"] + [f"{n} {m.size}" for n, m in live] + ["."]
        self.transport.write(("\r\n".join(lines) + "\r\n").encode())

    def trans_UIDL(self, arg: str):
        if arg.strip():
            found = self._message(arg)
            if found is not None:
                self.send(f"+OK {found[0]} {found[1].uidl}")
            return
        lines = ["+OK"] + [f"{n} {m.uidl}" for n, m in self._live()] + ["."]
        self.transport.write(("\r\n".join(lines) + "\r\n").encode())

    def trans_DELE(self, arg: str):
        found = self._message(arg)
        if found is not None:
            found[1].deleted = True
            self.send("+OK Marked to be deleted.")

    def trans_RSET(self, arg: str):
        for m in self.messages:
            m.deleted = False
            m.retrieved = False
        self.send("+OK")

    def trans_RETR(self, arg: str):
        found = self._message(arg)
        return None if found is None else self._send_message(found[1], None)

    def trans_TOP(self, arg: str):
        parts = arg.split()
        if len(parts) != 2 or not parts[1].isdigit() or len(parts[1]) > 10:
            self.send("-ERR Invalid arguments: TOP <message> <lines>.")
            self._bad()
            return None
        found = self._message(parts[0])
        return None if found is None else self._send_message(found[1], int(parts[1]))

    async def _send_message(self, msg: Message, lines: int | None):
        try:
            fetched = [m async for m in self._box.fetch([msg.uid], {FetchItem.DATA})]
        except StorageError as e:
            self.send(self._storage_reply(e, f"reading UID {msg.uid}"))
            return
        if not fetched:
            self.send("-ERR Message no longer exists.")
            return
        if fetched[0].missing or fetched[0].data is None:
            log.error("UID {uid}: message body could not be read", uid=msg.uid, **self.event())
            self.send("-ERR [SYS/TEMP] Message could not be read.")
            return
        data = fetched[0].data
        if lines is None:
            self.send(f"+OK {msg.size} octets")
            msg.retrieved = True
        else:
            data = top(data, lines)
            self.send("+OK")
        body = dot_stuff(data)
        if len(body) <= STREAM_THRESHOLD:
            self.transport.write(body)
            return
        self.streaming = True
        try:
            await ChunkProducer(self.transport, body, on_progress=self.note_progress).start()
        finally:
            self.streaming = False

    def trans_QUIT(self, arg: str):
        return self._quit()

    async def _quit(self):
        deleted = [m.uid for m in self.messages if m.deleted]
        try:
            await self._update()
        except StorageError as e:
            code = self._storage_error(e, "UPDATE at QUIT")
            self.send(f"-ERR [{code}] Some deleted messages were not removed.")
            await self._release()
            self.close()
            return
        await self._release()
        self.send("+OK Logging out, messages deleted." if deleted else "+OK Logging out.")
        self.close()

    async def _update(self) -> None:
        """The UPDATE state: \\Seen on retrieved messages, \\Deleted on and expunge of deleted ones."""
        box = self._box
        seen = [m.uid for m in self.messages if m.retrieved and not m.seen and not m.deleted]
        if seen:
            await box.store(seen, StoreMode.ADD, [SEEN])
        deleted = [m.uid for m in self.messages if m.deleted]
        if deleted:
            await box.store(deleted, StoreMode.ADD, [DELETED])
            expunged = await box.expunge(deleted)
            log.info("expunged {n} messages at QUIT", n=len(expunged), **self.event())

    async def _release(self) -> None:
        """Leave the session: close the mailbox and the user, unlock.  Safe to call twice."""
        if self._released:
            return
        self._released = True
        await self._close_storage()

    async def _close_storage(self) -> None:
        box, user, self._box, self._storage_user = self._box, self._storage_user, None, None
        try:
            if box is not None:
                await box.close()
            if user is not None:
                await user.close()
        except StorageError as e:
            log.warn("closing storage: {detail}", detail=e.detail, **self.event())
        finally:
            if self._locked:
                _locked_users.discard(self._locked)
                self._locked = ""

    def _storage_error(self, e: StorageError, doing: str) -> str:
        """Log a storage failure; the RFC 3206 response code to answer it with."""
        if e.kind is ErrorKind.TEMPORARY:
            log.warn("{doing}: temporary storage failure: {detail}", doing=doing, detail=e.detail, **self.event())
            return "SYS/TEMP"
        log.error("{doing}: storage failure ({kind}): {detail}", doing=doing, kind=e.kind.value,
                  detail=e.detail, **self.event())
        return "SYS/PERM"

    def _storage_reply(self, e: StorageError, doing: str) -> str:
        code = self._storage_error(e, doing)
        if code == "SYS/TEMP":
            return "-ERR [SYS/TEMP] Temporary storage failure, try again later."
        return "-ERR [SYS/PERM] Storage failure."


class POP3Factory(LineServerFactory):
    protocol_class = POP3Server

    def configure(self, proto: POP3Server) -> None:
        c = self.ctx.config
        proto.max_line_length = c.pop3.max_line_length
        proto.idle_timeout = c.pop3.idle_timeout
        proto.max_auth_failures = c.pop3.max_auth_failures
        proto.uidl_format = c.pop3.uidl_format
        proto.hostname = c.server.hostname
