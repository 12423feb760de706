"""LMTP extensions and delivery options (byte-exact transcripts, real rbox storage): CHUNKING and
BINARYMIME, SMTPUTF8, XCLIENT from trusted networks, body checks, detail mailboxes, duplicate
recipients, trace header options, and one parse for many recipients."""

import re

import pytest
import pytest_twisted

from mailserver.protocols import lmtp
from mailserver.protocols.lmtp.message import PathError, parse_path
from mailserver.storage import mime
from mailserver.storage.api import FetchItem
from tests.unit.protocol_support import Conn, make_ctx

pytestmark = pytest.mark.usefixtures("transcript_backend")   # runs on local and on Ceph

USERS = {"alice@example.org": "a", "bob@example.org": "b", "carol": "c", "jörg@exämple.org": "j"}


async def setup(tmp_path, users=USERS, **lmtp_options):
    ctx = await make_ctx(tmp_path, users, lmtp=lmtp_options, auth={"username_chars": ""})
    conn = Conn(lmtp.build_factory(ctx))
    assert conn.take() == b"220 mx.test LMTP ready\r\n"
    return ctx, conn


async def mails(ctx, user, mailbox="INBOX"):
    u = await ctx.storage.open_user(user)
    box = await u.open_mailbox(mailbox)
    out = [m.data async for m in box.fetch(list(box.uids()), {FetchItem.DATA})]
    await box.close()
    await u.close()
    return out


def saved(out: bytes, n: int = 1) -> bool:
    return re.fullmatch(rb"(250 2\.0\.0 <[^>]+> \S+ Saved\r\n){%d}" % n, out) is not None


@pytest_twisted.ensureDeferred
async def test_bdat_pipelined_and_split_everywhere(tmp_path):
    ctx, c = await setup(tmp_path)
    head = b"Subject: chunks\r\n\r\n"
    part2 = b"line two\nbare LF line\r\n.no stuffing\r\n"
    stream = (b"LHLO x\r\nMAIL FROM:<s@ext>\r\nRCPT TO:<carol>\r\nRCPT TO:<bob@example.org>\r\n"
              b"BDAT %d\r\n%sBDAT %d LAST\r\n%sNOOP\r\n" % (len(head), head, len(part2), part2))
    for i in range(0, len(stream), 5):              # chunk sizes and data straddle packets
        c.proto.dataReceived(stream[i:i + 5])
    await c.settle()
    lines = c.take().split(b"\r\n")
    assert lines[-6:] == [b"250 2.1.5 OK", b"250 2.0.0 Added %d octets" % len(head),
                          lines[-4], lines[-3], b"250 2.0.0 OK", b""]
    assert lines[-4].startswith(b"250 2.0.0 <carol> ") and lines[-3].startswith(b"250 2.0.0 <bob@example.org> ")
    (data,) = await mails(ctx, "carol")
    # not dot-stuffed; bare LF normalised to CRLF as for DATA
    assert data.endswith(b"\r\nSubject: chunks\r\n\r\nline two\r\nbare LF line\r\n.no stuffing\r\n")
    assert await mails(ctx, "bob@example.org") == [data]


