"""LMTP transcripts (byte-exact replies) against real rbox storage and a real passwd-file."""

import re

import pytest
import pytest_twisted
from twisted.internet import defer
from twisted.internet.error import ConnectionDone
from twisted.python.failure import Failure

from mailserver.protocols import lmtp
from mailserver.protocols.lmtp.message import DataReader, PathError, parse_path, recipient_username
from mailserver.storage.api import FetchItem
from mailserver.storage.errors import ErrorKind, StorageError
from tests.unit.protocol_support import Conn, make_ctx

pytestmark = pytest.mark.usefixtures("transcript_backend")   # runs on local and on Ceph

USERS = {"alice@example.org": "a", "bob@example.org": "b", "carol": "c"}


async def inbox(ctx, user):
    u = await ctx.storage.open_user(user)
    box = await u.open_mailbox("INBOX")
    await box.refresh()
    mails = [m async for m in box.fetch(list(box.uids()), {FetchItem.DATA})]
    infos = box.all_info()
    await box.close()
    await u.close()
    return [m.data for m in mails], infos


@pytest.fixture
def ctx(tmp_path):
    return pytest_twisted.blockon(defer.Deferred.fromCoroutine(make_ctx(tmp_path, USERS)))


@pytest.fixture
def conn(ctx):
    c = Conn(lmtp.build_factory(ctx))
    assert c.take() == b"220 mx.test LMTP ready\r\n"
    return c


LHLO_REPLY = (b"250-mx.test\r\n250-8BITMIME\r\n250-BINARYMIME\r\n250-CHUNKING\r\n250-ENHANCEDSTATUSCODES\r\n"
              b"250-PIPELINING\r\n250-SIZE 52428800\r\n250 SMTPUTF8\r\n")


@pytest_twisted.ensureDeferred
async def test_pipelined_delivery_one_reply_per_recipient(conn, ctx):
    out = await conn.send(
        b"LHLO mta.example\r\nMAIL FROM:<sender@ext.example> SIZE=100 BODY=8BITMIME\r\n"
        b"RCPT TO:<alice@example.org>\r\nRCPT TO:<nobody@example.org>\r\nRCPT TO:<Bob+lists@Example.org>\r\n"
        b"DATA\r\nSubject: hi\r\n\r\nline 1\r\n..dot line\r\n.\r\nQUIT\r\n")
    session = conn.proto.session
    assert out == (LHLO_REPLY + b"250 2.1.0 OK\r\n250 2.1.5 OK\r\n"
                   b"550 5.1.1 <nobody@example.org> User doesn't exist: nobody@example.org\r\n"
                   b"250 2.1.5 OK\r\n354 OK\r\n"
                   b"250 2.0.0 <alice@example.org> " + session.encode() + b" Saved\r\n"
                   b"250 2.0.0 <Bob+lists@Example.org> " + session.encode() + b" Saved\r\n"
                   b"221 2.0.0 mx.test Bye\r\n")
    assert conn.transport.disconnecting
    for user in ("alice@example.org", "bob@example.org"):
        (data,), (info,) = await inbox(ctx, user)
        assert data.startswith(b"Return-Path: <sender@ext.example>\r\nReceived: from mta.example ([192.0.2.7])\r\n"
                               b"\tby mx.test with LMTP\r\n\tid " + session.encode() + b"\r\n"
                               b"\t(envelope-from <sender@ext.example>); ")
        assert b"Delivered-To" not in data          # several recipients share one copy (as Dovecot)
        assert data.endswith(b"\r\nSubject: hi\r\n\r\nline 1\r\n.dot line\r\n")
        assert info.vsize == len(data)


@pytest_twisted.ensureDeferred
async def test_single_recipient_gets_delivered_to(conn, ctx):
    out = await conn.send(b"LHLO x\r\nMAIL FROM:<>\r\nRCPT TO:<carol>\r\nDATA\r\n")
    assert out.endswith(b"354 OK\r\n")
    # bare LF line endings, end marker "\n.\n", a lone dot-stuffed dot line
    out = await conn.send(b"Subject: lf\n\nbody\n..\n.\n")
    assert out.startswith(b"250 2.0.0 <carol> ")
    (data,), _ = await inbox(ctx, "carol")
    assert data.startswith(b"Return-Path: <>\r\nDelivered-To: carol\r\nReceived: from x ([192.0.2.7])\r\n")
    assert b"\tfor <carol>; " in data
    assert data.endswith(b"\r\nSubject: lf\r\n\r\nbody\r\n.\r\n")


