"""A huge body FETCH to a client that stops reading: the server waits for the socket instead of
buffering every message in memory, and finishes once the client reads again."""

import time

import pytest_twisted
from twisted.internet import defer, protocol, reactor, task

from mailserver.protocols.imap.server import IMAPServerFactory
from tests.protocol.imap_session import make_context
import pytest

pytestmark = pytest.mark.usefixtures("transcript_backend")   # runs on local and on Ceph

BODY_LINE = b"x" * 998 + b"\r\n"
MESSAGES = 60
MESSAGE = (b"From: a@example.org\r\nSubject: big\r\n\r\n" + BODY_LINE * 200)   # ~200 KB each


class SlowReader(protocol.Protocol):
    def __init__(self):
        self.received = bytearray()
        self.done = defer.Deferred()

    def dataReceived(self, data):
        self.received += data
        if b"\r\nf OK " in self.received[-200:] or self.received.endswith(b"f BAD"):
            if not self.done.called:
                self.done.callback(None)


def pending_bytes(transport) -> int:
    """Bytes a Twisted TCP transport holds, not yet sent."""
    return len(transport.dataBuffer) - transport.offset + transport._tempDataLen


@pytest_twisted.ensureDeferred
async def test_huge_fetch_waits_for_slow_client(tmp_path):
    ctx = await make_context(tmp_path)
    user = await ctx.storage.open_user("alice")
    tx = user.begin_save("INBOX")
    for _ in range(MESSAGES):
        await tx.add(MESSAGE)
    await tx.commit()
    await user.close()

    servers = []
    factory = IMAPServerFactory(ctx)
    build = factory.buildProtocol

    def keep(addr):
        proto = build(addr)
        servers.append(proto)
        return proto
    factory.buildProtocol = keep
    port = reactor.listenTCP(0, factory, interface="127.0.0.1")
    try:
        client = SlowReader()
        await protocol.ClientCreator(reactor, lambda: client).connectTCP("127.0.0.1", port.getHost().port)
        client.transport.write(b"a LOGIN alice secret\r\nb SELECT INBOX\r\n")
        await task.deferLater(reactor, 0.2, lambda: None)
        client.transport.pauseProducing()                 # stop reading
        client.transport.write(b"f FETCH 1:* BODY.PEEK[]\r\n")
        server = servers[0]
        deadline = time.monotonic() + 10
        while not server.writer.paused and time.monotonic() < deadline:
            await task.deferLater(reactor, 0.02, lambda: None)
        assert server.writer.paused, "the transport never asked the FETCH to pause"
        await task.deferLater(reactor, 0.3, lambda: None)
        held = pending_bytes(server.transport) + server.writer.buffered
        total = MESSAGES * len(MESSAGE)
        assert held < total / 3, (held, total)          # not everything queued in memory
        client.transport.resumeProducing()
        await client.done
        assert client.received.count(b" FETCH (BODY[] {%d}" % len(MESSAGE)) == MESSAGES
        assert b"\r\nf OK FETCH completed\r\n" in client.received
        client.transport.loseConnection()
    finally:
        await port.stopListening()
        await task.deferLater(reactor, 0.05, lambda: None)


@pytest_twisted.ensureDeferred
async def test_client_vanishing_during_huge_fetch(tmp_path):
    ctx = await make_context(tmp_path)
    user = await ctx.storage.open_user("alice")
    tx = user.begin_save("INBOX")
    for _ in range(MESSAGES):
        await tx.add(MESSAGE)
    await tx.commit()
    await user.close()
    port = reactor.listenTCP(0, IMAPServerFactory(ctx), interface="127.0.0.1")
    try:
        client = SlowReader()
        await protocol.ClientCreator(reactor, lambda: client).connectTCP("127.0.0.1", port.getHost().port)
        client.transport.write(b"a LOGIN alice secret\r\nb SELECT INBOX\r\n")
        await task.deferLater(reactor, 0.2, lambda: None)
        client.transport.pauseProducing()
        client.transport.write(b"f FETCH 1:* BODY.PEEK[]\r\n")
        await task.deferLater(reactor, 0.3, lambda: None)
        client.transport.abortConnection()
        deadline = time.monotonic() + 10
        while ctx.connections and time.monotonic() < deadline:
            await task.deferLater(reactor, 0.02, lambda: None)
        assert not ctx.connections
        # The server still serves others.
        other = SlowReader()
        await protocol.ClientCreator(reactor, lambda: other).connectTCP("127.0.0.1", port.getHost().port)
        other.transport.write(b"a LOGIN alice secret\r\nf NOOP\r\n")
        await other.done
        other.transport.loseConnection()
    finally:
        await port.stopListening()
        await task.deferLater(reactor, 0.05, lambda: None)
