"""CONDSTORE and QRESYNC (RFC 7162) transcripts, after the RFC's examples: MODSEQ, CHANGEDSINCE,
UNCHANGEDSINCE with [MODIFIED], HIGHESTMODSEQ, SELECT (QRESYNC ...), VANISHED (EARLIER),
VANISHED instead of EXPUNGE, [CLOSED].  Real rbox storage over StringTransport."""

import pytest
import pytest_twisted
from twisted.internet import defer

from tests.protocol.imap_session import Wire, make_context
from tests.protocol.test_imap_messages import mail, session_with

pytestmark = pytest.mark.usefixtures("transcript_backend")   # runs on local and on Ceph


@pytest.fixture
def ctx(tmp_path):
    return pytest_twisted.blockon(defer.Deferred.fromCoroutine(make_context(tmp_path)))


async def second(ctx):
    b = Wire(ctx)
    b.take()
    await b.login()
    await b.cmd("SELECT INBOX")
    return b


@pytest_twisted.ensureDeferred
async def test_condstore_fetch_store_search(ctx):
    w = await session_with(ctx, mail(1), mail(2), mail(3), mail(4))
    # Without CONDSTORE nothing mentions mod-sequences.
    lines = await w.cmd("SELECT INBOX")
    assert not any(b"HIGHESTMODSEQ" in x for x in lines)
    assert await w.cmd("FETCH 1 FLAGS") == [b"* 1 FETCH (FLAGS (\\Recent))", b"t2 OK FETCH completed"]
    # FETCH MODSEQ enables CONDSTORE: the client hears HIGHESTMODSEQ first (RFC 7162 3.1).
    assert await w.cmd("FETCH 1:2 (MODSEQ)") == [
        b"* OK [HIGHESTMODSEQ 5] Highest", b"* 1 FETCH (MODSEQ (2))", b"* 2 FETCH (MODSEQ (3))",
        b"t3 OK FETCH completed"]
    # From now on FLAGS come with MODSEQ.
    assert await w.cmd("FETCH 4 FLAGS") == [b"* 4 FETCH (FLAGS (\\Recent) MODSEQ (5))", b"t4 OK FETCH completed"]
    # RFC 7162 3.1.3 example: .SILENT still reports the new MODSEQ; failures in [MODIFIED].
    assert await w.cmd("STORE 3,1,2 (UNCHANGEDSINCE 2) +FLAGS.SILENT (\\Deleted)") == [
        b"* 1 FETCH (MODSEQ (6))", b"t5 OK [MODIFIED 2:3] Conditional STORE failed"]
    assert await w.cmd("UID STORE 2:3 (UNCHANGEDSINCE 6) FLAGS ($Work)") == [
        b"* 2 FETCH (UID 2 FLAGS (\\Recent $Work) MODSEQ (7))",
        b"* 3 FETCH (UID 3 FLAGS (\\Recent $Work) MODSEQ (7))", b"t6 OK STORE completed"]
    assert await w.cmd("UID STORE 1:4 (UNCHANGEDSINCE 5) +FLAGS.SILENT (\\Seen)") == [
        b"* 4 FETCH (UID 4 MODSEQ (8))", b"t7 OK [MODIFIED 1:3] Conditional STORE failed"]
    # UNCHANGEDSINCE 0 always fails.
    assert (await w.cmd("STORE 4 (UNCHANGEDSINCE 0) +FLAGS (\\Seen)"))[-1] == (
        b"t8 OK [MODIFIED 4] Conditional STORE failed")
    # CHANGEDSINCE returns only messages changed after the given mod-sequence, with MODSEQ.
    assert await w.cmd("FETCH 1:* (UID) (CHANGEDSINCE 6)") == [
        b"* 2 FETCH (UID 2 MODSEQ (7))", b"* 3 FETCH (UID 3 MODSEQ (7))", b"* 4 FETCH (UID 4 MODSEQ (8))",
        b"t9 OK FETCH completed"]
    assert await w.cmd("SEARCH MODSEQ 7") == [b"* SEARCH 2 3 4 (MODSEQ 8)", b"t10 OK SEARCH completed"]
    assert await w.cmd('SEARCH MODSEQ "/flags/\\\\draft" all 8') == [b"* SEARCH 4 (MODSEQ 8)",
                                                                    b"t11 OK SEARCH completed"]
    assert await w.cmd("SEARCH MODSEQ 9") == [b"* SEARCH", b"t12 OK SEARCH completed"]
    assert await w.cmd("UID SEARCH RETURN (ALL) MODSEQ 7") == [
        b'* ESEARCH (TAG "t13") UID ALL 2:4 MODSEQ 8', b"t13 OK SEARCH completed"]
    lines = await w.cmd("STATUS Trash (HIGHESTMODSEQ MESSAGES)")
    assert lines[0].startswith(b"* STATUS Trash (HIGHESTMODSEQ ") and lines[0].endswith(b" MESSAGES 0)")
    assert (await w.cmd("FETCH 1 FLAGS (CHANGEDSINCE x)"))[-1].startswith(b"t15 BAD")
    assert (await w.cmd("FETCH 1 FLAGS (CHANGEDSINCE 1 VANISHED)"))[-1] == (
        b"t16 BAD VANISHED is only allowed with UID FETCH")
    assert (await w.cmd("UID FETCH 1 FLAGS (CHANGEDSINCE 1 VANISHED)"))[-1] == (
        b"t17 BAD VANISHED needs QRESYNC to be enabled")
    assert (await w.cmd("STORE 1 (FROB 1) +FLAGS x"))[-1] == b"t18 BAD Unknown store modifier FROB"


