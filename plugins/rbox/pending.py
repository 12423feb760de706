"""The object store as the rbox format uses it: reads and reference changes of an object wait
for its put still in flight.

With ``[rbox] parallel_commit`` a save's index record can become visible (to this process's
sessions) before its object is durable; a FETCH, COPY or EXPUNGE of that message in the
meantime must not find the object missing.  Every other call goes straight to the driver.
"""

from __future__ import annotations

from twisted.internet import defer


class WritesFirst:
    """Wraps an ``ObjectStore``; see the module docstring."""

    def __init__(self, inner):
        self.inner = inner
        self._writing: dict[tuple[str, str], list[defer.Deferred]] = {}   # (ns, oid) -> waiters

    def __getattr__(self, name):
        return getattr(self.inner, name)

    @property
    def max_object_size(self) -> int:
        return self.inner.max_object_size

    async def put(self, ns: str, oid: str, data: bytes, meta: dict[str, str]) -> None:
        key = (ns, oid)
        self._writing[key] = []
        try:
            await self.inner.put(ns, oid, data, meta)
        finally:
            for waiter in self._writing.pop(key, ()):
                waiter.callback(None)

    async def _written(self, ns: str, oid: str) -> None:
        waiters = self._writing.get((ns, oid))
        if waiters is not None:
            d = defer.Deferred()
            waiters.append(d)
            await d

    async def get(self, ns: str, oid: str, offset: int = 0, length: int | None = None) -> bytes:
        await self._written(ns, oid)
        return await self.inner.get(ns, oid, offset, length)

    async def get_many(self, ns: str, oids: list[str], sizes: list[int] | None = None) -> list:
        for oid in oids:
            await self._written(ns, oid)
        return await self.inner.get_many(ns, oids, sizes)

    async def get_meta(self, ns: str, oid: str) -> dict[str, str]:
        await self._written(ns, oid)
        return await self.inner.get_meta(ns, oid)

    async def add_ref(self, ns: str, oid: str, ref: str) -> None:
        await self._written(ns, oid)
        await self.inner.add_ref(ns, oid, ref)

    async def remove_ref(self, ns: str, oid: str, ref: str) -> bool:
        await self._written(ns, oid)
        return await self.inner.remove_ref(ns, oid, ref)

    async def refs(self, ns: str, oid: str) -> set[str]:
        await self._written(ns, oid)
        return await self.inner.refs(ns, oid)

    async def delete(self, ns: str, oid: str) -> None:
        await self._written(ns, oid)
        await self.inner.delete(ns, oid)
