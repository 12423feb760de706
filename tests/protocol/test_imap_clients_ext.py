"""IMAP extensions over real sockets against the server process (``mail_server``): imapclient
where it has the command (ENABLE, APPEND, MULTIAPPEND, FETCH of BINARY/EMAILID/SAVEDATE/PREVIEW,
STATUS), imaplib and raw sockets for the rest (CATENATE, REPLACE, URLAUTH, COMPRESS,
UNAUTHENTICATE), and a second server with small limits (IDLE per user, LITERAL-, ALERT)."""

import imaplib
import re
import socket
import time
import urllib.parse
import zlib

import imapclient
import pytest

from tests.harness import RunningServer

MAIL = (b"From: Alice <alice@example.org>\r\nTo: Bob <bob@example.org>\r\nSubject: Hello %d\r\n"
        b"Message-ID: <%d@example.org>\r\nMIME-Version: 1.0\r\n"
        b"Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n"
        b"Gr=C3=BC=C3=9Fe, message %d\r\n")


for _name in ("GENURLAUTH", "URLFETCH", "RESETKEY"):        # imaplib only sends commands it knows
    imaplib.Commands.setdefault(_name, ("AUTH", "SELECTED"))


def mail(n: int) -> bytes:
    return MAIL % (n, n, n)


def client(server, account) -> imapclient.IMAPClient:
    c = imapclient.IMAPClient(server.host, port=server.imap_port, ssl=False, timeout=30)
    c.login(*account)
    return c


def imaplib_client(server, account) -> imaplib.IMAP4:
    c = imaplib.IMAP4(server.host, server.imap_port, timeout=30)
    c.login(*account)
    return c


def raw(server, account=None) -> socket.socket:
    s = socket.create_connection((server.host, server.imap_port), timeout=10)
    assert s.recv(4096).startswith(b"* OK [CAPABILITY ")
    if account:
        s.sendall(b"l LOGIN %s %s\r\n" % (account[0].encode(), account[1].encode()))
        assert b"l OK " in read_until(s, b"l ")
    return s


def read_until(s, marker: bytes, limit: float = 10.0, inflate=None) -> bytes:
    data = b""
    deadline = time.monotonic() + limit
    while not re.search(rb"(^|\r\n)" + re.escape(marker) + rb"[^\r\n]*\r\n", data):
        if time.monotonic() > deadline:
            raise AssertionError(f"timeout waiting for {marker!r}: {data!r}")
        chunk = s.recv(65536)
        if not chunk:
            break
        data += inflate.decompress(chunk) if inflate else chunk
    return data


def test_capabilities_and_imapclient_extensions(mail_server, account):
    c = client(mail_server, account)
    caps = set(c.capabilities())
    assert {b"BINARY", b"CATENATE", b"REPLACE", b"URLAUTH", b"COMPRESS=DEFLATE", b"UTF8=ACCEPT", b"LITERAL+",
            b"UNAUTHENTICATE", b"OBJECTID", b"SAVEDATE", b"PREVIEW", b"MULTIAPPEND", b"UIDPLUS", b"ID"} <= caps
    assert any(cap.startswith(b"APPENDLIMIT=") for cap in caps)
    assert c.enable("UTF8=ACCEPT") == [b"UTF8=ACCEPT"]
    assert c.append("INBOX", mail(1), flags=[b"$Work"]).startswith(b"[APPENDUID ")
    typ, data = c.multiappend("INBOX", [mail(2), {"msg": mail(3), "flags": [b"\\Seen"]}])
    assert typ == "OK" and data[0].endswith(b" 2:3] APPEND completed"), data
    c.select_folder("INBOX")
    got = c.fetch([1, 2], ["BINARY.PEEK[1]", "BINARY.SIZE[1]", "EMAILID", "THREADID", "SAVEDATE", "PREVIEW"])
    text = "Grüße, message 1".encode()
    assert got[1][b"BINARY[1]"] == text + b"\r\n" and got[1][b"BINARY.SIZE[1]"] == len(text) + 2
    assert re.fullmatch(rb"[0-9a-f]{32}", got[1][b"EMAILID"][0]) and got[1][b"EMAILID"] != got[2][b"EMAILID"]
    assert got[1][b"THREADID"] is None and got[1][b"PREVIEW"] == text
    # imapclient leaves SAVEDATE as the raw date-time.
    assert re.fullmatch(rb"\d\d-[A-Z][a-z]{2}-20\d\d \d\d:\d\d:\d\d \+0000", got[1][b"SAVEDATE"])
    status = c.folder_status("INBOX", ["MESSAGES", "MAILBOXID", "APPENDLIMIT"])
    assert status[b"MESSAGES"] == 3 and re.fullmatch(rb"[0-9a-f]{32}", status[b"MAILBOXID"][0])
    assert status[b"APPENDLIMIT"] > 0
    assert c.search(["SAVEDATESUPPORTED"]) == [1, 2, 3]
    assert c.search(["EMAILID", got[2][b"EMAILID"][0]]) == [2]
    c.logout()


