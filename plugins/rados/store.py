"""The RADOS object store: ``mailserver.storage.drivers.ObjectStore`` on librados.

Layout (docs/ceph.md): pool ``[rados] pool``; one RADOS namespace per user, named
username + ``[rbox] namespace_suffix``; one object per mail whose data is the message, whose
xattrs are the one-letter metadata keys of ``drivers.py`` (as dovecot-ceph-plugin stores
them), and whose omap holds the references: key ``ref.<ref>`` (the initial one is ``ref.``).

Atomicity: an object small enough for one OSD write is created with ONE WriteOp (exclusive
create, data, every xattr, the initial reference).  A larger one is written in parts at
offsets into its final name, the first part creating it exclusively; the metadata xattrs and
the reference go in the LAST part's WriteOp.  An object without the ``I`` (version) xattr is
therefore incomplete: ``get_meta`` reports it NOT_FOUND, and a garbage collector may delete
it once it is older than any write could take.

All data and reference I/O is librados aio (``aio.AioBridge``), each operation with a
deadline.  Three calls have no aio form in the Python bindings -- reading xattrs, listing a
namespace, and connecting -- and run in the bounded ``rados`` thread pool instead, with the
same deadline.
"""

from __future__ import annotations

import errno
import json
import queue
import threading
import time

from twisted.internet import reactor as default_reactor
from twisted.internet import defer
from twisted.internet.defer import TimeoutError as DeferredTimeout
from twisted.logger import Logger

from mailserver import threads
from mailserver.config import Key, absolute_path, non_negative, positive
from mailserver.storage.drivers import META_VERSION, OBJECT_FORMAT_VERSION, ObjectStore
from mailserver.storage.errors import ErrorKind, StorageError

from .aio import AioBridge, storage_error
from .cluster import connect, librados_seconds

REF_PREFIX = "ref."          # omap key of a reference: REF_PREFIX + ref
DYING_KEY = "dying"          # omap key set while the last reference's removal deletes the object
STATE_PREFIX = "state."      # object name prefix of mutable state objects (index checkpoints)
# Objects the RADOS dictionary keeps in the same namespaces (plugins/rados/dict.py uses these
# names).  Mail oids are hex GUIDs, so these never clash; ``list`` skips them, or gc would
# delete them as incomplete mail.
DICT_OID = "dict"
DICT_SHARED_OID = "dict-shared"
FOREIGN_OIDS = frozenset({DICT_OID, DICT_SHARED_OID})
DEFAULT_MAX_WRITE_SIZE = 90 * 1024 * 1024        # Ceph's osd_max_write_size default (90 MB)
DEFAULT_MAX_OBJECT_SIZE = 128 * 1024 * 1024      # Ceph's osd_max_object_size default
WRITE_OVERHEAD = 64 * 1024   # room left in a write for xattrs and omap (osd_max_write_size counts them)
FIRST_READ = 64 * 1024       # a whole-object read first asks for this much (most mails are smaller)
THREADS = "rados"
THREAD_COUNT = 2

log = Logger()


def user_namespace(username: str, suffix: str) -> str:
    """The RADOS namespace of a user's objects: username + ``[rbox] namespace_suffix``.  The
    one derivation, shared by every driver keeping per-user objects in RADOS (the dictionary)."""
    if not username:
        raise StorageError(ErrorKind.INTERNAL, "rados: empty username has no namespace")
    return username + suffix


def _read_data(rv: int, payload) -> bytes:
    """The bytes of a finished aio_read.  python-rados only trims its buffer for
    0 < rv < length: a read past the end (rv 0) would hand back ``length`` bytes of
    uninitialised memory."""
    data = payload[0]
    return data if len(data) == rv else data[:rv]


def _nonempty(value: str) -> str | None:
    return None if value else "must not be empty"


