"""BINARY (RFC 3516), APPEND with literal8 / UTF8 / CATENATE (RFC 3516, 6855, 4469), REPLACE
(RFC 8508) and UIDPLUS codes: byte-exact transcripts over a StringTransport, real rbox storage."""

import base64
import re

import pytest
import pytest_twisted
from twisted.internet import defer

from tests.protocol.imap_session import Wire, make_context

pytestmark = pytest.mark.usefixtures("transcript_backend")   # runs on local and on Ceph

BINARY_MAIL = (b"From: a@example.org\r\nSubject: binary\r\nMIME-Version: 1.0\r\n"
               b"Content-Type: multipart/mixed; boundary=B\r\n\r\n--B\r\n"
               b"Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n"
               b"caf=C3=A9 =\r\nau lait\r\n--B\r\n"
               b"Content-Type: application/octet-stream\r\nContent-Transfer-Encoding: base64\r\n\r\n"
               + base64.b64encode(b"\x00\x01\x02binary\xff") + b"\r\n"
               b"--B\r\nContent-Type: text/plain\r\nContent-Transfer-Encoding: x-uuencode\r\n\r\nbegin 644 x\r\n"
               b"--B--\r\n")

DRAFT = (b"From: Fred Foobar <foobar@example.org>\r\nSubject: afternoon meeting\r\nTo: mooch@example.org\r\n"
         b"MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"XX\"\r\n\r\n--XX\r\n"
         b"Content-Type: text/plain\r\n\r\nHello Joe, do you think we can meet at 3:30 tomorrow?\r\n"
         b"--XX\r\nContent-Type: text/plain; name=agenda.txt\r\n\r\n1. lunch\r\n--XX--\r\n")

SIMPLE = b"From: a@example.org\r\nSubject: simple %d\r\n\r\nBody %d\r\n"


@pytest.fixture
def ctx(tmp_path):
    return pytest_twisted.blockon(defer.Deferred.fromCoroutine(make_context(tmp_path)))


async def logged_in(ctx, user="alice", password="secret"):
    w = Wire(ctx)
    w.take()
    await w.login(user, password)
    w._tag = 0
    return w


async def append(w, box, data, tag="ap", extra=b"", marker=b""):
    w.send(b"%s APPEND %s %s%s{%d}\r\n" % (tag.encode(), box.encode(), extra, marker, len(data)))
    assert await w.until(b"\r\n") == b"+ OK\r\n"
    w.send(data + b"\r\n")
    lines = (await w.tagged(tag)).split(b"\r\n")[:-1]
    assert lines[-1].startswith(tag.encode() + b" OK [APPENDUID "), lines
    return int(lines[-1].split(b"]")[0].split()[-1].split(b":")[-1])


@pytest_twisted.ensureDeferred
async def test_fetch_binary_sections(ctx):
    w = await logged_in(ctx)
    await append(w, "INBOX", BINARY_MAIL)
    await w.cmd("SELECT INBOX")
    # Decoded quoted-printable (soft line break joined), and BINARY.SIZE agrees with it.
    assert await w.cmd("FETCH 1 (BINARY.SIZE[1] BINARY.PEEK[1])") == [
        b"* 1 FETCH (BINARY.SIZE[1] 13 BINARY[1] {13}", "café au lait)".encode(),
        b"t2 OK FETCH completed"]
    # base64 with a NUL: a literal8; a partial range keeps the offset in the label.
    w.send(b"t3 FETCH 1 (BINARY.PEEK[2] BINARY.PEEK[2]<3.6>)\r\n")
    assert await w.tagged("t3") == (b"* 1 FETCH (BINARY[2] ~{10}\r\n\x00\x01\x02binary\xff BINARY[2]<3> {6}\r\n"
                                    b"binary)\r\nt3 OK FETCH completed\r\n")
    w._tag = 3
    # BINARY (not PEEK) sets \Seen like BODY[] does.
    lines = await w.cmd("FETCH 1 (BINARY[2]<0.3>)")
    assert lines[0] == b"* 1 FETCH (BINARY[2]<0> ~{3}" and lines[1] == b"\x00\x01\x02 FLAGS (\\Recent \\Seen))"
    # An unknown transfer encoding: NO [UNKNOWN-CTE]; BINARY.SIZE too (it has to decode).
    assert await w.cmd("FETCH 1 BINARY.PEEK[3]") == [
        b"t5 NO [UNKNOWN-CTE] Unknown Content-Transfer-Encoding 'x-uuencode' in part 3"]
    assert (await w.cmd("FETCH 1 BINARY.SIZE[3]"))[-1].startswith(b"t6 NO [UNKNOWN-CTE] ")
    # No such part: NIL (size 0); BINARY[] is the whole message; a multipart's 7bit body as is.
    assert await w.cmd("FETCH 1 (BINARY.PEEK[9] BINARY.SIZE[9])") == [
        b"* 1 FETCH (BINARY[9] NIL BINARY.SIZE[9] 0)", b"t7 OK FETCH completed"]
    lines = await w.cmd("FETCH 1 BINARY.SIZE[]")
    assert lines[0] == b"* 1 FETCH (BINARY.SIZE[] %d)" % len(BINARY_MAIL)
    # Section texts are not allowed in BINARY, nor a partial on BINARY.SIZE.
    assert await w.cmd("FETCH 1 BINARY[1.MIME]") == [b"t9 BAD BINARY sections are part numbers only"]
    assert await w.cmd("FETCH 1 BINARY.SIZE[1]<0.5>") == [b"t10 BAD BINARY.SIZE takes no partial range"]
    assert await w.cmd("FETCH 1 BINARY[0]") == [b"t11 BAD BINARY sections are part numbers only"]


