"""COMPRESS=DEFLATE (RFC 4978), LITERAL+/LITERAL- (RFC 7888), UTF8=ACCEPT (RFC 6855),
UNAUTHENTICATE (RFC 8437), OBJECTID (RFC 8474), SAVEDATE (RFC 8514), PREVIEW (RFC 8970),
APPENDLIMIT (RFC 7889), ALERT and the configured limits: byte-exact transcripts over a
StringTransport with real rbox storage."""

import re
import time
import zlib

import pytest
import pytest_twisted
from twisted.internet import defer

from tests.protocol.imap_session import Wire, make_context, settle

pytestmark = pytest.mark.usefixtures("transcript_backend")   # runs on local and on Ceph

MAIL = b"From: a@example.org\r\nSubject: m%d\r\nDate: Mon, 23 Nov 2026 10:00:00 +0000\r\n\r\nBody %d\r\n"
HTML = (b"From: a@example.org\r\nSubject: html\r\nContent-Type: text/html; charset=utf-8\r\n\r\n"
        b"<html><body><p>Gr\xc3\xbc\xc3\x9fe aus <b>K\xc3\xb6ln</b>,</p><p>bis bald</p></body></html>\r\n")


@pytest.fixture
def ctx(tmp_path):
    return pytest_twisted.blockon(defer.Deferred.fromCoroutine(make_context(tmp_path)))


async def logged_in(ctx, *messages, user="alice", password="secret"):
    w = Wire(ctx)
    w.take()
    await w.login(user, password)
    for m in messages:
        lines = await w.cmd(b"APPEND INBOX {%d+}\r\n%s" % (len(m), m))
        assert lines[-1].split()[1] == b"OK", lines
    w._tag = 0
    return w


def answer(lines):
    return lines[-1].split(b" ", 1)[1]


# --- COMPRESS ------------------------------------------------------------------------------------

class Deflated:
    """The client half of COMPRESS=DEFLATE over a Wire."""

    def __init__(self, w):
        self.w = w
        self.out = zlib.compressobj(6, zlib.DEFLATED, -15)
        self.inflate = zlib.decompressobj(-15)
        self.got = b""

    def send(self, data: bytes) -> None:
        self.w.send(self.out.compress(data) + self.out.flush(zlib.Z_SYNC_FLUSH))

    async def tagged(self, tag: bytes, timeout=10.0) -> bytes:
        deadline = time.monotonic() + timeout
        while not re.search(rb"(^|\r\n)" + tag + rb" [^\r\n]*\r\n", self.got):
            assert time.monotonic() < deadline, self.got
            self.got += self.inflate.decompress(self.w.take())
            await settle(1)
        m = re.search(rb"(^|\r\n)" + tag + rb" [^\r\n]*\r\n", self.got)
        data, self.got = self.got[:m.end()], self.got[m.end():]
        return data


@pytest_twisted.ensureDeferred
async def test_compress_deflate(ctx):
    w = await logged_in(ctx, MAIL % (1, 1))
    assert b"COMPRESS=DEFLATE" in b"".join(await w.cmd("CAPABILITY"))
    assert await w.cmd("COMPRESS FOO") == [b"t2 BAD Unknown compression mechanism"]
    # The client may pipeline compressed commands right behind COMPRESS (they wait in the parser).
    c = zlib.compressobj(6, zlib.DEFLATED, -15)
    w.send(b"z COMPRESS DEFLATE\r\n" + c.compress(b"a SELECT INBOX\r\n") + c.flush(zlib.Z_SYNC_FLUSH))
    assert await w.until(b"z OK DEFLATE active\r\n") == b"z OK DEFLATE active\r\n"
    d = Deflated(w)
    d.out = c
    assert (await d.tagged(b"a")).endswith(b"a OK [READ-WRITE] Select completed\r\n")
    d.send(b"b FETCH 1 (UID BODY.PEEK[])\r\n")
    assert await d.tagged(b"b") == (b"* 1 FETCH (UID 1 BODY[] {%d}\r\n%s)\r\nb OK FETCH completed\r\n"
                                    % (len(MAIL % (1, 1)), MAIL % (1, 1)))
    d.send(b"c COMPRESS DEFLATE\r\n")
    assert await d.tagged(b"c") == b"c NO [COMPRESSIONACTIVE] DEFLATE is already active\r\n"
    # Literals, continuation requests and IDLE all go through the compressed stream.
    msg = MAIL % (2, 2)
    d.send(b"e APPEND INBOX {%d}\r\n" % len(msg))
    await settle()
    d.got += d.inflate.decompress(w.take())
    assert d.got == b"+ OK\r\n"
    d.got = b""
    d.send(msg + b"\r\n")
    assert b"e OK [APPENDUID " in await d.tagged(b"e")
    d.send(b"f LOGOUT\r\n")
    assert await d.tagged(b"f") == b"* BYE Logging out\r\nf OK Logout completed\r\n"
    assert w.closed


