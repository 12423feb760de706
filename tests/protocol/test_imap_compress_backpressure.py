"""COMPRESS=DEFLATE keeps the writer's back-pressure: a huge FETCH of incompressible bodies to a
client that stops reading waits for the socket instead of compressing everything into memory."""

import base64
import os
import time
import zlib

import pytest_twisted
from twisted.internet import defer, protocol, reactor, task

from mailserver.protocols.imap.server import IMAPServerFactory
from tests.protocol.imap_session import make_context
from tests.protocol.test_imap_backpressure import pending_bytes
import pytest

pytestmark = pytest.mark.usefixtures("transcript_backend")   # runs on local and on Ceph

MESSAGES = 40


class DeflateReader(protocol.Protocol):
    def __init__(self):
        self.raw = bytearray()
        self.text = bytearray()
        self.inflate = None
        self.done = defer.Deferred()

    def dataReceived(self, data):
        if self.inflate is None:
            self.raw += data
            if b"z OK DEFLATE active\r\n" in self.raw:
                self.inflate = zlib.decompressobj(-15)
                rest = self.raw.split(b"z OK DEFLATE active\r\n", 1)[1]
                self.text += self.inflate.decompress(bytes(rest))
            return
        self.text += self.inflate.decompress(data)
        if b"\r\nf OK FETCH completed\r\n" in self.text[-200:] and not self.done.called:
            self.done.callback(None)


@pytest_twisted.ensureDeferred
async def test_compressed_fetch_waits_for_slow_client(tmp_path):
    ctx = await make_context(tmp_path)
    user = await ctx.storage.open_user("alice")
    tx = user.begin_save("INBOX")
    messages = []
    for _ in range(MESSAGES):
        body = base64.encodebytes(os.urandom(150_000)).replace(b"\n", b"\r\n")
        messages.append(b"From: a@example.org\r\nSubject: random\r\n\r\n" + body)
        await tx.add(messages[-1])
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
        client = DeflateReader()
        await protocol.ClientCreator(reactor, lambda: client).connectTCP("127.0.0.1", port.getHost().port)
        client.transport.write(b"a LOGIN alice secret\r\nz COMPRESS DEFLATE\r\n")
        deadline = time.monotonic() + 10
        while client.inflate is None and time.monotonic() < deadline:
            await task.deferLater(reactor, 0.02, lambda: None)
        out = zlib.compressobj(6, zlib.DEFLATED, -15)
        client.transport.write(out.compress(b"b SELECT INBOX\r\n") + out.flush(zlib.Z_SYNC_FLUSH))
        await task.deferLater(reactor, 0.2, lambda: None)
        client.transport.pauseProducing()                 # stop reading
        client.transport.write(out.compress(b"f FETCH 1:* BODY.PEEK[]\r\n") + out.flush(zlib.Z_SYNC_FLUSH))
        server = servers[0]
        deadline = time.monotonic() + 10
        while not server.writer.paused and time.monotonic() < deadline:
            await task.deferLater(reactor, 0.02, lambda: None)
        assert server.writer.paused, "the transport never asked the FETCH to pause"
        await task.deferLater(reactor, 0.3, lambda: None)
        held = pending_bytes(server.compression.raw_transport) + server.writer.buffered
        total = sum(len(m) for m in messages)
        assert held < total / 3, (held, total)
        client.transport.resumeProducing()
        await client.done
        for m in messages:
            assert b" FETCH (BODY[] {%d}\r\n%s)\r\n" % (len(m), m) in client.text
        client.transport.loseConnection()
    finally:
        await port.stopListening()
        await task.deferLater(reactor, 0.05, lambda: None)
