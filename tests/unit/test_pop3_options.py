"""POP3 beyond the basics (byte-exact transcripts, real rbox storage): RFC 6856 UTF8, the
Dovecot-style delete modes, UIDLs recorded at migration, the lock across storage instances,
and a fully pipelined session."""

import uuid

import pytest_twisted
from twisted.internet.error import ConnectionDone
from twisted.python.failure import Failure

from mailserver.protocols import pop3
from mailserver.storage import drivers
from mailserver.storage.api import DELETED, SEEN
from mailserver.storage.errors import ErrorKind, StorageError
from tests.unit.protocol_support import Conn, make_ctx
from tests.unit.test_pop3 import unlocked
import pytest

pytestmark = pytest.mark.usefixtures("transcript_backend")   # runs on local and on Ceph

USERS = {"alice": "apw", "jörg@exämple.org": "pässword"}
M1 = b"Subject: one\r\n\r\nfirst\r\n"
M2 = b"Subject: two\r\n\r\nsecond\r\n"
M3 = b"Subject: three\r\n\r\nthird\r\n"


async def setup(tmp_path, user="alice", messages=(M1, M2, M3), **pop3_options):
    ctx = await make_ctx(tmp_path, USERS, pop3=pop3_options, auth={"username_chars": ""})
    u = await ctx.storage.open_user(user)
    tx = u.begin_save("INBOX")
    for m in messages:
        await tx.add(m)
    await tx.commit()
    await u.close()
    return ctx


async def mailbox(ctx, user, name="INBOX"):
    u = await ctx.storage.open_user(user)
    box = await u.open_mailbox(name)
    infos = box.all_info()
    await box.close()
    await u.close()
    return infos


async def login(ctx, user="alice", password="apw"):
    c = Conn(pop3.build_factory(ctx))
    assert c.take() == b"+OK POP3 server ready.\r\n"
    assert await c.send(f"USER {user}\r\nPASS {password}\r\n".encode()) == b"+OK\r\n+OK Logged in.\r\n"
    return c


@pytest_twisted.ensureDeferred
async def test_utf8_command_and_utf8_login(tmp_path):
    ctx = await setup(tmp_path, user="jörg@exämple.org",
                      messages=["Subject: Grüße\r\nFrom: jörg@exämple.org\r\n\r\nMüller\r\n".encode()])
    c = Conn(pop3.build_factory(ctx))
    c.take()
    assert b"\r\nUTF8 USER\r\n" in await c.send(b"CAPA\r\n")
    assert await c.send(b"UTF8 x\r\n") == b"-ERR UTF8 takes no arguments.\r\n"
    assert await c.send(b"UTF8\r\n") == b"+OK UTF8 enabled.\r\n"
    assert await c.send("USER jörg@exämple.org\r\nPASS pässword\r\n".encode()) == b"+OK\r\n+OK Logged in.\r\n"
    assert await c.send(b"UTF8\r\n") == b"-ERR Command not valid in this state.\r\n"
    assert b"UTF8" not in await c.send(b"CAPA\r\n")
    # the message goes out as stored: never downgraded
    out = await c.send(b"RETR 1\r\n")
    assert out.endswith("Subject: Grüße\r\nFrom: jörg@exämple.org\r\n\r\nMüller\r\n.\r\n".encode())
    await c.send(b"QUIT\r\n")


@pytest_twisted.ensureDeferred
async def test_pipelined_session_in_one_packet(tmp_path):
    ctx = await setup(tmp_path)
    c = Conn(pop3.build_factory(ctx))
    c.take()
    out = await c.send(b"CAPA\r\nUSER alice\r\nPASS apw\r\nSTAT\r\nLIST 2\r\nTOP 1 0\r\nRETR 2\r\nDELE 1\r\n"
                       b"UIDL 1\r\nNOOP\r\nQUIT\r\n")
    infos = await mailbox(ctx, "alice")
    assert out.split(b".\r\n", 1)[1] == (
        b"+OK\r\n+OK Logged in.\r\n"
        b"+OK 3 " + str(len(M1 + M2 + M3)).encode() + b"\r\n"
        b"+OK 2 " + str(len(M2)).encode() + b"\r\n"
        b"+OK\r\nSubject: one\r\n\r\n.\r\n"
        b"+OK " + str(len(M2)).encode() + b" octets\r\n" + M2 + b".\r\n"
        b"+OK Marked to be deleted.\r\n"
        b"-ERR Message is deleted.\r\n"
        b"+OK\r\n"
        b"+OK Logging out, messages deleted.\r\n")
    assert [SEEN in i.flags for i in infos] == [True, False]      # 1 expunged, 2 retrieved


