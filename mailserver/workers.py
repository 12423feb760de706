"""LMTP worker processes (``[lmtp] processes``).

One process runs Python on one core at a time, and an LMTP delivery is mostly Python (protocol,
MIME analysis, index records) and hand-offs between threads; with 10 connections one process
was measured at the rate of 1 connection.  So, as Dovecot runs several lmtp processes, the
server can start ``processes - 1`` children that serve LMTP only; each builds its own storage,
dictionary and authenticator from the same configuration file.  Index changes between
processes are serialised by the index store's file locks, as between two servers.

The server accepts every LMTP connection itself (on its own or systemd's sockets) and gives it
to the process (itself or a worker) serving the fewest LMTP connections, passing the socket
over a UNIX socket pair (SCM_RIGHTS).  Letting the processes accept from a shared listening socket was measured to put
all 10 connections of a burst in one process in half the runs: whoever wakes first accepts
them all.  A worker writes ``READY`` on its channel once it serves and ``CLOSED`` for each
connection that ends, so the server knows every process's count.

The server side (``LMTPWorkers``) starts them, starts again one that dies (after a pause that
grows while they keep dying) and stops them at stop.  A worker stops by itself when the server
goes away without stopping it (its channel reaches end of file).
"""

from __future__ import annotations

import errno
import itertools
import os
import socket
import sys

from twisted.internet import defer, interfaces, main, protocol
from twisted.logger import Logger
from zope.interface import implementer

from mailserver.limits import call_when_lost

log = Logger(namespace="mailserver.workers")

WORKER_OPTION = "--lmtp-worker-channel"
SHAREABLE = ("tcp:", "tcp6:", "unix:", "systemd:")   # endpoints whose plain socket serves as is
RESTART_FIRST = 1.0                         # seconds before starting a dead worker again, doubling
RESTART_MAX = 60.0
CHANNEL_FD = 3                              # the worker's end of its channel
READY, CLOSED, CONNECTION = b"r", b"c", b"n"
ACCEPTS_PER_WAKEUP = 32
_OUT_OF_RESOURCES = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)


def shareable_ports(listeners: list) -> list:
    """Of ``(description, port)``, the ports whose connections a worker can serve with a plain
    factory (TCP or UNIX sockets, ours or systemd's; not endpoint wrappers such as haproxy:,
    whose work is in their factory)."""
    return [port for desc, port in listeners if desc.startswith(SHAREABLE) and hasattr(port, "socket")]


class _CountingFactory(protocol.Factory):
    """``factory`` whose every connection calls ``on_close()`` once when it ends (or at once
    when no protocol is built for it)."""

    noisy = False

    def __init__(self, factory, on_close):
        self.factory = factory
        self.on_close = on_close
        self.builds = 0             # buildProtocol calls (see ``adopt``)

    def buildProtocol(self, addr):
        self.builds += 1
        try:
            proto = self.factory.buildProtocol(addr)
        except BaseException:
            self.on_close()
            raise
        if proto is None:
            self.on_close()
            return None
        call_when_lost(proto, self.on_close)
        return proto


def adopt(reactor, fd: int, family, factory: _CountingFactory) -> None:
    """Serve connected socket ``fd`` with ``factory``; its ``on_close`` is called once for it
    even when the connection fails before a protocol is built (a client already gone makes
    getpeername fail): a count left up would make that process look busy for good."""
    builds = factory.builds
    try:
        reactor.adoptStreamConnection(fd, family, factory)
    except Exception:
        if factory.builds == builds:
            factory.on_close()
        raise


# --- the server side ----------------------------------------------------------------------------

@implementer(interfaces.IReadDescriptor)
class _Channel:
    """The server's end of a worker's socket pair: sends it connections, counts what it serves."""

    def __init__(self, reactor, sock: socket.socket, slot: int):
        self.reactor = reactor
        self.sock = sock
        self.slot = slot
        self.active = 0
        self.ready = False
        sock.setblocking(False)
        reactor.addReader(self)

    def fileno(self) -> int:
        return self.sock.fileno()

    def logPrefix(self) -> str:
        return f"lmtp-worker-{self.slot + 1}"

    def doRead(self):
        try:
            data = self.sock.recv(4096)
        except BlockingIOError:
            return None
        except OSError:
            return main.CONNECTION_LOST
        if not data:
            return main.CONNECTION_DONE
        if READY in data and not self.ready:
            self.ready = True
            log.info("LMTP worker {slot} ready", slot=self.slot + 1)
        self.active = max(0, self.active - data.count(CLOSED))
        return None

    def connectionLost(self, reason) -> None:
        self.close()

    def close(self) -> None:
        self.ready = False
        if self.sock.fileno() >= 0:
            self.reactor.removeReader(self)
            self.sock.close()

    def send(self, conn: socket.socket) -> bool:
        """Pass ``conn`` to the worker; False if it cannot take it now (the caller serves it)."""
        try:
            socket.send_fds(self.sock, [CONNECTION], [conn.fileno()])
        except OSError:         # its buffer is full (a stuck worker) or it is gone
            return False
        self.active += 1
        return True


@implementer(interfaces.IReadDescriptor)
class _Acceptor:
    """Accepts on one of the server's LMTP listening sockets in place of Twisted's port (which
    keeps owning the socket: it closes it at stopListening)."""

    def __init__(self, owner: "LMTPWorkers", port):
        self.owner = owner
        self.sock = port.socket
        self.family = port.socket.family
        port.stopReading()
        owner.reactor.addReader(self)

    def fileno(self) -> int:
        return self.sock.fileno()

    def logPrefix(self) -> str:
        return "lmtp-dispatch"

    def doRead(self):
        for _ in range(ACCEPTS_PER_WAKEUP):
            try:
                conn, _ = self.sock.accept()
            except BlockingIOError:
                return None
            except OSError as e:
                if e.errno in _OUT_OF_RESOURCES:
                    log.error("cannot accept an LMTP connection: {e}", e=e.strerror)
                    return None
                continue                        # ECONNABORTED and the like: that client is gone
            self.owner.dispatch(conn, self.family)
        return None

    def connectionLost(self, reason) -> None:
        self.stop()

    def stop(self) -> None:
        self.owner.reactor.removeReader(self)


