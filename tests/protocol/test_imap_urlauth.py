"""URLAUTH (RFC 4467): GENURLAUTH, URLFETCH, RESETKEY, access identifiers, expiry; IMAP URL
parsing (RFC 5092).  Transcripts over a StringTransport against real storage and the local
dictionary."""

import re
import time

import pytest
import pytest_twisted
from twisted.internet import defer

from mailserver.protocols.imap import urls
from mailserver.protocols.imap.commands import urlauth
from tests.protocol.imap_session import Wire, make_context

pytestmark = pytest.mark.usefixtures("transcript_backend")   # runs on local and on Ceph

USERS = {"joe": "joe-pw", "fred": "fred-pw", "submit": "submit-pw", "eve": "eve-pw"}

# RFC 4467 section 9's message: part 1.2 is the text the examples fetch.
MESSAGE = (b"From: Joe <joe@example.com>\r\nTo: Fred <fred@example.com>\r\nSubject: para bellum\r\n"
           b"MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=O\r\n\r\n--O\r\n"
           b"Content-Type: multipart/alternative; boundary=I\r\n\r\n--I\r\nContent-Type: text/plain\r\n\r\n"
           b"intro\r\n--I\r\nContent-Type: text/plain\r\n\r\nSi vis pacem, para bellum.\r\n\r\n--I--\r\n"
           b"--O--\r\n")


@pytest.fixture
def ctx(tmp_path):
    return pytest_twisted.blockon(defer.Deferred.fromCoroutine(
        make_context(tmp_path, users=USERS, imap={"urlauth_submit_user": "submit"})))


async def login(ctx, user):
    w = Wire(ctx)
    w.take()
    await w.login(user, USERS[user])
    w._tag = 0
    return w


async def joe_with_message(ctx):
    joe = await login(ctx, "joe")
    for _ in range(20):      # the RFC's examples name ;uid=20
        lines = await joe.cmd(b"APPEND INBOX {%d+}\r\n%s" % (len(MESSAGE), MESSAGE))
        assert lines[-1].split()[1] == b"OK", lines
    joe._tag = 0
    return joe


def answer(lines):
    """The tagged answer without its tag."""
    return lines[-1].split(b" ", 1)[1]


def genurlauth_result(lines):
    m = re.fullmatch(rb'\* GENURLAUTH "([^"]+)"', lines[0])
    assert m and lines[1].endswith(b"OK GENURLAUTH completed"), lines
    return m.group(1).decode()


@pytest_twisted.ensureDeferred
async def test_rfc4467_example_submit(ctx):
    """Section 9: Joe authorises the submission server (acting for Fred) to fetch part 1.2."""
    joe = await joe_with_message(ctx)
    rump = "imap://joe@example.com/INBOX/;uid=20/;section=1.2;urlauth=submit+fred"
    url = genurlauth_result(await joe.cmd(f'GENURLAUTH "{rump}" INTERNAL'))
    assert re.fullmatch(re.escape(rump) + ":internal:[0-9a-f]{64}", url), url
    submit = await login(ctx, "submit")
    w_lines = await submit.cmd(f'URLFETCH "{url}"')
    assert w_lines == [b'* URLFETCH "%s" {28}' % url.encode(), b"Si vis pacem, para bellum.", b"",
                       b"t1 OK URLFETCH completed"]
    # Only the submit user may use a submit+ URL: Fred himself, Joe and Eve get NIL.
    for user in ("fred", "joe", "eve"):
        w = joe if user.startswith("joe") else await login(ctx, user)
        lines = await w.cmd(f'URLFETCH "{url}"')
        assert lines[0] == b'* URLFETCH "%s" NIL' % url.encode(), (user, lines)
    # The message is not marked \Seen by URLFETCH.
    await joe.cmd("EXAMINE INBOX")
    assert (await joe.cmd("FETCH 20 FLAGS"))[0] == b"* 20 FETCH (FLAGS (\\Recent))"


