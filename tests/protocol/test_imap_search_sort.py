"""SEARCH (every RFC 3501 key, decoded text), ESEARCH (RFC 4731), SEARCHRES (RFC 5182), WITHIN
(RFC 5032), SORT/ESORT/CONTEXT (RFC 5256, 5267), THREAD (RFC 5256), I18NLEVEL=1: transcripts over
real rbox storage."""


import pytest
import pytest_twisted
from twisted.internet import defer

from tests.protocol.imap_session import Wire, make_context
from tests.protocol.test_imap_messages import append, session_with

pytestmark = pytest.mark.usefixtures("transcript_backend")   # runs on local and on Ceph


@pytest.fixture
def ctx(tmp_path):
    return pytest_twisted.blockon(defer.Deferred.fromCoroutine(make_context(tmp_path)))


def msg(subject, frm, to="bob@example.org", date="Mon, 23 Nov 2026 10:00:00 +0000", body="hello",
        extra=""):
    return (f"From: {frm}\r\nTo: {to}\r\nCc: carol@example.org\r\nSubject: {subject}\r\nDate: {date}\r\n"
            f"{extra}\r\n{body}\r\n").encode("latin-1")


ENCODED = [
    # 1: RFC 2047 Q encoded subject, quoted-printable UTF-8 body
    (b"From: =?utf-8?q?J=C3=B6rg?= <joerg@example.org>\r\nTo: bob@example.org\r\n"
     b"Subject: =?utf-8?q?Gr=C3=BC=C3=9Fe_aus_K=C3=B6ln?=\r\nDate: Tue, 24 Nov 2026 10:00:00 +0000\r\n"
     b"MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: quoted-printable\r\n"
     b"\r\nDer B=C3=A4r ist m=C3=BCde.\r\n"),
    # 2: base64 UTF-8 body, B-encoded subject
    (b"From: ann@example.org\r\nTo: bob@example.org\r\nSubject: =?UTF-8?B?0J/RgNC40LLQtdGC?=\r\n"
     b"Date: Wed, 25 Nov 2026 10:00:00 +0000\r\nMIME-Version: 1.0\r\n"
     b"Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: base64\r\n\r\n"
     b"0JzQvtGB0LrQstCwINGB0L3QtdC20L3QsNGPIENhZsOp\r\n"),
    # 3: iso-8859-1 8-bit body
    (b"From: pierre@example.org\r\nTo: bob@example.org\r\nSubject: caf\xe9\r\n"
     b"Date: Thu, 26 Nov 2026 10:00:00 +0000\r\nMIME-Version: 1.0\r\n"
     b"Content-Type: text/plain; charset=iso-8859-1\r\nContent-Transfer-Encoding: 8bit\r\n\r\n"
     b"Cr\xe8me br\xfbl\xe9e \xe0 la fran\xe7aise\r\n"),
    # 4: windows-1252 with curly quotes and the euro sign, in a multipart
    (b"From: eve@example.org\r\nTo: bob@example.org\r\nSubject: price\r\n"
     b"Date: Fri, 27 Nov 2026 10:00:00 +0000\r\nMIME-Version: 1.0\r\n"
     b"Content-Type: multipart/mixed; boundary=B\r\n\r\n--B\r\n"
     b"Content-Type: text/plain; charset=windows-1252\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n"
     b"It costs =80 5, =93quoted=94\r\n--B\r\nContent-Type: application/octet-stream\r\n"
     b"Content-Transfer-Encoding: base64\r\n\r\nbmVlZGxlIGluIGFuIGF0dGFjaG1lbnQ=\r\n--B--\r\n"),
]


