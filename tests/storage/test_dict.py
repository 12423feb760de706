"""One dictionary suite for every driver: local files (tmp dir) and RADOS omap (the session's
throwaway Ceph cluster).  Real backends only; the cross-process test runs two OS processes."""

from __future__ import annotations

import subprocess
import sys
import uuid

import pytest
import pytest_twisted

from mailserver import config, plugins
from mailserver.storage.drivers import DICT_MAX_VALUE
from mailserver.storage.errors import ErrorKind, StorageError
from tests.storage.dict_support import DRIVERS, POOL, overrides, write_config


@pytest.fixture(params=DRIVERS)
def driver(request):
    """The driver under test; the Ceph cluster is started for the rados one only."""
    if request.param == "rados":
        request.getfixturevalue("ceph_cluster")
        request.applymarker(pytest.mark.ceph)
    return request.param


@pytest.fixture
def sections(driver, request, tmp_path):
    """This test's configuration sections (its own state dir / namespace suffix)."""
    conf = request.getfixturevalue("ceph_cluster").conf_path if driver == "rados" else None
    return overrides(driver, tmp_path, uuid.uuid4().hex[:10], conf)


@pytest_twisted.async_yield_fixture
async def d(sections):
    """A started dictionary of the driver under test, stopped after the test."""
    cfg = config.load(None, sections)
    dictionary = plugins.load(plugins.DICTS, cfg.dict.driver).from_config(cfg)
    await dictionary.start()
    yield dictionary
    await dictionary.stop()


@pytest.fixture
def shared():
    """A shared/ subtree no other test (or earlier session on the same cluster) uses."""
    return f"shared/t{uuid.uuid4().hex[:10]}/"


async def expect(kind: ErrorKind, coro) -> StorageError:
    """Await ``coro``; it must fail with a StorageError of ``kind``."""
    with pytest.raises(StorageError) as info:
        await coro
    assert info.value.kind is kind, info.value
    return info.value


@pytest_twisted.ensureDeferred
async def test_get_set_unset(d, shared):
    assert await d.get("ann", "priv/a") is None
    await d.set("ann", "priv/a", "1 ü")
    await d.set("ann", shared + "b", "")
    assert await d.get("ann", "priv/a") == "1 ü"
    assert await d.get("ann", shared + "b") == ""
    await d.set("ann", "priv/a", "two")
    assert await d.get("ann", "priv/a") == "two"
    await d.unset("ann", "priv/a")
    await d.unset("ann", "priv/never-set")
    assert await d.get("ann", "priv/a") is None
    await d.unset("nobody", "priv/x")          # unset in a dictionary that does not exist
    assert await d.iterate("nobody", "priv/") == {}


@pytest_twisted.ensureDeferred
async def test_increment(d, shared):
    await d.increment("ann", "priv/n", 5)
    assert await d.get("ann", "priv/n") == "5"
    await d.increment("ann", "priv/n", -7)
    assert await d.get("ann", "priv/n") == "-2"
    await d.increment("ann", shared + "n", -3)
    assert await d.get("ann", shared + "n") == "-3"
    await d.transaction("ann", sets={"priv/m": "10", "priv/gone": None}, increments={"priv/m": 2})
    assert await d.get("ann", "priv/m") == "12"     # set first, then incremented
    await d.transaction("ann", sets={"priv/m": None}, increments={"priv/m": 4})
    assert await d.get("ann", "priv/m") == "4"      # unset, then counted from 0


@pytest_twisted.ensureDeferred
async def test_iterate_recursive_and_one_level(d, shared):
    keys = {"priv/m/a": "1", "priv/m/b": "2", "priv/m/sub/c": "3", "priv/m/sub/deeper/d": "4",
            "priv/other": "5", "priv/mx": "6"}
    await d.transaction("ann", sets=keys)
    await d.transaction("ann", sets={shared + "x": "s1", shared + "y/z": "s2"})
    assert await d.iterate("ann", "priv/m/") == {k: v for k, v in keys.items() if k.startswith("priv/m/")}
    assert await d.iterate("ann", "priv/m/", recursive=False) == {"priv/m/a": "1", "priv/m/b": "2"}
    assert await d.iterate("ann", "priv/", recursive=False) == {"priv/other": "5", "priv/mx": "6"}
    assert await d.iterate("ann", "priv/") == keys
    assert await d.iterate("ann", shared, recursive=False) == {shared + "x": "s1"}
    assert await d.iterate("ann", shared) == {shared + "x": "s1", shared + "y/z": "s2"}
    assert await d.iterate("ann", "priv/nothing/") == {}
    for bad in ("priv", "other/", "priv/m", "priv//", "shared/a//"):
        await expect(ErrorKind.INVALID, d.iterate("ann", bad))


