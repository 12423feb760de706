"""IMAP transcripts with messages: APPEND, SELECT, FETCH, STORE, SEARCH, COPY, MOVE, EXPUNGE,
CLOSE, IDLE and the untagged updates between sessions.  Real rbox storage (local drivers)."""

import pytest
import pytest_twisted
from twisted.internet import defer

from mailserver.storage.api import FetchItem
from tests.protocol.imap_session import Wire, make_context, settle

pytestmark = pytest.mark.usefixtures("transcript_backend")   # runs on local and on Ceph

MAIL = (b"From: Alice <alice@example.org>\r\nTo: bob@example.org\r\nSubject: Hello %d\r\n"
        b"Date: Mon, 23 Nov 2026 10:00:00 +0000\r\nMessage-ID: <%d@example.org>\r\n\r\n"
        b"Body %d with a needle\r\n")

MULTIPART = (b"From: carol@example.org\r\nSubject: parts\r\nMIME-Version: 1.0\r\n"
             b"Content-Type: multipart/mixed; boundary=XX\r\n\r\n--XX\r\n"
             b"Content-Type: text/plain\r\n\r\nfirst part\r\n--XX\r\n"
             b"Content-Type: text/html\r\n\r\n<p>second</p>\r\n--XX--\r\n")


def mail(n):
    return MAIL % (n, n, n)


@pytest.fixture
def ctx(tmp_path):
    return pytest_twisted.blockon(defer.Deferred.fromCoroutine(make_context(tmp_path)))


async def append(w, box, data, extra=""):
    w.send(b"ap APPEND %s %s{%d}\r\n" % (box.encode(), extra.encode(), len(data)))
    assert await w.until(b"\r\n") == b"+ OK\r\n"
    w.send(data + b"\r\n")
    return (await w.tagged("ap")).split(b"\r\n")[:-1]


async def session_with(ctx, *messages):
    w = Wire(ctx)
    w.take()
    await w.login()
    w._tag = 0
    for m in messages:
        lines = await append(w, "INBOX", m)
        assert lines[-1].startswith(b"ap OK [APPENDUID "), lines
    return w


@pytest_twisted.ensureDeferred
async def test_append_and_select(ctx):
    w = await session_with(ctx)
    lines = await append(w, "INBOX", mail(1), "(\\Seen $Work) \"17-Jul-1996 02:44:25 -0700\" ")
    uidvalidity = lines[-1].split()[3]
    assert lines == [b"ap OK [APPENDUID %s 1] APPEND completed" % uidvalidity]
    lines = await append(w, "Nowhere", mail(2))
    assert lines == [b"ap NO [TRYCREATE] Mailbox does not exist"]
    w.send(b"m APPEND INBOX {%d+}\r\n%s {%d+}\r\n%s\r\n" % (len(mail(2)), mail(2), len(mail(3)), mail(3)))
    assert await w.tagged("m") == b"m OK [APPENDUID %s 2:3] APPEND completed\r\n" % uidvalidity
    assert await w.cmd("APPEND INBOX {0+}\r\n") == [b"t1 NO [CLIENTBUG] Cannot save an empty message"]
    assert (await w.cmd('APPEND INBOX "bad date" {1+}\r\nx'))[-1:] == [
        b't2 BAD Invalid date-time (expected e.g. "17-Jul-1996 02:44:25 -0700")']
    assert (await w.cmd("APPEND INBOX (\\Recent) {1+}\r\nx"))[-1] == b"t3 BAD Invalid system flag \\Recent"
    lines = await w.cmd("SELECT inbox")
    assert lines == [
        b"* FLAGS (\\Answered \\Deleted \\Draft \\Flagged \\Seen $Work)",
        b"* OK [PERMANENTFLAGS (\\Answered \\Deleted \\Draft \\Flagged \\Seen $Work \\*)] Flags permitted",
        b"* 3 EXISTS", b"* 3 RECENT", b"* OK [UNSEEN 2] First unseen message",
        b"* OK [UIDVALIDITY %s] UIDs valid" % uidvalidity, b"* OK [UIDNEXT 4] Predicted next UID",
        b"* OK [MAILBOXID (%s)] Ok" % w.proto.selected.mailbox.guid.encode(),
        b"t4 OK [READ-WRITE] Select completed"]
    lines = await w.cmd("FETCH 1 (FLAGS INTERNALDATE RFC822.SIZE)")
    assert lines == [b'* 1 FETCH (FLAGS (\\Recent \\Seen $Work) INTERNALDATE "17-Jul-1996 09:44:25 +0000" '
                     b'RFC822.SIZE %d)' % len(mail(1)), b"t5 OK FETCH completed"]
    w2 = Wire(ctx)
    w2.take()
    await w2.login()
    lines = await w2.cmd("EXAMINE INBOX")
    assert b"* 0 RECENT" in lines and b"* OK [PERMANENTFLAGS ()] Read-only mailbox" in lines
    assert lines[-1] == b"t2 OK [READ-ONLY] Examine completed"