@pytest_twisted.ensureDeferred
async def test_search_decoded_text_and_every_key(ctx):
    w = await session_with(ctx, *ENCODED)
    await w.cmd("SELECT INBOX")

    async def found(keys):
        lines = await w.cmd(b"SEARCH CHARSET UTF-8 " + keys.encode("utf-8") if isinstance(keys, str) else keys)
        assert lines[-1].endswith(b"OK SEARCH completed"), lines
        return [int(x) for x in lines[0].split()[2:]]

    assert await found('SUBJECT "gr\u00fc\u00dfe"') == [1]           # encoded word, case-insensitive
    assert await found('SUBJECT "K\u00d6LN"') == [1]
    assert await found('FROM "j\u00f6rg"') == [1]
    assert await found('BODY "b\u00c4r ist"') == [1]                 # quoted-printable UTF-8
    assert await found('SUBJECT "\u043f\u0440\u0438\u0432\u0435\u0442"') == [2]  # B-encoded Cyrillic
    assert await found('BODY "\u0441\u043d\u0435\u0436\u043d\u0430\u044f"') == [2]  # base64 body
    assert await found('BODY "cr\u00e8me br\u00fbl\u00e9e"') == [3]  # iso-8859-1
    assert await found('SUBJECT "CAF\u00c9"') == [3]                 # 8-bit header as latin-1
    assert await found('BODY "\u20ac 5"') == [4]                     # windows-1252 euro sign
    assert await found('TEXT "\u201cquoted\u201d"') == [4]
    assert await found("BODY needle") == []                          # attachments are not text
    assert await found('TEXT "caf\u00e9"') == [2, 3]                 # header and body
    assert (await w.cmd("SEARCH CHARSET ISO-8859-1 ALL"))[-1].endswith(
        b"NO [BADCHARSET (UTF-8 US-ASCII)] Unsupported charset")
    lines = await w.cmd(b"SEARCH CHARSET US-ASCII BODY \"caf\xc3\xa9\"")
    assert lines[-1].endswith(b"NO [BADCHARSET (UTF-8 US-ASCII)] Search string is not valid US-ASCII")
    await w.cmd("STORE 1 +FLAGS (\\Answered \\Flagged $Work)")
    await w.cmd("STORE 2 +FLAGS (\\Deleted \\Draft \\Seen)")
    cases = {
        "ALL": [1, 2, 3, 4], "ANSWERED": [1], "UNANSWERED": [2, 3, 4], "DELETED": [2], "UNDELETED": [1, 3, 4],
        "DRAFT": [2], "UNDRAFT": [1, 3, 4], "FLAGGED": [1], "UNFLAGGED": [2, 3, 4], "SEEN": [2],
        "UNSEEN": [1, 3, 4], "KEYWORD $Work": [1], "UNKEYWORD $Work": [2, 3, 4], "NEW": [1, 3, 4],
        "OLD": [], "RECENT": [1, 2, 3, 4], "BCC x": [], "CC x": [], "TO bob": [1, 2, 3, 4],
        "HEADER Content-Transfer-Encoding base64": [2], 'HEADER MIME-Version ""': [1, 2, 3, 4],
        "LARGER 300": [4], "SMALLER 300": [1, 2, 3], "SENTON 25-Nov-2026": [2],
        "SENTBEFORE 25-Nov-2026": [1], "SENTSINCE 26-Nov-2026": [3, 4], "SINCE 1-Jan-2000": [1, 2, 3, 4],
        "BEFORE 1-Jan-2000": [], "ON 1-Jan-2000": [], "NOT SEEN": [1, 3, 4], "OR SEEN FLAGGED": [1, 2],
        "(OR SEEN FLAGGED) NOT DRAFT": [1], "2:3": [2, 3], "UID 3:*": [3, 4], "1,4 UNSEEN": [1, 4],
        "NOT (OR (SEEN) (OR ANSWERED (UID 3)))": [4], "5:9": [], "YOUNGER 3600": [1, 2, 3, 4],
        "OLDER 3600": [],
    }
    for keys, expected in cases.items():
        assert await found(keys) == expected, keys


