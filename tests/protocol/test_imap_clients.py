"""IMAP over real sockets against the server process (``mail_server`` fixture), with imapclient,
imaplib and raw sockets for the bad-input cases."""

import imaplib
import socket
import threading
import time

import imapclient
import pytest

MAIL = (b"From: Alice <alice@example.org>\r\nTo: Bob <bob@example.org>\r\nSubject: Hello %d\r\n"
        b"Date: Mon, 23 Nov 2026 10:00:00 +0000\r\nMessage-ID: <%d@example.org>\r\n"
        b"Content-Type: text/plain; charset=utf-8\r\n\r\nBody of message %d with a needle\r\n")

MULTIPART = (b"From: carol@example.org\r\nSubject: parts\r\nMIME-Version: 1.0\r\n"
             b"Content-Type: multipart/mixed; boundary=XX\r\n\r\npreamble\r\n--XX\r\n"
             b"Content-Type: text/plain\r\n\r\nfirst part\r\n--XX\r\n"
             b"Content-Type: text/html\r\n\r\n<p>second</p>\r\n--XX--\r\n")


def mail(n: int) -> bytes:
    return MAIL % (n, n, n)


def client(mail_server, account=None) -> imapclient.IMAPClient:
    c = imapclient.IMAPClient(mail_server.host, port=mail_server.imap_port, ssl=False, timeout=30)
    if account:
        c.login(*account)
    return c


def raw(mail_server) -> socket.socket:
    s = socket.create_connection((mail_server.host, mail_server.imap_port), timeout=10)
    assert s.recv(4096).startswith(b"* OK [CAPABILITY ")
    return s


def read_until(s: socket.socket, marker: bytes, limit: float = 10.0) -> bytes:
    data = b""
    deadline = time.monotonic() + limit
    while marker not in data:
        if time.monotonic() > deadline:
            raise AssertionError(f"timeout waiting for {marker!r}: {data!r}")
        chunk = s.recv(65536)
        if not chunk:
            break
        data += chunk
    return data


def test_imapclient_session(mail_server, account):
    c = client(mail_server, account)
    assert b"IDLE" in c.capabilities() and b"UIDPLUS" in c.capabilities()
    folders = {f[2]: f[0] for f in c.list_folders()}
    assert {"INBOX", "Sent", "Drafts", "Trash"} <= set(folders)
    assert b"\\Sent" in folders["Sent"]
    c.create_folder("Projekte/Übersicht")
    assert c.folder_exists("Projekte/Übersicht")
    for i in range(1, 4):
        c.append("INBOX", mail(i), flags=[b"$Work"] if i == 2 else [])
    c.append("INBOX", MULTIPART)
    info = c.select_folder("INBOX")
    assert info[b"EXISTS"] == 4 and info[b"UIDNEXT"] == 5
    got = c.fetch([1, 2, 3, 4], ["FLAGS", "RFC822.SIZE", "ENVELOPE", "INTERNALDATE"])
    assert got[1][b"RFC822.SIZE"] == len(mail(1))
    assert got[2][b"FLAGS"] == (b"\\Recent", b"$Work")
    assert got[1][b"ENVELOPE"].subject == b"Hello 1"
    body = c.fetch([2], ["BODY.PEEK[]", "BODY.PEEK[HEADER.FIELDS (SUBJECT)]", "BODY.PEEK[TEXT]<0.4>"])[2]
    assert body[b"BODY[]"] == mail(2)
    assert body[b"BODY[HEADER.FIELDS (SUBJECT)]"] == b"Subject: Hello 2\r\n\r\n"
    assert body[b"BODY[TEXT]<0>"] == b"Body"
    assert c.get_flags([2])[2] == (b"\\Recent", b"$Work")   # PEEK did not set \Seen
    parts = c.fetch([4], ["BODYSTRUCTURE", "BODY[2]", "BODY[1.MIME]"])[4]
    assert parts[b"BODY[2]"] == b"<p>second</p>"
    assert parts[b"BODY[1.MIME]"] == b"Content-Type: text/plain\r\n\r\n"
    assert parts[b"BODYSTRUCTURE"].is_multipart
    assert b"\\Seen" in parts[b"FLAGS"]                     # BODY[...] set \Seen and reported it
    assert c.search(["SUBJECT", "Hello"]) == [1, 2, 3]
    assert c.search(["BODY", "needle", "NOT", "KEYWORD", "$Work"]) == [1, 3]
    assert c.search(["OR", "SEEN", "UID", "1"]) == [1, 4]
    c.add_flags([1, 3], [b"\\Deleted"])
    assert c.search(["DELETED"]) == [1, 3]
    c.copy([2], "Projekte/Übersicht")
    c.move([4], "Trash")
    assert c.expunge()[1] == [(1, b"EXPUNGE"), (2, b"EXPUNGE")]
    assert c.search(["ALL"]) == [2]
    assert c.folder_status("Projekte/Übersicht", ["MESSAGES"])[b"MESSAGES"] == 1
    assert c.folder_status("Trash", ["MESSAGES"])[b"MESSAGES"] == 1
    c.unselect_folder()
    c.logout()


