"""Quota over the wire, on the embedded default and on rbox over Ceph: users with rules in
passwd-file extra fields (``userdb_quota_rule...``) fill up over LMTP and APPEND, are refused
(552 5.2.2, NO [OVERQUOTA]) and get room back by EXPUNGE, POP3 DELE, DELETE; GETQUOTAROOT and
GETQUOTA report it; ``mailserver quota get|recalc`` agree with it; a warning arrives when a
threshold is crossed.  (The ceph backend keeps its dictionary in the local driver until the
RADOS dictionary is merged.)"""

import imaplib
import json
import os
import poplib
import re
import smtplib
import socket
import subprocess
import sys
import time
import uuid

import pytest

from tests.harness import ROOT, RunningServer, ceph_config

QUOTA_CONFIG = """
[quota]
enabled = true
rule = "*:storage=0"
grace = "0"

[[quota.warnings]]
resource = "messages"
percent = 50
subject = "Quota warning for %u"
message = "You have used %p% of your messages."
script = "{script}"
"""

# name -> passwd-file extra fields
USERS = {
    "full": "userdb_quota_rule=*:storage=10K",
    "other": "",
    "sized": "userdb_quota_rule=*:storage=10K",
    "appender": "userdb_quota_rule=*:storage=8K",
    "mover": "userdb_quota_rule=*:storage=8K userdb_quota_rule2=Trash:storage=+8K userdb_quota_rule3=Spam:ignore",
    "deleter": "userdb_quota_rule=*:storage=100K",
    "popper": "userdb_quota_rule=*:storage=100K",
    "counted": "userdb_quota_rule=*:storage=1M:messages=100",
    "resynced": "userdb_quota_rule=*:storage=100K",
    "warned": "userdb_quota_rule=*:messages=4",
    "bad": "userdb_quota_rule=*:storage=lots",
    "graced": "userdb_quota_rule=*:storage=4K userdb_quota_grace=50%",
}


@pytest.fixture(scope="module", params=["local", "ceph"])
def quota_server(request, tmp_path_factory):
    base = tmp_path_factory.mktemp(f"quota-{request.param}")
    script = base / "warn.sh"
    script.write_text(f'#!/bin/sh\necho "$1 $2" >> {base}/warnings.txt\n')
    script.chmod(0o755)
    extra = QUOTA_CONFIG.format(script=script)
    if request.param == "ceph":
        cluster = request.getfixturevalue("ceph_cluster")
        extra = ceph_config(cluster.conf_path, uuid.uuid4().hex[:8]) + extra
    server = RunningServer(str(base), extra_config=extra, users=0, name="quota")
    server.users = {}
    for name, fields in USERS.items():
        login = f"{name}@example.org"
        server.add_user(login, "{PLAIN}pw", fields)
        server.users[name] = login
    server.warnings_file = str(base / "warnings.txt")
    server.start()
    yield server
    server.stop()


def body(n: int, subject: str = "filler") -> bytes:
    """A message of exactly ``n`` bytes (CRLF line ends)."""
    head = b"From: a@example.net\r\nSubject: " + subject.encode() + b"\r\n\r\n"
    rest = n - len(head)
    lines = []
    while rest > 80:
        lines.append(b"x" * 76 + b"\r\n")
        rest -= 78
    lines.append(b"y" * (rest - 2) + b"\r\n")
    return head + b"".join(lines)


def lmtp(server, recipients, data: bytes, size: int | None = None):
    """One LMTP transaction over a raw socket: (RCPT replies, DATA replies of the accepted)."""
    s = socket.create_connection((server.host, server.lmtp_port), timeout=20)
    f = s.makefile("rb")
    assert f.readline().startswith(b"220 ")
    s.sendall(b"LHLO test\r\n")
    while not f.readline().startswith(b"250 "):
        pass
    s.sendall(b"MAIL FROM:<s@example.net>" + (b" SIZE=%d" % size if size else b"") + b"\r\n")
    assert f.readline().startswith(b"250 ")
    rcpt = []
    for r in recipients:
        s.sendall(b"RCPT TO:<" + r.encode() + b">\r\n")
        rcpt.append(f.readline().rstrip(b"\r\n").decode())
    replies = []
    accepted = sum(1 for r in rcpt if r.startswith("250"))
    if accepted:
        s.sendall(b"DATA\r\n")
        assert f.readline().startswith(b"354 ")
        s.sendall(data + b".\r\n")
        replies = [f.readline().rstrip(b"\r\n").decode() for _ in range(accepted)]
    s.sendall(b"QUIT\r\n")
    f.readline()
    s.close()
    return rcpt, replies


