"""A byte-capped LRU of recently read or written message bodies.

Objects are immutable, so a cached body never goes stale; ``discard`` is called when an object
is deleted.  Bodies larger than an eighth of the cap are not cached (one huge mail must not
flush everything else).
"""

from __future__ import annotations

from collections import OrderedDict


class BodyCache:
    def __init__(self, max_bytes: int):
        self.max_bytes = max_bytes
        self.bytes = 0
        self._items: OrderedDict = OrderedDict()

    def get(self, key) -> bytes | None:
        data = self._items.get(key)
        if data is not None:
            self._items.move_to_end(key)
        return data

    def put(self, key, data: bytes) -> None:
        if len(data) > self.max_bytes // 8:
            return
        old = self._items.pop(key, None)
        if old is not None:
            self.bytes -= len(old)
        self._items[key] = data
        self.bytes += len(data)
        while self.bytes > self.max_bytes:
            _, dropped = self._items.popitem(last=False)
            self.bytes -= len(dropped)

    def discard(self, key) -> None:
        old = self._items.pop(key, None)
        if old is not None:
            self.bytes -= len(old)

    def __len__(self):
        return len(self._items)
