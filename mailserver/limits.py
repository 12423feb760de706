"""Connection limits: a global cap over every listener and a cap per client address.

``LimitedFactory`` wraps a protocol factory: over a limit, the connection gets the protocol's
refusal line (``* BYE ...``, ``-ERR [SYS/TEMP] ...``, ``421 4.7.0 ...``) and is closed; otherwise
the real protocol is built and the count is given back when it disconnects.  No extra transport
layer is inserted, so protocols see their real transport (TLS detection, STARTTLS, TCP_NODELAY).
"""

from __future__ import annotations

import collections

from twisted.internet import protocol
from twisted.logger import Logger

log = Logger(namespace="mailserver.limits")


class ConnectionLimiter:
    """Counts open connections, in total and per client address."""

    def __init__(self, max_total: int, max_per_ip: int):
        self.max_total = max_total
        self.max_per_ip = max_per_ip
        self.total = 0
        self.per_ip: collections.Counter = collections.Counter()

    @classmethod
    def from_config(cls, config) -> "ConnectionLimiter":
        return cls(config.server.max_connections, config.server.max_connections_per_ip)

    def admit(self, host: str, per_ip: bool) -> str | None:
        """Count a new connection; or why it is refused (and nothing counted)."""
        if self.total >= self.max_total:
            return f"{self.total} connections open (max_connections)"
        if per_ip and host and self.per_ip[host] >= self.max_per_ip:
            return f"{self.per_ip[host]} connections open from {host} (max_connections_per_ip)"
        self.total += 1
        if host:
            self.per_ip[host] += 1
        return None

    def release(self, host: str) -> None:
        self.total -= 1
        if host:
            self.per_ip[host] -= 1
            if self.per_ip[host] <= 0:
                del self.per_ip[host]


class _Refuse(protocol.Protocol):
    def __init__(self, line: bytes):
        self.line = line

    def connectionMade(self):
        self.transport.write(self.line)
        self.transport.loseConnection()


class LimitedFactory(protocol.Factory):
    """Wraps ``factory``; ``per_ip``: apply the per-address cap (IMAP, POP3) or only the global
    one (LMTP, whose clients are a few MTAs)."""

    noisy = False

    def __init__(self, factory, limiter: ConnectionLimiter, refusal: bytes, *, per_ip: bool, name: str):
        self.factory = factory
        self.limiter = limiter
        self.refusal = refusal
        self.per_ip = per_ip
        self.name = name

    def logPrefix(self) -> str:
        return self.factory.__class__.__name__

    def doStart(self):
        self.factory.doStart()

    def doStop(self):
        self.factory.doStop()

    def buildProtocol(self, addr):
        host = getattr(addr, "host", "") or ""
        refused = self.limiter.admit(host, self.per_ip)
        if refused:
            log.warn("{protocol} connection from {host} refused: {reason}", protocol=self.name,
                     host=host or "-", reason=refused)
            return _Refuse(self.refusal)
        try:
            proto = self.factory.buildProtocol(addr)
        except BaseException:
            self.limiter.release(host)
            raise
        if proto is None:
            self.limiter.release(host)
            return None
        call_when_lost(proto, lambda: self.limiter.release(host))
        return proto


def call_when_lost(proto, callback) -> None:
    """Have ``callback()`` run once when ``proto``'s connection is lost, before its own
    ``connectionLost``."""
    lost = proto.connectionLost
    called = []

    def connection_lost(reason=protocol.connectionDone):
        if not called:
            called.append(True)
            callback()
        return lost(reason)

    proto.connectionLost = connection_lost
