"""Fixtures for the driver tests against the session's throwaway Ceph cluster."""

from __future__ import annotations

import uuid

import pytest
import pytest_twisted

from mailserver import config


def driver_config(conf_path: str, rados: dict | None = None, cephfs: dict | None = None, rbox: dict | None = None):
    """A validated Config selecting the rados and cephfs drivers (through their entry points)."""
    return config.load(None, overrides={
        "rbox": {"object_store": "rados", "index_store": "cephfs", **(rbox or {})},
        "rados": {"ceph_conf": conf_path, "pool": "mailtest", "op_timeout": 3.0, **(rados or {})},
        "cephfs": {"ceph_conf": conf_path, "root": "/test-" + uuid.uuid4().hex[:8], "op_timeout": 3.0,
                   **(cephfs or {})},
    })


@pytest_twisted.async_yield_fixture
async def make_rados_store(ceph_cluster):
    """``await make_rados_store(**rados_keys)``: a started RadosObjectStore, stopped after the test."""
    from mailserver import plugins
    stores = []

    async def make(rbox=None, **rados):
        cfg = driver_config(ceph_cluster.conf_path, rados=rados, rbox=rbox)
        store = plugins.load(plugins.OBJECT_STORES, "rados").from_config(cfg)
        await store.start()
        stores.append(store)
        return store
    yield make
    for store in stores:
        await store.stop()


@pytest_twisted.async_yield_fixture
async def make_cephfs_store(ceph_cluster):
    """``await make_cephfs_store(**cephfs_keys)``: a started CephFSIndexStore (own root), stopped after."""
    from mailserver import plugins
    stores = []

    async def make(**keys):
        cfg = driver_config(ceph_cluster.conf_path, cephfs=keys)
        store = plugins.load(plugins.INDEX_STORES, "cephfs").from_config(cfg)
        await store.start()
        stores.append(store)
        return store
    yield make
    for store in stores:
        await store.stop()


@pytest.fixture
def unique():
    """A fresh name part, so tests never see each other's objects."""
    return uuid.uuid4().hex[:12]
