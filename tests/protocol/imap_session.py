"""Byte-exact IMAP transcripts: the real protocol over a StringTransport, real rbox storage on the
drivers of the test's backend (tests/backends.py), the reactor running (storage uses its thread pools)."""

from __future__ import annotations

import time

from twisted.internet import reactor, task
from twisted.internet.address import IPv4Address
from twisted.internet.testing import StringTransport

from mailserver import config as configmod
from mailserver import plugins
from mailserver.auth import AuthResult, Authenticator, UserRecord
from mailserver.context import ServerContext
from mailserver.protocols.imap.server import IMAPServerFactory
from tests import backends


class DictAuthenticator(Authenticator):
    """Users from a dict; counts calls.  Stands in for the passwd-file authenticator (which lives
    in ``mailserver.auth.service``) so these tests exercise only the IMAP side of a login."""

    def __init__(self, users: dict):
        self.users = users
        self.calls = 0

    def normalize(self, username: str) -> str:
        return username.lower()

    async def authenticate(self, username, password, *, service, peer, mechanism="PLAIN"):
        self.calls += 1
        name = self.normalize(username)
        if self.users.get(name) == password:
            return AuthResult(True, username=name)
        return AuthResult(False, reason="wrong password")

    async def lookup(self, username):
        name = self.normalize(username)
        return UserRecord(name) if name in self.users else None


async def make_context(tmp_path, imap: dict | None = None, users: dict | None = None,
                       storage: dict | None = None) -> ServerContext:
    cfg = configmod.load(None, backends.merged({"server": {"state_dir": str(tmp_path)}, "imap": imap or {},
                                                 "storage": storage or {}}))
    storage = backends.started(plugins.load(plugins.MAILBOX_FORMATS, "rbox").from_config(cfg, plugins))
    await storage.start()
    auth = DictAuthenticator(users or {"alice": "secret", "bob": "hunter2"})
    dictionary = backends.started(plugins.load(plugins.DICTS, cfg.dict.driver).from_config(cfg))
    await dictionary.start()
    return ServerContext(config=cfg, storage=storage, auth=auth, dict=dictionary)


class Wire:
    """One client connection: ``send`` raw bytes, ``cmd`` a tagged command and get its lines."""

    def __init__(self, ctx: ServerContext, clock=None):
        self.clock = clock or task.Clock()
        self.factory = IMAPServerFactory(ctx, clock=self.clock)
        self.proto = self.factory.buildProtocol(None)
        self.transport = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", 40000))
        self.proto.makeConnection(self.transport)
        self._seen = 0
        self._tag = 0

    def take(self) -> bytes:
        """Bytes written by the server since the last take."""
        data = self.transport.value()[self._seen:]
        self._seen += len(data)
        return data

    def send(self, data: bytes) -> None:
        self.proto.dataReceived(data)

    async def until(self, marker: bytes, timeout: float = 10.0) -> bytes:
        """Wait until the server's output since the last take contains ``marker``; take it."""
        deadline = time.monotonic() + timeout
        while marker not in self.transport.value()[self._seen:]:
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {marker!r}; got {self.transport.value()[self._seen:]!r}")
            await task.deferLater(reactor, 0.002, lambda: None)
        return self.take()

    async def cmd(self, text: str | bytes, tag: str | None = None) -> list[bytes]:
        """Send ``tag text`` and return every response line up to and including the tagged one."""
        if tag is None:
            self._tag += 1
            tag = f"t{self._tag}"
        if isinstance(text, str):
            text = text.encode("utf-8")
        self.send(tag.encode() + b" " + text + b"\r\n")
        data = await self.tagged(tag)
        return data.split(b"\r\n")[:-1]

    async def tagged(self, tag: str, timeout: float = 10.0) -> bytes:
        """Wait for the tagged answer to ``tag`` (at a line start) and take everything up to it."""
        needle = b"\r\n" + tag.encode() + b" "
        deadline = time.monotonic() + timeout
        while True:
            value = b"\r\n" + self.transport.value()[self._seen:]
            at = value.find(needle)
            if at >= 0:
                end = value.find(b"\r\n", at + len(needle))
                if end >= 0:
                    data = value[2:end + 2]
                    self._seen += len(data)
                    return data
            if time.monotonic() > deadline:
                raise AssertionError(f"no tagged answer for {tag}; got {value!r}")
            await task.deferLater(reactor, 0.002, lambda: None)

    async def login(self, user: str = "alice", password: str = "secret") -> None:
        lines = await self.cmd(f"LOGIN {user} {password}")
        assert lines[-1].split(b" ")[1] == b"OK", lines

    def lost(self) -> None:
        """The transport reports the connection closed (StringTransport does not by itself)."""
        from twisted.internet.error import ConnectionDone
        from twisted.python.failure import Failure
        self.proto.connectionLost(Failure(ConnectionDone()))

    @property
    def closed(self) -> bool:
        return self.transport.disconnecting


async def settle(rounds: int = 3) -> None:
    """Let the reactor run pending calls (thread-pool results, callLater(0))."""
    for _ in range(rounds):
        await task.deferLater(reactor, 0.005, lambda: None)

