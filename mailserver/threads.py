"""Bounded thread pools for blocking work (local file I/O, libcephfs, password hashing).

Each pool is created on first use and stopped at reactor shutdown, after the server's own stop
(which waits for in-flight writes).  Work submitted after that fails with ``PoolStopped``
instead of starting threads in a process that is exiting.  ``run`` returns a Deferred fired on
the reactor thread; hand a batch of work to one call rather than one call per item: a thread
round trip costs 50-100 microseconds.
"""

from __future__ import annotations

from twisted.internet import defer
from twisted.internet import reactor as _reactor
from twisted.internet.threads import deferToThreadPool
from twisted.python.threadpool import ThreadPool

_pools: dict[str, ThreadPool] = {}
_stopped = False
_trigger_added = False


class PoolStopped(Exception):
    """The process is shutting down: no new blocking work is accepted."""


def pool(name: str, size: int = 4) -> ThreadPool:
    """The named pool, created and started on first use (stopped when the reactor stops)."""
    global _trigger_added
    if _stopped:
        raise PoolStopped(f"thread pool {name!r} is stopped: shutting down")
    tp = _pools.get(name)
    if tp is None:
        tp = ThreadPool(minthreads=0, maxthreads=size, name=f"mailserver-{name}")
        tp.start()
        _pools[name] = tp
        if not _trigger_added:
            _reactor.addSystemEventTrigger("during", "shutdown", _stop_all)
            _trigger_added = True
    return tp


def _stop_all() -> None:
    global _stopped
    _stopped = True
    while _pools:
        _, tp = _pools.popitem()
        tp.stop()


def run(name: str, fn, *args, **kwargs) -> defer.Deferred:
    """Run ``fn(*args, **kwargs)`` in the named pool; a Deferred with its result."""
    try:
        tp = pool(name)
    except PoolStopped as e:
        return defer.fail(e)
    return deferToThreadPool(_reactor, tp, fn, *args, **kwargs)


async def call(name: str, fn, *args, **kwargs):
    """Coroutine form of ``run``."""
    return await run(name, fn, *args, **kwargs)