@pytest_twisted.ensureDeferred
async def test_compress_bounds_inflated_input_and_rejects_garbage(ctx):
    w = await logged_in(ctx)
    assert await w.cmd("COMPRESS DEFLATE") == [b"t1 OK DEFLATE active"]
    d = Deflated(w)
    # A compression bomb: 20 MB of one long line compresses to ~20 KB.  The server inflates it
    # step by step while reading, finds the line too long, and never holds it all.
    bomb = b"x NOOP " + b"A" * (20 * 1024 * 1024)
    d.send(bomb + b"\r\n")
    await settle(5)
    assert w.proto.parser.buffered < 2 * 1024 * 1024
    data = await d.tagged(b"x", timeout=60)
    assert data == b"x BAD [TOOBIG] Command line too long\r\n"
    d.send(b"y NOOP\r\n")
    assert await d.tagged(b"y") == b"y OK NOOP completed\r\n"
    w.send(b"\xff\xff\xff\xff not deflate")
    await settle()
    assert w.closed and d.inflate.decompress(w.take()).endswith(b"* BYE Invalid compressed data\r\n")


@pytest_twisted.ensureDeferred
async def test_compress_needs_login(ctx):
    w = Wire(ctx)
    w.take()
    assert b"COMPRESS" not in b"".join(await w.cmd("CAPABILITY"))
    assert await w.cmd("COMPRESS DEFLATE") == [b"t2 BAD Not logged in"]


# --- LITERAL+ / LITERAL- -------------------------------------------------------------------------

@pytest_twisted.ensureDeferred
async def test_literal_plus_rfc7888_example(tmp_path):
    ctx = await make_context(tmp_path, users={"fred foobar": "fat man"})
    w = Wire(ctx)
    assert b" LITERAL+ " in w.take()
    w.send(b"A001 LOGIN {11+}\r\nFRED FOOBAR {7+}\r\nfat man\r\n")
    answer_line = await w.tagged("A001")
    assert answer_line.startswith(b"A001 OK [CAPABILITY ") and answer_line.endswith(b"] Logged in\r\n")
    assert w.proto.username == "fred foobar"


@pytest_twisted.ensureDeferred
async def test_literal_minus(tmp_path):
    ctx = await make_context(tmp_path, imap={"literal_plus": False})
    w = Wire(ctx)
    greeting = w.take()
    assert b" LITERAL- " in greeting and b"LITERAL+" not in greeting
    await w.login()
    small = b"x" * 4096
    lines = await w.cmd(b"APPEND INBOX {4096+}\r\n" + small)
    assert lines[-1].startswith(b"t2 OK [APPENDUID ")
    # Over 4096 octets: BAD [TOOBIG]; the literal's bytes are skipped, the session goes on.
    big = b"From: x\r\n\r\n" + b"y" * 5000
    w.send(b"b APPEND INBOX {%d+}\r\n%s\r\nc NOOP\r\n" % (len(big), big))
    assert await w.tagged("c") == (b"b BAD [TOOBIG] Non-synchronising literals above 4096 bytes are not allowed "
                                   b"(LITERAL-)\r\nc OK NOOP completed\r\n")
    # A synchronising literal of that size is fine.
    w.send(b"d APPEND INBOX {%d}\r\n" % len(big))
    assert await w.until(b"\r\n") == b"+ OK\r\n"
    w.send(big + b"\r\n")
    assert (await w.tagged("d")).startswith(b"d OK [APPENDUID ")
    assert not w.closed


