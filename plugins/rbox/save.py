"""Saving into an rbox mailbox: write each object (in parallel, while more arrive), and make
them visible with one index commit.  Also the shared pieces of COPY: references and keywords.

With ``[rbox] parallel_commit`` the index commit does not wait for the objects: both are
written at once, and the save returns (the delivery is acknowledged) only when both are
durable.  A crash in between can leave a durable index record whose object never arrived:
nothing acknowledged is lost, readers report that message unavailable, and ``force-resync``
drops the record (docs/storage-format.md).  A put that fails after the record is durable is
undone by an expunge of its UID.  Messages over PARALLEL_MAX_SIZE are written first, as
without the option: their put takes long enough that other servers would see the record
well before the object.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import time
import uuid

from twisted.internet import defer
from twisted.logger import Logger

from mailserver.storage import api, drivers, mime
from mailserver.storage.errors import ErrorKind, StorageError
from mailserver.storage.index import cache as C
from mailserver.storage.index import records as R

log = Logger(namespace="mailserver.rbox")

PARALLEL_MAX_SIZE = 1 << 20      # larger messages: object first, then the index record
WITHDRAW_WATCH = 600.0           # seconds a failed parallel save watches for its late record


def cache_fields(analysis) -> dict[int, bytes]:
    """The index cache entry of a freshly analysed message."""
    return {
        C.ENVELOPE: analysis.envelope.encode("utf-8"),
        C.BODYSTRUCTURE: analysis.bodystructure.encode("utf-8"),
        C.BODY: analysis.body.encode("utf-8"),
        C.PARTS: json.dumps(analysis.parts.to_json(), separators=(",", ":")).encode("utf-8"),
        C.HEADER_SIZE: str(analysis.header_size).encode("ascii"),
        C.HEADERS: analysis.cached_headers,
        C.HEADER_NAMES: ",".join(sorted(analysis.cached_header_names)).encode("ascii"),
        C.PREVIEW: analysis.preview.encode("utf-8"),
    }


def split_flags(flags) -> tuple[int, list[str]]:
    """System flag bits and keyword names (\\Recent and unknown system flags dropped)."""
    bits = 0
    keywords = []
    for f in flags:
        bit = R.FLAG_BITS.get(_canonical_system_flag(f))
        if bit:
            bits |= bit
        elif not f.startswith("\\") and f not in keywords:
            keywords.append(f)
    return bits, keywords


def _canonical_system_flag(flag: str) -> str:
    if flag.startswith("\\"):
        return "\\" + flag[1:].capitalize()
    return flag


class KeywordTable:
    """Keyword numbers as a builder sees them: the mailbox's, plus ones it defines now."""

    def __init__(self, state, limit: int):
        self.numbers = dict(state.keyword_numbers)
        self.count = len(state.keywords)
        self.limit = limit
        self.new_records: list = []

    def numbers_for(self, names) -> tuple:
        out = []
        for name in names:
            n = self.numbers.get(name)
            if n is None:
                if self.count >= self.limit:
                    raise StorageError(ErrorKind.LIMIT, f"mailbox has the maximum of {self.limit} keywords")
                n = self.numbers[name] = self.count
                self.count += 1
                self.new_records.append(R.Keyword(n, name))
            out.append(n)
        return tuple(out)


def new_ref() -> str:
    return uuid.uuid4().hex[:16]


class _Ids:
    """Object ids and mail GUIDs: BLAKE2b of a counter under a per-process random key.  Unique and
    unpredictable like uuid4, without a getrandom() system call for each (they cost 25-50 us
    here, and a delivery needs two)."""

    def __init__(self):
        self._rekey()
        os.register_at_fork(after_in_child=self._rekey)

    def _rekey(self) -> None:
        self._key = os.urandom(32)
        self._counter = itertools.count()

    def new(self) -> tuple[str, bytes]:
        """(object id as 32 hex digits, mail GUID as 16 bytes)."""
        d = hashlib.blake2b(next(self._counter).to_bytes(8, "little"), key=self._key, digest_size=32).digest()
        return d[:16].hex(), d[16:]


_ids = _Ids()


