"""The index: record framing, state, snapshot, compare-and-append log, torn tails, rotation."""

import os

import pytest
import pytest_twisted

from mailserver.storage.index import records as R
from mailserver.storage.index.cache import MessageCache, encode_entry, scan
from mailserver.storage.index.mailbox_index import MailboxIndex
from mailserver.storage.index.state import MailboxState, SnapshotError
from plugins.local.index import LocalIndexStore

GUID = bytes(range(16))


def msg(uid, flags=0, kws=(), oid=None):
    return R.NewMessage(uid, flags, tuple(kws), 1700000000 + uid, 1700000100 + uid, 1000 + uid,
                        1010 + uid, bytes([uid % 256]) * 16, oid or f"oid{uid:04d}", "")


def test_frames_roundtrip_and_torn_tail():
    recs = [R.Header(42, GUID, 1), R.Keyword(0, "$Junk"), R.Append(2, [msg(1, 1, (0,)), msg(2)]),
            R.FlagChange(3, R.MODE_ADD, 8, (0,), ((1, 2),)), R.Expunge(4, ((2, 2),)),
            R.Recent(3), R.Rotate(2)]
    encoded = [R.__dict__[f"encode_{n}"](r) for n, r in zip(
        ("header", "keyword", "append", "flags", "expunge", "recent", "rotate"), recs)]
    data = b"".join(encoded)
    decoded = [R.decode(p) for _, p in R.iter_frames(data)]
    assert decoded == recs
    # A torn tail: every valid frame before it is read, nothing after.
    torn = data + encoded[2][:-3]
    ends = [end for end, _ in R.iter_frames(torn)]
    assert ends[-1] == len(data)
    # A damaged byte in the last frame stops reading there.
    damaged = bytearray(data)
    damaged[-2] ^= 0xFF
    assert len(list(R.iter_frames(bytes(damaged)))) == len(recs) - 1


def test_corrupt_payload_is_reported():
    with pytest.raises(R.CorruptRecord):
        R.decode(b"\x02\x00")
    with pytest.raises(R.CorruptRecord):
        R.decode(b"\x63")


def test_state_apply_and_snapshot_roundtrip():
    s = MailboxState()
    s.apply(R.Header(7, GUID, 5))
    s.apply(R.Keyword(0, "$Forwarded"))
    s.apply(R.Keyword(1, "Work"))
    s.apply(R.Append(2, [msg(u) for u in range(1, 101)]))
    s.apply(R.FlagChange(3, R.MODE_ADD, R.FLAG_BITS["\\Seen"], (1,), ((10, 20),)))
    s.apply(R.FlagChange(4, R.MODE_REMOVE, R.FLAG_BITS["\\Seen"], (), ((15, 15),)))
    s.apply(R.Expunge(5, ((50, 59),)))
    s.log_offset = 1234
    assert len(s) == 90 and s.uidnext == 101 and s.highestmodseq == 5
    assert s.info(12).flags == frozenset({"\\Seen", "Work"})
    assert s.info(15).flags == frozenset({"Work"}) and s.info(15).modseq == 4
    assert s.info(55) is None and s.expunge_count == 10
    t = MailboxState.decode_snapshot(s.encode_snapshot())
    for uid in (1, 12, 15, 60, 100):
        assert t.info(uid) == s.info(uid)
    assert (t.uidvalidity, t.uidnext, t.highestmodseq, t.log_offset, t.keywords) == \
           (7, 101, 5, 1234, ["$Forwarded", "Work"])
    raw = bytearray(s.encode_snapshot())
    raw[20] ^= 1
    with pytest.raises(SnapshotError):
        MailboxState.decode_snapshot(bytes(raw))


def test_replace_mode_and_replayed_append_is_ignored():
    s = MailboxState()
    s.apply(R.Append(2, [msg(1, R.FLAG_BITS["\\Seen"])]))
    s.apply(R.Append(2, [msg(1)]))  # replay of the same record changes nothing
    assert len(s) == 1
    s.apply(R.FlagChange(3, R.MODE_REPLACE, R.FLAG_BITS["\\Flagged"], (), ((1, 1),)))
    assert s.info(1).flags == frozenset({"\\Flagged"})


def test_cache_scan_skips_damage():
    a = encode_entry("aa", {1: b"env-a"})
    b = encode_entry("bb", {1: b"env-b"})
    c = encode_entry("cc", {1: b"env-c"})
    data = a + b[:-4] + c + c[:5]
    found = [oid for _, oid, _, _ in scan(data)]
    assert found == ["aa", "cc"]


def append_builder(n, flags=0):
    def build(state):
        uids = list(range(state.uidnext, state.uidnext + n))
        return [R.Append(state.highestmodseq + 1, [msg(u, flags) for u in uids])], uids
    return build


@pytest.fixture
def store(tmp_path):
    return LocalIndexStore(str(tmp_path))


@pytest_twisted.ensureDeferred
async def test_two_writers_get_distinct_uids(store, tmp_path):
    a = MailboxIndex(store, "u/box")
    await a.create(99, GUID, 0)
    b = MailboxIndex(store, "u/box")   # a second process: its own state, same files
    await b.load()
    assert await a.commit(append_builder(2)) == [1, 2]
    assert await b.commit(append_builder(3)) == [3, 4, 5]   # saw a's append, retried
    assert await a.commit(append_builder(1)) == [6]
    await b.refresh()
    assert list(a.state.uids) == list(b.state.uids) == [1, 2, 3, 4, 5, 6]