@pytest_twisted.ensureDeferred
async def test_access_identifiers_and_tampering(ctx):
    joe = await joe_with_message(ctx)
    base = "imap://joe@example.com/INBOX;UIDVALIDITY=%d/;UID=3" % (await joe.proto.user.status("INBOX")).uidvalidity
    anon = genurlauth_result(await joe.cmd(f'GENURLAUTH "{base};URLAUTH=anonymous" INTERNAL'))
    auth = genurlauth_result(await joe.cmd(f'GENURLAUTH "{base}/;SECTION=HEADER.FIELDS%20(SUBJECT);'
                                           f'URLAUTH=authuser" INTERNAL'))
    fred_only = genurlauth_result(await joe.cmd(f'GENURLAUTH "{base}/;PARTIAL=0.4;URLAUTH=user+fred" '
                                                'internal'))
    eve = await login(ctx, "eve")
    fred = await login(ctx, "fred")
    lines = await eve.cmd(f'URLFETCH "{anon}" "{auth}" "{fred_only}"')
    assert lines[0] == b'* URLFETCH "%s" {%d}' % (anon.encode(), len(MESSAGE))
    assert b'* URLFETCH "%s" {24}' % auth.encode() in lines and b"Subject: para bellum" in lines
    assert lines[-2:] == [b'* URLFETCH "%s" NIL' % fred_only.encode(), b"t1 OK URLFETCH completed"]
    assert await fred.cmd(f'URLFETCH "{fred_only}"') == [b'* URLFETCH "%s" {4}' % fred_only.encode(), b"From",
                                                         b"t1 OK URLFETCH completed"]
    # Any change to the signed part, or a forged token, gives NIL.
    for forged in (anon.replace(";UID=3", ";UID=4"), anon.replace("anonymous", "authuser"),
                   anon[:-4] + "0000", anon.replace("joe@", "fred@"),
                   anon.replace(":internal:", ":other:")):
        assert (await eve.cmd(f'URLFETCH "{forged}"'))[0] == b'* URLFETCH "%s" NIL' % forged.encode(), forged
    # A URL that is not URLAUTH at all, or unparsable, is NIL too (never an error).
    assert (await eve.cmd('URLFETCH "imap://joe@example.com/INBOX/;UID=3" "http://x/"'))[:2] == [
        b'* URLFETCH "imap://joe@example.com/INBOX/;UID=3" NIL', b'* URLFETCH "http://x/" NIL']


@pytest_twisted.ensureDeferred
async def test_resetkey_revokes(ctx):
    joe = await joe_with_message(ctx)
    await joe.cmd("CREATE Other")
    await joe.cmd(b"APPEND Other {%d+}\r\n%s" % (len(MESSAGE), MESSAGE))
    joe._tag = 0
    in_inbox = genurlauth_result(await joe.cmd('GENURLAUTH "imap://joe@example.com/INBOX/;UID=1;URLAUTH=anonymous" '
                                               'INTERNAL'))
    in_other = genurlauth_result(await joe.cmd('GENURLAUTH "imap://joe@example.com/Other/;UID=1;URLAUTH=anonymous" '
                                               'INTERNAL'))
    eve = await login(ctx, "eve")

    async def fetchable(url):
        return not (await eve.cmd(f'URLFETCH "{url}"'))[0].endswith(b" NIL")

    assert await fetchable(in_inbox) and await fetchable(in_other)
    # The same rump URL gives the same token while the key lives.
    again = genurlauth_result(await joe.cmd('GENURLAUTH "imap://joe@example.com/INBOX/;UID=1;URLAUTH=anonymous" '
                                            'INTERNAL'))
    assert again == in_inbox
    assert answer(await joe.cmd("RESETKEY INBOX INTERNAL")) == b"OK [URLMECH INTERNAL] Key removed"
    assert not await fetchable(in_inbox) and await fetchable(in_other)
    fresh = genurlauth_result(await joe.cmd('GENURLAUTH "imap://joe@example.com/INBOX/;UID=1;URLAUTH=anonymous" '
                                            'INTERNAL'))
    assert fresh != in_inbox and await fetchable(fresh)
    # A renamed mailbox keeps its key (it belongs to the mailbox, not the name)...
    await joe.cmd("RENAME Other Renamed")
    assert not await fetchable(in_other)                       # the URL names the old name
    renamed = in_other.split(";URLAUTH")[0].replace("/Other/", "/Renamed/") + ";URLAUTH=anonymous"
    token = in_other.rsplit(":", 1)[1]
    assert not await fetchable(renamed + ":internal:" + token)  # the rump changed, so the token did
    assert answer(await joe.cmd("RESETKEY")) == b"OK All keys removed"
    assert not await fetchable(fresh)
    assert answer(await joe.cmd("RESETKEY Nowhere")) == b"NO [NONEXISTENT] Mailbox does not exist"
    assert answer(await joe.cmd("RESETKEY INBOX XSAMPLE")) == b"NO [CANNOT] Unsupported URLAUTH mechanism XSAMPLE"