@pytest_twisted.ensureDeferred
async def test_append_literal8_keeps_every_octet(ctx):
    """RFC 3516 4.4: APPEND of a message with binary content as ~{n}."""
    w = await logged_in(ctx)
    raw = (b"From: a@example.org\r\nSubject: raw\r\nMIME-Version: 1.0\r\nContent-Type: application/x-raw\r\n"
           b"Content-Transfer-Encoding: binary\r\n\r\n\x00\xff\x00 raw bytes\r\n")
    w.send(b"b APPEND INBOX ~{%d}\r\n" % len(raw))
    assert await w.until(b"\r\n") == b"+ OK\r\n"
    w.send(raw + b"\r\n")
    assert (await w.tagged("b")).startswith(b"b OK [APPENDUID ")
    w.send(b"c APPEND INBOX (\\Seen) ~{%d+}\r\n%s\r\n" % (len(raw), raw))    # LITERAL+ form
    assert (await w.tagged("c")).startswith(b"c OK [APPENDUID ")
    await w.cmd("SELECT INBOX")
    w.send(b"d FETCH 1:2 BINARY.PEEK[1]\r\n")
    body = b"\x00\xff\x00 raw bytes\r\n"
    assert await w.tagged("d") == (b"* 1 FETCH (BINARY[1] ~{%d}\r\n%s)\r\n* 2 FETCH (BINARY[1] ~{%d}\r\n%s)\r\n"
                                   b"d OK FETCH completed\r\n" % (len(body), body, len(body), body))


@pytest_twisted.ensureDeferred
async def test_catenate_rfc4469_example(ctx):
    """The RFC 4469 section 5 example: a forward built from parts of a draft and of a message."""
    w = await logged_in(ctx)
    await append(w, "Drafts", DRAFT)
    uid_in = await append(w, "INBOX", SIMPLE % (1, 1))
    st = await w.cmd("STATUS Drafts (UIDVALIDITY)")
    drafts_v = int(re.search(rb"UIDVALIDITY (\d+)", st[0]).group(1))
    st = await w.cmd("STATUS INBOX (UIDVALIDITY)")
    inbox_v = int(re.search(rb"UIDVALIDITY (\d+)", st[0]).group(1))
    text1 = b"\r\n--------------030308070208000400050907\r\n"
    text2 = b"\r\n--------------030308070208000400050907--\r\n"
    w.send(b'A003 APPEND Drafts (\\Seen \\Draft $MDNSent) CATENATE (URL "/Drafts;UIDVALIDITY=%d/;UID=1/;'
           b'section=HEADER" TEXT {%d}\r\n' % (drafts_v, len(text1)))
    assert await w.until(b"\r\n") == b"+ OK\r\n"
    w.send(text1 + b' URL "/Drafts;UIDVALIDITY=%d/;UID=1/;section=1.MIME" URL "/Drafts;UIDVALIDITY=%d/;'
           b'UID=1/;section=1" TEXT {%d}\r\n' % (drafts_v, drafts_v, len(text1)))
    assert await w.until(b"\r\n") == b"+ OK\r\n"
    w.send(text1 + b' URL "imap://alice@example.org/INBOX;UIDVALIDITY=%d/;UID=%d" TEXT {%d}\r\n'
           % (inbox_v, uid_in, len(text2)))
    assert await w.until(b"\r\n") == b"+ OK\r\n"
    w.send(text2 + b")\r\n")
    answer = await w.tagged("A003")
    assert re.fullmatch(rb"A003 OK \[APPENDUID %d 2\] APPEND completed\r\n" % drafts_v, answer), answer
    header = DRAFT[:DRAFT.index(b"\r\n\r\n") + 4]
    expected = (header + text1 + b"Content-Type: text/plain\r\n\r\n"
                + b"Hello Joe, do you think we can meet at 3:30 tomorrow?" + text1 + SIMPLE % (1, 1) + text2)
    await w.cmd("EXAMINE Drafts")
    w.send(b"f UID FETCH 2 (FLAGS BODY.PEEK[])\r\n")
    assert await w.tagged("f") == (b"* 2 FETCH (UID 2 FLAGS (\\Draft \\Recent \\Seen $MDNSent) BODY[] {%d}\r\n%s)\r\n"
                                   b"f OK FETCH completed\r\n" % (len(expected), expected))