@pytest_twisted.ensureDeferred
async def test_other_sessions_changes_carry_modseq(ctx):
    a = await session_with(ctx, mail(1), mail(2))
    assert await a.cmd("ENABLE CONDSTORE") == [b"* ENABLED CONDSTORE", b"t1 OK ENABLE completed"]
    lines = await a.cmd("EXAMINE INBOX")
    assert b"* OK [HIGHESTMODSEQ 3] Highest" in lines
    b = await second(ctx)
    await b.cmd("STORE 2 +FLAGS (\\Flagged)")
    assert await a.cmd("NOOP") == [b"* 2 FETCH (UID 2 FLAGS (\\Flagged \\Recent) MODSEQ (4))",
                                   b"t3 OK NOOP completed"]


@pytest_twisted.ensureDeferred
async def test_qresync_select_and_vanished(ctx):
    w = await session_with(ctx, *(mail(i) for i in range(1, 7)))
    assert (await w.cmd("SELECT INBOX (QRESYNC (1 1))"))[-1] == (
        b"t1 BAD QRESYNC must be enabled first (ENABLE QRESYNC)")
    assert await w.cmd("ENABLE QRESYNC") == [b"* ENABLED QRESYNC", b"t2 OK ENABLE completed"]
    lines = await w.cmd("SELECT INBOX")
    uidvalidity = int(next(x for x in lines if b"UIDVALIDITY" in x).split()[3].rstrip(b"]"))
    assert b"* OK [HIGHESTMODSEQ 7] Highest" in lines
    await w.cmd("STORE 2,4,6 +FLAGS.SILENT (\\Deleted)")                # modseq 8
    # With QRESYNC on, EXPUNGE answers VANISHED and the tagged OK carries HIGHESTMODSEQ.
    assert await w.cmd("EXPUNGE") == [b"* VANISHED 2,4,6", b"t5 OK [HIGHESTMODSEQ 9] EXPUNGE completed"]
    await w.cmd("STORE 1 +FLAGS.SILENT (\\Seen)")                        # modseq 10
    b = await second(ctx)
    await b.cmd("UID STORE 3 +FLAGS.SILENT (\\Deleted)")
    await b.cmd("EXPUNGE")                                               # 3 goes, modseq 12
    # Another session's expunge arrives as VANISHED too (not during FETCH).
    lines = await w.cmd("FETCH 1 UID")
    assert b"* VANISHED 3" not in lines
    assert (await w.cmd("NOOP"))[0] == b"* VANISHED 3"
    # RFC 7162 3.2.5 example shape: [CLOSED], the usual responses, VANISHED (EARLIER), FETCH.
    lines = await w.cmd(f"SELECT INBOX (QRESYNC ({uidvalidity} 7 1:6))")
    assert lines[0] == b"* OK [CLOSED] Previous mailbox closed"
    assert b"* OK [HIGHESTMODSEQ 12] Highest" in lines
    tail = lines[lines.index(b"* OK [HIGHESTMODSEQ 12] Highest") + 1:]
    assert tail == [b"* VANISHED (EARLIER) 2:4,6",
                    b"* 1 FETCH (UID 1 FLAGS (\\Seen) MODSEQ (10))",
                    b"t9 OK [READ-WRITE] Select completed"]
    # known-uids limit the answer; a different UIDVALIDITY means no resync data at all.
    lines = await w.cmd(f"SELECT INBOX (QRESYNC ({uidvalidity} 9 3:5 (1:2 1,5)))")
    assert lines[-2:] == [b"* VANISHED (EARLIER) 3", b"t10 OK [READ-WRITE] Select completed"]
    lines = await w.cmd(f"EXAMINE INBOX (QRESYNC ({uidvalidity + 1} 1))")
    assert not any(b"VANISHED" in x or b"FETCH" in x for x in lines)
    assert lines[-1] == b"t11 OK [READ-ONLY] Examine completed"
    # UID FETCH ... (CHANGEDSINCE m VANISHED): 1:* covers the expunged tail too.
    await w.cmd("SELECT INBOX")
    assert await w.cmd("UID FETCH 1:* (FLAGS) (CHANGEDSINCE 9 VANISHED)") == [
        b"* VANISHED (EARLIER) 3", b"* 1 FETCH (UID 1 FLAGS (\\Seen) MODSEQ (10))", b"t13 OK FETCH completed"]
    assert await w.cmd("UID FETCH 4:5 (FLAGS) (CHANGEDSINCE 1 VANISHED)") == [
        b"* VANISHED (EARLIER) 4", b"* 2 FETCH (UID 5 FLAGS () MODSEQ (6))", b"t14 OK FETCH completed"]


@pytest_twisted.ensureDeferred
async def test_vanished_without_history_reports_every_missing_uid(ctx, monkeypatch):
    w = await session_with(ctx, mail(1), mail(2), mail(3))
    await w.cmd("ENABLE QRESYNC")
    lines = await w.cmd("SELECT INBOX")
    uidvalidity = int(next(x for x in lines if b"UIDVALIDITY" in x).split()[3].rstrip(b"]"))
    await w.cmd("STORE 2 +FLAGS.SILENT (\\Deleted)")
    await w.cmd("EXPUNGE")
    box = w.proto.selected.mailbox
    monkeypatch.setattr(type(box), "vanished_since", lambda self, modseq: None)
    assert await w.cmd("UID FETCH 1:* (UID) (CHANGEDSINCE 100 VANISHED)") == [
        b"* VANISHED (EARLIER) 2", b"t5 OK FETCH completed"]
    lines = await w.cmd(f"SELECT INBOX (QRESYNC ({uidvalidity} 100))")
    assert lines[-2:] == [b"* VANISHED (EARLIER) 2", b"t6 OK [READ-WRITE] Select completed"]