# --- UTF8=ACCEPT ---------------------------------------------------------------------------------

@pytest_twisted.ensureDeferred
async def test_utf8_accept_mailbox_names(ctx):
    legacy = await logged_in(ctx)
    assert await legacy.cmd("CREATE Entw&APw-rfe") == [b"t1 OK [MAILBOXID (%s)] CREATE completed"
                                                        % (await legacy.proto.user.status("Entwürfe")).guid.encode()]
    w = await logged_in(ctx)
    assert await w.cmd("ENABLE UTF8=ACCEPT") == [b"* ENABLED UTF8=ACCEPT", b"t1 OK ENABLE completed"]
    # The same mailbox, named in UTF-8 (composed or decomposed), and listed in UTF-8.
    assert await w.cmd('LIST "" "Entw*"') == [b'* LIST (\\HasNoChildren) "/" "Entw\xc3\xbcrfe"',
                                             b"t2 OK LIST completed"]
    assert answer(await w.cmd(b'SELECT "Entw\xc3\xbcrfe"')).startswith(b"OK [READ-WRITE]")
    assert answer(await w.cmd(b'STATUS "Entwu\xcc\x88rfe" (MESSAGES)')) == b"OK STATUS completed"
    lines = await w.cmd(b'CREATE "\xe6\x97\xa5\xe6\x9c\xac/\xd0\xb4\xd0\xb0"')
    assert answer(lines).startswith(b"OK [MAILBOXID (")
    # The other session, without UTF8=ACCEPT, sees modified UTF-7 for the same names.
    assert await legacy.cmd('LIST "" "*/*"') == [b'* LIST (\\HasNoChildren) "/" &ZeVnLA-/&BDQEMA-',
                                                b"t2 OK LIST completed"]
    assert (await w.cmd(b'LIST "" "*/*"'))[0] == b'* LIST (\\HasNoChildren) "/" "\xe6\x97\xa5\xe6\x9c\xac/\xd0\xb4\xd0\xb0"'
    # In UTF-8 mode "&" is just a character: this is a different mailbox.
    assert answer(await w.cmd("CREATE Entw&APw-rfe")).startswith(b"OK [MAILBOXID (")
    assert (await legacy.cmd('LIST "" "Entw*"'))[:2] == [b'* LIST (\\HasNoChildren) "/" Entw&-APw-rfe',
                                                        b'* LIST (\\HasNoChildren) "/" Entw&APw-rfe']
    assert answer(await w.cmd(b'CREATE "bad\xff"')) == b"NO [CANNOT] Invalid mailbox name: not valid UTF-8"
    # Search strings are UTF-8 now; a CHARSET label is refused (RFC 6855 section 3, erratum 4029).
    await w.cmd("SELECT INBOX")
    assert answer(await w.cmd("SEARCH CHARSET UTF-8 ALL")) == (
        b"BAD No CHARSET after ENABLE UTF8=ACCEPT: search strings are UTF-8")
    assert answer(await w.cmd('SEARCH SUBJECT "Gr\xc3\xbc\xc3\x9fe"'.encode("latin-1"))) == b"OK SEARCH completed"


# --- UNAUTHENTICATE ------------------------------------------------------------------------------

