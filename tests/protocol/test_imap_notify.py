"""NOTIFY (RFC 5465) transcripts: STATUS for other mailboxes, immediate updates of the selected
one, LIST for mailbox and subscription changes, NONE, and the refusals."""

import pytest
import pytest_twisted
from twisted.internet import defer

from tests.protocol.imap_session import Wire, make_context, settle
from tests.protocol.test_imap_messages import append, mail, session_with

pytestmark = pytest.mark.usefixtures("transcript_backend")   # runs on local and on Ceph


@pytest.fixture
def ctx(tmp_path):
    return pytest_twisted.blockon(defer.Deferred.fromCoroutine(make_context(
        tmp_path, imap={"idle_check_interval": 0.05})))


async def other(ctx):
    b = Wire(ctx)
    b.take()
    await b.login()
    return b


@pytest_twisted.ensureDeferred
async def test_notify_other_mailboxes_and_selected(ctx):
    w = await session_with(ctx, mail(1))
    await w.cmd("SELECT INBOX")
    # RFC 5465 example shape: STATUS first for every watched mailbox.
    lines = await w.cmd("NOTIFY SET STATUS (selected (MessageNew MessageExpunge FlagChange)) "
                        "(mailboxes (Archive Drafts) (MessageNew MessageExpunge))")
    assert lines == [b"* STATUS Archive (MESSAGES 0 UIDNEXT 1 UIDVALIDITY " + lines[0].split(b"UIDVALIDITY ")[1],
                     lines[1], b"t2 OK NOTIFY completed"]
    assert lines[1].startswith(b"* STATUS Drafts (MESSAGES 0 UIDNEXT 1 ")
    b = await other(ctx)
    # A delivery to a watched mailbox arrives without any command from the client.
    await append(b, "Archive", mail(2))
    data = await w.until(b"* STATUS Archive")
    data += await w.until(b"\r\n") if not data.endswith(b"\r\n") else b""
    assert b"* STATUS Archive (MESSAGES 1 UIDNEXT 2 UIDVALIDITY " in data and b"UNSEEN 1)" in data
    # Not watched: nothing.
    await append(b, "Trash", mail(3))
    # The selected mailbox: EXISTS, and later the expunge, as soon as they happen.
    await append(b, "INBOX", mail(4))
    assert b"* 2 EXISTS\r\n" in await w.until(b"EXISTS\r\n")
    await b.cmd("SELECT INBOX")
    await b.cmd("STORE 1 +FLAGS.SILENT (\\Deleted)")
    await b.cmd("EXPUNGE")
    data = await w.until(b"* 1 EXPUNGE\r\n")
    assert b"Trash" not in data
    # NOTIFY NONE stops it.
    assert await w.cmd("NOTIFY NONE") == [b"t3 OK NOTIFY completed"]
    await append(b, "Archive", mail(5))
    await settle(10)
    assert b"STATUS" not in w.take()


@pytest_twisted.ensureDeferred
async def test_notify_mailbox_names_and_subscriptions(ctx):
    w = await session_with(ctx)
    assert await w.cmd("NOTIFY SET (personal (MailboxName SubscriptionChange))") == [b"t1 OK NOTIFY completed"]
    b = await other(ctx)
    # (The list is checked every idle_check_interval on the session's clock, a test clock here.)
    await b.cmd("CREATE Projects")
    w.clock.advance(0.1)
    assert await w.until(b'* LIST () "/" Projects\r\n')
    await b.cmd("SUBSCRIBE Projects")
    w.clock.advance(0.1)
    assert await w.until(b'* LIST (\\Subscribed) "/" Projects\r\n')
    await b.cmd("DELETE Projects")
    w.clock.advance(0.1)
    assert await w.until(b'* LIST (\\NonExistent \\Subscribed) "/" Projects\r\n')


@pytest_twisted.ensureDeferred
async def test_notify_refusals(ctx):
    w = await session_with(ctx)
    assert await w.cmd("NOTIFY SET (personal (AnnotationChange))") == [
        b"t1 NO [BADEVENT (MessageNew MessageExpunge FlagChange MailboxName SubscriptionChange)] "
        b"Event not supported"]
    assert (await w.cmd("NOTIFY SET (personal (MessageNew))"))[-1].startswith(b"t2 BAD MessageNew and MessageExpunge")
    assert (await w.cmd("NOTIFY SET (nowhere (MessageNew))"))[-1] == b"t3 BAD Unknown NOTIFY filter NOWHERE"
    assert (await w.cmd("NOTIFY BOGUS"))[-1] == b"t4 BAD Expected SET or NONE"
    assert await w.cmd("NOTIFY SET (inboxes NONE)") == [b"t5 OK NOTIFY completed"]
