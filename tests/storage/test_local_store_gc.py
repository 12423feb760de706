"""rbox gc on the embedded default's local object store: what only a file store leaves behind
(tests/storage/test_rbox_admin.py runs on Ceph too; this does not apply there)."""

import os
import time

import pytest_twisted

from plugins.rbox import admin
from tests.storage.test_rbox_admin import mail, save, started


@pytest_twisted.ensureDeferred
async def test_gc_removes_a_temporary_file_a_crashed_write_left_after_grace(tmp_path):
    """The local store writes ``<oid>.tmp.<pid>.<n>`` and renames it; kill -9 in between leaves
    the temporary file, which no listing shows.  gc removes it once older than the grace."""
    st = await started(tmp_path)
    user = await st.open_user("liv")
    await save(user, "INBOX", mail(1))
    [oid] = await st.objects.list(user.namespace)
    obj = st.objects._path(user.namespace, oid)
    left = obj + ".tmp.4242.1"
    with open(left, "wb") as f:
        f.write(b"half a message")
    assert (await admin.gc(st, dry_run=True, grace=3600))["incomplete_removed"] == 0   # may be in flight
    old = time.time() - 7200
    os.utime(left, (old, old))
    assert (await admin.gc(st, dry_run=True, grace=3600))["incomplete_removed"] == 1
    assert os.path.exists(left)
    report = await admin.gc(st, grace=3600)
    assert report["incomplete_removed"] == 1 and report["removed"] == 0
    assert not os.path.exists(left) and os.path.exists(obj)
    box = await user.open_mailbox("INBOX")
    assert list(box.uids()) == [1]
