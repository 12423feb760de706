"""POP3 transcripts (byte-exact replies) against real rbox storage and a real passwd-file."""

import base64

import pytest
import pytest_twisted
from twisted.internet import defer, reactor, task
from twisted.internet.error import ConnectionDone
from twisted.python.failure import Failure

from mailserver.config import ConfigError
from mailserver.protocols import pop3
from mailserver.protocols.pop3.content import check_uidl_format, dot_stuff, top, uidl
from mailserver.storage.api import SEEN
from mailserver.storage.errors import ErrorKind, StorageError
from tests.unit.protocol_support import Conn, make_ctx

pytestmark = pytest.mark.usefixtures("transcript_backend")   # runs on local and on Ceph

USERS = {"alice": "apw", "bob": "bpw"}
M1 = b"Subject: one\r\n\r\nfirst body\r\n.starts with dot\r\n"
M2 = b"Subject: two\nX: y\n\nbare LF\nno final newline"
M3 = b"Subject: three\r\n\r\n" + b"line\r\n" * 10


async def save(ctx, user, *messages):
    u = await ctx.storage.open_user(user)
    tx = u.begin_save("INBOX")
    for m in messages:
        await tx.add(m)
    result = await tx.commit()
    await u.close()
    return result


async def inbox(ctx, user):
    u = await ctx.storage.open_user(user)
    box = await u.open_mailbox("INBOX")
    await box.refresh()
    infos = box.all_info()
    await box.close()
    await u.close()
    return infos


@pytest.fixture
def ctx(tmp_path):
    async def setup():
        c = await make_ctx(tmp_path, USERS)
        await save(c, "alice", M1, M2, M3)
        return c
    c = pytest_twisted.blockon(defer.Deferred.fromCoroutine(setup()))
    yield c

    async def teardown():       # sessions a test left open end as a dropped connection would
        for proto in list(c.connections):
            proto.connectionLost(Failure(ConnectionDone()))
        for user in USERS:
            await unlocked(c, user)
    pytest_twisted.blockon(defer.Deferred.fromCoroutine(teardown()))


async def unlocked(ctx, user):
    """Wait for a closed session's clean-up (it runs after the connection is gone): until the
    user's POP3 lock can be taken."""
    u = await ctx.storage.open_user(user)
    try:
        for _ in range(500):
            try:
                held = await u.lock("pop3")
            except StorageError as e:
                assert e.kind is ErrorKind.IN_USE
                await task.deferLater(reactor, 0.01, lambda: None)
                continue
            await held.release()
            return
    finally:
        await u.close()
    raise AssertionError(f"{user} still locked")


def connect(ctx):
    c = Conn(pop3.build_factory(ctx))
    assert c.take() == b"+OK POP3 server ready.\r\n"
    return c


async def login(ctx, user="alice", password="apw"):
    c = connect(ctx)
    assert await c.send(f"USER {user}\r\nPASS {password}\r\n".encode()) == b"+OK\r\n+OK Logged in.\r\n"
    return c


