"""Local object store: each mail object is one immutable file.

``ROOT/<namespace>/<oid[:2]>/<oid>`` holds a small header with the metadata followed by the
message, written in one atomic step (temporary file, fsync, rename, fsync of the directory).
References live beside it in ``<oid>.refs`` (one per line; no file means the initial reference
only).  Every call is one job in the ``local-objects`` thread pool (``get_many``: one job for the
whole batch).
"""

from __future__ import annotations

import fcntl
import os
import struct
import time

from mailserver.storage.drivers import ObjectStore
from mailserver.storage.errors import ErrorKind, StorageError
from plugins.local.common import fsync_dir, makedirs_durable, run_io, start_pool
from mailserver.storage.paths import safe_component, unsafe_component

POOL = "local-objects"
MAGIC = b"RBOXOBJ1"
_U32 = struct.Struct("<I")
INITIAL_REF = ""
_PID = [os.getpid()]            # for temporary names, without a system call per object
os.register_at_fork(after_in_child=lambda: _PID.__setitem__(0, os.getpid()))


META_ROOM = 4096                # metadata bytes expected at most before an object's data (a hint)


def _object_meta_len(head: bytes, path: str) -> int:
    """Length of the metadata block, from the first bytes of an object file."""
    if len(head) < len(MAGIC) + 4 or not head.startswith(MAGIC):
        raise StorageError(ErrorKind.CORRUPTED, f"{path}: not an object file")
    return _U32.unpack_from(head, len(MAGIC))[0]


def encode_meta(meta: dict[str, str]) -> bytes:
    out = []
    for key, value in sorted(meta.items()):
        k = key.encode("utf-8")
        v = value.encode("utf-8")
        out.append(bytes([len(k)]) + k + _U32.pack(len(v)) + v)
    return b"".join(out)


def decode_meta(raw: bytes) -> dict[str, str]:
    meta = {}
    pos = 0
    while pos < len(raw):
        klen = raw[pos]
        key = raw[pos + 1:pos + 1 + klen].decode("utf-8")
        pos += 1 + klen
        (vlen,) = _U32.unpack_from(raw, pos)
        meta[key] = raw[pos + 4:pos + 4 + vlen].decode("utf-8")
        pos += 4 + vlen
    return meta


