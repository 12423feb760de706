"""The CephFS index store: ``mailserver.storage.drivers.IndexStore`` on libcephfs.

libcephfs has no asynchronous API: every method runs as ONE job in a bounded thread pool of
this store's own (``mailserver.threads``, pool ``cephfs``), with a deadline (``op_timeout``):
past it the caller gets StorageError(TEMPORARY); the thread itself stays blocked in Ceph until
Ceph answers, and the bounded pool keeps that from piling up threads.

Files live under ``[cephfs] root`` inside the file system.  Appends are buffered by the Ceph
client until ``sync``; concurrent ``sync`` calls are grouped into one pool job (group commit).
Locks are libcephfs ``flock`` on ``<path>.lock``: the MDS arbitrates them between clients, so
they exclude across processes and hosts; a crashed holder's lock goes when the MDS ends its
session (``mds_session_autoclose``, 300 s by default; at once on a clean unmount).

Lock leases: taking and dropping a flock are two MDS round trips, the costliest part of a
commit.  A compare-and-append keeps the lock it took (and the files it wrote, open) for
``lock_lease`` seconds after its job, so this process's next commit to that mailbox is one
job with no MDS round trip but the fsync.  A lease goes back when idle that long, after
``LEASE_MAX_HOLD`` leases' worth of continuous use (then none is taken for one lease, so
another server polling for the lock gets it), at once to an in-process ``lock()`` caller
(handed over, no round trip), and at stop.  See docs/ceph.md.
"""

from __future__ import annotations

import errno
import itertools
import math
import posixpath
import threading
from typing import Iterable

from twisted.internet import reactor as default_reactor
from twisted.internet import task
from twisted.internet.defer import Deferred, TimeoutError as DeferredTimeout, gatherResults
from twisted.python.failure import Failure
from twisted.logger import Logger

from mailserver import threads
from mailserver.config import Key, absolute_path, non_negative, one_of, positive
from mailserver.storage.drivers import IndexLock, IndexStore
from mailserver.storage.errors import ErrorKind, StorageError

from . import jobs
from .jobs import TMP_PREFIX, Lease

log = Logger()

LOCK_SUFFIX = ".lock"
LOCK_POLL_FIRST = 0.005      # seconds between flock attempts, doubling up to LOCK_POLL_MAX
LOCK_POLL_MAX = 0.2
LOCK_WAIT = 30.0             # how long a compare-and-append waits for a lock held elsewhere
LEASE_MAX_HOLD = 5           # a lease in continuous use goes back after this many lock_lease
MAX_LEASES = 1000            # leases kept at once (each holds a flock and up to 4 open files)
RELEASE_CHUNK = 8            # leases given back per pool job
RIDER_IDLE = 30.0            # seconds an index cache file stays open after its last write


def _error(e: Exception, what: str) -> StorageError:
    code = getattr(e, "errno", None)
    text = f"{what}: {e}"
    if code == errno.ENOENT:
        return StorageError(ErrorKind.NOT_FOUND, text)
    if code in (errno.EINVAL, errno.EBADF, errno.ENAMETOOLONG, errno.EISDIR, errno.ENOTDIR):
        return StorageError(ErrorKind.INTERNAL, text)
    return StorageError(ErrorKind.TEMPORARY, text)    # ETIMEDOUT, ENOTCONN, EIO, ENOSPC, EDQUOT...


