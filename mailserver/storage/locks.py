"""In-process locks keyed by name, taken before a cross-process lock.

A driver whose cross-process lock blocks a pool thread (flock) must first serialise the
callers of its own process: otherwise many waiters can occupy every pool thread while the
holder needs one of them to finish its work and release (a starvation deadlock).
"""

from __future__ import annotations

from twisted.internet import defer


class KeyedLocks:
    def __init__(self):
        self._locks: dict[str, defer.DeferredLock] = {}

    async def acquire(self, key: str) -> None:
        lock = self._locks.get(key)
        if lock is None:
            lock = self._locks[key] = defer.DeferredLock()
        await lock.acquire()

    def release(self, key: str) -> None:
        lock = self._locks[key]
        lock.release()
        if not lock.locked and not lock.waiting:
            del self._locks[key]   # keep the table as small as the set of busy keys
