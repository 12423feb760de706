"""IMAP transcripts over a StringTransport: greeting, login, states, pipelining, bad input, limits,
mailbox-list commands.  Real rbox storage (local drivers, temporary directory)."""

import base64
import re

import pytest
import pytest_twisted
from twisted.internet import defer

from tests.protocol.imap_session import Wire, make_context, settle

pytestmark = pytest.mark.usefixtures("transcript_backend")   # runs on local and on Ceph


@pytest.fixture
def ctx(tmp_path):
    return pytest_twisted.blockon(defer.Deferred.fromCoroutine(make_context(tmp_path, imap={
        "max_line_length": 1000, "max_literal_size": 5000, "max_auth_failures": 3,
        "max_pipelined_commands": 10, "idle_timeout": 60.0})))


def status(lines):
    return lines[-1].split(b" ", 2)[1]


@pytest_twisted.ensureDeferred
async def test_greeting_capability_and_logout(ctx):
    w = Wire(ctx)
    greeting = w.take()
    assert greeting.startswith(b"* OK [CAPABILITY IMAP4rev1 ") and greeting.endswith(b"] Server ready\r\n")
    assert b"AUTH=PLAIN" in greeting and b"LITERAL+" in greeting
    lines = await w.cmd("CAPABILITY")
    caps = lines[0].split()[2:]
    for cap in (b"IMAP4rev1", b"IDLE", b"UIDPLUS", b"NAMESPACE", b"UNSELECT", b"ENABLE", b"SASL-IR",
                b"APPENDLIMIT=5000", b"AUTH=PLAIN"):
        assert cap in caps
    assert lines[1] == b"t1 OK CAPABILITY completed"
    assert await w.cmd("LOGOUT") == [b"* BYE Logging out", b"t2 OK Logout completed"]
    assert w.closed
    w.lost()
    assert ctx.connections == set()


@pytest_twisted.ensureDeferred
async def test_login_and_states(ctx):
    w = Wire(ctx)
    w.take()
    assert await w.cmd("SELECT INBOX") == [b"t1 BAD Not logged in"]
    assert await w.cmd("LIST \"\" *") == [b"t2 BAD Not logged in"]
    lines = await w.cmd('LOGIN "Alice" {6+}\r\nsecret')
    assert lines[-1].startswith(b"t3 OK [CAPABILITY IMAP4rev1 ") and lines[-1].endswith(b"] Logged in")
    assert b"AUTH=PLAIN" not in lines[-1]
    assert w.proto.username == "alice"
    assert await w.cmd("LOGIN alice secret") == [b"t4 BAD Already logged in"]
    assert await w.cmd("FETCH 1 FLAGS") == [b"t5 BAD No mailbox selected"]
    assert await w.cmd("FROBNICATE") == [b"t6 BAD Unknown command"]
    assert await w.cmd("UID FROB 1") == [b"t7 BAD Unknown UID command"]
    assert await w.cmd("UID") == [b"t8 BAD Missing UID command"]
    assert await w.cmd("NOOP extra") == [b"t9 BAD Error in IMAP command NOOP: Unexpected extra arguments"]


@pytest_twisted.ensureDeferred
async def test_wrong_password_then_too_many_failures(ctx):
    w = Wire(ctx)
    w.take()
    assert await w.cmd("LOGIN alice wrong") == [b"t1 NO [AUTHENTICATIONFAILED] Authentication failed"]
    assert await w.cmd("LOGIN nobody secret") == [b"t2 NO [AUTHENTICATIONFAILED] Authentication failed"]
    assert not w.closed
    w.send(b"t3 LOGIN alice nope\r\nt4 NOOP\r\n")
    data = await w.until(b"BYE")
    assert data == (b"t3 NO [AUTHENTICATIONFAILED] Authentication failed\r\n"
                    b"* BYE Too many authentication failures\r\n")
    assert w.closed
    await settle()
    assert b"t4" not in w.take()
    # The server goes on serving the next client.
    w2 = Wire(ctx)
    w2.take()
    await w2.login()


