"""Local index store: the index tree on a local (or mounted, e.g. kernel CephFS) filesystem.

Every call is one job in the ``local-index`` thread pool.  ``sync`` is grouped per file: while a
file's fsync runs, new requests for it wait for its next fsync, so many deliveries to one mailbox
share one; different files are synced by parallel jobs, because concurrent fsyncs share the
filesystem's journal commits (ext4, XFS) where one thread fsyncing files in turn pays one commit
per file.  Locks are ``flock`` on lock files, which exclude across processes (and across hosts on
CephFS).  ``watch`` uses inotify, so an IDLE session sees at once what another process (an
LMTP worker, a second server on this host, a command-line tool) wrote to its mailbox.
"""

from __future__ import annotations

import errno
import fcntl
import os
import threading
import time

from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.python.filepath import FilePath

from mailserver import threads
from mailserver.storage.drivers import IndexLock, IndexStore
from mailserver.storage.errors import ErrorKind, StorageError
from plugins.local.common import fsync_dir, makedirs_durable, run_io, start_pool
from mailserver.storage.locks import KeyedLocks
from mailserver.storage.paths import check_relative

POOL = "local-index"
log = Logger(namespace="mailserver.index")


def _flock(fd: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    delay = 0.001
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if time.monotonic() >= deadline:
                raise StorageError(ErrorKind.TEMPORARY, "index lock busy") from None
            time.sleep(delay)
            delay = min(delay * 2, 0.05)


class _FileLock(IndexLock):
    def __init__(self, fd: int, on_release):
        self._fd = fd
        self._on_release = on_release

    async def release(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            fcntl.flock(fd, fcntl.LOCK_UN)  # never blocks
            os.close(fd)
            self._on_release()


class LocalIndexStore(IndexStore):
    def __init__(self, root: str, threads_: int = 8):
        self.root = root
        self._threads = threads_
        self._process_locks = KeyedLocks()   # one waiter per lock file in pool threads (see locks.py)
        self._syncing: set[str] = set()             # files with an fsync running
        self._sync_next: dict[str, list] = {}       # waiters for a file's next fsync
        self._created: dict[str, str] = {}          # new file -> its directory, to fsync with it
        self._dirs_lock = threading.Lock()          # _created is filled from pool threads
        self._inotify = None                        # created at the first watch
        self._watchers: dict[str, list] = {}        # watched directory -> its callbacks
        self._watch_failed = False

    @classmethod
    def from_config(cls, config) -> "LocalIndexStore":
        return cls(config.rbox.index_path, config.server.io_threads)

    async def start(self) -> None:
        await start_pool(POOL, self._threads, self.root, "index")

    async def stop(self) -> None:
        if self._inotify is not None:
            self._inotify.loseConnection()
            self._inotify = None
            self._watchers.clear()

    def _abs(self, path: str) -> str:
        return os.path.join(self.root, check_relative(path))

    async def _run(self, fn, *args):
        return await run_io(POOL, "index store", fn, *args)

    # --- watching -----------------------------------------------------------------------------
    def watch(self, directory, callback):
        from twisted.internet import inotify
        path = self._abs(directory)
        callbacks = self._watchers.get(path)
        if callbacks is None:
            try:
                if self._inotify is None:
                    self._inotify = inotify.INotify()
                    self._inotify.startReading()
                # Appends (modify), a new log file (create), a snapshot put in place (moved to).
                self._inotify.watch(FilePath(path), mask=inotify.IN_MODIFY | inotify.IN_CREATE | inotify.IN_MOVED_TO,
                                    callbacks=[lambda _watch, _path, _mask: self._changed(path)])
            except Exception as e:      # no inotify, or out of watches: readers keep polling
                if not self._watch_failed:
                    self._watch_failed = True
                    log.warn("cannot watch index directories ({e}): changes by other processes are "
                             "seen at the next poll", e=str(e))
                return None
            callbacks = self._watchers[path] = []
        callbacks.append(callback)

        def cancel():
            cbs = self._watchers.get(path)
            if cbs is None or callback not in cbs:
                return
            cbs.remove(callback)
            if not cbs:
                del self._watchers[path]
                try:
                    self._inotify.ignore(FilePath(path))
                except Exception:       # the directory went away, and its watch with it
                    pass
        return cancel

    def _changed(self, path: str) -> None:
        for callback in list(self._watchers.get(path, ())):
            callback()

    # --- reading ------------------------------------------------------------------------------
    @staticmethod
    def _read(path: str, offset: int):
        try:
            with open(path, "rb") as f:
                if offset:
                    f.seek(offset)
                return f.read()
        except FileNotFoundError:
            return None

    async def read(self, path: str, offset: int = 0) -> bytes | None:
        return await self._run(self._read, self._abs(path), offset)

    @staticmethod
    def _size(path: str):
        try:
            return os.stat(path).st_size
        except FileNotFoundError:
            return None

    async def size(self, path: str) -> int | None:
        return await self._run(self._size, self._abs(path))

    async def listdir(self, path: str) -> list[str]:
        def ls(p):
            try:
                return sorted(os.listdir(p))
            except FileNotFoundError:
                return []
        return await self._run(ls, self._abs(path))

    # --- writing ------------------------------------------------------------------------------
    def _append_fd(self, path: str, track: bool = True) -> int:
        """An O_APPEND descriptor, creating the file (and parents) if missing; a new file's
        directory is remembered (``track``) so the file's next sync makes its entry durable."""
        try:
            return os.open(path, os.O_WRONLY | os.O_APPEND)
        except FileNotFoundError:
            makedirs_durable(os.path.dirname(path))
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            if track:
                with self._dirs_lock:
                    self._created[path] = os.path.dirname(path)
            return fd

    @staticmethod
    def _open_lock(lock_path: str) -> int:
        try:
            return os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        except FileNotFoundError:
            makedirs_durable(os.path.dirname(lock_path))
            return os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)

    def _append_rider(self, path: str, data: bytes) -> None:
        """An append nobody waits to sync (and whose offset nobody needs)."""
        fd = self._append_fd(path, track=False)
        try:
            os.write(fd, data)
        finally:
            os.close(fd)

    def _append(self, path: str, data: bytes, track: bool = True) -> int:
        fd = self._append_fd(path, track)
        try:
            offset = os.fstat(fd).st_size
            os.write(fd, data)  # one write(): O_APPEND keeps concurrent appenders whole
            return offset
        finally:
            os.close(fd)

    async def append(self, path: str, data: bytes) -> int:
        return await self._run(self._append, self._abs(path), data)

    def _append_at(self, path, lock_path, offset, data, cut, timeout=30.0):
        makedirs_durable(os.path.dirname(lock_path))
        lfd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            _flock(lfd, timeout)
            try:
                fd = os.open(path, os.O_RDWR | os.O_APPEND)
            except FileNotFoundError:
                if offset > 0:
                    return False, None
                fd = self._append_fd(path)
            try:
                size = os.fstat(fd).st_size
                if size != offset and cut is not None and size == cut:
                    os.ftruncate(fd, offset)
                    size = offset
                if size != offset:
                    return False, os.pread(fd, size - offset, offset) if size > offset else b""
                os.write(fd, data)
                return True, None
            finally:
                os.close(fd)
        finally:
            os.close(lfd)  # closing releases the flock

    async def append_at(self, path, offset, data, *, lock, cut_tail_at_size=None):
        await self._process_locks.acquire(lock)
        try:
            return await self._run(self._append_at, self._abs(path), self._abs(lock), offset, data,
                                   cut_tail_at_size)
        finally:
            self._process_locks.release(lock)

    def _append_at_durable(self, path, lock_path, offset, data, cut, also):
        for other, chunk in also:           # riders: not synced, so their directories are not tracked
            self._append_rider(other, chunk)
        # Every system call here lets the GIL go and takes it back (a futex round when the reactor
        # thread is busy): keep them few.
        lfd = self._open_lock(lock_path)
        fd = None
        try:
            _flock(lfd, 30.0)
            try:
                fd = os.open(path, os.O_RDWR | os.O_APPEND)
            except FileNotFoundError:
                if offset > 0:
                    return False, None
                fd = self._append_fd(path)
            size = os.fstat(fd).st_size
            if size != offset and cut is not None and size == cut:
                os.ftruncate(fd, offset)
                size = offset
            if size != offset:
                return False, os.pread(fd, size - offset, offset) if size > offset else b""
            os.write(fd, data)
            os.close(lfd)               # the lock is not needed for the fsync
            lfd = None
            os.fsync(fd)
            with self._dirs_lock:
                new_dir = self._created.pop(path, None)
            if new_dir:
                fsync_dir(new_dir)
            return True, None
        finally:
            if fd is not None:
                os.close(fd)
            if lfd is not None:
                os.close(lfd)

    async def append_at_durable(self, path, offset, data, *, lock, cut_tail_at_size=None, also_append=()):
        # One pool job: riders, compare-and-append under the flock, fsync after releasing it.  A
        # mailbox's commits are serialised by its index anyway, so nothing is lost by not
        # grouping this fsync with others.
        also = [(self._abs(p), d) for p, d in also_append]
        await self._process_locks.acquire(lock)
        try:
            return await self._run(self._append_at_durable, self._abs(path), self._abs(lock), offset, data,
                                   cut_tail_at_size, also)
        finally:
            self._process_locks.release(lock)

    async def truncate(self, path: str, size: int) -> None:
        await self._run(os.truncate, self._abs(path), size)

    def _fsync_batch(self, paths, dirs):
        for p in paths:
            try:
                fd = os.open(p, os.O_RDONLY)
            except FileNotFoundError:
                continue
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        for d in dirs:
            fsync_dir(d)

    async def sync(self, paths) -> None:
        waiters = []
        for p in paths:
            path = self._abs(p)
            waiter = defer.Deferred()
            waiters.append(waiter)
            if path in self._syncing:       # its fsync may predate our append: wait for the next
                self._sync_next.setdefault(path, []).append(waiter)
            else:
                self._start_sync(path, [waiter])
        for waiter in waiters:
            await waiter

    def _start_sync(self, path: str, waiters: list) -> None:
        self._syncing.add(path)
        with self._dirs_lock:
            new_dir = self._created.pop(path, None)

        def done(result):
            self._syncing.discard(path)
            for w in waiters:
                if isinstance(result, Failure):
                    w.errback(StorageError(ErrorKind.TEMPORARY, f"index fsync of {path}: {result.value}"))
                else:
                    w.callback(None)
            later = self._sync_next.pop(path, None)
            if later:
                self._start_sync(path, later)

        threads.run(POOL, self._fsync_batch, [path], [new_dir] if new_dir else []).addBoth(done)

    @staticmethod
    def _write_atomic(path: str, data: bytes) -> None:
        d = os.path.dirname(path)
        makedirs_durable(d)
        tmp = f"{path}.tmp.{os.getpid()}.{time.monotonic_ns()}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(tmp, path)
        fsync_dir(d)

    async def write_atomic(self, path: str, data: bytes) -> None:
        await self._run(self._write_atomic, self._abs(path), data)

    async def remove(self, path: str) -> None:
        def rm(p):
            try:
                os.unlink(p)
            except FileNotFoundError:
                pass
        await self._run(rm, self._abs(path))

    async def remove_tree(self, path: str) -> None:
        import shutil

        def rmtree(p):
            shutil.rmtree(p, ignore_errors=False, onerror=_ignore_missing)
        await self._run(rmtree, self._abs(path))

    async def lock(self, path: str, timeout: float = 30.0) -> IndexLock:
        def take(p):
            makedirs_durable(os.path.dirname(p))
            fd = os.open(p, os.O_RDWR | os.O_CREAT, 0o600)
            try:
                _flock(fd, timeout)
            except BaseException:
                os.close(fd)
                raise
            return fd
        await self._process_locks.acquire(path)
        try:
            fd = await self._run(take, self._abs(path))
        except BaseException:
            self._process_locks.release(path)
            raise
        return _FileLock(fd, lambda: self._process_locks.release(path))

    async def try_lock(self, path: str) -> IndexLock | None:
        def take(p):
            makedirs_durable(os.path.dirname(p))
            fd = os.open(p, os.O_RDWR | os.O_CREAT, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                return None
            except BaseException:
                os.close(fd)
                raise
            return fd
        fd = await self._run(take, self._abs(path))
        return None if fd is None else _FileLock(fd, lambda: None)


def _ignore_missing(func, path, exc_info):
    if not (isinstance(exc_info[1], OSError) and exc_info[1].errno == errno.ENOENT):
        raise exc_info[1]
