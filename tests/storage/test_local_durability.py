"""The local drivers make every new directory durable in its parent: a crash must not lose the
entry of a fan-out directory (or a new mailbox's index directory) whose files were synced."""

import os

import pytest_twisted

from plugins.local import common, objects
from plugins.local.objects import LocalObjectStore


def _record_fsyncs(monkeypatch) -> list[str]:
    synced = []
    real = common.fsync_dir

    def fsync_dir(path):
        synced.append(os.path.normpath(path))
        real(path)
    monkeypatch.setattr(common, "fsync_dir", fsync_dir)
    monkeypatch.setattr(objects, "fsync_dir", fsync_dir)
    return synced


def test_each_new_directory_is_synced_in_its_parent(tmp_path, monkeypatch):
    synced = _record_fsyncs(monkeypatch)
    common.makedirs_durable(str(tmp_path / "a" / "b" / "c"))
    assert (tmp_path / "a" / "b" / "c").is_dir()
    assert synced == [str(tmp_path), str(tmp_path / "a"), str(tmp_path / "a" / "b")]
    synced.clear()
    common.makedirs_durable(str(tmp_path / "a" / "b" / "c"))     # all there: nothing to do
    assert synced == []


def test_a_directory_made_meanwhile_by_another_is_synced_all_the_same(tmp_path, monkeypatch):
    """Its maker may not have synced it yet when our object is acknowledged."""
    synced = _record_fsyncs(monkeypatch)
    target = tmp_path / "x"
    real_mkdir = os.mkdir

    def racing_mkdir(path, mode=0o777):
        real_mkdir(path, mode)              # the other thread wins the race
        raise FileExistsError(path)
    monkeypatch.setattr(os, "mkdir", racing_mkdir)
    common.makedirs_durable(str(target))
    assert target.is_dir() and synced == [str(tmp_path)]


@pytest_twisted.ensureDeferred
async def test_the_first_object_of_a_namespace_makes_its_directories_durable(tmp_path, monkeypatch):
    store = LocalObjectStore(str(tmp_path / "objects"))
    await store.start()
    synced = _record_fsyncs(monkeypatch)
    await store.put("alice", "ab" + "0" * 30, b"Subject: x\r\n\r\nbody\r\n", {"G": "1"})
    ns_dir = os.path.normpath(os.path.dirname(os.path.dirname(store._path("alice", "ab" + "0" * 30))))
    fanout = os.path.join(ns_dir, "ab")
    # The namespace directory in the root, the fan-out directory in it, the object in that.
    assert synced == [str(tmp_path / "objects"), ns_dir, fanout]
    synced.clear()
    await store.put("alice", "ab" + "1" * 30, b"Subject: y\r\n\r\nbody\r\n", {"G": "2"})
    assert synced == [fanout]