@pytest_twisted.ensureDeferred
async def test_end_marker_split_across_packets(conn, ctx):
    await conn.send(b"LHLO x\r\nMAIL FROM:<a@b>\r\nRCPT TO:<carol>\r\nDATA\r\n")
    body = b"Subject: split\r\n\r\n" + (b"x" * 68 + b"\r\n") * 1000 + b".leading\r\n"
    stream = body.replace(b"\r\n.", b"\r\n..") + b".\r\nNOOP\r\n"
    out = b""
    for i in range(0, len(stream), 7):           # the marker straddles packet boundaries
        conn.proto.dataReceived(stream[i:i + 7])
    await conn.settle()
    out = conn.take()
    assert re.fullmatch(rb"250 2\.0\.0 <carol> \S+ Saved\r\n250 2\.0\.0 OK\r\n", out)
    (data,), _ = await inbox(ctx, "carol")
    assert data.endswith(body)


@pytest_twisted.ensureDeferred
async def test_empty_message(conn, ctx):
    out = await conn.send(b"LHLO x\r\nMAIL FROM:<a@b>\r\nRCPT TO:<carol>\r\nDATA\r\n.\r\n")
    assert out.endswith(b" Saved\r\n")
    (data,), _ = await inbox(ctx, "carol")
    assert data.startswith(b"Return-Path: <a@b>\r\n") and data.endswith(b"\r\n")


@pytest_twisted.ensureDeferred
async def test_sequence_and_syntax_errors(conn):
    assert await conn.send(b"MAIL FROM:<a@b>\r\n") == b"503 5.5.1 Send LHLO first\r\n"
    assert await conn.send(b"LHLO\r\n") == b"501 5.5.4 Invalid LHLO parameter\r\n"
    await conn.send(b"LHLO x\r\n")
    assert await conn.send(b"RCPT TO:<carol>\r\n") == b"503 5.5.1 MAIL needed first\r\n"
    assert await conn.send(b"DATA\r\n") == b"503 5.5.1 MAIL needed first\r\n"
    assert await conn.send(b"MAIL FROM:a@b\r\n") == b"501 5.5.4 Invalid FROM: path must be enclosed in <>\r\n"
    assert await conn.send(b"MAIL TO:<a@b>\r\n") == b"501 5.5.4 Syntax: MAIL FROM:<address> [parameters]\r\n"
    assert await conn.send(b"MAIL FROM:<a@b> SIZE=999999999\r\n") == (
        b"552 5.3.4 Message size exceeds fixed maximum message size\r\n")
    assert await conn.send(b"MAIL FROM:<a@b> SIZE=x\r\n") == b"501 5.5.4 Invalid SIZE parameter\r\n"
    assert await conn.send(b"MAIL FROM:<a@b> BODY=7BITX\r\n") == b"501 5.5.4 Unsupported BODY parameter\r\n"
    assert await conn.send(b"MAIL FROM:<a@b> SMTPUTF8=yes\r\n") == b"501 5.5.4 SMTPUTF8 takes no value\r\n"
    assert await conn.send("MAIL FROM:<jörg@b>\r\n".encode()) == (
        b"553 5.6.7 Non-ASCII address needs the SMTPUTF8 parameter\r\n")
    assert await conn.send(b"MAIL FROM:<a@b> AUTH=<>\r\n") == b"555 5.5.4 Unsupported parameter AUTH\r\n"
    assert await conn.send(b"MAIL FROM: <a@b>\r\n") == b"250 2.1.0 OK\r\n"
    assert await conn.send(b"MAIL FROM:<a@b>\r\n") == b"503 5.5.1 MAIL already given\r\n"
    assert await conn.send(b"DATA\r\n") == b"503 5.5.1 No valid recipients\r\n"
    assert await conn.send(b"RCPT TO:<>\r\n") == b"501 5.5.4 Invalid TO: null path not allowed here\r\n"
    assert await conn.send(b"RCPT TO:<carol> NOTIFY=NEVER\r\n") == b"555 5.5.4 Unsupported parameter NOTIFY\r\n"
    assert await conn.send(b"EHLO x\r\n") == b"500 5.5.1 Unknown command\r\n"
    assert await conn.send(b"\r\n") == b"500 5.5.1 Unknown command\r\n"
    assert await conn.send(b"VRFY carol\r\n") == b"252 2.3.3 Try RCPT instead\r\n"
    assert (await conn.send(b"HELP\r\n")).startswith(b"214 2.0.0 ")
    assert await conn.send(b"NOOP\r\n") == b"250 2.0.0 OK\r\n"
    assert await conn.send(b"RSET\r\n") == b"250 2.0.0 OK\r\n"
    assert await conn.send(b"RCPT TO:<carol>\r\n") == b"503 5.5.1 MAIL needed first\r\n"
    assert await conn.send(b"MAIL FROM:<\xff>\r\n") == b"501 5.5.4 Command is not valid UTF-8\r\n"


