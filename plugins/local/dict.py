"""Local dictionary: each user's keys in one JSON file, rewritten atomically per transaction.

``STATE_DIR/dict/<user>.json`` for ``priv/`` keys and ``STATE_DIR/dict/shared.json`` for
``shared/`` keys.  Transactions of one process are serialised by a DeferredLock per file and
across processes by an flock, so increments are atomic.
"""

from __future__ import annotations

import fcntl
import json
import os

from twisted.internet import defer

from mailserver import threads
from mailserver.storage.drivers import DICT_MAX_VALUE, Dict, check_dict_key, dict_prefix_matches
from mailserver.storage.errors import ErrorKind, StorageError
from mailserver.storage.paths import safe_component

POOL = "local-dict"


class LocalDict(Dict):
    def __init__(self, root: str):
        self.root = root
        self._locks: dict[str, defer.DeferredLock] = {}

    @classmethod
    def from_config(cls, config) -> "LocalDict":
        return cls(os.path.join(config.server.state_dir, "dict"))

    def _file(self, username: str, key: str) -> str:
        if key.startswith("shared/"):
            return os.path.join(self.root, "shared.json")
        if key.startswith("priv/"):
            return os.path.join(self.root, "user-" + safe_component(username) + ".json")
        raise StorageError(ErrorKind.INVALID, f"dict key {key!r} must start with priv/ or shared/")

    @staticmethod
    def _check_value(key: str, value) -> None:
        if value is None:
            return
        if not isinstance(value, str) or "\0" in value:
            raise StorageError(ErrorKind.INVALID, f"dict value of {key!r} must be a string without NUL")
        if len(value.encode("utf-8")) > DICT_MAX_VALUE:
            raise StorageError(ErrorKind.LIMIT, f"dict value of {key!r} is larger than {DICT_MAX_VALUE} bytes")

    @staticmethod
    def _load(path: str) -> dict:
        try:
            with open(path, "r", encoding="utf-8") as f:
                return json.load(f)
        except FileNotFoundError:
            return {}
        except ValueError as e:
            raise StorageError(ErrorKind.CORRUPTED, f"dictionary {path}: {e}") from None

    async def get(self, username: str, key: str) -> str | None:
        data = await threads.call(POOL, self._load, self._file(username, check_dict_key(key)))
        return data.get(key)

    async def iterate(self, username: str, prefix: str, recursive: bool = True) -> dict[str, str]:
        data = await threads.call(POOL, self._load, self._file(username, prefix))
        return {k: v for k, v in data.items() if dict_prefix_matches(k, prefix, recursive)}

    def _apply(self, path: str, sets: dict, increments: dict) -> None:
        os.makedirs(os.path.dirname(path), 0o700, exist_ok=True)
        lock_fd = os.open(path + ".lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(lock_fd, fcntl.LOCK_EX)
            data = self._load(path)
            for k, v in sets.items():
                if v is None:
                    data.pop(k, None)
                else:
                    data[k] = v
            for k, n in increments.items():
                try:
                    data[k] = str(int(data.get(k, "0")) + n)
                except ValueError:
                    raise StorageError(ErrorKind.INVALID, f"dict key {k!r} is not a counter") from None
            tmp = path + ".tmp"
            with open(tmp, "w", encoding="utf-8") as f:
                json.dump(data, f, sort_keys=True)
                f.flush()
                os.fsync(f.fileno())
            os.rename(tmp, path)
        finally:
            os.close(lock_fd)

    async def transaction(self, username: str, sets=(), increments=()) -> None:
        sets = dict(sets)
        increments = dict(increments)
        by_file: dict[str, tuple[dict, dict]] = {}
        for k, v in sets.items():
            self._check_value(check_dict_key(k), v)
            by_file.setdefault(self._file(username, k), ({}, {}))[0][k] = v
        for k, n in increments.items():
            if isinstance(n, bool) or not isinstance(n, int):
                raise StorageError(ErrorKind.INVALID, f"dict increment of {k!r} must be an integer")
            by_file.setdefault(self._file(username, check_dict_key(k)), ({}, {}))[1][k] = n
        for path, (s, inc) in sorted(by_file.items()):
            lock = self._locks.setdefault(path, defer.DeferredLock())
            await lock.acquire()
            try:
                await threads.call(POOL, self._apply, path, s, inc)
            finally:
                lock.release()