class RadosObjectStore(ObjectStore):
    """Mail objects in a RADOS pool, one namespace per user."""

    CONFIG_SECTION = "rados"
    CONFIG_SCHEMA = {
        "ceph_conf": Key(str, "/etc/ceph/ceph.conf", absolute_path, "ceph.conf of the cluster."),
        "client_name": Key(str, "client.admin", _nonempty, "Ceph client (cephx user) name."),
        "pool": Key(str, "mail", _nonempty, "Pool holding the mail objects (created if missing)."),
        "op_timeout": Key(float, 10.0, positive,
                          "Seconds before a Ceph operation (or connecting) fails as temporary."),
        "max_write_size": Key(int, 0, non_negative,
                              "Largest single OSD write, bytes; 0: the cluster's osd_max_write_size "
                              "(90 MB if it cannot be read).  Larger objects are written in parts."),
        "max_object_size": Key(int, 0, non_negative,
                               "Largest object, bytes; 0: the cluster's osd_max_object_size "
                               "(128 MiB if it cannot be read).  Larger mails are refused (TOO_BIG)."),
    }

    def __init__(self, *, ceph_conf: str, client_name: str = "client.admin", pool: str = "mail",
                 op_timeout: float = 10.0, max_write_size: int = 0, max_object_size: int = 0,
                 namespace_suffix: str = "_namespace", reactor=None):
        self.ceph_conf = ceph_conf
        self.client_name = client_name
        self.pool = pool
        self.op_timeout = op_timeout
        self.namespace_suffix = namespace_suffix
        self._want_write_size = max_write_size
        self._want_object_size = max_object_size
        self.max_write_size = max_write_size or DEFAULT_MAX_WRITE_SIZE
        self._max_object_size = max_object_size or DEFAULT_MAX_OBJECT_SIZE
        self._reactor = reactor or default_reactor
        self._aio = AioBridge(self._reactor, op_timeout)
        self._cluster = None
        self._ioctx = None                   # used on the reactor thread only (aio submission)
        self._thread_ioctxs: queue.SimpleQueue = queue.SimpleQueue()   # for pool-thread calls
        self._thread_jobs = 0                 # pool-thread calls queued or running
        self._thread_jobs_done = threading.Condition()
        self._all_ioctxs: list = []

    @classmethod
    def from_config(cls, config) -> "RadosObjectStore":
        s = config.section(cls.CONFIG_SECTION)
        return cls(ceph_conf=s.ceph_conf, client_name=s.client_name, pool=s.pool,
                   op_timeout=s.op_timeout, max_write_size=s.max_write_size,
                   max_object_size=s.max_object_size,
                   namespace_suffix=config.rbox.namespace_suffix)

    # --- life cycle ----------------------------------------------------------------------------

    async def start(self) -> None:
        """Connect (within ``op_timeout``), create the pool if missing, read the OSD limits."""
        threads.pool(THREADS, THREAD_COUNT)      # one thread per thread-owned Ioctx
        d = threads.run(THREADS, self._connect_blocking)
        d.addTimeout(self.op_timeout + 5, self._reactor)   # client_mount_timeout normally ends it first
        try:
            await d
        except StorageError:
            raise
        except Exception as e:
            raise StorageError(ErrorKind.TEMPORARY,
                               f"cannot connect to Ceph at {self.ceph_conf}: {e or type(e).__name__}") from e
        log.info("rados: connected to {conf} as {name}, pool {pool}; max write {w} B, max object {o} B",
                 conf=self.ceph_conf, name=self.client_name, pool=self.pool,
                 w=self.max_write_size, o=self._max_object_size)

    def _connect_blocking(self) -> None:
        """Connect (pool thread): the shared client handle, the OSD limits, the Ioctxs."""
        cluster, ioctx = connect(self.ceph_conf, self.client_name, self.pool, self.op_timeout,
                                 on_connected=self._read_limits)
        self._cluster = cluster
        self._ioctx = ioctx
        self._all_ioctxs = [ioctx]
        for _ in range(THREAD_COUNT):
            extra = cluster.open_ioctx(self.pool)
            self._all_ioctxs.append(extra)
            self._thread_ioctxs.put(extra)

    def _read_limits(self, cluster) -> None:
        """The OSDs' write and object size limits; a smaller configured value wins.

        Asked first of a running OSD (``tell osd.N config get``: it sees values set in the
        OSDs' own ceph.conf; needs osd ``allow *``), else of the monitors' configuration database
        (which answers with Ceph's defaults when nothing is set there), else Ceph's defaults."""
        timeout = librados_seconds(self.op_timeout)

        def command(send, *target, cmd: dict) -> bytes | None:
            try:
                ret, out, _ = send(*target, json.dumps(cmd), b"", timeout=timeout)
            except Exception:        # rados.Error: cephx caps, OSD down
                return None
            return out if ret == 0 else None

        out = command(cluster.mon_command, cmd={"prefix": "osd ls", "format": "json"})
        try:
            osd_ids = json.loads(out) if out else []
        except ValueError:
            osd_ids = []

        def osd_option(name: str) -> int | None:
            try:
                if osd_ids:
                    out = command(cluster.osd_command, osd_ids[0],
                                  cmd={"prefix": "config get", "var": name})
                    if out:
                        return int(json.loads(out)[name])
                out = command(cluster.mon_command, cmd={"prefix": "config get", "who": "osd", "key": name})
                if out:
                    return int(out.decode().strip())
            except (ValueError, TypeError, KeyError, UnicodeDecodeError):
                pass
            log.warn("rados: cannot read {name} from the cluster; assuming Ceph's default", name=name)
            return None

        write_mb = osd_option("osd_max_write_size")
        write = write_mb * 1024 * 1024 if write_mb else DEFAULT_MAX_WRITE_SIZE
        obj = osd_option("osd_max_object_size") or DEFAULT_MAX_OBJECT_SIZE
        self.max_write_size = min(write, self._want_write_size) if self._want_write_size else write
        self._max_object_size = min(obj, self._want_object_size) if self._want_object_size else obj

    async def stop(self) -> None:
        """Wait (up to op_timeout) for in-flight operations, then disconnect."""
        await self._aio.finish()
        if self._cluster is not None:
            cluster, ioctxs = self._cluster, self._all_ioctxs
            self._cluster, self._ioctx, self._all_ioctxs = None, None, []
            self._thread_ioctxs = queue.SimpleQueue()

            def shutdown():
                # A call that outlived its deadline may still be inside librados: shutting the
                # client down under it would leave its thread blocked for ever (and the
                # process unable to exit).  librados ends it by rados_osd_op_timeout.
                with self._thread_jobs_done:
                    idle = self._thread_jobs_done.wait_for(lambda: self._thread_jobs == 0,
                                                           timeout=3 * self.op_timeout + 5)
                if not idle:
                    log.warn("rados: calls still blocked in librados at stop; not shutting the client down")
                    return
                for io in ioctxs:
                    io.close()
                cluster.shutdown()
            await threads.run(THREADS, shutdown)

    # --- helpers -------------------------------------------------------------------------------

    def namespace(self, username: str) -> str:
        """The user's namespace (``user_namespace``)."""
        return user_namespace(username, self.namespace_suffix)

    @property
    def max_object_size(self) -> int:
        return self._max_object_size

    def _io(self, ns: str):
        """The reactor thread's Ioctx, switched to ``ns``.  librados copies the namespace into
        each operation when it is submitted, so one Ioctx serves every user."""
        if self._ioctx is None:
            raise StorageError(ErrorKind.TEMPORARY, "rados: not connected")
        self._ioctx.set_namespace(ns)
        return self._ioctx

    async def _write_op(self, ns: str, oid: str, build, what: str, ok_errnos=frozenset()) -> int:
        """Build a WriteOp with ``build(ioctx, op)`` and run it; the return value."""
        io = self._io(ns)
        op = io.create_write_op()
        try:
            build(io, op)
        except BaseException:
            op.release()
            raise
        rv, _ = await self._aio.submit(what, lambda cb: io.operate_aio_write_op(op, oid, oncomplete=cb),
                                       ok_errnos, cleanup=op.release)
        return rv

    async def _in_thread(self, what: str, fn, *args):
        """Run a blocking librados call in the pool with a thread-owned Ioctx and the deadline."""
        if self._cluster is None:
            raise StorageError(ErrorKind.TEMPORARY, "rados: not connected")
        ioctxs = self._thread_ioctxs
        with self._thread_jobs_done:
            self._thread_jobs += 1

        def job():
            try:
                io = ioctxs.get()
                try:
                    return fn(io, *args)
                finally:
                    ioctxs.put(io)
            finally:
                with self._thread_jobs_done:
                    self._thread_jobs -= 1
                    self._thread_jobs_done.notify_all()

        d = threads.run(THREADS, job)
        d.addTimeout(self.op_timeout, self._reactor)
        try:
            return await d
        except StorageError:
            raise
        except Exception as e:
            code = getattr(e, "errno", None)
            if isinstance(code, int) and code > 0:
                raise storage_error(code, what) from None
            if isinstance(e, DeferredTimeout):
                raise StorageError(ErrorKind.TEMPORARY,
                                   f"{what}: no answer from Ceph within {self.op_timeout:g} s") from None
            raise StorageError(ErrorKind.TEMPORARY, f"{what}: {e}") from None

    # --- objects -------------------------------------------------------------------------------

    async def put(self, ns: str, oid: str, data: bytes, meta: dict[str, str]) -> None:
        size = len(data)
        if size > self._max_object_size:
            raise StorageError(ErrorKind.TOO_BIG, f"rados: {ns}/{oid}: {size} bytes is over the "
                                                  f"object size limit {self._max_object_size}")
        import rados
        xattrs = [(key, value.encode("utf-8")) for key, value in meta.items()]
        if META_VERSION not in meta:
            xattrs.append((META_VERSION, OBJECT_FORMAT_VERSION.encode()))
        part = max(1, self.max_write_size - WRITE_OVERHEAD)
        what = f"rados put {ns}/{oid}"

        def finish(io, op):
            for key, value in xattrs:
                op.set_xattr(key, value)
            io.set_omap(op, (REF_PREFIX,), (b"",))

        if size <= part:
            def whole(io, op):
                op.new(rados.LIBRADOS_CREATE_EXCLUSIVE)
                op.write_full(data)
                finish(io, op)
            await self._write_op(ns, oid, whole, what)
        else:
            await self._put_parts(ns, oid, data, part, finish, what)

    async def _put_parts(self, ns, oid, data, part, finish, what) -> None:
        """Write an object larger than one OSD write: parts in order into the final name, the
        metadata (which marks it complete) with the last part.  On failure the partial object
        is deleted (or left for gc if even that fails: it has no ``I`` xattr)."""
        import rados
        offsets = range(0, len(data), part)
        try:
            for offset in offsets:
                chunk = data[offset:offset + part]
                first, last = offset == 0, offset + part >= len(data)

                def build(io, op, chunk=chunk, offset=offset, first=first, last=last):
                    if first:
                        op.new(rados.LIBRADOS_CREATE_EXCLUSIVE)
                    op.write(chunk, offset)
                    if last:
                        finish(io, op)
                await self._write_op(ns, oid, build, f"{what} (part at {offset})")
        except StorageError as e:
            if e.kind is not ErrorKind.EXISTS:
                try:
                    await self.delete(ns, oid)
                except StorageError as e2:
                    log.warn("rados: partial object {ns}/{oid} left for gc: {e}", ns=ns, oid=oid, e=e2)
            raise

    async def get(self, ns: str, oid: str, offset: int = 0, length: int | None = None) -> bytes:
        if offset < 0 or (length is not None and length < 0):
            raise StorageError(ErrorKind.INTERNAL, f"rados get {ns}/{oid}: bad range {offset}+{length}")
        what = f"rados get {ns}/{oid}"
        if length is not None:
            if length == 0:       # librados reads to the end for length 0: ask stat instead
                await self._stat(ns, oid, what)
                return b""
            return await self._read(ns, oid, offset, length, what)
        # Whole object (from offset): one read of FIRST_READ bytes covers most mails; only a
        # bigger one costs a stat and a second read.  (The python binding allocates the full
        # requested length per read, so asking for max_object_size would be wasteful.)
        data = await self._read(ns, oid, offset, FIRST_READ, what)
        if len(data) == FIRST_READ:
            size = (await self._stat(ns, oid, what))[0]
            rest = size - offset - len(data)
            if rest > 0:
                data += await self._read(ns, oid, offset + len(data), rest, what)
        return data

    async def get_many(self, ns: str, oids: list[str], sizes: list[int] | None = None) -> list:
        """Every read submitted at once.  With the index's sizes each object is one read of its
        size plus one byte: getting exactly the size back proves it is the whole object, so
        only an object bigger than its index says (never, for immutable mail) costs the
        stat and second read of ``get``."""
        if sizes is None or len(sizes) != len(oids):
            return await super().get_many(ns, oids, sizes)
        io = self._io(ns)
        reads = []
        for oid, size in zip(oids, sizes):
            length = size + 1
            if size < 0:
                reads.append(None)
                continue
            try:
                reads.append(self._aio.submit(
                    f"rados get {ns}/{oid}",
                    lambda cb, oid=oid, length=length: io.aio_read(oid, length, 0, oncomplete=cb)))
            except StorageError as e:
                reads.append(defer.fail(e))
        out: list = []
        for oid, size, d in zip(oids, sizes, reads):
            try:
                if d is not None:
                    rv, payload = await d
                    if rv <= size:
                        out.append(_read_data(rv, payload))
                        continue
                out.append(await self.get(ns, oid))
            except StorageError as e:
                out.append(e)
        return out

    async def _read(self, ns, oid, offset, length, what) -> bytes:
        io = self._io(ns)
        rv, payload = await self._aio.submit(
            what, lambda cb: io.aio_read(oid, length, offset, oncomplete=cb))
        return _read_data(rv, payload)

    async def _stat(self, ns, oid, what) -> tuple:
        """(size, mtime as python-rados gives it: time.localtime of the object's mtime)."""
        io = self._io(ns)
        _, payload = await self._aio.submit(what, lambda cb: io.aio_stat(oid, cb))
        return payload

    async def get_meta(self, ns: str, oid: str) -> dict[str, str]:
        def xattrs(io, ns, oid):
            io.set_namespace(ns)
            return {k: v.decode("utf-8", "replace") for k, v in io.get_xattrs(oid)}
        meta = await self._in_thread(f"rados get_meta {ns}/{oid}", xattrs, ns, oid)
        if META_VERSION not in meta:
            raise StorageError(ErrorKind.NOT_FOUND, f"rados: {ns}/{oid} is incomplete (no {META_VERSION} xattr)")
        return meta

    async def mtime(self, ns: str, oid: str) -> float:
        return time.mktime((await self._stat(ns, oid, f"rados stat {ns}/{oid}"))[1])

    async def delete(self, ns: str, oid: str) -> None:
        io = self._io(ns)
        await self._aio.submit(f"rados delete {ns}/{oid}", lambda cb: io.aio_remove(oid, oncomplete=cb),
                               ok_errnos={errno.ENOENT})

    def _listing(self, io) -> list:
        """Every object the Ioctx lists (pool thread).  python-rados ends the iteration on ANY
        error, so a listing cut short by rados_osd_op_timeout would look complete (seen: an
        empty list after exactly the timeout).  A step that ended the listing after about that
        long is taken for a timeout."""
        librados_timeout = librados_seconds(self.op_timeout)
        it = io.list_objects()
        out = []
        while True:
            started = time.monotonic()
            try:
                out.append(next(it))
            except StopIteration:
                if time.monotonic() - started >= 0.9 * librados_timeout:
                    raise StorageError(ErrorKind.TEMPORARY, f"rados: listing in pool {self.pool} "
                                                            f"timed out after {librados_timeout} s") from None
                return out

    async def list(self, ns: str) -> list[str]:
        def names(io, ns):
            io.set_namespace(ns)
            return [obj.key for obj in self._listing(io)
                    if not obj.key.startswith(STATE_PREFIX) and obj.key not in FOREIGN_OIDS]
        return await self._in_thread(f"rados list {ns}", names, ns)

    async def list_namespaces(self) -> list[str]:
        """Every non-default namespace of the pool (a listing of the whole pool: for gc)."""
        def namespaces(io):
            import rados
            io.set_namespace(rados.LIBRADOS_ALL_NSPACES)
            found = {obj.nspace for obj in self._listing(io)}
            found.discard("")
            return sorted(found)
        return await self._in_thread("rados list_namespaces", namespaces)

    # --- mutable state objects (index checkpoints) ---------------------------------------------
    # Named STATE_PREFIX + name beside the mail objects (whose oids are hex GUIDs), skipped by
    # ``list``.  Replaced with one write_full: atomic in RADOS, no metadata, no references.

    @staticmethod
    def _state_oid(name: str) -> str:
        if not name or "/" in name or name.startswith(".") or "\0" in name:
            raise StorageError(ErrorKind.INVALID, f"rados: bad state object name {name!r}")
        return STATE_PREFIX + name

    async def put_state(self, ns: str, name: str, data: bytes) -> None:
        oid = self._state_oid(name)
        if len(data) > self.max_write_size - WRITE_OVERHEAD:
            raise StorageError(ErrorKind.TOO_BIG, f"rados: state {ns}/{name}: {len(data)} bytes is over "
                                                  f"one OSD write ({self.max_write_size})")
        await self._write_op(ns, oid, lambda io, op: op.write_full(data), f"rados put_state {ns}/{name}")

    async def get_state(self, ns: str, name: str) -> bytes | None:
        oid = self._state_oid(name)
        what = f"rados get_state {ns}/{name}"
        try:
            data = await self._read(ns, oid, 0, FIRST_READ, what)
            if len(data) == FIRST_READ:
                size = (await self._stat(ns, oid, what))[0]
                if size > len(data):
                    data += await self._read(ns, oid, len(data), size - len(data), what)
        except StorageError as e:
            if e.kind is ErrorKind.NOT_FOUND:
                return None
            raise
        return data

    async def list_states(self, ns: str) -> list[str]:
        def names(io, ns):
            io.set_namespace(ns)
            return sorted(obj.key[len(STATE_PREFIX):] for obj in self._listing(io)
                          if obj.key.startswith(STATE_PREFIX))
        return await self._in_thread(f"rados list_states {ns}", names, ns)

    async def delete_state(self, ns: str, name: str) -> None:
        oid = self._state_oid(name)
        io = self._io(ns)
        await self._aio.submit(f"rados delete_state {ns}/{name}",
                               lambda cb: io.aio_remove(oid, oncomplete=cb), ok_errnos={errno.ENOENT})

    # --- references ----------------------------------------------------------------------------
    # Removing the last reference must not race with adding one (COPY in another process).
    # add_ref's WriteOp asserts (omap_cmp) that DYING_KEY is unset; the remover of what looks
    # like the last reference sets DYING_KEY (exclusively, same assertion), re-reads the
    # references and only then deletes -- or clears DYING_KEY if a reference slipped in.

    @staticmethod
    def _ref_key(ref: str) -> str:
        if "\0" in ref:
            raise StorageError(ErrorKind.INTERNAL, f"rados: reference {ref!r} contains NUL")
        return REF_PREFIX + ref

    async def add_ref(self, ns: str, oid: str, ref: str) -> None:
        import rados
        key = self._ref_key(ref)

        def build(io, op):
            op.omap_cmp(DYING_KEY, "", rados.LIBRADOS_CMPXATTR_OP_EQ)   # also fails ENOENT if missing
            io.set_omap(op, (key,), (b"",))
        rv = await self._write_op(ns, oid, build, f"rados add_ref {ns}/{oid}", {errno.ECANCELED})
        if rv == -errno.ECANCELED:
            raise StorageError(ErrorKind.NOT_FOUND, f"rados: {ns}/{oid} is being deleted (last reference gone)")

    async def remove_ref(self, ns: str, oid: str, ref: str) -> bool:
        import rados
        what = f"rados remove_ref {ns}/{oid}"
        key = self._ref_key(ref)
        rv = await self._write_op(ns, oid, lambda io, op: io.remove_omap_keys(op, (key,)), what,
                                  {errno.ENOENT})
        if rv == -errno.ENOENT:
            return False
        if await self._omap_keys(ns, oid, what, REF_PREFIX, 1):
            return False

        def mark(io, op):
            op.omap_cmp(DYING_KEY, "", rados.LIBRADOS_CMPXATTR_OP_EQ)
            io.set_omap(op, (DYING_KEY,), (b"1",))
        rv = await self._write_op(ns, oid, mark, what, {errno.ENOENT, errno.ECANCELED})
        if rv < 0:
            return False                    # gone already, or another remover is deleting it
        if await self._omap_keys(ns, oid, what, REF_PREFIX, 1):
            # add_ref ran between our read and our mark: the object lives on
            await self._write_op(ns, oid, lambda io, op: io.remove_omap_keys(op, (DYING_KEY,)), what)
            return False
        await self.delete(ns, oid)
        return True

    async def refs(self, ns: str, oid: str) -> set[str]:
        keys = await self._omap_keys(ns, oid, f"rados refs {ns}/{oid}", REF_PREFIX, 100_000)
        return {k[len(REF_PREFIX):] for k in keys}

    async def _omap_keys(self, ns, oid, what, prefix: str, limit: int) -> list[str]:
        """Up to ``limit`` omap keys starting with ``prefix`` (one aio read op)."""
        io = self._io(ns)
        op = io.create_read_op()
        keys: list[str] = []

        def done():             # librados has finished with the op: read the iterator, free it
            if not keys:
                keys.extend(k for k, _ in it)
            op.release()
        try:
            it, _ = io.get_omap_vals(op, "", prefix, limit)
        except BaseException:
            op.release()
            raise
        await self._aio.submit(what, lambda cb: io.operate_aio_read_op(op, oid, oncomplete=cb),
                               cleanup=done)
        return keys