@pytest_twisted.ensureDeferred
async def test_authenticate_plain(ctx):
    w = Wire(ctx)
    w.take()
    ir = base64.b64encode(b"\0alice\0secret").decode()
    lines = await w.cmd(f"AUTHENTICATE PLAIN {ir}")
    assert lines[-1].startswith(b"t1 OK [CAPABILITY ") and w.proto.username == "alice"

    w = Wire(ctx)
    w.take()
    w.send(b"a AUTHENTICATE plain\r\n")
    assert await w.until(b"\r\n") == b"+ \r\n"
    w.send(base64.b64encode(b"\0bob\0hunter2") + b"\r\nb NOOP\r\n")
    data = await w.tagged("b")
    assert data.startswith(b"a OK [CAPABILITY ") and data.endswith(b"b OK NOOP completed\r\n")

    w = Wire(ctx)
    w.take()
    w.send(b"a AUTHENTICATE PLAIN\r\n*\r\n")
    assert await w.tagged("a") == b"+ \r\na BAD Authentication cancelled\r\n"
    w.send(b"b AUTHENTICATE PLAIN\r\n!!notbase64\r\n")
    assert await w.tagged("b") == b"+ \r\nb BAD Invalid base64 in SASL response\r\n"
    assert await w.cmd("AUTHENTICATE PLAIN ===") == [b"t1 BAD Invalid base64 in SASL response"]
    assert await w.cmd("AUTHENTICATE CRAM-MD5") == [b"t2 NO [CANNOT] Unsupported authentication mechanism"]
    bad = base64.b64encode(b"\0alice\0wrong").decode()
    assert await w.cmd(f"AUTHENTICATE PLAIN {bad}") == [b"t3 NO [AUTHENTICATIONFAILED] Authentication failed"]
    assert await w.cmd("AUTHENTICATE PLAIN =") == [b"t4 NO [AUTHENTICATIONFAILED] Authentication failed"]


@pytest_twisted.ensureDeferred
async def test_pipelined_commands_answer_in_order(ctx):
    w = Wire(ctx)
    w.take()
    w.send(b"a LOGIN alice secret\r\nb CREATE x\r\nc LIST \"\" x\r\nd DELETE x\r\ne LIST \"\" x\r\nf NOOP\r\n")
    data = await w.tagged("f")
    tags = [line.split(b" ")[0] for line in data.split(b"\r\n") if line and not line.startswith(b"*")]
    assert tags == [b"a", b"b", b"c", b"d", b"e", b"f"]
    assert b'* LIST (\\HasNoChildren) "/" x\r\nc OK' in data
    assert b"d OK DELETE completed\r\ne OK LIST completed\r\n" in data


@pytest_twisted.ensureDeferred
async def test_command_split_across_segments_and_literal_continuation(ctx):
    w = Wire(ctx)
    w.take()
    w.send(b"a LOG")
    w.send(b"IN {5}\r\n")
    assert await w.until(b"\r\n") == b"+ OK\r\n"
    w.send(b"alice {6}\r\n")
    assert await w.until(b"\r\n") == b"+ OK\r\n"
    w.send(b"sec")
    w.send(b"ret\r\n")
    assert (await w.tagged("a")).startswith(b"a OK [CAPABILITY")


@pytest_twisted.ensureDeferred
async def test_queue_limit_pauses_reading(ctx):
    w = Wire(ctx)
    w.take()
    w.send(b"".join(b"n%d NOOP\r\n" % i for i in range(30)))
    data = await w.tagged("n29")
    assert data.count(b"OK NOOP completed") == 30
    assert w.transport.producerState == "producing"