@pytest_twisted.ensureDeferred
async def test_bdat_errors_keep_the_stream_in_step(tmp_path):
    ctx, c = await setup(tmp_path, max_message_size=100)
    await c.send(b"LHLO x\r\n")
    # no transaction: the chunk is still read, then refused
    assert await c.send(b"BDAT 9\r\nNOOP\r\nXYZBDAT 0 LAST\r\nNOOP\r\n") == (
        b"503 5.5.1 MAIL needed first\r\n503 5.5.1 MAIL needed first\r\n250 2.0.0 OK\r\n")
    assert await c.send(b"BDAT x\r\nBDAT 1 MORE\r\n") == b"501 5.5.4 Syntax: BDAT <size> [LAST]\r\n" * 2
    assert await c.send(b"MAIL FROM:<a@b>\r\nRCPT TO:<nobody@x>\r\nBDAT 2 LAST\r\nhi") == (
        b"250 2.1.0 OK\r\n550 5.1.1 <nobody@x> User doesn't exist: nobody@x\r\n503 5.5.1 No valid recipients\r\n")
    assert await c.send(b"RSET\r\n") == b"250 2.0.0 OK\r\n"
    # a chunk past the size limit fails the transaction until RSET
    out = await c.send(b"MAIL FROM:<a@b>\r\nRCPT TO:<carol>\r\nBDAT 150\r\n" + b"y" * 150 +
                       b"BDAT 2 LAST\r\nhiDATA\r\nRCPT TO:<carol>\r\n")
    assert out == (b"250 2.1.0 OK\r\n250 2.1.5 OK\r\n552 5.3.4 Message too big for system\r\n"
                   b"503 5.5.1 Previous data chunk failed, issue RSET first\r\n"
                   b"503 5.5.1 DATA not allowed after BDAT\r\n503 5.5.1 RCPT not allowed after BDAT\r\n")
    assert await c.send(b"RSET\r\nMAIL FROM:<a@b>\r\nRCPT TO:<carol>\r\nBDAT 60\r\n" + b"z" * 60 +
                        b"BDAT 60 LAST\r\n" + b"z" * 60) == (
        b"250 2.0.0 OK\r\n250 2.1.0 OK\r\n250 2.1.5 OK\r\n250 2.0.0 Added 60 octets\r\n"
        b"552 5.3.4 <carol> Message too big for system\r\n")
    out = await c.send(b"MAIL FROM:<a@b>\r\nRCPT TO:<carol>\r\nBDAT 0 LAST\r\n")
    assert saved(out.split(b"\r\n", 2)[2])
    (data,) = await mails(ctx, "carol")               # an empty message: only the trace headers
    assert data.startswith(b"Return-Path: <a@b>\r\nDelivered-To: carol\r\nReceived: from x")
    assert data.count(b"\r\n") == 7 and data.endswith(b"\r\n")


@pytest_twisted.ensureDeferred
async def test_binarymime_stored_byte_exact(tmp_path):
    ctx, c = await setup(tmp_path)
    body = (b"Subject: bin\r\nContent-Type: application/octet-stream\r\nContent-Transfer-Encoding: binary\r\n\r\n"
            b"\x00\x01\xff bare\nLF " + b"q" * 3000 + b"\r\n")
    out = await c.send(b"LHLO x\r\nMAIL FROM:<a@b> BODY=BINARYMIME\r\nRCPT TO:<carol>\r\nDATA\r\n")
    assert out.endswith(b"250 SMTPUTF8\r\n250 2.1.0 OK\r\n250 2.1.5 OK\r\n"
                        b"503 5.5.1 BODY=BINARYMIME needs BDAT, not DATA\r\n")
    assert saved(await c.send(b"BDAT %d LAST\r\n%s" % (len(body), body)))
    (data,) = await mails(ctx, "carol")
    assert data.endswith(b"\r\n" + body)


@pytest_twisted.ensureDeferred
async def test_nul_and_long_lines_refused_per_recipient(tmp_path):
    ctx, c = await setup(tmp_path)
    await c.send(b"LHLO x\r\n")
    rcpts = b"MAIL FROM:<a@b>\r\nRCPT TO:<carol>\r\nRCPT TO:<bob@example.org>\r\nDATA\r\n"
    out = await c.send(rcpts + b"Subject: nul\r\n\r\nbad\x00byte\r\n.\r\n")
    assert out.endswith(b"354 OK\r\n554 5.6.0 <carol> Message contains NUL characters\r\n"
                        b"554 5.6.0 <bob@example.org> Message contains NUL characters\r\n")
    ok_line, long_line = b"o" * 998 + b"\r\n", b"l" * 999 + b"\r\n"     # 1000 and 1001 octets with CRLF
    out = await c.send(rcpts + b"Subject: long\r\n\r\n" + long_line + b".\r\n")
    assert out.endswith(b"554 5.6.0 <carol> Message contains a line longer than 1000 octets\r\n"
                        b"554 5.6.0 <bob@example.org> Message contains a line longer than 1000 octets\r\n")
    nul = b"Subject: n\r\n\r\nx\x00y\r\n"
    out = await c.send(b"MAIL FROM:<a@b>\r\nRCPT TO:<carol>\r\nBDAT %d LAST\r\n%s" % (len(nul), nul))
    assert out.endswith(b"554 5.6.0 <carol> Message contains NUL characters\r\n")
    assert await mails(ctx, "carol") == []
    out = await c.send(b"MAIL FROM:<a@b>\r\nRCPT TO:<carol>\r\nDATA\r\nSubject: ok\r\n\r\n" + ok_line + b".\r\n")
    assert saved(out.split(b"354 OK\r\n")[1])
    # the limit is configurable; 0 turns it off (Dovecot 2.3 accepts any length)
    (tmp_path / "o").mkdir()
    ctx2, c2 = await setup(tmp_path / "o", max_body_line_length=0)
    out = await c2.send(b"LHLO x\r\n" + rcpts.replace(b"RCPT TO:<bob@example.org>\r\n", b"") +
                        b"Subject: long\r\n\r\n" + b"L" * 5000 + b"\r\n.\r\n")
    assert saved(out.split(b"354 OK\r\n")[1])