@pytest_twisted.ensureDeferred
async def test_line_too_long_keeps_connection_usable(conn):
    await conn.send(b"LHLO x\r\n")
    long = b"MAIL FROM:<" + b"a" * 5000 + b"@b>\r\n"
    assert await conn.send(long[:4500]) == b"500 5.5.2 Line too long\r\n"
    assert await conn.send(long[4500:] + b"NOOP\r\n") == b"250 2.0.0 OK\r\n"
    # a long line arriving whole
    assert await conn.send(long + b"NOOP\r\n") == b"500 5.5.2 Line too long\r\n250 2.0.0 OK\r\n"


@pytest_twisted.ensureDeferred
async def test_message_too_big(tmp_path):
    ctx = await make_ctx(tmp_path, USERS, lmtp={"max_message_size": 1000})
    conn = Conn(lmtp.build_factory(ctx))
    conn.take()
    await conn.send(b"LHLO x\r\nMAIL FROM:<a@b>\r\nRCPT TO:<carol>\r\nRCPT TO:<alice@example.org>\r\nDATA\r\n")
    out = await conn.send(b"Subject: big\r\n\r\n" + b"y" * 5000 + b"\r\n.\r\nNOOP\r\n")
    assert out == (b"552 5.3.4 <carol> Message too big for system\r\n"
                   b"552 5.3.4 <alice@example.org> Message too big for system\r\n250 2.0.0 OK\r\n")
    # just over the limit after unstuffing, in many small packets
    await conn.send(b"MAIL FROM:<a@b>\r\nRCPT TO:<carol>\r\nDATA\r\n")
    for _ in range(200):
        conn.proto.dataReceived(b"0123456789\r\n")
    out = await conn.send(b".\r\n")
    assert out == b"552 5.3.4 <carol> Message too big for system\r\n"
    assert (await inbox(ctx, "carol"))[0] == []


@pytest_twisted.ensureDeferred
async def test_too_many_recipients(tmp_path):
    ctx = await make_ctx(tmp_path, USERS, lmtp={"max_recipients": 2})
    conn = Conn(lmtp.build_factory(ctx))
    conn.take()
    out = await conn.send(b"LHLO x\r\nMAIL FROM:<a@b>\r\nRCPT TO:<carol>\r\nRCPT TO:<carol+x>\r\n"
                          b"RCPT TO:<alice@example.org>\r\n")
    assert out.endswith(b"250 2.1.5 OK\r\n250 2.1.5 OK\r\n452 4.5.3 Too many recipients\r\n")


@pytest_twisted.ensureDeferred
async def test_idle_timeout(conn):
    await conn.send(b"LHLO x\r\n")
    conn.clock.advance(299)
    assert conn.take() == b""
    conn.clock.advance(2)
    assert conn.take() == b"421 4.4.2 mx.test Disconnected for inactivity\r\n"
    assert conn.transport.disconnecting


@pytest_twisted.ensureDeferred
async def test_passdb_unavailable(conn, ctx, tmp_path):
    (tmp_path / "passwd").unlink()
    ctx.auth.passdb._checked_at = float("-inf")     # the next lookup looks at the file again
    out = await conn.send(b"LHLO x\r\nMAIL FROM:<a@b>\r\nRCPT TO:<carol>\r\n")
    assert out.endswith(b"451 4.3.0 <carol> Temporary internal error\r\n")


class FailingStorage:
    """The real storage, except that saving for some users fails with a given kind."""

    def __init__(self, storage, failures):
        self.storage = storage
        self.failures = failures

    async def open_user(self, name):
        if name in self.failures:
            raise StorageError(self.failures[name], f"injected for {name}")
        return await self.storage.open_user(name)


