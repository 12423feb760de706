"""LIST-EXTENDED (RFC 5258), LIST-STATUS (RFC 5819), SPECIAL-USE / CREATE-SPECIAL-USE (RFC 6154),
modified UTF-7 names, and LIST under IMAP4rev2: transcripts over real rbox storage."""

import pytest
import pytest_twisted
from twisted.internet import defer

from tests.protocol.imap_session import make_context
from tests.protocol.test_imap_messages import mail, session_with

pytestmark = pytest.mark.usefixtures("transcript_backend")   # runs on local and on Ceph


@pytest.fixture
def ctx(tmp_path):
    return pytest_twisted.blockon(defer.Deferred.fromCoroutine(make_context(tmp_path)))


@pytest_twisted.ensureDeferred
async def test_list_extended_and_special_use(ctx):
    w = await session_with(ctx, mail(1))
    assert (await w.cmd("CREATE Fruit/Apple"))[0].endswith(b"] CREATE completed")
    # RFC 6154 section 6 example shape: CREATE with USE, then LIST (SPECIAL-USE).
    assert (await w.cmd("CREATE Fruit/Banana (USE (\\archive))"))[0].startswith(b"t2 OK [MAILBOXID (")
    assert await w.cmd("CREATE X (USE (\\Bogus))") == [b"t3 NO [USEATTR] Unsupported special-use attribute"]
    assert (await w.cmd("CREATE X (FOO (\\Archive))"))[-1] == b"t4 BAD Unknown CREATE parameter FOO"
    await w.cmd("SUBSCRIBE Fruit/Apple")
    await w.cmd("SUBSCRIBE Gone/Child")
    await w.cmd("UNSUBSCRIBE Junk")
    assert await w.cmd('LIST (SPECIAL-USE) "" "*"') == [
        b'* LIST (\\HasNoChildren \\Archive) "/" Archive', b'* LIST (\\HasNoChildren \\Drafts) "/" Drafts',
        b'* LIST (\\HasNoChildren \\Archive) "/" Fruit/Banana', b'* LIST (\\HasNoChildren \\Junk) "/" Junk',
        b'* LIST (\\HasNoChildren \\Sent) "/" Sent', b'* LIST (\\HasNoChildren \\Trash) "/" Trash',
        b"t8 OK LIST completed"]
    # RFC 5258 5. examples: SUBSCRIBED selection lists subscriptions, existing or not.
    lines = await w.cmd('LIST (SUBSCRIBED) "" "*"')
    assert b'* LIST (\\HasNoChildren \\Subscribed) "/" Fruit/Apple' in lines
    assert b'* LIST (\\NonExistent \\HasNoChildren \\Subscribed) "/" Gone/Child' in lines
    assert not any(b"Junk" in x or b"Banana" in x for x in lines)
    # RECURSIVEMATCH: parents of matching children carry CHILDINFO.
    lines = await w.cmd('LIST (SUBSCRIBED RECURSIVEMATCH) "" "%"')
    assert b'* LIST (\\HasChildren) "/" Fruit ("CHILDINFO" ("SUBSCRIBED"))' in lines
    assert b'* LIST (\\NonExistent \\HasChildren) "/" Gone ("CHILDINFO" ("SUBSCRIBED"))' in lines
    assert not any(b"Junk" in x for x in lines)
    assert (await w.cmd('LIST (RECURSIVEMATCH) "" "*"'))[-1] == b"t11 BAD RECURSIVEMATCH needs another selection option"
    # Several patterns, RETURN (SUBSCRIBED).
    assert await w.cmd('LIST "" ("INBOX" "Fruit/%") RETURN (SUBSCRIBED)') == [
        b'* LIST (\\HasNoChildren \\Subscribed) "/" INBOX', b'* LIST (\\HasNoChildren \\Subscribed) "/" Fruit/Apple',
        b'* LIST (\\HasNoChildren \\Archive) "/" Fruit/Banana', b"t12 OK LIST completed"]
    # LIST-STATUS (RFC 5819): STATUS right after each LIST.
    assert await w.cmd('LIST "" "I%" RETURN (CHILDREN STATUS (MESSAGES UNSEEN HIGHESTMODSEQ))') == [
        b'* LIST (\\HasNoChildren) "/" INBOX', b"* STATUS INBOX (MESSAGES 1 UNSEEN 1 HIGHESTMODSEQ 2)",
        b"t13 OK LIST completed"]
    assert (await w.cmd('LIST "" "*" RETURN (STATUS (FOO))'))[-1] == b"t14 BAD Unknown STATUS item FOO"
    assert (await w.cmd('LIST (FOO) "" "*"'))[-1] == b"t15 BAD Unknown LIST selection option FOO"
    assert await w.cmd('LIST "" ""') == [b'* LIST (\\Noselect) "/" ""', b"t16 OK LIST completed"]


@pytest_twisted.ensureDeferred
async def test_names_in_modified_utf7_and_utf8(ctx):
    w = await session_with(ctx)
    assert (await w.cmd("CREATE &AMk-t&AOk-"))[0].endswith(b"] CREATE completed")
    assert await w.cmd('LIST "" "&AMk-*"') == [b'* LIST (\\HasNoChildren) "/" &AMk-t&AOk-', b"t2 OK LIST completed"]
    assert (await w.cmd("STATUS &AMk-t&AOk- (MESSAGES)"))[0] == b"* STATUS &AMk-t&AOk- (MESSAGES 0)"
    # The same mailbox however it is named: INBOX in any case, UTF-8 once IMAP4rev2 is enabled.
    assert (await w.cmd("STATUS iNbOx (MESSAGES)"))[0] == b"* STATUS INBOX (MESSAGES 0)"
    await w.cmd("ENABLE IMAP4rev2")
    assert await w.cmd('LIST "" "\u00c9*"') == [
        '* LIST (\\HasNoChildren) "/" "\u00c9t\u00e9"'.encode("utf-8"), b"t6 OK LIST completed"]
    lines = await w.cmd("SELECT \"\u00c9t\u00e9\"")
    assert '* LIST () "/" "\u00c9t\u00e9"'.encode("utf-8") in lines
    assert lines[-1].endswith(b"OK [READ-WRITE] Select completed")