class _Child(protocol.ProcessProtocol):
    def __init__(self, owner: "LMTPWorkers", slot: int, channel: _Channel | None = None):
        self.owner = owner
        self.slot = slot
        self.channel = channel
        self.started = owner.reactor.seconds()
        self.ended = defer.Deferred()

    def processEnded(self, reason):
        if self.channel is not None:
            self.channel.close()
        self.ended.callback(reason.value)
        self.owner._ended(self, reason.value)


class LMTPWorkers:
    """``count`` LMTP worker processes started with ``config_path``; the connections of
    ``ports`` (of this process) go to the least busy of them and of this process, whose own
    are served by ``factory``."""

    def __init__(self, reactor, config_path: str, ports: list, count: int, factory=None):
        self.reactor = reactor
        self.config_path = config_path
        self.ports = ports
        self.count = count
        self.children: dict[int, _Child] = {}
        self.local_active = 0
        self._local_factory = _CountingFactory(factory, self._local_closed) if factory is not None else None
        self._acceptors: list[_Acceptor] = []
        self._turn = itertools.count()
        self._delay: dict[int, float] = {}
        self._stopping = False

    def start(self) -> None:
        for slot in range(self.count):
            self._spawn(slot)
        self._acceptors = [_Acceptor(self, port) for port in self.ports]

    def _local_closed(self) -> None:
        self.local_active -= 1

    def dispatch(self, conn: socket.socket, family) -> None:
        """Serve ``conn`` in the process with the fewest LMTP connections (ties in turn)."""
        conn.setblocking(False)
        try:
            channels = [c.channel for c in self.children.values() if c.channel is not None and c.channel.ready]
            # This process (None) is a candidate like any worker; rotating the list before a
            # stable sort by load spreads ties.
            candidates = [None] + channels
            k = next(self._turn) % len(candidates)
            for target in sorted(candidates[k:] + candidates[:k], key=self._load):
                if target is None or target.send(conn):
                    break
            if target is None:
                self.local_active += 1
                adopt(self.reactor, conn.fileno(), family, self._local_factory)
        except OSError as e:            # the client went away in between
            log.info("an LMTP connection was gone before it was served: {e}", e=e.strerror)
        except Exception:
            log.failure("could not hand over an LMTP connection")
        finally:
            conn.close()                # sent or adopted: both hold their own copy now

    def _load(self, channel: _Channel | None) -> int:
        return self.local_active if channel is None else channel.active

    def stop_accepting(self) -> None:
        """Before the server closes its listening sockets."""
        for acceptor in self._acceptors:
            acceptor.stop()
        self._acceptors = []

    def _spawn(self, slot: int) -> None:
        if self._stopping:
            return
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            child = _Child(self, slot)
            args = [sys.executable, "-m", "mailserver", "serve", "--config", self.config_path,
                    WORKER_OPTION, str(CHANNEL_FD)]
            # Logs go where ours go; stdin is a pipe nobody writes to (fd 0 stays taken).
            self.reactor.spawnProcess(child, sys.executable, args, env=os.environ.copy(),
                                      childFDs={0: "w", 1: 1, 2: 2, CHANNEL_FD: theirs.fileno()})
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        child.channel = _Channel(self.reactor, ours, slot)
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
        self.stop_accepting()
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


# --- the worker side ----------------------------------------------------------------------------

@implementer(interfaces.IFileDescriptorReceiver)
class _WorkerChannel(protocol.Protocol):
    """A worker's end of its channel: serves each connection the server sends with ``factory``,
    and stops the worker when the server is gone."""

    def __init__(self, reactor, factory):
        self.reactor = reactor
        self.factory = _CountingFactory(factory, self._closed)

    def connectionMade(self):
        self.transport.write(READY)

    def fileDescriptorReceived(self, fd: int) -> None:
        try:
            conn = socket.socket(fileno=fd)
        except OSError:
            os.close(fd)
            return
        try:
            adopt(self.reactor, conn.fileno(), conn.family, self.factory)
        except OSError as e:            # the client went away in between
            log.info("an LMTP connection handed over by the server was gone: {e}", e=e.strerror)
        except Exception:
            log.failure("could not serve an LMTP connection handed over by the server")
        finally:
            conn.close()

    def dataReceived(self, data: bytes) -> None:
        pass                            # one CONNECTION byte carries each descriptor

    def _closed(self) -> None:
        if self.transport is not None and self.transport.connected:
            self.transport.write(CLOSED)

    def connectionLost(self, reason=None):
        if self.reactor.running:
            log.warn("the server process is gone: LMTP worker stopping")
            self.reactor.stop()


def serve_channel(reactor, fd: int, factory) -> None:
    """In a worker: serve the LMTP connections the server sends over channel ``fd``."""
    channel = _WorkerChannel(reactor, factory)
    reactor.adoptStreamConnection(fd, socket.AF_UNIX, _Once(channel))
    os.close(fd)                        # adoptStreamConnection took its own copy


class _Once(protocol.Factory):
    noisy = False

    def __init__(self, proto):
        self.proto = proto

    def buildProtocol(self, addr):
        return self.proto