@pytest_twisted.ensureDeferred
async def test_genurlauth_refusals_and_expiry(ctx, monkeypatch):
    joe = await joe_with_message(ctx)
    cases = [
        ('"imap://fred@example.com/INBOX/;UID=1;URLAUTH=anonymous" INTERNAL',
         b"NO [NOPERM] URLAUTH URLs can only be generated for your own mailboxes"),
        ('"imap://joe@example.com/INBOX/;UID=1;URLAUTH=anonymous" XSAMPLE',
         b"NO [CANNOT] Unsupported URLAUTH mechanism XSAMPLE"),
        ('"imap://joe@example.com/INBOX/;UID=1" INTERNAL',
         b"BAD Expected an absolute rump URL ending in ;URLAUTH=<access>"),
        ('"/INBOX/;UID=1;URLAUTH=anonymous" INTERNAL', b"BAD Invalid rump URL: URLAUTH needs an absolute URL"),
        ('"imap://joe@example.com/INBOX/;UID=1;URLAUTH=anonymous:internal:' + "0" * 32 + '" INTERNAL',
         b"BAD Expected an absolute rump URL ending in ;URLAUTH=<access>"),
        ('"imap://joe@example.com/INBOX/;UID=99;URLAUTH=anonymous" INTERNAL',
         b"NO [NONEXISTENT] The URL names no existing message or part"),
        ('"imap://joe@example.com/INBOX/;UID=1/;SECTION=1.9;URLAUTH=anonymous" INTERNAL',
         b"NO [NONEXISTENT] The URL names no existing message or part"),
        ('"imap://joe@example.com/Nope/;UID=1;URLAUTH=anonymous" INTERNAL',
         b"NO [NONEXISTENT] Mailbox does not exist"),
        ('"imap://joe@example.com/INBOX;UIDVALIDITY=1/;UID=1;URLAUTH=anonymous" INTERNAL',
         b"NO [NONEXISTENT] UIDVALIDITY does not match the mailbox"),
        ('"imap://joe@example.com/INBOX/;UID=1;EXPIRE=2000-01-01T00:00:00Z;URLAUTH=anonymous" INTERNAL',
         b"NO [CANNOT] The expiry time has passed"),
        ('"imap://joe@example.com/INBOX/;UID=1;URLAUTH=friend+x" INTERNAL',
         b"BAD Invalid rump URL: unknown URLAUTH access identifier"),
        ("", b"BAD Missing rump URL"),
    ]
    for i, (args, answer) in enumerate(cases, 1):
        assert await joe.cmd(f"GENURLAUTH {args}".strip()) == [b"t%d " % i + answer], args
    # An expiry in the future works until it passes.
    soon = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 2))
    url = genurlauth_result(await joe.cmd(
        f'GENURLAUTH "imap://joe@example.com/INBOX/;UID=1;EXPIRE={soon};URLAUTH=authuser" INTERNAL'))
    eve = await login(ctx, "eve")
    assert not (await eve.cmd(f'URLFETCH "{url}"'))[0].endswith(b"NIL")
    later = time.time() + 10
    monkeypatch.setattr(urlauth, "now", lambda: later)
    assert (await eve.cmd(f'URLFETCH "{url}"'))[0].endswith(b" NIL")


@pytest_twisted.ensureDeferred
async def test_urlfetch_of_unknown_owner_creates_nothing(ctx, tmp_path):
    eve = await login(ctx, "eve")
    url = "imap://ghost@example.com/INBOX/;UID=1;URLAUTH=anonymous:internal:" + "ab" * 32
    assert (await eve.cmd(f'URLFETCH "{url}"'))[0] == b'* URLFETCH "%s" NIL' % url.encode()
    # Nobody called ghost got storage or a dictionary file.
    import os
    assert not any("ghost" in name for _, dirs, files in os.walk(tmp_path) for name in dirs + files)


def test_url_parsing():
    u = urls.parse("imap://fred%40x@Example.ORG:143/Entw%C3%BCrfe/2024;UIDVALIDITY=42/;UID=7/;SECTION=1.2.MIME"
                   "/;PARTIAL=10.20;EXPIRE=2030-01-01T00:00:00+01:00;URLAUTH=user+joe%2Bx:INTERNAL:" + "a" * 32)
    assert (u.user, u.host, u.mailbox, u.uidvalidity, u.uid, u.section, u.partial) == (
        "fred@x", "example.org", "Entwürfe/2024", 42, 7, "1.2.MIME", (10, 20))
    assert u.expire == 1893452400 and (u.access_kind, u.access_user) == ("user", "joe+x")
    assert u.rump.endswith(";URLAUTH=user+joe%2Bx") and u.token == "a" * 32
    u = urls.parse("/INBOX/;uid=5")
    assert (u.absolute, u.mailbox, u.uid, u.section) == (False, "INBOX", 5, None)
    u = urls.parse(";UID=5/;SECTION=TEXT")
    assert (u.mailbox, u.uid, u.section) == (None, 5, "TEXT")
    for bad in ("http://x/INBOX/;UID=1", "imap://x/INBOX", "imap://x/INBOX/;UID=0", "/;UID=1", "imap://x/;UID=1",
                "imap://x/INBOX?ALL", "/INBOX/;UID=1;EXPIRE=2030-01-01T00:00:00", "/INBOX/;UID=1;URLAUTH=anonymous",
                "imap://x/INBOX/;UID=1;URLAUTH=anonymous:internal:xyz", "imap://x/IN%FFBOX/;UID=1",
                "/INBOX/;UID=1;EXPIRE=2030-01-01T00:00:00Z", "/IN\rBOX/;UID=1", "imap://x/A/;UID=99999999999"):
        with pytest.raises(urls.BadUrl):
            urls.parse(bad)
    key = urls.new_key()
    assert urls.verify(key, "r", urls.token(key, "r")) and not urls.verify(key, "r2", urls.token(key, "r"))
    assert urls.for_response_code('/a]b\r\n"c"') == '/ab"c"'