def test_uidplus_responses_with_imaplib(mail_server, account):
    m = imaplib.IMAP4(mail_server.host, mail_server.imap_port)
    m.login(*account)
    typ, data = m.append("INBOX", "(\\Flagged)", '"01-Jan-2024 12:00:00 +0100"', mail(7))
    assert typ == "OK" and data[0].startswith(b"[APPENDUID ")
    uidvalidity = int(data[0].split()[1])
    assert data[0].split()[2] == b"1]"
    m.select("INBOX")
    typ, data = m.uid("FETCH", "1", "(INTERNALDATE FLAGS)")
    assert b'INTERNALDATE "01-Jan-2024 11:00:00 +0000"' in data[0] and b"\\Flagged" in data[0]
    typ, data = m.copy("1", "Archive")
    assert typ == "OK" and data[0] == b"[COPYUID %d 1 1] COPY completed" % m_status_uidvalidity(m, "Archive")
    typ, data = m.copy("1", "Nowhere")
    assert typ == "NO" and data[0].startswith(b"[TRYCREATE]")
    m.uid("STORE", "1", "+FLAGS.SILENT", "(\\Deleted)")
    typ, data = m.uid("EXPUNGE", "1")
    assert typ == "OK" and m.response("EXPUNGE") == ("EXPUNGE", [b"1"])
    assert uidvalidity > 0
    m.logout()


def m_status_uidvalidity(m, box: str) -> int:
    typ, data = m.status(box, "(UIDVALIDITY)")
    return int(data[0].split(b"UIDVALIDITY ")[1].rstrip(b")"))


def test_wrong_password(mail_server, account):
    m = imaplib.IMAP4(mail_server.host, mail_server.imap_port)
    with pytest.raises(imaplib.IMAP4.error, match="AUTHENTICATIONFAILED"):
        m.login(account[0], "wrong")
    m.login(*account)
    m.logout()


def test_idle_reports_other_sessions_changes(mail_server, account):
    watcher = client(mail_server, account)
    watcher.select_folder("INBOX")
    watcher.idle()
    writer = client(mail_server, account)
    writer.append("INBOX", mail(1))
    responses = watcher.idle_check(timeout=10)
    assert (1, b"EXISTS") in responses
    writer.select_folder("INBOX")
    writer.add_flags([1], [b"\\Flagged"])
    responses = watcher.idle_check(timeout=10)
    assert any(r[1] == b"FETCH" for r in responses)
    writer.add_flags([1], [b"\\Deleted"])
    writer.expunge()
    responses = watcher.idle_check(timeout=10)
    while (1, b"EXPUNGE") not in responses:
        more = watcher.idle_check(timeout=10)
        assert more, responses
        responses += more
    watcher.idle_done()
    watcher.logout()
    writer.logout()


def test_bad_input_over_socket_and_server_keeps_serving(mail_server, account):
    s = raw(mail_server)
    s.sendall(b"a1 FROBNICATE\r\n")
    assert read_until(s, b"\r\n") == b"a1 BAD Unknown command\r\n"
    s.sendall(b"a2 LOGIN " + b"x" * 70000 + b"\r\n")
    assert read_until(s, b"\r\n") == b"a2 BAD [TOOBIG] Command line too long\r\n"
    s.sendall(b"a3 LOGIN %s {99999999999}\r\n" % account[0].encode())
    assert read_until(s, b"\r\n") == b"a3 NO [TOOBIG] Literal too big\r\n"
    s.sendall(b"a4 LOGIN %s %s\r\n" % (account[0].encode(), account[1].encode()))
    assert b"a4 OK" in read_until(s, b"a4 ")
    s.sendall(b"a5 CREATE &Jjo!\r\n")
    assert read_until(s, b"\r\n").startswith(b"a5 NO [CANNOT] Invalid mailbox name")
    # Disconnect in the middle of an APPEND literal.
    s.sendall(b"a6 APPEND INBOX {1000}\r\n")
    assert read_until(s, b"\r\n") == b"+ OK\r\n"
    s.sendall(b"From: x\r\n\r\nhalf a message")
    s.close()
    c = client(mail_server, account)
    assert c.folder_status("INBOX", ["MESSAGES"])[b"MESSAGES"] == 0
    c.logout()


def test_pipelined_commands_over_socket(mail_server, account):
    s = raw(mail_server)
    user, password = (x.encode() for x in account)
    s.sendall(b"1 LOGIN %s %s\r\n2 APPEND INBOX {%d+}\r\n%s\r\n3 SELECT INBOX\r\n4 FETCH 1 (UID FLAGS)\r\n"
              b"5 LOGOUT\r\n" % (user, password, len(mail(1)), mail(1)))
    data = read_until(s, b"5 OK")
    lines = data.split(b"\r\n")
    tagged = [line.split(b" ")[0] for line in lines if line[:1].isdigit()]
    assert tagged == [b"1", b"2", b"3", b"4", b"5"]
    assert b"* 1 FETCH (UID 1 FLAGS (\\Recent))" in lines
    s.close()


def test_many_clients_at_once(mail_server, account):
    errors = []

    def work(i):
        try:
            c = client(mail_server, account)
            c.append("INBOX", mail(i))
            c.select_folder("INBOX", readonly=True)
            c.search(["ALL"])
            c.logout()
        except Exception as e:  # collected and asserted below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors
    c = client(mail_server, account)
    assert c.folder_status("INBOX", ["MESSAGES"])[b"MESSAGES"] == 8
    c.logout()
