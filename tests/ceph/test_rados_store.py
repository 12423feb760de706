"""RadosObjectStore against the real throwaway cluster (no mocks)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time

import pytest
import pytest_twisted
from twisted.internet import defer

from mailserver.storage import drivers
from mailserver.storage.errors import ErrorKind, StorageError

pytestmark = pytest.mark.ceph

EVERY_META = {
    drivers.META_MAILBOX_GUID: "0123456789abcdef0123456789abcdef",
    drivers.META_GUID: "fedcba9876543210fedcba9876543210",
    drivers.META_RECEIVED: "1700000000",
    drivers.META_SAVE_DATE: "1700000100",
    drivers.META_PHYSICAL_SIZE: "26",
    drivers.META_VIRTUAL_SIZE: "27",
    drivers.META_ORIG_MAILBOX: "Entwürfe/2024",
    drivers.META_VERSION: drivers.OBJECT_FORMAT_VERSION,
    drivers.META_POP3_UIDL: "UID42-1700000000",
    drivers.META_FROM_ENVELOPE: "sender@example.org",
}
BODY = b"Subject: hi\r\n\r\nHello.\r\nBye\n"


def raw_ioctx(cluster, pool, ns):
    """A plain librados handle, to check what the driver wrote independently of it."""
    import rados
    r = rados.Rados(conffile=cluster.conf_path)
    r.connect(timeout=5)
    io = r.open_ioctx(pool)
    io.set_namespace(ns)
    return r, io


async def expect_error(kind: ErrorKind, coro):
    with pytest.raises(StorageError) as info:
        await coro
    assert info.value.kind is kind, info.value
    return info.value


@pytest_twisted.ensureDeferred
async def test_put_stores_data_xattrs_and_initial_ref_in_one_object(ceph_cluster, make_rados_store, unique):
    store = await make_rados_store()
    ns = store.namespace(f"alice-{unique}@example.org")
    assert ns == f"alice-{unique}@example.org_namespace"
    await store.put(ns, "m1", BODY, EVERY_META)

    assert await store.get(ns, "m1") == BODY
    assert await store.get_meta(ns, "m1") == EVERY_META
    assert await store.refs(ns, "m1") == {""}

    r, io = raw_ioctx(ceph_cluster, "mailtest", ns)
    try:
        assert io.read("m1", 1 << 20) == BODY
        assert {k: v.decode() for k, v in io.get_xattrs("m1")} == EVERY_META
        import rados
        with rados.ReadOpCtx() as op:
            it, _ = io.get_omap_vals(op, "", "", 100)
            io.operate_read_op(op, "m1")
            assert [key for key, _ in it] == ["ref."]     # empty value (None in python-rados)
    finally:
        io.close()
        r.shutdown()

    # and once through the rados CLI, as an admin would look at it
    out = subprocess.run(["rados", "-c", ceph_cluster.conf_path, "-p", "mailtest", "--namespace", ns,
                          "getxattr", "m1", "G"], capture_output=True, timeout=30, check=True).stdout
    assert out.decode() == EVERY_META["G"]


@pytest_twisted.ensureDeferred
async def test_version_xattr_added_when_missing(make_rados_store, unique):
    store = await make_rados_store()
    ns = store.namespace(unique)
    await store.put(ns, "m", b"x", {"G": "a" * 32})
    assert (await store.get_meta(ns, "m"))["I"] == drivers.OBJECT_FORMAT_VERSION


@pytest_twisted.ensureDeferred
async def test_ranges(make_rados_store, unique):
    store = await make_rados_store(rbox={"body_cache_bytes": 0})    # every read goes to the OSD
    ns = store.namespace(unique)
    data = bytes(range(256)) * 1500                  # 384000 bytes: more than one first read (64 KiB)
    await store.put(ns, "big", data, {})
    await store.put(ns, "small", BODY, {})
    assert await store.get(ns, "big") == data
    assert await store.get(ns, "big", 1000) == data[1000:]
    assert await store.get(ns, "big", 300000, 5000) == data[300000:305000]
    assert await store.get(ns, "big", len(data) - 10, 100) == data[-10:]
    assert await store.get(ns, "big", len(data) + 5) == b""
    assert await store.get(ns, "small", 3, 0) == b""
    assert await store.get(ns, "small", 0, 7) == BODY[:7]
    await expect_error(ErrorKind.NOT_FOUND, store.get(ns, "missing"))
    await expect_error(ErrorKind.NOT_FOUND, store.get(ns, "missing", 0, 10))
    await expect_error(ErrorKind.NOT_FOUND, store.get(ns, "missing", 0, 0))
    await expect_error(ErrorKind.NOT_FOUND, store.get_meta(ns, "missing"))


@pytest_twisted.ensureDeferred
async def test_directory_cache_serves_bodies_without_rados_reads(ceph_cluster, make_rados_store, unique,
                                                                 tmp_path):
    """rbox's directory body cache in front of the RADOS driver: a miss reads RADOS and fills
    the directory; after a restart (new wrapper, same directory) the bodies come from disk
    even with the objects gone behind its back; a delete removes the file; the cap holds."""
    from plugins.rbox.diskcache import DirectoryCache
    store = await make_rados_store()
    ns = store.namespace(unique)
    bodies = {f"m{i}": BODY + b"%d" % i for i in range(6)}
    for oid, data in bodies.items():
        await store.put(ns, oid, data, {})
    cache = DirectoryCache(store, str(tmp_path / "bodies"), max_bytes=10 * len(BODY))
    await cache.load()                                    # the driver is started already
    got = await cache.get_many(ns, list(bodies) + ["missing"])
    assert got[:6] == list(bodies.values())
    assert isinstance(got[6], StorageError) and got[6].kind is ErrorKind.NOT_FOUND
    assert cache.misses == 7 and cache.hits == 0
    await cache.flush()                                   # written in the background

    again = DirectoryCache(store, str(tmp_path / "bodies"), max_bytes=10 * len(BODY))
    await again.load()
    r, io = raw_ioctx(ceph_cluster, "mailtest", ns)
    try:
        io.remove_object("m1")                            # behind the driver's back
    finally:
        io.close()
        r.shutdown()
    assert await again.get(ns, "m1") == bodies["m1"]      # from the directory
    assert await again.get(ns, "m2", 2, 5) == bodies["m2"][2:7]
    assert again.hits == 2 and again.misses == 0
    await again.delete(ns, "m2")
    await expect_error(ErrorKind.NOT_FOUND, again.get(ns, "m2"))
    assert again.bytes <= again.max_bytes
    await again.remove_ref(ns, "m3", "")                  # last reference: object and file go
    await expect_error(ErrorKind.NOT_FOUND, again.get(ns, "m3"))


@pytest_twisted.ensureDeferred
async def test_state_objects(make_rados_store, unique):
    store = await make_rados_store()
    ns = store.namespace(unique)
    assert await store.get_state(ns, "ckpt-1") is None
    await store.put(ns, "mail", BODY, {})
    await store.put_state(ns, "ckpt-1", b"first")
    await store.put_state(ns, "ckpt-1", b"second, replacing")
    big = os.urandom(200_000)                       # more than one first read
    await store.put_state(ns, "ckpt-2", big)
    assert await store.get_state(ns, "ckpt-1") == b"second, replacing"
    assert await store.get_state(ns, "ckpt-2") == big
    assert await store.list_states(ns) == ["ckpt-1", "ckpt-2"]
    assert await store.list(ns) == ["mail"]          # states are not mail
    assert ns in await store.list_namespaces()
    await store.delete_state(ns, "ckpt-1")
    await store.delete_state(ns, "ckpt-1")
    assert await store.list_states(ns) == ["ckpt-2"]
    for bad in ("", "a/b", ".hidden"):
        await expect_error(ErrorKind.INVALID, store.put_state(ns, bad, b"x"))


@pytest_twisted.ensureDeferred
async def test_put_existing_oid_refused_and_original_kept(make_rados_store, unique):
    store = await make_rados_store()
    ns = store.namespace(unique)
    await store.put(ns, "m", b"first", {"G": "1" * 32})
    await expect_error(ErrorKind.EXISTS, store.put(ns, "m", b"second", {"G": "2" * 32}))
    assert await store.get(ns, "m") == b"first"
    assert (await store.get_meta(ns, "m"))["G"] == "1" * 32


@pytest_twisted.ensureDeferred
async def test_refs_lifecycle(make_rados_store, unique):
    store = await make_rados_store()
    ns = store.namespace(unique)
    await store.put(ns, "m", BODY, {})
    await store.add_ref(ns, "m", "INBOX-guid:7")
    await store.add_ref(ns, "m", "Archive-guid:3")
    assert await store.refs(ns, "m") == {"", "INBOX-guid:7", "Archive-guid:3"}
    assert await store.remove_ref(ns, "m", "") is False
    assert await store.remove_ref(ns, "m", "INBOX-guid:7") is False
    assert await store.remove_ref(ns, "m", "no-such-ref") is False
    assert await store.list(ns) == ["m"]
    assert await store.remove_ref(ns, "m", "Archive-guid:3") is True
    assert await store.list(ns) == []
    await expect_error(ErrorKind.NOT_FOUND, store.get(ns, "m"))
    await expect_error(ErrorKind.NOT_FOUND, store.add_ref(ns, "m", "again"))
    assert await store.remove_ref(ns, "m", "") is False
    await store.delete(ns, "m")                   # missing is not an error


@pytest_twisted.ensureDeferred
async def test_concurrent_removals_delete_exactly_once(make_rados_store, unique):
    store = await make_rados_store()
    ns = store.namespace(unique)
    await store.put(ns, "m", BODY, {})
    refs = [f"r{i}" for i in range(12)]
    for ref in refs:
        await store.add_ref(ns, "m", ref)
    await store.remove_ref(ns, "m", "")
    results = await defer.gatherResults(
        [defer.Deferred.fromCoroutine(store.remove_ref(ns, "m", ref)) for ref in refs])
    assert results.count(True) == 1
    assert await store.list(ns) == []


@pytest_twisted.ensureDeferred
async def test_add_ref_racing_last_removal_is_consistent(make_rados_store, unique):
    """COPY (add_ref) racing EXPUNGE of the last reference: either the copy wins and the object
    lives with its new reference, or the add fails NOT_FOUND and the object is gone."""
    store = await make_rados_store()
    ns = store.namespace(unique)
    outcomes = set()
    for i in range(15):
        oid = f"m{i}"
        await store.put(ns, oid, BODY, {})
        add = defer.Deferred.fromCoroutine(store.add_ref(ns, oid, "copy"))
        rm = defer.Deferred.fromCoroutine(store.remove_ref(ns, oid, ""))
        add_result, rm_result = await defer.DeferredList([add, rm], consumeErrors=True)
        deleted = rm_result[1]
        if add_result[0]:
            assert deleted is False
            assert await store.refs(ns, oid) == {"copy"}
            assert await store.get(ns, oid) == BODY
            outcomes.add("copy won")
        else:
            assert add_result[1].value.kind is ErrorKind.NOT_FOUND
            assert deleted is True
            assert oid not in await store.list(ns)
            outcomes.add("expunge won")
    assert outcomes                                  # the race ran; both orders are correct


@pytest_twisted.ensureDeferred
async def test_namespaces_isolate_users(make_rados_store, unique):
    store = await make_rados_store()
    alice, bob = store.namespace(f"alice{unique}"), store.namespace(f"bob{unique}")
    await store.put(alice, "same-oid", b"alice's mail", {})
    await store.put(bob, "same-oid", b"bob's mail", {})
    await store.put(bob, "other", b"more", {})
    assert await store.get(alice, "same-oid") == b"alice's mail"
    assert await store.get(bob, "same-oid") == b"bob's mail"
    assert await store.list(alice) == ["same-oid"]
    assert sorted(await store.list(bob)) == ["other", "same-oid"]
    await store.delete(alice, "same-oid")
    assert await store.get(bob, "same-oid") == b"bob's mail"


@pytest_twisted.ensureDeferred
async def test_too_big_is_refused_before_writing(make_rados_store, unique):
    store = await make_rados_store(max_object_size=1 << 20)
    assert store.max_object_size == 1 << 20
    ns = store.namespace(unique)
    await expect_error(ErrorKind.TOO_BIG, store.put(ns, "huge", b"x" * ((1 << 20) + 1), {}))
    assert await store.list(ns) == []
    await store.put(ns, "fits", b"x" * (1 << 20), {})


@pytest_twisted.ensureDeferred
async def test_limits_read_from_cluster(make_rados_store):
    store = await make_rados_store()
    assert store.max_write_size == 90 * 1024 * 1024       # the OSD's osd_max_write_size (MB)
    assert store.max_object_size == 128 * 1024 * 1024     # osd_max_object_size


@pytest_twisted.ensureDeferred
async def test_multipart_write_over_max_write_size(ceph_cluster, make_rados_store, unique):
    store = await make_rados_store(max_write_size=1 << 20, rbox={"body_cache_bytes": 0})
    ns = store.namespace(unique)
    data = os.urandom(3 * (1 << 20) + 12345)             # four parts
    await store.put(ns, "big", data, {"G": "b" * 32, "Z": str(len(data))})
    assert await store.get(ns, "big") == data
    assert await store.get(ns, "big", 2 << 20, 100) == data[2 << 20:(2 << 20) + 100]
    assert (await store.get_meta(ns, "big"))["Z"] == str(len(data))
    assert await store.refs(ns, "big") == {""}
    # a second put of the same oid fails on its first part and leaves the object whole
    await expect_error(ErrorKind.EXISTS, store.put(ns, "big", data[::-1], {}))
    assert await store.get(ns, "big") == data


@pytest_twisted.ensureDeferred
async def test_object_without_version_xattr_is_incomplete(ceph_cluster, make_rados_store, unique):
    """What a crashed multipart write leaves: data, no metadata -- never reported as a mail."""
    store = await make_rados_store()
    ns = store.namespace(unique)
    r, io = raw_ioctx(ceph_cluster, "mailtest", ns)
    try:
        io.write_full("partial", b"first part only")
    finally:
        io.close()
        r.shutdown()
    await expect_error(ErrorKind.NOT_FOUND, store.get_meta(ns, "partial"))
    assert await store.list(ns) == ["partial"]             # visible to a garbage collector
    await store.delete(ns, "partial")
    assert await store.list(ns) == []


@pytest_twisted.ensureDeferred
async def test_pool_created_if_missing(ceph_cluster, make_rados_store, unique):
    pool = f"created-{unique}"
    store = await make_rados_store(pool=pool)
    await store.put(store.namespace("u"), "m", b"x", {})
    r, io = raw_ioctx(ceph_cluster, pool, store.namespace("u"))
    try:
        assert io.read("m") == b"x"
        assert "mailserver" in io.application_list()
    finally:
        io.close()
        r.shutdown()


async def raw_listing(store, ns):
    """The listing step alone, without our deadline around it: librados' timeout must
    surface as an error, not as an empty namespace."""
    from twisted.internet import threads
    io = store._thread_ioctxs.get()
    try:
        io.set_namespace(ns)
        return await threads.deferToThread(store._listing, io)
    finally:
        store._thread_ioctxs.put(io)


@pytest_twisted.ensureDeferred
async def test_stopped_osd_gives_temporary_within_deadline_then_recovers(ceph_cluster, make_rados_store, unique):
    store = await make_rados_store(op_timeout=1.5)
    # whole seconds: librados' own timeout ends a listing together with our deadline, and
    # python-rados would then report an empty listing instead of an error
    whole = await make_rados_store(op_timeout=2.0)
    ns = store.namespace(unique)
    await store.put(ns, "before", BODY, {})
    ceph_cluster.signal_daemon("osd.0", signal.SIGSTOP)
    try:
        t = time.monotonic()
        ops = [store.put(ns, "during", BODY, {}), store.get(ns, "before"),
               store.get_meta(ns, "before"), store.add_ref(ns, "before", "x"), store.list(ns),
               whole.list(ns), whole.list_states(ns), raw_listing(whole, ns)]
        await defer.gatherResults([defer.Deferred.fromCoroutine(expect_error(ErrorKind.TEMPORARY, op))
                                   for op in ops])
        assert time.monotonic() - t < 2.0 + 3.0        # deadlines plus the 0.25 s sweep, with slack for load
    finally:
        ceph_cluster.signal_daemon("osd.0", signal.SIGCONT)
    assert await store.get(ns, "before") == BODY
    await store.put(ns, "after", BODY, {})
    assert await store.get(ns, "after") == BODY


def _dead_cluster_conf(tmp_path) -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]                        # nothing listens there once closed
    conf = tmp_path / "dead.conf"
    conf.write_text(f"[global]\nmon host = v2:127.0.0.1:{port}\nauth client required = none\n"
                    "auth cluster required = none\nauth service required = none\n"
                    "log file = /dev/null\n")
    return str(conf)


@pytest_twisted.ensureDeferred
async def test_unreachable_cluster_fails_start_promptly(ceph_cluster, tmp_path):
    from plugins.rados.store import RadosObjectStore
    conf = _dead_cluster_conf(tmp_path)
    store = RadosObjectStore(ceph_conf=conf, op_timeout=2.0)
    t = time.monotonic()
    err = await expect_error(ErrorKind.TEMPORARY, store.start())
    assert time.monotonic() - t < 8
    assert f"cannot connect to Ceph at {conf}" in err.detail
    missing = RadosObjectStore(ceph_conf=str(tmp_path / "nope.conf"), op_timeout=2.0)
    err = await expect_error(ErrorKind.TEMPORARY, missing.start())
    assert "nope.conf" in err.detail


def test_config_section_declared():
    from mailserver import config
    from tests.ceph.conftest import driver_config
    cfg = driver_config("/etc/ceph/ceph.conf", rados={"pool": "p", "max_write_size": 5})
    assert cfg.rados.pool == "p" and cfg.rados.client_name == "client.admin"
    assert cfg.rados.max_write_size == 5 and cfg.rados.op_timeout == 3.0
    with pytest.raises(config.ConfigError, match=r"\[rados\] op_timeout"):
        driver_config("/etc/ceph/ceph.conf", rados={"op_timeout": 0})
    with pytest.raises(config.ConfigError, match=r"\[rados\] colour: unknown key"):
        driver_config("/etc/ceph/ceph.conf", rados={"colour": "blue"})


@pytest_twisted.ensureDeferred
async def test_get_many_reads_a_batch_with_errors_per_object(make_rados_store, unique):
    store = await make_rados_store(rbox={"body_cache_bytes": 0})    # every read goes to the OSD
    ns = store.namespace(f"batch-{unique}@example.org")
    big = os.urandom(3 << 20)                    # past the driver's first read: stat + rest
    await store.put(ns, "small", BODY, {})
    await store.put(ns, "big", big, {})
    got = await store.get_many(ns, ["big", "absent", "small", "big"], [1, 1, 1, 1])
    assert got[0] == big and got[2] == BODY and got[3] == big
    assert isinstance(got[1], StorageError) and got[1].kind is ErrorKind.NOT_FOUND
    assert await store.get_many(ns, []) == []


@pytest_twisted.ensureDeferred
async def test_get_many_with_the_index_sizes_reads_each_object_once(make_rados_store, unique):
    store = await make_rados_store(rbox={"body_cache_bytes": 0})
    ns = store.namespace(f"sized-{unique}@example.org")
    big = os.urandom(3 << 20)                    # past the first read of a get without a size
    await store.put(ns, "small", BODY, {})
    await store.put(ns, "big", big, {})
    reads = []
    real_read, real_stat = store._read, store._stat

    async def no_stat(*args):
        raise AssertionError("a sized read needs no stat")
    store._stat = no_stat
    try:
        got = await store.get_many(ns, ["big", "absent", "small"], [len(big), 10, len(BODY)])
    finally:
        store._stat = real_stat
    assert got[0] == big and got[2] == BODY
    assert isinstance(got[1], StorageError) and got[1].kind is ErrorKind.NOT_FOUND
    # A size hint that is too small (a corrupt index) still yields the whole object.
    store._read = lambda *a: reads.append(a) or real_read(*a)
    got = await store.get_many(ns, ["big", "small"], [1000, len(BODY) + 50])
    assert got == [big, BODY]
    assert len(reads) == 2                       # only the undersized one: get, first read and rest
