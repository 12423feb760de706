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
object (every user's ``shared/`` keys live in one) go on without conflicts.  Known limit: a
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
from .store import RadosObjectStore, user_namespace

PRIVATE_OID = "dict"               # in each user's namespace (store.FOREIGN_OIDS: not mail)
SHARED_OID = "dict-shared"
SHARED_NAMESPACE = "#dict-shared"  # '#' is not in the default [auth] username_chars
PAGE = 500          # omap entries per read when iterating (x 1 MiB values < the OSD's 1 GiB reply cap)
MAX_ATTEMPTS = 16   # conflicting increments retried this often, then TEMPORARY
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
        self.ceph_conf = ceph_conf
        self.pool = pool
        self.client_name = client_name
        self.op_timeout = op_timeout
        self.namespace_suffix = namespace_suffix
        self._reactor = reactor or default_reactor
        self._aio = AioBridge(self._reactor, op_timeout)
        self._cluster = None
        self._ioctx = None            # reactor thread only: aio submission
        self._busy: dict[tuple, defer.DeferredLock] = {}

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
        """Wait (each at most op_timeout) for operations in flight, then disconnect."""
        for d in list(self._aio.in_flight):
            try:
                await d
            except Exception:
                pass                        # the operation's own caller reports it
        self._aio.stop()
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
            size = sum(len(k.encode()) + len(v.encode()) for k, v in s.items() if v is not None)
            if size > MAX_WRITE:
                raise StorageError(ErrorKind.LIMIT, f"rados dict: transaction writes {size} bytes into "
                                                    f"{ns}/{oid}, more than {MAX_WRITE}")
        # One increment per object at a time in this process: concurrent ones here would only
        # make each other retry.  Locks are taken in the fixed priv/, shared/ order.
        held = []
        try:
            for ns, oid, _, inc in parts:
                if inc:
                    lock = self._busy.setdefault((ns, oid), defer.DeferredLock())
                    await lock.acquire()
                    held.append(((ns, oid), lock))
            plans = [await self._plan(*part) for part in parts]     # every check before any write
            for part, plan in zip(parts, plans):
                await self._commit(part, plan)
        finally:
            for name, lock in reversed(held):
                lock.release()
                if not lock.locked and not lock.waiting:
                    self._busy.pop(name, None)

    async def _plan(self, ns, oid, sets, increments):
        """(new values, guards) for one object: guards are the values read (None: no object)."""
        if not increments:
            return dictrules.apply({}, sets, {}), {}
        current = await self._values(ns, oid, increments, f"rados dict read {ns}/{oid}")
        guards = None if current is None else {k: current.get(k, "") for k in increments}
        return dictrules.apply(current or {}, sets, increments), guards

    async def _commit(self, part, plan) -> None:
        """Write one object's plan; on a conflict re-read, re-plan and retry (bounded, jittered)."""
        ns, oid = part[0], part[1]
        for attempt in range(MAX_ATTEMPTS):
            if await self._write(ns, oid, *plan):
                return
            await task.deferLater(self._reactor, random.uniform(0, min(0.05, 0.001 * 2 ** attempt)),
                                  lambda: None)
            plan = await self._plan(*part)
        raise StorageError(ErrorKind.TEMPORARY, f"rados dict: {ns}/{oid}: increments still conflicting "
                                                f"after {MAX_ATTEMPTS} attempts")

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
