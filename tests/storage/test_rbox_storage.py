"""The mail-storage API over rbox on the embedded default (local objects and index)."""

import pytest
import pytest_twisted
from twisted.internet import defer

from mailserver import config as configmod
from mailserver import plugins
from mailserver.storage import search as S
from mailserver.storage.api import FetchItem, StoreMode
from mailserver.storage.errors import ErrorKind, StorageError

MAIL = (b"From: Alice <alice@example.org>\r\nTo: bob@example.org\r\nSubject: Hello there\r\n"
        b"Date: Mon, 23 Nov 2026 10:00:00 +0000\r\nMessage-ID: <1@example.org>\r\n\r\n"
        b"Body line one\r\nSecond line with a needle\r\n")


def mail(n: int) -> bytes:
    return MAIL.replace(b"Hello there", b"Message %d" % n)


def make_storage(tmp_path, **rbox):
    cfg = configmod.load(None, {"server": {"state_dir": str(tmp_path)}, "rbox": rbox})
    return plugins.load(plugins.MAILBOX_FORMATS, "rbox").from_config(cfg, plugins)


@pytest.fixture
def storage(tmp_path):
    st = make_storage(tmp_path)
    pytest_twisted.blockon(defer.Deferred.fromCoroutine(st.start()))
    return st


async def save(user, box, *messages, flags=()):
    tx = user.begin_save(box)
    for m in messages:
        await tx.add(m, flags)
    return await tx.commit()


@pytest_twisted.ensureDeferred
async def test_new_user_gets_inbox_and_special_use(storage):
    user = await storage.open_user("alice")
    names = {m.name: m for m in await user.list_mailboxes()}
    assert set(names) == {"INBOX", "Drafts", "Sent", "Trash", "Junk", "Archive"}
    assert names["Sent"].special_use == {"\\Sent"}
    assert all(m.subscribed for m in names.values())


@pytest_twisted.ensureDeferred
async def test_save_fetch_flags_expunge(storage):
    user = await storage.open_user("bob")
    result = await save(user, "INBOX", mail(1), mail(2), mail(3), flags=("\\Seen", "$Work"))
    assert result.uids == (1, 2, 3)
    box = await user.open_mailbox("inbox")
    assert list(box.uids()) == [1, 2, 3] and box.uidvalidity == result.uidvalidity
    info = box.info(2)
    assert info.flags == {"\\Seen", "$Work"} and info.vsize == len(mail(2))
    got = [m async for m in box.fetch([3, 1], {FetchItem.ENVELOPE, FetchItem.DATA})]
    assert [m.info.uid for m in got] == [3, 1]
    assert got[1].data == mail(1) and '"Message 1"' in got[1].envelope
    res = await box.store([1, 2], StoreMode.ADD, ["\\Deleted"])
    assert [i.uid for i in res.changed] == [1, 2]
    assert await box.expunge([2]) == [2]
    changes = await box.refresh()
    assert changes.expunged == [2] and not changes.flags   # own STORE is not echoed back
    assert list(box.uids()) == [1, 3]
    status = await user.status("INBOX")
    assert (status.messages, status.deleted, status.uidnext) == (2, 1, 4)
    await box.close()


@pytest_twisted.ensureDeferred
async def test_two_views_see_each_others_changes(storage):
    user = await storage.open_user("carol")
    await save(user, "INBOX", mail(1), mail(2))
    a = await user.open_mailbox("INBOX")
    b = await user.open_mailbox("INBOX")
    notified = []
    b.on_change(lambda: notified.append(1))
    await a.store([1], StoreMode.ADD, ["\\Flagged"])
    await save(user, "INBOX", mail(3))
    await a.store([2], StoreMode.ADD, ["\\Deleted"])
    await a.expunge()
    kept = await b.refresh(expunges=False)      # during FETCH/STORE/SEARCH: no expunges yet
    assert [i.uid for i in kept.appended] == [3] and kept.expunged == []
    assert {i.uid for i in kept.flags} == {1}
    assert list(b.uids()) == [1, 2, 3]
    later = await b.refresh()
    assert later.expunged == [2] and list(b.uids()) == [1, 3]
    assert notified


@pytest_twisted.ensureDeferred
async def test_copy_and_move_share_the_object(storage, tmp_path):
    user = await storage.open_user("dave")
    await save(user, "INBOX", mail(1), mail(2))
    box = await user.open_mailbox("INBOX")
    oid = box.info(1).oid
    copied = await box.copy([1], "Archive")
    assert copied.pairs == ((1, 1),)
    moved = await box.move([2], "Trash")
    assert moved.pairs == ((2, 1),)
    await box.refresh()
    assert list(box.uids()) == [1]
    arch = await user.open_mailbox("Archive")
    assert arch.info(1).oid == oid and arch.info(1).guid == box.info(1).guid
    assert await storage.objects.refs(user.namespace, oid) == {"", arch.index.state.refs[0]}
    await box.store([1], StoreMode.ADD, ["\\Deleted"])
    await box.expunge()
    # Still referenced from Archive: the object stays and is readable there.
    [m] = [m async for m in arch.fetch([1], {FetchItem.DATA})]
    assert m.data == mail(1)
    await arch.store([1], StoreMode.ADD, ["\\Deleted"])
    await arch.expunge()
    assert oid not in await storage.objects.list(user.namespace)