@pytest_twisted.ensureDeferred
async def test_catenate_bad_urls_and_limits(tmp_path):
    ctx = await make_context(tmp_path, imap={"max_literal_size": 300})
    w = await logged_in(ctx)
    uid = await append(w, "INBOX", SIMPLE % (1, 1))
    bob = await logged_in(ctx, "bob", "hunter2")
    await append(bob, "INBOX", SIMPLE % (2, 2))
    cases = [
        b'"/INBOX/;UID=99"',                                      # no such message
        b'"/INBOX;UIDVALIDITY=1/;UID=%d"' % uid,                 # wrong UIDVALIDITY
        b'"/Nowhere/;UID=1"',                                     # no such mailbox
        b'"imap://bob@example.org/INBOX/;UID=1"',                 # another user's mailbox
        b'"/INBOX/;UID=%d/;SECTION=7"' % uid,                    # no such part
        b'"/INBOX?SUBJECT%20x"',                                  # a search URL
        b'";UID=1"',                                              # relative, nothing selected
        b'"/INBOX/;UID=1;URLAUTH=anonymous"',                     # URLAUTH needs an absolute URL
        b'"imap://alice@example.org/INBOX/;UID=1;URLAUTH=anonymous:internal:' + b"0" * 64 + b'"',
    ]
    for i, url in enumerate(cases):
        lines = await w.cmd(b"APPEND INBOX CATENATE (TEXT {3+}\r\nabc URL %s)" % url)
        shown = url.strip(b'"')
        assert lines == [b"t%d NO [BADURL %s] CATENATE failed: a URL names nothing this user can read"
                         % (i + 1, shown)], (url, lines)
    # Nothing was saved by the failed commands.
    assert (await w.cmd("STATUS INBOX (MESSAGES)"))[0] == b"* STATUS INBOX (MESSAGES 1)"
    # The catenated message may not exceed APPENDLIMIT even though each piece does not.
    lines = await w.cmd(b"APPEND INBOX CATENATE (URL \"/INBOX/;UID=%d\" URL \"/INBOX/;UID=%d\" "
                        b"URL \"/INBOX/;UID=%d\" URL \"/INBOX/;UID=%d\" URL \"/INBOX/;UID=%d\" "
                        b"URL \"/INBOX/;UID=%d\" URL \"/INBOX/;UID=%d\" URL \"/INBOX/;UID=%d\")"
                        % ((uid,) * 8))
    assert lines == [b"t11 NO [TOOBIG] Message larger than the APPENDLIMIT of 300 bytes"]
    assert await w.cmd("APPEND INBOX CATENATE ()") == [b"t12 BAD Empty CATENATE list"]
    assert await w.cmd("APPEND INBOX CATENATE (BODY {1+}\r\nx)") == [
        b"t13 BAD Expected TEXT, URL or UTF8 in CATENATE"]
    assert await w.cmd("APPEND Nowhere CATENATE (TEXT {1+}\r\nx)") == [
        b"t14 NO [TRYCREATE] Mailbox does not exist"]
    # A relative URL works against the selected mailbox; ;PARTIAL= takes a byte range.
    await w.cmd("SELECT INBOX")
    lines = await w.cmd(b"APPEND INBOX CATENATE (URL \";UID=%d/;SECTION=TEXT/;PARTIAL=0.4\" TEXT {2+}\r\n!!)"
                        % uid)
    assert lines[-1].startswith(b"t16 OK [APPENDUID ")
    lines = await w.cmd("FETCH 2 BODY.PEEK[]")
    assert lines[:2] == [b"* 2 FETCH (BODY[] {6}", b"Body!!)"]


