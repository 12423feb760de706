"""The RADOS dictionary: ``mailserver.storage.drivers.Dict`` in omap entries.

Layout (docs/ceph.md): pool ``[dict] pool`` (default ``[rados] pool``).  ``priv/`` keys of a
user are the omap of the object ``dict`` in the user's namespace (``store.user_namespace``,
the same as the user's mail objects); ``shared/`` keys are the omap of the object
``dict-shared`` in the namespace ``SHARED_NAMESPACE``.  Omap keys are the full dictionary keys,
values their UTF-8 bytes.  A missing object is an empty dictionary.

Writes: one WriteOp per object (set_omap + remove_omap_keys), atomic in RADOS.  Increments
read the counters' current values, then write the new ones with an ``omap_cmp`` (EQ the value
read) on every counter read -- or, if the object did not exist, an exclusive create -- so a
write that raced with another process or host fails whole with ECANCELED (EEXIST) and is
retried from the read, after a short random delay, at most MAX_ATTEMPTS times, then TEMPORARY.
Comparing the values rather than the object version lets writers of other keys of the same
object (every user's ``shared/`` keys live in one) go on without conflicts.  Increments on one
object from this process are queued and committed in batches (one read and one WriteOp for all
transactions waiting, each applied in turn), so they do not make each other retry.  Known limit: a
counter that was missing at the read is compared as "missing or empty", so a concurrent set of
that key to "" is overwritten instead of making the increment INVALID.

A transaction touching ``priv/`` and ``shared/`` keys validates every key and value and reads
and checks the counters of both objects before writing either; it then writes the user's
object, then the shared one.  Each object's part is atomic, the pair is not: if the second
write fails (Ceph unreachable, or after a conflict a counter is found no longer an integer),
the ``priv/`` part stays applied and the error is raised.

All I/O is librados aio (``aio.AioBridge``) on the reactor thread; only connecting and
disconnecting run in a one-thread pool.
"""

from __future__ import annotations

import errno
import random

from twisted.internet import defer, task
from twisted.internet import reactor as default_reactor

from mailserver import threads
from mailserver.storage import dictrules
from mailserver.storage.drivers import DICT_PRIVATE, Dict, check_dict_key, dict_prefix_matches
from mailserver.storage.errors import ErrorKind, StorageError

from .aio import AioBridge
from .cluster import connect
from .store import DICT_OID, DICT_SHARED_OID, RadosObjectStore, user_namespace

PRIVATE_OID = DICT_OID             # in each user's namespace (store.FOREIGN_OIDS: not mail)
SHARED_OID = DICT_SHARED_OID
SHARED_NAMESPACE = "#dict-shared"  # '#' is not in the default [auth] username_chars
PAGE = 500          # omap entries per read when iterating (x 1 MiB values < the OSD's 1 GiB reply cap)
MAX_ATTEMPTS = 32   # conflicting increments retried this often, then TEMPORARY
MAX_BATCH = 256     # transactions of one process committed in one WriteOp
MAX_WRITE = 64 * 1024 * 1024   # bytes of keys and values in one object's write (osd_max_write_size: 90 MB)
THREADS = "rados-dict"


