"""[rbox] parallel_commit on the embedded default: the object and the index record written at
once, a refused put withdrawn, readers waiting for a put in flight, and the crash case (a
durable record whose object never arrived) answered as unavailable and dropped by force-resync."""

import pytest
import pytest_twisted
from twisted.internet import defer, reactor, task

from mailserver.storage.api import FetchItem
from mailserver.storage.errors import ErrorKind, StorageError
from plugins.rbox import admin
from tests.storage.test_rbox_admin import started
from tests.storage.test_rbox_storage import mail, save


def gated_puts(storage):
    """Make the driver's puts wait for ``gate`` (and fail if it errbacks)."""
    inner = storage.objects.inner
    real_put = inner.put
    gate = defer.Deferred()

    async def put(ns, oid, data, meta):
        await gate
        await real_put(ns, oid, data, meta)
    inner.put = put
    return gate


@pytest_twisted.ensureDeferred
async def test_save_returns_only_when_the_object_is_durable(tmp_path):
    st = await started(tmp_path, parallel_commit=True)
    user = await st.open_user("amy")
    gate = gated_puts(st)
    saving = defer.Deferred.fromCoroutine(save(user, "INBOX", mail(1)))
    box = await user.open_mailbox("INBOX")
    for _ in range(50):                      # the record lands while the put still waits
        await box.refresh()
        if list(box.uids()):
            break
        await task.deferLater(reactor, 0.02, lambda: None)
    assert list(box.uids()) == [1]
    assert not saving.called                 # not acknowledged before the object is durable
    st.bodies.discard((user.namespace, box.info(1).oid))
    reading = defer.Deferred.fromCoroutine(st.objects.get(user.namespace, box.info(1).oid))
    await task.deferLater(reactor, 0.05, lambda: None)
    assert not reading.called                # a read waits for the put in flight
    gate.callback(None)
    assert (await saving).uids == (1,)
    assert await reading == mail(1)


@pytest_twisted.ensureDeferred
async def test_refused_put_is_withdrawn(tmp_path):
    st = await started(tmp_path, parallel_commit=True)
    user = await st.open_user("bea")
    await save(user, "INBOX", mail(1))
    gate = gated_puts(st)
    saving = defer.Deferred.fromCoroutine(save(user, "INBOX", mail(2)))
    await task.deferLater(reactor, 0.1, lambda: None)
    gate.errback(StorageError(ErrorKind.TEMPORARY, "osd down"))
    with pytest.raises(StorageError) as info:
        await saving
    assert info.value.kind is ErrorKind.TEMPORARY
    box = await user.open_mailbox("INBOX")
    await box.refresh()
    assert list(box.uids()) == [1]           # the refused message never stays visible
    got = [m async for m in box.fetch([1], {FetchItem.DATA})]
    assert got[0].data == mail(1)


@pytest_twisted.ensureDeferred
async def test_record_without_object_is_unavailable_then_dropped_by_force_resync(tmp_path):
    """What a crash between the durable record and the put leaves behind."""
    st = await started(tmp_path, parallel_commit=True)
    user = await st.open_user("cat")
    await save(user, "INBOX", mail(1), mail(2))
    box = await user.open_mailbox("INBOX")
    lost = box.info(2).oid
    st.bodies.discard((user.namespace, lost))
    await st.objects.delete(user.namespace, lost)
    got = {m.info.uid: m async for m in box.fetch([1, 2], {FetchItem.DATA})}
    assert got[2].missing and got[1].data == mail(1)
    await box.close()
    report = await admin.force_resync(st, "cat")
    assert report["dropped"] == 1
    box = await user.open_mailbox("INBOX")
    assert list(box.uids()) == [1]


@pytest_twisted.ensureDeferred
async def test_big_messages_keep_object_first(tmp_path):
    """Over PARALLEL_MAX_SIZE the record is committed only after the put."""
    from plugins.rbox.save import PARALLEL_MAX_SIZE
    st = await started(tmp_path, parallel_commit=True)
    user = await st.open_user("dan")
    gate = gated_puts(st)
    big = mail(1) + b"x" * PARALLEL_MAX_SIZE + b"\r\n"
    saving = defer.Deferred.fromCoroutine(save(user, "INBOX", big))
    await task.deferLater(reactor, 0.2, lambda: None)
    box = await user.open_mailbox("INBOX")
    await box.refresh()
    assert list(box.uids()) == []
    gate.callback(None)
    assert (await saving).uids == (1,)
    await box.refresh()
    assert list(box.uids()) == [1]