@pytest_twisted.ensureDeferred
async def test_fetch_items(ctx):
    w = await session_with(ctx, mail(1), MULTIPART)
    await w.cmd("SELECT INBOX")
    lines = await w.cmd("FETCH 1 (UID ENVELOPE)")
    assert lines[0].startswith(b'* 1 FETCH (UID 1 ENVELOPE ("Mon, 23 Nov 2026 10:00:00 +0000" "Hello 1" '
                               b'(("Alice" NIL "alice" "example.org"))')
    lines = await w.cmd("UID FETCH 2 (BODY.PEEK[2] BODY.PEEK[1.MIME] BODY.PEEK[HEADER.FIELDS (subject)])")
    assert lines[0] == (b"* 2 FETCH (UID 2 BODY[2] {13}")
    data = b"\r\n".join(lines)
    assert b"<p>second</p> BODY[1.MIME] {28}\r\nContent-Type: text/plain\r\n\r\n" in data
    assert b"BODY[HEADER.FIELDS (subject)] {18}\r\nSubject: parts\r\n\r\n)" in data
    lines = await w.cmd("FETCH 1 (BODY[TEXT]<5.6> FLAGS)")
    assert b"\r\n".join(lines) == (b"* 1 FETCH (BODY[TEXT]<5> {6}\r\n1 with FLAGS (\\Recent \\Seen))\r\n"
                                   b"t4 OK FETCH completed")
    lines = await w.cmd("FETCH 2 RFC822.HEADER")
    assert lines[0] == b"* 2 FETCH (RFC822.HEADER {%d}" % (MULTIPART.index(b"\r\n\r\n") + 4)
    lines = await w.cmd("FETCH 2 BODY[9]")
    assert lines[0] == b"* 2 FETCH (BODY[9] NIL FLAGS (\\Recent \\Seen))"
    lines = await w.cmd("FETCH 1:2 FAST")
    assert len(lines) == 3 and lines[1].startswith(b"* 2 FETCH (FLAGS (\\Recent \\Seen) INTERNALDATE ")
    lines = await w.cmd("FETCH 2 BODYSTRUCTURE")
    assert lines[0].startswith(b'* 2 FETCH (BODYSTRUCTURE (("text" "plain" ')
    assert await w.cmd("FETCH 3 FLAGS") == [b"t9 BAD Message sequence number 3 does not exist"]
    assert await w.cmd("UID FETCH 3:9 FLAGS") == [b"t10 OK FETCH completed"]
    assert await w.cmd("FETCH 1 (FLAGS FROB)") == [b"t11 BAD Unknown fetch attribute FROB"]
    assert await w.cmd("FETCH x FLAGS") == [b"t12 BAD Invalid sequence set element 'x'"]


@pytest_twisted.ensureDeferred
async def test_fetch_whole_bodies_byte_exact(ctx):
    # CRLF mail is sent as stored (no conversion pass); bare LF becomes CRLF; big literals are
    # written as pieces of their own, so check the exact bytes around them.
    big = (b"Subject: big\r\n\r\n" + b"0123456789abcdef" * 4096 + b"\r\n")
    bare = b"Subject: bare\nX-A: 1\n\nline one\nline two\r\nline three\n"
    w = await session_with(ctx, mail(1), big, bare, bare * 2000)
    await w.cmd("SELECT INBOX")
    w.take()
    w.send(b"f UID FETCH 1:4 (BODY.PEEK[] FLAGS)\r\n")
    data = await w.tagged("f")
    crlf_bare = bare.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    expected = b"".join(
        b"* %d FETCH (UID %d BODY[] {%d}\r\n%s FLAGS (\\Recent))\r\n" % (n, n, len(m), m)
        for n, m in ((1, mail(1)), (2, big), (3, crlf_bare), (4, crlf_bare * 2000)))
    assert data == expected + b"f OK FETCH completed\r\n"
    lines = await w.cmd("FETCH 2 (BODY.PEEK[HEADER] BODY.PEEK[]<10.20000> RFC822.SIZE)")
    assert b"\r\n".join(lines[:-1]) + b"\r\n" == (
        b"* 2 FETCH (BODY[HEADER] {16}\r\nSubject: big\r\n\r\n BODY[]<10> {20000}\r\n%s RFC822.SIZE %d)\r\n"
        % (big[10:20010], len(big)))


