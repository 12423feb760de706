"""A byte-capped LRU of recently read message bodies, keyed by (namespace, object id).

Objects are immutable, so an entry never goes stale; it only ages out."""

from __future__ import annotations

from collections import OrderedDict


class BodyCache:
    def __init__(self, max_bytes: int):
        self.max_bytes = max_bytes
        self.size = 0
        self._items: OrderedDict = OrderedDict()

    def get(self, key) -> bytes | None:
        data = self._items.get(key)
        if data is not None:
            self._items.move_to_end(key)
        return data

    def put(self, key, data: bytes) -> None:
        if len(data) > self.max_bytes // 4 or key in self._items:
            return  # one huge body must not flush everything else
        self._items[key] = data
        self.size += len(data)
        while self.size > self.max_bytes and self._items:
            _, old = self._items.popitem(last=False)
            self.size -= len(old)

    def discard(self, key) -> None:
        data = self._items.pop(key, None)
        if data is not None:
            self.size -= len(data)