class CephFSIndexStore(IndexStore):
    """Index files in a CephFS directory tree, through libcephfs."""

    CONFIG_SECTION = "cephfs"
    CONFIG_SCHEMA = {
        "ceph_conf": Key(str, "/etc/ceph/ceph.conf", absolute_path, "ceph.conf of the cluster."),
        "client_name": Key(str, "client.admin", None, "Ceph client (cephx user) name."),
        "fs_name": Key(str, "", None, "CephFS file system to mount (empty: the default one)."),
        "root": Key(str, "/mail", absolute_path, "Directory inside CephFS holding the index (created if missing)."),
        "op_timeout": Key(float, 10.0, positive, "Seconds before an index operation (or mounting) fails as temporary."),
        "threads": Key(int, 4, positive, "Threads calling libcephfs."),
        "sync_method": Key(str, "fsync", one_of("fsync", "sync_fs"),
                           "How a grouped sync makes appends durable: fsync each file of the group, "
                           "or one sync_fs of the whole mount."),
        "lock_lease": Key(float, 1.0, non_negative,
                          "Seconds a mailbox's index lock taken by a commit is kept after it, so the "
                          "next commit from this server skips the lock round trips (0: unlock at once). "
                          "Another server waits for it at most about 5 times this."),
    }

    def __init__(self, *, ceph_conf: str, client_name: str = "client.admin", fs_name: str = "",
                 root: str = "/mail", op_timeout: float = 10.0, threads: int = 4,
                 sync_method: str = "fsync", lock_lease: float = 1.0, reactor=None):
        self.ceph_conf = ceph_conf
        self.client_name = client_name
        self.fs_name = fs_name
        self.root = posixpath.normpath(root)
        self.op_timeout = op_timeout
        self.sync_method = sync_method
        self.lock_lease = lock_lease
        self._threads = threads
        self._pool_name = "cephfs"
        self._reactor = reactor or default_reactor
        self._fs = None
        self._owners = itertools.count(1)         # flock owner ids (unique per lock taken)
        self._local_locks: dict[str, list[Deferred]] = {}   # path -> waiters; key present = held
        self._leases: dict[str, Lease] = {}       # lock path -> lease holding its flock
        self._no_lease_until: dict[str, float] = {}   # lock path -> end of its pause after a long lease
        self._lease_sweeper: task.LoopingCall | None = None
        self._commit_queue: list[jobs.Commit] = []
        self._rider_files = jobs.RiderFiles()
        self._stalled: dict[str, Lease] = {}      # lock path -> lease of a job past its deadline
        self._rider_closer: task.LoopingCall | None = None
        self._batch_running: Deferred | None = None
        self._sync_waiters: list[Deferred] = []
        self._sync_paths: set[str] = set()
        self._sync_running: Deferred | None = None
        self._jobs = 0                            # pool jobs queued or running
        self._jobs_done = threading.Condition()

    @classmethod
    def from_config(cls, config) -> "CephFSIndexStore":
        s = config.section(cls.CONFIG_SECTION)
        return cls(ceph_conf=s.ceph_conf, client_name=s.client_name, fs_name=s.fs_name, root=s.root,
                   op_timeout=s.op_timeout, threads=s.threads, sync_method=s.sync_method,
                   lock_lease=s.lock_lease)

    # --- plumbing ------------------------------------------------------------------------------

    async def _job(self, what: str, fn, *args, on_timeout=None):
        """Run ``fn(fs, *args)`` in the pool, with the deadline; libcephfs errors become
        StorageError.  ``on_timeout()`` runs when the deadline passes first."""
        fs = self._fs
        if fs is None:
            raise StorageError(ErrorKind.TEMPORARY, f"{what}: CephFS not mounted")
        with self._jobs_done:
            self._jobs += 1

        def job():
            try:
                return fn(fs, *args)
            finally:
                with self._jobs_done:
                    self._jobs -= 1
                    self._jobs_done.notify_all()
        d = threads.run(self._pool_name, job)
        d.addTimeout(self.op_timeout, self._reactor)
        try:
            return await d
        except StorageError:
            raise
        except DeferredTimeout:
            if on_timeout is not None:
                on_timeout()
            raise StorageError(ErrorKind.TEMPORARY,
                               f"{what}: no answer from CephFS within {self.op_timeout:g} s") from None
        except Exception as e:
            raise _error(e, what) from None

    def _abs(self, path: str) -> str:
        """The absolute CephFS path of a store path.  Paths come from the mailbox format, never
        from clients, but a bad one must not escape the root."""
        if path in ("", "."):
            return self.root
        parts = path.split("/")
        if path.startswith("/") or "\0" in path or any(p in ("", ".", "..") for p in parts):
            raise StorageError(ErrorKind.INTERNAL, f"cephfs: bad index path {path!r}")
        return self.root + "/" + path

    # --- life cycle ----------------------------------------------------------------------------

    async def start(self) -> None:
        threads.pool(self._pool_name, self._threads)
        d = threads.run(self._pool_name, self._mount_blocking)
        d.addTimeout(self.op_timeout + 5, self._reactor)   # client_mount_timeout normally ends it first
        try:
            self._fs = await d
        except StorageError:
            raise
        except Exception as e:
            raise StorageError(ErrorKind.TEMPORARY, f"cannot mount CephFS at {self.ceph_conf}: "
                                                    f"{e or type(e).__name__}") from None
        log.info("cephfs: mounted {fs} from {conf}, index under {root}", fs=self.fs_name or "(default)",
                 conf=self.ceph_conf, root=self.root)
        self._rider_closer = task.LoopingCall(self._close_idle_riders)
        self._rider_closer.clock = self._reactor
        self._rider_closer.start(RIDER_IDLE / 3, now=False).addErrback(
            lambda f: log.failure("cephfs: closing idle cache files", f))

    def _close_idle_riders(self):
        d = Deferred.fromCoroutine(self._job("cephfs close idle files", self._rider_files.close_idle,
                                             RIDER_IDLE))
        return d.addErrback(lambda f: log.warn("cephfs: closing idle cache files: {e}", e=f.value))

    def _mount_blocking(self):
        import cephfs
        auth_id = self.client_name[len("client."):] if self.client_name.startswith("client.") else self.client_name
        try:
            fs = cephfs.LibCephFS(conffile=self.ceph_conf, auth_id=auth_id)
        except cephfs.Error as e:
            raise StorageError(ErrorKind.TEMPORARY, f"cannot mount CephFS at {self.ceph_conf}: {e}") from None
        try:
            t = str(max(1, math.ceil(self.op_timeout)))    # whole seconds
            fs.conf_set("client_mount_timeout", t)
            fs.conf_set("rados_osd_op_timeout", t)
            fs.conf_set("rados_mon_op_timeout", t)
            fs.conf_set("debug_client", "0/0")
            fs.mount(filesystem_name=self.fs_name or None)
            fs.mkdirs(self.root, 0o700)
        except cephfs.Error as e:
            fs.shutdown()
            raise StorageError(ErrorKind.TEMPORARY, f"cannot mount CephFS at {self.ceph_conf}: {e}") from None
        return fs

    async def stop(self) -> None:
        for running in (self._batch_running, self._sync_running):
            if running is not None:
                try:
                    await running
                except Exception:
                    pass
        await self._release_leases(all_idle=True)
        if self._rider_closer is not None:
            if self._rider_closer.running:
                self._rider_closer.stop()
            self._rider_closer = None
        if self._fs is not None:
            try:
                await self._job("cephfs close cache files", self._rider_files.close_idle, -1.0)
            except StorageError as e:
                log.warn("cephfs: closing cache files at stop: {e}", e=e)
        fs, self._fs = self._fs, None
        if fs is not None:
            def unmount():
                # A call past its deadline may still be inside libcephfs: unmounting under it
                # would block its thread for ever (and the process's exit with it).
                with self._jobs_done:
                    idle = self._jobs_done.wait_for(lambda: self._jobs == 0, timeout=3 * self.op_timeout + 5)
                if not idle:
                    log.warn("cephfs: calls still blocked in libcephfs at stop; not unmounting")
                    return
                try:
                    fs.unmount()          # gives back every flock still held
                finally:
                    fs.shutdown()
            d = threads.run(self._pool_name, unmount)
            d.addTimeout(4 * self.op_timeout + 10, self._reactor)
            try:
                await d
            except Exception as e:
                log.warn("cephfs: unmount: {e}", e=e)

    # --- files ---------------------------------------------------------------------------------

    async def read(self, path: str, offset: int = 0) -> bytes | None:
        return await self._job(f"cephfs read {path}", jobs.read, self._abs(path), offset)

    async def size(self, path: str) -> int | None:
        return await self._job(f"cephfs size {path}", jobs.size, self._abs(path))

    async def append(self, path: str, data: bytes) -> int:
        return await self._job(f"cephfs append {path}", jobs.append, self._abs(path), data)

    async def append_at(self, path: str, offset: int, data: bytes, *, lock: str,
                        cut_tail_at_size: int | None = None) -> tuple[bool, bytes | None]:
        """Compare-and-append in ONE pool job (flock unless leased, size check, cut, write);
        when another process holds the lock, wait for it as ``lock`` does."""
        return await self._commit(path, offset, data, lock, cut_tail_at_size, (), durable=False)

    async def append_at_durable(self, path: str, offset: int, data: bytes, *, lock: str,
                                cut_tail_at_size: int | None = None,
                                also_append: Iterable[tuple[str, bytes]] = ()) -> tuple[bool, bytes | None]:
        """Riders, compare-and-append and fsync in ONE pool job (see ``append_at``)."""
        return await self._commit(path, offset, data, lock, cut_tail_at_size, also_append, durable=True)

    async def truncate(self, path: str, size: int) -> None:
        await self._job(f"cephfs truncate {path}", jobs.truncate, self._abs(path), size)

    async def write_atomic(self, path: str, data: bytes) -> None:
        abs_path = self._abs(path)
        self._invalidate(abs_path)         # the file is replaced: a kept descriptor is the old one
        await self._job(f"cephfs write_atomic {path}", jobs.write_atomic, abs_path, data)

    async def listdir(self, path: str) -> list[str]:
        return await self._job(f"cephfs listdir {path}", jobs.listdir, self._abs(path))

    async def remove(self, path: str) -> None:
        abs_path = self._abs(path)
        self._invalidate(abs_path)
        await self._job(f"cephfs remove {path}", jobs.remove, abs_path)

    async def remove_tree(self, path: str) -> None:
        if path in ("", "."):
            raise StorageError(ErrorKind.INTERNAL, "cephfs: remove_tree of the whole index root")
        abs_path = self._abs(path)
        self._invalidate(abs_path, tree=True)
        await self._job(f"cephfs remove_tree {path}", jobs.remove_tree, abs_path)

    # --- compare-and-append under a lease ------------------------------------------------------

    async def _commit(self, path, offset, data, lock, cut, riders, durable):
        lock_abs = self._abs(lock) + LOCK_SUFFIX
        path_abs = self._abs(path)
        riders = [(self._abs(p), chunk) for p, chunk in riders]
        await self._take_local(lock, lock_abs, LOCK_WAIT)
        lease = self._leases.get(lock_abs)
        keep = False
        try:
            if lease is None or lease.broken:
                if lease is not None:
                    self._leases.pop(lock_abs)
                    self._release_in_background([lease])
                # Take the flock in a job of its own (in parallel with others), not in the
                # batch, where its MDS round trip would delay every commit of the batch.
                lease = Lease(lock_abs, next(self._owners), self._rider_files)
                lease.fd = await self._poll_flock(lock, lock_abs, lease.owner,
                                                  self._reactor.seconds() + LOCK_WAIT)
                lease.acquired = self._reactor.seconds()
            keep = self._may_keep(lease)
            result = await self._queue_commit(lease, keep, path_abs, offset, data, cut, riders, durable)
            if result is jobs.BUSY:        # the lock file was replaced meanwhile: wait for it anew
                lease.fd = await self._poll_flock(lock, lock_abs, lease.owner,
                                                  self._reactor.seconds() + LOCK_WAIT)
                lease.acquired = self._reactor.seconds()
                result = await self._queue_commit(lease, keep, path_abs, offset, data, cut, riders, durable)
            return result
        finally:
            self._after_commit(lock_abs, lease, keep)

    def _may_keep(self, lease: Lease) -> bool:
        """Whether a commit keeps its lock as a lease afterwards."""
        if self.lock_lease <= 0 or self._fs is None:
            return False
        now = self._reactor.seconds()
        if self._no_lease_until.get(lease.lock_path, 0) > now:
            return False
        if now - lease.acquired >= LEASE_MAX_HOLD * self.lock_lease:
            # Held through continuous use: give it back now and take none for a while, so a
            # server polling for this lock gets it between our commits.
            self._no_lease_until[lease.lock_path] = now + self.lock_lease
            return False
        return lease.lock_path in self._leases or len(self._leases) < MAX_LEASES

    def _after_commit(self, lock_abs: str, lease: Lease | None, keep: bool) -> None:
        """Keep the lease, or give it back in the background (the local lock stays held
        until the flock is released, so the next commit here does not trip over it)."""
        if lease is None or lease.fd is None or lease.abandoned:
            self._leases.pop(lock_abs, None)
            if lease is not None and lease.abandoned:
                self._stalled[lock_abs] = lease   # its job still holds the flock
            self._hand_over(lock_abs)
            return
        if keep:
            lease.last_used = self._reactor.seconds()
            self._leases[lock_abs] = lease
            if self._lease_sweeper is None:
                self._lease_sweeper = task.LoopingCall(self._expire_leases)
                self._lease_sweeper.clock = self._reactor
                self._lease_sweeper.start(max(self.lock_lease / 2, 0.02), now=False).addErrback(
                    lambda f: log.failure("cephfs: lease sweeper", f))
            self._hand_over(lock_abs)
            return
        self._leases.pop(lock_abs, None)
        d = Deferred.fromCoroutine(self._job(f"cephfs unlock {lock_abs}", jobs.release, lease))
        d.addErrback(lambda f: log.warn("cephfs: unlock {path}: {e}", path=lock_abs, e=f.value))
        d.addBoth(lambda _: self._hand_over(lock_abs))

    async def _queue_commit(self, lease: Lease, keep: bool, path, offset, data, cut, riders, durable):
        """Queue one compare-and-append for the next batch job; its ``(appended, tail)`` or BUSY."""
        d = Deferred()
        self._commit_queue.append(jobs.Commit(lease, keep, path, offset, data, cut, riders, durable, d))
        if self._batch_running is None:
            self._run_batch()
        return await d

    def _run_batch(self) -> None:
        batch, self._commit_queue = self._commit_queue, []
        for c in batch:
            c.lease.begin_job()

        def abandoned():
            late = [c.lease for c in batch if c.lease.abandon()]
            if late:        # finished after all, but the answer came too late: give them back
                self._release_in_background(late)
        running = Deferred.fromCoroutine(self._job(f"cephfs commit ({len(batch)} appends)",
                                                   jobs.commit_batch, batch, on_timeout=abandoned))
        self._batch_running = running

        def done(outcome):
            # Still "running" while the callers resume, so what they queue now forms one batch.
            for c in batch:
                if isinstance(outcome, Failure):
                    c.d.errback(outcome)
                elif isinstance(c.result, Exception):
                    err = c.result if isinstance(c.result, StorageError) else _error(
                        c.result, f"cephfs append_at {c.path}")
                    c.d.errback(err)
                else:
                    c.d.callback(c.result)
            self._batch_running = None
            if self._commit_queue:
                self._run_batch()
        running.addBoth(done)

    def _expire_leases(self) -> None:
        """Periodically: give back leases idle for ``lock_lease`` or held for the longest."""
        now = self._reactor.seconds()
        for path, until in list(self._no_lease_until.items()):
            if until <= now:
                del self._no_lease_until[path]
        idle_before = now - self.lock_lease
        held_before = now - LEASE_MAX_HOLD * self.lock_lease
        expired = []
        for path, lease in list(self._leases.items()):
            if path in self._local_locks:
                continue                          # in use, or being given back
            if lease.last_used <= idle_before or lease.acquired <= held_before:
                if lease.acquired <= held_before:
                    self._no_lease_until[path] = now + self.lock_lease
                expired.append(lease)
        if expired:
            d = Deferred.fromCoroutine(self._release(expired))
            d.addErrback(lambda f: log.failure("cephfs: giving back index locks", f))
        if not self._leases and self._lease_sweeper is not None:
            if self._lease_sweeper.running:
                self._lease_sweeper.stop()
            self._lease_sweeper = None

    async def _release(self, leases: list[Lease]) -> None:
        """Give leases back, RELEASE_CHUNK per job (jobs in parallel), holding their locks in
        this process meanwhile."""
        for lease in leases:
            self._leases.pop(lease.lock_path, None)
            self._local_locks[lease.lock_path] = []
        chunks = [leases[i:i + RELEASE_CHUNK] for i in range(0, len(leases), RELEASE_CHUNK)]
        await gatherResults([Deferred.fromCoroutine(self._release_chunk(c)) for c in chunks],
                            consumeErrors=True)

    async def _release_chunk(self, leases: list[Lease]) -> None:
        try:
            errors = await self._job(f"cephfs unlock ({len(leases)} leases)", jobs.release_all, leases)
            for e in errors:
                log.warn("cephfs: giving back an index lock: {e}", e=e)
        except StorageError as e:
            log.warn("cephfs: giving back index locks: {e}", e=e)
        finally:
            for lease in leases:
                self._hand_over(lease.lock_path)

    async def _release_leases(self, all_idle: bool) -> None:
        if self._lease_sweeper is not None:
            if self._lease_sweeper.running:
                self._lease_sweeper.stop()
            self._lease_sweeper = None
        idle = [lease for path, lease in self._leases.items() if path not in self._local_locks]
        if idle and self._fs is not None:
            try:
                await self._release(idle)
            except StorageError as e:
                log.warn("cephfs: giving back index locks at stop: {e}", e=e)

    def _release_in_background(self, leases: list[Lease]) -> None:
        fs = self._fs
        if fs is not None:
            threads.run(self._pool_name, jobs.release_all, fs, leases).addErrback(
                lambda f: log.failure("cephfs: giving back an abandoned index lock", f))

    def _invalidate(self, abs_path: str, tree: bool = False) -> None:
        """A file (or a tree) is being removed or replaced in this process: descriptors that
        leases keep for it must not be written again."""
        self._rider_files.invalidate(abs_path, tree)
        prefix = abs_path + "/"
        for lease in self._leases.values():
            if lease.lock_path == abs_path or (tree and lease.lock_path.startswith(prefix)):
                lease.broken = True
            for path in lease.files:
                if path == abs_path or (tree and path.startswith(prefix)):
                    lease.stale.add(path)

    # --- group commit --------------------------------------------------------------------------

    async def sync(self, paths: Iterable[str]) -> None:
        """Wait until earlier appends to ``paths`` are durable.  Callers arriving while a flush
        runs are collected and flushed together by the next one (one pool job per group)."""
        wanted = {self._abs(p) for p in paths}
        if not wanted:
            return
        d = Deferred()
        self._sync_waiters.append(d)
        self._sync_paths |= wanted
        if self._sync_running is None:
            self._flush_group()
        await d

    def _flush_group(self) -> None:
        waiters, paths = self._sync_waiters, self._sync_paths
        self._sync_waiters, self._sync_paths = [], set()
        fn = jobs.sync_fs if self.sync_method == "sync_fs" else jobs.fsync_each
        running = Deferred.fromCoroutine(self._job(f"cephfs sync ({len(paths)} files)", fn, sorted(paths)))
        self._sync_running = running

        def done(result):
            self._sync_running = None
            for w in waiters:
                if isinstance(result, Failure):
                    w.errback(result)
                else:
                    w.callback(None)
            if self._sync_waiters:
                self._flush_group()
        running.addBoth(done)

    # --- locks ---------------------------------------------------------------------------------

    async def lock(self, path: str, timeout: float = 30.0) -> IndexLock:
        """Exclusive lock on ``<path>.lock``.  Waiters in this process queue locally; the head
        of the queue takes over a lease on it, or polls a non-blocking ``flock`` (a blocking
        one would hold a pool thread)."""
        abs_path = self._abs(path) + LOCK_SUFFIX
        deadline = self._reactor.seconds() + timeout
        await self._take_local(path, abs_path, timeout)
        try:
            lease = self._take_over_lease(abs_path)
            if lease is None:
                lease = Lease(abs_path, next(self._owners), self._rider_files)
                lease.fd = await self._poll_flock(path, abs_path, lease.owner, deadline)
            return CephFSLock(self, path, lease)
        except BaseException:
            self._hand_over(abs_path)
            raise

    async def _take_local(self, path: str, abs_path: str, timeout: float) -> None:
        """Become this process's holder of ``abs_path`` (queueing behind others)."""
        waiters = self._local_locks.get(abs_path)
        if waiters is None:
            self._local_locks[abs_path] = []
            return
        d = Deferred()
        waiters.append(d)
        d.addTimeout(timeout, self._reactor)
        try:
            await d                       # handed over by the releasing holder
        except DeferredTimeout:
            waiters.remove(d)
            raise StorageError(ErrorKind.TEMPORARY,
                               f"cephfs lock {path}: held in this process for over {timeout:g} s") from None

    def _take_over_lease(self, abs_path: str) -> Lease | None:
        """An idle lease's flock for a ``lock()`` caller (who holds the local lock): no round
        trip.  A lease whose lock file was removed is given back instead."""
        lease = self._leases.pop(abs_path, None)
        if lease is not None and lease.broken:
            self._release_in_background([lease])
            return None
        return lease

    async def _poll_flock(self, path: str, abs_path: str, owner: int, deadline: float) -> int:
        stalled = self._stalled.get(abs_path)
        if stalled is not None:
            if not stalled.finished():
                # Our own call, past its deadline, still holds this flock (Ceph is not
                # answering): waiting for it would only stack up callers.
                raise StorageError(ErrorKind.TEMPORARY, f"cephfs lock {path}: held by a call "
                                                        f"still waiting for CephFS")
            del self._stalled[abs_path]
        delay = LOCK_POLL_FIRST
        while True:
            fd = await self._job(f"cephfs lock {path}", jobs.try_flock, abs_path, owner)
            if fd is not None:
                return fd
            now = self._reactor.seconds()
            if now >= deadline:
                raise StorageError(ErrorKind.TEMPORARY, f"cephfs lock {path}: held by another "
                                                        f"client past the timeout")
            await task.deferLater(self._reactor, min(delay, deadline - now), lambda: None)
            delay = min(delay * 2, LOCK_POLL_MAX)

    async def try_lock(self, path: str) -> IndexLock | None:
        """The lock if it is free now, None if another holder (here or elsewhere) has it.  A
        backend that does not answer is TEMPORARY, not "busy" (POP3 says [SYS/TEMP], not [IN-USE])."""
        abs_path = self._abs(path) + LOCK_SUFFIX
        if abs_path in self._local_locks:
            return None
        self._local_locks[abs_path] = []
        try:
            lease = self._take_over_lease(abs_path)
            if lease is None:
                lease = Lease(abs_path, next(self._owners), self._rider_files)
                lease.fd = await self._job(f"cephfs lock {path}", jobs.try_flock, abs_path, lease.owner)
        except BaseException:
            self._hand_over(abs_path)
            raise
        if lease.fd is None:
            self._hand_over(abs_path)
            return None
        return CephFSLock(self, path, lease)

    def _hand_over(self, abs_path: str) -> None:
        """Give the local lock to the next waiter in this process, or free it."""
        waiters = self._local_locks.get(abs_path)
        if waiters:
            waiters.pop(0).callback(None)
        else:
            self._local_locks.pop(abs_path, None)

    async def _unlock(self, lock: "CephFSLock") -> None:
        try:
            await self._job(f"cephfs unlock {lock.path}", jobs.release, lock.lease)
        finally:
            self._hand_over(lock.abs_path)


class CephFSLock(IndexLock):
    """A held flock; ``release`` unlocks and closes the lock file (and any file a lease it
    took over kept open)."""

    def __init__(self, store: CephFSIndexStore, path: str, lease: Lease):
        self.store, self.path, self.lease = store, path, lease
        self.abs_path = lease.lock_path
        self.released = False

    async def release(self) -> None:
        if self.released:
            return
        self.released = True
        await self.store._unlock(self)
