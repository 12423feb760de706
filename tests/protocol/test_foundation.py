"""The vertical slice: LMTP in, IMAP and POP3 out, flags and mail surviving a restart, graceful
SIGTERM with deliveries in flight, and clear start-up failures."""

import imaplib
import itertools
import poplib
import signal
import smtplib
import socket
import subprocess
import sys
import threading

import pytest

from tests.harness import RunningServer

MSG = (b"From: Ann <ann@example.org>\r\nTo: you@example.org\r\nSubject: slice %d\r\n"
       b"Message-ID: <%d@example.org>\r\n\r\nhello %d\r\n")


@pytest.fixture
def own_server(tmp_path):
    server = RunningServer(str(tmp_path), users=5)
    server.start()
    yield server
    server.stop()


def test_lmtp_imap_pop3_and_restart(own_server):
    s = own_server
    user, pw = s.new_user()
    lmtp = smtplib.LMTP(s.host, s.lmtp_port)
    for i in range(1, 4):
        assert lmtp.sendmail("ann@example.org", [user], MSG % (i, i, i)) == {}
    lmtp.quit()

    imap = imaplib.IMAP4(s.host, s.imap_port)
    imap.login(user, pw)
    typ, data = imap.select("INBOX")
    assert data == [b"3"]
    imap.store("1", "+FLAGS", "(\\Flagged $Later)")
    imap.store("2", "+FLAGS", "(\\Seen)")
    typ, data = imap.fetch("3", "(BODY[])")
    body3 = data[0][1]
    assert body3.endswith(b"hello 3\r\n") and b"Delivered-To: " + user.encode() in body3
    imap.logout()

    pop = poplib.POP3(s.host, s.pop3_port)
    pop.user(user)
    pop.pass_(pw)
    assert pop.stat()[0] == 3
    uidl_before = pop.uidl()[1]
    resp, lines, _ = pop.retr(3)
    assert b"\r\n".join(lines) + b"\r\n" == body3
    pop.quit()

    s.restart()

    imap = imaplib.IMAP4(s.host, s.imap_port)
    imap.login(user, pw)
    imap.select("INBOX")
    typ, data = imap.fetch("1:3", "(UID FLAGS)")
    flags = {line.split(b" ")[0]: line for line in data}
    assert b"\\Flagged" in flags[b"1"] and b"$Later" in flags[b"1"]
    assert b"\\Seen" in flags[b"2"]
    assert b"\\Seen" in flags[b"3"]         # POP3 RETR then QUIT marks it seen, as Dovecot
    imap.logout()
    pop = poplib.POP3(s.host, s.pop3_port)
    pop.user(user)
    pop.pass_(pw)
    assert pop.uidl()[1] == uidl_before
    pop.quit()


def _deliver_forever(host, port, user, acked, stop, numbers):
    while not stop.is_set():
        try:
            lmtp = smtplib.LMTP(host, port)
            while not stop.is_set():
                i = next(numbers)
                lmtp.sendmail("ann@example.org", [user], MSG % (i, i, i))
                acked.append(i)
        except (smtplib.SMTPException, OSError):
            return


def test_sigterm_finishes_in_flight_deliveries_and_exits_0(own_server):
    s = own_server
    user, pw = s.new_user()
    acked: list = []
    stop = threading.Event()
    numbers = itertools.count(1)
    threads = [threading.Thread(target=_deliver_forever, args=(s.host, s.lmtp_port, user, acked, stop, numbers))
               for _ in range(4)]
    for t in threads:
        t.start()
    while len(acked) < 40:
        threading.Event().wait(0.01)
    code = s.stop(signal.SIGTERM)
    stop.set()
    for t in threads:
        t.join(10)
    assert code == 0
    assert "stopped" in s.log_text()
    s.start()
    imap = imaplib.IMAP4(s.host, s.imap_port)
    imap.login(user, pw)
    typ, data = imap.select("INBOX")
    count = int(data[0])
    typ, data = imap.fetch("1:*", "(BODY.PEEK[HEADER.FIELDS (MESSAGE-ID)])")
    ids = {line[1].strip() for line in data if isinstance(line, tuple)}
    imap.logout()
    # Every acknowledged delivery is there exactly once (unacknowledged ones may be too).
    assert all(b"Message-ID: <%d@example.org>" % i in ids for i in acked)
    assert len(ids) == count


def test_bad_config_and_unusable_storage_exit_nonzero(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('[imap]\nlisten = ["127.0.0.1:notaport"]\n')
    run = subprocess.run([sys.executable, "-m", "mailserver", "serve", "--config", str(bad)],
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 2 and "[imap] listen" in run.stderr

    blocker = tmp_path / "state"
    blocker.write_text("a file where the state directory should be")
    conf = tmp_path / "m.toml"
    pw = tmp_path / "passwd"
    pw.write_text("u@example.org:{PLAIN}x::::::\n")
    conf.write_text(f'[server]\nstate_dir = "{blocker}"\nlog_format = "text"\n'
                    f'[imap]\nlisten = ["127.0.0.1:0"]\n[pop3]\nlisten = ["127.0.0.1:0"]\n'
                    f'[lmtp]\nlisten = ["127.0.0.1:0"]\n[auth]\npasswd_file = "{pw}"\n')
    run = subprocess.run([sys.executable, "-m", "mailserver", "serve", "--config", str(conf)],
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 1
    assert "cannot start: storage unavailable" in run.stderr and "Traceback" not in run.stderr


def test_port_in_use_is_a_clear_error(tmp_path):
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    port = taken.getsockname()[1]
    server = RunningServer(str(tmp_path), users=1)
    server.extra_config = ""
    server.write_config()
    text = open(server.config_path).read().replace('[imap]\nlisten = ["127.0.0.1:0"]',
                                                    f'[imap]\nlisten = ["127.0.0.1:{port}"]')
    open(server.config_path, "w").write(text)
    run = subprocess.run([sys.executable, "-m", "mailserver", "serve", "--config", server.config_path],
                         capture_output=True, text=True, timeout=60)
    taken.close()
    assert run.returncode == 1
    assert "cannot listen" in run.stdout + run.stderr


def test_many_connections_into_one_new_mailbox(mail_server, account):
    """More concurrent pipelined deliveries to one brand-new user than the server has I/O
    threads.  Regression: waiters for the user's list lock filled every pool thread while the
    holder needed one, and deliveries failed with 451 after 30 s."""
    from bench.common import deliver
    user, pw = account
    jobs = [([user], MSG % (i, i, i)) for i in range(1, 81)]
    stats = deliver(mail_server.host, mail_server.lmtp_port, jobs, connections=16)
    assert stats["messages"] == 80 and stats["seconds"] < 20
    imap = imaplib.IMAP4(mail_server.host, mail_server.imap_port)
    imap.login(user, pw)
    assert imap.select("INBOX")[1] == [b"80"]
    imap.logout()
