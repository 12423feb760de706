"""Both drivers as a cephx client with only the capabilities a mail server needs, on a cluster
of their own with authentication on (the session cluster runs without auth)."""

from __future__ import annotations

import pytest
import pytest_twisted

from mailserver.devceph import DevCeph, DevCephError
from mailserver.storage.errors import ErrorKind, StorageError
from plugins.cephfs.store import CephFSIndexStore
from plugins.rados.store import RadosObjectStore

pytestmark = pytest.mark.ceph

MAIL_CAPS = ["mon", "allow r",
             "mds", "allow rw",
             "osd", "allow rw pool=mailx, allow rw tag cephfs data=cephfs"]


@pytest.fixture(scope="module")
def cephx_cluster(tmp_path_factory):
    cluster = DevCeph(str(tmp_path_factory.mktemp("cephx") / "cluster"), auth="cephx")
    try:
        cluster.start()
    except DevCephError as e:
        pytest.fail(f"could not start the cephx test cluster: {e}", pytrace=False)
    try:
        import rados
        admin = rados.Rados(conffile=cluster.conf_path)       # client.admin, from DIR/keyring
        admin.connect(timeout=10)
        try:
            admin.create_pool("mailx")
        finally:
            admin.shutdown()
        cluster.add_client("client.mail", MAIL_CAPS)
        cluster.add_client("client.nopool", ["mon", "allow r", "osd", "allow rw pool=elsewhere"])
        yield cluster
    finally:
        cluster.stop()


@pytest_twisted.ensureDeferred
async def test_drivers_work_with_restricted_cephx_client(cephx_cluster):
    objects = RadosObjectStore(ceph_conf=cephx_cluster.conf_path, client_name="client.mail",
                               pool="mailx", op_timeout=5)
    index = CephFSIndexStore(ceph_conf=cephx_cluster.conf_path, client_name="client.mail",
                             root="/mail", op_timeout=5)
    await objects.start()
    await index.start()
    try:
        ns = objects.namespace("alice")
        await objects.put(ns, "m", b"body", {"G": "g" * 32})
        await objects.add_ref(ns, "m", "copy")
        assert await objects.get(ns, "m") == b"body"
        assert (await objects.get_meta(ns, "m"))["G"] == "g" * 32
        assert await objects.remove_ref(ns, "m", "") is False
        assert await objects.remove_ref(ns, "m", "copy") is True
        lock = await index.lock("alice/INBOX/log")
        assert await index.append("alice/INBOX/log", b"rec\n") == 0
        await index.sync(["alice/INBOX/log"])
        await lock.release()
        assert await index.read("alice/INBOX/log") == b"rec\n"
    finally:
        await objects.stop()
        await index.stop()


@pytest_twisted.ensureDeferred
async def test_unknown_client_and_missing_caps(cephx_cluster):
    unknown = RadosObjectStore(ceph_conf=cephx_cluster.conf_path, client_name="client.nobody",
                               pool="mailx", op_timeout=3)
    with pytest.raises(StorageError) as info:
        await unknown.start()
    assert info.value.kind is ErrorKind.TEMPORARY
    assert "cannot connect to Ceph" in info.value.detail

    no_pool = RadosObjectStore(ceph_conf=cephx_cluster.conf_path, client_name="client.nopool",
                               pool="mailx", op_timeout=3)
    await no_pool.start()
    try:
        with pytest.raises(StorageError) as info:
            await no_pool.put(no_pool.namespace("bob"), "m", b"x", {})
        assert info.value.kind is ErrorKind.TEMPORARY          # an admin must fix the caps
        assert "Operation not permitted" in info.value.detail
    finally:
        await no_pool.stop()
