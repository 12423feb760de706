"""rbox's directory body cache (plugins/rbox/diskcache.py) in front of the local object store:
bodies read are gathered and written a moment later, served from memory until then, and the
writes keep their order with removals."""

from __future__ import annotations

import os

import pytest_twisted

from plugins.local.objects import LocalObjectStore
from plugins.rbox import diskcache
from plugins.rbox.diskcache import DirectoryCache

NS = "ann_namespace"


async def started(tmp_path, max_bytes=1 << 20):
    store = LocalObjectStore(str(tmp_path / "objects"))
    cache = DirectoryCache(store, str(tmp_path / "bodies"), max_bytes=max_bytes)
    await cache.start()
    return store, cache


def files(tmp_path) -> int:
    return sum(len([n for n in names if not n.startswith(diskcache.TMP)])
               for _, _, names in os.walk(tmp_path / "bodies"))


@pytest_twisted.ensureDeferred
async def test_fresh_bodies_are_written_later_and_served_from_memory_meanwhile(tmp_path):
    store, cache = await started(tmp_path)
    bodies = {f"m{i}": b"body %d\r\n" % i * 100 for i in range(5)}
    for oid, data in bodies.items():
        await store.put(NS, oid, data, {"I": "1"})
    assert await cache.get_many(NS, list(bodies)) == list(bodies.values())
    assert cache.misses == 5 and files(tmp_path) == 0          # gathered, not written yet
    for oid in bodies:
        await store.delete(NS, oid)                            # behind the cache's back
    assert await cache.get_many(NS, list(bodies)) == list(bodies.values())   # from memory
    assert cache.hits == 5
    await cache.flush()
    assert files(tmp_path) == 5
    again = DirectoryCache(store, str(tmp_path / "bodies"), max_bytes=1 << 20)
    await again.load()
    assert await again.get(NS, "m3") == bodies["m3"]           # from the directory
    await cache.stop()


@pytest_twisted.ensureDeferred
async def test_a_delete_before_the_write_leaves_no_file(tmp_path):
    store, cache = await started(tmp_path)
    await store.put(NS, "gone", b"x" * 500, {"I": "1"})
    await store.put(NS, "kept", b"y" * 500, {"I": "1"})
    await cache.get_many(NS, ["gone", "kept"])
    await cache.delete(NS, "gone")                             # still waiting to be written
    await cache.flush()
    assert files(tmp_path) == 1
    assert cache.bytes == 500


@pytest_twisted.ensureDeferred
async def test_the_cap_holds_while_bodies_wait(tmp_path):
    store, cache = await started(tmp_path, max_bytes=8 * 1000)   # one body at most 1000 bytes
    for i in range(20):
        await store.put(NS, f"m{i}", b"%03d" % i * 300, {"I": "1"})
    for i in range(20):
        await cache.get(NS, f"m{i}")
    await cache.flush()
    assert cache.bytes <= 8 * 1000 and files(tmp_path) == len(cache._files) == 8
    await cache.stop()
