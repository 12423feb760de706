"""Driver interfaces below a mailbox format: object store, index store, dictionary.

A driver is registered in an entry-point group (``mailserver.object_stores``,
``mailserver.index_stores``, ``mailserver.dicts``) and built with ``from_config``.
Every I/O method is a coroutine; a driver whose backend is blocking (files, libcephfs)
runs it in a bounded thread pool of its own (``mailserver.threads``).  Drivers raise
``StorageError``: TEMPORARY when the backend is unreachable or too slow, NOT_FOUND when
the thing asked for does not exist, TOO_BIG when an object exceeds the backend's limit.
"""

from __future__ import annotations

import abc
from typing import Callable, Iterable

from twisted.internet import defer

from mailserver.storage.errors import ErrorKind, StorageError

# Object metadata keys.  One letter each, as dovecot-ceph-plugin's rbox (librmb rados-types.h),
# so tools that know rbox objects can read ours.  Values are ASCII.
META_MAILBOX_GUID = "M"      # mailbox GUID the mail was saved to (32 hex)
META_GUID = "G"              # mail GUID (32 hex)
META_RECEIVED = "R"          # received (internal) date, UNIX seconds, decimal
META_SAVE_DATE = "S"         # save date, UNIX seconds, decimal
META_PHYSICAL_SIZE = "Z"     # stored size in bytes, decimal
META_VIRTUAL_SIZE = "V"      # size with CRLF line endings, decimal
META_ORIG_MAILBOX = "B"      # name of the mailbox it was saved to (UTF-8)
META_VERSION = "I"           # object format version
META_POP3_UIDL = "P"         # POP3 UIDL recorded at migration (optional)
META_FROM_ENVELOPE = "A"     # envelope sender (LMTP MAIL FROM), optional

OBJECT_FORMAT_VERSION = "1"


