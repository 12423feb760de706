"""The rbox storage and admin tests (tests/storage) again, on the rados object store and the
cephfs index store of the session's cluster.  Each test gets its own namespace suffix and
CephFS root, derived from its tmp_path (stable within the test: it may build a second
storage instance over the same data)."""

from __future__ import annotations

import hashlib

import pytest
import pytest_twisted
from twisted.internet import defer

import tests.storage.test_rbox_admin as admin_tests
import tests.storage.test_rbox_storage as storage_tests
from mailserver import config as configmod
from mailserver import plugins
from tests.storage.test_rbox_admin import *  # noqa: F401,F403  (collected here, on Ceph)
from tests.storage.test_rbox_storage import *  # noqa: F401,F403

pytestmark = pytest.mark.ceph

# Removes the local index directory: the index lives in CephFS here.
del test_index_loss_restores_uids_flags_keywords  # noqa: F821


@pytest.fixture(autouse=True)
def on_ceph(ceph_cluster, monkeypatch):
    made = []

    def make_storage(tmp_path, **rbox):
        tag = hashlib.sha1(str(tmp_path).encode()).hexdigest()[:12]
        cfg = configmod.load(None, {
            "server": {"state_dir": str(tmp_path)},
            "rbox": {"object_store": "rados", "index_store": "cephfs",
                     "namespace_suffix": f"_ns{tag}", **rbox},
            "rados": {"ceph_conf": ceph_cluster.conf_path, "pool": "rboxtest"},
            "cephfs": {"ceph_conf": ceph_cluster.conf_path, "root": f"/rbox-{tag}"},
        })
        storage = plugins.load(plugins.MAILBOX_FORMATS, "rbox").from_config(cfg, plugins)
        made.append(storage)
        return storage
    monkeypatch.setattr(storage_tests, "make_storage", make_storage)
    monkeypatch.setattr(admin_tests, "make_storage", make_storage)
    yield make_storage
    # The tests never stop their storages (harmless on local files).  Ceph clients left
    # connected when the cluster goes away make the interpreter hang or abort at exit.
    for storage in made:
        for driver in (storage.objects, storage.index_store):
            try:
                pytest_twisted.blockon(defer.Deferred.fromCoroutine(driver.stop()))
            except Exception:
                pass


@pytest.fixture
def storage(on_ceph, tmp_path):
    st = on_ceph(tmp_path)
    pytest_twisted.blockon(defer.Deferred.fromCoroutine(st.start()))
    return st
