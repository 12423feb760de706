"""rbox: every mail is one immutable object (object store driver) and each mailbox has a
Dovecot-style index (index store driver).  This module is the MailStorage and its users.

Index layout in the index store::

    users/<user>/mailboxes            the mailbox list (mailserver.storage.index.mailbox_list)
    users/<user>/boxes/<guid>/...     one mailbox's index (mailserver.storage.index.mailbox_index)
"""

from __future__ import annotations

import re
import time
import uuid
from collections import OrderedDict

from twisted.internet import defer, task
from twisted.python.failure import Failure
from twisted.logger import Logger

from mailserver import plugins
from mailserver.storage import api, names
from mailserver.storage.errors import ErrorKind, StorageError
from mailserver.storage.index.mailbox_index import MailboxIndex
from mailserver.storage.index.mailbox_list import MailboxList
from mailserver.storage.paths import safe_component
from plugins.rbox import checkpoint
from plugins.rbox.bodycache import BodyCache
from plugins.rbox.diskcache import DirectoryCache
from plugins.rbox.pending import WritesFirst

log = Logger(namespace="mailserver.rbox")

KEEP_INDEXES = 200      # mailbox indexes kept loaded after their last session closed


class RboxStorage(api.MailStorage):
    def __init__(self, config, objects, index_store):
        self.config = config
        if config.rbox.body_cache_dir:
            objects = DirectoryCache(objects, config.rbox.body_cache_dir, config.rbox.body_cache_dir_bytes)
        self.objects = WritesFirst(objects)   # reads wait for a put in flight (parallel_commit)
        self.index_store = index_store
        self.bodies = BodyCache(config.rbox.body_cache_bytes)
        self.prefetch = config.rbox.prefetch
        self._users: dict[str, RboxUser] = {}
        self._indexes: OrderedDict[str, MailboxIndex] = OrderedDict()
        self._index_loading: dict[str, list] = {}
        self._inflight: set[defer.Deferred] = set()
        self._background: set[defer.Deferred] = set()   # repairs; cancelled at stop
        self.user_locks: set[tuple[str, str]] = set()     # (user, lock name) held by this process
        self._checkpointer: task.LoopingCall | None = None

    @classmethod
    def from_config(cls, config, registry=plugins) -> "RboxStorage":
        objects = registry.load(registry.OBJECT_STORES, config.rbox.object_store).from_config(config)
        index_store = registry.load(registry.INDEX_STORES, config.rbox.index_store).from_config(config)
        return cls(config, objects, index_store)

    async def start(self) -> None:
        await self.objects.start()
        await self.index_store.start()
        interval = self.config.rbox.checkpoint_interval
        if interval > 0:
            self._checkpointer = task.LoopingCall(
                lambda: defer.Deferred.fromCoroutine(self.checkpoint_all()).addErrback(
                    lambda f: log.failure("checkpointing indexes", f)))
            self._checkpointer.start(interval, now=False)

    async def stop(self) -> None:
        if self._checkpointer is not None and self._checkpointer.running:
            self._checkpointer.stop()
        for d in list(self._background):
            d.cancel()
        while self._inflight:   # writes may start while earlier ones finish: wait them all out
            log.info("waiting for {n} in-flight writes", n=len(self._inflight))
            await defer.DeferredList(list(self._inflight), consumeErrors=True)
        await self.checkpoint_all()
        await self.objects.stop()
        await self.index_store.stop()

    @staticmethod
    def admin():
        """The module with force_resync, gc, list_objects and get_object (used by the CLI)."""
        from plugins.rbox import admin
        return admin

    def track(self, d: defer.Deferred) -> defer.Deferred:
        """Remember an in-flight write so ``stop`` waits for it."""
        self._inflight.add(d)

        def done(result):
            self._inflight.discard(d)
            return result
        d.addBoth(done)
        return d

    def in_background(self, coro) -> None:
        """Run a repair coroutine nobody waits for (cancelled at stop, failures logged)."""
        d = defer.Deferred.fromCoroutine(coro)
        self._background.add(d)

        def done(result):
            self._background.discard(d)
            if isinstance(result, Failure) and not result.check(defer.CancelledError, StorageError):
                log.failure("background storage repair failed", result)
        d.addBoth(done)

    async def open_user(self, username: str) -> "RboxUser":
        user = self._users.get(username)
        if user is None:
            user = self._users[username] = RboxUser(self, username)
        user.refs += 1
        try:
            await user.ensure_provisioned()
        except BaseException:
            user.refs -= 1
            raise
        return user

    # --- shared mailbox indexes ---------------------------------------------------------------
    async def mailbox_index(self, directory: str, entry: dict | None = None) -> MailboxIndex:
        """The loaded, shared index of a mailbox directory.  With ``entry`` (the list entry), a
        mailbox whose index was never written (crash after CREATE) gets it now."""
        idx = self._indexes.get(directory)
        if idx is not None and not idx.deleted:
            self._indexes.move_to_end(directory)
            return idx
        waiting = self._index_loading.get(directory)
        if waiting is not None:   # another session is loading it: share the result
            w = defer.Deferred()
            waiting.append(w)
            return await w
        waiting = self._index_loading[directory] = []
        try:
            idx = await self._load_index(directory, entry)
        except Exception as e:
            del self._index_loading[directory]
            for w in waiting:
                w.errback(e)
            raise
        del self._index_loading[directory]
        for w in waiting:
            w.callback(idx)
        self._indexes[directory] = idx
        while len(self._indexes) > KEEP_INDEXES:
            old_dir, old = next(iter(self._indexes.items()))
            if old._listeners:
                self._indexes.move_to_end(old_dir)
                break
            del self._indexes[old_dir]
        return idx

    async def _load_index(self, directory: str, entry: dict | None) -> MailboxIndex:
        idx = MailboxIndex(self.index_store, directory, self.config.rbox.snapshot_threshold,
                           self.config.imap.idle_check_interval)
        try:
            await idx.load()
        except StorageError as e:
            if e.kind is not ErrorKind.NOT_FOUND or entry is None:
                raise
            try:
                await idx.create(entry["uidvalidity"], bytes.fromhex(entry["guid"]), entry.get("created", 0))
            except StorageError as e2:
                if e2.kind is not ErrorKind.EXISTS:
                    raise
                await idx.load()
        return idx

    async def checkpoint(self, idx: MailboxIndex) -> None:
        """Copy a changed mailbox's state into the object store (see checkpoint.py)."""
        st = idx.state
        if idx.owner is None or idx.deleted or st.highestmodseq == idx.checkpointed:
            return
        ns, guid, name = idx.owner
        try:
            await checkpoint.write(self.objects, ns, guid, name, st)
            idx.checkpointed = st.highestmodseq
        except StorageError as e:
            log.warn("checkpoint of {name} ({guid}) failed: {e}", name=name, guid=guid, e=str(e))

    async def checkpoint_all(self) -> None:
        for idx in list(self._indexes.values()):
            await self.checkpoint(idx)

    def forget_index(self, directory: str) -> None:
        idx = self._indexes.pop(directory, None)
        if idx is not None:
            idx.deleted = True
            idx.notify()