class ObjectStore(abc.ABC):
    """Immutable mail objects, each user's in a namespace of their own.

    An object is written once, with its metadata, atomically: an object without its metadata
    never exists.  References (``add_ref``/``remove_ref``) let several index records (COPY)
    share one object; the object is deleted when its last reference goes.
    """

    @classmethod
    @abc.abstractmethod
    def from_config(cls, config) -> "ObjectStore":
        """Build from the validated configuration (``mailserver.config.Config``)."""

    async def start(self) -> None:
        """Connect.  StorageError(TEMPORARY) with a clear detail when the backend is unreachable."""

    async def stop(self) -> None:
        """Wait for in-flight writes, disconnect."""

    @abc.abstractmethod
    def namespace(self, username: str) -> str:
        """The namespace holding a user's objects, derived only from the (normalised) username."""

    @property
    @abc.abstractmethod
    def max_object_size(self) -> int:
        """Largest object this store accepts; a bigger message is refused with TOO_BIG."""

    @abc.abstractmethod
    async def put(self, ns: str, oid: str, data: bytes, meta: dict[str, str]) -> None:
        """Write a new object with its metadata and one initial reference ``""``.
        Durable when the coroutine returns."""

    @abc.abstractmethod
    async def get(self, ns: str, oid: str, offset: int = 0, length: int | None = None) -> bytes:
        """Read an object's data (or a byte range of it).  NOT_FOUND if missing."""

    async def get_many(self, ns: str, oids: list[str], sizes: list[int] | None = None) -> list:
        """Read several whole objects: one entry per oid, in order, each the data (``bytes``) or
        the ``StorageError`` that reading it raised (NOT_FOUND for a missing one).  ``sizes``:
        the data sizes the caller expects (from its index), a hint a driver may use to read each
        object in one call; the data returned is always the object's whole data.

        This default issues every ``get`` at once and gathers them (right for a backend with
        parallel asynchronous reads); a driver whose reads cost a thread hand-off each reads
        the whole batch in one job instead."""
        async def one(oid):
            try:
                return await self.get(ns, oid)
            except StorageError as e:
                return e
        try:
            return list(await defer.gatherResults([defer.Deferred.fromCoroutine(one(o)) for o in oids],
                                                   consumeErrors=True))
        except defer.FirstError as e:
            e.subFailure.raiseException()

    @abc.abstractmethod
    async def get_meta(self, ns: str, oid: str) -> dict[str, str]:
        """An object's immutable metadata.  NOT_FOUND if missing."""

    @abc.abstractmethod
    async def mtime(self, ns: str, oid: str) -> float:
        """When an object was last written (seconds since the epoch), complete or not: gc ages
        by it what a write that never finished left behind.  NOT_FOUND if missing."""

    async def remove_partial_writes(self, ns: str, older_than: float, dry_run: bool = False) -> int:
        """Remove what writes that never finished left in ``ns`` outside any object (a file
        store's temporary files after a crash) when last touched before ``older_than`` (seconds
        since the epoch); returns how many (counted, not removed, with ``dry_run``).  Stores
        whose unfinished writes are objects (RADOS parts: see ``mtime``) have nothing here."""
        return 0

    @abc.abstractmethod
    async def add_ref(self, ns: str, oid: str, ref: str) -> None:
        """Record one more reference to an object (durable on return).  NOT_FOUND if missing."""

    @abc.abstractmethod
    async def remove_ref(self, ns: str, oid: str, ref: str) -> bool:
        """Drop one reference; delete the object when none is left.  True if it was deleted."""

    @abc.abstractmethod
    async def refs(self, ns: str, oid: str) -> set[str]:
        """The object's current references."""

    @abc.abstractmethod
    async def delete(self, ns: str, oid: str) -> None:
        """Delete an object whatever its references (rollback, gc).  Missing is not an error."""

    @abc.abstractmethod
    async def list(self, ns: str) -> list[str]:
        """Every object id in a namespace."""


    # --- small mutable objects (index checkpoints) ---------------------------------------------
    @abc.abstractmethod
    async def put_state(self, ns: str, name: str, data: bytes) -> None:
        """Replace a small mutable object (a mailbox's index checkpoint), durably.  These live
        apart from mail objects: ``list`` never returns them."""

    @abc.abstractmethod
    async def get_state(self, ns: str, name: str) -> bytes | None:
        """A mutable object's content, or None."""

    @abc.abstractmethod
    async def list_states(self, ns: str) -> list[str]:
        """Names of the mutable objects in a namespace."""

    @abc.abstractmethod
    async def delete_state(self, ns: str, name: str) -> None:
        """Remove a mutable object; missing is not an error."""

    @abc.abstractmethod
    async def list_namespaces(self) -> list[str]:
        """Every namespace holding objects (for `rbox gc` over all users)."""


class IndexLock(abc.ABC):
    """A held exclusive lock on an index file, across processes and hosts."""

    @abc.abstractmethod
    async def release(self) -> None:
        """Release the lock.  Safe to call twice."""