def test_utf8_accept_names_over_socket(mail_server, account):
    legacy = client(mail_server, account)
    legacy.create_folder("Übersicht")                       # sent as modified UTF-7 by imapclient
    s = raw(mail_server, account)
    s.sendall(b"e ENABLE UTF8=ACCEPT\r\nl LIST \"\" \"\\xc3\\x9c*\"\r\n".replace(b"\\xc3\\x9c", "Ü".encode()))
    data = read_until(s, b"l ")
    assert b"* ENABLED UTF8=ACCEPT\r\n" in data and '* LIST (\\HasNoChildren) "/" "Übersicht"'.encode() in data
    s.sendall('s STATUS "Übersicht" (MESSAGES)\r\n'.encode())
    assert '* STATUS "Übersicht" (MESSAGES 0)'.encode() in read_until(s, b"s ")
    s.close()
    assert "Übersicht" in [f[2] for f in legacy.list_folders()]


def test_catenate_replace_and_uidplus_with_imaplib(mail_server, account):
    c = imaplib_client(mail_server, account)
    typ, data = c.append("Drafts", "(\\Draft)", None, mail(1))
    assert typ == "OK" and data[0].startswith(b"[APPENDUID ")
    validity = int(data[0].split()[1])
    # CATENATE of pieces of that draft (imaplib sends the whole command; literals are synchronising).
    c.send(b'c1 APPEND Drafts CATENATE (URL "/Drafts;UIDVALIDITY=%d/;UID=1/;SECTION=HEADER" '
           b'TEXT {8}\r\n' % validity)
    assert c.readline() == b"+ OK\r\n"
    c.send(b"Updated\n)\r\n")
    line = c.readline()
    assert line == b"c1 OK [APPENDUID %d 2] APPEND completed\r\n" % validity, line
    c.select("Drafts")
    typ, data = c.uid("FETCH", "2", "(BODY.PEEK[])")
    assert data[0][1] == mail(1)[:mail(1).index(b"\r\n\r\n") + 4] + b"Updated\r\n"
    # REPLACE the first draft: untagged APPENDUID, then its EXPUNGE.
    c.send(b"r1 UID REPLACE 1 Drafts (\\Draft \\Seen) {%d+}\r\n%s\r\n" % (len(mail(9)), mail(9)))
    lines = [c.readline()]
    while not lines[-1].startswith(b"r1 "):
        lines.append(c.readline())
    assert lines[0] == b"* OK [APPENDUID %d 3] Replacement Message ID\r\n" % validity
    rest = b"".join(lines[2:])
    assert lines[1] + rest == b"* 1 EXPUNGE\r\n* 2 EXISTS\r\n* 2 RECENT\r\nr1 OK REPLACE completed\r\n"
    typ, data = c.uid("FETCH", "1:*", "(FLAGS)")
    assert [d.split(b" (")[1] for d in data] == [b"UID 2 FLAGS", b"UID 3 FLAGS"]
    c.logout()


def test_urlauth_between_two_users(mail_server):
    joe, fred = mail_server.new_user(), mail_server.new_user()
    c = imaplib_client(mail_server, joe)
    c.append("INBOX", None, None, mail(5))
    user = urllib.parse.quote(joe[0], safe="")
    rump = f"imap://{user}@{mail_server.host}/INBOX/;UID=1/;SECTION=1;URLAUTH=user+{urllib.parse.quote(fred[0], safe='')}"
    typ, data = c._simple_command("GENURLAUTH", f'"{rump}"', "INTERNAL")
    assert typ == "OK"
    url = re.fullmatch(rb'"(.*)"', c.untagged_responses.pop("GENURLAUTH")[0]).group(1).decode()
    assert url.startswith(rump + ":internal:")
    f = imaplib_client(mail_server, fred)
    typ, data = f._simple_command("URLFETCH", f'"{url}"')
    assert typ == "OK"
    fetched = f.untagged_responses.pop("URLFETCH")
    part = b"Gr=C3=BC=C3=9Fe, message 5\r\n"              # BODY[1] as stored (still encoded)
    assert fetched[0] == (b'"%s" {%d}' % (url.encode(), len(part)), part), fetched
    # Joe revokes: Fred's URL stops working.
    assert c._simple_command("RESETKEY")[0] == "OK"
    f._simple_command("URLFETCH", f'"{url}"')
    assert f.untagged_responses.pop("URLFETCH")[0] == f'"{url}" NIL'.encode()
    c.logout()
    f.logout()


