"""force-resync, checkpoints and gc on the embedded default."""

import shutil

import pytest_twisted
from twisted.internet import defer

from mailserver.storage.api import FetchItem, StoreMode
from plugins.rbox import admin
from tests.storage.test_rbox_storage import mail, make_storage, save


async def started(tmp_path, **rbox):
    st = make_storage(tmp_path, **rbox)
    await st.start()
    return st


@pytest_twisted.ensureDeferred
async def test_index_loss_restores_uids_flags_keywords(tmp_path):
    st = await started(tmp_path)
    user = await st.open_user("ivy")
    await save(user, "INBOX", mail(1), mail(2), mail(3))
    await user.create_mailbox("Work")
    box = await user.open_mailbox("INBOX")
    await box.store([1], StoreMode.ADD, ["\\Seen", "$Important"])
    await box.store([3], StoreMode.ADD, ["\\Flagged"])
    await box.copy([2], "Work")
    await box.close()          # checkpoint at logout
    work = await user.open_mailbox("Work")
    await work.store([1], StoreMode.ADD, ["\\Answered"])
    await work.close()
    before = {name: (await user.status(name)) for name in ("INBOX", "Work")}
    await st.stop()

    shutil.rmtree(tmp_path / "index")                    # the whole index tree is lost
    st2 = await started(tmp_path)
    report = await admin.force_resync(st2, "ivy")
    assert set(report["restored_from_checkpoint"]) >= {"INBOX", "Work"}
    assert report["linked"] == 0
    user2 = await st2.open_user("ivy")
    box2 = await user2.open_mailbox("INBOX")
    assert list(box2.uids()) == [1, 2, 3]
    assert box2.info(1).flags == {"\\Seen", "$Important"} and box2.info(3).flags == {"\\Flagged"}
    assert box2.uidvalidity == before["INBOX"].uidvalidity
    work2 = await user2.open_mailbox("Work")
    assert work2.info(1).flags == {"\\Answered"}
    [m] = [m async for m in work2.fetch([1], {FetchItem.DATA, FetchItem.ENVELOPE})]
    assert m.data == mail(2) and "Message 2" in m.envelope
    # References were restored with the records: expunging both copies frees the object.
    oid = work2.info(1).oid
    for b, uid in ((box2, 2), (work2, 1)):
        await b.store([uid], StoreMode.ADD, ["\\Deleted"])
        await b.expunge()
    assert oid not in await st2.objects.list(user2.namespace)


@pytest_twisted.ensureDeferred
async def test_uncommitted_object_is_linked_or_collected(tmp_path):
    st = await started(tmp_path)
    user = await st.open_user("jack")
    await save(user, "INBOX", mail(1))
    # A delivery that wrote its object and crashed before the index commit.
    tx = user.begin_save("INBOX")
    await tx.add(mail(2))
    await defer.DeferredList([d for _, d in tx._pending])
    objs = await st.objects.list(user.namespace)
    assert len(objs) == 2
    young = await admin.gc(st, dry_run=True)
    assert young["young"] == 1 and young["removed"] == 0
    report = await admin.gc(st, dry_run=True, grace=0)
    assert report["removed"] == 1 and len(await st.objects.list(user.namespace)) == 2
    resync = await admin.force_resync(st, "jack")
    assert resync["linked"] == 1
    box = await user.open_mailbox("INBOX")
    assert list(box.uids()) == [1, 2]
    assert (await admin.gc(st, grace=0))["removed"] == 0   # now referenced: nothing to collect


@pytest_twisted.ensureDeferred
async def test_gc_removes_an_orphan_after_grace(tmp_path):
    st = await started(tmp_path)
    user = await st.open_user("kim")
    tx = user.begin_save("INBOX")
    await tx.add(mail(1))
    await defer.DeferredList([d for _, d in tx._pending])
    assert (await admin.gc(st, grace=0))["removed"] == 1
    assert await st.objects.list(user.namespace) == []

