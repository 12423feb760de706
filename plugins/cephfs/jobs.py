"""Blocking bodies of the CephFS index store's pool jobs (``fs`` is the mounted LibCephFS).

Each function here runs in one pool thread as one job of ``store.CephFSIndexStore``; none
touches the reactor.  Compare-and-appends run in batches (``commit_batch``), each with a
``Lease``: a flock on the lock file kept between commits, with the files written under it
kept open (see store.py for when leases are taken and given back).
"""

from __future__ import annotations

import errno
import os
import posixpath
import threading
import time
import uuid

TMP_PREFIX = ".tmp."         # write_atomic's temporary files; hidden from listdir
READ_CHUNK = 4 * 1024 * 1024
LEASE_FILES = 4              # files a lease keeps open (the log, the cache, a rotated log...)
RIDER_BUFFER = 64 * 1024     # riders a lease holds back before writing them out
MAX_OPEN_RIDER_FILES = 1024  # rider files (index caches) kept open between writes

BUSY = object()              # a commit's answer when another owner holds the lock


def _is(e: Exception, *codes: int) -> bool:
    return getattr(e, "errno", None) in codes


class Lease:
    """A flock on a lock file held by this process, and the files opened while holding it.

    Only one job at a time uses a lease (the store's in-process lock on its path guarantees
    it); the reactor thread only reads and sets the flags.  ``fd`` is None until the flock is
    taken.  Files opened under the flock are the files other writers see (they need the same
    flock to replace or remove them), so their descriptors stay valid while it is held.

    Riders (index cache entries: not authoritative, never synced) are held back in
    ``riders`` and written out (through ``rider_files``) in one write per file when they pass
    RIDER_BUFFER bytes or the lease is released: one flush of the cache file per lease
    instead of one per commit.
    """

    __slots__ = ("lock_path", "fd", "owner", "rider_files", "files", "riders", "rider_bytes",
                 "acquired", "last_used", "stale", "broken", "mutex", "job_done", "abandoned")

    def __init__(self, lock_path: str, owner: int, rider_files: "RiderFiles"):
        self.lock_path = lock_path
        self.fd: int | None = None
        self.owner = owner
        self.rider_files = rider_files
        self.files: dict[str, int] = {}     # absolute path -> descriptor, oldest first
        self.riders: dict[str, list[bytes]] = {}
        self.rider_bytes = 0
        self.acquired = 0.0                 # reactor seconds when the flock was taken
        self.last_used = 0.0
        self.stale: set[str] = set()        # paths removed or replaced in this process since opened
        self.broken = False                 # the lock file itself was removed: never reuse
        self.mutex = threading.Lock()       # job_done / abandoned hand-over with the reactor
        self.job_done = True
        self.abandoned = False

    def begin_job(self) -> None:
        self.job_done = False

    def end_job(self, fs) -> None:
        """Called by a job at its end: if the caller gave up waiting (deadline), nobody will
        use or release this lease, so release it here."""
        with self.mutex:
            self.job_done = True
            abandoned = self.abandoned
        if abandoned:
            try:
                release(fs, self)
            except Exception:
                pass

    def finished(self) -> bool:
        """Whether its last job has ended (read on the reactor thread)."""
        with self.mutex:
            return self.job_done

    def abandon(self) -> bool:
        """Reactor side, after a deadline: True if the job already finished (the caller must
        release the lease itself); otherwise the job will release it when it ends."""
        with self.mutex:
            if self.job_done:
                return True
            self.abandoned = True
            return False


class RiderFiles:
    """Rider files (index caches) kept open between writes, by any job, with no lock.

    Closing a file that was just written makes the client flush it and give up its
    capabilities; the next open and write then wait for the MDS (measured: 2-5 ms under
    load, against microseconds for a write to a file kept open).  The cache is not
    authoritative, so a descriptor made stale by another server (force-resync removing the
    file) only loses entries, which readers recompute.  In this process, removing or
    replacing a path invalidates its descriptor (``invalidate``).
    """

    def __init__(self, limit: int = MAX_OPEN_RIDER_FILES):
        self.limit = limit
        self._mutex = threading.Lock()
        self._fds: dict[str, list] = {}     # path -> [fd, last used (monotonic)], oldest first
        self._doomed: list[int] = []        # descriptors to close at the next chance

    def append(self, fs, path: str, data: bytes) -> None:
        """Append ``data`` at the file's current end (creating it and its parents)."""
        with self._mutex:
            entry = self._fds.pop(path, None)     # out of the table while in use
            doomed, self._doomed = self._doomed, []
        _close_all(fs, doomed)
        fd = entry[0] if entry is not None else open_creating(fs, path, os.O_WRONLY)
        try:
            fs.write(fd, data, fs.fstat(fd).st_size)
        except BaseException:
            _close_all(fs, [fd])
            raise
        with self._mutex:
            if path in self._fds:                 # written meanwhile by another job
                self._doomed.append(fd)
            else:
                self._fds[path] = [fd, time.monotonic()]
                while len(self._fds) > self.limit:
                    oldest = next(iter(self._fds))
                    self._doomed.append(self._fds.pop(oldest)[0])

    def invalidate(self, path: str, tree: bool = False) -> None:
        """``path`` (or everything under it) is being removed or replaced in this process.
        (A write in flight at that moment may still land in the old file, as it would
        without the table.)"""
        prefix = path + "/"
        with self._mutex:
            for p in [p for p in self._fds if p == path or (tree and p.startswith(prefix))]:
                self._doomed.append(self._fds.pop(p)[0])

    def close_idle(self, fs, idle: float) -> None:
        """Close descriptors unused for ``idle`` seconds (and those already doomed)."""
        limit = time.monotonic() - idle
        with self._mutex:
            old = [p for p, (_, used) in self._fds.items() if used <= limit]
            doomed = self._doomed + [self._fds.pop(p)[0] for p in old]
            self._doomed = []
        _close_all(fs, doomed)



