"""Admin operations on rbox storage: ``force-resync``, ``rbox gc``, ``rbox ls``, ``rbox get``.

Objects are the truth for what mail exists; the index (or, when it is lost, the checkpoint in
the object store) is the truth for UIDs and flags.  force-resync rebuilds a user's mailbox list
and indexes from both, links objects no index refers to, drops records whose object is gone,
and makes each object's references match the records that point at it.
"""

from __future__ import annotations

import dataclasses
import time

from twisted.internet import defer
from twisted.logger import Logger

from mailserver.storage import drivers
from mailserver.storage.errors import ErrorKind, StorageError
from mailserver.storage.index import records as R
from mailserver.storage.index.mailbox_index import MailboxIndex
from mailserver.storage.index.state import MailboxState, SnapshotError
from plugins.rbox import checkpoint
from plugins.rbox.storage import RboxUser

log = Logger(namespace="mailserver.rbox.admin")

PARALLEL = 32


async def gather_bounded(calls, limit: int = PARALLEL) -> list:
    """Run coroutine factories with at most ``limit`` in flight; results in order
    (an exception instance in place of a result that failed)."""
    results = [None] * len(calls)
    sem = defer.DeferredSemaphore(limit)

    async def one(i, make):
        try:
            results[i] = await make()
        except Exception as e:  # reported per item by the caller
            results[i] = e

    await defer.DeferredList([sem.run(lambda i=i, m=m: defer.Deferred.fromCoroutine(one(i, m)))
                              for i, m in enumerate(calls)])
    return results


@dataclasses.dataclass
class ObjectInfo:
    oid: str
    meta: dict
    refs: set


async def scan_objects(objects, ns: str, incomplete: list | None = None) -> dict[str, ObjectInfo]:
    """Every mail object of a namespace with its metadata and references.  An object without
    the version key was never completely written (a crash during a write in parts): it is
    reported, appended to ``incomplete`` if given, and left for gc."""
    oids = await objects.list(ns)
    metas = await gather_bounded([lambda o=o: objects.get_meta(ns, o) for o in oids])
    refs = await gather_bounded([lambda o=o: objects.refs(ns, o) for o in oids])
    out = {}
    for oid, meta, ref in zip(oids, metas, refs):
        listed_without_meta = isinstance(meta, StorageError) and meta.kind is ErrorKind.NOT_FOUND
        if listed_without_meta or (isinstance(meta, dict) and drivers.META_VERSION not in meta):
            log.warn("object {oid} in {ns} is incomplete (no version key)", oid=oid, ns=ns)
            if incomplete is not None:
                incomplete.append(oid)
            continue
        if isinstance(meta, Exception) or isinstance(ref, Exception):
            continue
        out[oid] = ObjectInfo(oid, meta, ref)
    return out


async def _checkpoints(objects, ns: str) -> dict[str, tuple[dict, MailboxState]]:
    out = {}
    for name in await objects.list_states(ns):
        if not name.startswith(checkpoint.PREFIX):
            continue
        raw = await objects.get_state(ns, name)
        try:
            head, state = checkpoint.decode(raw or b"")
        except (SnapshotError, ValueError) as e:
            log.warn("checkpoint {name} in {ns} unreadable: {e}", name=name, ns=ns, e=str(e))
            continue
        out[head["guid"]] = (head, state)
    return out


async def _current_state(storage, directory: str) -> MailboxState | None:
    idx = MailboxIndex(storage.index_store, directory)
    try:
        await idx.load()
    except StorageError:
        return None
    return idx.state


def _keep_existing(state: MailboxState, existing: dict) -> int:
    """Drop records whose object is gone; returns how many were dropped."""
    keep = [i for i, oid in enumerate(state.oids) if oid in existing]
    dropped = len(state.oids) - len(keep)
    if dropped:
        state.keep_positions(keep)
    return dropped


def _link_orphans(state: MailboxState, orphans: list[ObjectInfo]) -> None:
    """Append objects no index refers to, with new UIDs and no flags, in received order."""
    orphans.sort(key=lambda o: (int(o.meta.get(drivers.META_RECEIVED, "0")), o.oid))
    modseq = state.highestmodseq + 1
    msgs = []
    for uid, o in enumerate(orphans, start=state.uidnext):
        m = o.meta
        msgs.append(R.NewMessage(uid, 0, (), int(m.get(drivers.META_RECEIVED, "0")),
                                 int(m.get(drivers.META_SAVE_DATE, "0")), int(m.get(drivers.META_PHYSICAL_SIZE, "0")),
                                 int(m.get(drivers.META_VIRTUAL_SIZE, "0")), bytes.fromhex(m[drivers.META_GUID]),
                                 o.oid, ""))
    if msgs:
        state.apply(R.Append(modseq, msgs))