@pytest_twisted.ensureDeferred
async def test_bad_input_answered_and_connection_goes_on(ctx):
    w = Wire(ctx)
    w.take()
    w.send(b"* NOOP\r\n")
    assert await w.until(b"\r\n") == b"* BAD Invalid tag\r\n"
    w.send(b"a1 LOGIN " + b"x" * 2000 + b"\r\n")
    assert await w.until(b"\r\n") == b"a1 BAD [TOOBIG] Command line too long\r\n"
    w.send(b"a2 LOGIN alice {6000}\r\n")
    assert await w.until(b"\r\n") == b"a2 NO [TOOBIG] Literal too big\r\n"
    w.send(b'a3 LOGIN "unterminated\r\n')
    assert await w.until(b"\r\n") == b"a3 BAD Invalid quoted string\r\n"
    await w.login()
    assert await w.cmd("CREATE &Jjo!") == [
        b"t2 NO [CANNOT] Invalid mailbox name: unterminated &...- sequence"]
    assert await w.cmd("SELECT &AGE-") == [
        b"t3 NO [CANNOT] Invalid mailbox name: not the canonical modified UTF-7 spelling of the name"]
    assert await w.cmd('CREATE "a//b"') == [b"t4 NO [CANNOT] Invalid mailbox name: empty hierarchy level"]
    assert await w.cmd("NOOP") == [b"t5 OK NOOP completed"]


@pytest_twisted.ensureDeferred
async def test_non_sync_literal_too_big_closes(ctx):
    w = Wire(ctx)
    w.take()
    w.send(b"a APPEND INBOX {9000+}\r\n" + b"x" * 100)
    data = await w.until(b"BYE")
    assert data == (b"a BAD [TOOBIG] Non-synchronising literal too big\r\n"
                    b"* BYE [TOOBIG] Non-synchronising literal too big\r\n")
    assert w.closed


@pytest_twisted.ensureDeferred
async def test_client_disconnects_mid_literal(ctx):
    w = Wire(ctx)
    w.take()
    await w.login()
    w.send(b"a APPEND INBOX {100}\r\n")
    assert await w.until(b"\r\n") == b"+ OK\r\n"
    w.send(b"From: x\r\n\r\npartial")
    w.proto.connectionLost(None)
    await settle()
    assert ctx.connections == set()
    w2 = Wire(ctx)
    w2.take()
    await w2.login()
    lines = await w2.cmd("STATUS INBOX (MESSAGES)")
    assert lines[0] == b"* STATUS INBOX (MESSAGES 0)"


@pytest_twisted.ensureDeferred
async def test_idle_timeout_says_bye(ctx):
    w = Wire(ctx)
    w.take()
    w.clock.advance(59)
    await w.cmd("NOOP")                 # activity resets the timer
    w.clock.advance(59)
    assert not w.closed
    w.clock.advance(2)
    assert w.take() == b"* BYE Disconnecting for inactivity\r\n"
    assert w.closed


@pytest_twisted.ensureDeferred
async def test_id_enable_namespace(ctx):
    w = Wire(ctx)
    w.take()
    assert await w.cmd('ID ("name" "test" "version" NIL)') == [
        b'* ID ("name" "mailserver" "vendor" "mailserver")', b"t1 OK ID completed"]
    assert (await w.cmd("ID NIL"))[-1] == b"t2 OK ID completed"
    assert (await w.cmd('ID ("a")'))[-1].startswith(b"t3 BAD")
    await w.login()
    assert await w.cmd("ENABLE CONDSTORE X-UNKNOWN") == [b"* ENABLED CONDSTORE", b"t5 OK ENABLE completed"]
    assert await w.cmd("NAMESPACE") == [b'* NAMESPACE (("" "/")) NIL NIL', b"t6 OK NAMESPACE completed"]