@pytest_twisted.ensureDeferred
async def test_unauthenticate(ctx):
    w = await logged_in(ctx, MAIL % (1, 1))
    assert await w.cmd("ENABLE UTF8=ACCEPT") == [b"* ENABLED UTF8=ACCEPT", b"t1 OK ENABLE completed"]
    await w.cmd("SELECT INBOX")
    await w.cmd("STORE 1 +FLAGS.SILENT (\\Deleted)")
    lines = await w.cmd("UNAUTHENTICATE")
    assert lines[-1].startswith(b"t4 OK [CAPABILITY IMAP4rev1 ") and b"AUTH=PLAIN" in lines[-1]
    assert w.proto.username is None and w.proto.selected is None and not w.proto.utf8
    assert await w.cmd("SELECT INBOX") == [b"t5 BAD Not logged in"]
    assert await w.cmd("UNAUTHENTICATE") == [b"t6 BAD Not logged in"]
    await w.login("bob", "hunter2")
    assert w.proto.username == "bob"
    assert (await w.cmd("STATUS INBOX (MESSAGES)"))[0] == b"* STATUS INBOX (MESSAGES 0)"
    # Alice's \Deleted message was not expunged by UNAUTHENTICATE.
    alice = await logged_in(ctx)
    assert (await alice.cmd("STATUS INBOX (MESSAGES DELETED)"))[0] == b"* STATUS INBOX (MESSAGES 1 DELETED 1)"
    # DELETED-STORAGE belongs to QUOTA=RES-STORAGE, which a server without quota does not announce.
    assert (await alice.cmd("STATUS INBOX (DELETED-STORAGE)"))[-1].endswith(b"BAD Unknown STATUS item DELETED-STORAGE")


# --- OBJECTID, SAVEDATE, PREVIEW, APPENDLIMIT -----------------------------------------------------

@pytest_twisted.ensureDeferred
async def test_objectid(ctx):
    w = await logged_in(ctx, MAIL % (1, 1), MAIL % (2, 2))
    guid = (await w.proto.user.status("INBOX")).guid
    lines = await w.cmd("SELECT INBOX")
    assert b"* OK [MAILBOXID (%s)] Ok" % guid.encode() in lines
    assert await w.cmd("STATUS INBOX (MAILBOXID MESSAGES)") == [
        b"* STATUS INBOX (MAILBOXID (%s) MESSAGES 2)" % guid.encode(), b"t2 OK STATUS completed"]
    lines = await w.cmd("FETCH 1:2 (EMAILID THREADID)")
    ids = re.findall(rb"\* \d FETCH \(EMAILID \(([0-9a-f]{32})\) THREADID NIL\)", b"\r\n".join(lines))
    assert len(ids) == 2 and ids[0] != ids[1]
    # COPY keeps the EMAILID; the destination has its own MAILBOXID.
    lines = await w.cmd("COPY 1 Archive")
    archive = (await w.proto.user.status("Archive")).guid
    assert archive != guid
    await w.cmd("EXAMINE Archive")
    assert await w.cmd("FETCH 1 EMAILID") == [b"* 1 FETCH (EMAILID (%s))" % ids[0], b"t6 OK FETCH completed"]
    await w.cmd("SELECT INBOX")
    assert await w.cmd(b"SEARCH EMAILID " + ids[1]) == [b"* SEARCH 2", b"t8 OK SEARCH completed"]
    assert await w.cmd("SEARCH THREADID T1") == [b"* SEARCH", b"t9 OK SEARCH completed"]
    # MAILBOXID survives RENAME.
    await w.cmd("RENAME Archive Old")
    assert (await w.cmd("STATUS Old (MAILBOXID)"))[0] == b"* STATUS Old (MAILBOXID (%s))" % archive.encode()


