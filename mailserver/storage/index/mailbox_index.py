"""One mailbox's index as files in an IndexStore, shared by every session of this process.

Files in the mailbox directory::

    log.<n>     append-only transaction log (records.py); ends with ROTATE when replaced by log.<n+1>
    snapshot    the state up to (log number, offset), rewritten when the log passes a threshold
    cache       parsed fields per object (cache.py)
    index.lock  lock file serialising writers across processes and hosts

Writers use compare-and-append (``IndexStore.append_at``): records are built against the state
this process knows; if another process appended meanwhile, its records come back, are applied,
and the change is rebuilt and retried.  So UIDs and modseqs are assigned under the lock without
holding it across round trips.  Readers stop at an incomplete or damaged frame; a writer under
the lock cuts a torn tail off.
"""

from __future__ import annotations

from typing import Callable

from twisted.internet import defer, reactor, task
from twisted.logger import Logger

from mailserver.storage.errors import ErrorKind, StorageError
from mailserver.storage.index import records as R
from mailserver.storage.index.cache import MessageCache
from mailserver.storage.index.state import MailboxState, SnapshotError

log = Logger(namespace="mailserver.index")

_ENCODERS = {R.Header: R.encode_header, R.Append: R.encode_append, R.FlagChange: R.encode_flags,
             R.Expunge: R.encode_expunge, R.Keyword: R.encode_keyword, R.Rotate: R.encode_rotate,
             R.Recent: R.encode_recent}


def encode(rec) -> bytes:
    return _ENCODERS[type(rec)](rec)