def test_compress_deflate_over_socket(mail_server, account):
    s = raw(mail_server, account)
    s.sendall(b"z COMPRESS DEFLATE\r\n")
    assert read_until(s, b"z ") == b"z OK DEFLATE active\r\n"
    out = zlib.compressobj(6, zlib.DEFLATED, -15)
    inflate = zlib.decompressobj(-15)

    def send(data):
        s.sendall(out.compress(data) + out.flush(zlib.Z_SYNC_FLUSH))
    body = mail(7) * 200                                      # ~30 KB, compresses well
    send(b"a APPEND INBOX {%d+}\r\n%s\r\nb SELECT INBOX\r\nc FETCH 1 BODY.PEEK[]\r\n" % (len(body), body))
    data = read_until(s, b"c ", inflate=inflate)
    assert b"a OK [APPENDUID " in data and b"b OK [READ-WRITE]" in data
    assert b"* 1 FETCH (BODY[] {%d}\r\n%s)\r\nc OK FETCH completed\r\n" % (len(body), body) in data
    send(b"d LOGOUT\r\n")
    assert read_until(s, b"d ", inflate=inflate).endswith(b"d OK Logout completed\r\n")
    s.close()


def test_unauthenticate_over_socket(mail_server, account):
    other = mail_server.new_user()
    s = raw(mail_server, account)
    s.sendall(b"u UNAUTHENTICATE\r\nx SELECT INBOX\r\nl LOGIN %s %s\r\ns SELECT INBOX\r\n"
              % (other[0].encode(), other[1].encode()))
    data = read_until(s, b"s ")
    assert b"u OK [CAPABILITY IMAP4rev1 " in data and b"x BAD Not logged in\r\n" in data
    assert b"l OK [CAPABILITY" in data and b"s OK [READ-WRITE] Select completed\r\n" in data
    s.close()


@pytest.fixture(scope="module")
def limited_server(tmp_path_factory):
    server = RunningServer(str(tmp_path_factory.mktemp("limited")), users=10, name="limited")
    with open(server.config_path) as f:
        text = f.read()
    text = text.replace('[imap]\nlisten = ["127.0.0.1:0"]\n',
                        '[imap]\nlisten = ["127.0.0.1:0"]\nmax_idle_per_user = 2\nliteral_plus = false\n'
                        'alert = "Maintenance at 22:00 UTC"\n')
    with open(server.config_path, "w") as f:
        f.write(text)
    server.start()
    yield server
    server.stop()


def test_limits_over_socket(limited_server):
    account = limited_server.new_user()
    s = raw(limited_server)
    s.sendall(b"l LOGIN %s %s\r\n" % (account[0].encode(), account[1].encode()))
    data = read_until(s, b"l ")
    assert data.startswith(b"* OK [ALERT] Maintenance at 22:00 UTC\r\n")
    assert b" LITERAL- " in data and b"LITERAL+" not in data
    s.sendall(b"a APPEND INBOX {5000+}\r\n" + b"x" * 5000 + b"\r\nb NOOP\r\n")
    data = read_until(s, b"b ")
    assert data.startswith(b"a BAD [TOOBIG] ") and data.endswith(b"b OK NOOP completed\r\n")
    idlers = []
    for _ in range(2):
        i = raw(limited_server, account)
        i.sendall(b"i IDLE\r\n")
        assert read_until(i, b"+ ") == b"+ idling\r\n"
        idlers.append(i)
    s.sendall(b"i IDLE\r\n")
    assert read_until(s, b"i ") == b"i NO [LIMIT] Too many IDLE sessions for this user (at most 2)\r\n"
    idlers[0].sendall(b"DONE\r\n")
    assert read_until(idlers[0], b"i ") == b"i OK Idle completed\r\n"
    s.sendall(b"j IDLE\r\n")
    assert read_until(s, b"+ ") == b"+ idling\r\n"
    for sock in idlers + [s]:
        sock.close()