@pytest_twisted.ensureDeferred
async def test_delete_mode_move_creates_the_mailbox(tmp_path):
    ctx = await setup(tmp_path, delete_mode="move", delete_mailbox="Deleted Messages")
    c = await login(ctx)
    await c.send(b"RETR 1\r\nDELE 1\r\nDELE 3\r\nQUIT\r\n")
    await unlocked(ctx, "alice")
    assert [i.uid for i in await mailbox(ctx, "alice")] == [2]
    moved = await mailbox(ctx, "alice", "Deleted Messages")
    assert len(moved) == 2
    assert SEEN in moved[0].flags and SEEN not in moved[1].flags     # RETR 1 was read
    assert all(DELETED not in i.flags for i in moved)
    c = await login(ctx)                                            # the mailbox exists now
    await c.send(b"DELE 1\r\nQUIT\r\n")
    await unlocked(ctx, "alice")
    assert len(await mailbox(ctx, "alice", "Deleted Messages")) == 3


@pytest_twisted.ensureDeferred
async def test_delete_mode_seen_keeps_mail(tmp_path):
    ctx = await setup(tmp_path, delete_mode="seen")
    c = await login(ctx)
    assert await c.send(b"DELE 2\r\nSTAT\r\nQUIT\r\n") == (
        b"+OK Marked to be deleted.\r\n+OK 2 " + str(len(M1 + M3)).encode() + b"\r\n"
        b"+OK Logging out, messages deleted.\r\n")
    await unlocked(ctx, "alice")
    infos = await mailbox(ctx, "alice")
    assert [SEEN in i.flags for i in infos] == [False, True, False]
    c = await login(ctx)                       # POP3 still lists it (the client skips it by UIDL)
    assert (await c.send(b"STAT\r\n")).startswith(b"+OK 3 ")
    await c.send(b"QUIT\r\n")


@pytest_twisted.ensureDeferred
async def test_delete_mode_hide_is_a_pop3_only_view(tmp_path):
    ctx = await setup(tmp_path, delete_mode="hide")
    c = await login(ctx)
    first = await c.send(b"UIDL\r\n")
    await c.send(b"DELE 1\r\nQUIT\r\n")
    await unlocked(ctx, "alice")
    infos = await mailbox(ctx, "alice")
    assert len(infos) == 3 and "$POP3Deleted" in infos[0].flags       # IMAP still has it
    assert DELETED not in infos[0].flags
    c = await login(ctx)
    assert await c.send(b"STAT\r\n") == b"+OK 2 " + str(len(M2 + M3)).encode() + b"\r\n"
    again = await c.send(b"UIDL\r\n")
    old = first.split(b"\r\n")
    # the others keep their UIDLs and are renumbered
    assert again.split(b"\r\n")[1:3] == [b"1 " + old[2].split()[1], b"2 " + old[3].split()[1]]
    await c.send(b"QUIT\r\n")


@pytest_twisted.ensureDeferred
async def test_no_flag_updates(tmp_path):
    ctx = await setup(tmp_path, no_flag_updates=True)
    c = await login(ctx)
    await c.send(b"RETR 1\r\nRETR 2\r\nQUIT\r\n")
    await unlocked(ctx, "alice")
    assert [SEEN in i.flags for i in await mailbox(ctx, "alice")] == [False, False, False]


