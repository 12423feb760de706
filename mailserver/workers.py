"""LMTP worker processes (``[lmtp] processes``).

One process runs Python on one core at a time, and an LMTP delivery is mostly Python (protocol,
MIME analysis, index records) and hand-offs between threads; with 10 connections one process
was measured at the rate of 1 connection.  So, as Dovecot runs several lmtp processes, the
server can start ``processes - 1`` children that serve LMTP only: each inherits the server's
LMTP listening sockets (the kernel gives every new connection to one process) and builds its
own storage, dictionary and authenticator from the same configuration file.  Index changes
between processes are serialised by the index store's file locks, as between two servers.

The server side (``LMTPWorkers``) starts them, starts again one that dies (after a pause that
grows while they keep dying) and stops them at stop.  A worker stops by itself when the server
goes away without stopping it (its stdin, a pipe from the server, reaches end of file).
"""

from __future__ import annotations

import os
import socket
import sys

from twisted.internet import defer, protocol
from twisted.logger import Logger

log = Logger(namespace="mailserver.workers")

WORKER_OPTION = "--lmtp-worker-fds"
SHAREABLE = ("tcp:", "tcp6:", "unix:")      # endpoint descriptions a plain socket serves as is
RESTART_FIRST = 1.0                         # seconds before starting a dead worker again, doubling
RESTART_MAX = 60.0
FIRST_CHILD_FD = 3


def shareable_ports(listeners: list) -> list:
    """Of ``(description, port)``, the ports a worker can serve with a plain factory (TCP or
    UNIX sockets; not endpoint wrappers such as haproxy:, whose work is in their factory)."""
    return [port for desc, port in listeners if desc.startswith(SHAREABLE) and hasattr(port, "socket")]


def encode_fds(ports: list) -> tuple[str, dict]:
    """(the worker option's value "3:2,4:10", childFDs mapping the child's fds to ours)."""
    spec, child_fds = [], {}
    for n, port in enumerate(ports, FIRST_CHILD_FD):
        spec.append(f"{n}:{int(port.socket.family)}")
        child_fds[n] = port.fileno()
    return ",".join(spec), child_fds


def decode_fds(value: str) -> list[tuple[int, int]]:
    """``"3:2,4:10"`` -> [(3, AF_INET), (4, AF_INET6)]."""
    out = []
    for item in value.split(","):
        fd, _, family = item.partition(":")
        out.append((int(fd), socket.AddressFamily(int(family))))
    return out


class _Child(protocol.ProcessProtocol):
    def __init__(self, owner: "LMTPWorkers", slot: int):
        self.owner = owner
        self.slot = slot
        self.started = owner.reactor.seconds()
        self.ended = defer.Deferred()

    def processEnded(self, reason):
        self.ended.callback(reason.value)
        self.owner._ended(self, reason.value)


class LMTPWorkers:
    """``count`` LMTP worker processes serving ``ports`` (of this process) with ``config_path``."""

    def __init__(self, reactor, config_path: str, ports: list, count: int):
        self.reactor = reactor
        self.config_path = config_path
        self.ports = ports
        self.count = count
        self.children: dict[int, _Child] = {}
        self._delay: dict[int, float] = {}
        self._stopping = False

    def start(self) -> None:
        for slot in range(self.count):
            self._spawn(slot)

    def _spawn(self, slot: int) -> None:
        if self._stopping:
            return
        value, child_fds = encode_fds(self.ports)
        child = _Child(self, slot)
        args = [sys.executable, "-m", "mailserver", "serve", "--config", self.config_path, WORKER_OPTION, value]
        # stdin a pipe from us (its end of file tells the worker we are gone), logs where ours go.
        self.reactor.spawnProcess(child, sys.executable, args, env=os.environ.copy(),
                                  childFDs={0: "w", 1: 1, 2: 2, **child_fds})
        self.children[slot] = child
        log.info("LMTP worker {slot} started (pid {pid})", slot=slot + 1, pid=child.transport.pid)

    def _ended(self, child: _Child, reason) -> None:
        if self.children.get(child.slot) is child:
            del self.children[child.slot]
        if self._stopping:
            return
        if self.reactor.seconds() - child.started >= RESTART_MAX:
            self._delay.pop(child.slot, None)       # it had been fine for a while: start afresh
        delay = self._delay.get(child.slot, RESTART_FIRST)
        self._delay[child.slot] = min(delay * 2, RESTART_MAX)
        log.error("LMTP worker {slot} ended unexpectedly ({reason}); starting it again in {delay:g} s",
                  slot=child.slot + 1, reason=str(reason), delay=delay)
        self.reactor.callLater(delay, self._spawn, child.slot)

    def signal_all(self, name: str) -> None:
        for child in list(self.children.values()):
            _signal(child, name)

    async def stop(self, patience: float) -> None:
        """SIGTERM every worker (each finishes its deliveries as the server does) and wait; one
        still there after ``patience`` seconds is killed."""
        self._stopping = True
        children = list(self.children.values())
        for child in children:
            _signal(child, "TERM")
        if not children:
            return
        done = defer.DeferredList([c.ended for c in children])
        late = self.reactor.callLater(patience, lambda: [_signal(c, "KILL") for c in children
                                                         if not c.ended.called])
        await done
        if late.active():
            late.cancel()


def _signal(child: _Child, name: str) -> None:
    try:
        child.transport.signalProcess(name)
    except Exception:                    # already gone
        pass


def watch_parent(reactor) -> None:
    """In a worker: stop when stdin (the server's pipe) closes, so a worker never outlives a
    server that was killed.  (SIGTERM stops it and SIGHUP reloads its certificate, as for the
    server, which passes SIGHUP on.)"""
    from twisted.internet import stdio

    class _Parent(protocol.Protocol):
        def connectionLost(self, reason=None):
            if reactor.running:
                log.warn("the server process is gone: LMTP worker stopping")
                reactor.stop()

    stdio.StandardIO(_Parent(), stdin=0, stdout=os.open(os.devnull, os.O_WRONLY))