@pytest_twisted.ensureDeferred
async def test_esearch_and_searchres(ctx):
    w = await session_with(ctx, *(msg(f"m{i}", "a@example.org") for i in range(1, 12)))
    await w.cmd("SELECT INBOX")
    await w.cmd("STORE 2,10:11 +FLAGS.SILENT (\\Seen)")
    # RFC 4731 section 3.1 examples (with this mailbox's numbers).
    assert await w.cmd("SEARCH RETURN (MIN COUNT) UNSEEN") == [
        b'* ESEARCH (TAG "t3") MIN 1 COUNT 8', b"t3 OK SEARCH completed"]
    assert await w.cmd("SEARCH RETURN () SEEN") == [b'* ESEARCH (TAG "t4") ALL 2,10:11', b"t4 OK SEARCH completed"]
    assert await w.cmd("UID SEARCH RETURN (MIN MAX) SEEN") == [
        b'* ESEARCH (TAG "t5") UID MIN 2 MAX 11', b"t5 OK SEARCH completed"]
    assert await w.cmd("SEARCH RETURN (COUNT) KEYWORD nothing") == [
        b'* ESEARCH (TAG "t6") COUNT 0', b"t6 OK SEARCH completed"]
    assert await w.cmd("SEARCH RETURN (MIN MAX ALL) KEYWORD nothing") == [
        b'* ESEARCH (TAG "t7")', b"t7 OK SEARCH completed"]
    assert (await w.cmd("SEARCH RETURN (FOO) ALL"))[-1] == b"t8 BAD Unknown return option FOO"
    # RFC 5267 PARTIAL (and negative ranges, RFC 9394).
    assert await w.cmd("UID SEARCH RETURN (PARTIAL 2:4) UNSEEN") == [
        b'* ESEARCH (TAG "t9") UID PARTIAL (2:4 3:5)', b"t9 OK SEARCH completed"]
    assert await w.cmd("SEARCH RETURN (PARTIAL -1:-2) ALL") == [
        b'* ESEARCH (TAG "t10") PARTIAL (-1:-2 10:11)', b"t10 OK SEARCH completed"]
    assert await w.cmd("SEARCH RETURN (PARTIAL 20:30) ALL") == [
        b'* ESEARCH (TAG "t11") PARTIAL (20:30 NIL)', b"t11 OK SEARCH completed"]
    # RFC 5182: SAVE alone answers nothing; $ is then usable everywhere a set is.
    assert await w.cmd("SEARCH RETURN (SAVE) SEEN") == [b"t12 OK SEARCH completed"]
    assert await w.cmd("FETCH $ (UID)") == [b"* 2 FETCH (UID 2)", b"* 10 FETCH (UID 10)", b"* 11 FETCH (UID 11)",
                                            b"t13 OK FETCH completed"]
    assert await w.cmd("SEARCH $ SMALLER 1000000") == [b"* SEARCH 2 10 11", b"t14 OK SEARCH completed"]
    assert await w.cmd("UID SEARCH RETURN (SAVE MIN) UID $") == [b'* ESEARCH (TAG "t15") UID MIN 2',
                                                                b"t15 OK SEARCH completed"]
    assert await w.cmd("UID FETCH $ UID") == [b"* 2 FETCH (UID 2)", b"t16 OK FETCH completed"]
    assert await w.cmd("SEARCH RETURN (SAVE MIN MAX) ALL") == [
        b'* ESEARCH (TAG "t17") MIN 1 MAX 11', b"t17 OK SEARCH completed"]
    assert await w.cmd("STORE $ +FLAGS.SILENT (\\Flagged)") == [b"t18 OK STORE completed"]
    assert await w.cmd("SEARCH FLAGGED") == [b"* SEARCH 1 11", b"t19 OK SEARCH completed"]
    # A failed SAVE search empties $.
    assert (await w.cmd("SEARCH RETURN (SAVE) BADKEY"))[-1].startswith(b"t20 BAD")
    assert await w.cmd("FETCH $ UID") == [b"t21 OK FETCH completed"]
    # $ is forgotten with the mailbox.
    await w.cmd("SEARCH RETURN (SAVE) ALL")
    await w.cmd("SELECT INBOX")
    assert await w.cmd("FETCH $ UID") == [b"t24 OK FETCH completed"]


