"""LMTP and POP3 over real sockets against ``mailserver serve`` (the ``mail_server`` fixture):
deliver with smtplib.LMTP or a raw pipelined socket, read back with poplib."""

import poplib
import smtplib
import socket
import time

import pytest


def lmtp(server) -> smtplib.LMTP:
    client = smtplib.LMTP(server.host, server.lmtp_port, timeout=20)
    client.ehlo_or_helo_if_needed()
    return client


def pop(server, user, password) -> poplib.POP3:
    client = poplib.POP3(server.host, server.pop3_port, timeout=20)
    client.user(user)
    client.pass_(password)
    return client


def raw(server, port: int) -> socket.socket:
    s = socket.create_connection((server.host, port), timeout=20)
    s.settimeout(20)
    return s


def read_until(sock: socket.socket, marker: bytes, count: int = 1) -> bytes:
    data = b""
    while data.count(marker) < count:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    return data


MESSAGE = (b"From: a@example.net\r\nTo: someone@example.org\r\nSubject: socket test\r\n\r\n"
           b"first line\r\n.leading dot\r\n..two dots\r\n.\r\nlast line\r\n")


def test_deliver_then_retrieve(mail_server, account):
    user, password = account
    with lmtp(mail_server) as c:
        refused = c.sendmail("sender@example.net", [user], MESSAGE)
        assert refused == {}
    p = pop(mail_server, user, password)
    count, size = p.stat()
    assert count == 1
    resp, lines, octets = p.retr(1)
    assert resp.startswith(b"+OK")
    text = b"\r\n".join(lines)
    assert lines[0] == b"Return-Path: <sender@example.net>"
    assert lines[1] == b"Delivered-To: " + user.encode()
    # poplib undoes dot-stuffing: lines beginning with '.' survive the round trip
    assert text.endswith(MESSAGE.rstrip(b"\r\n"))
    assert size == len(text) + 2             # STAT counts the stored (CRLF) size
    p.quit()


def test_uidl_stable_dele_quit_and_rset(mail_server, account):
    user, password = account
    with lmtp(mail_server) as c:
        for n in range(3):
            c.sendmail("s@example.net", [user], b"Subject: m%d\r\n\r\nbody %d\r\n" % (n, n))
    p = pop(mail_server, user, password)
    first = p.uidl()[1]
    p.dele(1)
    p.rset()
    p.dele(2)
    assert p.stat()[0] == 2
    p.quit()
    p = pop(mail_server, user, password)
    second = p.uidl()[1]
    # message 2 is gone; the others keep their UIDLs, renumbered
    assert [u.split()[1] for u in second] == [first[0].split()[1], first[2].split()[1]]
    assert p.top(2, 0)[1][0] == b"Return-Path: <s@example.net>"
    assert b"Subject: m2" in p.top(2, 0)[1]
    p.quit()


def test_session_without_quit_expunges_nothing(mail_server, account):
    user, password = account
    with lmtp(mail_server) as c:
        c.sendmail("s@example.net", [user], b"Subject: keep\r\n\r\nx\r\n")
    p = pop(mail_server, user, password)
    p.dele(1)
    p.file.close()
    p.sock.close()                   # gone without QUIT: RFC 1939 says no UPDATE
    again = None
    for _ in range(100):
        try:
            again = pop(mail_server, user, password)
            break
        except poplib.error_proto as e:   # the old session may still hold the lock for a moment
            assert b"[IN-USE]" in e.args[0]
            time.sleep(0.05)
    assert again is not None, "the dropped session kept the POP3 lock"
    assert again.stat()[0] == 1
    again.quit()


def test_unknown_user_and_detail_address(mail_server, account):
    user, password = account
    local, _, domain = user.partition("@")
    with lmtp(mail_server) as c:
        c.mail("s@example.net")
        code, msg = c.rcpt("nobody-here@example.org")
        assert (code, msg[:5]) == (550, b"5.1.1")
        assert c.rcpt(f"{local}+folder@{domain}")[0] == 250
        code, _ = c.data(b"Subject: detail\r\n\r\nx\r\n")
        assert code == 250
    p = pop(mail_server, user, password)
    assert p.stat()[0] == 1
    p.quit()