@pytest_twisted.ensureDeferred
async def test_store_search_copy_move_expunge(ctx):
    w = await session_with(ctx, mail(1), mail(2), mail(3), mail(4))
    await w.cmd("SELECT INBOX")
    assert await w.cmd("STORE 1:2 +FLAGS (\\Flagged $A)") == [
        b"* 1 FETCH (FLAGS (\\Flagged \\Recent $A))", b"* 2 FETCH (FLAGS (\\Flagged \\Recent $A))",
        b"t2 OK STORE completed"]
    assert await w.cmd("UID STORE 2 -FLAGS.SILENT $A") == [b"t3 OK STORE completed"]
    assert await w.cmd("STORE 2 FLAGS \\Seen") == [b"* 2 FETCH (FLAGS (\\Recent \\Seen))", b"t4 OK STORE completed"]
    assert await w.cmd("STORE 1 +FLAGS (\\Recent)") == [b"t5 BAD Invalid system flag \\Recent"]
    assert await w.cmd("STORE 1 +FLAGS (a]b)") == [b"t6 BAD Invalid keyword"]
    assert await w.cmd("SEARCH FLAGGED") == [b"* SEARCH 1", b"t7 OK SEARCH completed"]
    assert await w.cmd("SEARCH OR SEEN KEYWORD $A") == [b"* SEARCH 1 2", b"t8 OK SEARCH completed"]
    assert await w.cmd("UID SEARCH 2:* NOT SEEN") == [b"* SEARCH 3 4", b"t9 OK SEARCH completed"]
    assert await w.cmd("SEARCH CHARSET UTF-8 BODY needle SUBJECT \"hello 3\"") == [b"* SEARCH 3",
                                                                                 b"t10 OK SEARCH completed"]
    assert await w.cmd("SEARCH CHARSET KOI8-R ALL") == [
        b"t11 NO [BADCHARSET (UTF-8 US-ASCII)] Unsupported charset"]
    assert await w.cmd("SEARCH NEW LARGER 10 SINCE 1-Jan-2000") == [b"* SEARCH 1 3 4", b"t12 OK SEARCH completed"]
    assert await w.cmd("SEARCH BLURB") == [b"t13 BAD Error in IMAP command SEARCH: Unknown search key BLURB"]
    lines = await w.cmd("COPY 1:2 Archive")
    assert lines[-1].startswith(b"t14 OK [COPYUID ") and lines[-1].endswith(b" 1:2 1:2] COPY completed")
    assert await w.cmd("COPY 1 Nowhere") == [b"t15 NO [TRYCREATE] Mailbox does not exist"]
    lines = await w.cmd("UID MOVE 3 Trash")
    assert lines[0].startswith(b"* OK [COPYUID ") and lines[0].endswith(b" 3 1] Moved")
    assert lines[1:] == [b"* 3 EXPUNGE", b"t16 OK MOVE completed"]
    assert await w.cmd("STORE 1,3 +FLAGS.SILENT \\Deleted") == [b"t17 OK STORE completed"]
    assert await w.cmd("EXPUNGE") == [b"* 1 EXPUNGE", b"* 2 EXPUNGE", b"t18 OK EXPUNGE completed"]
    assert await w.cmd("FETCH 1:* UID") == [b"* 1 FETCH (UID 2)", b"t19 OK FETCH completed"]
    lines = await w.cmd("STATUS Archive (MESSAGES)")
    assert lines[0] == b"* STATUS Archive (MESSAGES 2)"
    assert await w.cmd("UID EXPUNGE 2") == [b"t21 OK EXPUNGE completed"]    # not \Deleted: stays
    assert await w.cmd("CLOSE") == [b"t22 OK CLOSE completed"]
    assert await w.cmd("FETCH 1 UID") == [b"t23 BAD No mailbox selected"]


