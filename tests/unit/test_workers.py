"""LMTP workers' restart pacing and the socket hand-over encoding (mailserver/workers.py); the
processes themselves are tested over the wire in tests/protocol/test_lmtp_workers.py."""

from __future__ import annotations

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


def test_fd_spec_round_trip():
    assert workers.decode_fds("3:2,4:10") == [(3, socket.AF_INET), (4, socket.AF_INET6)]
    assert workers.decode_fds("3:1") == [(3, socket.AF_UNIX)]