@pytest_twisted.ensureDeferred
async def test_imap4rev2_search_is_esearch(ctx):
    w = await session_with(ctx, msg("a", "x@example.org"), msg("b", "y@example.org"))
    assert await w.cmd("ENABLE IMAP4rev2") == [b"* ENABLED IMAP4rev2", b"t1 OK ENABLE completed"]
    lines = await w.cmd("SELECT INBOX")
    assert not any(b"RECENT" in x or b"UNSEEN" in x for x in lines)
    assert b'* LIST () "/" INBOX' in lines
    assert await w.cmd("SEARCH ALL") == [b'* ESEARCH (TAG "t3") ALL 1:2', b"t3 OK SEARCH completed"]
    assert await w.cmd("UID SEARCH SEEN") == [b'* ESEARCH (TAG "t4") UID', b"t4 OK SEARCH completed"]
    assert await w.cmd("FETCH 1 FLAGS") == [b"* 1 FETCH (FLAGS ())", b"t5 OK FETCH completed"]


MAILS = [
    msg("Re: [list] Beta", '"Zoe" <zoe@example.org>', "b@example.org", "Mon, 23 Nov 2026 12:00:00 +0000"),
    msg("alpha", "Adam <yann@example.org>", "c@example.org", "Mon, 23 Nov 2026 09:00:00 +0000"),
    msg("Fwd: gamma", "mia@example.org", "a@example.org", "Mon, 23 Nov 2026 08:00:00 -0500"),
    msg("beta", "bob@example.org", "d@example.org", "bad date"),
]


@pytest_twisted.ensureDeferred
async def test_sort(ctx):
    w = await session_with(ctx, *MAILS)
    await w.cmd("SELECT INBOX")
    assert await w.cmd("SORT (SUBJECT) UTF-8 ALL") == [b"* SORT 2 1 4 3", b"t2 OK SORT completed"]
    assert await w.cmd("SORT (SUBJECT SIZE) UTF-8 ALL") == [b"* SORT 2 4 1 3", b"t3 OK SORT completed"]
    # DATE: 3 is 13:00 UTC; 4 has no usable Date and uses its arrival time (now).
    assert await w.cmd("SORT (DATE) UTF-8 ALL") == [b"* SORT 2 1 3 4", b"t4 OK SORT completed"]
    assert await w.cmd("SORT (FROM) UTF-8 ALL") == [b"* SORT 4 3 2 1", b"t5 OK SORT completed"]
    assert await w.cmd("SORT (DISPLAYFROM) UTF-8 ALL") == [b"* SORT 2 4 3 1", b"t6 OK SORT completed"]
    assert await w.cmd("SORT (TO) US-ASCII ALL") == [b"* SORT 3 1 2 4", b"t7 OK SORT completed"]
    assert await w.cmd("SORT (REVERSE SUBJECT) UTF-8 ALL") == [b"* SORT 3 1 4 2", b"t8 OK SORT completed"]
    assert await w.cmd("UID SORT (CC SUBJECT) UTF-8 NOT SUBJECT gamma") == [b"* SORT 2 1 4",
                                                                          b"t9 OK SORT completed"]
    assert await w.cmd("SORT (SUBJECT) KOI8-R ALL") == [b"t10 NO [BADCHARSET (UTF-8 US-ASCII)] Unsupported charset"]
    assert (await w.cmd("SORT (FOO) UTF-8 ALL"))[-1] == b"t11 BAD Unknown sort key FOO"
    assert (await w.cmd("SORT (REVERSE) UTF-8 ALL"))[-1] == b"t12 BAD Missing sort key"
    # ESORT (RFC 5267): MIN/MAX are the first and last in sort order; ALL keeps the order.
    assert await w.cmd("SORT RETURN (MIN MAX ALL COUNT) (SUBJECT) UTF-8 ALL") == [
        b'* ESEARCH (TAG "t13") MIN 2 MAX 3 ALL 2,1,4,3 COUNT 4', b"t13 OK SORT completed"]
    assert await w.cmd("UID SORT RETURN (PARTIAL 2:3) (SUBJECT) UTF-8 ALL") == [
        b'* ESEARCH (TAG "t14") UID PARTIAL (2:3 1,4)', b"t14 OK SORT completed"]