@pytest_twisted.ensureDeferred
async def test_savedate(ctx):
    w = await logged_in(ctx)
    before = time.time()
    await w.cmd(b'APPEND INBOX "01-Jan-2001 10:00:00 +0000" {%d+}\r\n%s' % (len(MAIL % (1, 1)), MAIL % (1, 1)))
    await w.cmd("SELECT INBOX")
    lines = await w.cmd("FETCH 1 (INTERNALDATE SAVEDATE)")
    m = re.fullmatch(rb'\* 1 FETCH \(INTERNALDATE "01-Jan-2001 10:00:00 \+0000" SAVEDATE "([^"]+)"\)', lines[0])
    saved = time.strptime(m.group(1).decode(), "%d-%b-%Y %H:%M:%S +0000")
    assert abs(time.mktime(saved) - time.mktime(time.gmtime(before))) < 5
    today = time.strftime("%d-%b-%Y", time.localtime())
    assert await w.cmd(f"SEARCH SAVEDON {today}") == [b"* SEARCH 1", b"t4 OK SEARCH completed"]
    assert await w.cmd("SEARCH SAVEDBEFORE 1-Jan-2002") == [b"* SEARCH", b"t5 OK SEARCH completed"]
    assert await w.cmd("SEARCH SAVEDSINCE 1-Jan-2002 BEFORE 1-Jan-2002") == [b"* SEARCH 1", b"t6 OK SEARCH completed"]
    assert await w.cmd("SEARCH SAVEDATESUPPORTED") == [b"* SEARCH 1", b"t7 OK SEARCH completed"]


@pytest_twisted.ensureDeferred
async def test_preview(ctx):
    w = await logged_in(ctx, MAIL % (1, 1), HTML)
    await w.cmd("SELECT INBOX")
    assert await w.cmd("FETCH 1 PREVIEW") == [b'* 1 FETCH (PREVIEW "Body 1")', b"t2 OK FETCH completed"]
    lines = await w.cmd("FETCH 2 (PREVIEW (LAZY) UID)")
    text = "Grüße aus Köln , bis bald".encode()      # mime.preview: block and inline tags become spaces
    assert lines == [b"* 2 FETCH (PREVIEW {%d}" % len(text), text + b" UID 2)", b"t3 OK FETCH completed"]
    assert await w.cmd("FETCH 1 PREVIEW (LAZY)") == [b'* 1 FETCH (PREVIEW "Body 1")', b"t4 OK FETCH completed"]
    assert await w.cmd("FETCH 1 (PREVIEW (FAST))") == [b"t5 BAD Unknown PREVIEW modifier"]
    # PREVIEW does not set \Seen.
    assert await w.cmd("FETCH 1 FLAGS") == [b"* 1 FETCH (FLAGS (\\Recent))", b"t6 OK FETCH completed"]


@pytest_twisted.ensureDeferred
async def test_appendlimit(tmp_path):
    ctx = await make_context(tmp_path, imap={"max_literal_size": 1000})
    w = Wire(ctx)
    assert b" APPENDLIMIT=1000 " in w.take()
    await w.login()
    assert await w.cmd("STATUS INBOX (APPENDLIMIT)") == [b"* STATUS INBOX (APPENDLIMIT 1000)",
                                                        b"t2 OK STATUS completed"]
    assert await w.cmd("APPEND INBOX {1001}") == [b"t3 NO [TOOBIG] Literal too big"]
    assert answer(await w.cmd(b"APPEND INBOX {1000+}\r\n" + b"x" * 1000)).startswith(b"OK [APPENDUID ")


# --- ALERT, limits and response codes ------------------------------------------------------------

@pytest_twisted.ensureDeferred
async def test_alert_after_login(tmp_path):
    ctx = await make_context(tmp_path, imap={"alert": "Maintenance tonight\r\n22:00-23:00"})
    w = Wire(ctx)
    w.take()
    assert (await w.cmd("LOGIN alice secret"))[0] == b"* OK [ALERT] Maintenance tonight  22:00-23:00"