@pytest_twisted.ensureDeferred
async def test_uidl_recorded_at_migration_wins(tmp_path):
    ctx = await setup(tmp_path, messages=[M1], uidl_format="%u-%v")
    st = ctx.storage
    user = await st.open_user("alice")
    inbox_guid = (await user.list_mailboxes())[0].guid
    for n, recorded in enumerate(("0000a1b2c3", "has space", None)):
        body = b"Subject: migrated %d\r\n\r\nx\r\n" % n
        meta = {drivers.META_MAILBOX_GUID: inbox_guid, drivers.META_GUID: uuid.uuid4().hex,
                drivers.META_RECEIVED: str(1700000000 + n), drivers.META_SAVE_DATE: "1700000000",
                drivers.META_PHYSICAL_SIZE: str(len(body)), drivers.META_VIRTUAL_SIZE: str(len(body)),
                drivers.META_ORIG_MAILBOX: "INBOX", drivers.META_VERSION: drivers.OBJECT_FORMAT_VERSION}
        if recorded:
            meta[drivers.META_POP3_UIDL] = recorded
        await st.objects.put(user.namespace, uuid.uuid4().hex, body, meta)
    await user.close()
    await st.admin().force_resync(st, "alice")
    infos = await mailbox(ctx, "alice")
    v = (await (await st.open_user("alice")).status("INBOX")).uidvalidity
    c = await login(ctx)
    # a recorded UIDL wins; one that is not a valid UIDL (a space) falls back to the format
    assert await c.send(b"UIDL\r\n") == (
        f"+OK\r\n1 {infos[0].uid}-{v}\r\n2 0000a1b2c3\r\n3 {infos[2].uid}-{v}\r\n4 {infos[3].uid}-{v}\r\n.\r\n"
    ).encode()
    assert await c.send(b"UIDL 2\r\n") == b"+OK 2 0000a1b2c3\r\n"
    await c.send(b"QUIT\r\n")


@pytest_twisted.ensureDeferred
async def test_lock_holds_across_storage_instances(tmp_path):
    ctx = await setup(tmp_path)
    other = await make_ctx(tmp_path, USERS)     # a second storage over the same files: another "server"
    c = await login(ctx)
    c2 = Conn(pop3.build_factory(other))
    c2.take()
    assert await c2.send(b"USER alice\r\nPASS apw\r\n") == (
        b"+OK\r\n-ERR [IN-USE] Mailbox is locked by another POP3 session.\r\n")
    assert not c2.transport.disconnecting
    c.proto.connectionLost(Failure(ConnectionDone()))        # gone without QUIT: the lock goes too
    await unlocked(ctx, "alice")
    assert await c2.send(b"USER alice\r\nPASS apw\r\n") == b"+OK\r\n+OK Logged in.\r\n"
    await c2.send(b"QUIT\r\n")


@pytest_twisted.ensureDeferred
async def test_update_failure_at_quit(tmp_path):
    ctx = await setup(tmp_path)
    c = await login(ctx)
    box = c.proto._box
    real_expunge = box.expunge

    async def failing_expunge(uids=None):
        raise StorageError(ErrorKind.TEMPORARY, "injected")
    box.expunge = failing_expunge
    assert await c.send(b"DELE 1\r\nQUIT\r\n") == (
        b"+OK Marked to be deleted.\r\n-ERR [SYS/TEMP] Some deleted messages were not removed.\r\n")
    assert c.transport.disconnecting
    box.expunge = real_expunge
    await unlocked(ctx, "alice")
    assert len(await mailbox(ctx, "alice")) == 3


@pytest_twisted.ensureDeferred
async def test_empty_sasl_initial_response_and_errors(tmp_path):
    ctx = await setup(tmp_path)
    c = Conn(pop3.build_factory(ctx))
    c.take()
    assert await c.send(b"AUTH PLAIN =\r\n") == b"-ERR [AUTH] Authentication failed.\r\n"
    assert await c.send(b"AUTH PLAIN\r\n") == b"+ \r\n"
    assert await c.send(b"not base64!\r\n") == b"-ERR [AUTH] Invalid base64 data.\r\n"
    assert await c.send(b"STAT\r\n") == b"-ERR Command not valid in this state.\r\n"