class LocalObjectStore(ObjectStore):
    def __init__(self, root: str, namespace_suffix: str = "_namespace", threads_: int = 8,
                 max_object_size: int = 2 ** 31):
        self.root = root
        self.suffix = namespace_suffix
        self._threads = threads_
        self._max = max_object_size
        self._ns_dirs: dict[str, str] = {}     # namespace -> its directory (with a final "/")

    @classmethod
    def from_config(cls, config) -> "LocalObjectStore":
        return cls(config.rbox.object_path, config.rbox.namespace_suffix, config.server.io_threads)

    @property
    def max_object_size(self) -> int:
        return self._max

    async def start(self) -> None:
        await start_pool(POOL, self._threads, self.root, "object")

    def namespace(self, username: str) -> str:
        return username + self.suffix

    def _path(self, ns: str, oid: str) -> str:
        if not oid or "/" in oid or oid.startswith("."):
            raise StorageError(ErrorKind.INVALID, f"bad object id {oid!r}")
        base = self._ns_dirs.get(ns)
        if base is None:
            if len(self._ns_dirs) >= 4096:
                self._ns_dirs.clear()
            base = self._ns_dirs[ns] = os.path.join(self.root, safe_component(ns)) + "/"
        return f"{base}{oid[:2]}/{oid}"

    async def _run(self, fn, *args):
        return await run_io(POOL, "object store", fn, *args, missing=ErrorKind.NOT_FOUND)

    # --- write --------------------------------------------------------------------------------
    @staticmethod
    def _put(path: str, data: bytes, meta: bytes) -> None:
        d = os.path.dirname(path)
        tmp = f"{path}.tmp.{_PID[0]}.{time.monotonic_ns()}"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileNotFoundError:       # first object in this fan-out directory
            makedirs_durable(d)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            head = MAGIC + _U32.pack(len(meta)) + meta
            done = os.writev(fd, (head, data))          # no copy of the message to prepend the header
            if done < len(head) + len(data):
                view = memoryview(head + data)[done:]
                while view:
                    view = view[os.write(fd, view):]
            os.fsync(fd)
        except BaseException:
            os.close(fd)
            os.unlink(tmp)
            raise
        os.close(fd)
        os.rename(tmp, path)
        fsync_dir(d)

    async def put(self, ns: str, oid: str, data: bytes, meta: dict[str, str]) -> None:
        if len(data) > self._max:
            raise StorageError(ErrorKind.TOO_BIG, f"object of {len(data)} bytes exceeds {self._max}")
        await self._run(self._put, self._path(ns, oid), data, encode_meta(meta))

    # --- read ---------------------------------------------------------------------------------
    @staticmethod
    def _read(path: str, offset: int, length: int | None, want_meta: bool):
        with open(path, "rb") as f:
            head = f.read(len(MAGIC) + 4)
            if len(head) < len(MAGIC) + 4 or not head.startswith(MAGIC):
                raise StorageError(ErrorKind.CORRUPTED, f"{path}: not an object file")
            (mlen,) = _U32.unpack_from(head, len(MAGIC))
            if want_meta:
                return decode_meta(f.read(mlen))
            f.seek(len(MAGIC) + 4 + mlen + offset)
            return f.read() if length is None else f.read(length)

    async def get(self, ns: str, oid: str, offset: int = 0, length: int | None = None) -> bytes:
        if offset == 0 and length is None:
            return await self._run(self._read_whole, self._path(ns, oid))
        return await self._run(self._read, self._path(ns, oid), offset, length, False)

    @staticmethod
    def _read_whole(path: str, size_hint: int | None = None) -> bytes:
        """An object's data.  With ``size_hint`` (the expected data size), one read takes the
        whole file: every system call here hands the GIL to the reactor thread and back."""
        fd = os.open(path, os.O_RDONLY)
        try:
            if size_hint is not None:
                want = size_hint + META_ROOM
                raw = os.read(fd, want)
                if len(raw) < want:                    # the whole file, as expected
                    mlen = _object_meta_len(raw, path)
                    return raw[len(MAGIC) + 4 + mlen:]
            head = os.pread(fd, len(MAGIC) + 4, 0)
            start = len(MAGIC) + 4 + _object_meta_len(head, path)
            want = os.fstat(fd).st_size - start
            data = os.pread(fd, want, start) if want > 0 else b""
            while len(data) < want:         # a read stops short past 2 GB
                more = os.pread(fd, want - len(data), start + len(data))
                if not more:
                    break
                data += more
            return data
        finally:
            os.close(fd)

    @classmethod
    def _read_batch(cls, paths: list, sizes: list) -> list:
        out = []
        for path, size in zip(paths, sizes):
            try:
                out.append(cls._read_whole(path, size))
            except StorageError as e:
                out.append(e)
            except FileNotFoundError:
                out.append(StorageError(ErrorKind.NOT_FOUND, f"object {path} missing"))
            except OSError as e:
                out.append(StorageError(ErrorKind.TEMPORARY, f"object I/O on {path}: {e.strerror}"))
        return out

    async def get_many(self, ns: str, oids: list[str], sizes: list[int] | None = None) -> list:
        """One pool job for the whole batch: a thread hand-off costs more than reading a small file."""
        paths = []
        for oid in oids:
            try:
                paths.append(self._path(ns, oid))
            except StorageError as e:
                paths.append(e)
        if all(isinstance(p, StorageError) for p in paths):
            return paths
        hints = sizes if sizes is not None else [None] * len(paths)
        readable = [(p, h) for p, h in zip(paths, hints) if not isinstance(p, StorageError)]
        results = iter(await self._run(self._read_batch, [p for p, _ in readable], [h for _, h in readable]))
        return [p if isinstance(p, StorageError) else next(results) for p in paths]

    async def get_meta(self, ns: str, oid: str) -> dict[str, str]:
        return await self._run(self._read, self._path(ns, oid), 0, None, True)

    async def mtime(self, ns: str, oid: str) -> float:
        return await self._run(lambda path: os.stat(path).st_mtime, self._path(ns, oid))

    # --- references ---------------------------------------------------------------------------
    @staticmethod
    def _update_refs(path: str, add: str | None, remove: str | None):
        """Change the refs file under a flock on the object; returns (refs, deleted)."""
        fd = os.open(path, os.O_RDONLY)  # FileNotFoundError -> NOT_FOUND
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            refs_path = path + ".refs"
            try:
                with open(refs_path, "r", encoding="utf-8") as f:
                    refs = set(f.read().split("\n")[:-1])
            except FileNotFoundError:
                refs = {INITIAL_REF}
            if add is None and remove is None:
                return refs, False
            if add is not None:
                refs.add(add)
            if remove is not None:
                refs.discard(remove)
            if not refs:
                os.unlink(path)
                try:
                    os.unlink(refs_path)
                except FileNotFoundError:
                    pass
                return refs, True
            tmp = refs_path + ".tmp"
            with open(tmp, "w", encoding="utf-8") as f:
                f.write("".join(r + "\n" for r in sorted(refs)))
                f.flush()
                os.fsync(f.fileno())
            os.rename(tmp, refs_path)
            return refs, False
        finally:
            os.close(fd)

    async def add_ref(self, ns: str, oid: str, ref: str) -> None:
        await self._run(self._update_refs, self._path(ns, oid), ref, None)

    async def remove_ref(self, ns: str, oid: str, ref: str) -> bool:
        try:
            _, deleted = await self._run(self._update_refs, self._path(ns, oid), None, ref)
        except StorageError as e:
            if e.kind is ErrorKind.NOT_FOUND:
                return True
            raise
        return deleted

    async def refs(self, ns: str, oid: str) -> set[str]:
        refs, _ = await self._run(self._update_refs, self._path(ns, oid), None, None)
        return refs

    async def delete(self, ns: str, oid: str) -> None:
        def rm(path):
            for p in (path, path + ".refs"):
                try:
                    os.unlink(p)
                except FileNotFoundError:
                    pass
        await self._run(rm, self._path(ns, oid))

    @staticmethod
    def _fan_out_files(base: str):
        """(directory, file name) of every file in a namespace's fan-out directories (the
        two-character ones: "state/" holds checkpoints, not mail)."""
        try:
            fans = os.listdir(base)
        except FileNotFoundError:
            return
        for fan in fans:
            if len(fan) == 2:
                directory = os.path.join(base, fan)
                for name in os.listdir(directory):
                    yield directory, name

    async def list(self, ns: str) -> list[str]:
        def walk(base):
            return sorted(name for _, name in self._fan_out_files(base)
                          if ".refs" not in name and ".tmp." not in name)
        return await self._run(walk, os.path.join(self.root, safe_component(ns)))

    async def remove_partial_writes(self, ns: str, older_than: float, dry_run: bool = False) -> int:
        """``_put`` writes ``<oid>.tmp.<pid>.<ns>`` and renames it: one still there after its
        writer's grace is what a crash between the two left (never acknowledged, never indexed)."""
        def sweep(base):
            n = 0
            for directory, name in self._fan_out_files(base):
                if ".tmp." not in name:
                    continue
                path = os.path.join(directory, name)
                try:
                    if os.stat(path).st_mtime >= older_than:
                        continue
                    if not dry_run:
                        os.unlink(path)
                except FileNotFoundError:
                    continue            # its write finished meanwhile
                n += 1
            return n
        return await self._run(sweep, os.path.join(self.root, safe_component(ns)))

    # --- mutable state objects (index checkpoints) --------------------------------------------
    def _state_path(self, ns: str, name: str) -> str:
        if not name or "/" in name or name.startswith("."):
            raise StorageError(ErrorKind.INVALID, f"bad state object name {name!r}")
        return os.path.join(self.root, safe_component(ns), "state", name)

    async def put_state(self, ns: str, name: str, data: bytes) -> None:
        def write(path):
            d = os.path.dirname(path)
            makedirs_durable(d)
            tmp = f"{path}.tmp.{os.getpid()}.{time.monotonic_ns()}"
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.rename(tmp, path)
            fsync_dir(d)
        await self._run(write, self._state_path(ns, name))

    async def get_state(self, ns: str, name: str) -> bytes | None:
        def read(path):
            try:
                with open(path, "rb") as f:
                    return f.read()
            except FileNotFoundError:
                return None
        return await self._run(read, self._state_path(ns, name))

    async def list_states(self, ns: str) -> list[str]:
        def ls(path):
            try:
                return sorted(n for n in os.listdir(path) if ".tmp." not in n)
            except FileNotFoundError:
                return []
        return await self._run(ls, os.path.join(self.root, safe_component(ns), "state"))

    async def delete_state(self, ns: str, name: str) -> None:
        def rm(path):
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
        await self._run(rm, self._state_path(ns, name))

    async def list_namespaces(self) -> list[str]:
        def ls(root):
            try:
                return sorted(unsafe_component(n) for n in os.listdir(root) if not n.startswith("."))
            except FileNotFoundError:
                return []
        return await self._run(ls, self.root)
