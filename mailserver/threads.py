"""Bounded thread pools for blocking work (local file I/O, libcephfs, password hashing).

Each pool is started with the reactor and stopped at shutdown.  ``run`` returns a Deferred
fired on the reactor thread; hand a batch of work to one call rather than one call per item:
a thread round trip costs 50-100 microseconds.
"""

from __future__ import annotations

from twisted.internet import reactor as _reactor
from twisted.internet.threads import deferToThreadPool
from twisted.python.threadpool import ThreadPool

_pools: dict[str, ThreadPool] = {}


def pool(name: str, size: int = 4) -> ThreadPool:
    """The named pool, created and started on first use (stopped when the reactor stops)."""
    tp = _pools.get(name)
    if tp is None:
        tp = ThreadPool(minthreads=0, maxthreads=size, name=f"mailserver-{name}")
        tp.start()
        _pools[name] = tp
        _reactor.addSystemEventTrigger("during", "shutdown", _stop, name)
    return tp


def _stop(name: str) -> None:
    tp = _pools.pop(name, None)
    if tp is not None:
        tp.stop()


def run(name: str, fn, *args, **kwargs):
    """Run ``fn(*args, **kwargs)`` in the named pool; a Deferred with its result."""
    return deferToThreadPool(_reactor, pool(name), fn, *args, **kwargs)


async def call(name: str, fn, *args, **kwargs):
    """Coroutine form of ``run``."""
    return await run(name, fn, *args, **kwargs)