class IndexStore(abc.ABC):
    """A tree of small index files, addressed by ``/``-separated paths relative to the store's
    root (the mailbox format derives every path from the username; drivers never see client
    input).  Appends are cheap and not durable until ``sync``; ``write_atomic`` replaces a
    file durably in one step; ``lock`` gives cross-process, cross-host exclusion.
    """

    @classmethod
    @abc.abstractmethod
    def from_config(cls, config) -> "IndexStore":
        """Build from the validated configuration."""

    async def start(self) -> None:
        """Mount / create the root.  StorageError(TEMPORARY) when the backend is unreachable."""

    async def stop(self) -> None:
        """Flush and unmount."""

    @abc.abstractmethod
    async def read(self, path: str, offset: int = 0) -> bytes | None:
        """Bytes from ``offset`` to the end of the file; None if the file does not exist."""

    @abc.abstractmethod
    async def size(self, path: str) -> int | None:
        """Current size of a file, or None if it does not exist."""

    @abc.abstractmethod
    async def append(self, path: str, data: bytes) -> int:
        """Append to a file (created if missing, parents too); returns the offset written at.
        Not durable until ``sync``.  Callers hold the file's lock."""

    async def append_at(self, path: str, offset: int, data: bytes, *, lock: str,
                        cut_tail_at_size: int | None = None) -> tuple[bool, bytes | None]:
        """Compare-and-append, the one write primitive of the index log.

        Holding the lock named ``lock``: if the file's size is ``offset`` (a missing file counts as
        size 0), append ``data`` and return ``(True, None)``.  If its size is ``cut_tail_at_size``,
        first cut it back to ``offset`` (the caller saw a torn tail there), then append.  Otherwise
        append nothing and return ``(False, tail)`` with the bytes from ``offset`` to the end, or
        ``(False, None)`` if the file is missing while ``offset`` > 0.  Not durable until ``sync``.

        This default takes the lock and makes several calls; drivers override it to do the
        whole thing in one round trip.
        """
        held = await self.lock(lock)
        try:
            size = await self.size(path)
            if size is None and offset > 0:
                return False, None
            size = size or 0
            if size != offset and cut_tail_at_size is not None and size == cut_tail_at_size:
                await self.truncate(path, offset)
                size = offset
            if size != offset:
                return False, await self.read(path, offset)
            await self.append(path, data)
            return True, None
        finally:
            await held.release()

    async def append_at_durable(self, path: str, offset: int, data: bytes, *, lock: str,
                                cut_tail_at_size: int | None = None,
                                also_append: Iterable[tuple[str, bytes]] = ()) -> tuple[bool, bytes | None]:
        """``append_at``, then, if it appended, ``sync([path])``: the index commit's write, in one
        round trip where the driver can.  ``also_append``: ``(path, data)`` pairs appended as by
        ``append`` (not synced, whatever the outcome): small writes riding along, such as index
        cache entries.  This default makes the separate calls."""
        for other, chunk in also_append:
            await self.append(other, chunk)
        ok, tail = await self.append_at(path, offset, data, lock=lock, cut_tail_at_size=cut_tail_at_size)
        if ok:
            await self.sync([path])
        return ok, tail

    async def truncate(self, path: str, size: int) -> None:
        """Cut a file back to ``size`` bytes (only under its lock, to drop a torn tail)."""
        raise NotImplementedError(f"{type(self).__name__} cannot truncate")

    @abc.abstractmethod
    async def sync(self, paths: Iterable[str]) -> None:
        """Make earlier appends to ``paths`` durable.  Concurrent calls are grouped (one flush
        for many deliveries), so callers simply await it."""

    @abc.abstractmethod
    async def write_atomic(self, path: str, data: bytes) -> None:
        """Replace a file's whole content durably (temporary file, flush, rename)."""

    @abc.abstractmethod
    async def listdir(self, path: str) -> list[str]:
        """Names in a directory ([] if it does not exist)."""

    @abc.abstractmethod
    async def remove(self, path: str) -> None:
        """Remove a file; missing is not an error."""

    @abc.abstractmethod
    async def remove_tree(self, path: str) -> None:
        """Remove a directory and everything below it; missing is not an error."""

    @abc.abstractmethod
    async def lock(self, path: str, timeout: float = 30.0) -> IndexLock:
        """Take an exclusive lock named by ``path`` (a lock file beside the data).
        StorageError(TEMPORARY) if not obtained within ``timeout`` seconds."""

    def watch(self, directory: str, callback: Callable[[], None]) -> Callable[[], None] | None:
        """Call ``callback()`` soon after files in ``directory`` change, whoever changed them
        (this process, another one, a command-line tool): a hint to look, not one call per
        change.  Returns a function that stops watching, or None when the store cannot watch
        (readers then only poll, as they always also do).  This default cannot."""
        return None

    async def try_lock(self, path: str) -> IndexLock | None:
        """Take the lock ``path`` only if it is free now; None when another holder (any process or
        host) has it.  Held locks are session-long (POP3), so a holder that dies must lose it.

        This default tries ``lock`` without waiting and so cannot tell a busy lock from a slow
        backend; drivers override it."""
        try:
            return await self.lock(path, timeout=0.0)
        except StorageError as e:
            if e.kind is ErrorKind.TEMPORARY:
                return None
            raise