@pytest_twisted.ensureDeferred
async def test_idle_sessions_per_user_are_limited(tmp_path):
    ctx = await make_context(tmp_path, imap={"max_idle_per_user": 2})
    sessions = [await logged_in(ctx) for _ in range(3)]
    bob = await logged_in(ctx, user="bob", password="hunter2")
    for w in sessions[:2]:
        w.send(b"i IDLE\r\n")
        assert await w.until(b"\r\n") == b"+ idling\r\n"
    assert await sessions[2].cmd("IDLE") == [b"t1 NO [LIMIT] Too many IDLE sessions for this user (at most 2)"]
    bob.send(b"i IDLE\r\n")                                     # other users are not affected
    assert await bob.until(b"\r\n") == b"+ idling\r\n"
    sessions[0].send(b"DONE\r\n")
    assert await sessions[0].tagged("i") == b"i OK Idle completed\r\n"
    sessions[2].send(b"j IDLE\r\n")
    assert await sessions[2].until(b"\r\n") == b"+ idling\r\n"
    sessions[1].lost()                                           # a dropped connection frees its slot
    sessions[0].send(b"k IDLE\r\n")
    assert await sessions[0].until(b"\r\n") == b"+ idling\r\n"
    for w in (sessions[0], sessions[2], bob):
        w.send(b"DONE\r\n")
    await settle()


@pytest_twisted.ensureDeferred
async def test_limits_answer_clearly(tmp_path):
    ctx = await make_context(tmp_path, imap={"max_search_keys": 5, "max_line_length": 200},
                             storage={"max_mailboxes": 8, "max_keywords": 3, "max_mailbox_name_length": 20,
                                      "max_mailbox_depth": 3})
    w = await logged_in(ctx, MAIL % (1, 1))
    # Mailboxes per user (INBOX and the 5 defaults exist): the 9th is refused, parents count.
    assert answer(await w.cmd("CREATE a")).startswith(b"OK")
    assert answer(await w.cmd("CREATE b")).startswith(b"OK")
    assert answer(await w.cmd("CREATE c")) == b"NO [LIMIT] A server limit was reached"
    assert answer(await w.cmd("CREATE a/b/c")) == b"NO [LIMIT] A server limit was reached"
    await w.cmd("DELETE b")
    assert answer(await w.cmd("CREATE " + "n" * 21)) == b"NO [LIMIT] A server limit was reached"
    assert answer(await w.cmd("CREATE a/b/c/d")) == b"NO [LIMIT] A server limit was reached"
    # Keywords per mailbox.
    await w.cmd("SELECT INBOX")
    assert answer(await w.cmd("STORE 1 +FLAGS ($a $b $c)")) == b"OK STORE completed"
    assert answer(await w.cmd("STORE 1 +FLAGS ($d)")) == b"NO [LIMIT] A server limit was reached"
    assert answer(await w.cmd(b"APPEND INBOX ($e) {1+}\r\nx")) == b"NO [LIMIT] A server limit was reached"
    # Search keys, and the command line.
    assert answer(await w.cmd("SEARCH OR SEEN UNSEEN NOT DELETED")) == b"OK SEARCH completed"
    assert answer(await w.cmd("SEARCH OR SEEN UNSEEN NOT DELETED ALL ANSWERED")) == (
        b"BAD [LIMIT] Search program has too many keys")
    assert answer(await w.cmd("SEARCH " + "ALL " * 60)) == b"BAD [TOOBIG] Command line too long"
    assert answer(await w.cmd("NOOP")) == b"OK NOOP completed"


