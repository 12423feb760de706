"""Batch-shaped body reads: ``ObjectStore.get_many`` (the default and the local driver's one-job
override) and rbox FETCH reading bodies a batch at a time."""

import os

import pytest
import pytest_twisted
from twisted.internet import defer

from mailserver import threads
from mailserver.storage.api import FetchItem
from mailserver.storage.drivers import ObjectStore
from mailserver.storage.errors import ErrorKind, StorageError
from plugins.local import objects as local_objects
from plugins.local.objects import LocalObjectStore
from plugins.rbox import mailbox as rbox_mailbox
from plugins.rbox import reading as rbox_reading
from tests.storage.test_rbox_storage import make_storage, save

NS = "alice_namespace"


def body(n: int, size: int = 200) -> bytes:
    head = b"From: a@example.org\r\nSubject: Message %d\r\n\r\n" % n
    return head + (b"line %d of the body\r\n" % n) * (size // 20)


@pytest.fixture
def store(tmp_path):
    s = LocalObjectStore(str(tmp_path / "objects"))
    pytest_twisted.blockon(defer.Deferred.fromCoroutine(s.start()))
    return s


class GatheringStore(LocalObjectStore):
    """The local store with the driver interface's default ``get_many`` (a ``get`` per oid)."""

    get_many = ObjectStore.get_many


@pytest_twisted.ensureDeferred
async def test_local_get_many_reads_a_batch_in_one_pool_job(store, monkeypatch):
    for n in range(5):
        await store.put(NS, f"oid{n}", body(n, 100 * n), {"G": f"{n}"})
    calls = []
    real_call = threads.call

    async def counting_call(pool, fn, *args):
        calls.append(pool)
        return await real_call(pool, fn, *args)
    monkeypatch.setattr(threads, "call", counting_call)
    oids = ["oid3", "oid0", "gone", "oid4", "oid1"]
    got = await store.get_many(NS, oids)
    # Only the object store's pool is this store's: a job in another pool meanwhile is the
    # index poller of a mailbox an earlier test left open in this process (seen once).
    assert [c for c in calls if c != "local-index"] == [local_objects.POOL]
    assert got[0] == body(3, 300) and got[1] == body(0, 0) and got[3] == body(4, 400) and got[4] == body(1, 100)
    assert isinstance(got[2], StorageError) and got[2].kind is ErrorKind.NOT_FOUND
    # Size hints: exact, too small, too big or absent, the data is always the whole object.
    for hints in ([len(body(3, 300)), len(body(0, 0))], [1, 0], [10 ** 6, 10 ** 6], None):
        assert await store.get_many(NS, ["oid3", "oid0"], hints) == [body(3, 300), body(0, 0)]


@pytest_twisted.ensureDeferred
async def test_local_get_many_reports_bad_objects_one_by_one(store, tmp_path):
    big = os.urandom(3 * local_objects.META_ROOM)      # bigger than a wrong hint's read
    await store.put(NS, "big", big, {})
    await store.put(NS, "fine", b"x" * 10, {})
    path = store._path(NS, "broken")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(b"not an object")
    got = await store.get_many(NS, ["broken", "big", "../x", "fine"], [5, 5, 5, 10])
    assert got[0].kind is ErrorKind.CORRUPTED and got[2].kind is ErrorKind.INVALID
    assert got[1] == big and got[3] == b"x" * 10
    assert await store.get_many(NS, []) == []
    assert [e.kind for e in await store.get_many(NS, [".hidden"])] == [ErrorKind.INVALID]


@pytest_twisted.ensureDeferred
async def test_default_get_many_gathers_gets(tmp_path):
    s = GatheringStore(str(tmp_path / "objects"))
    await s.start()
    await s.put(NS, "a", b"first", {})
    await s.put(NS, "b", b"second", {})
    got = await s.get_many(NS, ["b", "missing", "a"])
    assert got[0] == b"second" and got[2] == b"first" and got[1].kind is ErrorKind.NOT_FOUND

    async def broken_get(ns, oid, offset=0, length=None):
        raise RuntimeError("driver bug")
    s.get = broken_get
    with pytest.raises(RuntimeError, match="driver bug"):
        await s.get_many(NS, ["a", "b"])


def forget_bodies(storage, user, box):
    """Empty the body cache of a mailbox (saving keeps what it wrote there)."""
    for info in box.all_info():
        storage.bodies.discard((user.namespace, info.oid))


@pytest.fixture
def small_batches(tmp_path):
    """rbox storage reading at most 3 bodies per object-store call."""
    st = make_storage(tmp_path, prefetch=3, body_cache_bytes=40_000)
    pytest_twisted.blockon(defer.Deferred.fromCoroutine(st.start()))
    return st


@pytest_twisted.ensureDeferred
async def test_fetch_reads_bodies_in_batches_in_order(small_batches, monkeypatch):
    storage = small_batches
    user = await storage.open_user("bea")
    mails = [body(n, 50 + 10 * n) for n in range(11)]
    await save(user, "INBOX", *mails)
    box = await user.open_mailbox("INBOX")
    batches = []
    real = storage.objects.get_many

    async def recording(ns, oids, sizes=None):
        batches.append(len(oids))
        return await real(ns, oids, sizes)
    monkeypatch.setattr(storage.objects, "get_many", recording)
    forget_bodies(storage, user, box)
    order = [7, 1, 11, 2, 99, 3, 4, 5, 6, 8, 9, 10]
    got = [m async for m in box.fetch(order, {FetchItem.DATA, FetchItem.ENVELOPE})]
    assert [m.info.uid for m in got] == [u for u in order if u != 99]
    assert all(m.data == mails[m.info.uid - 1] and f'"Message {m.info.uid - 1}"' in m.envelope for m in got)
    assert batches == [3, 3, 3, 2]
    # Section fetches get the part tree with the data.
    [m] = [m async for m in box.fetch([2], {FetchItem.DATA, FetchItem.PARTS})]
    assert m.data == mails[1] and m.parts.header_end == mails[1].index(b"\r\n\r\n") + 4


@pytest_twisted.ensureDeferred
async def test_fetch_marks_only_missing_objects_and_stops_cleanly(small_batches):
    storage = small_batches
    user = await storage.open_user("cid")
    mails = [body(n) for n in range(7)]
    await save(user, "INBOX", *mails)
    box = await user.open_mailbox("INBOX")
    forget_bodies(storage, user, box)
    await storage.objects.delete(user.namespace, box.info(2).oid)
    await storage.objects.delete(user.namespace, box.info(6).oid)
    got = [m async for m in box.fetch(list(range(1, 8)), {FetchItem.DATA})]
    assert [m.missing for m in got] == [False, True, False, False, False, True, False]
    assert [m.data for m in got if not m.missing] == [mails[k] for k in (0, 2, 3, 4, 6)]
    # A consumer that stops after one message leaves no read behind (nor an unhandled error).
    async for m in box.fetch(list(range(1, 8)), {FetchItem.DATA}):
        assert m.info.uid == 1
        break


@pytest_twisted.ensureDeferred
async def test_small_fetches_fill_the_body_cache_scans_do_not(small_batches):
    storage = small_batches           # body cache of 40 KB: a scan past 10 KB is not kept
    user = await storage.open_user("dan")
    mails = [body(n, 2000) for n in range(8)]
    await save(user, "INBOX", *mails)
    box = await user.open_mailbox("INBOX")
    forget_bodies(storage, user, box)
    _ = [m async for m in box.fetch(list(range(1, 9)), {FetchItem.DATA})]
    assert storage.bodies.size == 0
    [m] = [m async for m in box.fetch([3], {FetchItem.DATA})]
    assert storage.bodies.get((user.namespace, box.info(3).oid)) == mails[2]
    # A cached body is served without reading the object.
    await storage.objects.delete(user.namespace, box.info(3).oid)
    [m] = [m async for m in box.fetch([3], {FetchItem.DATA})]
    assert m.data == mails[2] and not m.missing


def test_batches_respect_count_and_bytes(small_batches):
    class Info:
        def __init__(self, size):
            self.size = size
    box = rbox_mailbox.RboxMailbox.__new__(rbox_mailbox.RboxMailbox)
    box.storage = small_batches
    sizes = [10, 10, 10, 10, rbox_reading.BATCH_BYTES, 10, rbox_reading.BATCH_BYTES - 15, 10, 10]
    got = [[i.size for i in b] for b in box._batches([Info(s) for s in sizes])]
    assert got == [[10, 10, 10], [10], [rbox_reading.BATCH_BYTES], [10, rbox_reading.BATCH_BYTES - 15],
                   [10, 10]]


@pytest_twisted.ensureDeferred
async def test_columns_match_the_generic_implementation(small_batches):
    from mailserver.storage import api
    from mailserver.storage.api import StoreMode
    storage = small_batches
    user = await storage.open_user("eve")
    mails = [body(n) for n in range(6)]
    await save(user, "INBOX", *mails)
    box = await user.open_mailbox("INBOX")
    await box.store([2, 4], StoreMode.ADD, ["\\Seen", "$Work"])
    await box.store([5], StoreMode.ADD, ["\\Flagged"])
    # Message 3: its object is gone and its cache entry lacks fields (to be recomputed).
    forget_bodies(storage, user, box)
    await box.index.cache.load_more()
    box.index.cache.remember(box.info(3).oid, {})
    await storage.objects.delete(user.namespace, box.info(3).oid)
    names = set(api.COLUMNS)
    for uids in ([1, 2, 3, 4, 5, 6], [6, 2, 9, 1], [], [4]):
        ours = await box.columns(uids, names)
        generic = await api.Mailbox.columns(box, uids, names)
        assert ours == generic, uids
    cols = await box.columns([1, 2, 3], {"flags", "envelope"})
    assert set(cols) == {"uid", "flags", "envelope"} and cols["uid"] == [1, 2, 3]
    assert cols["flags"][1] == {"\\Seen", "$Work"} and cols["envelope"][2] is None
    assert b'"Message 0"' in cols["envelope"][0]
    assert cols["flags"][0] is cols["flags"][2]          # one object per distinct set
    with pytest.raises(ValueError):
        await box.columns([1], {"frobs"})
