"""Postfix (Debian's package) delivers to our LMTP server: mail injected with Postfix's sendmail
lands in the right users' mailboxes, including a +detail address and a multi-recipient message."""

import email
import imaplib
import re

import pytest

from tests.e2e.postfix import Postfix
from tests.harness import RunningServer

pytestmark = pytest.mark.e2e


@pytest.fixture
def server(tmp_path):
    s = RunningServer(str(tmp_path), users=6, options={"lmtp": {"save_to_detail_mailbox": True}})
    s.start()
    yield s
    s.stop()


@pytest.fixture
def postfix(server):
    p = Postfix(server.lmtp_port, ["example.org"])
    p.start()
    yield p
    p.stop()


def imap_messages(server, user, password, mailbox="INBOX") -> list[bytes]:
    m = imaplib.IMAP4(server.host, server.imap_port)
    m.login(user, password)
    typ, data = m.select(mailbox, readonly=True)
    assert typ == "OK", data
    out = []
    if int(data[0]):
        typ, data = m.fetch("1:*", "(BODY.PEEK[])")
        out = [part[1] for part in data if isinstance(part, tuple)]
    m.logout()
    return out


def imap_create(server, user, password, mailbox) -> None:
    m = imaplib.IMAP4(server.host, server.imap_port)
    m.login(user, password)
    assert m.create(mailbox)[0] == "OK"
    m.logout()


def received_id(message: bytes) -> str:
    """The ``id`` of our Received header: the LMTP session that delivered the copy."""
    m = re.search(rb" with LMTP\r\n\tid (\S+)", message)
    assert m, message[:600]
    return m.group(1).decode()


def test_postfix_delivers_through_lmtp(server, postfix):
    (u1, p1), (u2, p2), (u3, p3) = server.new_user(), server.new_user(), server.new_user()
    imap_create(server, u2, p2, "Work")
    local2, _, domain = u2.partition("@")

    single = (b"From: Ann <ann@ext.example>\nTo: " + u1.encode() + b"\nSubject: single\n\n"
              b"first line\n.a line with a leading dot\n..and two\nUTF-8 body: Gr\xc3\xbc\xc3\x9fe\n")
    postfix.sendmail("ann@ext.example", [u1], single)
    multi = b"From: Bob <bob@ext.example>\nSubject: to three\n\nhello all\n"
    postfix.sendmail("bob@ext.example", [u1, f"{local2}+Work@{domain}", u3], multi)
    postfix.wait_sent(4)

    inbox1 = imap_messages(server, u1, p1)
    assert len(inbox1) == 2
    by_subject = {email.message_from_bytes(m)["Subject"]: m for m in inbox1}
    one = by_subject["single"]
    assert one.startswith(b"Return-Path: <ann@ext.example>\r\nDelivered-To: " + u1.encode() + b"\r\n")
    # Postfix dot-stuffed the dot lines and sent 8-bit text (BODY=8BITMIME); both arrive intact
    assert one.endswith(b"\r\n\r\nfirst line\r\n.a line with a leading dot\r\n..and two\r\n"
                        b"UTF-8 body: Gr\xc3\xbc\xc3\x9fe\r\n")
    assert b"Received: from mta.test.example" in one      # Postfix's LHLO name

    # the multi-recipient message: one LMTP transaction (same session id in every copy), no
    # Delivered-To (as Dovecot), the +detail copy in the Work mailbox
    copies = [by_subject["to three"]] + imap_messages(server, u2, p2, "Work") + imap_messages(server, u3, p3)
    assert len(copies) == 3 and imap_messages(server, u2, p2) == []
    assert len({received_id(c) for c in copies}) == 1
    assert len({c.split(b"\r\n\r\n", 1)[1] for c in copies}) == 1
    for c in copies:
        assert c.startswith(b"Return-Path: <bob@ext.example>\r\nReceived: ")
        assert b"Delivered-To:" not in c.split(b"\r\n\r\n")[0].split(b"Received: from mta")[0]
        assert c.endswith(b"\r\n\r\nhello all\r\n")

    # Postfix's own log agrees: each recipient went to our LMTP listener and was accepted
    sent = postfix.wait_sent(4)
    assert all(f"relay=127.0.0.1[127.0.0.1]:{server.lmtp_port}" in line for line in sent)
    assert any(f"to=<{local2}+Work@{domain}>" in line and "Saved" in line for line in sent)


def test_postfix_burst(server, postfix):
    """Many messages at once: Postfix opens several LMTP connections; every one lands once."""
    users = [server.new_user() for _ in range(3)]
    for n in range(30):
        user = users[n % 3][0]
        postfix.sendmail("burst@ext.example", [user], b"Subject: burst %d\n\nbody %d\n" % (n, n))
    postfix.wait_sent(30)
    seen = []
    for user, password in users:
        for m in imap_messages(server, user, password):
            seen.append(email.message_from_bytes(m)["Subject"])
    assert sorted(seen) == sorted(f"burst {n}" for n in range(30))
