"""Shared fixtures.  ``mail_server`` runs a real server process per backend for the session:
on the embedded default (local objects and index) and on rbox over RADOS + CephFS in the
throwaway Ceph cluster, so every protocol test runs against both.  ``account`` hands each test
a user nobody else touched."""

import uuid

import pytest
import pytest_twisted
from twisted.internet import defer

from tests.harness import RunningServer, ceph_config

pytest_plugins = ["tests.ceph_cluster"]

BACKENDS = ["local", "ceph"]


@pytest.fixture(scope="session", params=BACKENDS)
def mail_server(request, tmp_path_factory):
    extra = ""
    if request.param == "ceph":
        cluster = request.getfixturevalue("ceph_cluster")
        extra = ceph_config(cluster.conf_path, uuid.uuid4().hex[:8])
    server = RunningServer(str(tmp_path_factory.mktemp(f"server-{request.param}")), extra_config=extra)
    server.backend = request.param
    server.start()
    yield server
    server.stop()


@pytest.fixture
def account(mail_server):
    return mail_server.new_user()


@pytest.fixture(params=BACKENDS)
def transcript_backend(request):
    """For transcript tests (``pytestmark = pytest.mark.usefixtures("transcript_backend")``):
    run the test once on each backend; see tests/backends.py."""
    from tests import backends
    if request.param == "ceph":
        cluster = request.getfixturevalue("ceph_cluster")
        backends.overrides = {
            "rbox": {"object_store": "rados", "index_store": "cephfs"},
            "dict": {"driver": "rados"},
            "rados": {"ceph_conf": cluster.conf_path, "pool": "transcripts", "op_timeout": 5.0},
            "cephfs": {"ceph_conf": cluster.conf_path, "root": "/t-" + uuid.uuid4().hex[:10], "op_timeout": 5.0},
        }
    try:
        yield request.param
    finally:
        for storage in backends.created:
            pytest_twisted.blockon(defer.Deferred.fromCoroutine(storage.stop()))
        backends.created.clear()
        backends.overrides = {}