@pytest_twisted.ensureDeferred
async def test_session(ctx):
    c = connect(ctx)
    assert await c.send(b"CAPA\r\n") == (b"+OK\r\nCAPA\r\nTOP\r\nUIDL\r\nRESP-CODES\r\nAUTH-RESP-CODE\r\n"
                                         b"PIPELINING\r\nUSER\r\nSASL PLAIN LOGIN\r\nUTF8 USER\r\nIMPLEMENTATION mailserver\r\n.\r\n")
    assert await c.send(b"STAT\r\n") == b"-ERR Command not valid in this state.\r\n"
    assert await c.send(b"PASS x\r\n") == b"-ERR No username given.\r\n"
    assert await c.send(b"USER alice\r\nPASS apw\r\n") == b"+OK\r\n+OK Logged in.\r\n"
    sizes = [len(M1), len(M2) + M2.count(b"\n"), len(M3)]     # CRLF sizes (vsize)
    assert await c.send(b"STAT\r\n") == f"+OK 3 {sum(sizes)}\r\n".encode()
    assert await c.send(b"LIST\r\n") == (f"+OK 3 messages:\r\n1 {sizes[0]}\r\n2 {sizes[1]}\r\n"
                                         f"3 {sizes[2]}\r\n.\r\n").encode()
    assert await c.send(b"LIST 2\r\n") == f"+OK 2 {sizes[1]}\r\n".encode()
    assert await c.send(b"LIST 4\r\n") == b"-ERR There's no message 4.\r\n"
    assert await c.send(b"LIST x\r\n") == b"-ERR Invalid message number.\r\n"
    infos = await inbox(ctx, "alice")
    assert await c.send(b"UIDL\r\n") == ("+OK\r\n" + "".join(f"{n} {i.guid}\r\n" for n, i in enumerate(infos, 1))
                                         + ".\r\n").encode()
    assert await c.send(b"UIDL 1\r\n") == f"+OK 1 {infos[0].guid}\r\n".encode()
    # RETR: dot-stuffed, CRLF, final CRLF added before the terminator
    assert await c.send(b"RETR 1\r\n") == (f"+OK {sizes[0]} octets\r\n".encode()
                                           + b"Subject: one\r\n\r\nfirst body\r\n..starts with dot\r\n.\r\n")
    assert await c.send(b"RETR 2\r\n") == (f"+OK {sizes[1]} octets\r\n".encode()
                                           + b"Subject: two\r\nX: y\r\n\r\nbare LF\r\nno final newline\r\n.\r\n")
    assert await c.send(b"TOP 3 2\r\n") == b"+OK\r\nSubject: three\r\n\r\nline\r\nline\r\n.\r\n"
    assert await c.send(b"TOP 3 0\r\n") == b"+OK\r\nSubject: three\r\n\r\n.\r\n"
    assert await c.send(b"TOP 3\r\n") == b"-ERR Invalid arguments: TOP <message> <lines>.\r\n"
    assert await c.send(b"DELE 1\r\nDELE 1\r\nRETR 1\r\nLIST 1\r\nSTAT\r\n") == (
        b"+OK Marked to be deleted.\r\n-ERR Message is deleted.\r\n-ERR Message is deleted.\r\n"
        b"-ERR Message is deleted.\r\n" + f"+OK 2 {sizes[1] + sizes[2]}\r\n".encode())
    assert await c.send(b"RSET\r\n") == b"+OK\r\n"
    # RSET also forgets what was retrieved (as Dovecot); retrieve 2 again so it gets \Seen
    assert (await c.send(b"RETR 2\r\n")).startswith(b"+OK")
    assert await c.send(b"DELE 3\r\nNOOP\r\nUSER x\r\n") == (
        b"+OK Marked to be deleted.\r\n+OK\r\n-ERR Command not valid in this state.\r\n")
    assert (await c.send(b"CAPA\r\n")).find(b"USER") < 0
    assert await c.send(b"QUIT\r\n") == b"+OK Logging out, messages deleted.\r\n"
    assert c.transport.disconnecting
    await c.settle()
    after = await inbox(ctx, "alice")
    assert [i.uid for i in after] == [infos[0].uid, infos[1].uid]   # only 3 expunged, RSET undid 1
    assert SEEN in after[1].flags and SEEN not in after[0].flags   # RETR 1 was undone by RSET


@pytest_twisted.ensureDeferred
async def test_uidl_stable_and_expunge_at_quit_only(ctx):
    c = await login(ctx)
    first = await c.send(b"UIDL\r\nDELE 2\r\n")
    c.proto.connectionLost(Failure(ConnectionDone()))      # no QUIT: no UPDATE state
    await c.settle()
    await unlocked(ctx, "alice")
    c = await login(ctx)
    again = await c.send(b"UIDL\r\n")
    assert again + b"+OK Marked to be deleted.\r\n" == first
    assert len(await inbox(ctx, "alice")) == 3
    await c.send(b"DELE 2\r\nQUIT\r\n")
    c = await login(ctx)
    lines = (await c.send(b"UIDL\r\n")).split(b"\r\n")
    old = first.split(b"\r\n")
    assert lines[1:3] == [old[1], b"2 " + old[3].split(b" ")[1]]


