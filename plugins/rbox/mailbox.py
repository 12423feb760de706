"""One session's view of an rbox mailbox (``api.Mailbox``) over the shared MailboxIndex."""

from __future__ import annotations

import bisect
import collections
import json
import time

from twisted.internet import defer
from twisted.logger import Logger

from mailserver.storage import api, drivers, mime, search
from mailserver.storage.api import FetchItem
from mailserver.storage.errors import ErrorKind, StorageError
from mailserver.storage.index import cache as C
from mailserver.storage.index import records as R
from plugins.rbox.save import KeywordTable, cache_fields, new_ref, split_flags

log = Logger(namespace="mailserver.rbox")

_SEEN_BIT = bytes(b & R.FLAG_BITS["\\Seen"] for b in range(256))   # flags byte -> 0 when unseen
_CACHED_ITEMS = frozenset((FetchItem.ENVELOPE, FetchItem.BODYSTRUCTURE, FetchItem.BODY,
                           FetchItem.PARTS, FetchItem.CACHED_HEADERS, FetchItem.PREVIEW))
_DATA_ONLY = frozenset((FetchItem.DATA,))
_UNKNOWN = object()
MAX_MEMOISED_FIELDS = 16    # header fields whose decoded values SEARCH keeps per mailbox
_CACHED_COLUMNS = (("envelope", C.ENVELOPE), ("bodystructure", C.BODYSTRUCTURE), ("body", C.BODY),
                   ("preview", C.PREVIEW))
BATCH_BYTES = 2 << 20       # body bytes per object-store read batch (at least one message)
BATCHES_AHEAD = 2           # read batches in flight during a FETCH (each costs a thread hand-off)


