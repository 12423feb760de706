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
    # Also lowered OSD limits, enforced by the OSD itself: the driver must discover them.
    cluster = DevCeph(str(tmp_path_factory.mktemp("cephx") / "cluster"), auth="cephx",
                      osd_max_write_size_mb=4, osd_max_object_size=12 << 20)   # 4 MB: Ceph's minimum
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


@pytest_twisted.ensureDeferred
async def test_driver_discovers_and_respects_the_osd_limits(cephx_cluster):
    """The OSDs here take at most 4 MB per write and 12 MiB per object (their ceph.conf)."""
    import os
    admin = RadosObjectStore(ceph_conf=cephx_cluster.conf_path, pool="mailx", op_timeout=5)
    await admin.start()
    try:
        assert admin.max_write_size == 4 << 20
        assert admin.max_object_size == 12 << 20
        ns = admin.namespace("carol")
        data = os.urandom(10 << 20)                 # three OSD writes
        await admin.put(ns, "big", data, {})
        assert await admin.get(ns, "big") == data
        with pytest.raises(StorageError) as info:
            await admin.put(ns, "huge", b"x" * ((12 << 20) + 1), {})
        assert info.value.kind is ErrorKind.TOO_BIG
    finally:
        await admin.stop()
    # a client without "osd allow *" cannot ask an OSD: it falls back to the mon's database
    # (Ceph's defaults here), so its configured values, below the real limits, are what count
    mail = RadosObjectStore(ceph_conf=cephx_cluster.conf_path, client_name="client.mail", pool="mailx",
                            op_timeout=5, max_write_size=1 << 20, max_object_size=8 << 20)
    await mail.start()
    try:
        assert mail.max_write_size == 1 << 20 and mail.max_object_size == 8 << 20
        data = os.urandom(3 << 20)
        await mail.put(mail.namespace("dave"), "m", data, {})
        assert await mail.get(mail.namespace("dave"), "m") == data
    finally:
        await mail.stop()


@pytest_twisted.ensureDeferred
async def test_osd_refusing_an_oversized_write_is_too_big(cephx_cluster):
    """A client that cannot learn the OSD limit assumes 90 MB; the OSD's EFBIG for a 5 MB write
    then comes back as TOO_BIG, and nothing is left behind (the op was atomic)."""
    import os
    mail = RadosObjectStore(ceph_conf=cephx_cluster.conf_path, client_name="client.mail", pool="mailx",
                            op_timeout=5)
    await mail.start()
    try:
        assert mail.max_write_size == 90 << 20               # what it could learn
        ns = mail.namespace("erin")
        with pytest.raises(StorageError) as info:
            await mail.put(ns, "m", os.urandom(5 << 20), {})
        assert info.value.kind is ErrorKind.TOO_BIG, info.value
        assert await mail.list(ns) == []
    finally:
        await mail.stop()