@pytest_twisted.ensureDeferred
async def test_large_iteration_pages(d):
    keys = {f"priv/big/{i:05d}": f"v{i}" for i in range(2500)}
    keys.update({f"priv/big/sub/{i}": "deep" for i in range(10)})
    await d.transaction("ann", sets=keys)
    await d.set("ann", "priv/bigger", "outside")      # sorts right after the prefix's keys
    got = await d.iterate("ann", "priv/big/")
    assert got == keys
    flat = await d.iterate("ann", "priv/big/", recursive=False)
    assert len(flat) == 2500 and "priv/big/sub/0" not in flat


@pytest_twisted.ensureDeferred
async def test_transaction_all_or_nothing(d, shared):
    await d.transaction("ann", sets={"priv/word": "hello", "priv/n": "1", shared + "n": "7"})
    # A non-counter incremented: nothing of the transaction is applied, in either half.
    await expect(ErrorKind.INVALID, d.transaction(
        "ann", sets={"priv/new": "x", shared + "new": "y"}, increments={"priv/n": 1, "priv/word": 1}))
    await expect(ErrorKind.INVALID, d.transaction(
        "ann", sets={"priv/new": "x"}, increments={"priv/n": 1, shared + "n": 1, shared + "bad": 1.5}))
    await d.set("ann", shared + "text", "12a")
    await expect(ErrorKind.INVALID, d.transaction(
        "ann", sets={"priv/new": "x"}, increments={"priv/n": 1, shared + "text": 1}))
    for value in (" 5", "+5", "5_0", ""):
        await d.set("ann", "priv/odd", value)
        await expect(ErrorKind.INVALID, d.increment("ann", "priv/odd", 1))
    assert await d.get("ann", "priv/new") is None and await d.get("ann", shared + "new") is None
    assert await d.get("ann", "priv/n") == "1" and await d.get("ann", shared + "n") == "7"
    # A valid transaction over both halves applies both.
    await d.transaction("ann", sets={"priv/new": "x", shared + "new": "y"},
                        increments={"priv/n": 1, shared + "n": -1})
    assert [await d.get("ann", k) for k in ("priv/new", shared + "new", "priv/n", shared + "n")] == \
        ["x", "y", "2", "6"]


@pytest_twisted.ensureDeferred
async def test_concurrent_transactions_in_one_process(d, shared):
    """Many increments of one object at once (the rados driver commits them in batches), a
    refused one among them: each is all or nothing on its own."""
    from twisted.internet import defer
    await d.set("ann", "priv/word", "mot clé")     # not a counter, and not ASCII
    good = [d.increment("ann", "priv/c", 1) for _ in range(300)]
    bad = [d.transaction("ann", sets={"priv/bad": "1"}, increments={"priv/c": 1000, "priv/word": 1})]
    both = [d.transaction("ann", increments={"priv/c": 1, shared + "c": 1}) for _ in range(20)]
    results = await defer.DeferredList([defer.Deferred.fromCoroutine(c) for c in good + bad + both],
                                       consumeErrors=True)
    failures = [r for ok, r in results if not ok]
    assert len(failures) == 1 and failures[0].value.kind is ErrorKind.INVALID
    assert await d.get("ann", "priv/c") == "320" and await d.get("ann", shared + "c") == "20"
    assert await d.get("ann", "priv/bad") is None