@pytest_twisted.ensureDeferred
async def test_seen_only_at_quit(ctx):
    # As Dovecot 2.3: a client leaving without QUIT changes no flags; TOP never sets \Seen.
    c = await login(ctx)
    await c.send(b"RETR 3\r\nTOP 1 1\r\n")
    c.proto.connectionLost(Failure(ConnectionDone()))
    await unlocked(ctx, "alice")
    assert [SEEN in i.flags for i in await inbox(ctx, "alice")] == [False, False, False]
    c = await login(ctx)
    await c.send(b"RETR 3\r\nTOP 1 1\r\nQUIT\r\n")
    await unlocked(ctx, "alice")
    assert [SEEN in i.flags for i in await inbox(ctx, "alice")] == [False, False, True]


@pytest_twisted.ensureDeferred
async def test_wrong_password_and_failure_limit(ctx):
    c = connect(ctx)
    assert await c.send(b"USER alice\r\nPASS nope\r\n") == b"+OK\r\n-ERR [AUTH] Authentication failed.\r\n"
    assert await c.send(b"USER ghost\r\nPASS apw\r\n") == b"+OK\r\n-ERR [AUTH] Authentication failed.\r\n"
    assert not c.transport.disconnecting
    assert await c.send(b"USER alice\r\nPASS nope2\r\nNOOP\r\n") == b"+OK\r\n-ERR [AUTH] Authentication failed.\r\n"
    assert c.transport.disconnecting


@pytest_twisted.ensureDeferred
async def test_auth_plain(ctx):
    c = connect(ctx)
    good = base64.b64encode(b"\0alice\0apw")
    assert await c.send(b"AUTH\r\n") == b"+OK\r\nPLAIN\r\nLOGIN\r\n.\r\n"
    assert await c.send(b"AUTH CRAM-MD5\r\n") == b"-ERR [AUTH] Unsupported authentication mechanism.\r\n"
    assert await c.send(b"AUTH PLAIN\r\n") == b"+ \r\n"
    assert await c.send(b"*\r\n") == b"-ERR Authentication aborted by client.\r\n"
    assert await c.send(b"AUTH PLAIN !!!\r\n") == b"-ERR [AUTH] Invalid base64 data.\r\n"
    assert await c.send(b"AUTH PLAIN " + base64.b64encode(b"\0alice\0bad") + b"\r\n") == (
        b"-ERR [AUTH] Authentication failed.\r\n")
    assert await c.send(b"AUTH PLAIN\r\n" + good + b"\r\nSTAT\r\n") == (
        b"+ \r\n+OK Logged in.\r\n+OK 3 " + str(sum(i.vsize for i in await inbox(ctx, "alice"))).encode() + b"\r\n")
    c2 = connect(ctx)
    assert await c2.send(b"AUTH PLAIN " + good + b"\r\n") == (
        b"-ERR [IN-USE] Mailbox is locked by another POP3 session.\r\n")
    await c.send(b"QUIT\r\n")
    assert await c2.send(b"AUTH PLAIN " + good + b"\r\n") == b"+OK Logged in.\r\n"
    await c2.send(b"QUIT\r\n")


@pytest_twisted.ensureDeferred
async def test_big_message_streams_with_dot_stuffing_at_every_boundary(ctx):
    # lines starting with '.' placed so some fall exactly on 64 KiB chunk boundaries
    body = bytearray(b"Subject: big\r\n\r\n")
    while len(body) < 600 * 1024:
        body += b"." + b"x" * (65536 - 3 - len(body) % 65536 if len(body) % 65536 < 65000 else 10) + b"\r\n"
    await save(ctx, "bob", bytes(body))
    c = await login(ctx, "bob", "bpw")
    c.proto.dataReceived(b"RETR 1\r\nNOOP\r\n")
    assert c.transport.producer is not None           # streamed through the producer
    await c.settle()
    out = c.take()
    head, _, rest = out.partition(b"\r\n")
    assert head == f"+OK {len(body)} octets".encode()
    assert rest == bytes(body).replace(b"\r\n.", b"\r\n..") + b".\r\n+OK\r\n"