@pytest_twisted.ensureDeferred
async def test_thread(ctx):
    mails = [
        msg("topic", "a@example.org", date="Mon, 23 Nov 2026 10:00:00 +0000", extra="Message-ID: <1@x>\r\n"),
        msg("Re: topic", "b@example.org", date="Mon, 23 Nov 2026 11:00:00 +0000",
            extra="Message-ID: <2@x>\r\nIn-Reply-To: <1@x>\r\n"),
        msg("other", "c@example.org", date="Mon, 23 Nov 2026 10:30:00 +0000", extra="Message-ID: <3@x>\r\n"),
        msg("Re: topic", "d@example.org", date="Mon, 23 Nov 2026 12:00:00 +0000",
            extra="Message-ID: <4@x>\r\nReferences: <1@x> <2@x>\r\n"),
        msg("Re: topic", "e@example.org", date="Mon, 23 Nov 2026 11:30:00 +0000",
            extra="Message-ID: <5@x>\r\nReferences: <1@x>\r\n"),
    ]
    w = await session_with(ctx, *mails)
    await w.cmd("SELECT INBOX")
    assert await w.cmd("THREAD REFERENCES UTF-8 ALL") == [b"* THREAD (1 (2 4)(5))(3)", b"t2 OK THREAD completed"]
    assert await w.cmd("THREAD ORDEREDSUBJECT UTF-8 ALL") == [b"* THREAD (1 (2)(5)(4))(3)",
                                                              b"t3 OK THREAD completed"]
    assert await w.cmd("UID THREAD REFERENCES UTF-8 FROM nobody") == [b"* THREAD", b"t4 OK THREAD completed"]
    assert (await w.cmd("THREAD FOO UTF-8 ALL"))[-1] == b"t5 BAD Unknown threading algorithm FOO"


@pytest_twisted.ensureDeferred
async def test_context_updates(ctx):
    w = await session_with(ctx, *(msg(f"s{i}", "a@example.org") for i in range(1, 5)))
    await w.cmd("SELECT INBOX")
    await w.cmd("STORE 2 +FLAGS.SILENT (\\Seen)")
    # RFC 5267 4.x: the result, then ADDTO / REMOVEFROM as things change.
    assert await w.cmd("UID SEARCH RETURN (UPDATE) UNSEEN", tag="t2") == [
        b'* ESEARCH (TAG "t2") UID ALL 1,3:4', b"t2 OK SEARCH completed"]
    assert await w.cmd("UID SORT RETURN (UPDATE ALL) (REVERSE SUBJECT) UTF-8 UNSEEN", tag="srt") == [
        b'* ESEARCH (TAG "srt") UID ALL 4,3,1', b"srt OK SORT completed"]
    # Our own STORE changes the results.
    assert await w.cmd("STORE 3 +FLAGS.SILENT (\\Seen)") == [
        b'* ESEARCH (TAG "t2") UID REMOVEFROM (0 3)', b'* ESEARCH (TAG "srt") UID REMOVEFROM (2 3)',
        b"t3 OK STORE completed"]
    # Another session's delivery and flag change arrive with the next sync.
    b = Wire(ctx)
    b.take()
    await b.login()
    await append(b, "INBOX", msg("s5", "a@example.org"))
    await b.cmd("SELECT INBOX")
    await b.cmd("STORE 2 -FLAGS.SILENT (\\Seen)")
    lines = await w.cmd("NOOP")
    assert lines == [b"* 5 EXISTS", b"* 5 RECENT", b"* 2 FETCH (UID 2 FLAGS (\\Recent))",
                     b'* ESEARCH (TAG "t2") UID ADDTO (0 2,5)',
                     b'* ESEARCH (TAG "srt") UID ADDTO (1 5 3 2)', b"t4 OK NOOP completed"]
    assert await w.cmd('CANCELUPDATE "t2" "srt"') == [b"t5 OK CANCELUPDATE completed"]
    await w.cmd("STORE 1 +FLAGS.SILENT (\\Seen)")
    assert await w.cmd("NOOP") == [b"t7 OK NOOP completed"]
    # Too many kept searches: NOUPDATE, the search itself still answers.
    for i in range(10):
        await w.cmd("SEARCH RETURN (UPDATE) ALL", tag=f"u{i}")
    assert await w.cmd("SEARCH RETURN (UPDATE) ALL", tag="u10") == [
        b'* ESEARCH (TAG "u10") ALL 1:5', b'* NO [NOUPDATE "u10"] Too many searches kept up to date',
        b"u10 OK SEARCH completed"]