class MailboxIndex:
    def __init__(self, store, directory: str, snapshot_threshold: int = 256 * 1024,
                 poll_interval: float = 1.0):
        self.store = store
        self.dir = directory
        self.state = MailboxState()
        self.cache = MessageCache(store, f"{directory}/cache")
        self.snapshot_threshold = snapshot_threshold
        self.poll_interval = poll_interval
        self._lock = defer.DeferredLock()    # one refresh or commit at a time in this process
        self._listeners: set[Callable[[], None]] = set()
        self._poller: task.LoopingCall | None = None
        self._unwatch = None       # stops the store's watch of this directory, if it has one
        self._look_soon = False    # a look after a watch event is scheduled
        self.deleted = False
        self.owner = None          # set by the mailbox format: who this index belongs to
        self.checkpointed = None   # highestmodseq at the last checkpoint (mailbox format's business)

    # --- paths --------------------------------------------------------------------------------
    def log_path(self, n: int | None = None) -> str:
        return f"{self.dir}/log.{self.state.log_no if n is None else n}"

    @property
    def lock_path(self) -> str:
        return f"{self.dir}/index.lock"

    @property
    def snapshot_path(self) -> str:
        return f"{self.dir}/snapshot"

    # --- creating and loading -----------------------------------------------------------------
    async def create(self, uidvalidity: int, guid: bytes, created: int) -> None:
        """Write a new mailbox's first log record.  EXISTS if the log is already there."""
        header = R.Header(uidvalidity, guid, created)
        ok, _ = await self.store.append_at(self.log_path(1), 0, encode(header), lock=self.lock_path)
        if not ok:
            raise StorageError(ErrorKind.EXISTS, f"index {self.dir} already exists")
        await self.store.sync([self.log_path(1)])
        self.state = MailboxState()
        self.state.apply(header)
        self.state.log_offset = len(encode(header))

    async def load(self) -> None:
        """Read the snapshot (if any) and replay the log.  NOT_FOUND if there is no mailbox."""
        await self._lock.acquire()
        try:
            self.state = await self._read_snapshot() or MailboxState()
            await self._replay()
        finally:
            self._lock.release()
        if self.state.uidvalidity == 0:
            raise StorageError(ErrorKind.NOT_FOUND, f"no index in {self.dir}")

    async def _read_snapshot(self) -> MailboxState | None:
        data = await self.store.read(self.snapshot_path)
        if not data:
            return None
        try:
            return MailboxState.decode_snapshot(data)
        except SnapshotError as e:
            log.error("index {dir}: {problem}; replaying the log from the start", dir=self.dir, problem=str(e))
            return None

    async def _replay(self) -> bool:
        """Apply log records past the state's offset, following rotations.  True if anything changed."""
        changed = False
        while True:
            data = await self.store.read(self.log_path(), self.state.log_offset)
            if data is None:
                if self.state.log_offset == 0 and self.state.uidvalidity:
                    return changed  # a rotation pointed at a log nobody has written yet
                snap = await self._read_snapshot()
                if snap is not None and snap.log_no > self.state.log_no:
                    # Our log was removed after two rotations: take the newer snapshot.
                    self.state = self._carry_over(snap)
                    changed = True
                    continue
                if self.state.uidvalidity == 0:
                    return changed
                self.deleted = True
                raise StorageError(ErrorKind.NOT_FOUND, f"index log {self.log_path()} is gone")
            if not data:
                return changed
            consumed, rotated = self._apply_bytes(data)
            changed = changed or consumed > 0
            if not rotated:
                return changed

    def _carry_over(self, snap: MailboxState) -> MailboxState:
        # Views compare expunge counters: keep ours growing across a state replacement.
        snap.expunge_count = self.state.expunge_count + max(0, len(self.state) - len(snap))
        return snap

    def _apply_bytes(self, data: bytes) -> tuple[int, bool]:
        """Apply valid frames of ``data`` (read at the state's offset).  Returns (bytes consumed,
        whether a ROTATE moved the state to the next log)."""
        start = self.state.log_offset
        consumed = 0
        for end, payload in R.iter_frames(data):
            consumed = end
            try:
                rec = R.decode(payload)
            except R.CorruptRecord as e:
                log.error("index {dir}: skipping undecodable record at {off}: {problem}",
                          dir=self.dir, off=start + end, problem=str(e))
                self.state.log_offset = start + end
                continue
            self.state.apply(rec)
            if type(rec) is R.Rotate:
                return consumed, True
            self.state.log_offset = start + end
        return consumed, False

    # --- reading other processes' changes ----------------------------------------------------
    async def refresh(self) -> bool:
        """Apply what other processes appended.  True if the state changed."""
        await self._lock.acquire()
        try:
            changed = await self._replay()
        finally:
            self._lock.release()
        if changed:
            self.notify()
        return changed

    # --- writing ------------------------------------------------------------------------------
    async def commit(self, build, also_append=()):
        """Append records built by ``build(state) -> (records, result) | None`` durably and apply
        them.  ``build`` is called again if another process wrote first.  Returns ``result``.
        ``also_append``: ``(path, data)`` writes of this mailbox's cache, done with the first
        attempt's log write."""
        await self._lock.acquire()
        caught_up = changed = False
        try:
            cut = None
            riders = list(also_append)
            for _ in range(1000):
                planned = build(self.state)
                recs, result = planned if planned is not None else ((), None)
                if not recs:
                    # Nothing to do in our state, which may be stale: another process may have
                    # flagged \Deleted a moment ago.  Only a write finds conflicts, so read on.
                    if not caught_up:
                        caught_up = True
                        if await self._replay():
                            changed = True
                            continue
                    for other, chunk in riders:     # nothing to write to the log: the riders alone
                        await self.store.append(other, chunk)
                    break
                data = b"".join(encode(r) for r in recs)
                path = self.log_path()
                offset = self.state.log_offset
                ok, tail = await self.store.append_at_durable(path, offset, data, lock=self.lock_path,
                                                              cut_tail_at_size=cut, also_append=riders)
                riders = []
                if ok:
                    for r in recs:
                        self.state.apply(r)
                    self.state.log_offset = offset + len(data)
                    changed = True
                    break
                if tail is None:
                    await self._replay()
                    cut = None
                    continue
                consumed, rotated = self._apply_bytes(tail)
                if rotated:
                    await self._replay()
                    cut = None
                elif consumed < len(tail):
                    cut = offset + len(tail)   # torn tail: cut it off on the next try
                    log.warn("index {dir}: dropping a torn tail of {n} bytes in {path}",
                             dir=self.dir, n=len(tail) - consumed, path=path)
                else:
                    cut = None
            else:
                raise StorageError(ErrorKind.TEMPORARY, f"index {self.dir}: too many write conflicts")
            if self.state.log_offset > self.snapshot_threshold:
                await self._rotate()
        finally:
            self._lock.release()
        if changed:
            self.notify()
        return result

    async def _rotate(self) -> None:
        """End this log with ROTATE, write a snapshot pointing at the next one, drop old logs.
        Called with the lock held.  Losing a race to another writer just skips it."""
        old = self.state.log_no
        rec = R.Rotate(old + 1)
        ok, _ = await self.store.append_at(self.log_path(), self.state.log_offset, encode(rec),
                                           lock=self.lock_path)
        if not ok:
            return
        await self.store.sync([self.log_path()])
        self.state.apply(rec)
        await self.store.write_atomic(self.snapshot_path, self.state.encode_snapshot())
        # Keep log.<old> for readers still reading it; older ones go.
        for name in await self.store.listdir(self.dir):
            if name.startswith("log.") and name[4:].isdigit() and int(name[4:]) < old:
                await self.store.remove(f"{self.dir}/{name}")

    # --- change notification ------------------------------------------------------------------
    def add_listener(self, callback: Callable[[], None]) -> Callable[[], None]:
        """``callback()`` after every change (ours at once; others' when the store's watch
        reports them, else at the next poll, every ``poll_interval`` seconds)."""
        self._listeners.add(callback)
        if self._poller is None:
            self._poller = task.LoopingCall(self._poll)
            self._poller.start(self.poll_interval, now=False).addErrback(
                lambda f: log.failure("index poller for {dir}", f, dir=self.dir))
            self._unwatch = self.store.watch(self.dir, self._watched_change)

        def remove():
            self._listeners.discard(callback)
            if not self._listeners and self._poller is not None:
                if self._poller.running:
                    self._poller.stop()
                self._poller = None
                if self._unwatch is not None:
                    self._unwatch()
                    self._unwatch = None
        return remove

    def _watched_change(self) -> None:
        """The store saw files here change: look once soon (one look for a burst of events)."""
        if not self._look_soon:
            self._look_soon = True
            reactor.callLater(0, self._look)

    def _look(self):
        if self._lock.locked:       # a refresh or commit is running: it may predate the change
            reactor.callLater(0.05, self._look)
            return None
        self._look_soon = False     # events from here on ask for another look
        return self._poll()

    def notify(self) -> None:
        for cb in list(self._listeners):
            reactor.callLater(0, _safe_call, cb)

    async def _poll_once(self) -> None:
        if self._lock.locked or self.deleted:
            return
        try:
            size = await self.store.size(self.log_path())
        except StorageError as e:   # storage down or stopping: a warning, no traceback
            log.warn("index {dir}: polling for changes failed: {e}", dir=self.dir, e=str(e))
            return
        if size is None or size != self.state.log_offset:
            try:
                await self.refresh()
            except StorageError as e:
                log.warn("index {dir}: refresh failed: {e}", dir=self.dir, e=str(e))
                self.notify()

    def _poll(self):
        return defer.Deferred.fromCoroutine(self._poll_once()).addErrback(
            lambda f: log.failure("polling index {dir}", f, dir=self.dir))


def _safe_call(cb) -> None:
    try:
        cb()
    except Exception:
        log.failure("index change listener failed")