class RboxSave(api.SaveTransaction):
    def __init__(self, user, name: str):
        self.user = user
        self.storage = user.storage
        self.name = name
        self._index = None
        self._pending: list[tuple[dict, defer.Deferred]] = []
        self._cache_writes: list[tuple[str, bytes]] = []
        self._done = False

    async def add(self, data: bytes, flags=(), internaldate: int | None = None, analysis=None) -> None:
        if self._done:
            raise StorageError(ErrorKind.INTERNAL, "add after commit or rollback")
        objects = self.storage.objects
        if len(data) > objects.max_object_size:
            raise StorageError(ErrorKind.TOO_BIG, f"message of {len(data)} bytes exceeds the object "
                                                  f"size limit of {objects.max_object_size}")
        if self._index is None:
            self.name, self._entry, self._index = await self.user.index_for(self.name)
        now = int(time.time())
        oid, guid = _ids.new()
        vsize = mime.vsize(data) if analysis is None else analysis.vsize
        internaldate = now if internaldate is None else int(internaldate)
        meta = {
            drivers.META_MAILBOX_GUID: self._entry["guid"],
            drivers.META_GUID: guid.hex(),
            drivers.META_RECEIVED: str(internaldate),
            drivers.META_SAVE_DATE: str(now),
            drivers.META_PHYSICAL_SIZE: str(len(data)),
            drivers.META_VIRTUAL_SIZE: str(vsize),
            drivers.META_ORIG_MAILBOX: self.name,
            drivers.META_VERSION: drivers.OBJECT_FORMAT_VERSION,
        }
        put = defer.Deferred.fromCoroutine(objects.put(self.user.namespace, oid, data, meta))
        self.storage.track(put)
        bits, keywords = split_flags(flags)
        msg = dict(oid=oid, guid=guid, bits=bits, keywords=keywords, internaldate=internaldate,
                   savedate=now, size=len(data), vsize=vsize, data=data)
        self._pending.append((msg, put))
        # Parse while the object is being written (the write runs in a thread, mostly in fsync).
        if analysis is None:
            analysis = mime.analyze(data)
        fields = cache_fields(analysis)
        fields[C.POP3_UIDL] = b""        # saved here, so no UIDL from a migration: never look it up
        # Written by the index commit's round trip (the cache is not authoritative: a crash before
        # it only means recomputing the fields from the object).
        self._cache_writes.append(self._index.cache.remember(oid, fields))

    async def commit(self) -> api.SaveResult:
        if self._done:
            raise StorageError(ErrorKind.INTERNAL, "commit twice")
        self._done = True
        if not self._pending:
            st = self._index.state if self._index else None
            return api.SaveResult(st.uidvalidity if st else 0, ())
        msgs = [m for m, _ in self._pending]
        puts = [d for _, d in self._pending]
        parallel = (self.storage.config.rbox.parallel_commit
                    and sum(m["size"] for m in msgs) <= PARALLEL_MAX_SIZE)
        if not parallel:
            await self._objects_written(puts)
        ns = self.user.namespace
        for m in msgs:   # readers here get the body from memory (and wait for a pending put)
            self.storage.bodies.put((ns, m["oid"]), m["data"])
        # If the commit fails its objects stay: the record may have reached the log before the
        # failure, and an unreferenced object is found and handled by `rbox gc`/force-resync.
        commit = self.storage.track(defer.Deferred.fromCoroutine(
            self._index.commit(self._build(msgs), also_append=self._cache_writes)))
        if not parallel:
            uidvalidity, uids = await commit
            return api.SaveResult(uidvalidity, uids)
        outcome = await defer.DeferredList([commit] + puts, consumeErrors=True)
        (committed, result), put_results = outcome[0], outcome[1:]
        failed = [r for ok, r in put_results if not ok]
        if failed:
            # Refused, so it must not appear: take its records back (now if the commit is
            # known to have landed; if the commit failed it may still land -- a call past its
            # deadline -- so keep watching for a while).
            for m in msgs:
                self.storage.bodies.discard((ns, m["oid"]))
            oids = [m["oid"] for m in msgs]
            if committed:
                try:
                    await withdraw(self.storage, self._index, ns, oids, watch=0.0, give_up=0.0)
                except StorageError:
                    self.storage.in_background(withdraw(self.storage, self._index, ns, oids,
                                                        watch=0.0, give_up=WITHDRAW_WATCH))
            else:
                self.storage.in_background(withdraw(self.storage, self._index, ns, oids,
                                                    watch=WITHDRAW_WATCH, give_up=WITHDRAW_WATCH))
            err = failed[0].value
            raise err if isinstance(err, StorageError) else StorageError(ErrorKind.TEMPORARY, str(err))
        if not committed:    # the objects stay, as above
            for m in msgs:
                self.storage.bodies.discard((ns, m["oid"]))
            err = result.value
            raise err if isinstance(err, StorageError) else StorageError(ErrorKind.TEMPORARY, str(err))
        uidvalidity, uids = result
        return api.SaveResult(uidvalidity, uids)

    def _build(self, msgs):
        limit = self.storage.config.storage.max_keywords

        def build(state):
            table = KeywordTable(state, limit)
            new_messages = []
            for uid, m in enumerate(msgs, start=state.uidnext):
                new_messages.append(R.NewMessage(uid, m["bits"], table.numbers_for(m["keywords"]),
                                                 m["internaldate"], m["savedate"], m["size"], m["vsize"],
                                                 m["guid"], m["oid"], ""))
            recs = table.new_records + [R.Append(state.highestmodseq + 1, new_messages)]
            return recs, (state.uidvalidity, tuple(m.uid for m in new_messages))
        return build

    async def _objects_written(self, puts) -> None:
        """Wait for the puts; if one failed, remove the objects and raise its error."""
        results = await defer.DeferredList(puts, consumeErrors=True)
        failures = [r for ok, r in results if not ok]
        if failures:
            await self._remove_objects()
            err = failures[0].value
            raise err if isinstance(err, StorageError) else StorageError(ErrorKind.TEMPORARY, str(err))

    async def rollback(self) -> None:
        if not self._done:
            self._done = True
            await defer.DeferredList([d for _, d in self._pending], consumeErrors=True)
            await self._remove_objects()

    async def _remove_objects(self) -> None:
        objects = self.storage.objects
        await defer.DeferredList(
            [defer.Deferred.fromCoroutine(objects.delete(self.user.namespace, m["oid"]))
             for m, _ in self._pending], consumeErrors=True)


