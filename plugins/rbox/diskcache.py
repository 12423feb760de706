"""An optional directory cache of message bodies in front of the object store
(``[rbox] body_cache_dir``, capped at ``body_cache_dir_bytes``).

Mail objects are immutable, so a cached body never goes stale: a file here is the object's
data, named by a hash of the namespace and the object id.  A read that misses is served by
the store and then written here in the background (temporary file, rename; never synced: a
file lost in a crash is only a miss), gathered for FLUSH_DELAY seconds first so that the writes
of a big FETCH's bodies do not compete with that FETCH (until written, they are served from
memory).  Least recently used files go when the cap is passed.
The directory is scanned at start (in a thread) so the cap holds across restarts.  All file
I/O runs in the ``bodycache`` thread pool, never on the reactor.  Deleting an object removes
its file here; on another host a file of a deleted object only ages out (object ids are
random and never reused, and no index refers to it any more).
"""

from __future__ import annotations

import hashlib
import os
from collections import OrderedDict

from twisted.internet import defer, reactor
from twisted.logger import Logger
from twisted.python.failure import Failure

from mailserver import threads

log = Logger(namespace="mailserver.rbox")

POOL = "bodycache"
TMP = ".tmp-"
FLUSH_DELAY = 0.5               # seconds fresh bodies wait, gathered, before being written
FLUSH_BYTES = 32 << 20          # ... unless this much is waiting


def _scan(root: str) -> list[tuple[float, str, int]]:
    """(access time, name, size) of every cached file, removing leftover temporaries."""
    found = []
    os.makedirs(root, mode=0o700, exist_ok=True)
    for sub in os.scandir(root):
        if not sub.is_dir():
            continue
        for f in os.scandir(sub.path):
            if f.name.startswith(TMP):
                os.unlink(f.path)
                continue
            st = f.stat()
            found.append((st.st_atime, f"{sub.name}/{f.name}", st.st_size))
    found.sort()
    return found


def _read_files(root: str, names: list[str | None]) -> list[bytes | None]:
    out = []
    for name in names:
        if name is None:
            out.append(None)
            continue
        try:
            with open(os.path.join(root, name), "rb") as f:
                out.append(f.read())
        except FileNotFoundError:
            out.append(None)
    return out


def _write_files(root: str, items: list[tuple[str, bytes]], doomed: list[str]) -> None:
    for name in doomed:
        try:
            os.unlink(os.path.join(root, name))
        except FileNotFoundError:
            pass
    for name, data in items:
        path = os.path.join(root, name)
        tmp = os.path.join(os.path.dirname(path), TMP + os.path.basename(path))
        os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, path)