@pytest_twisted.ensureDeferred
async def test_mailbox_list_operations(storage):
    user = await storage.open_user("erin")
    await user.create_mailbox("Work/Projects/2026")
    names = [m.name for m in await user.list_mailboxes()]
    assert "Work" in names and "Work/Projects" in names
    with pytest.raises(StorageError) as e:
        await user.create_mailbox("work/../x")
    assert e.value.kind is ErrorKind.INVALID
    with pytest.raises(StorageError) as e:
        await user.create_mailbox("Work")
    assert e.value.kind is ErrorKind.EXISTS
    await save(user, "Work/Projects", mail(1))
    await user.set_subscribed("Work/Projects", True)
    await user.rename_mailbox("Work", "Job")
    names = [m.name for m in await user.list_mailboxes()]
    assert "Job/Projects/2026" in names and not any(n.startswith("Work") for n in names)
    assert "Job/Projects" in await user.subscriptions()
    assert (await user.status("Job/Projects")).messages == 1
    with pytest.raises(StorageError) as e:
        await user.delete_mailbox("INBOX")
    assert e.value.kind is ErrorKind.CANNOT
    await user.delete_mailbox("Job/Projects")
    with pytest.raises(StorageError) as e:
        await user.open_mailbox("Job/Projects")
    assert e.value.kind is ErrorKind.NOT_FOUND
    assert await storage.objects.list(user.namespace) == []


@pytest_twisted.ensureDeferred
async def test_search_uses_index_cache_and_bodies(storage):
    user = await storage.open_user("frank")
    await save(user, "INBOX", mail(1), mail(2).replace(b"needle", b"hay"))
    box = await user.open_mailbox("INBOX")
    await box.store([2], StoreMode.ADD, ["\\Seen"])
    assert await box.search(S.Flag("\\Seen")) == [2]
    assert await box.search(S.Not(S.Flag("\\Seen"))) == [1]
    assert await box.search(S.Header("subject", "message 2")) == [2]
    assert await box.search(S.Body("NEEDLE")) == [1]
    assert await box.search(S.Or(S.Body("needle"), S.Flag("\\Seen"))) == [1, 2]
    assert await box.search(S.Size(True, 10)) == [1, 2]


@pytest_twisted.ensureDeferred
async def test_state_survives_a_new_storage_instance(storage, tmp_path):
    user = await storage.open_user("gina")
    await save(user, "INBOX", mail(1))
    box = await user.open_mailbox("INBOX")
    await box.store([1], StoreMode.ADD, ["\\Answered", "Later"])
    again = make_storage(tmp_path)
    await again.start()
    u2 = await again.open_user("gina")
    b2 = await u2.open_mailbox("INBOX")
    assert b2.info(1).flags == {"\\Answered", "Later"}
    [m] = [m async for m in b2.fetch([1], {FetchItem.BODYSTRUCTURE, FetchItem.DATA})]
    assert m.data == mail(1) and m.bodystructure.startswith('("text" "plain"')


@pytest_twisted.ensureDeferred
async def test_expunge_sees_deleted_flags_another_process_just_set(storage, tmp_path):
    """Regression: EXPUNGE in a process whose index had not yet read another process's STORE
    \\Deleted found nothing to do in its stale state and expunged nothing."""
    user = await storage.open_user("hana")
    await save(user, "INBOX", mail(1), mail(2))
    box = await user.open_mailbox("INBOX")
    other = make_storage(tmp_path)
    await other.start()
    try:
        u2 = await other.open_user("hana")
        b2 = await u2.open_mailbox("INBOX")
        await b2.store([2], StoreMode.ADD, ["\\Deleted"])
        assert await box.expunge() == [2]
        await box.refresh()
        assert list(box.uids()) == [1]
        assert await box.store([2], StoreMode.ADD, ["\\Seen"]) is not None   # a no-op stays one
        await b2.close()
    finally:
        await other.stop()


@pytest_twisted.ensureDeferred
async def test_missing_object_makes_only_that_message_unavailable(storage, tmp_path):
    user = await storage.open_user("hank")
    await save(user, "INBOX", mail(1), mail(2))
    box = await user.open_mailbox("INBOX")
    storage.bodies.discard((user.namespace, box.info(1).oid))
    await storage.objects.delete(user.namespace, box.info(1).oid)
    got = {m.info.uid: m async for m in box.fetch([1, 2], {FetchItem.DATA})}
    assert got[1].missing and got[2].data == mail(2)


@pytest_twisted.ensureDeferred
async def test_preview_and_vanished(storage):
    user = await storage.open_user("ida")
    await save(user, "INBOX", mail(1), mail(2))
    box = await user.open_mailbox("INBOX")
    [m] = [m async for m in box.fetch([1], {FetchItem.PREVIEW})]
    assert m.preview == "Body line one Second line with a needle"
    before = box.highestmodseq
    await box.store([1], StoreMode.ADD, ["\\Deleted"])
    await box.expunge()
    assert box.vanished_since(before) == [1]