class RadosDict(Dict):
    """Dictionary in RADOS omap: one object per user for ``priv/``, one shared object."""

    # Loading this driver makes [rados] known even when mail is not in RADOS: its keys are the
    # defaults of [dict] ceph_conf, pool, client_name and op_timeout.
    CONFIG_SECTION = RadosObjectStore.CONFIG_SECTION
    CONFIG_SCHEMA = RadosObjectStore.CONFIG_SCHEMA

    def __init__(self, *, ceph_conf: str, pool: str, client_name: str = "client.admin",
                 op_timeout: float = 10.0, namespace_suffix: str = "_namespace", reactor=None):
        """Not connected until ``start``."""
        self.ceph_conf = ceph_conf
        self.pool = pool
        self.client_name = client_name
        self.op_timeout = op_timeout
        self.namespace_suffix = namespace_suffix
        self._reactor = reactor or default_reactor
        self._aio = AioBridge(self._reactor, op_timeout)
        self._cluster = None
        self._ioctx = None            # reactor thread only: aio submission
        self._locks: dict[tuple, defer.DeferredLock] = {}    # per (ns, oid): one writer with reads
        self._queues: dict[tuple, list] = {}                 # per (ns, oid): increments waiting
        self._draining: dict[tuple, defer.Deferred] = {}  # per (ns, oid): its queue's drainer
        self.conflicts = 0            # writes that lost a race and were retried (for operators)
        self.batches = 0              # WriteOps that committed transactions with increments

    @classmethod
    def from_config(cls, config) -> "RadosDict":
        """``[dict]`` keys, each empty/0 falling back to the ``[rados]`` key of the same name."""
        d, r = config.dict, config.section("rados")
        return cls(ceph_conf=d.ceph_conf or r.ceph_conf, pool=d.pool or r.pool,
                   client_name=d.client_name or r.client_name, op_timeout=d.op_timeout or r.op_timeout,
                   namespace_suffix=config.rbox.namespace_suffix)

    # --- life cycle ----------------------------------------------------------------------------

    async def start(self) -> None:
        """Connect within ``op_timeout``; StorageError(TEMPORARY) naming the cluster if not."""
        d = threads.run(THREADS, connect, self.ceph_conf, self.client_name, self.pool, self.op_timeout)
        d.addTimeout(self.op_timeout + 5, self._reactor)    # client_mount_timeout normally ends it first
        try:
            self._cluster, self._ioctx = await d
        except StorageError:
            raise
        except Exception as e:
            raise StorageError(ErrorKind.TEMPORARY, f"cannot connect to Ceph at {self.ceph_conf} "
                                                    f"(dictionary): {e or type(e).__name__}") from e

    async def stop(self) -> None:
        """Wait for queued transactions and operations in flight (each at most op_timeout),
        then disconnect."""
        await self._aio.finish(*self._draining.values())
        if self._cluster is not None:
            cluster, ioctx = self._cluster, self._ioctx
            self._cluster = self._ioctx = None

            def shutdown():
                ioctx.close()
                cluster.shutdown()
            await threads.run(THREADS, shutdown)

    # --- reading -------------------------------------------------------------------------------

    def _object(self, username: str, space: str) -> tuple[str, str]:
        """(namespace, oid) of the object holding ``space`` for ``username``."""
        if space == DICT_PRIVATE:
            return user_namespace(username, self.namespace_suffix), PRIVATE_OID
        return SHARED_NAMESPACE, SHARED_OID

    def _io(self, ns: str):
        """The Ioctx switched to ``ns`` (librados copies the namespace into an op at submission)."""
        if self._ioctx is None:
            raise StorageError(ErrorKind.TEMPORARY, "rados dict: not connected")
        self._ioctx.set_namespace(ns)
        return self._ioctx

    async def _read(self, ns: str, oid: str, what: str, build) -> list[tuple[str, str]] | None:
        """Run a ReadOp whose omap read ``build(io, op)`` sets up; its (key, value) pairs in
        key order, or None if the object does not exist."""
        io = self._io(ns)
        op = io.create_read_op()
        raw: list = []

        def done():             # librados has finished with the op: drain the iterator, free it
            raw.extend(it)
            op.release()
        try:
            it, _ = build(io, op)
        except BaseException:
            op.release()
            raise
        rv, _ = await self._aio.submit(what, lambda cb: io.operate_aio_read_op(op, oid, oncomplete=cb),
                                       {errno.ENOENT}, cleanup=done)
        if rv == -errno.ENOENT:
            return None
        try:
            # python-rados hands an empty value back as None
            return [(k, (v or b"").decode("utf-8")) for k, v in raw]
        except UnicodeDecodeError:
            raise StorageError(ErrorKind.CORRUPTED, f"{what}: a value is not UTF-8") from None

    async def _values(self, ns: str, oid: str, keys, what: str) -> dict[str, str] | None:
        """Current values of ``keys`` (missing ones absent); None if the object does not exist."""
        pairs = await self._read(ns, oid, what, lambda io, op: io.get_omap_vals_by_keys(op, tuple(keys)))
        return None if pairs is None else dict(pairs)

    async def get(self, username: str, key: str) -> str | None:
        """One omap read by key."""
        ns, oid = self._object(username, dictrules.space(check_dict_key(key)))
        values = await self._values(ns, oid, (key,), f"rados dict get {ns}/{oid}")
        return (values or {}).get(key)

    async def iterate(self, username: str, prefix: str, recursive: bool = True) -> dict[str, str]:
        """Omap reads of PAGE entries filtered by ``prefix``, each starting after the last key seen.
        A short page is the last: the OSD shortens a page only past osd_max_omap_bytes_per_request
        (1 GiB), more than PAGE values of at most 1 MiB."""
        ns, oid = self._object(username, dictrules.space(dictrules.check_prefix(prefix)))
        out: dict[str, str] = {}
        after = ""
        while True:
            page = await self._read(ns, oid, f"rados dict iterate {ns}/{oid}",
                                    lambda io, op: io.get_omap_vals(op, after, prefix, PAGE))
            for key, value in page or ():
                if dict_prefix_matches(key, prefix, recursive):
                    out[key] = value
            if not page or len(page) < PAGE:
                return out
            after = page[-1][0]

    # --- writing -------------------------------------------------------------------------------

    async def transaction(self, username: str, sets=(), increments=()) -> None:
        """Validate all, read and check every counter, then one WriteOp per object (see module)."""
        halves = dictrules.split(sets, increments)
        parts = [(*self._object(username, space), s, inc) for space, (s, inc) in halves.items()]
        for ns, oid, s, _ in parts:
            if _size(s) > MAX_WRITE:
                raise StorageError(ErrorKind.LIMIT, f"rados dict: transaction writes {_size(s)} bytes "
                                                    f"into {ns}/{oid}, more than {MAX_WRITE}")
        if len(parts) == 1 and parts[0][3]:
            ns, oid, s, inc = parts[0]
            await self._enqueue((ns, oid), s, inc)
        elif not any(inc for *_, inc in parts):
            for ns, oid, s, _ in parts:                     # sets only: nothing to read or compare
                await self._commit(ns, oid, [(s, {})])
        else:
            await self._both(parts)

    async def _both(self, parts) -> None:
        """Increments in both halves: the two objects' locks (priv/ first), both read and checked,
        then the user's object written, then the shared one."""
        held = []
        try:
            for ns, oid, _, _ in parts:
                lock = self._locks.setdefault((ns, oid), defer.DeferredLock())
                await lock.acquire()
                held.append(((ns, oid), lock))
            plans = []
            for ns, oid, s, inc in parts:                     # every check before any write
                plan = await self._plan(ns, oid, [(s, inc)])
                if plan[2][0] is not None:
                    raise plan[2][0]
                plans.append(plan)
            for (ns, oid, s, inc), plan in zip(parts, plans):
                outcome = (await self._commit(ns, oid, [(s, inc)], plan))[0]
                if outcome is not None:
                    raise outcome
        finally:
            for name, lock in reversed(held):
                lock.release()
                self._forget(name)

    # Increments on one object from this process are queued and committed in batches: one read
    # and one WriteOp for every transaction waiting, each applied in turn (a refused one changes
    # nothing).  Concurrent increments of one counter in one process would otherwise only make
    # each other retry; batched, they cost one round trip pair for many.

    async def _enqueue(self, name: tuple, sets: dict, increments: dict) -> None:
        """Queue one transaction for object ``name`` and wait for its batch."""
        d = defer.Deferred()
        self._queues.setdefault(name, []).append((sets, increments, d))
        if name not in self._draining:
            drain = defer.Deferred.fromCoroutine(self._drain(name))
            if not drain.called:        # it may have finished already (not connected: at once)
                self._draining[name] = drain
        await d

    def _take(self, name: tuple, batch: list) -> None:
        """Move waiting transactions of ``name`` into ``batch`` while it stays within the limits."""
        queue = self._queues.get(name, [])
        size = sum(_size(s) for s, _, _ in batch)
        while queue and len(batch) < MAX_BATCH and (not batch or size + _size(queue[0][0]) <= MAX_WRITE):
            size += _size(queue[0][0])
            batch.append(queue.pop(0))

    async def _drain(self, name: tuple) -> None:
        """Commit the queue of ``name`` batch by batch, under its lock; fire every Deferred."""
        ns, oid = name
        lock = self._locks.setdefault(name, defer.DeferredLock())
        try:
            while self._queues.get(name):
                await lock.acquire()
                batch: list = []
                try:
                    self._take(name, batch)
                    try:
                        outcomes = await self._commit(ns, oid, batch, take=lambda: self._take(name, batch))
                    except Exception as e:      # TEMPORARY, or a bug: never leave a caller waiting
                        outcomes = [e] * len(batch)
                finally:
                    lock.release()
                for (_, _, d), outcome in zip(batch, outcomes):
                    if outcome is None:
                        d.callback(None)
                    else:
                        d.errback(outcome)
        finally:
            self._draining.pop(name, None)
            self._queues.pop(name, None)
            self._forget(name)

    def _forget(self, name: tuple) -> None:
        """Drop the lock of an object nobody uses now (one per object ever seen would pile up)."""
        lock = self._locks.get(name)
        if lock is not None and not lock.locked and not lock.waiting and name not in self._draining:
            del self._locks[name]

    async def _plan(self, ns: str, oid: str, txs: list) -> tuple:
        """(new values, guards, outcomes) of transactions ``[(sets, increments)]`` on one object.
        Guards: the incremented keys' values as read ("" when missing), None if the object
        does not exist, {} when nothing was read."""
        keys = {key for _, inc in txs for key in inc}
        if not keys:
            values, outcomes = dictrules.apply_batch({}, txs)
            return values, {}, outcomes
        current = await self._values(ns, oid, keys, f"rados dict read {ns}/{oid}")
        # No guard on a value that is not a counter: every increment of it is refused (nothing
        # written for it), and python-rados' omap_cmp compares only len(str) bytes of the value.
        guards = None if current is None else {k: current.get(k, "") for k in keys
                                               if dictrules.is_counter(current.get(k, ""))}
        values, outcomes = dictrules.apply_batch(current or {}, txs)
        return values, guards, outcomes

    async def _commit(self, ns: str, oid: str, batch: list, plan=None, take=None) -> list:
        """Plan and write ``batch`` (``(sets, increments, ...)`` tuples); after a conflict wait a
        little, ``take()`` more waiting work, re-plan and retry, at most MAX_ATTEMPTS times.
        Each transaction's outcome (None or its error)."""
        for attempt in range(MAX_ATTEMPTS):
            if plan is None:
                plan = await self._plan(ns, oid, [(t[0], t[1]) for t in batch])
            values, guards, outcomes = plan
            if not values or await self._write(ns, oid, values, guards):
                self.batches += guards != {}
                if attempt:
                    # Another process or host writes this object too: leave it a window before
                    # our next batch, or a writer that just lost could keep losing.
                    await self._pause(0)
                return outcomes
            self.conflicts += 1
            await self._pause(attempt)
            if take is not None:
                take()
            plan = None
        raise StorageError(ErrorKind.TEMPORARY, f"rados dict: {ns}/{oid}: increments still conflicting "
                                                f"after {MAX_ATTEMPTS} attempts")

    async def _pause(self, attempt: int) -> None:
        """A random delay growing with ``attempt`` (jitter: retries of competing writers spread)."""
        await task.deferLater(self._reactor, random.uniform(0, min(0.02, 0.0005 * 2 ** attempt)),
                              lambda: None)

    async def _write(self, ns: str, oid: str, values: dict, guards: dict | None) -> bool:
        """One WriteOp: guards (omap_cmp, or exclusive create when ``guards`` is None), then the
        sets and removals.  False when another writer got in between."""
        import rados
        io = self._io(ns)
        op = io.create_write_op()
        new = {k: v.encode("utf-8") for k, v in values.items() if v is not None}
        gone = tuple(k for k, v in values.items() if v is None)
        try:
            if guards is None:
                op.new(rados.LIBRADOS_CREATE_EXCLUSIVE)
            else:
                for key, value in guards.items():
                    op.omap_cmp(key, value, rados.LIBRADOS_CMPXATTR_OP_EQ)
            if new:
                io.set_omap(op, tuple(new), tuple(new.values()))
            if gone:
                io.remove_omap_keys(op, gone)
        except BaseException:
            op.release()
            raise
        rv, _ = await self._aio.submit(f"rados dict write {ns}/{oid}",
                                       lambda cb: io.operate_aio_write_op(op, oid, oncomplete=cb),
                                       {errno.ECANCELED, errno.EEXIST, errno.ENOENT}, cleanup=op.release)
        if rv == -errno.ENOENT and guards == {} and not new:
            return True                 # only removals, from an object that does not exist
        return rv >= 0


def _size(sets: dict) -> int:
    """Bytes of keys and values a transaction's sets write."""
    return sum(len(k.encode()) + len(v.encode()) for k, v in sets.items() if v is not None)