DICT_PRIVATE = "priv/"
DICT_SHARED = "shared/"
DICT_MAX_KEY = 1024            # bytes of UTF-8 in a key
DICT_MAX_VALUE = 1024 * 1024   # bytes of UTF-8 in a value


def check_dict_key(key: str) -> str:
    """``key`` if it is a valid dictionary key, else StorageError(INVALID): it starts with
    ``priv/`` or ``shared/``, has no empty component, no NUL and at most DICT_MAX_KEY bytes."""
    if not isinstance(key, str) or not key.startswith((DICT_PRIVATE, DICT_SHARED)):
        raise StorageError(ErrorKind.INVALID, f"dict key {key!r} must start with priv/ or shared/")
    if "\0" in key or "//" in key or key.endswith("/") or len(key.encode("utf-8")) > DICT_MAX_KEY:
        raise StorageError(ErrorKind.INVALID, f"dict key {key!r}: empty component, NUL or too long")
    return key


def dict_prefix_matches(key: str, prefix: str, recursive: bool) -> bool:
    """Does ``key`` belong to an iteration of ``prefix``?  Not recursive: only keys directly under
    ``prefix`` (no further ``/`` after it), as lib-dict without DICT_ITERATE_FLAG_RECURSE."""
    return key.startswith(prefix) and (recursive or "/" not in key[len(prefix):])


class Dict(abc.ABC):
    """A key/value dictionary with the semantics of Dovecot's lib-dict (quota, IMAP METADATA,
    URLAUTH keys).

    Keys are strings starting with ``priv/`` (private to the user named in the call; they live in
    that user's space, never another's) or ``shared/`` (one space for every user); see
    ``check_dict_key``.  Values are strings of at most DICT_MAX_VALUE bytes.  A counter is a
    value holding a decimal integer; incrementing a missing key starts it from 0.  Every method
    is a coroutine; errors are StorageError (TEMPORARY when the backend cannot answer, INVALID
    for a bad key or value, LIMIT for a value too large).
    """

    @classmethod
    @abc.abstractmethod
    def from_config(cls, config) -> "Dict":
        """Build from the validated configuration."""

    async def start(self) -> None:
        """Connect.  StorageError(TEMPORARY) with a clear detail when the backend is unreachable."""

    async def stop(self) -> None:
        """Wait for in-flight transactions, disconnect."""

    @abc.abstractmethod
    async def get(self, username: str, key: str) -> str | None:
        """A value, or None."""

    @abc.abstractmethod
    async def iterate(self, username: str, prefix: str, recursive: bool = True) -> dict[str, str]:
        """Every key starting with ``prefix`` (which ends with ``/``, or is ``priv/`` or
        ``shared/``) with its value.  ``recursive=False``: only keys with no ``/`` after the
        prefix (``dict_prefix_matches``).  A driver pages large iterations internally."""

    @abc.abstractmethod
    async def transaction(self, username: str, sets: dict[str, str | None] = (),
                          increments: dict[str, int] = ()) -> None:
        """Apply sets (None unsets) and atomic increments together, durably, all or nothing.
        Increments are never lost when several processes or hosts increment the same key at once.
        A key both set and incremented is set first, then incremented."""

    async def set(self, username: str, key: str, value: str) -> None:
        """Set one key."""
        await self.transaction(username, sets={key: value})

    async def unset(self, username: str, key: str) -> None:
        """Remove one key (no error when it does not exist)."""
        await self.transaction(username, sets={key: None})

    async def increment(self, username: str, key: str, amount: int) -> None:
        """Atomically add ``amount`` (may be negative) to a counter."""
        await self.transaction(username, increments={key: amount})
