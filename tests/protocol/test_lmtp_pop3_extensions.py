"""LMTP and POP3 extensions over real sockets against ``mailserver serve``: BDAT, XCLIENT from
loopback, SMTPUTF8 with smtplib, POP3 UTF8, and the POP3 lock between two server processes
sharing one storage."""

import poplib
import smtplib

import pytest

from tests.harness import RunningServer
from tests.protocol.test_lmtp_pop3 import pop, raw, read_until


def replies(data: bytes) -> list[bytes]:
    """Reply lines after the LHLO reply (whose last line, from loopback, is XCLIENT's)."""
    lines = [line for line in data.split(b"\r\n") if line]
    return lines[next(i for i, line in enumerate(lines) if line.startswith(b"250 XCLIENT")) + 1:]


def test_bdat_pipelined_over_socket(mail_server, account):
    user, password = account
    s = raw(mail_server, mail_server.lmtp_port)
    read_until(s, b"\r\n")
    c1 = b"Subject: chunked\r\n\r\n.not stuffed\r\n"
    c2 = b"second chunk\r\n"
    s.sendall(b"LHLO t\r\nMAIL FROM:<c@example.net> BODY=8BITMIME\r\nRCPT TO:<" + user.encode() + b">\r\n"
              b"BDAT %d\r\n%sBDAT %d LAST\r\n%sQUIT\r\n" % (len(c1), c1, len(c2), c2))
    got = replies(read_until(s, b"221 "))
    s.close()
    assert [r[:9] for r in got] == [b"250 2.1.0", b"250 2.1.5", b"250 2.0.0", b"250 2.0.0", b"221 2.0.0"]
    assert got[2] == b"250 2.0.0 Added %d octets" % len(c1)
    p = pop(mail_server, user, password)
    lines = p.retr(1)[1]
    p.quit()
    assert lines[-3:] == [b"", b".not stuffed", b"second chunk"]


def test_xclient_from_loopback_sets_the_client(mail_server, account):
    user, password = account
    s = raw(mail_server, mail_server.lmtp_port)
    read_until(s, b"\r\n")
    s.sendall(b"LHLO proxy\r\n")
    assert b"250 XCLIENT ADDR HELO LOGIN NAME PORT PROTO\r\n" in read_until(s, b"250 X")
    s.sendall(b"XCLIENT ADDR=198.51.100.7 PORT=2525 HELO=client.example PROTO=ESMTP\r\n")
    assert read_until(s, b"\r\n").startswith(b"220 ")
    s.sendall(b"LHLO proxy\r\nMAIL FROM:<x@example.net>\r\nRCPT TO:<" + user.encode() + b">\r\nDATA\r\n")
    read_until(s, b"354 ")
    s.sendall(b"Subject: via proxy\r\n\r\nx\r\n.\r\nQUIT\r\n")
    assert read_until(s, b"221 ").startswith(b"250 2.0.0")
    s.close()
    p = pop(mail_server, user, password)
    top = p.top(1, 0)[1]
    p.quit()
    assert b"Received: from client.example ([198.51.100.7])" in top
    assert "198.51.100.7" in mail_server.log_text()


def test_smtputf8_with_smtplib(mail_server, account):
    user, password = account
    msg = "From: Jörg <jörg@exämple.net>\r\nSubject: Grüße\r\n\r\nÄÖÜ\r\n".encode()
    with smtplib.LMTP(mail_server.host, mail_server.lmtp_port) as c:
        c.ehlo_or_helo_if_needed()
        assert c.has_extn("smtputf8") and c.has_extn("chunking") and c.has_extn("binarymime")
        assert c.sendmail("jörg@exämple.net", [user], msg, mail_options=["SMTPUTF8", "BODY=8BITMIME"]) == {}
        with pytest.raises(smtplib.SMTPSenderRefused) as e:
            c.sendmail("jörg@exämple.net", [user], msg)              # no SMTPUTF8 parameter
        assert e.value.smtp_code == 553
    p = pop(mail_server, user, password)
    lines = p.retr(1)[1]
    p.quit()
    assert lines[0] == "Return-Path: <jörg@exämple.net>".encode()
    assert b"\tby " in lines[3] and lines[3].endswith(b" with UTF8LMTP")
    assert lines[-1] == "ÄÖÜ".encode()


def test_pop3_utf8_and_capa(mail_server, account):
    user, password = account
    s = raw(mail_server, mail_server.pop3_port)
    read_until(s, b"\r\n")
    s.sendall(b"CAPA\r\nUTF8\r\nUSER " + user.encode() + b"\r\nPASS " + password.encode() + b"\r\nCAPA\r\nQUIT\r\n")
    got = read_until(s, b"Logging out")
    s.close()
    before, after = got.split(b"+OK Logged in.\r\n")
    assert b"\r\nUTF8 USER\r\n" in before and b"+OK UTF8 enabled.\r\n" in before
    assert b"UTF8" not in after and b"\r\nUIDL\r\n" in after


@pytest.fixture
def two_servers(tmp_path):
    """Two server processes over one state directory (and one passwd-file)."""
    first = RunningServer(str(tmp_path), users=3, name="first")
    first.start()
    first_ports = dict(first.ports)
    second = RunningServer(str(tmp_path), users=3, name="second")
    try:
        second.start()
    except Exception:
        first.stop()
        raise
    first.ports = first_ports
    yield first, second
    second.stop()
    first.stop()


def test_pop3_lock_holds_across_server_processes(two_servers):
    first, second = two_servers
    assert first.pop3_port != second.pop3_port
    user, password = first.new_user()
    with smtplib.LMTP(first.host, first.lmtp_port) as c:
        c.sendmail("s@example.net", [user], b"Subject: shared\r\n\r\nx\r\n")
    p1 = pop(first, user, password)
    p2 = poplib.POP3(second.host, second.pop3_port, timeout=20)
    p2.user(user)
    with pytest.raises(poplib.error_proto) as e:
        p2.pass_(password)
    assert e.value.args[0] == b"-ERR [IN-USE] Mailbox is locked by another POP3 session."
    assert p1.stat()[0] == 1
    p1.dele(1)
    p1.quit()
    p2.user(user)
    p2.pass_(password)                          # free again, and the other process's QUIT is seen
    assert p2.stat()[0] == 0
    p2.quit()


def test_many_concurrent_lmtp_connections(mail_server):
    """Twenty connections at once, each delivering to several users: every message lands once.
    (One recipient per transaction: smtplib.LMTP reads a single reply after DATA.)"""
    import threading
    users = [mail_server.new_user() for _ in range(4)]
    errors = []

    def sender(n):
        try:
            with smtplib.LMTP(mail_server.host, mail_server.lmtp_port, timeout=60) as c:
                for k in range(8):
                    refused = c.sendmail("many@example.net", [users[(n + k) % 4][0]],
                                         b"Subject: c%02d-%d\r\n\r\nbody\r\n" % (n, k))
                    assert refused == {}
        except Exception as e:          # reported below, in the test's thread
            errors.append(e)
    threads = [threading.Thread(target=sender, args=(n,)) for n in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert errors == []
    for i, (user, password) in enumerate(users):
        expected = sorted(b"Subject: c%02d-%d" % (n, k) for n in range(20) for k in range(8) if (n + k) % 4 == i)
        p = pop(mail_server, user, password)
        subjects = sorted(line for n in range(1, p.stat()[0] + 1) for line in p.top(n, 0)[1]
                          if line.startswith(b"Subject: "))
        p.quit()
        assert subjects == expected