@pytest_twisted.ensureDeferred
async def test_other_sessions_changes_and_expunge_rules(ctx):
    a = await session_with(ctx, mail(1), mail(2), mail(3))
    b = Wire(ctx)
    b.take()
    await b.login()
    await a.cmd("SELECT INBOX")
    await b.cmd("SELECT INBOX")
    await b.cmd("STORE 2 +FLAGS.SILENT (\\Deleted \\Answered)")
    await b.cmd("EXPUNGE")
    await append(b, "INBOX", mail(4))
    # FETCH, STORE and SEARCH must not announce the expunge; new mail and flags may show.
    lines = await a.cmd("FETCH 3 UID")
    assert b"* 2 EXPUNGE" not in lines and lines[-1] == b"t2 OK FETCH completed"
    assert b"* 4 EXISTS" in lines
    lines = await a.cmd("SEARCH ALL")
    assert b"* 2 EXPUNGE" not in lines
    lines = await a.cmd("NOOP")
    assert lines[0] == b"* 2 EXPUNGE" and lines[-1] == b"t4 OK NOOP completed"
    assert await a.cmd("FETCH 1:* UID") == [b"* 1 FETCH (UID 1)", b"* 2 FETCH (UID 3)", b"* 3 FETCH (UID 4)",
                                            b"t5 OK FETCH completed"]


@pytest_twisted.ensureDeferred
async def test_idle(ctx):
    a = await session_with(ctx, mail(1))
    b = Wire(ctx)
    b.take()
    await b.login()
    await a.cmd("SELECT INBOX")
    a.send(b"i IDLE\r\n")
    assert await a.until(b"\r\n") == b"+ idling\r\n"
    await append(b, "INBOX", mail(2))
    data = await a.until(b"EXISTS\r\n")
    assert b"* 2 EXISTS\r\n" in data
    await b.cmd("SELECT INBOX")
    await b.cmd("STORE 1 +FLAGS.SILENT (\\Deleted)")
    await b.cmd("EXPUNGE")
    data = await a.until(b"EXPUNGE\r\n")
    # The \Deleted flag change may or may not be seen before the expunge, depending on timing.
    assert data.endswith(b"* 1 EXPUNGE\r\n"), data
    assert data in (b"* 1 EXPUNGE\r\n", b"* 1 FETCH (UID 1 FLAGS (\\Deleted \\Recent))\r\n* 1 EXPUNGE\r\n"), data
    a.send(b"DONE\r\nn NOOP\r\n")
    assert await a.tagged("n") == b"i OK Idle completed\r\nn OK NOOP completed\r\n"
    a.send(b"j IDLE\r\n")
    await a.until(b"+ idling\r\n")
    a.send(b"nope\r\n")
    assert await a.tagged("j") == b"j BAD Expected DONE to end IDLE\r\n"
    await settle()


@pytest_twisted.ensureDeferred
async def test_unexpected_exception_is_serverbug_and_session_goes_on(ctx, monkeypatch):
    w = await session_with(ctx, mail(1))
    await w.cmd("SELECT INBOX")
    box = w.proto.selected.mailbox

    async def broken(*args, **kw):
        raise RuntimeError("boom")
    monkeypatch.setattr(box, "search", broken)
    assert await w.cmd("SEARCH ALL") == [b"t2 NO [SERVERBUG] Internal server error; the administrator was told"]
    assert await w.cmd("FETCH 1 UID") == [b"* 1 FETCH (UID 1)", b"t3 OK FETCH completed"]


@pytest_twisted.ensureDeferred
async def test_metadata_fetch_asks_storage_for_no_body(ctx, monkeypatch):
    w = await session_with(ctx, mail(1), mail(2))
    await w.cmd("SELECT INBOX")
    box = w.proto.selected.mailbox
    asked = []
    real_fetch, real_columns = box.fetch, box.columns

    def recording_fetch(uids, items):
        asked.append(("fetch", set(items)))
        return real_fetch(uids, items)

    async def recording_columns(uids, names):
        asked.append(("columns", set(names)))
        return await real_columns(uids, names)
    monkeypatch.setattr(box, "fetch", recording_fetch)
    monkeypatch.setattr(box, "columns", recording_columns)
    lines = await w.cmd("FETCH 1:* (FLAGS UID RFC822.SIZE INTERNALDATE ENVELOPE)")
    assert len(lines) == 3 and asked == [("columns", {"flags", "vsize", "internaldate", "envelope"})]
    asked.clear()
    await w.cmd("FETCH 1:* (FLAGS UID RFC822.SIZE)")
    assert asked == [("columns", {"flags", "vsize"})]     # from the index: no cache, no body
    asked.clear()
    await w.cmd("FETCH 1 (BODY.PEEK[HEADER.FIELDS (SUBJECT)] BODYSTRUCTURE)")
    assert asked == [("fetch", {FetchItem.HEADER, FetchItem.BODYSTRUCTURE})]