@pytest_twisted.ensureDeferred
async def test_key_and_value_validation(d, shared):
    for key in ("a/b", "private/x", "priv/", "priv//x", "priv/x/", "priv/a\0b", "priv/" + "x" * 1020, 5):
        await expect(ErrorKind.INVALID, d.set("ann", key, "v"))
        await expect(ErrorKind.INVALID, d.increment("ann", key, 1))
    for key in ("a/b", "priv/x/"):
        await expect(ErrorKind.INVALID, d.get("ann", key))
    await expect(ErrorKind.INVALID, d.set("ann", "priv/v", "nul\0"))
    await expect(ErrorKind.INVALID, d.set("ann", "priv/v", 12))
    await expect(ErrorKind.INVALID, d.set("ann", "priv/v", "\ud800"))
    await expect(ErrorKind.INVALID, d.increment("ann", "priv/v", True))
    await expect(ErrorKind.INVALID, d.increment("ann", "priv/v", "1"))
    await expect(ErrorKind.LIMIT, d.set("ann", "priv/v", "é" * (DICT_MAX_VALUE // 2 + 1)))
    # A bad key or value anywhere in a transaction: nothing written.
    await expect(ErrorKind.INVALID, d.transaction("ann", sets={"priv/ok": "1", shared + "ok": "1", "x/y": "2"}))
    await expect(ErrorKind.LIMIT, d.transaction("ann", sets={"priv/ok": "1", shared + "v": "x" * (DICT_MAX_VALUE + 1)}))
    assert await d.get("ann", "priv/ok") is None and await d.get("ann", shared + "ok") is None
    await d.set("ann", "priv/" + "k" * 1019, "v" * DICT_MAX_VALUE)    # the largest key and value fit
    assert await d.get("ann", "priv/" + "k" * 1019) == "v" * DICT_MAX_VALUE


@pytest_twisted.ensureDeferred
async def test_priv_isolated_shared_visible(d, shared):
    await d.transaction("ann", sets={"priv/secret": "ann's", shared + "note": "for all"},
                        increments={"priv/c": 1, shared + "c": 1})
    await d.transaction("bob", sets={"priv/secret": "bob's"}, increments={"priv/c": 5, shared + "c": 1})
    assert await d.get("ann", "priv/secret") == "ann's" and await d.get("bob", "priv/secret") == "bob's"
    assert await d.get("ann", "priv/c") == "1" and await d.get("bob", "priv/c") == "5"
    assert await d.get("bob", shared + "note") == "for all"
    assert await d.get("ann", shared + "c") == "2" == await d.get("bob", shared + "c")
    assert await d.iterate("carol", "priv/") == {}
    assert await d.iterate("carol", shared) == {shared + "note": "for all", shared + "c": "2"}


def test_two_processes_increment_one_counter(sections, tmp_path):
    """Two OS processes, 10,000 increments each of one counter (each its own transaction, 8 in
    flight per process): no update lost, exactly 20,000."""
    conf = write_config(tmp_path / "dict.toml", sections)
    procs = [subprocess.Popen([sys.executable, "-m", "tests.storage.dict_incrementer", conf, "ann",
                               "priv/count", "10000", "8"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
             for _ in range(2)]
    for p in procs:
        out, err = p.communicate(timeout=600)
        assert p.returncode == 0, err.decode()[-2000:]
        print(out.decode(), end="")
    out = subprocess.run([sys.executable, "-m", "mailserver", "dict", "get", "--config", conf, "ann", "priv/count"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout == "20000\n"


@pytest.fixture
def rados_sections(ceph_cluster, tmp_path):
    """Sections of the rados driver (for the tests only it has)."""
    return overrides("rados", tmp_path, uuid.uuid4().hex[:10], ceph_cluster.conf_path)


@pytest.mark.ceph
@pytest_twisted.ensureDeferred
async def test_rados_layout_seen_by_rados_cli(ceph_cluster, rados_sections, shared):
    cfg = config.load(None, rados_sections)
    d = plugins.load(plugins.DICTS, "rados").from_config(cfg)
    await d.start()
    try:
        await d.transaction("ann@example.org", sets={"priv/urlauth/k": "sécret", shared + "s": "1"},
                            increments={"priv/quota/storage": 2048})
        from plugins.rados.store import RadosObjectStore
        store = RadosObjectStore.from_config(cfg)       # gc must never see the dict as mail
        await store.start()
        ns = store.namespace("ann@example.org")
        assert await store.list(ns) == []
        await store.stop()
    finally:
        await d.stop()

    def listomapvals(ns, oid):
        return subprocess.run(["rados", "-c", ceph_cluster.conf_path, "-p", POOL, "-N", ns,
                               "listomapvals", oid], capture_output=True, text=True, check=True).stdout
    out = listomapvals(ns, "dict")
    assert "priv/urlauth/k\nvalue (7 bytes) :" in out and "priv/quota/storage\nvalue (4 bytes) :" in out
    assert "|2048|" in out and "73 c3 a9 63 72 65 74" in out      # a hex dump of the UTF-8 bytes
    assert f"{shared}s\nvalue (1 bytes) :" in listomapvals("#dict-shared", "dict-shared")


@pytest.mark.ceph
@pytest_twisted.ensureDeferred
async def test_rados_start_fails_temporary_when_unreachable(ceph_cluster, tmp_path):
    from plugins.rados.dict import RadosDict
    from tests.ceph.test_rados_store import _dead_cluster_conf
    conf = _dead_cluster_conf(tmp_path)
    d = RadosDict(ceph_conf=conf, pool=POOL, op_timeout=2.0)
    err = await expect(ErrorKind.TEMPORARY, d.start())
    assert f"cannot connect to Ceph at {conf}" in err.detail
    await expect(ErrorKind.TEMPORARY, d.get("ann", "priv/x"))     # not connected: no hang, no crash


@pytest.mark.ceph
def test_server_exits_when_dict_ceph_unreachable(ceph_cluster, tmp_path):
    from tests.ceph.test_rados_store import _dead_cluster_conf
    from tests.harness import RunningServer
    dead = _dead_cluster_conf(tmp_path)
    server = RunningServer(str(tmp_path), users=1, extra_config=(
        f'[dict]\ndriver = "rados"\nceph_conf = "{dead}"\nop_timeout = 2.0\n'))
    with pytest.raises(RuntimeError) as info:
        server.start(timeout=30)
    assert "server exited with 1" in str(info.value)
    assert "cannot connect to Ceph at " + dead in server.log_text()
