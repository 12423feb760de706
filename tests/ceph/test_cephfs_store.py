"""CephFSIndexStore against the real throwaway cluster (no mocks)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
import pytest_twisted
from twisted.internet import defer, reactor, task, threads

from mailserver.storage.errors import ErrorKind, StorageError

pytestmark = pytest.mark.ceph

ROOT_DIR = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


async def expect_error(kind: ErrorKind, coro):
    with pytest.raises(StorageError) as info:
        await coro
    assert info.value.kind is kind, info.value
    return info.value


def gather(*coros):
    return defer.gatherResults([defer.Deferred.fromCoroutine(c) for c in coros])


@pytest_twisted.ensureDeferred
async def test_append_read_size(make_cephfs_store):
    store = await make_cephfs_store()
    assert await store.read("alice/INBOX/log") is None
    assert await store.size("alice/INBOX/log") is None
    assert await store.append("alice/INBOX/log", b"first record\n") == 0     # parents created
    assert await store.append("alice/INBOX/log", b"second\n") == 13
    assert await store.append("alice/INBOX/log", b"") == 20
    assert await store.size("alice/INBOX/log") == 20
    assert await store.read("alice/INBOX/log") == b"first record\nsecond\n"
    assert await store.read("alice/INBOX/log", 13) == b"second\n"
    assert await store.read("alice/INBOX/log", 20) == b""
    await store.sync(["alice/INBOX/log"])
    assert await store.read("alice/INBOX/log") == b"first record\nsecond\n"


@pytest_twisted.ensureDeferred
async def test_append_at_compares_cuts_and_appends(make_cephfs_store):
    store = await make_cephfs_store()
    log, lock = "alice/INBOX/log", "alice/INBOX/log"
    assert await store.append_at(log, 5, b"x", lock=lock) == (False, None)      # missing file
    assert await store.append_at(log, 0, b"header\n", lock=lock) == (True, None)
    assert await store.append_at(log, 7, b"rec1\n", lock=lock) == (True, None)
    assert await store.append_at(log, 7, b"other\n", lock=lock) == (False, b"rec1\n")   # lost the race
    await store.append(log, b"torn")                                          # a half-written record
    assert await store.append_at(log, 12, b"rec2\n", lock=lock, cut_tail_at_size=16) == (True, None)
    assert await store.read(log) == b"header\nrec1\nrec2\n"
    await store.truncate(log, 7)
    assert await store.read(log) == b"header\n"


@pytest_twisted.ensureDeferred
async def test_append_at_waits_for_a_held_lock(make_cephfs_store):
    store = await make_cephfs_store()
    held = await store.lock("u/log")
    pending = defer.Deferred.fromCoroutine(store.append_at("u/log", 0, b"a", lock="u/log"))
    await task.deferLater(reactor, 0.2, lambda: None)
    assert not pending.called
    await held.release()
    assert await pending == (True, None)


@pytest_twisted.ensureDeferred
async def test_large_file_read_in_chunks(make_cephfs_store):
    store = await make_cephfs_store()
    data = os.urandom(9 * 1024 * 1024 + 7)           # more than two READ_CHUNKs
    await store.write_atomic("big", data)
    assert await store.read("big") == data
    assert await store.read("big", 5 * 1024 * 1024) == data[5 * 1024 * 1024:]


@pytest_twisted.ensureDeferred
async def test_another_client_sees_synced_appends(ceph_cluster, make_cephfs_store):
    """A second mount (as another server would have) reads what one store appended and synced."""
    writer = await make_cephfs_store()
    reader = await make_cephfs_store(root=writer.root)
    await writer.append("u/log", b"x" * 100)
    await writer.sync(["u/log"])
    assert await reader.read("u/log") == b"x" * 100


@pytest_twisted.ensureDeferred
async def test_concurrent_syncs_are_grouped(make_cephfs_store):
    for method in ("fsync", "sync_fs"):
        store = await make_cephfs_store(sync_method=method)
        paths = [f"user{i}/INBOX/log" for i in range(30)]
        await gather(*(store.append(p, b"record\n") for p in paths))
        jobs = []
        original = store._flush_group

        def counting():
            jobs.append(len(store._sync_paths))
            original()
        store._flush_group = counting
        await gather(*(store.sync([p]) for p in paths))
        # the first caller starts a flush alone; everyone arriving meanwhile shares the next one
        assert len(jobs) < len(paths) and sum(jobs) == len(paths), (method, jobs)
        assert await store.read(paths[-1]) == b"record\n"
    await store.sync([])


@pytest_twisted.ensureDeferred
async def test_write_atomic_replaces_and_leaves_no_temporary(make_cephfs_store):
    store = await make_cephfs_store()
    await store.write_atomic("alice/INBOX/snapshot", b"version 1")
    await store.write_atomic("alice/INBOX/snapshot", b"version 2, longer")
    assert await store.read("alice/INBOX/snapshot") == b"version 2, longer"
    await store.write_atomic("alice/INBOX/empty", b"")
    assert await store.read("alice/INBOX/empty") == b""
    assert await store.listdir("alice/INBOX") == ["empty", "snapshot"]
    raw = await store._job("raw listdir", lambda fs: [e.d_name for e in _entries(fs, store.root + "/alice/INBOX")])
    assert sorted(raw) == [b".", b"..", b"empty", b"snapshot"]


def _entries(fs, path):
    h = fs.opendir(path)
    try:
        while (e := fs.readdir(h)) is not None:
            yield e
    finally:
        fs.closedir(h)


@pytest_twisted.ensureDeferred
async def test_listdir_remove_remove_tree(make_cephfs_store):
    store = await make_cephfs_store()
    assert await store.listdir("nobody") == []
    for p in ("bob/INBOX/log", "bob/INBOX/cache", "bob/Sent/log", "bob/list", "carol/list"):
        await store.append(p, b"x")
    assert await store.listdir("") == ["bob", "carol"]
    assert await store.listdir("bob") == ["INBOX", "Sent", "list"]
    assert await store.listdir("bob/list") == []           # a file is not a directory
    await store.remove("bob/list")
    await store.remove("bob/list")                         # missing is not an error
    assert await store.listdir("bob") == ["INBOX", "Sent"]
    await store.remove_tree("bob")
    await store.remove_tree("bob")
    assert await store.listdir("") == ["carol"]
    assert await store.read("carol/list") == b"x"


@pytest_twisted.ensureDeferred
async def test_paths_cannot_escape_the_root(make_cephfs_store):
    store = await make_cephfs_store()
    for bad in ("../x", "/etc/passwd", "a/../../b", "a//b", "a/./b", "nul\0byte"):
        await expect_error(ErrorKind.INTERNAL, store.read(bad))
    await expect_error(ErrorKind.INTERNAL, store.remove_tree(""))


@pytest_twisted.ensureDeferred
async def test_lock_excludes_within_process(make_cephfs_store):
    store = await make_cephfs_store()
    order = []
    first = await store.lock("alice/INBOX/log")

    async def second():
        lock = await store.lock("alice/INBOX/log", timeout=5)
        order.append("second got it")
        await lock.release()
    waiting = defer.Deferred.fromCoroutine(second())
    await task.deferLater(reactor, 0.2, lambda: None)
    assert order == []
    await expect_error(ErrorKind.TEMPORARY, store.lock("alice/INBOX/log", timeout=0.2))
    order.append("first releases")
    await first.release()
    await first.release()                                  # twice is harmless
    await waiting
    assert order == ["first releases", "second got it"]
    other = await store.lock("alice/Sent/log", timeout=1)  # other paths are independent
    await other.release()


class LockHolder:
    """The second process (tests/ceph/lock_holder.py) and its output lines."""

    def __init__(self, conf, root, path, *extra):
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.ceph.lock_holder", conf, root, path, *extra],
            cwd=ROOT_DIR, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)

    async def line(self) -> str:
        out = await threads.deferToThread(self.proc.stdout.readline).addTimeout(60, reactor)
        if not out:
            raise AssertionError(f"lock holder died: {self.proc.stderr.read().decode()[-2000:]}")
        return out.decode().strip()

    async def finish(self):
        self.proc.stdin.write(b"go\n")
        self.proc.stdin.flush()
        assert await self.line() == "released"
        assert await threads.deferToThread(self.proc.wait, 30) == 0

    async def close(self):
        """Let it exit cleanly (unmounting).  A killed client would keep its capabilities on
        the lock file until the MDS declares its session stale (~60 s), blocking everyone."""
        try:
            await threads.deferToThread(self.proc.wait, 30)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()


@pytest_twisted.ensureDeferred
async def test_lock_excludes_another_process(ceph_cluster, make_cephfs_store):
    store = await make_cephfs_store()
    holder = LockHolder(ceph_cluster.conf_path, store.root, "alice/INBOX/log")
    try:
        assert await holder.line() == "locked"
        t = time.monotonic()
        await expect_error(ErrorKind.TEMPORARY, store.lock("alice/INBOX/log", timeout=1.0))
        assert 0.9 < time.monotonic() - t < 4
        waiting = defer.Deferred.fromCoroutine(store.lock("alice/INBOX/log", timeout=20))
        await task.deferLater(reactor, 0.3, lambda: None)
        assert not waiting.called
        await holder.finish()
        lock = await waiting                                # the other process let go
    finally:
        await holder.close()
    # append_at under the same lock name waits for another process's holder too
    await lock.release()
    holder = LockHolder(ceph_cluster.conf_path, store.root, "alice/INBOX/log")
    try:
        assert await holder.line() == "locked"
        pending = defer.Deferred.fromCoroutine(store.append_at("alice/INBOX/log", 0, b"r",
                                                               lock="alice/INBOX/log"))
        await task.deferLater(reactor, 0.3, lambda: None)
        assert not pending.called
        await holder.finish()
        assert await pending == (True, None)
        lock = await store.lock("alice/INBOX/log", timeout=5)
    finally:
        await holder.close()
    # and the other way round: while we hold it, the other process cannot take it
    tryer = LockHolder(ceph_cluster.conf_path, store.root, "alice/INBOX/log", "--try")
    try:
        assert await tryer.line() == "busy"
    finally:
        await tryer.close()
    await lock.release()
    tryer = LockHolder(ceph_cluster.conf_path, store.root, "alice/INBOX/log", "--try")
    try:
        assert await tryer.line() == "locked"
    finally:
        await tryer.close()


@pytest_twisted.ensureDeferred
async def test_stopped_osd_gives_temporary_then_recovers(ceph_cluster, make_cephfs_store):
    store = await make_cephfs_store(op_timeout=1.5)
    await store.append("u/log", b"before\n")
    await store.sync(["u/log"])
    ceph_cluster.signal_daemon("osd.0", signal.SIGSTOP)
    try:
        await store.append("u/log", b"during\n")           # buffered in the client: fine
        t = time.monotonic()
        await expect_error(ErrorKind.TEMPORARY, store.sync(["u/log"]))
        assert time.monotonic() - t < 1.5 + 3.0   # deadline plus slack for a loaded machine
    finally:
        ceph_cluster.signal_daemon("osd.0", signal.SIGCONT)
    await store.sync(["u/log"])
    assert await store.read("u/log") == b"before\nduring\n"


@pytest_twisted.ensureDeferred
async def test_unmountable_cluster_fails_start_promptly(ceph_cluster, tmp_path):
    from plugins.cephfs.store import CephFSIndexStore
    from tests.ceph.test_rados_store import _dead_cluster_conf
    conf = _dead_cluster_conf(tmp_path)
    store = CephFSIndexStore(ceph_conf=conf, op_timeout=2.0)
    t = time.monotonic()
    err = await expect_error(ErrorKind.TEMPORARY, store.start())
    assert time.monotonic() - t < 8
    assert f"cannot mount CephFS at {conf}" in err.detail


@pytest_twisted.ensureDeferred
async def test_lease_is_given_back_to_another_process(ceph_cluster, make_cephfs_store):
    """A process committing without pause keeps its flock as a lease between commits, yet
    another process waiting for the lock gets it within LEASE_MAX_HOLD leases; the commits
    wait meanwhile and none is lost or reordered."""
    from plugins.cephfs.store import LEASE_MAX_HOLD
    lease = 0.4
    store = await make_cephfs_store(lock_lease=lease)
    log = "alice/INBOX/log"
    written = []
    stop = []

    async def commit_forever():
        offset = 0
        n = 0
        while not stop:
            record = b"record %d\n" % n
            assert await store.append_at_durable(log, offset, record, lock=log) == (True, None)
            written.append(record)
            offset += len(record)
            n += 1

    committer = defer.Deferred.fromCoroutine(commit_forever())
    await task.deferLater(reactor, 0.5, lambda: None)
    assert written                                        # committing, lease held between commits
    holder = LockHolder(ceph_cluster.conf_path, store.root, log)
    try:
        t = time.monotonic()
        assert await holder.line() == "locked"
        # Not starved: without leases given back it would wait until the committer stops (the
        # line below would then time out).  The slack covers the holder's own start-up (a
        # CephFS mount), which took up to 9 s on a loaded host.
        assert time.monotonic() - t < LEASE_MAX_HOLD * lease + 15
        count = len(written)
        await task.deferLater(reactor, 0.5, lambda: None)
        assert len(written) == count                      # our commits wait while it holds the lock
        await holder.finish()
    finally:
        await holder.close()
    await task.deferLater(reactor, 0.5, lambda: None)
    stop.append(True)
    await committer
    assert len(written) > count                           # and resume once it let go
    assert await store.read(log) == b"".join(written)