@pytest_twisted.ensureDeferred
async def test_mailbox_list_commands(ctx):
    w = Wire(ctx)
    w.take()
    await w.login()
    created = await w.cmd("CREATE Entw&APw-rfe/2024/")
    assert re.fullmatch(rb"t2 OK \[MAILBOXID \([0-9a-f]{32}\)\] CREATE completed", created[0]), created
    assert await w.cmd("CREATE inbox") == [b"t3 NO [ALREADYEXISTS] INBOX always exists"]
    assert await w.cmd("CREATE Sent") == [b"t4 NO [ALREADYEXISTS] Mailbox already exists"]
    lines = await w.cmd('LIST "" *')
    assert lines[0] == b'* LIST (\\HasNoChildren) "/" INBOX'
    assert b'* LIST (\\HasChildren) "/" Entw&APw-rfe' in lines
    assert b'* LIST (\\HasNoChildren) "/" Entw&APw-rfe/2024' in lines
    assert b'* LIST (\\HasNoChildren \\Sent) "/" Sent' in lines
    assert await w.cmd('LIST "" ""') == [b'* LIST (\\Noselect) "/" ""', b"t6 OK LIST completed"]
    assert await w.cmd('LIST "Entw&APw-rfe/" %') == [
        b'* LIST (\\HasNoChildren) "/" Entw&APw-rfe/2024', b"t7 OK LIST completed"]
    assert (await w.cmd('LIST "" Inbox'))[0] == b'* LIST (\\HasNoChildren) "/" INBOX'
    assert await w.cmd("DELETE Entw&APw-rfe") == [b"t9 OK DELETE completed"]
    assert await w.cmd('LIST "" %') == [
        b'* LIST (\\HasNoChildren) "/" INBOX', b'* LIST (\\HasNoChildren \\Archive) "/" Archive',
        b'* LIST (\\HasNoChildren \\Drafts) "/" Drafts', b'* LIST (\\Noselect \\HasChildren) "/" Entw&APw-rfe',
        b'* LIST (\\HasNoChildren \\Junk) "/" Junk', b'* LIST (\\HasNoChildren \\Sent) "/" Sent',
        b'* LIST (\\HasNoChildren \\Trash) "/" Trash', b"t10 OK LIST completed"]
    assert await w.cmd("DELETE nothere") == [b"t11 NO [NONEXISTENT] Mailbox does not exist"]
    assert await w.cmd("DELETE INBOX") == [b"t12 NO [CANNOT] INBOX cannot be deleted"]
    assert await w.cmd("RENAME Entw&APw-rfe/2024 Archiv") == [b"t13 OK RENAME completed"]
    assert await w.cmd("RENAME nothere x") == [b"t14 NO [NONEXISTENT] Mailbox does not exist"]
    assert await w.cmd("RENAME Archiv Sent") == [b"t15 NO [ALREADYEXISTS] Mailbox already exists"]
    assert await w.cmd("SUBSCRIBE Archiv") == [b"t16 OK SUBSCRIBE completed"]
    assert await w.cmd("UNSUBSCRIBE Junk") == [b"t17 OK UNSUBSCRIBE completed"]
    lines = await w.cmd('LSUB "" *')
    assert b'* LSUB () "/" Archiv' in lines and b'* LSUB () "/" Junk' not in lines
    assert await w.cmd("STATUS Archiv (MESSAGES RECENT UNSEEN UIDNEXT SIZE)") == [
        b"* STATUS Archiv (MESSAGES 0 RECENT 0 UNSEEN 0 UIDNEXT 1 SIZE 0)", b"t19 OK STATUS completed"]
    assert await w.cmd("STATUS nothere (MESSAGES)") == [b"t20 NO [NONEXISTENT] Mailbox does not exist"]
    assert await w.cmd("STATUS INBOX (FROB)") == [b"t21 BAD Unknown STATUS item FROB"]
    assert await w.cmd("SELECT nothere") == [b"t22 NO [NONEXISTENT] Mailbox does not exist"]


@pytest_twisted.ensureDeferred
async def test_silent_client_during_authenticate_times_out(ctx):
    w = Wire(ctx)
    w.take()
    w.send(b"a AUTHENTICATE PLAIN\r\n")
    assert await w.until(b"\r\n") == b"+ \r\n"
    w.clock.advance(61)
    assert w.take() == b"* BYE Disconnecting for inactivity\r\n"
    assert w.closed
    w.lost()
    assert ctx.connections == set()


@pytest_twisted.ensureDeferred
async def test_server_shutdown_says_bye(ctx):
    w = Wire(ctx)
    w.take()
    await w.login()
    w.proto.shutdown()
    assert w.take() == b"* BYE Server shutting down\r\n"
    assert w.closed
    w.lost()
    ctx.stopping = True
    late = Wire(ctx)
    assert late.take() == b"* BYE Server shutting down\r\n"
    assert late.closed
