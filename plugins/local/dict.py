"""Local dictionary: each user's keys in one JSON file, rewritten atomically per transaction.

``STATE_DIR/dict/user-<user>.json`` for ``priv/`` keys and ``STATE_DIR/dict/shared.json`` for
``shared/`` keys.  Transactions of one process are serialised by a DeferredLock per file and
across processes by an flock on ``<file>.lock``, so increments are atomic.

A transaction touching both files takes both locks in one fixed order (sorted paths: every
process does the same, so two such transactions cannot deadlock), reads both files, computes
and validates both new contents, and only then replaces the files one after the other.  A bad
counter in either half therefore changes nothing; a crash between the two renames can leave
the first file written and not the second.
"""

from __future__ import annotations

import fcntl
import json
import os

from twisted.internet import defer

from mailserver import threads
from mailserver.storage import dictrules
from mailserver.storage.drivers import DICT_PRIVATE, Dict, check_dict_key, dict_prefix_matches
from mailserver.storage.errors import ErrorKind, StorageError
from mailserver.storage.paths import safe_component
from plugins.local.common import makedirs_durable

POOL = "local-dict"


class LocalDict(Dict):
    """Dict on local files (the embedded default)."""

    def __init__(self, root: str):
        """Files under ``root`` (created on the first write)."""
        self.root = root
        self._locks: dict[str, defer.DeferredLock] = {}

    @classmethod
    def from_config(cls, config) -> "LocalDict":
        """``STATE_DIR/dict``."""
        return cls(os.path.join(config.server.state_dir, "dict"))

    def _file(self, username: str, space: str) -> str:
        """The file holding ``space`` (``priv/`` or ``shared/``) for ``username``."""
        if space == DICT_PRIVATE:
            return os.path.join(self.root, "user-" + safe_component(username) + ".json")
        return os.path.join(self.root, "shared.json")

    @staticmethod
    def _load(path: str) -> dict:
        """A file's keys and values; {} when it does not exist."""
        try:
            with open(path, "r", encoding="utf-8") as f:
                return json.load(f)
        except FileNotFoundError:
            return {}
        except ValueError as e:
            raise StorageError(ErrorKind.CORRUPTED, f"dictionary {path}: {e}") from None

    async def get(self, username: str, key: str) -> str | None:
        """One key's value (no lock: files are replaced by rename, a reader sees old or new)."""
        path = self._file(username, dictrules.space(check_dict_key(key)))
        return (await threads.call(POOL, self._load, path)).get(key)

    async def iterate(self, username: str, prefix: str, recursive: bool = True) -> dict[str, str]:
        """Keys under ``prefix`` from the one file holding them."""
        path = self._file(username, dictrules.space(dictrules.check_prefix(prefix)))
        data = await threads.call(POOL, self._load, path)
        return {k: v for k, v in data.items() if dict_prefix_matches(k, prefix, recursive)}

    def _apply(self, plans: list[tuple[str, dict, dict]]) -> None:
        """Pool thread: flock every file in order, compute every new content, then write them."""
        fds = []
        try:
            for path, _, _ in plans:
                makedirs_durable(os.path.dirname(path))
                fd = os.open(path + ".lock", os.O_RDWR | os.O_CREAT, 0o600)
                fds.append(fd)
                fcntl.flock(fd, fcntl.LOCK_EX)
            contents = []
            for path, sets, increments in plans:      # validates every half before any write
                data = self._load(path)
                for key, value in dictrules.apply(data, sets, increments).items():
                    if value is None:
                        data.pop(key, None)
                    else:
                        data[key] = value
                contents.append((path, data))
            for path, data in contents:
                tmp = path + ".tmp"
                with open(tmp, "w", encoding="utf-8") as f:
                    json.dump(data, f, sort_keys=True)
                    f.flush()
                    os.fsync(f.fileno())
                os.rename(tmp, path)
        finally:
            for fd in fds:
                os.close(fd)          # closing releases the flock

    async def transaction(self, username: str, sets=(), increments=()) -> None:
        """Validate everything, take the in-process locks in path order, apply in one thread job."""
        halves = dictrules.split(sets, increments)
        plans = sorted((self._file(username, space), s, inc) for space, (s, inc) in halves.items())
        held = []
        try:
            for path, _, _ in plans:
                lock = self._locks.setdefault(path, defer.DeferredLock())
                await lock.acquire()
                held.append(lock)
            if plans:
                await threads.call(POOL, self._apply, plans)
        finally:
            for lock in reversed(held):
                lock.release()
