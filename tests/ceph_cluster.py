"""pytest plugin: the ``ceph_cluster`` session fixture, a throwaway one-node Ceph cluster
(``mailserver.devceph.DevCeph``) started once for the test session and stopped at its end.

Tests that use it are marked ``ceph``.  If Ceph is not installed the fixture FAILS (errors
every test that uses it) rather than skipping: CI must run these tests
(``scripts/install --test`` installs Ceph).
"""

from __future__ import annotations

import time

import pytest

from mailserver.devceph import DevCeph, DevCephError


@pytest.fixture(scope="session")
def ceph_cluster(tmp_path_factory):
    """A running ``DevCeph``: ``conf_path``, ``fs_name``, ``probe_pool``, ``pid(name)``,
    ``signal_daemon(name, sig)`` (only ever this cluster's own daemons)."""
    directory = tmp_path_factory.mktemp("ceph") / "cluster"
    cluster = DevCeph(str(directory))
    t = time.monotonic()
    try:
        cluster.start()
    except DevCephError as e:
        pytest.fail(f"could not start the test Ceph cluster: {e}", pytrace=False)
    print(f"\nceph_cluster: {cluster.conf_path} ready in {time.monotonic() - t:.1f} s")
    try:
        yield cluster
    finally:
        cluster.stop()