class RboxUser(api.User):
    def __init__(self, storage: RboxStorage, name: str):
        self.storage = storage
        self.name = name
        self.refs = 0
        self.dir = f"users/{safe_component(name)}"
        self.namespace = storage.objects.namespace(name)
        self.mlist = MailboxList(storage.index_store, self.dir)
        self._inbox_entry: dict | None = None   # INBOX's GUID never changes: cache it
        self._provisioned = False

    # --- provisioning and lookups -------------------------------------------------------------
    async def ensure_provisioned(self) -> None:
        if self._provisioned:
            return
        data = await self.mlist.read()
        if "INBOX" not in data["mailboxes"]:
            wanted = {"INBOX": ()}
            wanted.update({name: (use,) for name, use in self.storage.config.storage.mailboxes.items()})

            def add_defaults(d):
                for name, uses in wanted.items():
                    if name not in d["mailboxes"]:
                        self._new_entry(d, name, uses)
                        if name not in d["subscriptions"]:
                            d["subscriptions"].append(name)
                return d
            data = await self.mlist.modify(add_defaults)
            log.info("provisioned mailboxes for {user}", user=self.name)
        self._inbox_entry = data["mailboxes"]["INBOX"]
        self._provisioned = True

    @staticmethod
    def _new_entry(data: dict, name: str, special_use=()) -> dict:
        uidvalidity = max(int(time.time()), data.get("last_uidvalidity", 0) + 1)
        data["last_uidvalidity"] = uidvalidity
        entry = {"guid": uuid.uuid4().hex, "uidvalidity": uidvalidity, "created": int(time.time()),
                 "special_use": list(special_use)}
        data["mailboxes"][name] = entry
        return entry

    def box_dir(self, guid: str) -> str:
        return f"{self.dir}/boxes/{guid}"

    async def entry(self, name: str) -> tuple[str, dict]:
        """(normalised name, list entry) of an existing mailbox, or NOT_FOUND."""
        name = names.normalize(name)
        if name == "INBOX" and self._inbox_entry is not None:
            return name, self._inbox_entry
        data = await self.mlist.read()
        entry = data["mailboxes"].get(name)
        if entry is None:
            raise StorageError(ErrorKind.NOT_FOUND, f"mailbox {name!r} of {self.name} does not exist")
        return name, entry

    async def index_for(self, name: str) -> tuple[str, dict, MailboxIndex]:
        name, entry = await self.entry(name)
        idx = await self.storage.mailbox_index(self.box_dir(entry["guid"]), entry)
        idx.owner = (self.namespace, entry["guid"], name)
        return name, entry, idx

    def _validate(self, name: str) -> str:
        cfg = self.storage.config.storage
        return names.validate(name, cfg.max_mailbox_name_length, cfg.max_mailbox_depth)

    # --- the mailbox list ---------------------------------------------------------------------
    async def list_mailboxes(self) -> list:
        data = await self.mlist.read()
        subscribed = set(data["subscriptions"])
        boxes = data["mailboxes"]
        out = []
        for name in sorted(boxes, key=lambda n: (n != "INBOX", n)):
            e = boxes[name]
            out.append(api.MailboxInfo(
                name=name, guid=e["guid"], subscribed=name in subscribed,
                special_use=frozenset(e.get("special_use", ())),
                has_children=any(names.is_child(other, name) for other in boxes)))
        return out

    async def create_mailbox(self, name: str, special_use=()) -> api.MailboxInfo:
        name = self._validate(name)
        special_use = tuple(special_use)
        for use in special_use:
            if use not in api.SPECIAL_USES:
                raise StorageError(ErrorKind.INVALID, f"unknown special use {use!r}")
        limit = self.storage.config.storage.max_mailboxes

        def add(d):
            boxes = d["mailboxes"]
            if name in boxes:
                raise StorageError(ErrorKind.EXISTS, f"mailbox {name!r} exists")
            missing = [p for p in names.parents(name) if p not in boxes]
            if len(boxes) + 1 + len(missing) > limit:
                raise StorageError(ErrorKind.LIMIT, f"{self.name} has the maximum of {limit} mailboxes")
            for parent in missing:
                self._new_entry(d, parent)
            return self._new_entry(d, name, special_use)
        entry = await self.mlist.modify(add)
        await self.storage.mailbox_index(self.box_dir(entry["guid"]), entry)
        return api.MailboxInfo(name=name, guid=entry["guid"], subscribed=False,
                               special_use=frozenset(special_use))

    async def delete_mailbox(self, name: str) -> None:
        name = names.normalize(name)
        if name == "INBOX":
            raise StorageError(ErrorKind.CANNOT, "INBOX cannot be deleted")

        def remove(d):
            entry = d["mailboxes"].pop(name, None)
            if entry is None:
                raise StorageError(ErrorKind.NOT_FOUND, f"mailbox {name!r} does not exist")
            return entry
        entry = await self.mlist.modify(remove)
        directory = self.box_dir(entry["guid"])
        try:
            idx = await self.storage.mailbox_index(directory)
            st = idx.state
            refs = list(zip(st.oids, st.refs))
        except StorageError:
            refs = []
        self.storage.forget_index(directory)
        results = await defer.DeferredList(
            [defer.Deferred.fromCoroutine(self.storage.objects.remove_ref(self.namespace, oid, ref))
             for oid, ref in refs], consumeErrors=True)
        failed = sum(1 for ok, _ in results if not ok)
        if failed:
            log.warn("deleting {mailbox} of {user}: {n} object references left for gc",
                     mailbox=name, user=self.name, n=failed)
        await self.storage.index_store.remove_tree(directory)

    async def rename_mailbox(self, old: str, new: str) -> None:
        old = names.normalize(old)
        new = self._validate(new)
        if old == "INBOX":
            await self._rename_inbox(new)
            return
        if new == old or names.is_child(new, old):
            raise StorageError(ErrorKind.CANNOT, f"cannot rename {old!r} into itself")

        def rename(d):
            boxes = d["mailboxes"]
            if old not in boxes:
                raise StorageError(ErrorKind.NOT_FOUND, f"mailbox {old!r} does not exist")
            if new in boxes:
                raise StorageError(ErrorKind.EXISTS, f"mailbox {new!r} exists")
            moving = [n for n in boxes if n == old or names.is_child(n, old)]
            for n in moving:
                boxes[new + n[len(old):]] = boxes.pop(n)
            for parent in names.parents(new):
                if parent not in boxes:
                    self._new_entry(d, parent)
            d["subscriptions"] = [new + s[len(old):] if s == old or names.is_child(s, old) else s
                                  for s in d["subscriptions"]]
        await self.mlist.modify(rename)

    async def _rename_inbox(self, new: str) -> None:
        """RFC 3501: renaming INBOX moves its messages to a new mailbox; INBOX stays, empty."""
        await self.create_mailbox(new)
        box = await self.open_mailbox("INBOX")
        try:
            uids = list(box.uids())
            if uids:
                await box.move(uids, new)
        finally:
            await box.close()

    async def set_subscribed(self, name: str, subscribed: bool) -> None:
        name = names.normalize(name)

        def change(d):
            subs = d["subscriptions"]
            if subscribed and name not in subs:
                subs.append(name)
            elif not subscribed and name in subs:
                subs.remove(name)
        await self.mlist.modify(change)

    async def subscriptions(self) -> list:
        return list((await self.mlist.read())["subscriptions"])

    async def status(self, name: str) -> api.MailboxStatus:
        name, entry, idx = await self.index_for(name)
        await idx.refresh()
        st = idx.state
        flags = st.flags
        return api.MailboxStatus(
            messages=len(st), recent=len(st) - _bisect(st.uids, st.first_recent_uid),
            uidnext=st.uidnext, uidvalidity=st.uidvalidity,
            unseen=sum(1 for f in flags if not f & 1), highestmodseq=st.highestmodseq,
            size=sum(st.vsizes), deleted=sum(1 for f in flags if f & 8), guid=entry["guid"],
            deleted_size=sum(v for f, v in zip(flags, st.vsizes) if f & 8))

    async def open_mailbox(self, name: str, readonly: bool = False) -> api.Mailbox:
        from plugins.rbox.mailbox import RboxMailbox
        name, entry, idx = await self.index_for(name)
        box = RboxMailbox(self, name, entry, idx, readonly)
        await box.open()
        return box

    async def lock(self, name: str) -> api.Lock:
        if not re.fullmatch(r"[a-z0-9-]{1,32}", name):
            raise StorageError(ErrorKind.INVALID, f"bad lock name {name!r}")
        key = (self.name, name)
        # Held in this process: some drivers' locks (flock, libcephfs) exclude only other processes.
        if key in self.storage.user_locks:
            raise StorageError(ErrorKind.IN_USE, f"{self.name}: lock {name} held in this process")
        self.storage.user_locks.add(key)
        try:
            held = await self.storage.index_store.try_lock(f"{self.dir}/locks/{name}.lock")
        except BaseException:
            self.storage.user_locks.discard(key)
            raise
        if held is None:
            self.storage.user_locks.discard(key)
            raise StorageError(ErrorKind.IN_USE, f"{self.name}: lock {name} held by another process")
        return _UserLock(self.storage.user_locks, key, held)

    def begin_save(self, name: str) -> api.SaveTransaction:
        from plugins.rbox.save import RboxSave
        return RboxSave(self, name)

    async def close(self) -> None:
        self.refs -= 1
        # The user object is tiny (name, INBOX GUID); keep it for the next delivery.


class _UserLock(api.Lock):
    def __init__(self, registry: set, key, held):
        self._registry = registry
        self._key = key
        self._held = held

    async def release(self) -> None:
        held, self._held = self._held, None
        if held is not None:
            self._registry.discard(self._key)
            await held.release()


def _bisect(uids, uid) -> int:
    import bisect
    return bisect.bisect_left(uids, uid)
