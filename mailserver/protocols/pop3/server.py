"""POP3 server (RFC 1939, CAPA and response codes from RFC 2449, SASL from RFC 5034, UTF8 from
RFC 6856).

The session's message list is INBOX as it was at login (one ``refresh`` then); deletions are
kept in the session and applied at QUIT (the UPDATE state), as ``[pop3] delete_mode`` says:
``expunge`` stores ``\\Deleted`` and expunges exactly those messages; ``move`` moves them to
``delete_mailbox``; ``seen`` only marks them ``\\Seen``; ``hide`` sets ``deleted_keyword``, and
messages with that keyword are left out of later POP3 sessions (IMAP still sees them).
Retrieved messages get ``\\Seen`` at QUIT only (never with ``no_flag_updates``); a client that
goes away without QUIT changes nothing, and RSET also forgets what was retrieved (Dovecot 2.3 does
both).  One POP3 session per user at a time, across every server process on the same storage
(``User.lock("pop3")``); a second one gets ``-ERR [IN-USE]``.
"""

from __future__ import annotations

import base64
import binascii

from twisted.internet import defer
from twisted.logger import Logger

from mailserver import tls
from mailserver.auth import AuthResult, sasl
from mailserver.protocols.linebased import LineServerFactory, LineServerProtocol
from mailserver.protocols.pop3.content import ChunkProducer, dot_stuff, top, uidl, valid_uidl
from mailserver.storage.api import DELETED, SEEN, FetchItem, StoreMode
from mailserver.storage.errors import ErrorKind, StorageError

log = Logger(namespace="mailserver.pop3")

MAX_BAD_COMMANDS = 20
PLAINTEXT_REFUSED = "-ERR [AUTH] Plaintext authentication disallowed on non-secure (SSL/TLS) connections."
STREAM_THRESHOLD = 256 * 1024   # bigger responses go out through a producer



class Message:
    __slots__ = ("uid", "size", "guid", "uidl", "deleted", "retrieved", "seen")

    def __init__(self, uid: int, size: int, guid: str, seen: bool):
        self.uid = uid
        self.size = size
        self.guid = guid
        self.uidl: str | None = None    # computed at the first UIDL command
        self.deleted = False
        self.retrieved = False
        self.seen = seen