async def withdraw(storage, index, ns: str, oids: list[str], watch: float, give_up: float) -> None:
    """Expunge the index records of a refused save (found by object id) and drop its objects.

    Repeats, with growing pauses, for ``watch`` seconds (a commit that timed out may land
    later) and, while the index cannot be reached, for up to ``give_up`` seconds; raises
    StorageError if it never reached the index.  Records it could not expunge are reported
    unavailable by readers; force-resync drops them.
    """
    from twisted.internet import reactor, task
    wanted = set(oids)

    def build(state):
        gone = [uid for uid, oid in zip(state.uids, state.oids) if oid in wanted]
        if not gone:
            return None
        return [R.Expunge(state.highestmodseq + 1, R.ranges_of(gone))], gone

    start = reactor.seconds()
    delay = 0.5
    reached = False
    while True:
        try:
            await index.refresh()
            gone = await storage.track(defer.Deferred.fromCoroutine(index.commit(build)))
            reached = True
            if gone:
                log.warn("withdrew uids {uids} of {dir}: their objects were not written", uids=gone,
                         dir=index.dir)
        except StorageError as e:
            error = e
        elapsed = reactor.seconds() - start
        if (reached and elapsed >= watch) or (not reached and elapsed >= give_up):
            break
        await task.deferLater(reactor, delay, lambda: None)
        delay = min(delay * 2, 5.0)
    await defer.DeferredList([defer.Deferred.fromCoroutine(storage.objects.remove_ref(ns, oid, ""))
                              for oid in oids], consumeErrors=True)
    if not reached:
        log.error("could not withdraw the records of a failed save in {dir} ({e}); if they "
                  "appear, force-resync drops them", dir=index.dir, e=error.detail)
        raise error