def _close_all(fs, fds) -> None:
    for fd in fds:
        try:
            fs.close(fd)
        except Exception:
            pass


class Commit:
    """One compare-and-append of a batch; ``result`` is set by the job: ``(appended, tail)``,
    BUSY, or the exception that failed it."""

    __slots__ = ("lease", "keep", "path", "offset", "data", "cut", "riders", "durable", "result", "d")

    def __init__(self, lease, keep, path, offset, data, cut, riders, durable, d):
        self.lease, self.keep, self.path, self.offset, self.data = lease, keep, path, offset, data
        self.cut, self.riders, self.durable, self.d = cut, riders, durable, d
        self.result = None


# --- lease jobs --------------------------------------------------------------------------------

def commit_batch(fs, batch: list[Commit]) -> None:
    """Each commit of the batch (riders, flock unless leased, compare-and-append), then one
    ``sync_fs`` for all that appended durably: the whole mount's dirty data and metadata in
    one flush, far cheaper for the OSD and the MDS than an fsync per file.  A commit's
    failure is its own (``result``); a failed sync fails every durable commit."""
    try:
        for c in batch:
            try:
                c.result = _commit(fs, c)
            except Exception as e:
                c.result = e
                try:
                    release(fs, c.lease)      # unknown state: give everything back
                except Exception:
                    pass
        if any(c.durable and type(c.result) is tuple and c.result[0] for c in batch):
            try:
                fs.sync_fs()
            except Exception as e:
                for c in batch:
                    if c.durable and type(c.result) is tuple and c.result[0]:
                        c.result = e
    finally:
        for c in batch:
            c.lease.end_job(fs)


def _commit(fs, c: Commit):
    lease = c.lease
    if lease.broken or lease.stale:
        _drop_stale(fs, lease)
    if lease.fd is None:
        fd = try_flock(fs, lease.lock_path, lease.owner)
        if fd is None:
            return BUSY
        lease.fd = fd
    for path, chunk in c.riders:           # riders need no lock; held back while leased
        lease.riders.setdefault(path, []).append(chunk)
        lease.rider_bytes += len(chunk)
    if not c.keep or lease.rider_bytes >= RIDER_BUFFER:
        _write_riders(fs, lease)
    return _compare_and_append(fs, lease, c.keep, c.path, c.offset, c.data, c.cut)


def _write_riders(fs, lease: Lease) -> None:
    riders, lease.riders, lease.rider_bytes = lease.riders, {}, 0
    for path, chunks in riders.items():
        lease.rider_files.append(fs, path, b"".join(chunks))


def _compare_and_append(fs, lease: Lease, keep: bool, path: str, offset: int, data: bytes,
                        cut: int | None):
    import cephfs
    fd = lease.files.get(path)
    if fd is None:
        try:
            fd = fs.open(path, os.O_RDWR)
        except cephfs.ObjectNotFound:
            if offset > 0:
                return False, None
            fd = open_creating(fs, path, os.O_RDWR)
        if keep:
            _keep_file(fs, lease, path, fd)
        else:
            lease.files[path] = fd           # closed by the release that follows the batch
    size = fs.fstat(fd).st_size
    if size != offset and cut is not None and size == cut:
        fs.ftruncate(fd, offset)           # a torn tail the caller saw
        size = offset
    if size != offset:
        return False, read_fd(fs, fd, offset, size)
    if data:
        fs.write(fd, data, offset)
    return True, None


def _keep_file(fs, lease: Lease, path: str, fd: int) -> None:
    if len(lease.files) >= LEASE_FILES:
        oldest = next(iter(lease.files))
        fs.close(lease.files.pop(oldest))
    lease.files[path] = fd


def _drop_stale(fs, lease: Lease) -> None:
    if lease.broken:
        lease.broken = False
        release(fs, lease)
        return
    stale = list(lease.stale)          # the reactor may add to the set meanwhile
    lease.stale.difference_update(stale)
    for path in stale:
        fd = lease.files.pop(path, None)
        if fd is not None:
            fs.close(fd)


