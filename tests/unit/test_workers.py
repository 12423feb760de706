"""LMTP workers' restart pacing and how connections are shared out (mailserver/workers.py); the
processes themselves are tested over the wire in tests/protocol/test_lmtp_workers.py."""

from __future__ import annotations

import os
import socket

from twisted.internet.task import Clock

from mailserver import workers


def test_restart_delay_doubles_while_a_worker_keeps_dying_and_starts_afresh_after_a_good_run():
    clock = Clock()
    pool = workers.LMTPWorkers(clock, "/etc/mailserver/mailserver.toml", [], 1)
    spawned = []
    pool._spawn = lambda slot: spawned.append((clock.seconds(), slot))

    def die_after(lived: float) -> float:
        """A worker of slot 0 that ran ``lived`` seconds ends; the delay before its restart."""
        child = workers._Child(pool, 0)
        pool.children[0] = child
        clock.advance(lived)
        before = len(clock.getDelayedCalls())
        pool._ended(child, "killed")
        call = clock.getDelayedCalls()[before]
        delay = call.getTime() - clock.seconds()
        clock.advance(delay)
        return delay

    assert [die_after(0.5) for _ in range(8)] == [1, 2, 4, 8, 16, 32, 60, 60]
    assert die_after(workers.RESTART_MAX) == 1          # it had run fine for a minute
    assert die_after(0.5) == 2
    assert [slot for _, slot in spawned] == [0] * 10


def test_no_restart_once_stopping():
    clock = Clock()
    pool = workers.LMTPWorkers(clock, "/x.toml", [], 1)
    child = workers._Child(pool, 0)
    pool.children[0] = child
    pool._stopping = True
    pool._ended(child, "terminated")
    assert clock.getDelayedCalls() == [] and pool.children == {}


class _Reactor(Clock):
    """What the dispatcher uses of a reactor: readers are only recorded, adoption too."""

    def __init__(self):
        super().__init__()
        self.readers = set()
        self.adopted = []

    def addReader(self, r):
        self.readers.add(r)

    def removeReader(self, r):
        self.readers.discard(r)

    def adoptStreamConnection(self, fd, family, factory):
        if getattr(self, "gone", False):            # the client left before getpeername
            raise OSError(107, "Transport endpoint is not connected")
        self.adopted.append((os.fstat(fd).st_ino, family))


def test_each_connection_goes_to_the_process_serving_the_fewest():
    reactor = _Reactor()
    pool = workers.LMTPWorkers(reactor, "/x.toml", [], 2, factory=object())
    worker_ends = {}
    for slot in range(2):
        ours, theirs = socket.socketpair()
        child = workers._Child(pool, slot, workers._Channel(reactor, ours, slot))
        pool.children[slot] = child
        worker_ends[slot] = theirs
    pool.children[0].channel.ready = pool.children[1].channel.ready = True
    listener = socket.create_server(("127.0.0.1", 0))
    clients = []

    def connect_and_dispatch():
        clients.append(socket.create_connection(listener.getsockname()))
        conn, _ = listener.accept()
        inode = os.fstat(conn.fileno()).st_ino
        pool.dispatch(conn, socket.AF_INET)
        assert conn.fileno() == -1                  # our copy is always closed
        return inode

    def received(slot):
        worker_ends[slot].setblocking(False)
        inodes = []
        try:
            while True:
                data, fds, _, _ = socket.recv_fds(worker_ends[slot], 16, 16)
                assert data == workers.CONNECTION * len(fds)
                inodes += [os.fstat(fd).st_ino for fd in fds]
                for fd in fds:
                    os.close(fd)
        except BlockingIOError:
            return inodes

    sent = [connect_and_dispatch() for _ in range(6)]
    got = {slot: received(slot) for slot in (0, 1)}
    local = [inode for inode, _ in reactor.adopted]
    assert (len(local), len(got[0]), len(got[1])) == (2, 2, 2)
    assert sorted(local + got[0] + got[1]) == sorted(sent)   # each connection once, the socket itself
    # Worker 1 reports two closed; the next two go to it.
    worker_ends[1].send(workers.CLOSED * 2)
    pool.children[1].channel.doRead()
    assert pool.children[1].channel.active == 0
    nxt = [connect_and_dispatch() for _ in range(2)]
    assert received(1) == nxt and received(0) == []
    # A worker that cannot take one (gone): the connection is served here instead.
    worker_ends[1].close()
    pool.children[0].channel.ready = False      # restarting: not offered any
    pool.local_active = 5
    pool.children[1].channel.active = 0
    last = connect_and_dispatch()
    assert reactor.adopted[-1] == (last, socket.AF_INET)
    for s in clients + [listener, worker_ends[0]]:
        s.close()
    for slot in (0, 1):
        pool.children[slot].channel.close()


def test_a_connection_gone_before_it_is_served_is_not_counted_for_good():
    reactor = _Reactor()
    pool = workers.LMTPWorkers(reactor, "/x.toml", [], 0, factory=object())
    listener = socket.create_server(("127.0.0.1", 0))
    client = socket.create_connection(listener.getsockname())
    conn, _ = listener.accept()
    reactor.gone = True
    pool.dispatch(conn, socket.AF_INET)             # served here: the adoption fails
    assert pool.local_active == 0 and conn.fileno() == -1
    # In a worker: the server is told it is closed, so its count for the worker comes down.
    ours, theirs = socket.socketpair()
    channel = workers._WorkerChannel(reactor, object())
    channel.transport = type("T", (), {"connected": True, "write": lambda self, d: theirs.send(d)})()
    channel.fileDescriptorReceived(os.dup(client.fileno()))     # adoption fails the same way
    assert ours.recv(16) == workers.CLOSED
    for s in (client, listener, ours, theirs):
        s.close()