@pytest_twisted.ensureDeferred
async def test_storage_failure_fails_only_that_recipient(conn, ctx):
    ctx.storage = FailingStorage(ctx.storage, {"alice@example.org": ErrorKind.OVER_QUOTA,
                                               "bob@example.org": ErrorKind.TEMPORARY})
    out = await conn.send(b"LHLO x\r\nMAIL FROM:<a@b>\r\nRCPT TO:<alice@example.org>\r\nRCPT TO:<carol>\r\n"
                          b"RCPT TO:<bob@example.org>\r\nDATA\r\nSubject: x\r\n\r\nx\r\n.\r\n")
    replies = out.split(b"\r\n")[-4:-1]
    assert replies[0] == b"552 5.2.2 <alice@example.org> Quota exceeded (mailbox for user is full)"
    assert replies[1].startswith(b"250 2.0.0 <carol> ")
    assert replies[2] == b"451 4.3.0 <bob@example.org> Temporary internal error"
    ctx.storage = ctx.storage.storage
    assert len((await inbox(ctx, "carol"))[0]) == 1


@pytest_twisted.ensureDeferred
async def test_disconnect_mid_data_delivers_nothing(conn, ctx):
    await conn.send(b"LHLO x\r\nMAIL FROM:<a@b>\r\nRCPT TO:<carol>\r\nDATA\r\nSubject: cut\r\n\r\nhalf")
    conn.proto.connectionLost(Failure(ConnectionDone()))
    assert conn.proto not in ctx.connections
    assert (await inbox(ctx, "carol"))[0] == []


def test_parse_path():
    assert parse_path("<a@b> SIZE=10 body=8bitmime", True) == ("a@b", {"SIZE": "10", "BODY": "8bitmime"})
    assert parse_path("<>", True) == ("", {})
    assert parse_path("<@relay,@r2:u@d>", False) == ("u@d", {})
    assert parse_path('<"john doe"@x>', False) == ('"john doe"@x', {})
    assert parse_path("  <postmaster>", False) == ("postmaster", {})
    for bad in ("a@b", "<a@b", "<a b@c>", "<a@b>junk", "<@x>", "<a@>", '<"a@b>', "<a@b> =x"):
        with pytest.raises(PathError):
            parse_path(bad, False)


def test_recipient_username():
    assert recipient_username("user+detail@Example.org", "+") == ("user@Example.org", "detail")
    assert recipient_username("user-x+y@d", "+-") == ("user@d", "x+y")
    assert recipient_username("+x@d", "+") == ("+x@d", "")
    assert recipient_username('"a+b"@d', "") == ("a+b@d", "")
    assert recipient_username("plain", "+") == ("plain", "")


def test_data_reader_unstuffs_and_normalises():
    r = DataReader(10000)
    buf = bytearray(b"..a\r\nb\nc\r\r\n")
    assert r.feed(buf) is None and buf == b""
    assert r.feed(bytearray(b".\r\nRSET\r\n")) == b"RSET\r\n"
    assert r.message() == b".a\r\nb\r\nc\r\r\n"


@pytest_twisted.ensureDeferred
async def test_server_stopping(conn, ctx):
    await conn.send(b"LHLO x\r\n")
    ctx.stopping = True
    assert await conn.send(b"MAIL FROM:<a@b>\r\n") == b"421 4.3.2 mx.test Server shutting down\r\n"
    assert conn.transport.disconnecting
    late = Conn(lmtp.build_factory(ctx))
    assert late.take() == b"421 4.3.2 mx.test Server shutting down\r\n"


@pytest_twisted.ensureDeferred
async def test_replies_to_a_pipelined_batch_leave_in_one_write(conn, ctx):
    """MAIL, RCPT and DATA sent together (as Postfix pipelines them) are answered in one write,
    not one system call each; the replies after the data too, when they are ready together."""
    writes = []
    real_write = conn.transport.write
    conn.transport.write = lambda data: (writes.append(data), real_write(data))
    await conn.send(b"LHLO mta.example\r\n")
    writes.clear()
    out = await conn.send(b"MAIL FROM:<s@ext.example>\r\nRCPT TO:<alice@example.org>\r\n"
                          b"RCPT TO:<bob@example.org>\r\nDATA\r\n")
    assert out == b"250 2.1.0 OK\r\n250 2.1.5 OK\r\n250 2.1.5 OK\r\n354 OK\r\n"
    assert writes == [out]
    writes.clear()
    out = await conn.send(b"Subject: batch\r\n\r\nbody\r\n.\r\n")
    assert out.count(b" Saved\r\n") == 2 and len(writes) <= 2       # one per save at most
    writes.clear()
    await conn.send(b"STARTTLS\r\nNOOP\r\n")     # no TLS here: answered like any command
    assert len(writes) == 1
