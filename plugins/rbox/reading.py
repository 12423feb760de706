"""The read path of an rbox mailbox view: FETCH (bodies read in batches, cached fields from the
index cache), metadata columns and the decoded header values SEARCH evaluates column-wise.

``MailboxReading`` is a part of ``RboxMailbox`` (plugins/rbox/mailbox.py), which provides
``index``, ``storage``, ``user``, ``name`` and ``_check_open``.
"""

from __future__ import annotations

import collections
import json

from twisted.internet import defer
from twisted.logger import Logger

from mailserver.storage import api, drivers, mime, search
from mailserver.storage.api import FetchItem
from mailserver.storage.errors import ErrorKind, StorageError
from mailserver.storage.index import cache as C
from plugins.rbox.save import cache_fields

log = Logger(namespace="mailserver.rbox")

_CACHED_ITEMS = frozenset((FetchItem.ENVELOPE, FetchItem.BODYSTRUCTURE, FetchItem.BODY,
                           FetchItem.PARTS, FetchItem.CACHED_HEADERS, FetchItem.PREVIEW))
_DATA_ONLY = frozenset((FetchItem.DATA,))
_UNKNOWN = object()
MAX_MEMOISED_FIELDS = 16    # header fields whose decoded values SEARCH keeps per mailbox
_CACHED_COLUMNS = (("envelope", C.ENVELOPE), ("bodystructure", C.BODYSTRUCTURE), ("body", C.BODY),
                   ("preview", C.PREVIEW))
BATCH_BYTES = 2 << 20       # body bytes per object-store read batch (at least one message)
BATCHES_AHEAD = 2           # read batches in flight during a FETCH (each costs a thread hand-off)


class MailboxReading:
    """FETCH, columns and header texts of one view (a mixin of RboxMailbox)."""

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
