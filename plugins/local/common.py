"""What the local drivers share: blocking file work in a pool, with OS errors mapped, and
making new files' directories durable."""

from __future__ import annotations

import os

from mailserver import threads
from mailserver.storage.errors import ErrorKind, StorageError


async def run_io(pool: str, what: str, fn, *args, missing: ErrorKind = ErrorKind.TEMPORARY):
    """``fn(*args)`` in the named pool.  A missing file is ``missing`` (callers that expect
    absence handle it inside ``fn``); other OS errors and a stopped pool are TEMPORARY.
    ``what`` names the store in the log detail."""
    try:
        return await threads.call(pool, fn, *args)
    except StorageError:
        raise
    except FileNotFoundError as e:
        raise StorageError(missing, f"{what}: {e.filename} missing") from None
    except OSError as e:
        raise StorageError(ErrorKind.TEMPORARY, f"{what} I/O on {e.filename}: {e.strerror}") from None
    except threads.PoolStopped as e:
        raise StorageError(ErrorKind.TEMPORARY, f"{what}: {e}") from None


async def start_pool(pool: str, size: int, root: str, what: str) -> None:
    """Start a driver's pool and create its root directory."""
    threads.pool(pool, size)
    try:
        await threads.call(pool, os.makedirs, root, 0o700, True)
    except OSError as e:
        raise StorageError(ErrorKind.TEMPORARY, f"cannot create {what} directory {root}: {e}") from None


def fsync_dir(path: str) -> None:
    """Make the entries of directory ``path`` durable (a file created or renamed into it)."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def makedirs_durable(path: str) -> None:
    """``os.makedirs(path)`` whose every new directory is made durable in its parent.  Without
    it a crash could lose a new directory's own entry, and with it files inside whose fsync and
    rename had completed (ext4 happens to commit it with them; POSIX does not promise it).  A
    directory another thread or process is creating meanwhile is synced in its parent too: its
    maker may not have got there yet."""
    missing = []
    p = path
    while not os.path.isdir(p):
        missing.append(p)
        parent = os.path.dirname(p)
        if parent == p:
            break
        p = parent
    for d in reversed(missing):
        try:
            os.mkdir(d, 0o700)
        except FileExistsError:
            pass
        fsync_dir(os.path.dirname(d))
