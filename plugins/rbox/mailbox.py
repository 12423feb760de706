"""One session's view of an rbox mailbox (``api.Mailbox``) over the shared MailboxIndex."""

from __future__ import annotations

import bisect
import time

from twisted.internet import defer
from twisted.logger import Logger

from mailserver.storage import api, search
from mailserver.storage.errors import ErrorKind, StorageError
from mailserver.storage.index import cache as C
from mailserver.storage.index import records as R
from plugins.rbox.reading import MailboxReading
from plugins.rbox.save import KeywordTable, new_ref, split_flags

log = Logger(namespace="mailserver.rbox")

_SEEN_BIT = bytes(b & R.FLAG_BITS["\\Seen"] for b in range(256))   # flags byte -> 0 when unseen


class RboxMailbox(MailboxReading, api.Mailbox):
    def __init__(self, user, name: str, entry: dict, index, readonly: bool):
        self.user = user
        self.storage = user.storage
        self.name = name
        self.guid = entry["guid"]
        self.readonly = readonly
        self.index = index
        self._uids = []             # the view: UIDs ascending (an array of the state's, or a list)
        self._expunge_seen = 0
        self._modseq_seen = 0
        self._own_modseqs: set[int] = set()
        self._recent_from = 0
        self._unsubscribe = []
        self._closed = False

    async def open(self) -> None:
        await self.index.refresh()
        st = self.index.state
        self._uids = st.uids[:]     # an array copy (a memcpy; a list of 10,000 ints costs 0.2 ms)
        self._expunge_seen = st.expunge_count
        self._modseq_seen = st.highestmodseq
        self._recent_from = st.first_recent_uid
        if not self.readonly and st.uidnext > st.first_recent_uid:
            # This session takes the \Recent messages; later sessions will not see them as recent.
            def claim(state):
                if state.uidnext <= state.first_recent_uid:
                    return None
                return [R.Recent(state.uidnext)], None
            try:
                await self.index.commit(claim)
            except StorageError as e:
                log.warn("could not record \\Recent for {box}: {e}", box=self.name, e=str(e))

    # --- header -------------------------------------------------------------------------------
    @property
    def uidvalidity(self) -> int:
        return self.index.state.uidvalidity

    @property
    def uidnext(self) -> int:
        return self.index.state.uidnext

    @property
    def highestmodseq(self) -> int:
        return self.index.state.highestmodseq

    @property
    def first_recent_uid(self) -> int:
        return self._recent_from

    # --- the view -----------------------------------------------------------------------------
    def uids(self):
        return self._uids

    def info(self, uid: int):
        return self.index.state.info(uid)

    def flag_summary(self):
        st = self.index.state
        view = self._uids
        suids = st.uids
        if len(view) != len(suids) or (view and (view[0] != suids[0] or view[-1] != suids[-1])):
            return super().flag_summary()
        # The view is the index state (as right after open): read the columns directly.
        words = frozenset(k for k in st.keywords if k)
        first_unseen = st.flags.tobytes().translate(_SEEN_BIT).find(b"\0") + 1
        return words, first_unseen

    def vanished_since(self, modseq: int):
        return self.index.state.expunged_since(modseq)

    def all_info(self) -> list:
        st = self.index.state
        out = []
        pos = 0
        n = len(st.uids)
        suids = st.uids
        for uid in self._uids:
            while pos < n and suids[pos] < uid:
                pos += 1
            out.append(st.info_at(pos) if pos < n and suids[pos] == uid else None)
        return out

    async def refresh(self, expunges: bool = True) -> api.Changes:
        self._check_open()
        await self.index.refresh()
        return self._diff(expunges)

    def _diff(self, expunges: bool) -> api.Changes:
        st = self.index.state
        changes = api.Changes()
        if expunges and st.expunge_count != self._expunge_seen:
            present = set(st.uids)
            kept = [u for u in self._uids if u in present]
            if len(kept) != len(self._uids):
                kept_set = set(kept)
                changes.expunged = [u for u in self._uids if u not in kept_set]
                self._uids = kept
            self._expunge_seen = st.expunge_count
        last = self._uids[-1] if self._uids else 0
        start = bisect.bisect_right(st.uids, last)
        if start < len(st.uids):
            new = list(st.uids[start:])
            self._uids.extend(new)
            changes.appended = [st.info_at(i) for i in range(start, len(st.uids))]
        if st.highestmodseq > self._modseq_seen:
            seen = self._modseq_seen
            own = self._own_modseqs
            for i in range(start):
                m = st.modseqs[i]
                if m > seen and m not in own:
                    changes.flags.append(st.info_at(i))
            self._modseq_seen = st.highestmodseq
            own.clear()
        return changes

    def on_change(self, callback):
        cancel = self.index.add_listener(callback)
        self._unsubscribe.append(cancel)
        return cancel

    def _check_open(self) -> None:
        if self._closed:
            raise StorageError(ErrorKind.INTERNAL, "mailbox view used after close")
        if self.index.deleted:
            raise StorageError(ErrorKind.NOT_FOUND, f"mailbox {self.name!r} was deleted")

    def _check_writable(self) -> None:
        self._check_open()
        if self.readonly:
            raise StorageError(ErrorKind.NO_PERMISSION, f"mailbox {self.name!r} is open read-only")

    async def search(self, program, uids=None) -> list:
        self._check_open()
        targets = self._uids if uids is None else sorted(set(uids) & set(self._uids))
        return await search.evaluate(self, program, targets, self._recent_from, int(time.time()))

    # --- changing -----------------------------------------------------------------------------
    async def store(self, uids, mode, flags, unchanged_since=None) -> api.StoreResult:
        self._check_writable()
        bits, keywords = split_flags(flags)
        wanted = sorted(set(uids))
        limit = self.storage.config.storage.max_keywords
        rmode = {api.StoreMode.ADD: R.MODE_ADD, api.StoreMode.REMOVE: R.MODE_REMOVE,
                 api.StoreMode.REPLACE: R.MODE_REPLACE}[mode]

        def build(state):
            table = KeywordTable(state, limit) if rmode != R.MODE_REMOVE else None
            if table is not None:
                numbers = table.numbers_for(keywords)
            else:
                numbers = tuple(state.keyword_numbers[k] for k in keywords if k in state.keyword_numbers)
            kwmask = 0
            for n in numbers:
                kwmask |= 1 << n
            changed, unchanged, failed = [], [], []
            for uid in wanted:
                i = state.position(uid)
                if i < 0:
                    continue
                if unchanged_since is not None and state.modseqs[i] > unchanged_since:
                    failed.append(uid)
                    continue
                old_bits, old_mask = state.flags[i], state.kwmasks[i]
                if rmode == R.MODE_ADD:
                    new_bits, new_mask = old_bits | bits, old_mask | kwmask
                elif rmode == R.MODE_REMOVE:
                    new_bits, new_mask = old_bits & ~bits & 0xFF, old_mask & ~kwmask
                else:
                    new_bits, new_mask = bits, kwmask
                (changed if (new_bits, new_mask) != (old_bits, old_mask) else unchanged).append(uid)
            if not changed:
                return [], (changed, unchanged, failed, None)
            modseq = state.highestmodseq + 1
            recs = (table.new_records if table else []) + [
                R.FlagChange(modseq, rmode, bits, numbers, R.ranges_of(changed))]
            return recs, (changed, unchanged, failed, modseq)

        changed, unchanged, failed, modseq = await self.index.commit(build)
        if modseq is not None:
            self._own_modseqs.add(modseq)
        st = self.index.state
        return api.StoreResult(changed=[st.info(u) for u in changed if st.info(u)],
                               unchanged=[st.info(u) for u in unchanged if st.info(u)], failed=failed)

    async def _expunge(self, uids, require_deleted: bool) -> list:
        wanted = None if uids is None else set(uids)

        def build(state):
            gone = []
            for i, uid in enumerate(state.uids):
                if (wanted is None or uid in wanted) and (not require_deleted or state.flags[i] & 8):
                    gone.append((uid, state.oids[i], state.refs[i]))
            if not gone:
                return None
            return [R.Expunge(state.highestmodseq + 1, R.ranges_of([g[0] for g in gone]))], gone

        gone = await self.index.commit(build) or []
        await self._drop_refs([(oid, ref) for _, oid, ref in gone])
        return [uid for uid, _, _ in gone]

    async def _drop_refs(self, refs) -> None:
        ns = self.user.namespace
        objects = self.storage.objects
        results = await defer.DeferredList(
            [defer.Deferred.fromCoroutine(objects.remove_ref(ns, oid, ref)) for oid, ref in refs],
            consumeErrors=True)
        for (oid, _), (ok, result) in zip(refs, results):
            if not ok:
                log.warn("reference to {oid} of {user} not removed ({e}); rbox gc will", oid=oid,
                         user=self.user.name, e=result.value)
            elif result:
                self.storage.bodies.discard((ns, oid))

    async def expunge(self, uids=None) -> list:
        self._check_writable()
        return await self._expunge(uids, require_deleted=True)

    async def copy(self, uids, destination: str) -> api.CopyResult:
        self._check_open()
        st = self.index.state
        infos = [i for i in (st.info(u) for u in sorted(set(uids))) if i is not None]
        dest_name, entry, dest = await self.user.index_for(destination)
        ns = self.user.namespace
        objects = self.storage.objects
        refs = [new_ref() for _ in infos]
        results = await defer.DeferredList(
            [defer.Deferred.fromCoroutine(objects.add_ref(ns, i.oid, r)) for i, r in zip(infos, refs)],
            consumeErrors=True)
        if not all(ok for ok, _ in results):
            await self._drop_refs([(i.oid, r) for (ok, _), i, r in zip(results, infos, refs) if ok])
            err = next(r.value for ok, r in results if not ok)
            raise err if isinstance(err, StorageError) else StorageError(ErrorKind.TEMPORARY, str(err))
        for info in infos:   # the destination's cache gets the parsed fields too
            src = await self.index.cache.get(info.oid)
            if src is not None and info.oid not in dest.cache.entries:
                await dest.cache.add(info.oid, {f: bytes(src.get(f)) for f in C.FIELDS + (C.POP3_UIDL,)
                                                if src.get(f) is not None})
        limit = self.storage.config.storage.max_keywords
        now = int(time.time())

        def build(state):
            table = KeywordTable(state, limit)
            new = []
            for uid, (info, ref) in enumerate(zip(infos, refs), start=state.uidnext):
                bits, keywords = split_flags(info.flags)
                new.append(R.NewMessage(uid, bits, table.numbers_for(keywords), info.internaldate, now,
                                        info.size, info.vsize, bytes.fromhex(info.guid), info.oid, ref))
            if not new:
                return [], (state.uidvalidity, ())
            recs = table.new_records + [R.Append(state.highestmodseq + 1, new)]
            return recs, (state.uidvalidity, tuple((i.uid, m.uid) for i, m in zip(infos, new)))

        try:
            uidvalidity, pairs = await self.storage.track(defer.Deferred.fromCoroutine(dest.commit(build)))
        except StorageError:
            await self._drop_refs([(i.oid, r) for i, r in zip(infos, refs)])
            raise
        return api.CopyResult(uidvalidity, pairs)

    async def move(self, uids, destination: str) -> api.CopyResult:
        self._check_writable()
        result = await self.copy(uids, destination)
        await self._expunge([src for src, _ in result.pairs], require_deleted=False)
        return result

    async def close(self) -> None:
        if not self._closed:
            self._closed = True
            for cancel in self._unsubscribe:
                cancel()
            self._unsubscribe.clear()
            if not self.readonly:
                await self.storage.checkpoint(self.index)   # "at logout"