def release(fs, lease: Lease) -> None:
    """Write held-back riders, close the lease's files and give its flock back (the lease
    is empty afterwards, whatever fails)."""
    errors = []
    if lease.stale:
        try:
            _drop_stale(fs, lease)
        except Exception as e:
            errors.append(e)
    if lease.riders:
        try:
            _write_riders(fs, lease)
        except Exception as e:
            lease.riders, lease.rider_bytes = {}, 0    # cache entries: recomputed if lost
            errors.append(e)
    files, lease.files = lease.files, {}
    lease.stale.clear()
    fd, lease.fd = lease.fd, None
    for f in files.values():
        try:
            fs.close(f)
        except Exception as e:
            errors.append(e)
    if fd is not None:
        try:
            unflock(fs, fd, lease.owner)
        except Exception as e:
            errors.append(e)
    if errors:
        raise errors[0]


def release_all(fs, leases: list[Lease]) -> list[Exception]:
    """Release several leases in one job; the errors (a lease is released whatever happens:
    closing a descriptor gives the flock back even when the unlock call failed)."""
    errors = []
    for lease in leases:
        try:
            release(fs, lease)
        except Exception as e:
            errors.append(e)
    return errors


# --- plain file jobs ---------------------------------------------------------------------------

def mkparents(fs, path: str) -> None:
    fs.mkdirs(posixpath.dirname(path), 0o700)


def read(fs, path: str, offset: int) -> bytes | None:
    import cephfs
    try:
        fd = fs.open(path, os.O_RDONLY)
    except cephfs.ObjectNotFound:
        return None
    try:
        return read_fd(fs, fd, offset, fs.fstat(fd).st_size)
    finally:
        fs.close(fd)


def read_fd(fs, fd: int, offset: int, size: int) -> bytes:
    chunks = []
    pos = offset
    while pos < size:
        chunk = fs.read(fd, pos, min(READ_CHUNK, size - pos))
        if not chunk:
            break
        chunks.append(chunk)
        pos += len(chunk)
    return b"".join(chunks)


def size(fs, path: str) -> int | None:
    import cephfs
    try:
        return fs.stat(path).st_size
    except cephfs.ObjectNotFound:
        return None


def open_creating(fs, path: str, flags: int) -> int:
    import cephfs
    try:
        return fs.open(path, flags | os.O_CREAT, 0o600)
    except cephfs.ObjectNotFound:
        mkparents(fs, path)
        return fs.open(path, flags | os.O_CREAT, 0o600)


def append(fs, path: str, data: bytes) -> int:
    # The caller holds the file's lock, so the size read here is where this write lands.
    # Closing straight away lets the client start flushing, which makes the later fsync cheap.
    fd = open_creating(fs, path, os.O_WRONLY)
    try:
        offset = fs.fstat(fd).st_size
        if data:
            fs.write(fd, data, offset)
        return offset
    finally:
        fs.close(fd)


def truncate(fs, path: str, size: int) -> None:
    fs.truncate(path, size)


def write_atomic(fs, path: str, data: bytes) -> None:
    parent, name = posixpath.split(path)
    tmp = f"{parent}/{TMP_PREFIX}{name}.{uuid.uuid4().hex[:12]}"
    fd = open_creating(fs, tmp, os.O_WRONLY | os.O_EXCL)
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
    fsync_dir(fs, parent)      # the rename is an MDS operation: wait until it is journaled


def fsync_dir(fs, path: str) -> None:
    fd = fs.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fs.fsync(fd, 0)
    finally:
        fs.close(fd)


def fsync_each(fs, paths: list[str]) -> None:
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


def sync_fs(fs, paths: list[str]) -> None:
    fs.sync_fs()


def listdir(fs, path: str) -> list[str]:
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


def remove(fs, path: str) -> None:
    import cephfs
    try:
        fs.unlink(path)
    except cephfs.ObjectNotFound:
        pass


def remove_tree(fs, path: str) -> None:
    import cephfs
    try:
        handle = fs.opendir(path)
    except cephfs.ObjectNotFound:
        return
    except cephfs.NotDirectory:
        remove(fs, path)
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
            remove_tree(fs, child)
        else:
            remove(fs, child)
    try:
        fs.rmdir(path)
    except cephfs.ObjectNotFound:
        pass


def try_flock(fs, path: str, owner: int) -> int | None:
    """The fd of the lock file, locked for ``owner``; None if another owner holds it."""
    import cephfs
    import fcntl
    fd = open_creating(fs, path, os.O_RDWR)
    try:
        fs.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, owner)
    except cephfs.Error as e:
        fs.close(fd)
        if _is(e, errno.EWOULDBLOCK, errno.EAGAIN):
            return None
        raise
    return fd


def unflock(fs, fd: int, owner: int) -> None:
    import fcntl
    try:
        fs.flock(fd, fcntl.LOCK_UN, owner)
    finally:
        fs.close(fd)