@pytest_twisted.ensureDeferred
async def test_torn_tail_is_cut_by_next_writer(store, tmp_path):
    idx = MailboxIndex(store, "u/box")
    await idx.create(1, GUID, 0)
    await idx.commit(append_builder(1))
    path = tmp_path / "u/box/log.1"
    good = path.stat().st_size
    with open(path, "ab") as f:
        f.write(R.encode_append(R.Append(9, [msg(2)]))[:-7])   # crash mid-append
    fresh = MailboxIndex(store, "u/box")
    await fresh.load()
    assert list(fresh.state.uids) == [1] and fresh.state.log_offset == good
    assert await fresh.commit(append_builder(1)) == [2]
    again = MailboxIndex(store, "u/box")
    await again.load()
    assert list(again.state.uids) == [1, 2]
    assert path.stat().st_size == again.state.log_offset


@pytest_twisted.ensureDeferred
async def test_rotation_writes_snapshot_and_readers_follow(store, tmp_path):
    idx = MailboxIndex(store, "u/box", snapshot_threshold=1000)
    await idx.create(1, GUID, 0)
    reader = MailboxIndex(store, "u/box", snapshot_threshold=1000)
    await reader.load()
    for _ in range(30):
        await idx.commit(append_builder(1))
        await idx.commit(lambda st: ([R.FlagChange(st.highestmodseq + 1, R.MODE_ADD, 1, (), ((st.uids[-1],) * 2,))], None))
    assert idx.state.log_no > 2
    assert os.path.exists(tmp_path / "u/box/snapshot")
    logs = sorted(os.listdir(tmp_path / "u/box"))
    assert f"log.{idx.state.log_no - 3}" not in logs   # old logs are removed
    await reader.refresh()        # its log is gone: it takes the snapshot and catches up
    assert list(reader.state.uids) == list(range(1, 31))
    assert all(reader.state.info(u).flags == {"\\Seen"} for u in range(1, 31))
    fresh = MailboxIndex(store, "u/box")
    await fresh.load()
    assert fresh.state.highestmodseq == idx.state.highestmodseq


@pytest_twisted.ensureDeferred
async def test_cache_entries_survive_reload(store):
    cache = MessageCache(store, "u/box/cache")
    await cache.add("o1", {1: b"(envelope)"})
    other = MessageCache(store, "u/box/cache")
    entry = await other.get("o1")
    assert entry.get(1) == b"(envelope)"
    assert await other.get("missing") is None


def test_expunge_history_for_qresync():
    s = MailboxState()
    s.apply(R.Append(2, [msg(u) for u in range(1, 11)]))
    s.apply(R.Expunge(3, ((2, 3),)))
    s.apply(R.Expunge(4, ((7, 7), (9, 9))))
    assert s.expunged_since(2) == [2, 3, 7, 9]
    assert s.expunged_since(3) == [7, 9]
    assert s.expunged_since(4) == []
    t = MailboxState.decode_snapshot(s.encode_snapshot())
    assert t.expunged_since(2) == [2, 3, 7, 9]


@pytest_twisted.ensureDeferred
async def test_polling_a_storage_that_fails_logs_a_warning_not_a_traceback(store):
    """Regression: the change poller of an open mailbox met a stopped or unreachable index
    store and logged a traceback for every poll (seen at shutdown on CephFS)."""
    from twisted.logger import globalLogPublisher
    from mailserver.storage.errors import ErrorKind, StorageError
    idx = MailboxIndex(store, "u/box")
    await idx.create(1, GUID, 0)

    async def unreachable(path):
        raise StorageError(ErrorKind.TEMPORARY, "cephfs size: CephFS not mounted")
    store.size = unreachable
    events = []
    globalLogPublisher.addObserver(events.append)
    try:
        await idx._poll()
    finally:
        globalLogPublisher.removeObserver(events.append)
    assert not [e for e in events if e.get("log_failure") is not None]
    assert any("polling for changes failed" in e.get("log_format", "") for e in events)


@pytest_twisted.ensureDeferred
async def test_a_change_by_another_process_is_seen_at_once_through_the_watch(store):
    """The local store watches an index directory (inotify) for listeners, so an IDLE session
    sees another process's commit (an LMTP worker's delivery) without waiting for its poll."""
    from twisted.internet import defer, reactor
    reader = MailboxIndex(store, "u/box", poll_interval=3600.0)    # its poll would never come
    writer = MailboxIndex(LocalIndexStore(store.root), "u/box")    # the other process
    await writer.create(1, GUID, 0)
    await reader.load()
    seen = defer.Deferred()
    stop = reader.add_listener(lambda: seen.called or seen.callback(None))
    try:
        assert reader._unwatch is not None
        await writer.commit(append_builder(3))
        timeout = reactor.callLater(5, seen.cancel)
        await seen
        timeout.cancel()
        assert list(reader.state.uids) == [1, 2, 3]
    finally:
        stop()
    assert reader._unwatch is None and store._watchers == {}
    await store.stop()