@pytest_twisted.ensureDeferred
async def test_column_fetch_answers_as_the_per_message_path(ctx, monkeypatch):
    from mailserver.protocols.imap import fetch as fetch_module
    w = await session_with(ctx, mail(1), MULTIPART, mail(3), mail(4))
    await w.cmd("SELECT INBOX")
    await w.cmd("STORE 1,3 +FLAGS (\\Seen $Work)")
    await w.cmd("STORE 4 +FLAGS (\\Deleted)")
    other = Wire(ctx)
    other.take()
    await other.login()
    await append(other, "INBOX", mail(5))          # a message that arrived after SELECT
    await w.cmd("NOOP")
    queries = ["FETCH 1:* (UID FLAGS RFC822.SIZE ENVELOPE)", "FETCH 1:* ALL", "FETCH 2:3 FULL",
               "UID FETCH 1:* (BODYSTRUCTURE INTERNALDATE)", "FETCH 4,1 (FLAGS UID)",
               "UID FETCH 2:9 (RFC822.SIZE)"]
    fast = [await w.cmd(q) for q in queries]
    monkeypatch.setattr(fetch_module, "_COLUMN_OF", {})
    slow = [await w.cmd(q) for q in queries]
    for q, a, b in zip(queries, fast, slow):
        assert a[:-1] == b[:-1] and a[-1].split(b" ", 1)[1] == b[-1].split(b" ", 1)[1], q
    assert len(fast[0]) == 6 and b"FLAGS (\\Recent \\Seen $Work)" in fast[0][0]


@pytest_twisted.ensureDeferred
async def test_random_arguments_never_hit_a_server_bug(ctx):
    import random
    rng = random.Random(99)
    w = await session_with(ctx, mail(1), MULTIPART)
    await w.cmd("SELECT INBOX")
    names = ["FETCH", "UID FETCH", "STORE", "UID STORE", "SEARCH", "UID SEARCH", "COPY", "UID MOVE", "LIST",
             "LSUB", "STATUS", "CREATE", "RENAME", "SUBSCRIBE", "EXPUNGE", "UID EXPUNGE", "ID", "ENABLE",
             "APPEND", "EXAMINE", "NOOP", "CHECK", "NAMESPACE", "CAPABILITY"]
    tokens = ["1", "2", "*", "1:*", "0", "4294967296", "$", "x", "NIL", '""', '"a b"', "()", "(FLAGS)",
              "(\\Seen)", "\\Bogus", "+FLAGS", "-FLAGS.SILENT", "BODY[1.2]", "BODY.PEEK[HEADER.FIELDS (A)]",
              "BODY[]<0.1>", "RFC822", "ALL", "FULL", "OR", "NOT", "UID", "HEADER", "SUBJECT", "SINCE",
              "1-Jan-2020", "(MESSAGES UIDNEXT)", "INBOX", "Trash", "&Jjo!", "(", ")", "{3+}\r\nabc", "CHARSET",
              "UTF-8", "LARGER", "-1", "\\Deleted", "%", "Übung".encode().decode("latin-1")]
    for i in range(250):
        cmd = rng.choice(names) + " " + " ".join(rng.choice(tokens) for _ in range(rng.randint(0, 5)))
        w.send(b"r%d %s\r\n" % (i, cmd.encode("latin-1")))
        data = await w.tagged(f"r{i}")
        assert b"SERVERBUG" not in data, (cmd, data)
        last = data.split(b"\r\n")[-2]
        assert last.split(b" ")[1] in (b"OK", b"NO", b"BAD"), (cmd, data)
        if w.proto.selected is None:
            await w.cmd("SELECT INBOX")
    assert not w.closed