async def _write_index(storage, directory: str, state: MailboxState, old: MailboxState | None) -> None:
    """Replace a mailbox's index by ``state``: a snapshot pointing at a fresh log numbered past
    every log a running server may be reading, so it notices and reloads."""
    store = storage.index_store
    lock = await store.lock(f"{directory}/index.lock")
    try:
        existing = await store.listdir(directory)
        numbers = [int(n[4:]) for n in existing if n.startswith("log.") and n[4:].isdigit()]
        state.log_no = max(numbers + [old.log_no if old else 0]) + 1
        state.log_offset = 0
        await store.write_atomic(f"{directory}/snapshot", state.encode_snapshot())
        for n in existing:
            if (n.startswith("log.") and n != f"log.{state.log_no}") or n == "cache":
                await store.remove(f"{directory}/{n}")
    finally:
        await lock.release()
    storage.forget_index(directory)


async def force_resync(storage, username: str, mailbox: str | None = None) -> dict:
    """Rebuild a user's mailbox list and indexes (all, or one mailbox) from objects + checkpoints."""
    objects = storage.objects
    user = RboxUser(storage, username)
    ns = user.namespace
    report = {"linked": 0, "dropped": 0, "restored_from_checkpoint": [], "mailboxes": 0, "refs_fixed": 0}
    objs = await scan_objects(objects, ns)
    ckpts = await _checkpoints(objects, ns)

    # 1. The mailbox list: keep what is there, add mailboxes known only from checkpoints or objects.
    def rebuild_list(data):
        by_guid = {e["guid"]: n for n, e in data["mailboxes"].items()}
        for guid, (head, st) in ckpts.items():
            if guid not in by_guid:
                name = _free_name(data, head.get("name") or f"recovered-{guid[:8]}")
                data["mailboxes"][name] = {"guid": guid, "uidvalidity": head["uidvalidity"],
                                           "created": int(time.time()), "special_use": []}
                by_guid[guid] = name
        for o in objs.values():
            guid = o.meta.get(drivers.META_MAILBOX_GUID, "")
            if guid and guid not in by_guid:
                name = _free_name(data, o.meta.get(drivers.META_ORIG_MAILBOX) or f"recovered-{guid[:8]}")
                user._new_entry(data, name)
                data["mailboxes"][name]["guid"] = guid
                by_guid[guid] = name
        if "INBOX" not in data["mailboxes"]:
            user._new_entry(data, "INBOX")
            data["subscriptions"].append("INBOX")
        data["last_uidvalidity"] = max([data.get("last_uidvalidity", 0)] +
                                       [e["uidvalidity"] for e in data["mailboxes"].values()])
        return data
    try:
        data = await user.mlist.modify(rebuild_list)
    except StorageError as e:
        if e.kind is not ErrorKind.CORRUPTED:
            raise
        log.warn("mailbox list of {user} unreadable; rebuilding it", user=username)
        await storage.index_store.remove(user.mlist.path)
        data = await user.mlist.modify(rebuild_list)

    # 2. Each mailbox's state: the index if readable, else (or if newer) its checkpoint.
    states: dict[str, tuple[str, MailboxState, MailboxState | None]] = {}
    for name, entry in data["mailboxes"].items():
        guid = entry["guid"]
        directory = user.box_dir(guid)
        current = await _current_state(storage, directory)
        ck = ckpts.get(guid)
        state = current
        if ck is not None and (current is None or ck[1].highestmodseq > current.highestmodseq):
            state = ck[1]
            report["restored_from_checkpoint"].append(name)
        if state is None:
            state = MailboxState()
            state.uidvalidity, state.guid, state.created = entry["uidvalidity"], bytes.fromhex(guid), entry.get("created", 0)
        states[guid] = (name, state, current)

    # 3. Drop records of missing objects; link objects no record refers to.
    for guid, (name, state, current) in states.items():
        if mailbox is None or name == mailbox:
            report["dropped"] += _keep_existing(state, objs)
    referenced = {(oid, ref) for _, st, _ in states.values() for oid, ref in zip(st.oids, st.refs)}
    referenced_oids = {oid for oid, _ in referenced}
    orphans: dict[str, list] = {}
    for o in objs.values():
        if o.oid not in referenced_oids:
            orphans.setdefault(o.meta.get(drivers.META_MAILBOX_GUID, ""), []).append(o)
    for guid, (name, state, current) in states.items():
        if mailbox is not None and name != mailbox:
            continue
        mine = orphans.get(guid, [])
        _link_orphans(state, mine)
        report["linked"] += len(mine)
        await _write_index(storage, user.box_dir(guid), state, current)
        await checkpoint.write(objects, ns, guid, name, state)
        report["mailboxes"] += 1

    # 4. Each object's references = the tokens of the records pointing at it.
    wanted: dict[str, set] = {}
    for _, st, _ in states.values():
        for oid, ref in zip(st.oids, st.refs):
            wanted.setdefault(oid, set()).add(ref)
    for oid, refs in wanted.items():
        o = objs.get(oid)
        if o is None or o.refs == refs:
            continue
        for ref in refs - o.refs:
            await objects.add_ref(ns, oid, ref)
        for ref in o.refs - refs:
            await objects.remove_ref(ns, oid, ref)
        report["refs_fixed"] += 1
    log.info("force-resync {user}: {report}", user=username, report=report)
    return report