def imap(server, name: str) -> imaplib.IMAP4:
    m = imaplib.IMAP4(server.host, server.imap_port, timeout=20)
    m.login(server.users[name], "pw")
    return m


def quota_of(m: imaplib.IMAP4, mailbox: str = "INBOX") -> dict:
    """GETQUOTAROOT: {"root": name, RESOURCE: (usage, limit)...}."""
    typ, data = m.getquotaroot(mailbox)
    assert typ == "OK", data
    roots, quotas = data
    out = {"roots": [r.decode() for r in roots]}
    for line in quotas:
        line = line.decode()
        out["root"] = re.match(r'"([^"]*)"', line).group(1)
        for res, usage, limit in re.findall(r"(\w+) (\d+) (\d+)", line):
            out[res] = (int(usage), int(limit))
    return out


def mailserver_cli(server, *args) -> str:
    """``mailserver ARGS -c CONFIG`` (the server's configuration, so its dictionary driver)."""
    done = subprocess.run([sys.executable, "-m", "mailserver", *args, "-c", server.config_path],
                          capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout


def cli(server, *args) -> str:
    return mailserver_cli(server, "quota", *args)


def test_capabilities_and_user_without_limits(quota_server):
    m = imap(quota_server, "other")
    caps = m.capability()[1][0].decode().split()     # QUOTA is announced after login only
    assert "QUOTA" in caps and "QUOTA=RES-STORAGE" in caps and "QUOTA=RES-MESSAGE" in caps
    assert "QUOTASET" not in caps
    # No limit: the QUOTAROOT line names no root and no QUOTA line follows (RFC 9208's
    # quota-list needs a resource; Dovecot shows no root either).
    typ, data = m._simple_command("GETQUOTAROOT", "INBOX")
    assert typ == "OK" and data == [b"No quota"]
    assert m.untagged_responses.pop("QUOTAROOT") == [b"INBOX"]
    assert "QUOTA" not in m.untagged_responses
    typ, data = m.getquota('"User quota"')
    assert typ == "OK" and data == [None]
    typ, data = m.getquota("nothing")
    assert typ == "NO"
    typ, data = m.setquota('"User quota"', "(STORAGE 100)")
    assert typ == "NO" and data[0].startswith(b"[NOPERM]")
    typ, data = m._simple_command("GETQUOTAROOT", "Nosuchbox")   # getquotaroot() drops the NO's text
    assert typ == "NO" and data[0].startswith(b"[NONEXISTENT]")
    m.logout()


def test_lmtp_fill_refuses_one_recipient_delivers_other(quota_server):
    full, other = quota_server.users["full"], quota_server.users["other"]
    refused = None
    for n in range(10):
        rcpt, replies = lmtp(quota_server, [full, other], body(3000, f"m{n}"))
        assert rcpt == ["250 2.1.5 OK", "250 2.1.5 OK"]
        assert replies[1].startswith("250 2.0.0 ")       # the other recipient always gets it
        if not replies[0].startswith("250 "):
            refused = n, replies[0]
            break
    assert refused is not None and refused[0] == 3, refused
    assert refused[1].startswith(f"552 5.2.2 <{full}> ")
    m = imap(quota_server, "full")
    q = quota_of(m)
    assert q["roots"] == ['INBOX "User quota"'] and q["root"] == "User quota"
    usage, limit = q["STORAGE"]
    assert limit == 10 and 9 <= usage <= 10
    assert "MESSAGE" not in q
    assert m.select("INBOX")[1] == [b"3"]
    m.logout()
    m = imap(quota_server, "other")
    assert m.select("INBOX")[1] == [str(refused[0] + 1).encode()]
    m.logout()


def test_rcpt_with_size_refused_early(quota_server):
    sized, other = quota_server.users["sized"], quota_server.users["other"]
    rcpt, replies = lmtp(quota_server, [sized, other], body(20000), size=20000)
    assert rcpt[0].startswith(f"552 5.2.2 <{sized}> ")
    assert rcpt[1] == "250 2.1.5 OK" and len(replies) == 1 and replies[0].startswith("250 2.0.0")
    rcpt, replies = lmtp(quota_server, [sized], body(2000), size=2000)
    assert rcpt == ["250 2.1.5 OK"] and replies[0].startswith("250 2.0.0")


def _append_raw(server, name: str, messages: list) -> bytes:
    """MULTIAPPEND over a raw socket with LITERAL+; the tagged answer."""
    s = socket.create_connection((server.host, server.imap_port), timeout=20)
    f = s.makefile("rb")
    f.readline()
    s.sendall(b'a LOGIN "' + server.users[name].encode() + b'" pw\r\n')
    while not f.readline().startswith(b"a "):
        pass
    cmd = b"b APPEND INBOX"
    for data in messages:
        cmd += b" {%d+}\r\n" % len(data) + data
    s.sendall(cmd + b"\r\n")
    while True:
        line = f.readline()
        if line.startswith(b"b "):
            break
    s.sendall(b"c LOGOUT\r\n")
    s.close()
    return line.rstrip(b"\r\n")


def test_append_over_quota_multiappend_and_expunge_gives_room(quota_server):
    m = imap(quota_server, "appender")
    assert m.append("INBOX", None, None, body(3000))[0] == "OK"
    assert m.append("INBOX", None, None, body(3000))[0] == "OK"
    typ, data = m.append("INBOX", None, None, body(3000))
    assert typ == "NO" and data[0].startswith(b"[OVERQUOTA]")
    assert quota_of(m)["STORAGE"] == (6, 8)
    m.logout()
    # MULTIAPPEND: two 1000-byte messages fit, three do not; all or nothing.
    assert _append_raw(quota_server, "appender", [body(1000)] * 3).startswith(b"b NO [OVERQUOTA]")
    assert _append_raw(quota_server, "appender", [body(1000)] * 2).startswith(b"b OK [APPENDUID")
    m = imap(quota_server, "appender")
    assert m.select("INBOX")[1] == [b"4"]
    assert quota_of(m)["STORAGE"] == (8, 8)
    m.store("1", "+FLAGS", "\\Deleted")
    # RFC 9208 STATUS DELETED-STORAGE: what EXPUNGE would give back, in KiB (3000 bytes: 3).
    typ, data = m.status("INBOX", "(DELETED DELETED-STORAGE)")
    assert typ == "OK" and data[0].endswith(b"(DELETED 1 DELETED-STORAGE 3)"), data
    m.expunge()
    assert quota_of(m)["STORAGE"] == (5, 8)     # the room came back: 5000 bytes in 5 KiB
    assert m.status("INBOX", "(DELETED-STORAGE)")[1][0].endswith(b"(DELETED-STORAGE 0)")
    assert m.append("INBOX", None, None, body(2000))[0] == "OK"
    m.store("1:*", "+FLAGS", "\\Deleted")
    m.close()                                   # CLOSE expunges too
    assert quota_of(m)["STORAGE"] == (0, 8)
    m.logout()


def test_copy_move_refused_trash_gets_extra_room(quota_server):
    m = imap(quota_server, "mover")
    m.create("Archive")
    m.create("Spam")
    for _ in range(2):
        assert m.append("INBOX", None, None, body(3000))[0] == "OK"
    assert quota_of(m)["STORAGE"] == (6, 8)
    assert quota_of(m, "Trash")["STORAGE"] == (6, 16)   # the Trash rule's extra room
    m.select("INBOX")
    typ, data = m.copy("1:2", "Archive")
    assert typ == "NO" and data[0].startswith(b"[OVERQUOTA]")
    typ, data = m.copy("1:2", "Trash")
    assert typ == "OK", data
    assert quota_of(m)["STORAGE"] == (12, 8)
    # Spam is ignored: saving there always works and is not counted.
    assert m.append("Spam", None, None, body(3000))[0] == "OK"
    assert quota_of(m)["STORAGE"] == (12, 8)
    m.select("Spam")
    typ, data = m._simple_command("MOVE", "1", "INBOX")
    assert typ == "NO" and data[0].startswith(b"[OVERQUOTA]")
    typ, data = m._simple_command("MOVE", "1", "Trash")
    assert typ == "OK", data
    assert quota_of(m)["STORAGE"] == (15, 8)
    # A move within counted mailboxes changes nothing and is not refused.
    m.select("Trash")
    typ, data = m._simple_command("MOVE", "1", "Archive")
    assert typ == "OK", data
    assert quota_of(m)["STORAGE"] == (15, 8)
    m.logout()


def test_delete_mailbox_gives_room(quota_server):
    m = imap(quota_server, "deleter")
    # Names go out as they came in: modified UTF-7 ("Entwürfe").
    m.create("Entw&APw-rfe")
    assert quota_of(m, "Entw&APw-rfe")["roots"] == ['Entw&APw-rfe "User quota"']
    m.create("Old")
    for _ in range(3):
        m.append("Old", None, None, body(2048))
    m.append("INBOX", None, None, body(1024))
    assert quota_of(m)["STORAGE"] == (7, 100)
    assert m.delete("Old")[0] == "OK"
    assert quota_of(m)["STORAGE"] == (1, 100)
    # UID EXPUNGE gives room back too.
    m.append("INBOX", None, None, body(3072))
    m.select("INBOX")
    assert quota_of(m)["STORAGE"] == (4, 100)
    uid = m.uid("SEARCH", "ALL")[1][0].split()[-1].decode()
    m.uid("STORE", uid, "+FLAGS", "\\Deleted")
    assert m.uid("EXPUNGE", uid)[0] == "OK"
    assert quota_of(m)["STORAGE"] == (1, 100)
    m.logout()


def test_pop3_dele_gives_room(quota_server):
    user = quota_server.users["popper"]
    for n in range(2):
        lmtp(quota_server, [user], body(4000, f"p{n}"))
    m = imap(quota_server, "popper")
    before = quota_of(m)["STORAGE"][0]
    m.logout()
    p = poplib.POP3(quota_server.host, quota_server.pop3_port, timeout=20)
    p.user(user)
    p.pass_("pw")
    size = int(p.list(1).split()[2])
    p.dele(1)
    p.quit()
    m = imap(quota_server, "popper")
    after = quota_of(m)["STORAGE"][0]
    assert before - 5 <= after <= before - 3 and size > 4000      # KiB, rounded up
    m.logout()


def _unset_counters(server, login: str) -> None:
    """Remove the usage counters through the server's dictionary driver (local, or rados on
    Ceph)."""
    for key in ("priv/quota/storage", "priv/quota/messages"):
        mailserver_cli(server, "dict", "unset", login, key)
    assert mailserver_cli(server, "dict", "iter", login, "priv/quota/") == ""


def test_quota_get_and_recalc(quota_server):
    login = quota_server.users["counted"]
    for n in range(3):
        lmtp(quota_server, [login], body(1500 + n, f"c{n}"))
    m = imap(quota_server, "counted")
    m.create("Folder")
    m.append("Folder", None, None, body(5000))
    m.logout()
    before = cli(quota_server, "get", login)
    lines = before.splitlines()
    assert lines[0].split()[:3] == ["Quota", "name", "Type"]
    storage = lines[1].split()
    assert storage[:3] == ["User", "quota", "STORAGE"] and storage[4] == str(1024 * 1024)
    usage = int(storage[3])
    assert 3 * 1500 + 5000 < usage < 3 * 1500 + 5000 + 3 * 600     # plus LMTP's trace headers
    assert lines[2].split()[2:5] == ["MESSAGE", "4", "100"]
    _unset_counters(quota_server, login)
    recalc = cli(quota_server, "recalc", login)
    assert f"STORAGE {usage} bytes, MESSAGE 4 messages" in recalc.splitlines()[0]
    assert cli(quota_server, "get", login) == before
    m = imap(quota_server, "counted")
    assert quota_of(m)["MESSAGE"] == (4, 100)
    m.logout()


def test_force_resync_drops_the_counters_it_may_have_made_wrong(quota_server):
    """force-resync adds and drops messages without telling quota: it drops the usage
    counters, and the next GETQUOTAROOT recounts them."""
    login = quota_server.users["resynced"]
    for n in range(2):
        lmtp(quota_server, [login], body(2000, f"r{n}"))
    mailserver_cli(quota_server, "dict", "set", login, "priv/quota/storage", "1024")
    m = imap(quota_server, "resynced")
    assert quota_of(m)["STORAGE"][0] == 1                 # the counters are trusted as they are
    m.logout()
    report = json.loads(mailserver_cli(quota_server, "force-resync", login))
    assert report["quota_counters"].startswith("dropped")
    assert mailserver_cli(quota_server, "dict", "iter", login, "priv/quota/") == ""
    m = imap(quota_server, "resynced")
    usage = quota_of(m)["STORAGE"][0]
    assert 4 <= usage <= 5                                # KiB of the two mails, recounted
    m.logout()


def test_warning_when_crossing_threshold(quota_server):
    login = quota_server.users["warned"]
    rcpt, replies = lmtp(quota_server, [login], body(500, "one"))
    assert replies[0].startswith("250 ")
    rcpt, replies = lmtp(quota_server, [login], body(500, "two"))      # 2 of 4: crosses 50%
    assert replies[0].startswith("250 ")
    m = imap(quota_server, "warned")
    assert m.select("INBOX")[1] == [b"3"]
    typ, data = m.fetch("3", "(BODY.PEEK[HEADER.FIELDS (SUBJECT FROM)] BODY.PEEK[TEXT])")
    text = b"".join(part[1] for part in data if isinstance(part, tuple))
    assert b"Subject: Quota warning for " + login.encode() in text
    assert b"You have used 50% of your messages." in text
    assert quota_of(m)["MESSAGE"] == (3, 4)     # the warning counts, but was not refused
    m.logout()
    rcpt, replies = lmtp(quota_server, [login], body(500, "three"))
    assert replies[0].startswith("250 ")
    # smtplib sends SIZE= (the server offers SIZE), so the refusal comes at RCPT already.
    with smtplib.LMTP(quota_server.host, quota_server.lmtp_port, timeout=20) as c:
        with pytest.raises(smtplib.SMTPRecipientsRefused) as e:
            c.sendmail("s@example.net", [login], body(500, "four"))     # messages=4 reached
    code, text = e.value.recipients[login]
    assert code == 552 and text.startswith(f"5.2.2 <{login}> ".encode())
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not os.path.exists(quota_server.warnings_file):
        time.sleep(0.1)
    with open(quota_server.warnings_file) as f:
        assert f.read() == f"{login} 50\n"


def test_bad_userdb_rule_fails_temporarily(quota_server):
    login = quota_server.users["bad"]
    rcpt, replies = lmtp(quota_server, [login], body(500))
    assert replies[0].startswith("451 4.3.0 ")
    m = imap(quota_server, "bad")
    typ, data = m._simple_command("GETQUOTAROOT", "INBOX")
    assert typ == "NO" and data[0].startswith(b"[UNAVAILABLE]")
    m.logout()
    assert "invalid quota rule for bad@example.org" in quota_server.log_text()


def test_grace_lets_the_last_mail_of_a_user_under_quota_through(quota_server):
    """quota_grace (here 50% of 4 KiB from the userdb field): under the limit, one mail may end up
    to 2 KiB past it; once over, nothing more fits."""
    user = quota_server.users["graced"]
    assert lmtp(quota_server, [user], body(3000))[1][0].startswith("250 ")
    assert lmtp(quota_server, [user], body(3500))[1][0].startswith("552 5.2.2 ")    # 6500 > 4096 + 2048
    assert lmtp(quota_server, [user], body(2500))[1][0].startswith("250 ")          # 5500: within grace
    assert lmtp(quota_server, [user], body(100))[1][0].startswith("552 5.2.2 ")     # over: no more grace
    m = imap(quota_server, "graced")
    assert quota_of(m)["STORAGE"] == (6, 4)       # 5500 bytes shown in KiB against the 4 KiB limit
    m.logout()


def test_full_tempfail(tmp_path):
    """``[quota] full_tempfail``: over quota is 452 4.2.2, at RCPT with SIZE and after DATA."""
    server = RunningServer(str(tmp_path), users=0, name="tempfail",
                           extra_config='[quota]\nenabled = true\nrule = "*:storage=2K"\nfull_tempfail = true\n')
    server.add_user("t@example.org", "{PLAIN}pw")
    server.start()
    try:
        rcpt, _ = lmtp(server, ["t@example.org"], body(4000), size=4000)
        assert rcpt[0].startswith("452 4.2.2 <t@example.org> ")
        rcpt, replies = lmtp(server, ["t@example.org"], body(4000))
        assert rcpt == ["250 2.1.5 OK"] and replies[0].startswith("452 4.2.2 <t@example.org> ")
        rcpt, replies = lmtp(server, ["t@example.org"], body(1000))
        assert replies[0].startswith("250 2.0.0 ")
    finally:
        server.stop()
