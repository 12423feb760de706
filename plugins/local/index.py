"""Local index store: the index tree on a local (or mounted, e.g. kernel CephFS) filesystem.

Every call is one job in the ``local-index`` thread pool.  Concurrent ``sync`` calls are grouped:
while one batch of fsyncs runs, new requests wait for the next batch, so many deliveries share
the cost.  Locks are ``flock`` on lock files, which exclude across processes (and across hosts
on CephFS).
"""

from __future__ import annotations

import errno
import fcntl
import os
import threading
import time

from twisted.internet import defer
from twisted.python.failure import Failure

from mailserver import threads
from mailserver.storage.drivers import IndexLock, IndexStore
from mailserver.storage.errors import ErrorKind, StorageError
from mailserver.storage.paths import check_relative

POOL = "local-index"


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


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
    def __init__(self, fd: int):
        self._fd = fd

    async def release(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            fcntl.flock(fd, fcntl.LOCK_UN)  # never blocks
            os.close(fd)


class LocalIndexStore(IndexStore):
    def __init__(self, root: str, threads_: int = 8):
        self.root = root
        self._threads = threads_
        self._sync_pending: dict[str, list] = {}
        self._sync_dirs: set[str] = set()   # parents of files created since the last sync
        self._dirs_lock = threading.Lock()  # _sync_dirs is filled from pool threads
        self._sync_running = False

    @classmethod
    def from_config(cls, config) -> "LocalIndexStore":
        return cls(config.rbox.index_path, config.server.io_threads)

    async def start(self) -> None:
        threads.pool(POOL, self._threads)
        try:
            await threads.call(POOL, os.makedirs, self.root, 0o700, True)
        except OSError as e:
            raise StorageError(ErrorKind.TEMPORARY, f"cannot create index directory {self.root}: {e}") from None

    def _abs(self, path: str) -> str:
        return os.path.join(self.root, check_relative(path))

    async def _run(self, fn, *args):
        try:
            return await threads.call(POOL, fn, *args)
        except StorageError:
            raise
        except OSError as e:
            raise StorageError(ErrorKind.TEMPORARY, f"index I/O on {e.filename or self.root}: {e.strerror}") from None

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
    def _append_fd(self, path: str) -> int:
        try:
            return os.open(path, os.O_WRONLY | os.O_APPEND)
        except FileNotFoundError:
            os.makedirs(os.path.dirname(path), 0o700, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            with self._dirs_lock:
                self._sync_dirs.add(os.path.dirname(path))
            return fd

    def _append(self, path: str, data: bytes) -> int:
        fd = self._append_fd(path)
        try:
            offset = os.fstat(fd).st_size
            os.write(fd, data)  # one write(): O_APPEND keeps concurrent appenders whole
            return offset
        finally:
            os.close(fd)

    async def append(self, path: str, data: bytes) -> int:
        return await self._run(self._append, self._abs(path), data)

    def _append_at(self, path, lock_path, offset, data, cut, timeout=30.0):
        os.makedirs(os.path.dirname(lock_path), 0o700, exist_ok=True)
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
        return await self._run(self._append_at, self._abs(path), self._abs(lock), offset, data,
                               cut_tail_at_size)

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
            _fsync_dir(d)

    async def sync(self, paths) -> None:
        waiter = defer.Deferred()
        for p in paths:
            self._sync_pending.setdefault(self._abs(p), []).append(waiter)
        if not self._sync_running:
            self._drain_syncs()
        await waiter

    def _drain_syncs(self) -> None:
        if not self._sync_pending:
            self._sync_running = False
            return
        self._sync_running = True
        batch, self._sync_pending = self._sync_pending, {}
        with self._dirs_lock:
            dirs, self._sync_dirs = self._sync_dirs, set()
        waiters = {id(w): w for ws in batch.values() for w in ws}

        def done(result):
            for w in waiters.values():
                if w.called:
                    continue
                if isinstance(result, Failure):
                    w.errback(StorageError(ErrorKind.TEMPORARY, f"index fsync: {result.value}"))
                else:
                    w.callback(None)
            self._drain_syncs()

        threads.run(POOL, self._fsync_batch, list(batch), sorted(dirs)).addBoth(done)

    @staticmethod
    def _write_atomic(path: str, data: bytes) -> None:
        d = os.path.dirname(path)
        os.makedirs(d, 0o700, exist_ok=True)
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
        _fsync_dir(d)

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
            os.makedirs(os.path.dirname(p), 0o700, exist_ok=True)
            fd = os.open(p, os.O_RDWR | os.O_CREAT, 0o600)
            try:
                _flock(fd, timeout)
            except BaseException:
                os.close(fd)
                raise
            return fd
        return _FileLock(await self._run(take, self._abs(path)))


def _ignore_missing(func, path, exc_info):
    if not (isinstance(exc_info[1], OSError) and exc_info[1].errno == errno.ENOENT):
        raise exc_info[1]
