"""What POP3 and LMTP need of rbox beyond mail itself: the cross-process user lock, the UIDL
recorded at migration, and saving one analysed message for many recipients."""

import os
import subprocess
import sys
import textwrap
import time
import uuid

import pytest
import pytest_twisted

from mailserver import config as configmod
from mailserver import plugins
from mailserver.storage import drivers, mime
from mailserver.storage.api import FetchItem
from mailserver.storage.errors import ErrorKind, StorageError

MAIL = b"From: a@example.org\r\nSubject: migrated\r\n\r\nbody\r\n"


def make_storage(tmp_path):
    cfg = configmod.load(None, {"server": {"state_dir": str(tmp_path)}})
    return plugins.load(plugins.MAILBOX_FORMATS, "rbox").from_config(cfg, plugins)


async def started(tmp_path):
    st = make_storage(tmp_path)
    await st.start()
    return st


@pytest_twisted.ensureDeferred
async def test_user_lock_excludes_sessions_and_storage_instances(tmp_path):
    one, two = await started(tmp_path), await started(tmp_path)
    alice = await one.open_user("alice")
    held = await alice.lock("pop3")
    with pytest.raises(StorageError) as e:
        await alice.lock("pop3")                       # same process
    assert e.value.kind is ErrorKind.IN_USE
    other = await two.open_user("alice")
    with pytest.raises(StorageError) as e:
        await other.lock("pop3")                       # another lock file handle: flock excludes it
    assert e.value.kind is ErrorKind.IN_USE
    bob = await one.open_user("bob")
    bob_lock = await bob.lock("pop3")                  # other users are independent
    await bob_lock.release()
    other_name = await alice.lock("imap-x")            # and so are other lock names
    await held.release()
    await held.release()                               # twice is harmless
    again = await other.lock("pop3")
    await again.release()
    await other_name.release()
    with pytest.raises(StorageError) as e:
        await alice.lock("../x")
    assert e.value.kind is ErrorKind.INVALID


@pytest_twisted.ensureDeferred
async def test_user_lock_held_by_another_process_and_freed_when_it_dies(tmp_path):
    st = await started(tmp_path)
    alice = await st.open_user("alice")
    lock_path = os.path.join(str(tmp_path), "index", alice.dir, "locks", "pop3.lock")
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import fcntl, os, sys, time
        os.makedirs(os.path.dirname({lock_path!r}), exist_ok=True)
        fd = os.open({lock_path!r}, os.O_RDWR | os.O_CREAT)
        fcntl.flock(fd, fcntl.LOCK_EX)
        print("held", flush=True)
        time.sleep(60)
    """)], stdout=subprocess.PIPE)
    try:
        assert holder.stdout.readline() == b"held\n"
        with pytest.raises(StorageError) as e:
            await alice.lock("pop3")
        assert e.value.kind is ErrorKind.IN_USE
    finally:
        holder.kill()
        holder.wait()
    held = await alice.lock("pop3")                    # the kernel dropped the dead holder's lock
    await held.release()


class CountingObjects:
    """The real object store, counting metadata reads."""

    def __init__(self, real):
        self.real = real
        self.meta_reads = 0

    def __getattr__(self, name):
        return getattr(self.real, name)

    async def get_meta(self, ns, oid):
        self.meta_reads += 1
        return await self.real.get_meta(ns, oid)


@pytest_twisted.ensureDeferred
async def test_pop3_uidl_from_migration_metadata_read_once(tmp_path):
    st = await started(tmp_path)
    user = await st.open_user("carol")
    tx = user.begin_save("INBOX")
    await tx.add(MAIL)
    await tx.commit()
    # Two objects written by a migration, one with a recorded UIDL, then linked by force-resync.
    inbox_guid = (await user.list_mailboxes())[0].guid
    for uidl in ("UID123-1191231", None):
        meta = {drivers.META_MAILBOX_GUID: inbox_guid, drivers.META_GUID: uuid.uuid4().hex,
                drivers.META_RECEIVED: "1700000000", drivers.META_SAVE_DATE: "1700000000",
                drivers.META_PHYSICAL_SIZE: str(len(MAIL)), drivers.META_VIRTUAL_SIZE: str(len(MAIL)),
                drivers.META_ORIG_MAILBOX: "INBOX", drivers.META_VERSION: drivers.OBJECT_FORMAT_VERSION}
        if uidl:
            meta[drivers.META_POP3_UIDL] = uidl
        await st.objects.put(user.namespace, uuid.uuid4().hex, MAIL, meta)
    await st.admin().force_resync(st, "carol")

    for round_ in range(2):
        st2 = await started(tmp_path)          # a fresh process: only what is on disk
        counting = st2.objects = CountingObjects(st2.objects)
        u = await st2.open_user("carol")
        box = await u.open_mailbox("INBOX")
        got = [m async for m in box.fetch(list(box.uids()), {FetchItem.POP3_UIDL})]
        assert sorted(m.pop3_uidl for m in got) == ["", "", "UID123-1191231"]
        # Round 0: force-resync dropped the cache, so each object's metadata is read once;
        # round 1: everything comes from the cache.
        assert counting.meta_reads == (3 if round_ == 0 else 0)
        # Other cached fields still work alongside (and do not lose the UIDL when recomputed).
        env = [m async for m in box.fetch(list(box.uids()), {FetchItem.ENVELOPE, FetchItem.POP3_UIDL})]
        assert all(m.envelope and m.pop3_uidl is not None for m in env)
        await box.close()


@pytest_twisted.ensureDeferred
async def test_saved_mail_never_reads_metadata_for_uidl(tmp_path):
    st = await started(tmp_path)
    counting = st.objects = CountingObjects(st.objects)
    user = await st.open_user("dave")
    tx = user.begin_save("INBOX")
    await tx.add(MAIL)
    await tx.commit()
    box = await user.open_mailbox("INBOX")
    assert [m.pop3_uidl async for m in box.fetch(list(box.uids()), {FetchItem.POP3_UIDL})] == [""]
    assert counting.meta_reads == 0


@pytest_twisted.ensureDeferred
async def test_save_with_precomputed_analysis(tmp_path, monkeypatch):
    st = await started(tmp_path)
    analysis = mime.analyze(MAIL)
    calls = []
    real = mime.analyze
    monkeypatch.setattr(mime, "analyze", lambda data: calls.append(len(data)) or real(data))
    for name in ("erin", "frank"):
        user = await st.open_user(name)
        tx = user.begin_save("INBOX")
        await tx.add(MAIL, analysis=analysis)
        await tx.commit()
        box = await user.open_mailbox("INBOX")
        (m,) = [m async for m in box.fetch(list(box.uids()), {FetchItem.ENVELOPE, FetchItem.DATA})]
        assert m.data == MAIL and m.envelope == analysis.envelope
        assert box.info(box.uids()[0]).vsize == analysis.vsize
    assert calls == []


@pytest_twisted.ensureDeferred
async def test_try_lock_does_not_wait(tmp_path):
    """The local driver's try_lock is a non-blocking flock."""
    idx = make_storage(tmp_path).index_store
    await idx.start()
    first = await idx.try_lock("u/locks/x.lock")
    t0 = time.monotonic()
    assert await idx.try_lock("u/locks/x.lock") is None
    assert time.monotonic() - t0 < 0.5
    await first.release()
    second = await idx.try_lock("u/locks/x.lock")
    assert second is not None
    await second.release()
