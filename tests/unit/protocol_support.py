"""Helpers for byte-exact protocol transcripts: a real rbox storage on the local drivers, a real
passwd-file authenticator, a protocol on a StringTransport, and a way to wait for its queue."""

from __future__ import annotations

from twisted.internet import reactor, task
from twisted.internet.address import IPv4Address
from twisted.internet.testing import StringTransport

from mailserver import config as configmod
from mailserver import plugins
from mailserver.auth import schemes
from mailserver.auth.service import build_authenticator
from mailserver.context import ServerContext
from tests import backends


async def make_ctx(tmp_path, users: dict, **sections) -> ServerContext:
    """Storage under tmp_path and a passwd-file with ``users`` ({name: password})."""
    passwd = tmp_path / "passwd"
    passwd.write_text("".join(f"{u}:{schemes.hash_password('PLAIN', p)}\n" for u, p in users.items()))
    overrides = {"server": {"state_dir": str(tmp_path / "state"), "hostname": "mx.test"},
                 "auth": {"passwd_file": str(passwd), "failure_delay": 0.0,
                          # Conn's peer is 192.0.2.7: allow it plaintext logins, as loopback is.
                          "plaintext_networks": ["127.0.0.0/8", "192.0.2.0/24"]}}
    for name, values in sections.items():
        overrides.setdefault(name, {}).update(values)
    cfg = configmod.load(None, backends.merged(overrides))
    storage = backends.started(plugins.load(plugins.MAILBOX_FORMATS, cfg.storage.format).from_config(cfg, plugins))
    await storage.start()
    return ServerContext(config=cfg, storage=storage, auth=build_authenticator(cfg))


class Conn:
    """A protocol connected to a StringTransport.  ``clock`` drives idle timeouts only."""

    def __init__(self, factory):
        self.clock = task.Clock()
        factory.clock = self.clock
        self.transport = StringTransport(peerAddress=IPv4Address("TCP", "192.0.2.7", 40000))
        self.proto = factory.buildProtocol(None)
        self.proto.makeConnection(self.transport)

    def take(self) -> bytes:
        out = self.transport.value()
        self.transport.clear()
        return out

    async def settle(self, timeout: float = 10.0) -> None:
        """Wait until every buffered command has been handled."""
        waited = 0.0
        while self.proto._busy or self._producer_pending():
            if waited > timeout:
                raise AssertionError("protocol still busy")
            if self.transport.producer is not None and not self.transport.streaming:
                self.transport.producer.resumeProducing()
            await task.deferLater(reactor, 0.002, lambda: None)
            waited += 0.002

    def _producer_pending(self) -> bool:
        return self.transport.producer is not None

    async def send(self, data: bytes) -> bytes:
        """Feed bytes, wait for the queue to drain, return what the server wrote."""
        self.proto.dataReceived(data)
        await self.settle()
        return self.take()