class POP3Server(LineServerProtocol):
    log = log
    max_auth_failures = 3
    uidl_format = "%g"
    hostname = "localhost"
    delete_mode = "expunge"
    delete_mailbox = "Trash"
    deleted_keyword = "$POP3Deleted"
    no_flag_updates = False

    def __init__(self, ctx=None):
        super().__init__(ctx)
        self.state = "auth"
        self.messages: list[Message] = []
        self._pending_user: str | None = None
        self._sasl: sasl.Mechanism | None = None
        self._auth_failures = 0
        self._bad_commands = 0
        self.utf8 = False               # RFC 6856 UTF8 command given
        self._uidls_ready = False
        self._lock = None
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
        if verb.isalnum() and verb.isascii():
            handler = getattr(self, f"{self.state}_{verb}", None) or getattr(self, f"any_{verb}", None)
        if handler is None:
            if verb.isalnum() and verb.isascii() and (getattr(self, f"trans_{verb}", None) or getattr(self, f"auth_{verb}", None)):
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
            plaintext_ok = self._plaintext_ok()
            if tls.starttls_available(self.ctx, self.transport):
                caps.append("STLS")
            if plaintext_ok:
                caps.append("USER")
            caps.append("SASL " + " ".join(self.ctx.auth.mechanisms(plaintext_ok)))
            caps.append("UTF8 USER")
        caps.append("IMPLEMENTATION mailserver")
        self.transport.write(("+OK\r\n" + "".join(c + "\r\n" for c in caps) + ".\r\n").encode())

    def any_NOOP(self, arg: str):
        self.send("+OK")

    # --- AUTHORIZATION ------------------------------------------------------------------------------

    def auth_QUIT(self, arg: str):
        self.send("+OK Logging out.")
        self.close()

    def auth_UTF8(self, arg: str):
        """RFC 6856: UTF-8 in usernames, passwords and messages.  Messages are sent as stored
        either way (they are never downgraded); usernames and passwords are always read as UTF-8."""
        if arg.strip():
            self.send("-ERR UTF8 takes no arguments.")
            self._bad()
            return
        self.utf8 = True
        self.send("+OK UTF8 enabled.")

    def _plaintext_ok(self) -> bool:
        return tls.plaintext_ok(self.ctx, self.transport, self.peer)

    def auth_STLS(self, arg: str):
        """RFC 2595.  Whatever the client sent after STLS in plaintext is dropped, never run."""
        if not tls.starttls_available(self.ctx, self.transport):
            self.send("-ERR TLS is already active." if tls.is_secure(self.transport)
                      else "-ERR TLS support isn't enabled.")
            return
        if self._buffer:
            log.warn("discarded {n} bytes pipelined after STLS", n=len(self._buffer), **self.event())
            self._buffer.clear()
        self._pending_user = None
        self.utf8 = False               # nothing negotiated in plaintext survives STLS
        self.send("+OK Begin TLS negotiation now.")
        self.flush()                    # in the clear, before the handshake
        tls.start_tls(self.transport, self.ctx.tls)

    def auth_USER(self, arg: str):
        if not self._plaintext_ok():
            self.send(PLAINTEXT_REFUSED)
            return
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
        plaintext_ok = self._plaintext_ok()
        if not name:
            names = self.ctx.auth.mechanisms(plaintext_ok)
            self.transport.write(("+OK\r\n" + "".join(m + "\r\n" for m in names) + ".\r\n").encode())
            return None
        mech = sasl.start(name, self.ctx.auth, service="pop3", peer=self.peer, plaintext_ok=plaintext_ok)
        if mech is None:
            if not plaintext_ok and name.upper() in sasl.PLAINTEXT:
                self.send(PLAINTEXT_REFUSED)
                return None
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
        try:
            self._storage_user = await self.ctx.storage.open_user(username)
            self._lock = await self._storage_user.lock("pop3")
            self._box = await self._storage_user.open_mailbox("INBOX")
            await self._box.refresh()
        except StorageError as e:
            if e.kind is ErrorKind.IN_USE:
                log.info("POP3 login refused: mailbox of {name} in use ({detail})", name=username,
                         detail=e.detail, **self.event())
                self.send("-ERR [IN-USE] Mailbox is locked by another POP3 session.")
            else:
                self.send(self._storage_reply(e, "opening INBOX"))
            await self._close_storage()
            return
        hidden = self.deleted_keyword if self.delete_mode == "hide" else None
        self.messages = [Message(i.uid, i.vsize, i.guid, SEEN in i.flags)
                         for i in self._box.all_info() if i is not None and hidden not in i.flags]
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

    async def trans_UIDL(self, arg: str):
        found = None
        if arg.strip():
            found = self._message(arg)
            if found is None:
                return
        try:
            await self._compute_uidls()
        except StorageError as e:
            self.send(self._storage_reply(e, "reading UIDLs"))
            return
        if found is not None:
            self.send(f"+OK {found[0]} {found[1].uidl}")
            return
        lines = ["+OK"] + [f"{n} {m.uidl}" for n, m in self._live()] + ["."]
        self.transport.write(("\r\n".join(lines) + "\r\n").encode())

    async def _compute_uidls(self) -> None:
        """Every message's UIDL, once per session: the one recorded at migration when there is
        one (read from storage), else ``uidl_format`` expanded."""
        if self._uidls_ready:
            return
        recorded = {}
        async for mail in self._box.fetch([m.uid for m in self.messages], {FetchItem.POP3_UIDL}):
            if mail.pop3_uidl:
                if valid_uidl(mail.pop3_uidl):
                    recorded[mail.info.uid] = mail.pop3_uidl
                else:
                    log.warn("UID {uid}: recorded POP3 UIDL {value!r} is not valid; using {fmt}",
                             uid=mail.info.uid, value=mail.pop3_uidl[:80], fmt=self.uidl_format, **self.event())
        uidvalidity = self._box.uidvalidity
        for m in self.messages:
            m.uidl = recorded.get(m.uid) or uidl(self.uidl_format, m.uid, uidvalidity, m.guid)
        self._uidls_ready = True

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
            self.send("-ERR [SYS/PERM] Message could not be read.")
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
        """The UPDATE state: \\Seen on retrieved messages, then what ``delete_mode`` does to
        deleted ones."""
        box = self._box
        mode = self.delete_mode
        seen = [] if self.no_flag_updates else [
            m.uid for m in self.messages if m.retrieved and not m.seen and (mode != "expunge" or not m.deleted)]
        deleted = [m.uid for m in self.messages if m.deleted]
        if mode == "seen":
            seen = sorted(set(seen) | {m.uid for m in self.messages if m.deleted and not m.seen})
        if seen:
            await box.store(seen, StoreMode.ADD, [SEEN])
        if not deleted:
            return
        if mode == "expunge":
            await box.store(deleted, StoreMode.ADD, [DELETED])
            expunged = await box.expunge(deleted)
            log.info("expunged {n} messages at QUIT", n=len(expunged), **self.event())
        elif mode == "move":
            moved = await self._move_deleted(deleted)
            log.info("moved {n} deleted messages to {mailbox} at QUIT", n=moved, mailbox=self.delete_mailbox,
                     **self.event())
        elif mode == "hide":
            await box.store(deleted, StoreMode.ADD, [self.deleted_keyword])
            log.info("hid {n} deleted messages from POP3 with {keyword}", n=len(deleted),
                     keyword=self.deleted_keyword, **self.event())
        else:
            log.info("kept {n} deleted messages (marked \\Seen)", n=len(deleted), **self.event())

    async def _move_deleted(self, uids: list[int]) -> int:
        try:
            result = await self._box.move(uids, self.delete_mailbox)
        except StorageError as e:
            if e.kind is not ErrorKind.NOT_FOUND:
                raise
            try:
                await self._storage_user.create_mailbox(self.delete_mailbox)
            except StorageError as e2:
                if e2.kind is not ErrorKind.EXISTS:
                    raise
            result = await self._box.move(uids, self.delete_mailbox)
        return len(result.pairs)

    async def _release(self) -> None:
        """Leave the session: close the mailbox and the user, unlock.  Safe to call twice."""
        if self._released:
            return
        self._released = True
        await self._close_storage()

    async def _close_storage(self) -> None:
        box, lock, user = self._box, self._lock, self._storage_user
        self._box = self._lock = self._storage_user = None
        for what, step in (("mailbox", box and box.close), ("POP3 lock", lock and lock.release),
                           ("user", user and user.close)):
            if step is None:
                continue
            try:
                await step()
            except StorageError as e:
                log.warn("closing the {what}: {detail}", what=what, detail=e.detail, **self.event())

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
        proto.delete_mode = c.pop3.delete_mode
        proto.delete_mailbox = c.pop3.delete_mailbox
        proto.deleted_keyword = c.pop3.deleted_keyword
        proto.no_flag_updates = c.pop3.no_flag_updates