def _free_name(data: dict, name: str) -> str:
    candidate = name
    n = 1
    while candidate in data["mailboxes"]:
        n += 1
        candidate = f"{name}-{n}"
    return candidate


async def gc(storage, dry_run: bool = False, grace: float | None = None) -> dict:
    """Remove objects no index refers to (after a grace period: a delivery may be committing
    right now) and references no record holds, for every user."""
    objects = storage.objects
    grace = storage.config.rbox.gc_grace if grace is None else grace
    suffix = storage.config.rbox.namespace_suffix
    now = time.time()
    report = {"users": 0, "removed": 0, "young": 0, "refs_removed": 0, "incomplete_removed": 0}
    for ns in await objects.list_namespaces():
        if suffix and not ns.endswith(suffix):
            continue
        username = ns[:len(ns) - len(suffix)] if suffix else ns
        user = RboxUser(storage, username)
        data = await user.mlist.read()
        wanted: dict[str, set] = {}
        for entry in data["mailboxes"].values():
            st = await _current_state(storage, user.box_dir(entry["guid"]))
            if st is None:
                continue
            for oid, ref in zip(st.oids, st.refs):
                wanted.setdefault(oid, set()).add(ref)
        report["users"] += 1
        incomplete: list[str] = []
        for o in (await scan_objects(objects, ns, incomplete)).values():
            refs = wanted.get(o.oid)
            if refs is None:
                saved = int(o.meta.get(drivers.META_SAVE_DATE, "0"))
                if now - saved < grace:
                    report["young"] += 1
                    continue
                report["removed"] += 1
                if not dry_run:
                    await objects.delete(ns, o.oid)
                continue
            for ref in o.refs - refs:
                report["refs_removed"] += 1
                if not dry_run:
                    await objects.remove_ref(ns, o.oid, ref)
        for oid in incomplete:
            try:
                written = await objects.mtime(ns, oid)
            except StorageError as e:
                if e.kind is ErrorKind.NOT_FOUND:
                    continue                # finished and removed meanwhile
                raise
            if now - written < grace:       # its writer may still be sending the parts
                report["young"] += 1
                continue
            report["incomplete_removed"] += 1
            if not dry_run:
                await objects.delete(ns, oid)
        report["incomplete_removed"] += await objects.remove_partial_writes(ns, now - grace, dry_run)
    log.info("rbox gc{dry}: {report}", dry=" (dry run)" if dry_run else "", report=report)
    return report


async def list_objects(storage, username: str) -> list[ObjectInfo]:
    return sorted((await scan_objects(storage.objects, storage.objects.namespace(username))).values(),
                  key=lambda o: (int(o.meta.get(drivers.META_RECEIVED, "0")), o.oid))


async def get_object(storage, username: str, oid: str) -> bytes:
    return await storage.objects.get(storage.objects.namespace(username), oid)