def test_message_without_final_newline(mail_server, account):
    user, password = account
    with lmtp(mail_server) as c:
        c.sendmail("s@example.net", [user], b"Subject: no newline\r\n\r\nlast line, no CRLF")
    p = pop(mail_server, user, password)
    lines = p.retr(1)[1]
    assert lines[-1] == b"last line, no CRLF"
    p.quit()


def test_wrong_password(mail_server, account):
    user, _ = account
    client = poplib.POP3(mail_server.host, mail_server.pop3_port, timeout=20)
    client.user(user)
    with pytest.raises(poplib.error_proto) as e:
        client.pass_("wrong")
    assert e.value.args[0] == b"-ERR [AUTH] Authentication failed."
    client.quit()


def test_pipelined_lmtp_over_raw_socket(mail_server, account):
    user, password = account
    s = raw(mail_server, mail_server.lmtp_port)
    assert read_until(s, b"\r\n").startswith(b"220 ")
    s.sendall(b"LHLO test\r\nMAIL FROM:<p@example.net>\r\nRCPT TO:<nobody@example.org>\r\n"
              b"RCPT TO:<" + user.encode() + b">\r\nRCPT TO:<" + user.encode() + b">\r\nDATA\r\n")
    got = read_until(s, b"354 ")
    replies = [line for line in got.split(b"\r\n") if line]
    assert [r[:3] for r in replies if not r.startswith(b"250-")] == [b"250", b"250", b"550", b"250", b"250", b"354"]
    s.sendall(b"Subject: pipelined\r\n\r\n..x\r\n.\r\nNOOP\r\nQUIT\r\n")
    got = read_until(s, b"221 ")
    replies = [line for line in got.split(b"\r\n") if line]
    assert [r[:9] for r in replies] == [b"250 2.0.0", b"250 2.0.0", b"250 2.0.0", b"221 2.0.0"]
    s.close()
    p = pop(mail_server, user, password)
    assert p.stat()[0] == 1                     # the same address twice is saved once (as Dovecot)
    assert p.retr(1)[1][-1] == b".x"
    p.quit()


def test_lmtp_line_too_long_then_usable(mail_server):
    s = raw(mail_server, mail_server.lmtp_port)
    read_until(s, b"\r\n")
    s.sendall(b"LHLO " + b"x" * 10000 + b"\r\nNOOP\r\n")
    got = read_until(s, b"\r\n", 2)
    assert got == b"500 5.5.2 Line too long\r\n250 2.0.0 OK\r\n"
    s.sendall(b"QUIT\r\n")
    assert read_until(s, b"\r\n").startswith(b"221 ")
    s.close()


def test_pop3_line_too_long(mail_server):
    s = raw(mail_server, mail_server.pop3_port)
    read_until(s, b"\r\n")
    s.sendall(b"USER " + b"x" * 5000 + b"\r\nNOOP\r\n")
    assert read_until(s, b"\r\n", 2) == b"-ERR Input line too long.\r\n+OK\r\n"
    s.close()


def test_client_disconnects_mid_data(mail_server, account):
    user, password = account
    s = raw(mail_server, mail_server.lmtp_port)
    read_until(s, b"\r\n")
    s.sendall(b"LHLO t\r\nMAIL FROM:<a@example.net>\r\nRCPT TO:<" + user.encode() + b">\r\nDATA\r\n")
    read_until(s, b"354 ")
    s.sendall(b"Subject: cut\r\n\r\n" + b"partial " * 1000)
    s.close()
    # the server is still fine and delivered nothing
    with lmtp(mail_server) as c:
        assert c.noop()[0] == 250
    p = pop(mail_server, user, password)
    assert p.stat()[0] == 0
    p.quit()


def test_big_message_round_trip(mail_server, account):
    user, password = account
    body = b"".join(b".line %06d " % i + b"y" * 60 + b"\r\n" for i in range(30000))   # ~2 MB
    msg = b"Subject: big\r\n\r\n" + body
    with lmtp(mail_server) as c:
        c.sendmail("s@example.net", [user], msg)
    p = pop(mail_server, user, password)
    lines = p.retr(1)[1]
    assert b"\r\n".join(lines).endswith(msg.rstrip(b"\r\n"))
    p.quit()