@pytest_twisted.ensureDeferred
async def test_smtputf8(tmp_path):
    ctx, c = await setup(tmp_path)
    await c.send(b"LHLO x\r\n")
    assert await c.send("MAIL FROM:<a@b>\r\nRCPT TO:<jörg@exämple.org>\r\n".encode()) == (
        "250 2.1.0 OK\r\n553 5.6.7 <jörg@exämple.org> Non-ASCII address needs the SMTPUTF8 parameter\r\n".encode())
    out = await c.send("RSET\r\nMAIL FROM:<müller@exämple.org> SMTPUTF8 BODY=8BITMIME\r\nRCPT TO:<jörg@exämple.org>\r\n"
                       "DATA\r\nSubject: Grüße\r\n\r\nÄ\r\n.\r\n".encode())
    assert out.split(b"354 OK\r\n")[1].startswith("250 2.0.0 <jörg@exämple.org> ".encode())
    (data,) = await mails(ctx, "jörg@exämple.org")
    assert data.startswith("Return-Path: <müller@exämple.org>\r\nDelivered-To: jörg@exämple.org\r\n".encode())
    assert b"\tby mx.test with UTF8LMTP\r\n" in data and data.endswith("Subject: Grüße\r\n\r\nÄ\r\n".encode())


@pytest_twisted.ensureDeferred
async def test_xclient_refused_from_untrusted_peer(tmp_path):
    ctx, c = await setup(tmp_path)                      # the peer is 192.0.2.7; default: loopback only
    out = await c.send(b"LHLO x\r\n")
    assert b"XCLIENT" not in out
    assert await c.send(b"XCLIENT ADDR=10.1.2.3\r\n") == b"550 5.7.0 You are not from trusted IP\r\n"


@pytest_twisted.ensureDeferred
async def test_xclient_from_trusted_network(tmp_path):
    ctx, c = await setup(tmp_path, trusted_networks=["192.0.2.0/24"])
    assert (await c.send(b"LHLO x\r\n")).endswith(b"250 XCLIENT ADDR HELO LOGIN NAME PORT PROTO\r\n")
    assert await c.send(b"XCLIENT FOO=1\r\n") == b"501 5.5.4 Unsupported XCLIENT attribute FOO\r\n"
    assert await c.send(b"XCLIENT ADDR=not-an-ip\r\n") == b"501 5.5.4 Invalid XCLIENT ADDR value\r\n"
    assert await c.send(b"MAIL FROM:<a@b>\r\nXCLIENT ADDR=10.0.0.1\r\nRSET\r\n") == (
        b"250 2.1.0 OK\r\n503 5.5.1 Mail transaction in progress\r\n250 2.0.0 OK\r\n")
    assert await c.send(b"XCLIENT ADDR=IPV6:2001:db8::5 PORT=4242 HELO=client+2Bmx.example LOGIN=[UNAVAILABLE]\r\n"
                        b"MAIL FROM:<a@b>\r\n") == (
        b"220 mx.test LMTP ready\r\n503 5.5.1 Send LHLO first\r\n")
    assert c.proto.peer == "[2001:db8::5]:4242"
    out = await c.send(b"LHLO proxy\r\nMAIL FROM:<a@b>\r\nRCPT TO:<carol>\r\nDATA\r\nSubject: x\r\n\r\nx\r\n.\r\n")
    assert out.split(b"354 OK\r\n")[1].startswith(b"250 2.0.0 <carol> ")
    (data,) = await mails(ctx, "carol")
    assert b"Received: from client+mx.example ([2001:db8::5])\r\n" in data


