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
See docs/ceph.md.
"""

from __future__ import annotations

import errno
import itertools
import math
import os
import posixpath
import threading
import uuid
from typing import Iterable

from twisted.internet import reactor as default_reactor
from twisted.internet import task
from twisted.internet.defer import Deferred, TimeoutError as DeferredTimeout
from twisted.python.failure import Failure
from twisted.logger import Logger

from mailserver import threads
from mailserver.config import Key, absolute_path, one_of, positive
from mailserver.storage.drivers import IndexLock, IndexStore
from mailserver.storage.errors import ErrorKind, StorageError

log = Logger()

TMP_PREFIX = ".tmp."         # write_atomic's temporary files; hidden from listdir
LOCK_SUFFIX = ".lock"
READ_CHUNK = 4 * 1024 * 1024
LOCK_POLL_FIRST = 0.005      # seconds between flock attempts, doubling up to LOCK_POLL_MAX
LOCK_POLL_MAX = 0.2


def _error(e: Exception, what: str) -> StorageError:
    code = getattr(e, "errno", None)
    text = f"{what}: {e}"
    if code == errno.ENOENT:
        return StorageError(ErrorKind.NOT_FOUND, text)
    if code in (errno.EINVAL, errno.EBADF, errno.ENAMETOOLONG, errno.EISDIR, errno.ENOTDIR):
        return StorageError(ErrorKind.INTERNAL, text)
    return StorageError(ErrorKind.TEMPORARY, text)    # ETIMEDOUT, ENOTCONN, EIO, ENOSPC, EDQUOT...


def _is(e: Exception, *codes: int) -> bool:
    return getattr(e, "errno", None) in codes


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
    }

    def __init__(self, *, ceph_conf: str, client_name: str = "client.admin", fs_name: str = "",
                 root: str = "/mail", op_timeout: float = 10.0, threads: int = 4,
                 sync_method: str = "fsync", reactor=None):
        self.ceph_conf = ceph_conf
        self.client_name = client_name
        self.fs_name = fs_name
        self.root = posixpath.normpath(root)
        self.op_timeout = op_timeout
        self.sync_method = sync_method
        self._threads = threads
        self._pool_name = "cephfs"
        self._reactor = reactor or default_reactor
        self._fs = None
        self._owners = itertools.count(1)         # flock owner ids (unique per lock taken)
        self._local_locks: dict[str, list[Deferred]] = {}   # path -> waiters; key present = held
        self._sync_waiters: list[Deferred] = []
        self._sync_paths: set[str] = set()
        self._sync_running: Deferred | None = None
        self._jobs = 0                            # pool jobs queued or running
        self._jobs_done = threading.Condition()

    @classmethod
    def from_config(cls, config) -> "CephFSIndexStore":
        s = config.section(cls.CONFIG_SECTION)
        return cls(ceph_conf=s.ceph_conf, client_name=s.client_name, fs_name=s.fs_name, root=s.root,
                   op_timeout=s.op_timeout, threads=s.threads, sync_method=s.sync_method)

    # --- plumbing ------------------------------------------------------------------------------

    async def _job(self, what: str, fn, *args):
        """Run ``fn(fs, *args)`` in the pool, with the deadline; libcephfs errors become
        StorageError."""
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
        if self._sync_running is not None:
            try:
                await self._sync_running
            except Exception:
                pass
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
                    fs.unmount()
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
        return await self._job(f"cephfs read {path}", _read, self._abs(path), offset)

    async def size(self, path: str) -> int | None:
        return await self._job(f"cephfs size {path}", _size, self._abs(path))

    async def append(self, path: str, data: bytes) -> int:
        return await self._job(f"cephfs append {path}", _append, self._abs(path), data)

    async def append_at(self, path: str, offset: int, data: bytes, *, lock: str,
                        cut_tail_at_size: int | None = None) -> tuple[bool, bytes | None]:
        """Compare-and-append in ONE pool job when the lock is free (flock, size check, cut,
        write, unlock); when someone holds it, here or in another process, fall back to the
        interface's default, which waits for ``lock``."""
        lock_abs = self._abs(lock) + LOCK_SUFFIX
        if lock_abs not in self._local_locks:
            self._local_locks[lock_abs] = []          # held in this process for the job
            try:
                result = await self._job(f"cephfs append_at {path}", _append_at, lock_abs,
                                         self._abs(path), offset, data, cut_tail_at_size,
                                         next(self._owners))
            finally:
                self._hand_over(lock_abs)
            if result is not _BUSY:
                return result
        return await super().append_at(path, offset, data, lock=lock, cut_tail_at_size=cut_tail_at_size)

    async def truncate(self, path: str, size: int) -> None:
        await self._job(f"cephfs truncate {path}", _truncate, self._abs(path), size)

    async def write_atomic(self, path: str, data: bytes) -> None:
        await self._job(f"cephfs write_atomic {path}", _write_atomic, self._abs(path), data)

    async def listdir(self, path: str) -> list[str]:
        return await self._job(f"cephfs listdir {path}", _listdir, self._abs(path))

    async def remove(self, path: str) -> None:
        await self._job(f"cephfs remove {path}", _remove, self._abs(path))

    async def remove_tree(self, path: str) -> None:
        if path in ("", "."):
            raise StorageError(ErrorKind.INTERNAL, "cephfs: remove_tree of the whole index root")
        await self._job(f"cephfs remove_tree {path}", _remove_tree, self._abs(path))

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
        fn = _sync_fs if self.sync_method == "sync_fs" else _fsync_each
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
        of the queue polls a non-blocking ``flock`` (a blocking one would hold a pool thread)."""
        abs_path = self._abs(path) + LOCK_SUFFIX
        deadline = self._reactor.seconds() + timeout
        waiters = self._local_locks.get(abs_path)
        if waiters is None:
            self._local_locks[abs_path] = []
        else:
            d = Deferred()
            waiters.append(d)
            d.addTimeout(timeout, self._reactor)
            try:
                await d                       # handed over by the releasing holder
            except DeferredTimeout:
                waiters.remove(d)
                raise StorageError(ErrorKind.TEMPORARY,
                                   f"cephfs lock {path}: held in this process for over {timeout:g} s") from None
        try:
            return await self._flock(path, abs_path, deadline)
        except BaseException:
            self._hand_over(abs_path)
            raise

    async def _flock(self, path: str, abs_path: str, deadline: float) -> "CephFSLock":
        owner = next(self._owners)
        delay = LOCK_POLL_FIRST
        while True:
            fd = await self._job(f"cephfs lock {path}", _try_flock, abs_path, owner)
            if fd is not None:
                return CephFSLock(self, path, abs_path, fd, owner)
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
            owner = next(self._owners)
            fd = await self._job(f"cephfs lock {path}", _try_flock, abs_path, owner)
        except BaseException:
            self._hand_over(abs_path)
            raise
        if fd is None:
            self._hand_over(abs_path)
            return None
        return CephFSLock(self, path, abs_path, fd, owner)

    def _hand_over(self, abs_path: str) -> None:
        """Give the local lock to the next waiter in this process, or free it."""
        waiters = self._local_locks.get(abs_path)
        if waiters:
            waiters.pop(0).callback(None)
        else:
            self._local_locks.pop(abs_path, None)

    async def _unlock(self, lock: "CephFSLock") -> None:
        try:
            await self._job(f"cephfs unlock {lock.path}", _unflock, lock.fd, lock.owner)
        finally:
            self._hand_over(lock.abs_path)


class CephFSLock(IndexLock):
    """A held flock; ``release`` unlocks and closes the lock file."""

    def __init__(self, store: CephFSIndexStore, path: str, abs_path: str, fd: int, owner: int):
        self.store, self.path, self.abs_path, self.fd, self.owner = store, path, abs_path, fd, owner
        self.released = False

    async def release(self) -> None:
        if self.released:
            return
        self.released = True
        await self.store._unlock(self)


# --- blocking bodies of the jobs (run in the pool; ``fs`` is the mounted LibCephFS) ----------

def _mkparents(fs, path: str) -> None:
    fs.mkdirs(posixpath.dirname(path), 0o700)


def _read(fs, path: str, offset: int) -> bytes | None:
    import cephfs
    try:
        fd = fs.open(path, os.O_RDONLY)
    except cephfs.ObjectNotFound:
        return None
    try:
        return _read_fd(fs, fd, offset, fs.fstat(fd).st_size)
    finally:
        fs.close(fd)


def _read_fd(fs, fd: int, offset: int, size: int) -> bytes:
    chunks = []
    pos = offset
    while pos < size:
        chunk = fs.read(fd, pos, min(READ_CHUNK, size - pos))
        if not chunk:
            break
        chunks.append(chunk)
        pos += len(chunk)
    return b"".join(chunks)


def _size(fs, path: str) -> int | None:
    import cephfs
    try:
        return fs.stat(path).st_size
    except cephfs.ObjectNotFound:
        return None


def _open_creating(fs, path: str, flags: int) -> int:
    import cephfs
    try:
        return fs.open(path, flags | os.O_CREAT, 0o600)
    except cephfs.ObjectNotFound:
        _mkparents(fs, path)
        return fs.open(path, flags | os.O_CREAT, 0o600)


def _append(fs, path: str, data: bytes) -> int:
    # The caller holds the file's lock, so the size read here is where this write lands.
    # Closing straight away lets the client start flushing, which makes the later fsync cheap.
    fd = _open_creating(fs, path, os.O_WRONLY)
    try:
        offset = fs.fstat(fd).st_size
        if data:
            fs.write(fd, data, offset)
        return offset
    finally:
        fs.close(fd)


_BUSY = object()             # _append_at's answer when another owner holds the lock


def _append_at(fs, lock_path: str, path: str, offset: int, data: bytes, cut: int | None, owner: int):
    import cephfs
    lock_fd = _try_flock(fs, lock_path, owner)
    if lock_fd is None:
        return _BUSY
    try:
        try:
            fd = fs.open(path, os.O_RDWR)
        except cephfs.ObjectNotFound:
            if offset > 0:
                return False, None
            fd = _open_creating(fs, path, os.O_RDWR)
        try:
            size = fs.fstat(fd).st_size
            if size != offset and cut is not None and size == cut:
                fs.ftruncate(fd, offset)           # a torn tail the caller saw
                size = offset
            if size != offset:
                return False, _read_fd(fs, fd, offset, size)
            if data:
                fs.write(fd, data, offset)
            return True, None
        finally:
            fs.close(fd)
    finally:
        _unflock(fs, lock_fd, owner)


def _truncate(fs, path: str, size: int) -> None:
    fs.truncate(path, size)


def _write_atomic(fs, path: str, data: bytes) -> None:
    parent, name = posixpath.split(path)
    tmp = f"{parent}/{TMP_PREFIX}{name}.{uuid.uuid4().hex[:12]}"
    fd = _open_creating(fs, tmp, os.O_WRONLY | os.O_EXCL)
    try:
        try:
            if data:
                fs.write(fd, data, 0)
            fs.fsync(fd, 0)
        finally:
            fs.close(fd)
        fs.rename(tmp, path)
    except BaseException:
        try:
            fs.unlink(tmp)
        except Exception:
            pass
        raise
    _fsync_dir(fs, parent)      # the rename is an MDS operation: wait until it is journaled


def _fsync_dir(fs, path: str) -> None:
    fd = fs.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fs.fsync(fd, 0)
    finally:
        fs.close(fd)


def _fsync_each(fs, paths: list[str]) -> None:
    import cephfs
    for path in paths:
        try:
            fd = fs.open(path, os.O_RDONLY)
        except cephfs.ObjectNotFound:
            continue                           # removed since: nothing to make durable
        try:
            fs.fsync(fd, 0)
        finally:
            fs.close(fd)


def _sync_fs(fs, paths: list[str]) -> None:
    fs.sync_fs()


def _listdir(fs, path: str) -> list[str]:
    import cephfs
    try:
        handle = fs.opendir(path)
    except (cephfs.ObjectNotFound, cephfs.NotDirectory):
        return []
    names = []
    try:
        while True:
            entry = fs.readdir(handle)
            if entry is None:
                break
            name = entry.d_name.decode("utf-8", "surrogateescape")
            if name not in (".", "..") and not name.startswith(TMP_PREFIX):
                names.append(name)
    finally:
        fs.closedir(handle)
    return sorted(names)


def _remove(fs, path: str) -> None:
    import cephfs
    try:
        fs.unlink(path)
    except cephfs.ObjectNotFound:
        pass


def _remove_tree(fs, path: str) -> None:
    import cephfs
    try:
        handle = fs.opendir(path)
    except cephfs.ObjectNotFound:
        return
    except cephfs.NotDirectory:
        _remove(fs, path)
        return
    entries = []
    try:
        while True:
            entry = fs.readdir(handle)
            if entry is None:
                break
            if entry.d_name not in (b".", b".."):
                entries.append((entry.d_name.decode("utf-8", "surrogateescape"), entry.is_dir()))
    finally:
        fs.closedir(handle)
    for name, is_dir in entries:
        child = f"{path}/{name}"
        if is_dir:
            _remove_tree(fs, child)
        else:
            _remove(fs, child)
    try:
        fs.rmdir(path)
    except cephfs.ObjectNotFound:
        pass


def _try_flock(fs, path: str, owner: int) -> int | None:
    """The fd of the lock file, locked for ``owner``; None if another owner holds it."""
    import cephfs
    import fcntl
    fd = _open_creating(fs, path, os.O_RDWR)
    try:
        fs.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, owner)
    except cephfs.Error as e:
        fs.close(fd)
        if _is(e, errno.EWOULDBLOCK, errno.EAGAIN):
            return None
        raise
    return fd


def _unflock(fs, fd: int, owner: int) -> None:
    import fcntl
    try:
        fs.flock(fd, fcntl.LOCK_UN, owner)
    finally:
        fs.close(fd)