@pytest_twisted.ensureDeferred
async def test_storage_errors(ctx):
    class FailingStorage:
        def __init__(self, kind):
            self.kind = kind

        async def open_user(self, name):
            raise StorageError(self.kind, "injected")
    real = ctx.storage
    ctx.storage = FailingStorage(ErrorKind.TEMPORARY)
    c = connect(ctx)
    assert await c.send(b"USER alice\r\nPASS apw\r\n") == (
        b"+OK\r\n-ERR [SYS/TEMP] Temporary storage failure, try again later.\r\n")
    ctx.storage = FailingStorage(ErrorKind.CORRUPTED)
    assert await c.send(b"USER alice\r\nPASS apw\r\n") == b"+OK\r\n-ERR [SYS/PERM] Storage failure.\r\n"
    ctx.storage = real
    assert await c.send(b"USER alice\r\nPASS apw\r\n") == b"+OK\r\n+OK Logged in.\r\n"   # lock was released
    await c.send(b"QUIT\r\n")


@pytest_twisted.ensureDeferred
async def test_bounds(ctx):
    c = connect(ctx)
    assert await c.send(b"X" * 2000 + b"\r\nNOOP\r\n") == b"-ERR Input line too long.\r\n+OK\r\n"
    assert await c.send(b"FOO\r\n") == b"-ERR Unknown command.\r\n"
    c.clock.advance(601)
    assert c.take() == b"-ERR Disconnected for inactivity.\r\n"
    assert c.transport.disconnecting
    c = connect(ctx)
    out = await c.send(b"BAD\r\n" * 25)
    assert out.endswith(b"-ERR Too many bad commands.\r\n") and out.count(b"\r\n") == 21
    assert c.transport.disconnecting


@pytest_twisted.ensureDeferred
async def test_uidl_format_from_config(tmp_path):
    ctx = await make_ctx(tmp_path, USERS, pop3={"uidl_format": "%08Xu%08Xv"})
    result = await save(ctx, "alice", M1)
    c = await login(ctx)
    assert await c.send(b"UIDL 1\r\n") == f"+OK 1 {result.uids[0]:08X}{result.uidvalidity:08X}\r\n".encode()
    await c.send(b"QUIT\r\n")
    (tmp_path / "x").mkdir()
    ctx2 = await make_ctx(tmp_path / "x", USERS, pop3={"uidl_format": "%z"})
    with pytest.raises(ConfigError):
        pop3.build_factory(ctx2)


def test_content_helpers():
    assert dot_stuff(b"") == b".\r\n"
    assert dot_stuff(b".a\n..b\r\nc") == b"..a\r\n...b\r\nc\r\n.\r\n"
    assert top(b"H: 1\r\n\r\nl1\r\nl2\r\n", 1) == b"H: 1\r\n\r\nl1\r\n"
    assert top(b"H: 1\r\n\r\nl1", 5) == b"H: 1\r\n\r\nl1"
    assert top(b"H: 1\r\nH: 2", 5) == b"H: 1\r\nH: 2"
    assert top(b"\r\nbody\r\n", 0) == b"\r\n"
    assert uidl("%u.%v-%g%%", 7, 9, "ab") == "7.9-ab%"
    assert uidl("%08Xu%08Xv", 255, 1, "") == "000000FF00000001"
    assert check_uidl_format("%g") is None and check_uidl_format("%08Xu%08Xv") is None
    assert check_uidl_format("%v") and check_uidl_format("%q") and check_uidl_format("%80u")


@pytest_twisted.ensureDeferred
async def test_stalled_reader_times_out(ctx):
    await save(ctx, "bob", b"Subject: big\r\n\r\n" + b"z" * 1000000 + b"\r\n")
    c = await login(ctx, "bob", "bpw")
    c.proto.dataReceived(b"RETR 1\r\n")
    for _ in range(100):                      # wait for the body read; the client never reads
        if c.transport.producer is not None:
            break
        await task.deferLater(reactor, 0.01, lambda: None)
    assert c.transport.producer is not None and c.proto._busy
    c.clock.advance(700)
    assert c.transport.disconnected            # aborted: a graceful close would wait for the reader