class RboxMailbox(api.Mailbox):
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

    # --- reading ------------------------------------------------------------------------------
    async def _read_body(self, info) -> bytes:
        key = (self.user.namespace, info.oid)
        data = self.storage.bodies.get(key)
        if data is None:
            data = await self.storage.objects.get(self.user.namespace, info.oid)
            self.storage.bodies.put(key, data)
        return data

    async def _cache_entry(self, info, data: bytes | None):
        """The cache entry of a message, computing (and storing) it from the body if missing."""
        entry = await self.index.cache.get(info.oid)
        if entry is not None and all(entry.get(f) is not None for f in C.FIELDS):
            return entry, data
        if data is None:
            data = await self._read_body(info)
        fields = cache_fields(mime.analyze(data))
        if entry is not None and entry.get(C.POP3_UIDL) is not None:
            fields[C.POP3_UIDL] = bytes(entry.get(C.POP3_UIDL))
        await self.index.cache.add(info.oid, fields)
        return self.index.cache.entries[info.oid], data

    async def _pop3_uidl(self, info) -> str:
        """The UIDL recorded at migration ("" if none): from the cache, else once from the
        object's metadata (then cached)."""
        entry = await self.index.cache.get(info.oid)
        value = entry.get(C.POP3_UIDL) if entry is not None else None
        if value is not None:
            return bytes(value).decode("utf-8", "replace")
        meta = await self.storage.objects.get_meta(self.user.namespace, info.oid)
        uidl = meta.get(drivers.META_POP3_UIDL, "")
        fields = {}
        if entry is not None:
            fields = {f: bytes(entry.get(f)) for f in C.FIELDS if entry.get(f) is not None}
        fields[C.POP3_UIDL] = uidl.encode("utf-8")
        await self.index.cache.add(info.oid, fields)
        return uidl

    async def _read_bodies(self, infos: list, keep: bool) -> list:
        """Bodies of ``infos`` (bytes, or the StorageError reading one raised): from the body
        cache, the rest in one ``get_many`` (and kept in the body cache if ``keep``)."""
        ns = self.user.namespace
        bodies = self.storage.bodies
        out = [bodies.get((ns, i.oid)) for i in infos]
        todo = [k for k, data in enumerate(out) if data is None]
        if todo:
            got = await self.storage.objects.get_many(ns, [infos[k].oid for k in todo],
                                                      [infos[k].size for k in todo])
            for k, data in zip(todo, got):
                out[k] = data
                if keep and type(data) is bytes:
                    bodies.put((ns, infos[k].oid), data)
        return out

    async def _load(self, info, items, data: bytes | None = None) -> api.FetchedMail:
        """One message's FetchedMail; ``data``: its body when the caller already read it."""
        mail = api.FetchedMail(info=info)
        try:
            if FetchItem.POP3_UIDL in items:
                mail.pop3_uidl = await self._pop3_uidl(info)
            if FetchItem.DATA in items:
                data = mail.data = data if data is not None else await self._read_body(info)
            if items & _CACHED_ITEMS or FetchItem.HEADER in items:
                entry, data = await self._cache_entry(info, data)
                _fill_cached(mail, entry, items)
                if FetchItem.HEADER in items:
                    header_size = int(entry.get(C.HEADER_SIZE))
                    if data is None:
                        cached = self.storage.bodies.get((self.user.namespace, info.oid))
                        data = cached
                    if data is not None:
                        mail.header = data[:header_size]
                    else:
                        mail.header = await self.storage.objects.get(self.user.namespace, info.oid, 0, header_size)
        except StorageError as e:
            if e.kind not in (ErrorKind.NOT_FOUND, ErrorKind.CORRUPTED):
                raise
            log.error("message {uid} of {user}/{box} unavailable: object {oid}: {e}", uid=info.uid,
                      user=self.user.name, box=self.name, oid=info.oid, e=e.detail)
            mail.missing = True
        return mail

    async def fetch(self, uids, items):
        self._check_open()
        items = frozenset(items)
        st = self.index.state
        infos = [i for i in (st.info(u) for u in uids) if i is not None]
        if not items:
            for info in infos:
                yield api.FetchedMail(info=info)
            return
        if items <= _CACHED_ITEMS | {FetchItem.POP3_UIDL}:
            # Cache only (POP3's UIDL pass included): answered from memory without a coroutine
            # per message, as long as the entries are loaded and complete (others: general path).
            cache = self.index.cache
            if not cache.loaded or FetchItem.POP3_UIDL in items:
                await cache.load_more()
            want_uidl = FetchItem.POP3_UIDL in items
            for info in infos:
                entry = cache.entries.get(info.oid)
                uidl = entry.get(C.POP3_UIDL) if entry is not None and want_uidl else None
                if entry is not None and entry.complete() and (uidl is not None or not want_uidl):
                    mail = api.FetchedMail(info=info)
                    _fill_cached(mail, entry, items)
                    if uidl is not None:
                        mail.pop3_uidl = bytes(uidl).decode("utf-8", "replace")
                    yield mail
                else:
                    yield await self._load(info, items)
            return
        if FetchItem.DATA in items:
            async for mail in self._fetch_bodies(infos, items):
                yield mail
            return
        window = min(self.storage.prefetch, 64)
        pending = collections.deque()
        it = iter(infos)

        def launch():
            while len(pending) < window:
                info = next(it, None)
                if info is None:
                    return
                pending.append(defer.Deferred.fromCoroutine(self._load(info, items)))

        launch()
        try:
            while pending:
                mail = await pending.popleft()
                launch()
                yield mail
        finally:
            for d in pending:   # the consumer stopped early: don't leave errors unhandled
                d.addErrback(lambda f: None)

    def _positions(self, uids) -> range | list:
        """Positions in the index state of the UIDs it holds, in the order given."""
        st = self.index.state
        suids = st.uids
        if len(uids) == len(suids) and suids.tolist() == list(uids):
            return range(len(suids))
        position = st.position
        return [p for p in map(position, uids) if p >= 0]

    async def columns(self, uids, names) -> dict:
        self._check_open()
        names = set(names)
        unknown = names - set(api.COLUMNS)
        if unknown:
            raise ValueError(f"unknown columns {sorted(unknown)}")
        cached = [(name, fid) for name, fid in _CACHED_COLUMNS if name in names]
        cache = self.index.cache
        if cached and not cache.loaded:
            await cache.load_more()
        # Everything from the index state is read before any await (a refresh may change it).
        st = self.index.state
        pos = self._positions(uids)
        whole = type(pos) is range
        out = {"uid": st.uids.tolist() if whole else [st.uids[p] for p in pos]}
        if "flags" in names:
            flag_names, flags, kwmasks = st.flag_names, st.flags, st.kwmasks
            out["flags"] = [flag_names(flags[p], kwmasks[p]) for p in pos]
        for name, column in (("modseq", st.modseqs), ("internaldate", st.idates), ("savedate", st.sdates),
                             ("size", st.sizes), ("vsize", st.vsizes)):
            if name in names:
                out[name] = column.tolist() if whole else [column[p] for p in pos]
        if "guid" in names:
            guids = st.guids
            out["guid"] = [guids[16 * p:16 * p + 16].hex() for p in pos]
        if cached:
            entries = cache.entries
            oids = st.oids
            found = [entries.get(oids[p]) for p in pos]
            todo = [(k, st.info_at(p)) for k, (p, e) in enumerate(zip(pos, found))
                    if e is None or not e.complete()]
            if todo:
                completed = await self._complete_entries([info for _, info in todo])
                for (k, _), entry in zip(todo, completed):
                    found[k] = entry
            for name, fid in cached:
                out[name] = [e.get(fid) if e is not None else None for e in found]
        return out

    async def search_header_texts(self, uids, name: str) -> list:
        self._check_open()
        lname = name.lower()
        cache = self.index.cache
        if not cache.loaded:
            await cache.load_more()
        memo = cache.derived.get("search:" + lname)
        if memo is None:
            if len(cache.derived) >= MAX_MEMOISED_FIELDS:      # clients searching odd fields
                cache.derived.pop(next(iter(cache.derived)))
            memo = cache.derived["search:" + lname] = {}
        cacheable = lname in mime.CACHED_HEADER_FIELDS
        st = self.index.state
        oids = st.oids
        entries = cache.entries
        positions = (range(len(oids)) if len(uids) == len(oids) and st.uids.tolist() == list(uids)
                     else [st.position(u) for u in uids])
        out = []
        todo = []
        for k, p in enumerate(positions):
            if p < 0:
                out.append(None)
                continue
            oid = oids[p]
            text = memo.get(oid, _UNKNOWN)
            if text is _UNKNOWN:
                entry = entries.get(oid)
                if cacheable and entry is not None and entry.complete() and \
                        lname in C.header_names(entry.get(C.HEADER_NAMES)):
                    text = memo[oid] = search.header_text(search.field_values(bytes(entry.get(C.HEADERS)), lname))
                else:
                    todo.append((k, st.uids[p], oid))     # not cached: the header is read
                    text = None
            out.append(text)
        if todo:
            read = {}
            async for mail in self.fetch([uid for _, uid, _ in todo], {FetchItem.HEADER}):
                if not mail.missing and mail.header is not None:
                    read[mail.info.uid] = search.header_text(search.field_values(mail.header, lname))
            for k, uid, oid in todo:
                if uid in read:
                    out[k] = memo[oid] = read[uid]
        return out

    async def _complete_entries(self, infos: list) -> list:
        """Complete cache entries of ``infos`` (computed from their bodies, 64 at a time), None
        for a message whose object cannot be read."""
        async def one(info):
            try:
                entry, _ = await self._cache_entry(info, None)
                return entry
            except StorageError as e:
                if e.kind not in (ErrorKind.NOT_FOUND, ErrorKind.CORRUPTED):
                    raise
                log.error("message {uid} of {user}/{box} unavailable: object {oid}: {e}", uid=info.uid,
                          user=self.user.name, box=self.name, oid=info.oid, e=e.detail)
                return None
        out = []
        for start in range(0, len(infos), 64):
            try:
                out += await defer.gatherResults(
                    [defer.Deferred.fromCoroutine(one(i)) for i in infos[start:start + 64]], consumeErrors=True)
            except defer.FirstError as e:
                e.subFailure.raiseException()
        return out

    def _batches(self, infos: list):
        """``infos`` cut into read batches: ``prefetch`` messages, or fewer adding up to
        BATCH_BYTES (a big message is a batch of its own)."""
        most = self.storage.prefetch
        batch: list = []
        size = 0
        for info in infos:
            if batch and (len(batch) >= most or size + info.size > BATCH_BYTES):
                yield batch
                batch, size = [], 0
            batch.append(info)
            size += info.size
        if batch:
            yield batch

    async def _fetch_bodies(self, infos: list, items: frozenset):
        """Fetch with message data: bodies read a batch per object-store call (one thread job
        for local files), BATCHES_AHEAD batches in flight, so the reads of the next batches
        overlap the consumer writing out this one."""
        cache = self.index.cache
        simple = items <= _CACHED_ITEMS | {FetchItem.DATA}
        data_only = items == _DATA_ONLY
        if simple and not data_only and not cache.loaded:
            await cache.load_more()
        pending = collections.deque()
        batches = self._batches(infos)
        # A scan bigger than a good part of the body cache would only flush it: nothing read
        # early in the scan is still there when it is asked for again.
        keep = sum(i.size for i in infos) <= self.storage.bodies.max_bytes // 4

        def launch():
            while len(pending) < BATCHES_AHEAD:
                batch = next(batches, None)
                if batch is None:
                    return
                pending.append((batch, defer.Deferred.fromCoroutine(self._read_bodies(batch, keep))))

        launch()
        try:
            while pending:
                batch, d = pending.popleft()
                bodies = await d
                launch()
                for info, data in zip(batch, bodies):
                    if type(data) is not bytes:
                        if data.kind not in (ErrorKind.NOT_FOUND, ErrorKind.CORRUPTED):
                            raise data
                        log.error("message {uid} of {user}/{box} unavailable: object {oid}: {e}",
                                  uid=info.uid, user=self.user.name, box=self.name, oid=info.oid, e=data.detail)
                        yield api.FetchedMail(info=info, missing=True)
                        continue
                    if data_only:
                        yield api.FetchedMail(info=info, data=data)
                        continue
                    if simple:
                        entry = cache.entries.get(info.oid)
                        if entry is not None and entry.complete():
                            mail = api.FetchedMail(info=info, data=data)
                            _fill_cached(mail, entry, items)
                            yield mail
                            continue
                    yield await self._load(info, items, data)
        finally:
            for _, d in pending:   # the consumer stopped early: don't leave errors unhandled
                d.addErrback(lambda f: None)

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


def _fill_cached(mail: api.FetchedMail, entry, items) -> None:
    """Set the cached fields ``items`` asks for from a complete cache entry."""
    if FetchItem.ENVELOPE in items:
        mail.envelope = entry.get(C.ENVELOPE).decode("utf-8")
    if FetchItem.BODYSTRUCTURE in items:
        mail.bodystructure = entry.get(C.BODYSTRUCTURE).decode("utf-8")
    if FetchItem.BODY in items:
        mail.body = entry.get(C.BODY).decode("utf-8")
    if FetchItem.PARTS in items:
        mail.parts = mime.Part.from_json(json.loads(entry.get(C.PARTS)))
    if FetchItem.CACHED_HEADERS in items:
        mail.cached_headers = bytes(entry.get(C.HEADERS))
        mail.cached_header_names = C.header_names(entry.get(C.HEADER_NAMES))
    if FetchItem.PREVIEW in items:
        mail.preview = entry.get(C.PREVIEW).decode("utf-8")
