"""QuotaStorage around rbox on the embedded default with the local dictionary: the counters
follow saves, copies, moves, expunges, deletes and renames (also across processes: two storage
instances on one state directory), and refusals leave everything as it was."""

import pytest
import pytest_twisted
from twisted.internet import defer

from mailserver import config as configmod
from mailserver import plugins
from mailserver.storage.api import DELETED, StoreMode
from mailserver.storage.errors import ErrorKind, StorageError
from mailserver.storage.quota import MESSAGES_KEY, STORAGE_KEY, QuotaStorage
from mailserver.storage.quota_rules import QuotaRules, RuleError
from plugins.local.dict import LocalDict

RULES = {"alice": {1: "*:storage=10K:messages=5", 2: "Trash:storage=+5K", 3: "Spam:ignore"},
         "bad": {1: "*:storage=many"}}


def mail(n: int, size: int = 1000) -> bytes:
    head = b"Subject: m%d\r\n\r\n" % n
    return head + b"x" * (size - len(head) - 2) + b"\r\n"


async def make(tmp_path):
    cfg = configmod.load(None, {"server": {"state_dir": str(tmp_path)}})
    inner = plugins.load(plugins.MAILBOX_FORMATS, "rbox").from_config(cfg, plugins)
    dictionary = LocalDict(str(tmp_path / "dict"))

    async def rules_for(username):
        return QuotaRules.from_slots(RULES.get(username, {}))
    storage = QuotaStorage(inner, dictionary, rules_for, cache_seconds=0)
    await storage.start()
    return storage


async def counters(storage, user="alice"):
    values = await storage.dict.iterate(user, "priv/quota/")
    return int(values.get(STORAGE_KEY, -1)), int(values.get(MESSAGES_KEY, -1))


async def save(user, box, *messages):
    tx = user.begin_save(box)
    try:
        for m in messages:
            await tx.add(m)
        return await tx.commit()
    except BaseException:
        await tx.rollback()
        raise


@pytest.fixture
def storage(tmp_path):
    st = pytest_twisted.blockon(defer.ensureDeferred(make(tmp_path)))
    yield st
    pytest_twisted.blockon(defer.ensureDeferred(st.stop()))


@pytest_twisted.ensureDeferred
async def test_counts_and_refusals(storage):
    user = await storage.open_user("alice")
    await save(user, "INBOX", mail(1), mail(2), mail(3))
    assert await counters(storage) == (3000, 3)
    with pytest.raises(StorageError) as e:
        await save(user, "INBOX", mail(4, 4000), mail(5, 4000))    # all or nothing
    assert e.value.kind is ErrorKind.OVER_QUOTA
    assert await counters(storage) == (3000, 3)
    await user.check_quota("INBOX", 7000)
    with pytest.raises(StorageError):
        await user.check_quota("INBOX", 7241)
    await user.check_quota("Trash", 7241)              # Trash: 5K more
    await user.create_mailbox("Spam")
    await save(user, "Spam", mail(6, 9000))           # ignored: neither refused nor counted
    assert await counters(storage) == (3000, 3)
    box = await user.open_mailbox("INBOX")
    with pytest.raises(StorageError):
        await box.copy([1, 2, 3], "INBOX")            # 3 more messages: over messages=5
    await box.copy([1, 2], "Trash")
    assert await counters(storage) == (5000, 5)
    await box.move([3], "Archive")                    # within counted mailboxes: no change
    assert await counters(storage) == (5000, 5)
    spam = await user.open_mailbox("Spam")
    with pytest.raises(StorageError):
        await spam.move([1], "INBOX")                 # would grow usage past the limits
    await box.move([1], "Spam")                       # into ignored: room back
    assert await counters(storage) == (4000, 4)
    await box.store([2], StoreMode.ADD, [DELETED])
    assert await box.expunge() == [2]
    assert await counters(storage) == (3000, 3)
    await user.delete_mailbox("Trash")
    assert await counters(storage) == (1000, 1)
    await user.rename_mailbox("Archive", "Spam/Old")   # the rule names Spam only: still counted
    assert await counters(storage) == (1000, 1)
    await user.rename_mailbox("Spam", "Counted")       # ignored mail becomes counted
    assert await counters(storage) == (11000, 3)
    await box.close()
    await spam.close()
    await user.close()


@pytest_twisted.ensureDeferred
async def test_expunge_of_mail_another_process_saved(tmp_path):
    first = await make(tmp_path)
    second = await make(tmp_path)
    try:
        a = await first.open_user("alice")
        b = await second.open_user("alice")
        await save(a, "INBOX", mail(1))
        box = await a.open_mailbox("INBOX")
        await save(b, "INBOX", mail(2, 2000))           # this view has not seen it
        other = await b.open_mailbox("INBOX")
        await other.refresh()
        await other.store(list(other.uids()), StoreMode.ADD, [DELETED])
        assert await counters(first) == (3000, 2)
        # The first process's index catches up (as an IMAP session's next command makes it);
        # the view still holds only message 1.
        await a.status("INBOX")
        assert list(box.uids()) == [1]
        gone = await box.expunge()                     # sizes unknown here: recounted
        assert sorted(gone) == [1, 2]
        assert await counters(first) == (0, 0)
        await box.close()
        await other.close()
    finally:
        await first.stop()
        await second.stop()


@pytest_twisted.ensureDeferred
async def test_missing_counters_recounted_and_bad_rules(storage):
    user = await storage.open_user("alice")
    await save(user, "INBOX", mail(1), mail(2))
    await storage.dict.transaction("alice", sets={STORAGE_KEY: None, MESSAGES_KEY: None})
    root = await user.quota("User quota")
    assert [(r.name, r.usage, r.limit) for r in root.resources] == [("STORAGE", 2000, 10240), ("MESSAGE", 2, 5)]
    assert await user.recalc() == (2000, 2)
    bad = await storage.open_user("bad")
    with pytest.raises(StorageError) as e:
        await save(bad, "INBOX", mail(1))
    assert e.value.kind is ErrorKind.TEMPORARY
    with pytest.raises(RuleError):
        QuotaRules.from_slots(RULES["bad"])
    await user.close()
    await bad.close()