@pytest_twisted.ensureDeferred
async def test_storage_kinds_map_to_response_codes(ctx, monkeypatch):
    """Every StorageError kind has its RFC 5530 code; a handler bug is SERVERBUG.  (Kinds no
    storage path raises yet, such as OVER_QUOTA without quotas, are checked through the mapping.)"""
    from mailserver.storage.errors import ErrorKind, StorageError
    w = await logged_in(ctx, MAIL % (1, 1))
    await w.cmd("SELECT INBOX")
    box = w.proto.selected.mailbox
    expected = {ErrorKind.TEMPORARY: b"UNAVAILABLE", ErrorKind.NOT_FOUND: b"NONEXISTENT",
                ErrorKind.EXISTS: b"ALREADYEXISTS", ErrorKind.NO_PERMISSION: b"NOPERM",
                ErrorKind.OVER_QUOTA: b"OVERQUOTA", ErrorKind.EXPUNGED: b"EXPUNGEISSUED",
                ErrorKind.IN_USE: b"INUSE", ErrorKind.LIMIT: b"LIMIT", ErrorKind.TOO_BIG: b"TOOBIG",
                ErrorKind.INVALID: b"CANNOT", ErrorKind.CANNOT: b"CANNOT", ErrorKind.CORRUPTED: b"CORRUPTION",
                ErrorKind.INTERNAL: b"SERVERBUG"}
    for kind, code in expected.items():
        async def failing(*a, _kind=kind, **kw):
            raise StorageError(_kind, "detail for the log only")
        monkeypatch.setattr(box, "store", failing)
        line = answer(await w.cmd("STORE 1 +FLAGS (\\Seen)"))
        assert line.startswith(b"NO [" + code + b"] ") and b"detail" not in line, (kind, line)


@pytest_twisted.ensureDeferred
async def test_random_extension_commands_never_hit_a_server_bug(ctx):
    import random
    rng = random.Random(7)
    w = await logged_in(ctx, MAIL % (1, 1))
    await w.cmd("SELECT INBOX")
    commands = ["FETCH", "UID FETCH", "APPEND", "REPLACE", "UID REPLACE", "GENURLAUTH", "URLFETCH", "RESETKEY",
                "ENABLE", "STATUS", "SEARCH", "COMPRESS"]
    tokens = ["1", "*", "INBOX", "BINARY[1]", "BINARY.PEEK[]<0.5>", "BINARY.SIZE[1.2]", "(BINARY[x])", "PREVIEW",
              "(PREVIEW (LAZY))", "EMAILID", "SAVEDATE", "CATENATE", "(URL)", '(URL "/INBOX/;UID=1")',
              "(TEXT {1+}\r\nx)", "UTF8", "(~{1+}\r\nx)", "{2+}\r\nab", "~{2+}\r\n\x00\x01", '"imap://a@b/INBOX/;UID=1"',
              '"imap://alice@b/INBOX/;UID=1;URLAUTH=anonymous"', "INTERNAL", "UTF8=ACCEPT", "(MAILBOXID APPENDLIMIT)",
              "SAVEDBEFORE", "1-Jan-2020", "EMAILID", "THREADID", "x", "()", "NIL", "DEFLATE?"]
    for i in range(200):
        cmd = rng.choice(commands) + " " + " ".join(rng.choice(tokens) for _ in range(rng.randint(0, 5)))
        w.send(b"r%d %s\r\n" % (i, cmd.encode("latin-1")))
        data = await w.tagged(f"r{i}")
        assert b"SERVERBUG" not in data, (cmd, data)
        assert data.split(b"\r\n")[-2].split(b" ")[1] in (b"OK", b"NO", b"BAD"), (cmd, data)
        if w.proto.selected is None:
            await w.cmd("SELECT INBOX")
    assert not w.closed


@pytest_twisted.ensureDeferred
async def test_fetch_of_a_message_another_session_expunged(ctx):
    """RFC 5530 EXPUNGEISSUED: the message is still in this session's view (no EXPUNGE may be
    sent during FETCH), but its data is gone."""
    a = await logged_in(ctx, MAIL % (1, 1), MAIL % (2, 2))
    b = await logged_in(ctx)
    await a.cmd("SELECT INBOX")
    await b.cmd("SELECT INBOX")
    await b.cmd("STORE 1 +FLAGS.SILENT (\\Deleted)")
    await b.cmd("EXPUNGE")
    lines = await a.cmd("FETCH 1:2 (UID BODY.PEEK[TEXT])")
    assert lines[0] == b"* 2 FETCH (UID 2 BODY[TEXT] {8}" and b"* 1 EXPUNGE" not in lines
    assert answer(lines) == b"NO [EXPUNGEISSUED] Some of the requested messages no longer exist"
    assert (await a.cmd("NOOP"))[0] == b"* 1 EXPUNGE"