@pytest_twisted.ensureDeferred
async def test_multiappend_with_catenate_is_all_or_nothing(ctx):
    w = await logged_in(ctx)
    uid = await append(w, "INBOX", SIMPLE % (1, 1))
    lines = await w.cmd(b'APPEND Archive {3+}\r\nabc CATENATE (URL "/INBOX/;UID=%d") CATENATE (URL "/INBOX/;UID=5")'
                        % uid)
    assert lines[0].startswith(b"t1 NO [BADURL /INBOX/;UID=5] ")
    assert (await w.cmd("STATUS Archive (MESSAGES)"))[0] == b"* STATUS Archive (MESSAGES 0)"
    lines = await w.cmd(b'APPEND Archive (\\Flagged) {3+}\r\nabc CATENATE (URL "/INBOX/;UID=%d" TEXT {2+}\r\nhi)'
                        % uid)
    assert re.fullmatch(rb"t3 OK \[APPENDUID \d+ 1:2\] APPEND completed", lines[-1]), lines


@pytest_twisted.ensureDeferred
async def test_utf8_append_needs_enable(ctx):
    """RFC 6855 section 4: APPEND ... UTF8 (~{n}) only after ENABLE UTF8=ACCEPT."""
    w = await logged_in(ctx)
    msg = "From: Jörg <jörg@example.org>\r\nSubject: Grüße\r\n\r\nHallo\r\n".encode()
    assert await w.cmd(b"APPEND INBOX UTF8 (~{%d+}\r\n%s)" % (len(msg), msg)) == [
        b"t1 BAD UTF8 message data needs ENABLE UTF8=ACCEPT first"]
    assert await w.cmd("ENABLE UTF8=ACCEPT") == [b"* ENABLED UTF8=ACCEPT", b"t2 OK ENABLE completed"]
    assert await w.cmd("ENABLE UTF8=ACCEPT") == [b"* ENABLED", b"t3 OK ENABLE completed"]
    w.send(b"u APPEND INBOX (\\Seen) UTF8 (~{%d}\r\n" % len(msg))
    assert await w.until(b"\r\n") == b"+ OK\r\n"
    w.send(msg + b")\r\n")
    assert (await w.tagged("u")).startswith(b"u OK [APPENDUID ")
    lines = await w.cmd(b"APPEND INBOX CATENATE (UTF8 (~{%d+}\r\n%s) TEXT {2+}\r\nok)" % (len(msg), msg))
    assert lines[-1].startswith(b"t4 OK [APPENDUID ")
    await w.cmd("SELECT INBOX")
    lines = await w.cmd("FETCH 1:2 (BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
    assert b"\r\n".join(lines).count("Subject: Grüße\r\n".encode()) == 2


@pytest_twisted.ensureDeferred
async def test_replace_rfc8508_example(ctx):
    w = await logged_in(ctx)
    for i in range(1, 5):
        await append(w, "Drafts", SIMPLE % (i, i))
    st = await w.cmd("STATUS Drafts (UIDVALIDITY)")
    v = int(re.search(rb"UIDVALIDITY (\d+)", st[0]).group(1))
    await w.cmd("SELECT Drafts")
    other = await logged_in(ctx)
    await other.cmd("SELECT Drafts")
    new = DRAFT.replace(b"3:30", b"4:30")
    w.send(b"A003 REPLACE 4 Drafts (\\Seen \\Draft) {%d}\r\n" % len(new))
    assert await w.until(b"\r\n") == b"+ OK\r\n"
    w.send(new + b"\r\n")
    assert await w.tagged("A003") == (b"* OK [APPENDUID %d 5] Replacement Message ID\r\n"
                                      b"* 4 EXPUNGE\r\n* 4 EXISTS\r\n* 4 RECENT\r\nA003 OK REPLACE completed\r\n" % v)
    # Another session sees the same: the old message gone, the new one there.
    lines = await other.cmd("NOOP")
    assert b"* 4 EXPUNGE" in lines and b"* 4 EXISTS" in lines
    assert await w.cmd("UID FETCH 1:* (FLAGS)") == [
        b"* 1 FETCH (UID 1 FLAGS (\\Recent))", b"* 2 FETCH (UID 2 FLAGS (\\Recent))",
        b"* 3 FETCH (UID 3 FLAGS (\\Recent))", b"* 4 FETCH (UID 5 FLAGS (\\Draft \\Recent \\Seen))",
        b"t3 OK FETCH completed"]
    # UID REPLACE into another mailbox: a draft becomes a sent message.
    lines = await w.cmd(b"UID REPLACE 2 Sent {4+}\r\nsent")
    assert re.fullmatch(rb"\* OK \[APPENDUID \d+ 1\] Replacement Message ID", lines[0]), lines
    assert lines[1:] == [b"* 2 EXPUNGE", b"t4 OK REPLACE completed"]
    # Errors leave the original alone.
    assert await w.cmd(b"UID REPLACE 2 Sent {4+}\r\nsent") == [b"t5 NO [NONEXISTENT] The message to replace does not exist"]
    assert await w.cmd(b"REPLACE 9 Sent {4+}\r\nsent") == [b"t6 BAD Message sequence number 9 does not exist"]
    assert await w.cmd(b"REPLACE 1:2 Sent {4+}\r\nsent") == [b"t7 BAD REPLACE takes one message number"]
    assert await w.cmd(b"REPLACE 1 Nowhere {4+}\r\nsent") == [b"t8 NO [TRYCREATE] Mailbox does not exist"]
    assert await w.cmd(b"REPLACE 1 Sent {4+}\r\nsent {1+}\r\nx") == [b"t9 BAD Error in IMAP command REPLACE: Unexpected extra arguments"]
    assert (await w.cmd("FETCH 1:* UID"))[:3] == [b"* 1 FETCH (UID 1)", b"* 2 FETCH (UID 3)", b"* 3 FETCH (UID 5)"]
    await w.cmd("EXAMINE Drafts")
    assert await w.cmd(b"REPLACE 1 Drafts {4+}\r\nsent") == [b"t12 NO [READ-ONLY] Mailbox is read-only"]
    assert (await w.cmd("STATUS Drafts (MESSAGES)"))[0] == b"* STATUS Drafts (MESSAGES 3)"


@pytest_twisted.ensureDeferred
async def test_uidplus_codes(ctx):
    """RFC 4315: APPENDUID for single and multiple APPEND, COPYUID for COPY and MOVE, UID EXPUNGE
    limited to its set."""
    w = await logged_in(ctx)
    st = await w.cmd("STATUS INBOX (UIDVALIDITY)")
    v = int(re.search(rb"UIDVALIDITY (\d+)", st[0]).group(1))
    assert await w.cmd(b"APPEND INBOX {2+}\r\nm1") == [b"t2 OK [APPENDUID %d 1] APPEND completed" % v]
    assert await w.cmd(b"APPEND INBOX {2+}\r\nm2 {2+}\r\nm3 {2+}\r\nm4") == [
        b"t3 OK [APPENDUID %d 2:4] APPEND completed" % v]
    await w.cmd("SELECT INBOX")
    lines = await w.cmd("UID COPY 2,4 Archive")
    assert re.fullmatch(rb"t5 OK \[COPYUID \d+ 2,4 1:2\] COPY completed", lines[-1]), lines
    lines = await w.cmd("UID MOVE 1 Archive")
    assert re.fullmatch(rb"\* OK \[COPYUID \d+ 1 3\] Moved", lines[0]) and lines[1] == b"* 1 EXPUNGE"
    await w.cmd("STORE 1:* +FLAGS.SILENT (\\Deleted)")
    assert await w.cmd("UID EXPUNGE 3") == [b"* 2 EXPUNGE", b"t8 OK EXPUNGE completed"]
    assert await w.cmd("FETCH 1:* UID") == [b"* 1 FETCH (UID 2)", b"* 2 FETCH (UID 4)", b"t9 OK FETCH completed"]