class DirectoryCache:
    """Wraps an ``ObjectStore``: whole-object reads are served from, and remembered in, a
    directory; every other call goes straight to the driver."""

    def __init__(self, inner, root: str, max_bytes: int):
        self.inner = inner
        self.root = root
        self.max_bytes = max_bytes
        self.bytes = 0
        self._files: OrderedDict[str, int] = OrderedDict()    # name -> size, oldest first
        self._writes: set[defer.Deferred] = set()
        self._writing: set[str] = set()     # names whose file is not written yet
        self._waiting: dict[str, bytes] = {}    # name -> body, gathered for the next flush
        self._waiting_bytes = 0
        self._doomed: list[str] = []        # files to remove at the next flush
        self._flush_call = None
        self._write_lock = defer.DeferredLock()    # one flush at a time, in order
        self.hits = self.misses = 0

    def __getattr__(self, name):
        return getattr(self.inner, name)

    @property
    def max_object_size(self) -> int:
        return self.inner.max_object_size

    @staticmethod
    def _name(ns: str, oid: str) -> str:
        digest = hashlib.sha256(f"{ns}\0{oid}".encode()).hexdigest()
        return f"{digest[:2]}/{digest[2:]}"

    async def start(self) -> None:
        await self.inner.start()
        await self.load()

    async def load(self) -> None:
        """Take stock of the directory (what an earlier run left there) and apply the cap."""
        threads.pool(POOL, 2)
        for _, name, size in await threads.call(POOL, _scan, self.root):
            self._files[name] = size
            self.bytes += size
        log.info("body cache directory {root}: {n} bodies, {mb:.1f} MB of {cap:.1f} MB",
                 root=self.root, n=len(self._files), mb=self.bytes / 1e6, cap=self.max_bytes / 1e6)
        doomed = self._evict()
        if doomed:
            await threads.call(POOL, _write_files, self.root, [], doomed)

    async def stop(self) -> None:
        await self.flush()
        await self.inner.stop()

    async def flush(self) -> None:
        """Write what is gathered now, and wait for every write in progress."""
        self._flush()
        while self._writes:
            await defer.DeferredList(list(self._writes), consumeErrors=True)

    # --- reads ---------------------------------------------------------------------------------

    async def get(self, ns: str, oid: str, offset: int = 0, length: int | None = None) -> bytes:
        data = (await self._lookup([self._name(ns, oid)]))[0]
        if data is None:
            if offset or length is not None:
                return await self.inner.get(ns, oid, offset, length)    # a part: not cached
            data = await self.inner.get(ns, oid)
            self._remember([(self._name(ns, oid), data)])
            return data
        return data[offset:] if length is None else data[offset:offset + length]

    async def get_many(self, ns: str, oids: list[str], sizes: list[int] | None = None) -> list:
        names = [self._name(ns, oid) for oid in oids]
        found = await self._lookup(names)
        missing = [i for i, data in enumerate(found) if data is None]
        if missing:
            fetched = await self.inner.get_many(ns, [oids[i] for i in missing],
                                                [sizes[i] for i in missing] if sizes else None)
            fresh = []
            for i, data in zip(missing, fetched):
                found[i] = data
                if isinstance(data, bytes):
                    fresh.append((names[i], data))
            self._remember(fresh)
        return found

    async def _lookup(self, names: list[str]) -> list[bytes | None]:
        waiting = [self._waiting.get(name) for name in names]
        known = [name if w is None and name in self._files and name not in self._writing else None
                 for name, w in zip(names, waiting)]
        # Files are read only if some are known on disk (a thread hand-off otherwise saved).
        read = await threads.call(POOL, _read_files, self.root, known) if any(known) else known
        found = [w if w is not None else f for w, f in zip(waiting, read)]
        for name, on_disk, data in zip(names, known, found):
            if data is not None:
                self.hits += 1
                if name in self._files:
                    self._files.move_to_end(name)
            else:
                self.misses += 1
                if on_disk is not None:
                    self._forget(name)       # removed behind our back
        return found

    # --- writes --------------------------------------------------------------------------------

    def _remember(self, items: list[tuple[str, bytes]]) -> None:
        """Gather freshly read bodies for a write in the background; evict past the cap."""
        items = [(n, d) for n, d in items if n not in self._files and len(d) <= self.max_bytes // 8]
        if not items:
            return
        for name, data in items:
            self._files[name] = len(data)
            self._writing.add(name)
            self._waiting[name] = data
            self._waiting_bytes += len(data)
            self.bytes += len(data)
        for name in self._evict():
            self._unqueue(name)
            self._doomed.append(name)
        if self._waiting_bytes >= FLUSH_BYTES:
            self._flush()
        elif self._flush_call is None:
            self._flush_call = reactor.callLater(FLUSH_DELAY, self._flush)

    def _unqueue(self, name: str) -> None:
        data = self._waiting.pop(name, None)
        if data is not None:
            self._waiting_bytes -= len(data)
            self._writing.discard(name)

    def _flush(self) -> None:
        """One thread job writes what is gathered, after the job before it (they must not
        reorder a removal and a rewrite of the same name)."""
        if self._flush_call is not None:
            if self._flush_call.active():
                self._flush_call.cancel()
            self._flush_call = None
        if not self._waiting and not self._doomed:
            return
        items, doomed = list(self._waiting.items()), self._doomed
        self._waiting, self._waiting_bytes, self._doomed = {}, 0, []
        d = self._write_lock.run(threads.run, POOL, _write_files, self.root, items, doomed)
        self._writes.add(d)

        def done(result):
            self._writes.discard(d)
            for name, _ in items:
                self._writing.discard(name)
                if isinstance(result, Failure):
                    self._forget(name)
            if isinstance(result, Failure):
                log.warn("body cache directory {root}: cannot write: {e}", root=self.root,
                         e=result.getErrorMessage())
        d.addBoth(done)

    def _evict(self) -> list[str]:
        doomed = []
        while self.bytes > self.max_bytes and self._files:
            name, size = self._files.popitem(last=False)
            self.bytes -= size
            doomed.append(name)
        return doomed

    def _forget(self, name: str) -> None:
        size = self._files.pop(name, None)
        if size is not None:
            self.bytes -= size

    def _drop(self, ns: str, oid: str) -> None:
        name = self._name(ns, oid)
        if name in self._files:
            self._forget(name)
            self._unqueue(name)
            self._doomed.append(name)
            self._flush()

    async def remove_ref(self, ns: str, oid: str, ref: str) -> bool:
        deleted = await self.inner.remove_ref(ns, oid, ref)
        if deleted:
            self._drop(ns, oid)
        return deleted

    async def delete(self, ns: str, oid: str) -> None:
        await self.inner.delete(ns, oid)
        self._drop(ns, oid)