@pytest_twisted.ensureDeferred
async def test_detail_mailbox_duplicates_and_trace_options(tmp_path):
    ctx, c = await setup(tmp_path, save_to_detail_mailbox=True, add_received_header=False)
    u = await ctx.storage.open_user("alice@example.org")
    await u.create_mailbox("Work")
    await u.close()
    out = await c.send(b"LHLO x\r\nMAIL FROM:<a@b>\r\nRCPT TO:<alice+Work@example.org>\r\n"
                       b"RCPT TO:<alice+nothere@example.org>\r\nRCPT TO:<alice@example.org>\r\n"
                       b"RCPT TO:<alice@example.org>\r\nRCPT TO:<ALICE+Work@example.org>\r\n"
                       b"DATA\r\nSubject: d\r\n\r\nx\r\n.\r\n")
    assert saved(out.split(b"354 OK\r\n")[1], 5)
    # (alice, Work) once although given twice; the unknown detail and the plain address go to
    # INBOX, once each: Dovecot saves identical addresses once, different ones separately.
    assert await mails(ctx, "alice@example.org", "Work") == [b"Return-Path: <a@b>\r\nSubject: d\r\n\r\nx\r\n"]
    assert len(await mails(ctx, "alice@example.org")) == 2
    # without the option the detail is ignored: all addresses of a user are one recipient
    (tmp_path / "o").mkdir()
    ctx2, c2 = await setup(tmp_path / "o")
    u = await ctx2.storage.open_user("alice@example.org")
    await u.create_mailbox("Work")
    await u.close()
    out = await c2.send(b"LHLO x\r\nMAIL FROM:<a@b>\r\nRCPT TO:<alice+Work@example.org>\r\n"
                        b"RCPT TO:<alice@example.org>\r\nDATA\r\nSubject: d\r\n\r\nx\r\n.\r\n")
    assert saved(out.split(b"354 OK\r\n")[1], 2)
    assert await mails(ctx2, "alice@example.org", "Work") == []
    (data,) = await mails(ctx2, "alice@example.org")
    assert b"Received: from x" in data and b"Delivered-To" not in data


@pytest_twisted.ensureDeferred
async def test_many_recipients_parse_once_store_once_each(tmp_path, monkeypatch):
    users = {f"u{i:03d}@example.org": "pw" for i in range(500)}
    ctx, c = await setup(tmp_path, users=users)
    calls = []
    real = mime.analyze
    monkeypatch.setattr(mime, "analyze", lambda data: calls.append(1) or real(data))
    rcpts = b"".join(b"RCPT TO:<%s>\r\n" % u.encode() for u in users)
    body = b"Subject: to everyone\r\n\r\n" + b"text line\r\n" * 2000
    out = await c.send(b"LHLO x\r\nMAIL FROM:<a@b>\r\n" + rcpts + b"DATA\r\n" + body + b".\r\n")
    assert saved(out.split(b"354 OK\r\n")[1], 500)
    assert len(calls) == 1
    for user in ("u000@example.org", "u250@example.org", "u499@example.org"):
        (data,) = await mails(ctx, user)
        assert data.endswith(body)


def test_parse_path_fast_and_slow_paths_agree():
    assert parse_path("<a@[192.0.2.1]> BODY=8BITMIME", False) == ("a@[192.0.2.1]", {"BODY": "8BITMIME"})
    assert parse_path("<jörg@exämple.org> SMTPUTF8", False) == ("jörg@exämple.org", {"SMTPUTF8": ""})
    assert parse_path("<a@b@c>", False) == ("a@b@c", {})             # the character walk's answer
    assert parse_path('<"a b"@c>', False) == ('"a b"@c', {})
    for bad, why in (("<a@b>x", "junk after the path"), ("<>", "null path not allowed here"),
                     ("<" + "a" * 300 + "@b>", "path too long"), ("<a@b> =1", "bad parameter '=1'")):
        with pytest.raises(PathError) as e:
            parse_path(bad, False)
        assert str(e.value) == why
